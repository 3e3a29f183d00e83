//! Cases for entities: versioned records of a session under the application's type and id.

use super::{code, Env, StoreFactory};
use crate::store::*;
use crate::{
    action, Clock, CreateEntity, CreateSession, Entity, ListEntities, ListEntityVersions,
    ListTraces, Session, StateBase, UpdateEntity,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;

async fn session<S: Store>(sb: &StateBase<S>) -> Session {
    sb.create_session(CreateSession::new("agent"))
        .await
        .expect("create session")
}

fn create(session_id: &str, entity_type: &str, entity_id: &str, attributes: Value) -> CreateEntity {
    CreateEntity {
        session_id: session_id.to_owned(),
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        attributes: Some(attributes),
    }
}

fn replace(attributes: Value) -> UpdateEntity {
    UpdateEntity {
        attributes,
        expected_version: None,
    }
}

fn ids(entities: &[Entity]) -> Vec<String> {
    entities.iter().map(|e| e.id.clone()).collect()
}

/// An entity starts at version 1; an update replaces its attributes whole and adds a version;
/// every old version stays readable; a stale expected version conflicts and writes nothing.
pub async fn entities_are_versioned_records<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb).await;
    let e = sb
        .create_entity(create(
            &s.id,
            "customer",
            "c-42",
            json!({"name": "Ada", "tier": "gold"}),
        ))
        .await
        .unwrap();
    assert!(e.id.starts_with("ent_") && e.id.len() == 16, "{}", e.id);
    assert_eq!(
        (e.version, e.created_at, e.updated_at),
        (1, env.clock.now(), env.clock.now())
    );
    assert_eq!(sb.get_entity(&e.id).await.unwrap(), e);

    env.advance(5);
    let v2 = sb
        .update_entity(&e.id, replace(json!({"name": "Ada L."})))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(
        Value::Object(v2.attributes.clone()),
        json!({"name": "Ada L."})
    );
    assert_eq!(
        (v2.created_at, v2.updated_at),
        (e.created_at, env.clock.now())
    );
    assert_eq!(sb.get_entity(&e.id).await.unwrap(), v2);
    assert_eq!(sb.get_entity_at(&e.id, 1).await.unwrap(), e);
    assert_eq!(sb.get_entity_at(&e.id, 2).await.unwrap(), v2);
    assert_eq!(code(sb.get_entity_at(&e.id, 3).await), "version_not_found");
    assert_eq!(code(sb.get_entity_at(&e.id, 0).await), "version_not_found");

    let stale = UpdateEntity {
        expected_version: Some(1),
        ..replace(json!({"lost": true}))
    };
    assert_eq!(
        code(sb.update_entity(&e.id, stale).await),
        "version_conflict"
    );
    let fresh = UpdateEntity {
        expected_version: Some(2),
        ..replace(json!({}))
    };
    assert_eq!(sb.update_entity(&e.id, fresh).await.unwrap().version, 3);
    let history = sb
        .entity_history(&e.id, ListEntityVersions::default())
        .await
        .unwrap();
    assert!(!history.has_more);
    let seen: Vec<(u64, Value)> = history
        .data
        .into_iter()
        .map(|v| (v.version, Value::Object(v.attributes)))
        .collect();
    assert_eq!(
        seen,
        [
            (1, json!({"name": "Ada", "tier": "gold"})),
            (2, json!({"name": "Ada L."})),
            (3, json!({})),
        ]
    );
    let page = |starting_after| ListEntityVersions {
        limit: Some(2),
        starting_after,
    };
    let first = sb.entity_history(&e.id, page(None)).await.unwrap();
    let numbers = |p: &crate::Page<crate::EntityVersion>| -> Vec<u64> {
        p.data.iter().map(|v| v.version).collect()
    };
    assert_eq!((numbers(&first), first.has_more), (vec![1, 2], true));
    assert_eq!(first.last_id.as_deref(), Some("2"));
    let rest = sb.entity_history(&e.id, page(Some(2))).await.unwrap();
    assert_eq!((numbers(&rest), rest.has_more), (vec![3], false));
    let past = sb
        .entity_history(&e.id, page(Some(u64::MAX)))
        .await
        .unwrap();
    assert!(past.data.is_empty() && !past.has_more);
    let bad = ListEntityVersions {
        limit: Some(0),
        starting_after: None,
    };
    assert_eq!(code(sb.entity_history(&e.id, bad).await), "invalid_request");
}

