//! The conformance suite every backend runs (feature `testing`).
//!
//! A backend provides a [`StoreFactory`] and expands [`conformance_suite!`](crate::conformance_suite)
//! in a test file; every case then runs as its own named `#[tokio::test]`, plus the
//! [model property test](check_against_model):
//!
//! ```ignore
//! // tests/conformance.rs of a backend crate
//! mod direct {
//!     statebase_core::conformance_suite!(my_backend::TestFactory::new());
//! }
//! mod through_dyn {
//!     statebase_core::conformance_suite!(
//!         statebase_core::testing::DynFactory(my_backend::TestFactory::new())
//!     );
//! }
//! ```

pub mod archive_cases;
pub mod conversation_cases;
pub mod crash;
pub mod entity_cases;
mod oracle;
pub mod retention_cases;
pub mod session_cases;

use crate::{Config, ManualClock, MemoryStore, ServerStore, StateBase, Timestamp};
use async_trait::async_trait;
use std::sync::Arc;

pub use crate::search::embed::FlakyEmbedder;
pub use crate::search::vector::embedding_like;
pub use oracle::check_against_model;

#[cfg(test)]
mod tests {
    /// Every public case of the case modules is listed in `conformance_suite!`: a case left
    /// out would silently never run.
    #[test]
    fn the_suite_lists_every_case() {
        let suite = include_str!("mod.rs");
        let listed = &suite[suite.find("macro_rules! conformance_suite").unwrap()..];
        for (module, source) in [
            ("session_cases", include_str!("session_cases.rs")),
            ("conversation_cases", include_str!("conversation_cases.rs")),
            ("entity_cases", include_str!("entity_cases.rs")),
            ("archive_cases", include_str!("archive_cases.rs")),
            ("retention_cases", include_str!("retention_cases.rs")),
        ] {
            assert!(listed.contains(&format!("@cases $factory; {module};")));
            let cases = source
                .lines()
                .filter_map(|l| l.strip_prefix("pub async fn "))
                // Cases take a factory; the other public functions help other tests.
                .filter(|l| l.contains("F: StoreFactory"))
                .map(|l| &l[..l.find('<').unwrap_or(l.len())]);
            for case in cases {
                assert!(
                    listed.contains(&format!("            {case},\n")),
                    "{module}::{case} is not in conformance_suite!"
                );
            }
        }
        let modules = suite
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod "))
            .filter(|m| m.contains("cases"))
            .count();
        assert_eq!(modules, 5, "a new case module must be checked here too");
    }
}

/// Builds the store for one test case, and builds it again over the same data to test
/// what survives a reopen.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// The store it builds.
    type Store: ServerStore;

    /// Opens the store. The suite drops every handle of the previous store before it calls
    /// this again, and expects to find every acknowledged write.
    async fn open(&self) -> Self::Store;
}

/// The in-memory store's factory: "reopening" hands out another handle to the same data.
#[derive(Debug, Default)]
pub struct MemoryFactory(MemoryStore);

#[async_trait]
impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;
    async fn open(&self) -> MemoryStore {
        self.0.clone()
    }
}

/// Runs a factory's store through `Arc<dyn ServerStore>`, as the HTTP server holds it.
#[derive(Debug, Default)]
pub struct DynFactory<F>(pub F);

#[async_trait]
impl<F: StoreFactory> StoreFactory for DynFactory<F> {
    type Store = Arc<dyn ServerStore>;
    async fn open(&self) -> Arc<dyn ServerStore> {
        Arc::new(self.0.open().await)
    }
}

