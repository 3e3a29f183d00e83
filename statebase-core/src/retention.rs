//! Retention: policies of a tenant and of its sessions, applied on demand and by the
//! sweeper, that bound what a long-running agent stores (versions, turns, traces).

use crate::action;
use crate::codec;
use crate::error::{Error, Result};
use crate::model::{Pruned, Retention, RetentionApplied, RetentionPolicy, Session};
use crate::statebase::StateBase;
use crate::store::{Cursor, SessionLog, SessionQuery, Store, VersionRecord};
use chrono::Duration;
use serde_json::json;

/// The longest age retention keeps anything by: 100 years.
pub const MAX_KEEP_DAYS: u32 = 36_500;

/// Policies read a page at a time by the sweeper, and sessions too.
const PAGE: usize = 100;

/// What a policy is for: a session's cannot limit traces, which are the tenant's.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Tenant,
    Session,
}

fn check(keep: &Retention, scope: Scope) -> Result<()> {
    // At most what every backend and the API's schema (a signed 64-bit integer) hold.
    if keep
        .keep_versions
        .is_some_and(|n| n == 0 || n > i64::MAX as u64)
    {
        return Err(Error::invalid(
            "keep_versions",
            format!("must be from 1 to {}", i64::MAX),
        ));
    }
    let days = [
        ("keep_days", keep.keep_days),
        ("keep_turn_days", keep.keep_turn_days),
        ("keep_trace_days", keep.keep_trace_days),
    ];
    for (param, value) in days {
        if value.is_some_and(|d| !(1..=MAX_KEEP_DAYS).contains(&d)) {
            return Err(Error::invalid(
                param,
                format!("must be from 1 to {MAX_KEEP_DAYS}"),
            ));
        }
    }
    if scope == Scope::Session && keep.keep_trace_days.is_some() {
        return Err(Error::invalid(
            "keep_trace_days",
            "traces are the tenant's audit trail: only the tenant's policy limits them",
        ));
    }
    if *keep == Retention::default() {
        return Err(Error::invalid(
            "keep_versions",
            "give at least one of keep_versions, keep_days, keep_turn_days, keep_trace_days",
        ));
    }
    Ok(())
}

/// A page of the tenant's sessions' own policies, those after session id `after`, and
/// whether more may follow.
pub(crate) async fn session_policies<S: SessionLog + ?Sized>(
    store: &S,
    tenant: &str,
    after: &str,
) -> Result<(Vec<RetentionPolicy>, bool)> {
    let page = store
        .retention_policies(Some((tenant, after)), PAGE)
        .await?;
    let full = page.len() == PAGE;
    let mine: Vec<_> = page
        .into_iter()
        .take_while(|p| p.tenant == tenant)
        .collect();
    let more = full && mine.len() == PAGE;
    Ok((mine, more))
}

impl<S: Store> StateBase<S> {
    /// The tenant's retention policy, if it has one.
    pub async fn retention(&self) -> Result<Option<Retention>> {
        self.store().retention(&self.tenant, None).await
    }

    /// Sets (`Some`) or removes (`None`) the tenant's retention policy, with a
    /// `retention.updated` trace. It applies to each of the tenant's sessions without a
    /// policy of its own, and its `keep_trace_days` to all the tenant's traces.
    pub async fn set_retention(&self, policy: Option<Retention>) -> Result<Option<Retention>> {
        self.put_retention(None, policy).await
    }

    /// The session's own retention policy, if it has one.
    pub async fn session_retention(&self, id: &str) -> Result<Option<Retention>> {
        self.live_session(id).await?;
        self.store().retention(&self.tenant, Some(id)).await
    }

    /// Sets (`Some`) or removes (`None`) the session's own retention policy, which replaces
    /// the tenant's for it, with a `retention.updated` trace. It goes with the session.
    pub async fn set_session_retention(
        &self,
        id: &str,
        policy: Option<Retention>,
    ) -> Result<Option<Retention>> {
        self.live_session(id).await?;
        self.put_retention(Some(id), policy).await
    }

    async fn put_retention(
        &self,
        session_id: Option<&str>,
        policy: Option<Retention>,
    ) -> Result<Option<Retention>> {
        let scope = match session_id {
            Some(_) => Scope::Session,
            None => Scope::Tenant,
        };
        if let Some(p) = &policy {
            check(p, scope)?;
        }
        let resource = match session_id {
            Some(id) => ("session", id),
            None => ("tenant", self.tenant_id()),
        };
        let details = json!({ "retention": policy });
        let trace = self.resource_trace(
            session_id,
            resource,
            action::RETENTION_UPDATED,
            details,
            self.now(),
        );
        self.store()
            .put_retention(&self.tenant, session_id, policy, Some(trace))
            .await?;
        Ok(policy)
    }

    /// Removes the session's oldest state versions and turns by `keep` now (see
    /// [`Retention`]; `keep_trace_days` is refused: traces are the tenant's), with a
    /// `state.pruned` and a `turns.pruned` trace when any went. Every kept version still
    /// reads exactly, rollback and fork from one work, and forks made earlier keep their
    /// own state; reading a pruned version is `version_not_found`, saying so.
    pub async fn prune_session(&self, id: &str, keep: Retention) -> Result<Pruned> {
        check(&keep, Scope::Session)?;
        let s = self.live_session(id).await?.session;
        let (versions_pruned, turns_pruned) = self.prune_by(&s, &keep).await?;
        Ok(Pruned {
            session_id: id.to_owned(),
            versions_pruned,
            turns_pruned,
            kept_from: self.oldest_version(&s).await?,
            current_version: s.version,
        })
    }

