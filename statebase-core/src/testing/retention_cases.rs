//! Cases for retention: pruning a session on demand, and the policies of a tenant and of
//! its sessions, kept and applied by the sweep.

use super::archive_cases::{export_all, import};
use super::{code, Env, StoreFactory};
use crate::store::*;
use crate::{
    AddTurn, CreateSession, ForkFrom, HistoryQuery, ListTraces, ListTurns, MemoryStore, Pruned,
    Retention, RetentionApplied, RetentionPolicy, RollbackTo, StateBase, StateWrite,
};
use serde_json::json;

/// Retention removes a session's oldest versions, back to a snapshot, and keeps the rest
/// exact: every kept version reads as before (after a reopen too), history starts at the
/// oldest kept one, rollback and fork from a kept one work, an earlier fork keeps its own
/// state, a pruned version is `version_not_found` saying so, by count and by age (a version
/// either rule keeps stays), and a pruned session exports and imports.
pub async fn retention_prunes_old_versions_and_keeps_the_rest_exact<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = sb
        .create_session(CreateSession {
            initial_state: Some(json!({"notes": "x".repeat(600), "step": 0})),
            ttl_seconds: Some(crate::MAX_TTL_SECONDS),
            ..CreateSession::new("agent")
        })
        .await
        .unwrap();
    for step in 1..=100 {
        env.advance(3600);
        let write = StateWrite::new(json!({"step": step})).reasoning(format!("step {step}"));
        sb.merge_state(&s.id, write).await.unwrap();
    }
    let early_fork = sb
        .fork(
            &s.id,
            ForkFrom {
                version: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut before = Vec::new();
    for v in 0..=100 {
        before.push(sb.state_at(&s.id, v).await.unwrap());
    }
    let session = sb.get_session(&s.id).await.unwrap();
    let keep = |n| Retention {
        keep_versions: Some(n),
        ..Default::default()
    };
    // The last 20 are 81..=100; 80 is the snapshot 81 decodes from.
    let pruned = sb.prune_session(&s.id, keep(20)).await.unwrap();
    let expected = Pruned {
        session_id: s.id.clone(),
        versions_pruned: 80,
        turns_pruned: 0,
        kept_from: 80,
        current_version: 100,
    };
    assert_eq!(pruned, expected);
    drop(sb);
    for _ in 0..2 {
        let sb = env.sb();
        assert_eq!(sb.get_session(&s.id).await.unwrap(), session);
        for v in 80..=100 {
            assert_eq!(sb.state_at(&s.id, v).await.unwrap(), before[v as usize]);
        }
        for v in [0, 50, 79] {
            let e = sb.state_at(&s.id, v).await.unwrap_err();
            assert_eq!(e.code(), "version_not_found");
            assert!(e.to_string().contains("pruned by retention"), "{e}");
            assert!(e.to_string().contains("versions from 80"), "{e}");
        }
        assert_eq!(code(sb.diff(&s.id, 50, 90).await), "version_not_found");
        let history = sb
            .history(
                &s.id,
                HistoryQuery {
                    from_version: Some(0),
                    limit: Some(1000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(history.versions, before[80..]);
        assert_eq!(
            sb.state_at(&early_fork.id, 0).await.unwrap().state,
            before[10].state
        );
        let traces = sb
            .list_traces(ListTraces {
                action: Some("state.pruned".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(traces.data.len(), 1);
        env.reopen().await;
    }
    let sb = env.sb();
    assert_eq!(
        sb.prune_session(&s.id, keep(20))
            .await
            .unwrap()
            .versions_pruned,
        0
    );
    let rollback = |version| RollbackTo {
        version,
        ..Default::default()
    };
    let rolled = sb.rollback(&s.id, rollback(85)).await.unwrap();
    assert_eq!(rolled.session.state, before[85].state);
    assert_eq!(
        code(sb.rollback(&s.id, rollback(10)).await),
        "version_not_found"
    );
    let fork = |version| ForkFrom {
        version: Some(version),
        ..Default::default()
    };
    let forked = sb.fork(&s.id, fork(90)).await.unwrap();
    assert_eq!(forked.state, before[90].state);
    assert_eq!(code(sb.fork(&s.id, fork(5)).await), "version_not_found");

    // By age: versions are an hour apart; a day later, the last day's start at 96.
    env.advance(20 * 3600);
    let by_age = Retention {
        keep_days: Some(1),
        ..Default::default()
    };
    let pruned = sb.prune_session(&s.id, by_age).await.unwrap();
    assert_eq!((pruned.versions_pruned, pruned.kept_from), (16, 96));
    // Either rule keeps a version: 50 more by count keep what the day does not.
    let both = Retention {
        keep_versions: Some(50),
        keep_days: Some(1),
        ..Default::default()
    };
    assert_eq!(
        sb.prune_session(&s.id, both).await.unwrap().versions_pruned,
        0
    );
    for v in 96..=100 {
        assert_eq!(sb.state_at(&s.id, v).await.unwrap(), before[v as usize]);
    }
    let bytes = export_all(sb.store()).await;
    let copy = MemoryStore::new();
    import(&copy, &bytes).await.unwrap();
    assert!(
        export_all(&copy).await == bytes,
        "a pruned session did not round-trip"
    );

    assert_eq!(
        code(sb.prune_session(&s.id, keep(0)).await),
        "invalid_request"
    );
    let forever = Retention {
        keep_days: Some(u32::MAX),
        ..Default::default()
    };
    assert_eq!(
        code(sb.prune_session(&s.id, forever).await),
        "invalid_request"
    );
    let neither = Retention::default();
    assert_eq!(
        code(sb.prune_session(&s.id, neither).await),
        "invalid_request"
    );
    assert_eq!(
        code(sb.prune_session("sess_nothere00", keep(1)).await),
        "session_not_found"
    );
}

/// A session in each of `tenants`, all of 100 versions written an hour apart, side by
/// side, with a turn every 10 versions (10 turns each).
async fn hundred_hours<S: Store>(tenants: &[&StateBase<S>], advance: impl Fn(i64)) -> Vec<String> {
    let mut ids = Vec::new();
    for sb in tenants {
        let s = sb
            .create_session(CreateSession {
                initial_state: Some(json!({"step": 0})),
                ttl_seconds: Some(crate::MAX_TTL_SECONDS),
                ..CreateSession::new("agent")
            })
            .await
            .unwrap();
        ids.push(s.id);
    }
    for step in 1..=100 {
        advance(3600);
        for (sb, id) in tenants.iter().zip(&ids) {
            sb.merge_state(id, StateWrite::new(json!({"step": step})))
                .await
                .unwrap();
            if step % 10 == 0 {
                let turn = AddTurn::text(&format!("q{step}"), &format!("a{step}"));
                sb.add_turn(id, turn).await.unwrap();
            }
        }
    }
    ids
}

/// The session's turns, newest first.
async fn turns<S: Store>(sb: &StateBase<S>, id: &str) -> Vec<crate::Turn> {
    let all = ListTurns {
        limit: Some(100),
        ..Default::default()
    };
    sb.list_turns(id, all).await.unwrap().data
}

/// Every trace of the tenant, oldest first.
async fn all_traces<S: Store>(sb: &StateBase<S>) -> Vec<crate::Trace> {
    let query = TraceQuery {
        limit: 100_000,
        ..Default::default()
    };
    let mut traces = sb
        .store()
        .list_traces(sb.tenant_id(), &query)
        .await
        .unwrap();
    traces.reverse();
    traces
}

/// Policies are kept (across a reopen too) and applied by the sweep: a session's own
/// replaces its tenant's; versions by count, turns and traces by age; another tenant
/// without a policy keeps everything until it sets one and applies it on demand; a sweep
/// again removes nothing; a session's policy goes with it; bad policies are refused.
pub async fn retention_policies_are_kept_and_applied_by_the_sweep<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let sb = env.sb().clone();
    let other = sb.tenant("other");
    let ids = hundred_hours(&[&sb, &sb, &other], |seconds| env.advance(seconds)).await;
    let [a, b, c] = <[String; 3]>::try_from(ids).unwrap();
    let mut before = Vec::new();
    for v in 0..=100 {
        before.push(sb.state_at(&a, v).await.unwrap());
    }

    let tenant_policy = Retention {
        keep_versions: Some(50),
        keep_turn_days: Some(1),
        keep_trace_days: Some(2),
        ..Default::default()
    };
    let own = Retention {
        keep_versions: Some(20),
        ..Default::default()
    };
    assert_eq!(sb.retention().await.unwrap(), None);
    assert_eq!(
        sb.set_retention(Some(tenant_policy)).await.unwrap(),
        Some(tenant_policy)
    );
    assert_eq!(
        sb.set_session_retention(&b, Some(own)).await.unwrap(),
        Some(own)
    );
    // Refused: a session's trace limit, zero, too long, nothing, a missing session.
    let bad = [
        Retention {
            keep_trace_days: Some(1),
            ..Default::default()
        },
        Retention {
            keep_versions: Some(0),
            ..Default::default()
        },
        Retention {
            keep_versions: Some(1 << 63),
            ..Default::default()
        },
        Retention {
            keep_turn_days: Some(crate::MAX_KEEP_DAYS + 1),
            ..Default::default()
        },
        Retention::default(),
    ];
    for policy in bad {
        let result = sb.set_session_retention(&a, Some(policy)).await;
        assert_eq!(code(result), "invalid_request", "{policy:?}");
    }
    assert_eq!(
        code(sb.set_retention(Some(Retention::default())).await),
        "invalid_request"
    );
    assert_eq!(
        code(sb.set_session_retention("sess_nothere00", Some(own)).await),
        "session_not_found"
    );
    assert_eq!(sb.session_retention(&a).await.unwrap(), None);
    assert_eq!(other.retention().await.unwrap(), None);
    let updates = sb
        .list_traces(ListTraces {
            action: Some("retention.updated".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(updates.data.len(), 2);

    drop((sb, other));
    env.reopen().await;
    let sb = env.sb().clone();
    let other = sb.tenant("other");
    assert_eq!(sb.retention().await.unwrap(), Some(tenant_policy));
    assert_eq!(sb.session_retention(&b).await.unwrap(), Some(own));
    let listed = sb.store().retention_policies(None, 10).await.unwrap();
    let policy = |session_id: Option<&str>, retention| RetentionPolicy {
        tenant: "default".into(),
        session_id: session_id.map(str::to_owned),
        retention,
    };
    assert_eq!(listed, [policy(None, tenant_policy), policy(Some(&b), own)]);
    let after_own = sb.store().retention_policies(Some(("default", "")), 10);
    assert_eq!(after_own.await.unwrap(), [policy(Some(&b), own)]);

    // Now is hour 100: a day keeps the turns from hour 76, two days the traces from 52.
    let now = sb.now();
    let old_traces = all_traces(&sb)
        .await
        .iter()
        .filter(|t| t.timestamp < now - chrono::Duration::days(2))
        .count() as u64;
    let others_traces = all_traces(&other).await;
    let a_turns = turns(&sb, &a).await;
    let a_session = sb.get_session(&a).await.unwrap();

    let applied = sb.sweep_retention().await.unwrap();
    // a keeps 51..=100 back to the snapshot at 48; b keeps 81..=100 back to 80. a's turns
    // of hours 10..=70 (7 of them) went; b's own policy keeps every turn.
    let expected = RetentionApplied {
        sessions: 2,
        versions: 48 + 80,
        turns: 7,
        traces: old_traces,
    };
    assert_eq!(applied, expected);
    assert!(old_traces > 100, "{old_traces}");
    drop((sb, other));

    for _ in 0..2 {
        let sb = env.sb().clone();
        let other = sb.tenant("other");
        for v in 48..=100 {
            assert_eq!(sb.state_at(&a, v).await.unwrap(), before[v as usize]);
        }
        let e = sb.state_at(&a, 47).await.unwrap_err();
        assert!(e.to_string().contains("versions from 48"), "{e}");
        assert_eq!(code(sb.state_at(&b, 79).await), "version_not_found");
        assert_eq!(sb.state_at(&b, 80).await.unwrap().state["step"], 80);
        // Another tenant keeps everything.
        assert_eq!(other.state_at(&c, 0).await.unwrap().state["step"], 0);
        assert_eq!(all_traces(&other).await, others_traces);
        let numbers =
            |turns: Vec<crate::Turn>| -> Vec<u64> { turns.iter().map(|t| t.turn_number).collect() };
        assert_eq!(numbers(turns(&sb, &a).await), [10, 9, 8]);
        assert_eq!(
            numbers(turns(&sb, &b).await),
            (1..=10).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            code(sb.get_turn(&a, &a_turns[9].id).await),
            "turn_not_found",
            "the first turn went"
        );
        assert_eq!(sb.get_session(&a).await.unwrap().turn_count, 10);
        assert_eq!(sb.get_session(&a).await.unwrap(), a_session);
        // No trace is older than two days but the ones the prune wrote after them.
        let traces = all_traces(&sb).await;
        assert!(traces
            .iter()
            .all(|t| t.timestamp >= now - chrono::Duration::days(2)));
        let actions: Vec<&str> = traces
            .iter()
            .map(|t| t.action.as_str())
            .filter(|a| a.ends_with(".pruned"))
            .collect();
        assert_eq!(actions.iter().filter(|a| **a == "state.pruned").count(), 2);
        assert_eq!(actions.iter().filter(|a| **a == "turns.pruned").count(), 1);
        assert_eq!(actions.iter().filter(|a| **a == "traces.pruned").count(), 1);
        drop((sb, other));
        env.reopen().await;
    }
    let sb = env.sb().clone();
    let other = sb.tenant("other");
    // Pruned turns and versions, and the policies, export and import.
    let bytes = export_all(sb.store()).await;
    let copy = MemoryStore::new();
    import(&copy, &bytes).await.unwrap();
    assert!(
        export_all(&copy).await == bytes,
        "a pruned store did not round-trip"
    );
    let config = crate::Config {
        clock: env.clock.clone(),
        ..Default::default()
    };
    let copied = StateBase::with_config(copy, config);
    assert_eq!(copied.session_retention(&b).await.unwrap(), Some(own));
    assert_eq!(turns(&copied, &a).await, turns(&sb, &a).await);
    // Again: nothing more goes.
    let again = sb.sweep_retention().await.unwrap();
    assert_eq!(
        again,
        RetentionApplied {
            sessions: 2,
            ..Default::default()
        }
    );

    // The other tenant sets a policy and applies it on demand, to itself alone.
    let ten = Retention {
        keep_versions: Some(10),
        ..Default::default()
    };
    other.set_retention(Some(ten)).await.unwrap();
    let applied = other.apply_retention().await.unwrap();
    assert_eq!((applied.sessions, applied.versions), (1, 80));
    assert_eq!(code(other.state_at(&c, 79).await), "version_not_found");
    assert_eq!(sb.state_at(&a, 48).await.unwrap(), before[48]);

    // Without its own policy, b falls under the tenant's: its old turns go now.
    sb.set_session_retention(&b, None).await.unwrap();
    assert_eq!(sb.session_retention(&b).await.unwrap(), None);
    let applied = sb.apply_retention().await.unwrap();
    assert_eq!(
        (applied.sessions, applied.versions, applied.turns),
        (2, 0, 7)
    );
    // A session's policy goes with it.
    sb.set_session_retention(&b, Some(own)).await.unwrap();
    sb.delete_session(&b).await.unwrap();
    let listed = sb.store().retention_policies(None, 10).await.unwrap();
    let mut scopes: Vec<(&str, Option<&str>)> = listed
        .iter()
        .map(|p| (p.tenant.as_str(), p.session_id.as_deref()))
        .collect();
    scopes.sort();
    assert_eq!(scopes, [("default", None), ("other", None)]);
    let first = (listed[0].tenant.as_str(), "");
    let rest = sb
        .store()
        .retention_policies(Some(first), 10)
        .await
        .unwrap();
    assert_eq!(rest, listed[1..]);

    // Days on, every trace of the tenant is old, the newest of the feed among them: the
    // prune's own trace still comes after it in the feed.
    sb.set_retention(Some(tenant_policy)).await.unwrap();
    env.advance(3 * 86_400);
    let end = sb.store().trace_feed_end().await.unwrap();
    assert!(sb.apply_retention().await.unwrap().traces > 0);
    let feed = sb.store().trace_feed(end, 10).await.unwrap();
    let actions: Vec<&str> = feed.iter().map(|e| e.trace.action.as_str()).collect();
    assert_eq!(actions, ["traces.pruned", "turns.pruned"]);
    assert!(
        feed[0].position > end,
        "a feed position was given out twice"
    );

    sb.set_retention(None).await.unwrap();
    assert_eq!(sb.retention().await.unwrap(), None);
}