/// The error code of a call that must fail.
fn code<T: std::fmt::Debug>(r: crate::Result<T>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

/// The instant every case's clock starts at.
pub fn epoch() -> Timestamp {
    chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .map(|t| t.to_utc())
        .unwrap_or_default()
}

/// One case's world: a store from the factory, a manual clock, and statebase over them.
#[derive(Debug)]
pub struct Env<F: StoreFactory> {
    factory: F,
    /// The clock every handle of this env reads.
    pub clock: Arc<ManualClock>,
    config: Config,
    sb: Option<StateBase<F::Store>>,
}

impl<F: StoreFactory> Env<F> {
    /// Opens the factory's store with a manual clock at [`epoch`].
    pub async fn new(factory: F) -> Self {
        let clock = Arc::new(ManualClock::new(epoch()));
        let config = Config {
            clock: clock.clone(),
            ..Config::default()
        };
        let mut env = Self {
            factory,
            clock,
            config,
            sb: None,
        };
        env.reopen().await;
        env
    }

    /// Statebase in the default tenant.
    pub fn sb(&self) -> &StateBase<F::Store> {
        self.sb.as_ref().expect("the env always holds a store")
    }

    /// Drops the store and opens it again.
    pub async fn reopen(&mut self) {
        self.sb = None;
        let store = self.factory.open().await;
        self.sb = Some(StateBase::with_config(store, self.config.clone()));
    }

    /// Reopens the store with a changed configuration (the clock stays).
    pub async fn reopen_with(&mut self, change: impl FnOnce(&mut Config)) {
        change(&mut self.config);
        self.reopen().await;
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance(&self, seconds: i64) {
        self.clock.advance(chrono::Duration::seconds(seconds));
    }
}

/// Expands the conformance suite into one `#[tokio::test]` per case for the factory that
/// `$factory` builds (evaluated anew for each test), plus the model property test.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@cases $factory; session_cases;
            create_session_returns_defaults,
            create_session_keeps_given_fields,
            create_session_rejects_bad_input,
            unknown_session_is_not_found,
            update_session_merges_metadata_and_resets_ttl,
            update_session_rejects_bad_input,
            delete_session_removes_everything,
            list_sessions_newest_first_with_filters,
            list_sessions_paginates,
            list_sessions_walk_is_exact_while_creating,
            replace_state_appends_versions,
            merge_state_applies_rfc_7386,
            stale_expected_version_conflicts_and_writes_nothing,
            state_at_any_version,
            small_edits_of_a_big_state_read_back_exactly,
            history_windows,
            diff_between_versions,
            rollback_appends_a_copy_and_keeps_history,
            fork_copies_state_at_a_version,
            expired_session_is_not_found_everywhere,
            sweep_removes_expired_sessions,
            tenants_are_isolated,
            every_mutation_writes_a_trace,
            traces_filter_and_paginate,
            documents_over_the_limit_are_rejected,
            concurrent_expected_version_has_one_winner,
            concurrent_updates_lose_nothing,
            reopen_keeps_every_acknowledged_write,
            trace_feed_is_every_trace_in_commit_order,
            server_records_round_trip,
            writes_answer_the_session_as_stored,
            stats_count_a_tenants_records,
        );
        $crate::conformance_suite!(@cases $factory; conversation_cases;
            turns_are_numbered_and_keep_their_input,
            turn_state_after_writes_a_version_atomically,
            bad_turns_are_refused,
            turn_lists_order_and_paginate,
            concurrent_turns_have_no_gaps,
            memories_have_defaults_and_limits,
            same_content_in_a_scope_is_one_memory,
            memory_updates_are_versioned,
            deleted_memories_are_gone,
            memory_lists_filter_and_paginate,
            search_ranks_and_filters,
            memories_and_turns_are_tenant_isolated,
            session_delete_takes_turns_and_memories,
            context_gathers_state_memories_and_turns,
            turns_and_memories_survive_reopen,
            a_vector_is_set_only_on_its_version,
            vectors_pending_while_the_embedder_is_down_come_later,
            turn_and_memory_changes_are_traced,
            api_keys_authenticate_until_revoked,
        );
        $crate::conformance_suite!(@cases $factory; entity_cases;
            entities_are_versioned_records,
            entity_input_is_checked,
            entity_lists_filter_and_paginate,
            entities_are_tenant_isolated,
            deleted_entities_are_gone,
            entity_changes_are_traced_and_kept,
            concurrent_entity_updates,
        );
        $crate::conformance_suite!(@cases $factory; archive_cases;
            an_archive_restores_exactly,
            a_tenant_exports_alone,
            an_import_writes_a_session_whole_or_not_at_all,
            an_export_beside_writes_imports_whole,
            an_interrupted_import_completes_when_run_again,
            erasing_a_user_takes_everything_of_theirs,
            an_erased_user_stays_erased,
            an_import_refuses_a_taken_memory_or_entity_id,
            an_erasure_beside_writes_leaves_nothing,
        );
        $crate::conformance_suite!(@cases $factory; retention_cases;
            retention_prunes_old_versions_and_keeps_the_rest_exact,
            retention_policies_are_kept_and_applied_by_the_sweep,
        );
        #[test]
        fn model_property() {
            $crate::testing::check_against_model(|| $factory);
        }
    };
    (@cases $factory:expr; $module:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::testing::$module::$case($factory).await;
            }
        )*
    };
}
