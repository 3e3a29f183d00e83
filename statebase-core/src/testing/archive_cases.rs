//! Cases for export and import: an archive of every kind of record restores exactly into
//! the backend under test, and out of it again.

use super::{code, epoch, Env, StoreFactory};
use crate::archive::{self, Counts, ExportOptions, ImportReport};
use crate::store::*;
use crate::{
    AddMemory, AddTurn, Config, CreateEntity, CreateSession, ForkFrom, HistoryQuery, KeyLimits,
    ListEntities, ListMemories, ListTraces, ListTurns, ManualClock, MemoryHit, MemoryStore, Order,
    Retention, RollbackTo, SearchMemories, StateBase, StateWrite, UpdateEntity, UpdateMemory,
    WebhookEndpoint,
};
use serde_json::json;
use std::sync::Arc;

/// A store with every kind of record, in two tenants: sessions with many versions (deltas
/// among them), a rollback and a fork, turns, memories of sessions and of a user (one
/// updated), entities (one updated), a deleted session's traces, a key and a webhook.
pub async fn populated() -> StateBase<MemoryStore> {
    let clock = Arc::new(ManualClock::new(epoch()));
    let config = Config {
        clock: clock.clone(),
        ..Config::default()
    };
    let sb = StateBase::with_config(MemoryStore::new(), config);
    let tick = || clock.advance(chrono::Duration::milliseconds(1500));
    let s = sb
        .create_session(CreateSession {
            user_id: Some("u1".into()),
            initial_state: Some(json!({"notes": "x".repeat(600), "step": 0})),
            metadata: Some(json!({"team": "support"})),
            ..CreateSession::new("agent")
        })
        .await
        .unwrap();
    for step in 1..=40 {
        tick();
        let write = StateWrite::new(json!({"step": step})).reasoning(format!("step {step}"));
        sb.merge_state(&s.id, write).await.unwrap();
    }
    sb.rollback(
        &s.id,
        RollbackTo {
            version: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tick();
    let mut turn = AddTurn::text("hello", "hi there");
    turn.state_after = Some(json!({"greeted": true}));
    sb.add_turn(&s.id, turn).await.unwrap();
    sb.add_turn(&s.id, AddTurn::text("bye", "see you"))
        .await
        .unwrap();
    let m = sb
        .add_memory(AddMemory {
            tags: Some(vec!["pets".into()]),
            ..AddMemory::new(&s.id, "The user has two cats named Miso and Tofu")
        })
        .await
        .unwrap();
    tick();
    sb.update_memory(
        &m.id,
        UpdateMemory {
            content: Some("The user has three cats".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sb.add_memory(AddMemory::new(&s.id, "Prefers email over phone calls"))
        .await
        .unwrap();
    sb.add_memory(AddMemory {
        user_id: Some("u1".into()),
        content: "Lives in Lisbon".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = sb
        .create_entity(CreateEntity {
            session_id: s.id.clone(),
            entity_type: "order".into(),
            entity_id: "o-1".into(),
            attributes: Some(json!({"status": "open"})),
        })
        .await
        .unwrap();
    tick();
    sb.update_entity(
        &e.id,
        UpdateEntity {
            attributes: json!({"status": "shipped"}),
            expected_version: None,
        },
    )
    .await
    .unwrap();
    sb.fork(
        &s.id,
        ForkFrom {
            version: Some(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let gone = sb
        .create_session(CreateSession::new("agent"))
        .await
        .unwrap();
    sb.delete_session(&gone.id).await.unwrap();
    let other = sb.tenant("other");
    let o = other
        .create_session(CreateSession::new("agent"))
        .await
        .unwrap();
    other
        .add_memory(AddMemory::new(&o.id, "Another tenant's fact"))
        .await
        .unwrap();
    sb.create_api_key("default", "ops", KeyLimits::default(), None)
        .await
        .unwrap();
    sb.store()
        .put_webhook(WebhookEndpoint {
            id: "wh_000000000001".into(),
            tenant: "default".into(),
            url: "https://example.com/hook".into(),
            events: vec!["session.created".into()],
            secret: "whsec_test".into(),
            created_at: sb.now(),
        })
        .await
        .unwrap();
    // Policies that prune nothing here, which an archive must carry.
    let keep = |n| Retention {
        keep_versions: Some(n),
        ..Default::default()
    };
    let other_policy = Retention {
        keep_trace_days: Some(3650),
        ..keep(1000)
    };
    other.set_retention(Some(other_policy)).await.unwrap();
    sb.set_session_retention(&s.id, Some(keep(500)))
        .await
        .unwrap();
    sb
}

/// The whole archive of `store`, vectors included, stamped at [`epoch`].
pub async fn export_all<S: ServerStore + ?Sized>(store: &S) -> Vec<u8> {
    let mut out = Vec::new();
    let options = ExportOptions {
        tenant: None,
        with_vectors: true,
    };
    archive::export(store, &options, epoch(), &mut out, &mut |_| {})
        .await
        .unwrap();
    out
}

pub(crate) async fn import<S: ServerStore + ?Sized>(
    store: &S,
    bytes: &[u8],
) -> crate::Result<ImportReport> {
    archive::import(store, bytes, &mut |_| {}).await
}

/// An archive of every kind of record imports into the backend whole; exported again it is
/// the same, byte for byte (after a reopen too); every session, version, turn, memory,
/// entity, trace and search reads back as from the source; importing again writes nothing;
/// imported traces stay out of the webhook feed.
pub async fn an_archive_restores_exactly<F: StoreFactory>(factory: F) {
    let source = populated().await;
    let bytes = export_all(source.store()).await;
    let (_, counts) = archive::verify(&bytes[..]).await.unwrap();
    assert!(counts.versions > 40 && counts.traces > 50, "{counts:?}");
    assert_eq!(
        (counts.sessions, counts.memories, counts.entities),
        (3, 4, 1)
    );
    assert_eq!(counts.retention_policies, 2);

    let mut env = Env::new(factory).await;
    let report = import(env.sb().store(), &bytes).await.unwrap();
    assert_eq!(report.read, counts);
    assert_eq!(report.imported, counts);
    assert_eq!(report.skipped, Counts::default());
    assert_eq!(
        export_all(env.sb().store()).await,
        bytes,
        "export B = export A"
    );
    env.reopen().await;
    assert_eq!(export_all(env.sb().store()).await, bytes, "after a reopen");
    assert_eq!(
        env.sb().store().trace_feed_end().await.unwrap(),
        0,
        "imported traces entered the webhook feed"
    );

    assert_same_answers(&source, env.sb()).await;
    let forked = source
        .list_sessions(Default::default())
        .await
        .unwrap()
        .data
        .into_iter()
        .find(|s| s.metadata.contains_key("forked_from"))
        .expect("the fork");
    assert_eq!(env.sb().get_session(&forked.id).await.unwrap(), forked);

    let again = import(env.sb().store(), &bytes).await.unwrap();
    assert_eq!(again.imported.sessions + again.imported.traces, 0);
    assert_eq!(
        again.skipped,
        Counts {
            api_keys: 0,
            webhooks: 0,
            ..counts
        }
    );
    assert_eq!(export_all(env.sb().store()).await, bytes, "a second import");
}

/// `b` answers as `a` does, read through statebase as the API would, in both tenants of
/// [`populated`]: every session, its history and turns, every memory and its history,
/// entities, a search and the audit trail.
pub async fn assert_same_answers<A: Store, B: Store>(a: &StateBase<A>, b: &StateBase<B>) {
    for tenant in ["default", "other"] {
        let (a, b) = (a.tenant(tenant), b.tenant(tenant));
        let sessions = a.list_sessions(Default::default()).await.unwrap().data;
        assert!(!sessions.is_empty(), "no session of {tenant} to compare");
        assert_eq!(
            b.list_sessions(Default::default()).await.unwrap().data,
            sessions
        );
        assert_eq!(b.retention().await.unwrap(), a.retention().await.unwrap());
        for s in &sessions {
            assert_eq!(b.get_session(&s.id).await.unwrap(), *s);
            assert_eq!(
                b.session_retention(&s.id).await.unwrap(),
                a.session_retention(&s.id).await.unwrap()
            );
            let all = HistoryQuery {
                limit: Some(100),
                from_version: Some(0),
                ..Default::default()
            };
            let history = a.history(&s.id, all.clone()).await.unwrap();
            assert_eq!(history.versions.len() as u64, s.version + 1);
            assert_eq!(b.history(&s.id, all).await.unwrap(), history);
            let turns = ListTurns {
                order: Order::Asc,
                ..Default::default()
            };
            assert_eq!(
                b.list_turns(&s.id, turns.clone()).await.unwrap(),
                a.list_turns(&s.id, turns).await.unwrap()
            );
        }
        let memories = a.list_memories(ListMemories::default()).await.unwrap().data;
        assert_eq!(
            b.list_memories(ListMemories::default()).await.unwrap().data,
            memories
        );
        for m in &memories {
            assert_eq!(
                b.memory_history(&m.id).await.unwrap(),
                a.memory_history(&m.id).await.unwrap()
            );
        }
        let entities = ListEntities {
            limit: Some(100),
            ..Default::default()
        };
        assert_eq!(
            b.list_entities(entities.clone()).await.unwrap(),
            a.list_entities(entities).await.unwrap()
        );
        let query = SearchMemories::new("how many cats does the user have");
        let (found, expected) = (
            b.search_memories(query.clone()).await.unwrap(),
            a.search_memories(query).await.unwrap(),
        );
        assert_eq!(found.len(), expected.len());
        for (hit, want) in found.iter().zip(&expected) {
            // A database that computes cosine itself (pgvector) may land a float's last
            // bit away from core's in-process arithmetic.
            let close = |x: f32, y: f32| (x - y).abs() < 1e-6;
            assert!(close(hit.score, want.score) && close(hit.vector_score, want.vector_score));
            let rescored = MemoryHit {
                score: want.score,
                vector_score: want.vector_score,
                ..hit.clone()
            };
            assert_eq!(&rescored, want);
        }
        let traces = ListTraces {
            limit: Some(100),
            ..Default::default()
        };
        assert_eq!(
            b.list_traces(traces.clone()).await.unwrap(),
            a.list_traces(traces).await.unwrap()
        );
    }
}

/// One tenant's export holds that tenant's records only, and restores beside another's.
pub async fn a_tenant_exports_alone<F: StoreFactory>(factory: F) {
    let source = populated().await;
    let mut out = Vec::new();
    let options = ExportOptions {
        tenant: Some("other".into()),
        with_vectors: false,
    };
    let counts = archive::export(source.store(), &options, epoch(), &mut out, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        (counts.sessions, counts.memories, counts.api_keys),
        (1, 1, 0)
    );
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(!text.contains("\"default\""), "another tenant's record");
    assert!(
        !text.contains("\"embedding\""),
        "a vector without --with-vectors"
    );

    let env = Env::new(factory).await;
    let report = import(env.sb().store(), &out).await.unwrap();
    assert_eq!(report.imported, counts);
    assert!(env
        .sb()
        .list_sessions(Default::default())
        .await
        .unwrap()
        .data
        .is_empty());
    let other = env.sb().tenant("other");
    let m = &other
        .list_memories(ListMemories::default())
        .await
        .unwrap()
        .data[0];
    assert_eq!(m.content, "Another tenant's fact");
    // Without its vector the memory is embedded again, and then found by meaning.
    assert_eq!(other.reembed_memories().await.unwrap(), 1);
    let hits = other
        .search_memories(SearchMemories::new("another tenant's fact"))
        .await
        .unwrap();
    assert_eq!(hits[0].id, m.id);
}

/// A session whose memory clashes with one the store has (same dedupe key) is refused
/// whole: none of its versions, turns, memories or entities are written.
pub async fn an_import_writes_a_session_whole_or_not_at_all<F: StoreFactory>(factory: F) {
    let source = populated().await;
    let bytes = export_all(source.store()).await;
    let env = Env::new(factory).await;
    import(env.sb().store(), &bytes).await.unwrap();

    // The same first session under new ids, its memories' contents (dedupe keys) kept.
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"session\"") && l.contains("\"memory_count\":2"))
        .unwrap();
    let end = first
        + 1
        + lines[first + 1..]
            .iter()
            .position(|l| {
                !l.contains("\"kind\":\"version\"")
                    && !l.contains("\"kind\":\"turn\"")
                    && !l.contains("\"kind\":\"memory\"")
                    && !l.contains("\"kind\":\"entity\"")
            })
            .unwrap();
    let session: serde_json::Value = serde_json::from_str(lines[first]).unwrap();
    let id = session["session"]["id"].as_str().unwrap().to_owned();
    let mut renamed: Vec<String> = vec![lines[0].to_owned()];
    for line in &lines[first..end] {
        let line = line.replace(&id, "sess_renamed0001");
        // Ids are values (after a colon); `turn_count` is a key.
        let line = line
            .replace(":\"mem_", ":\"mem_x")
            .replace(":\"ent_", ":\"ent_x");
        let line = line.replace(":\"turn_", ":\"turn_x");
        renamed.push(line);
    }
    let result = import(env.sb().store(), seal(&renamed).as_bytes()).await;
    assert_eq!(code(result), "duplicate_content");
    let store = env.sb().store();
    assert!(store
        .session("default", "sess_renamed0001")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .versions("default", "sess_renamed0001", 0..100)
        .await
        .unwrap()
        .is_empty());
    let query = MemoryQuery {
        limit: 100,
        session_id: Some("sess_renamed0001".into()),
        ..Default::default()
    };
    assert!(store
        .list_memories("default", &query)
        .await
        .unwrap()
        .is_empty());
    let entities = EntityQuery {
        limit: 100,
        session_id: Some("sess_renamed0001".into()),
        ..Default::default()
    };
    assert!(store
        .list_entities("default", &entities)
        .await
        .unwrap()
        .is_empty());
}

/// Exports made while agents write hold each session whole (its versions and turns up to
/// the session record they read), so that they import.
pub async fn an_export_beside_writes_imports_whole<F: StoreFactory>(factory: F) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let mut ids = Vec::new();
    for _ in 0..8 {
        let s = sb
            .create_session(CreateSession::new("agent"))
            .await
            .unwrap();
        ids.push(s.id);
    }
    let (stop, writes) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let writer = {
        let (sb, ids, stop, writes) = (sb.clone(), ids.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = writes.load(Ordering::Relaxed);
                let id = &ids[n % ids.len()];
                let write = StateWrite::new(json!({ "n": n }));
                sb.merge_state(id, write).await.unwrap();
                sb.add_turn(id, AddTurn::text("q", "a")).await.unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Exports until three ran while writes committed.
    let mut archives = Vec::new();
    for _ in 0..200 {
        if archives.len() == 3 {
            break;
        }
        let before = writes.load(Ordering::Relaxed);
        let bytes = export_all(sb.store()).await;
        if writes.load(Ordering::Relaxed) > before && before > 0 {
            archives.push(bytes);
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(archives.len(), 3, "no export ran beside writes");
    for bytes in archives {
        import(&MemoryStore::new(), &bytes).await.unwrap();
    }
}

/// An import cut short (a killed process, a truncated file) leaves whole sessions only,
/// and run again on the whole archive it completes: the store then exports as the source.
pub async fn an_interrupted_import_completes_when_run_again<F: StoreFactory>(factory: F) {
    let source = populated().await;
    let bytes = export_all(source.store()).await;
    let text = String::from_utf8(bytes.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Cut in the middle of the second session's records.
    let second = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"kind\":\"session\""))
        .nth(1)
        .unwrap()
        .0;
    let cut: String = lines[..second + 2]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let env = Env::new(factory).await;
    let store = env.sb().store();
    let e = import(store, cut.as_bytes()).await.unwrap_err();
    assert!(e.to_string().contains("without its trailer"), "{e}");
    // The first session went in whole; the cut one did not go in at all.
    let first: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    let cut_off: serde_json::Value = serde_json::from_str(lines[second]).unwrap();
    let (tenant, id) = (&first["tenant"], &first["session"]["id"]);
    let (tenant, id) = (tenant.as_str().unwrap(), id.as_str().unwrap());
    let version = first["session"]["version"].as_u64().unwrap();
    let versions = store.versions(tenant, id, 0..u64::MAX).await.unwrap();
    assert_eq!(versions.len() as u64, version + 1);
    let (tenant, id) = (&cut_off["tenant"], &cut_off["session"]["id"]);
    let (tenant, id) = (tenant.as_str().unwrap(), id.as_str().unwrap());
    assert!(store.session(tenant, id).await.unwrap().is_none());

    let report = import(store, &bytes).await.unwrap();
    assert_eq!(report.skipped.sessions, 1);
    assert!(export_all(store).await == bytes, "the archives differ");
}

/// `lines` (a header, then records) with the trailer that makes them a sound archive.
fn seal(lines: &[String]) -> String {
    use sha2::Digest;
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut counts = Counts::default();
    for line in &lines[1..] {
        let kind: serde_json::Value = serde_json::from_str(line).unwrap();
        match kind["kind"].as_str().unwrap() {
            "session" => counts.sessions += 1,
            "version" => counts.versions += 1,
            "turn" => counts.turns += 1,
            "memory" => counts.memories += 1,
            "entity" => counts.entities += 1,
            other => panic!("{other} lines are not sealed here"),
        }
    }
    let sha256: String = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let trailer = json!({"kind": "trailer", "counts": counts, "sha256": sha256});
    text.push_str(&format!("{trailer}\n"));
    text
}

/// What [`user_records`] wrote for one user.
struct UserRecords {
    sessions: Vec<crate::Session>,
    memories: Vec<crate::Memory>,
    turn: crate::Turn,
    entity: crate::Entity,
}

/// Writes a user's records in `sb`'s tenant: a session with versions, turns, a memory and
/// an entity, a fork of it, and a user-level memory.
async fn user_records<S: Store>(sb: &StateBase<S>, user: &str) -> UserRecords {
    let s = sb
        .create_session(CreateSession {
            user_id: Some(user.into()),
            ..CreateSession::new("agent")
        })
        .await
        .unwrap();
    for step in 1..=5 {
        let write = StateWrite::new(json!({"step": step, "owner": user}));
        sb.merge_state(&s.id, write).await.unwrap();
    }
    let mut turn = AddTurn::text(&format!("{user} says hello"), "hi");
    turn.state_after = Some(json!({"greeted": true}));
    let turn = sb.add_turn(&s.id, turn).await.unwrap();
    let m = sb
        .add_memory(AddMemory::new(&s.id, &format!("{user} keeps bees")))
        .await
        .unwrap();
    let entity = sb
        .create_entity(CreateEntity {
            session_id: s.id.clone(),
            entity_type: "order".into(),
            entity_id: format!("{user}-1"),
            attributes: Some(json!({"status": "open"})),
        })
        .await
        .unwrap();
    let fork = sb
        .fork(
            &s.id,
            ForkFrom {
                version: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let own = sb
        .add_memory(AddMemory {
            user_id: Some(user.into()),
            content: format!("{user} lives by the sea"),
            ..Default::default()
        })
        .await
        .unwrap();
    let s = sb.get_session(&s.id).await.unwrap();
    UserRecords {
        sessions: vec![s, fork],
        memories: vec![m, own],
        turn,
        entity,
    }
}

/// Every trace of the tenant, newest first.
async fn all_traces<S: Store>(sb: &StateBase<S>) -> Vec<crate::Trace> {
    let mut all = Vec::new();
    loop {
        let page = sb
            .list_traces(ListTraces {
                limit: Some(100),
                starting_after: all.last().map(|t: &crate::Trace| t.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        all.extend(page.data);
        if !page.has_more {
            return all;
        }
    }
}

/// A response kept for an idempotent retry, naming `subjects`.
fn kept(key: &str, tenant: &str, subjects: &[&str]) -> IdempotentResponse {
    IdempotentResponse {
        key: key.into(),
        tenant: tenant.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        at: super::epoch(),
        body: key.as_bytes().to_vec(),
    }
}

/// Erasing a user takes their sessions with every version, turn, memory and entity, their
/// user-level memories, the traces of all those and the kept responses naming them, and
/// leaves one `user.erased` trace (in the webhook feed) with the counts. Another user of
/// the tenant, the same user id in another tenant, and a fork another user made of an
/// erased session keep everything, after a reopen too. Erasing again erases nothing.
pub async fn erasing_a_user_takes_everything_of_theirs<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let sb = env.sb().clone();
    let u1 = user_records(&sb, "u1").await;
    let u2 = user_records(&sb, "u2").await;
    // u2's fork of u1's session outlives it: a fork holds its own state.
    let u2_fork = sb
        .fork(
            &u1.sessions[0].id,
            ForkFrom {
                version: Some(4),
                user_id: Some("u2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let other = sb.tenant("other");
    let elsewhere = user_records(&other, "u1").await;
    let store = sb.store();
    let u1_session = u1.sessions[0].id.as_str();
    for r in [
        kept("key_1/a", "default", &["user:u1"]),
        kept("key_1/b", "default", &[u1_session]),
        kept("key_1/c", "default", &[&u1.memories[1].id]),
        kept("key_1/d", "default", &["user:u2", &u2.sessions[0].id]),
        kept("key_2/a", "other", &["user:u1", &elsewhere.sessions[0].id]),
    ] {
        store.put_idempotent_response(r).await.unwrap();
    }
    let erased_ids: Vec<&str> = u1
        .sessions
        .iter()
        .map(|s| s.id.as_str())
        .chain(u1.memories.iter().map(|m| m.id.as_str()))
        .collect();
    let of_u1 = |t: &crate::Trace| {
        erased_ids.contains(&t.resource_id.as_str())
            || t.session_id
                .as_deref()
                .is_some_and(|s| erased_ids.contains(&s))
    };
    let before = all_traces(&sb).await;
    let u1_traces = before.iter().filter(|t| of_u1(t)).count() as u64;
    let u2_session_before = sb.get_session(&u2.sessions[0].id).await.unwrap();
    let u2_history_before = sb
        .history(&u2_fork.id, HistoryQuery::default())
        .await
        .unwrap();
    let feed_end = store.trace_feed_end().await.unwrap();
    // The in-process index is loaded: it must forget the erased memories too.
    let hits = sb
        .search_memories(SearchMemories::new("who keeps bees"))
        .await
        .unwrap();
    assert!(hits.iter().any(|h| h.id == u1.memories[0].id));

    env.advance(60);
    let erasure = sb.erase_user("u1").await.unwrap();
    // The env reopens the store below: no other handle may hold it.
    drop((other, sb));
    let versions: u64 = u1.sessions.iter().map(|s| s.version + 1).sum();
    assert_eq!(
        erasure,
        crate::Erasure {
            sessions: 2,
            versions,
            turns: 1,
            memories: 2,
            entities: 1,
            traces: u1_traces,
            idempotent_responses: 3,
        }
    );

    for _ in 0..2 {
        let sb = env.sb();
        let store = sb.store();
        for s in &u1.sessions {
            assert_eq!(code(sb.get_session(&s.id).await), "session_not_found");
            assert!(store
                .versions("default", &s.id, 0..u64::MAX)
                .await
                .unwrap()
                .is_empty());
        }
        assert!(store.turn("default", &u1.turn.id).await.unwrap().is_none());
        for m in &u1.memories {
            assert_eq!(code(sb.get_memory(&m.id).await), "memory_not_found");
            assert!(store
                .memory_revisions("default", &m.id)
                .await
                .unwrap()
                .is_empty());
        }
        assert_eq!(code(sb.get_entity(&u1.entity.id).await), "entity_not_found");
        let u1_memories = sb
            .list_memories(ListMemories {
                user_id: Some("u1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(u1_memories.data.is_empty());
        let hits = sb
            .search_memories(SearchMemories::new("who keeps bees"))
            .await
            .unwrap();
        let found: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        assert!(found.contains(&u2.memories[0].id.as_str()), "{found:?}");
        assert!(!found.contains(&u1.memories[0].id.as_str()), "{found:?}");

        let after = all_traces(sb).await;
        assert!(
            !after.iter().any(of_u1),
            "a trace of what was erased is left"
        );
        assert_eq!(after.len() as u64, before.len() as u64 - u1_traces + 1);
        let trace = &after[0];
        assert_eq!(
            (trace.action.as_str(), trace.resource_type.as_str()),
            ("user.erased", "user")
        );
        assert_eq!(
            (trace.resource_id.as_str(), &trace.session_id),
            ("u1", &None)
        );
        assert_eq!(trace.details, serde_json::to_value(erasure).unwrap());
        let feed = store.trace_feed(feed_end, 10).await.unwrap();
        assert_eq!(feed.len(), 1, "the erasure is the one new event");
        assert_eq!(feed[0].trace, *trace);

        for key in ["key_1/a", "key_1/b", "key_1/c"] {
            assert_eq!(store.idempotent_response(key).await.unwrap(), None, "{key}");
        }
        for key in ["key_1/d", "key_2/a"] {
            assert!(
                store.idempotent_response(key).await.unwrap().is_some(),
                "{key}"
            );
        }
        // What is not u1's in this tenant is untouched.
        assert_eq!(
            sb.get_session(&u2.sessions[0].id).await.unwrap(),
            u2_session_before
        );
        for m in &u2.memories {
            assert_eq!(sb.get_memory(&m.id).await.unwrap(), *m);
        }
        assert_eq!(sb.get_entity(&u2.entity.id).await.unwrap(), u2.entity);
        assert_eq!(
            sb.get_turn(&u2.sessions[0].id, &u2.turn.id).await.unwrap(),
            u2.turn
        );
        assert_eq!(
            sb.history(&u2_fork.id, HistoryQuery::default())
                .await
                .unwrap(),
            u2_history_before
        );
        assert_eq!(sb.get_session(&u2_fork.id).await.unwrap(), u2_fork);
        // Nor is the same user id in another tenant.
        let other = sb.tenant("other");
        for s in &elsewhere.sessions {
            assert_eq!(other.get_session(&s.id).await.unwrap().id, s.id);
        }
        for m in &elsewhere.memories {
            assert_eq!(other.get_memory(&m.id).await.unwrap(), *m);
        }
        let stats = sb.stats().await.unwrap();
        assert_eq!((stats.sessions, stats.memories, stats.entities), (3, 2, 1));
        drop(other);
        env.reopen().await;
    }

    let again = env.sb().erase_user("u1").await.unwrap();
    assert_eq!(again, crate::Erasure::default());
    assert_eq!(code(env.sb().erase_user(" ").await), "invalid_request");
}

/// An erased user stays erased: an archive made before the erasure imports nothing of
/// theirs back (sessions, memories, traces), the store exports as before the import, and
/// late writes to their sessions and memories find nothing, nor are late responses naming
/// them kept.
pub async fn an_erased_user_stays_erased<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let u1 = user_records(sb, "u1").await;
    user_records(sb, "u2").await;
    let archive = export_all(sb.store()).await;
    sb.erase_user("u1").await.unwrap();
    let erased = export_all(sb.store()).await;

    let report = import(sb.store(), &archive).await.unwrap();
    assert_eq!(report.imported.sessions, 0, "{report:?}");
    assert_eq!(report.imported.memories, 0, "{report:?}");
    assert_eq!(report.imported.traces, 0, "{report:?}");
    assert!(
        export_all(sb.store()).await == erased,
        "the import brought records back"
    );

    let s = &u1.sessions[0].id;
    let write = StateWrite::new(json!({"late": true}));
    assert_eq!(code(sb.merge_state(s, write).await), "session_not_found");
    assert_eq!(
        code(sb.add_turn(s, AddTurn::text("late", "late")).await),
        "session_not_found"
    );
    assert_eq!(
        code(sb.add_memory(AddMemory::new(s, "late")).await),
        "session_not_found"
    );
    let update = UpdateMemory {
        content: Some("late".into()),
        ..Default::default()
    };
    assert_eq!(
        code(sb.update_memory(&u1.memories[1].id, update).await),
        "memory_not_found"
    );
    assert!(
        export_all(sb.store()).await == erased,
        "a late write brought records back"
    );
    // The response to a write that committed before the erasure, kept after it.
    let late = kept("key_1/late", "default", &[&u1.memories[0].id, s]);
    sb.store().put_idempotent_response(late).await.unwrap();
    let found = sb.store().idempotent_response("key_1/late").await.unwrap();
    assert_eq!(found, None, "a late response to an erased session was kept");
    let live = kept("key_1/live", "other", &[s]);
    sb.store()
        .put_idempotent_response(live.clone())
        .await
        .unwrap();
    let found = sb.store().idempotent_response("key_1/live").await.unwrap();
    assert_eq!(found, Some(live), "another tenant's tombstone counted");
}

/// An import of a session whose memory or entity has an id another record of the tenant
/// has is refused with a backend error, and writes nothing of the session.
pub async fn an_import_refuses_a_taken_memory_or_entity_id<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let u1 = user_records(sb, "u1").await;
    let store = sb.store();
    let source = &u1.sessions[0].id;
    let mut record = store.session("default", source).await.unwrap().unwrap();
    record.session.id = "sess_imported0001".into();
    record.session.memory_count = 1;
    let new_id = record.session.id.clone();
    let session = SessionArchive {
        record,
        versions: store
            .versions("default", source, 0..u64::MAX)
            .await
            .unwrap(),
        turns: vec![],
        memories: vec![],
        entities: vec![],
    };
    // A memory with a fresh dedupe key under an id that is taken.
    let taken = &u1.memories[0].id;
    let mut memory = store.memory("default", taken).await.unwrap().unwrap();
    memory.memory.session_id = Some(new_id.clone());
    memory.dedupe_key = "a key no memory has".into();
    let revisions = store.memory_revisions("default", taken).await.unwrap();
    let with_memory = SessionArchive {
        memories: vec![MemoryArchive {
            record: memory,
            revisions,
        }],
        ..session.clone()
    };
    // An entity with a fresh name under an id that is taken.
    let mut entity = u1.entity.clone();
    entity.session_id = new_id.clone();
    entity.entity_id = "a name no entity has".into();
    let versions = store
        .entity_versions("default", &entity.id, 0..u64::MAX)
        .await
        .unwrap();
    let with_entity = SessionArchive {
        entities: vec![EntityArchive { entity, versions }],
        ..session.clone()
    };
    for archive in [with_memory, with_entity] {
        let refused = store.import_session("default", archive).await;
        assert_eq!(code(refused), "internal_error");
        assert_eq!(store.session("default", &new_id).await.unwrap(), None);
        assert!(store
            .versions("default", &new_id, 0..u64::MAX)
            .await
            .unwrap()
            .is_empty());
    }
    // The records that hold those ids are as they were.
    assert_eq!(sb.get_memory(taken).await.unwrap(), u1.memories[0]);
    assert_eq!(sb.get_entity(&u1.entity.id).await.unwrap(), u1.entity);
    assert!(store.import_session("default", session).await.unwrap());
}

/// An erasure while a writer adds turns, state versions and memories to the user's session
/// is atomic: each write commits before it (and is erased) or after it (and finds no
/// session); nothing of the session is left, nor a trace of it.
pub async fn an_erasure_beside_writes_leaves_nothing<F: StoreFactory>(factory: F) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let u1 = user_records(&sb, "u1").await;
    let id = u1.sessions[0].id.clone();
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (sb, id, written) = (sb.clone(), id.clone(), written.clone());
        tokio::spawn(async move {
            let mut turns = Vec::new();
            for n in 0.. {
                let turn = sb.add_turn(&id, AddTurn::text(&format!("t{n}"), "ok"));
                let result = match n % 3 {
                    0 => turn.await.map(|t| turns.push(t.id)),
                    1 => sb
                        .merge_state(&id, StateWrite::new(json!({"n": n})))
                        .await
                        .map(drop),
                    _ => {
                        let memory = AddMemory::new(&id, &format!("fact number {n}"));
                        sb.add_memory(memory).await.map(drop)
                    }
                };
                match result {
                    Ok(()) => written.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        assert_eq!(e.code(), "session_not_found", "{e}");
                        return turns;
                    }
                };
            }
            unreachable!()
        })
    };
    while written.load(Ordering::Relaxed) < 20 {
        tokio::task::yield_now().await;
    }
    let erasure = sb.erase_user("u1").await.unwrap();
    let turns = writer.await.unwrap();
    // Every turn acknowledged came before the erasure: it took them all.
    assert_eq!(erasure.turns, 1 + turns.len() as u64, "{erasure:?}");
    let store = sb.store();
    assert_eq!(store.session("default", &id).await.unwrap(), None);
    assert!(store
        .versions("default", &id, 0..u64::MAX)
        .await
        .unwrap()
        .is_empty());
    for turn in &turns {
        assert!(
            store.turn("default", turn).await.unwrap().is_none(),
            "{turn} is left"
        );
    }
    let memories = sb
        .list_memories(ListMemories {
            user_id: Some("u1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(memories.data.is_empty(), "{:?}", memories.data);
    let traces = sb
        .list_traces(ListTraces {
            session_id: Some(id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(traces.data.is_empty(), "{:?}", traces.data);
    let stats = sb.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.memories, stats.entities), (0, 0, 0));
}