/// Bad input is refused with its code, writing nothing; the application id is unique per
/// session and type, and only there.
pub async fn entity_input_is_checked<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb).await;
    let other = session(sb).await;
    for (req, expected) in [
        (create(&s.id, " ", "x", json!({})), "invalid_request"),
        (create(&s.id, "t", "", json!({})), "invalid_request"),
        (create(&s.id, "t", "x", json!([1])), "invalid_request"),
        (
            create(&s.id, &"t".repeat(257), "x", json!({})),
            "invalid_request",
        ),
        (
            create("sess_missing", "t", "x", json!({})),
            "session_not_found",
        ),
        (
            create(&s.id, "t", "x", json!({"big": "x".repeat(2 << 20)})),
            "payload_too_large",
        ),
    ] {
        assert_eq!(code(sb.create_entity(req).await), expected);
    }
    let e = sb
        .create_entity(create(&s.id, "order", "o-1", json!({})))
        .await
        .unwrap();
    match sb
        .create_entity(create(&s.id, "order", "o-1", json!({"again": 1})))
        .await
    {
        Err(crate::Error::DuplicateEntity { other }) => assert_eq!(other, e.id),
        r => panic!("expected duplicate_entity, got {r:?}"),
    }
    // The same application id under another type or in another session is another entity.
    sb.create_entity(create(&s.id, "invoice", "o-1", json!({})))
        .await
        .unwrap();
    sb.create_entity(create(&other.id, "order", "o-1", json!({})))
        .await
        .unwrap();
    assert_eq!(
        code(sb.update_entity(&e.id, replace(json!("text"))).await),
        "invalid_request"
    );
    assert_eq!(
        code(sb.update_entity("ent_missing", replace(json!({}))).await),
        "entity_not_found"
    );
    assert_eq!(sb.get_entity(&e.id).await.unwrap(), e);
    let all = sb.list_entities(ListEntities::default()).await.unwrap();
    assert_eq!(all.data.len(), 3);
    env.advance(86_401);
    assert_eq!(
        code(
            sb.create_entity(create(&s.id, "t", "late", json!({})))
                .await
        ),
        "session_not_found",
        "an expired session takes no new entities"
    );
}