    /// Applies the tenant's retention policies now: each session's own, or else the
    /// tenant's, and the tenant's `keep_trace_days` to its traces.
    pub async fn apply_retention(&self) -> Result<RetentionApplied> {
        let mut applied = RetentionApplied::default();
        if let Some(policy) = self.retention().await? {
            applied += self.apply_tenant_policy(&policy).await?;
        }
        let mut after = String::new();
        loop {
            let (mine, more) = session_policies(self.store(), self.tenant_id(), &after).await?;
            for p in mine {
                let id = p.session_id.unwrap_or_default();
                applied += self.apply_session_policy(&id, &p.retention).await?;
                after = id;
            }
            if !more {
                return Ok(applied);
            }
        }
    }

    /// [`apply_retention`](Self::apply_retention) for every tenant with a policy: what
    /// the background sweeper runs.
    pub async fn sweep_retention(&self) -> Result<RetentionApplied> {
        let mut applied = RetentionApplied::default();
        let mut after: Option<(String, String)> = None;
        loop {
            let from = after.as_ref().map(|(t, s)| (t.as_str(), s.as_str()));
            let page = self.store().retention_policies(from, PAGE).await?;
            for p in &page {
                let sb = self.tenant(&p.tenant);
                applied += match &p.session_id {
                    None => sb.apply_tenant_policy(&p.retention).await?,
                    Some(id) => sb.apply_session_policy(id, &p.retention).await?,
                };
                let session = p.session_id.clone().unwrap_or_default();
                after = Some((p.tenant.clone(), session));
            }
            if page.len() < PAGE {
                return Ok(applied);
            }
        }
    }

    /// The tenant's policy: its traces, and every session without a policy of its own.
    async fn apply_tenant_policy(&self, policy: &Retention) -> Result<RetentionApplied> {
        let mut applied = RetentionApplied::default();
        if let Some(days) = policy.keep_trace_days {
            let before = self.now() - Duration::days(i64::from(days));
            let details = json!({ "before": before, "keep_trace_days": days });
            let trace = self.resource_trace(
                None,
                ("tenant", self.tenant_id()),
                action::TRACES_PRUNED,
                details,
                self.now(),
            );
            applied.traces += self
                .store()
                .prune_traces(&self.tenant, before, trace)
                .await?;
        }
        let mut query = SessionQuery {
            limit: PAGE,
            ..SessionQuery::default()
        };
        loop {
            let page = self.store().list_sessions(&self.tenant, &query).await?;
            for rec in &page {
                let s = &rec.session;
                if self
                    .store()
                    .retention(&self.tenant, Some(&s.id))
                    .await?
                    .is_none()
                {
                    applied += self.apply_to(s, policy).await?;
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => query.after = Some(Cursor::from(&last.session)),
                _ => return Ok(applied),
            }
        }
    }

    async fn apply_session_policy(&self, id: &str, policy: &Retention) -> Result<RetentionApplied> {
        match self.store().session(&self.tenant, id).await? {
            Some(rec) => self.apply_to(&rec.session, policy).await,
            // Deleted meanwhile: its policy went with it.
            None => Ok(RetentionApplied::default()),
        }
    }

    async fn apply_to(&self, s: &Session, policy: &Retention) -> Result<RetentionApplied> {
        let (versions, turns) = match self.prune_by(s, policy).await {
            Ok(counts) => counts,
            // Deleted meanwhile: nothing left to prune.
            Err(Error::NotFound { .. }) => (0, 0),
            Err(e) => return Err(e),
        };
        Ok(RetentionApplied {
            sessions: 1,
            versions,
            turns,
            traces: 0,
        })
    }

    /// Prunes the session's versions and turns by `keep`, answering how many of each went.
    /// Reads no version unless an age rule needs it, and calls the store only when there
    /// may be something to remove, so that a sweep over many sessions stays cheap.
    async fn prune_by(&self, s: &Session, keep: &Retention) -> Result<(u64, u64)> {
        let now = self.now();
        let mut versions = 0;
        if let Some(cut) = self.version_cut(s, keep, now).await? {
            // From a snapshot, so that the oldest kept versions still decode.
            let before = codec::chain_start(cut.min(s.version));
            if before > 0 {
                let details = json!({
                    "before_version": before,
                    "keep_versions": keep.keep_versions,
                    "keep_days": keep.keep_days,
                });
                let trace = self.trace(&s.id, action::STATE_PRUNED, details, now);
                versions = self
                    .store()
                    .prune_versions(&self.tenant, &s.id, before, trace)
                    .await?;
            }
        }
        let mut turns = 0;
        if let Some(days) = keep.keep_turn_days {
            let before = now - Duration::days(i64::from(days));
            if s.turn_count > 0 && s.created_at < before {
                let details = json!({ "before": before, "keep_turn_days": days });
                let trace = self.trace(&s.id, action::TURNS_PRUNED, details, now);
                turns = self
                    .store()
                    .prune_turns(&self.tenant, &s.id, before, trace)
                    .await?;
            }
        }
        Ok((versions, turns))
    }

    /// The first version `keep` keeps (the later rule of the two keeps more), or `None`
    /// without a version rule.
    async fn version_cut(
        &self,
        s: &Session,
        keep: &Retention,
        now: crate::Timestamp,
    ) -> Result<Option<u64>> {
        let by_count = keep
            .keep_versions
            .map(|n| (s.version + 1).saturating_sub(n));
        let by_age = match keep.keep_days {
            None => None,
            Some(days) => {
                let since = now - Duration::days(i64::from(days));
                // Versions are written in time order, the first when the session was made.
                Some(if s.created_at >= since {
                    0
                } else if s.updated_at < since {
                    s.version
                } else {
                    let young = |v: &VersionRecord| v.created_at >= since;
                    self.first_version(s, 0, young).await?
                })
            }
        };
        Ok(match (by_count, by_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}
