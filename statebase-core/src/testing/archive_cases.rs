//! Cases for export and import: an archive of every kind of record restores exactly into
//! the backend under test, and out of it again.

use super::{code, epoch, Env, StoreFactory};
use crate::archive::{self, Counts, ExportOptions, ImportReport};
use crate::store::*;
use crate::{
    AddMemory, AddTurn, Config, CreateEntity, CreateSession, ForkFrom, HistoryQuery, KeyLimits,
    ListEntities, ListMemories, ListTraces, ListTurns, ManualClock, MemoryHit, MemoryStore, Order,
    RollbackTo, SearchMemories, StateBase, StateWrite, UpdateEntity, UpdateMemory, WebhookEndpoint,
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

async fn import<S: ServerStore + ?Sized>(store: &S, bytes: &[u8]) -> crate::Result<ImportReport> {
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
        for s in &sessions {
            assert_eq!(b.get_session(&s.id).await.unwrap(), *s);
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