/// Lists are newest first, filtered by session, type and application id, and page exactly.
pub async fn entity_lists_filter_and_paginate<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let (s1, s2) = (session(sb).await, session(sb).await);
    let mut made = Vec::new();
    for i in 0..7 {
        let sid = if i % 2 == 0 { &s1.id } else { &s2.id };
        let kind = if i < 4 { "person" } else { "place" };
        made.push(
            sb.create_entity(create(sid, kind, &format!("n{i}"), json!({ "i": i })))
                .await
                .unwrap(),
        );
        env.advance(1);
    }
    let newest_first: Vec<String> = made.iter().rev().map(|e| e.id.clone()).collect();
    let all = sb.list_entities(ListEntities::default()).await.unwrap();
    assert_eq!(ids(&all.data), newest_first);
    assert!(!all.has_more);

    let list = |req: ListEntities| async move { sb.list_entities(req).await.unwrap().data };
    let in_s1 = list(ListEntities {
        session_id: Some(s1.id.clone()),
        ..Default::default()
    })
    .await;
    assert!(in_s1.len() == 4 && in_s1.iter().all(|e| e.session_id == s1.id));
    let places = list(ListEntities {
        entity_type: Some("place".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&places),
        ids(&[made[6].clone(), made[5].clone(), made[4].clone()])
    );
    let both = list(ListEntities {
        session_id: Some(s2.id.clone()),
        entity_type: Some("person".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&both), ids(&[made[3].clone(), made[1].clone()]));
    let by_app_id = list(ListEntities {
        entity_id: Some("n5".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&by_app_id), ids(&[made[5].clone()]));

    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = sb
            .list_entities(ListEntities {
                limit: Some(2),
                starting_after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        walked.extend(ids(&page.data));
        if !page.has_more {
            break;
        }
        after = page.last_id;
    }
    assert_eq!(walked, newest_first);
    for limit in [0, 101] {
        let req = ListEntities {
            limit: Some(limit),
            ..Default::default()
        };
        assert_eq!(code(sb.list_entities(req).await), "invalid_request");
    }
    let unknown = ListEntities {
        starting_after: Some("ent_nope".into()),
        ..Default::default()
    };
    assert_eq!(code(sb.list_entities(unknown).await), "entity_not_found");
}

/// Another tenant can neither see nor change an entity, even knowing its id, and may use
/// the same names in its own sessions.
pub async fn entities_are_tenant_isolated<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let a = env.sb().tenant("a");
    let b = env.sb().tenant("b");
    let s = session(&a).await;
    let e = a
        .create_entity(create(&s.id, "secret", "k", json!({"pin": 1234})))
        .await
        .unwrap();
    assert_eq!(code(b.get_entity(&e.id).await), "entity_not_found");
    assert_eq!(code(b.get_entity_at(&e.id, 1).await), "entity_not_found");
    assert_eq!(
        code(b.entity_history(&e.id, ListEntityVersions::default()).await),
        "entity_not_found"
    );
    assert_eq!(
        code(b.update_entity(&e.id, replace(json!({}))).await),
        "entity_not_found"
    );
    assert_eq!(code(b.delete_entity(&e.id).await), "entity_not_found");
    assert_eq!(
        code(
            b.create_entity(create(&s.id, "secret", "k", json!({})))
                .await
        ),
        "session_not_found"
    );
    assert!(b
        .list_entities(ListEntities::default())
        .await
        .unwrap()
        .data
        .is_empty());
    let cursor = ListEntities {
        starting_after: Some(e.id.clone()),
        ..Default::default()
    };
    assert_eq!(code(b.list_entities(cursor).await), "entity_not_found");
    let bs = session(&b).await;
    b.create_entity(create(&bs.id, "secret", "k", json!({})))
        .await
        .unwrap();
    assert_eq!(a.get_entity(&e.id).await.unwrap(), e);
    assert_eq!(
        a.list_entities(ListEntities::default()).await.unwrap().data,
        [e]
    );
}

/// Deleting an entity takes its versions and frees its name; deleting a session takes its
/// entities.
pub async fn deleted_entities_are_gone<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb).await;
    let e = sb
        .create_entity(create(&s.id, "t", "x", json!({"v": 1})))
        .await
        .unwrap();
    sb.update_entity(&e.id, replace(json!({"v": 2})))
        .await
        .unwrap();
    sb.delete_entity(&e.id).await.unwrap();
    assert_eq!(code(sb.get_entity(&e.id).await), "entity_not_found");
    assert_eq!(code(sb.get_entity_at(&e.id, 1).await), "entity_not_found");
    assert_eq!(code(sb.delete_entity(&e.id).await), "entity_not_found");
    assert!(sb
        .store()
        .entity_versions(sb.tenant_id(), &e.id, 0..u64::MAX)
        .await
        .unwrap()
        .is_empty());
    let again = sb
        .create_entity(create(&s.id, "t", "x", json!({})))
        .await
        .unwrap();
    assert_eq!(again.version, 1);

    let kept = session(sb).await;
    let survivor = sb
        .create_entity(create(&kept.id, "t", "x", json!({})))
        .await
        .unwrap();
    sb.update_entity(&again.id, replace(json!({"v": 2})))
        .await
        .unwrap();
    sb.delete_session(&s.id).await.unwrap();
    assert_eq!(code(sb.get_entity(&again.id).await), "entity_not_found");
    assert!(sb
        .store()
        .entity_versions(sb.tenant_id(), &again.id, 0..u64::MAX)
        .await
        .unwrap()
        .is_empty());
    let left = sb.list_entities(ListEntities::default()).await.unwrap();
    assert_eq!(left.data, [survivor]);
}

/// Every entity change writes its trace (on the entity, in its session), and entities with
/// their versions survive a reopen.
pub async fn entity_changes_are_traced_and_kept<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = session(&sb).await;
    let e = sb
        .create_entity(create(&s.id, "t", "x", json!({"v": 1})))
        .await
        .unwrap();
    let v2 = sb
        .update_entity(&e.id, replace(json!({"v": 2})))
        .await
        .unwrap();
    let gone = sb
        .create_entity(create(&s.id, "t", "y", json!({})))
        .await
        .unwrap();
    sb.delete_entity(&gone.id).await.unwrap();
    let traces = sb
        .list_traces(ListTraces {
            resource_type: Some("entity".into()),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .data;
    let seen: BTreeSet<(String, String, u64)> = traces
        .iter()
        .map(|t| {
            assert_eq!(t.session_id.as_deref(), Some(s.id.as_str()));
            let version = t.details["version"].as_u64().expect("version in details");
            (t.action.clone(), t.resource_id.clone(), version)
        })
        .collect();
    let expected: BTreeSet<(String, String, u64)> = [
        (action::ENTITY_CREATED, &e.id, 1),
        (action::ENTITY_UPDATED, &e.id, 2),
        (action::ENTITY_CREATED, &gone.id, 1),
        (action::ENTITY_DELETED, &gone.id, 1),
    ]
    .into_iter()
    .map(|(a, id, v)| (a.to_owned(), id.clone(), v))
    .collect();
    assert_eq!(seen, expected);

    drop(sb);
    env.reopen().await;
    let sb = env.sb();
    assert_eq!(sb.get_entity(&e.id).await.unwrap(), v2);
    assert_eq!(sb.get_entity_at(&e.id, 1).await.unwrap(), e);
    assert_eq!(code(sb.get_entity(&gone.id).await), "entity_not_found");
    assert_eq!(
        sb.update_entity(&e.id, replace(json!({})))
            .await
            .unwrap()
            .version,
        3
    );
}

/// Concurrent updates without an expectation each make their own version; with the same
/// expectation exactly one wins.
pub async fn concurrent_entity_updates<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = session(&sb).await;
    let e = sb
        .create_entity(create(&s.id, "t", "x", json!({})))
        .await
        .unwrap();
    let n = 24u64;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (sb, id) = (sb.clone(), e.id.clone());
            tokio::spawn(async move { sb.update_entity(&id, replace(json!({ "i": i }))).await })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for t in tasks {
        versions.insert(t.await.unwrap().unwrap().version);
    }
    assert_eq!(versions, (2..=n + 1).collect());
    let all = ListEntityVersions {
        limit: Some(100),
        starting_after: None,
    };
    let history = sb.entity_history(&e.id, all).await.unwrap().data;
    assert_eq!(history.len() as u64, n + 1);
    let writers: BTreeSet<u64> = history[1..]
        .iter()
        .filter_map(|v| v.attributes["i"].as_u64())
        .collect();
    assert_eq!(writers.len() as u64, n, "every update is its own version");

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (sb, id) = (sb.clone(), e.id.clone());
            tokio::spawn(async move {
                let req = UpdateEntity {
                    expected_version: Some(n + 1),
                    ..replace(json!({}))
                };
                sb.update_entity(&id, req).await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => {
                assert_eq!(e.version, n + 2);
                wins += 1;
            }
            Err(err) => assert_eq!(err.code(), "version_conflict"),
        }
    }
    assert_eq!(wins, 1);

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (sb, sid) = (sb.clone(), s.id.clone());
            tokio::spawn(
                async move { sb.create_entity(create(&sid, "t", "race", json!({}))).await },
            )
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => created.push(e.id),
            Err(err) => assert_eq!(err.code(), "duplicate_entity"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "one entity per name, also when creates race"
    );
}
