//! Cases for sessions: state, history, rollback, forks, TTL, tenancy, traces and the
//! server's records. Each takes a fresh factory and panics on a violation.

use super::{code, epoch, Env, StoreFactory};
use crate::id::ID_RANDOM_LEN;
use crate::json::Object;
use crate::store::*;
use crate::{
    action, AddMemory, AddTurn, CreateSession, Error, ForkFrom, HistoryQuery, ListSessions,
    ListTraces, RollbackTo, Session, StateBase, StateWrite, UpdateMemory, UpdateSession,
    VersionChange, WebhookEndpoint, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS,
};
use chrono::Duration;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};

fn obj(v: Value) -> Object {
    match v {
        Value::Object(o) => o,
        other => panic!("not an object: {other}"),
    }
}

async fn new_session<S: Store>(sb: &StateBase<S>, state: Value) -> Session {
    let req = CreateSession {
        initial_state: Some(state),
        ..CreateSession::new("agent")
    };
    sb.create_session(req).await.expect("create session")
}

async fn write<S: Store>(sb: &StateBase<S>, id: &str, state: Value) -> Session {
    sb.replace_state(id, StateWrite::new(state))
        .await
        .expect("replace state")
}

async fn all_sessions<S: Store>(sb: &StateBase<S>) -> Vec<Session> {
    let req = ListSessions {
        limit: Some(100),
        ..ListSessions::default()
    };
    sb.list_sessions(req).await.expect("list sessions").data
}

/// A new session has an id `sess_` + 12 lowercase alphanumerics, version 0, state `{}`, a
/// 24 hour TTL, zero counts, and equal timestamps.
pub async fn create_session_returns_defaults<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let s = env
        .sb()
        .create_session(CreateSession::new("support-bot"))
        .await
        .unwrap();
    let rest = s.id.strip_prefix("sess_").expect("sess_ prefix");
    assert_eq!(rest.len(), ID_RANDOM_LEN);
    assert!(rest
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(s.agent_id, "support-bot");
    assert_eq!(s.user_id, None);
    assert_eq!(s.version, 0);
    assert!(s.state.is_empty() && s.metadata.is_empty());
    assert_eq!((s.memory_count, s.turn_count), (0, 0));
    assert_eq!(s.created_at, epoch());
    assert_eq!(s.updated_at, s.created_at);
    assert_eq!(
        s.ttl_expires_at,
        s.created_at + Duration::seconds(DEFAULT_TTL_SECONDS)
    );
    assert_eq!(env.sb().get_session(&s.id).await.unwrap(), s);
}

/// The given user, initial state, metadata and TTL are kept; the initial state is version 0.
pub async fn create_session_keeps_given_fields<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let req = CreateSession {
        agent_id: "a".into(),
        user_id: Some("user_123".into()),
        initial_state: Some(json!({"status": "new", "nested": {"n": [1, 2]}})),
        metadata: Some(json!({"channel": "web"})),
        ttl_seconds: Some(3600),
    };
    let s = env.sb().create_session(req).await.unwrap();
    assert_eq!(s.user_id.as_deref(), Some("user_123"));
    assert_eq!(
        Value::Object(s.state.clone()),
        json!({"status": "new", "nested": {"n": [1, 2]}})
    );
    assert_eq!(Value::Object(s.metadata.clone()), json!({"channel": "web"}));
    assert_eq!(s.ttl_expires_at, epoch() + Duration::seconds(3600));
    let v0 = env.sb().state_at(&s.id, 0).await.unwrap();
    assert_eq!(v0.state, s.state);
    assert_eq!(v0.change, VersionChange::Created);
    assert_eq!(env.sb().get_session(&s.id).await.unwrap(), s);
}

/// Bad input is refused with `invalid_request` (or `payload_too_large`) and creates nothing.
pub async fn create_session_rejects_bad_input<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let bad = [
        CreateSession::new(""),
        CreateSession::new("   "),
        CreateSession::new("x".repeat(257)),
        CreateSession {
            user_id: Some(String::new()),
            ..CreateSession::new("a")
        },
        CreateSession {
            initial_state: Some(json!([1, 2])),
            ..CreateSession::new("a")
        },
        CreateSession {
            initial_state: Some(json!("text")),
            ..CreateSession::new("a")
        },
        CreateSession {
            metadata: Some(json!(3)),
            ..CreateSession::new("a")
        },
        CreateSession {
            ttl_seconds: Some(0),
            ..CreateSession::new("a")
        },
        CreateSession {
            ttl_seconds: Some(-5),
            ..CreateSession::new("a")
        },
        CreateSession {
            ttl_seconds: Some(MAX_TTL_SECONDS + 1),
            ..CreateSession::new("a")
        },
    ];
    for req in bad {
        let r = sb.create_session(req.clone()).await;
        assert_eq!(code(r), "invalid_request", "{req:?}");
    }
    let huge = CreateSession {
        initial_state: Some(json!({"blob": "x".repeat(2 << 20)})),
        ..CreateSession::new("a")
    };
    assert_eq!(code(sb.create_session(huge).await), "payload_too_large");
    // Explicit nulls mean "absent", and the TTL bounds themselves are fine.
    let ok = CreateSession {
        initial_state: Some(Value::Null),
        metadata: Some(Value::Null),
        ttl_seconds: Some(MAX_TTL_SECONDS),
        ..CreateSession::new("a")
    };
    sb.create_session(ok).await.unwrap();
    assert_eq!(all_sessions(sb).await.len(), 1);
}

/// Every call that takes a session id answers `session_not_found` for `id`.
async fn every_session_call_is_not_found<S: Store>(sb: &StateBase<S>, id: &str) {
    let not_found = "session_not_found";
    assert_eq!(code(sb.get_session(id).await), not_found);
    let update = sb.update_session(id, UpdateSession::default()).await;
    assert_eq!(code(update), not_found);
    let write = || StateWrite::new(json!({}));
    assert_eq!(code(sb.replace_state(id, write()).await), not_found);
    assert_eq!(code(sb.merge_state(id, write()).await), not_found);
    assert_eq!(code(sb.state_at(id, 0).await), not_found);
    let history = sb.history(id, HistoryQuery::default()).await;
    assert_eq!(code(history), not_found);
    assert_eq!(code(sb.diff(id, 0, 0).await), not_found);
    let rollback = sb.rollback(id, RollbackTo::default()).await;
    assert_eq!(code(rollback), not_found);
    assert_eq!(code(sb.fork(id, ForkFrom::default()).await), not_found);
    assert_eq!(code(sb.delete_session(id).await), not_found);
}

/// Unknown ids are `session_not_found` for every call that takes one.
pub async fn unknown_session_is_not_found<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let id = "sess_doesnotexist";
    every_session_call_is_not_found(sb, id).await;
    assert_eq!(code(sb.get_trace("trace_nope").await), "trace_not_found");
}

/// Metadata updates merge (null removes a key); a new TTL counts from now; the state and
/// version are untouched.
pub async fn update_session_merges_metadata_and_resets_ttl<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let req = CreateSession {
        metadata: Some(json!({"keep": 1, "drop": 2, "change": "a"})),
        ..CreateSession::new("a")
    };
    let s = sb.create_session(req).await.unwrap();
    write(sb, &s.id, json!({"x": 1})).await;
    env.advance(100);
    let upd = UpdateSession {
        metadata: Some(json!({"drop": null, "change": "b", "new": true})),
        ttl_seconds: Some(60),
    };
    let u = sb.update_session(&s.id, upd).await.unwrap();
    assert_eq!(
        Value::Object(u.metadata.clone()),
        json!({"keep": 1, "change": "b", "new": true})
    );
    let now = epoch() + Duration::seconds(100);
    assert_eq!(u.ttl_expires_at, now + Duration::seconds(60));
    assert_eq!(u.updated_at, now);
    assert_eq!((u.version, u.state.clone()), (1, obj(json!({"x": 1}))));
    assert_eq!(sb.get_session(&s.id).await.unwrap(), u);
    // Metadata only: the expiry stays.
    let u2 = sb
        .update_session(
            &s.id,
            UpdateSession {
                metadata: Some(json!({"k": 2})),
                ttl_seconds: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(u2.ttl_expires_at, u.ttl_expires_at);
    assert_eq!(u2.metadata.get("k"), Some(&json!(2)));
}

/// Updates with a non-object metadata or an out-of-range TTL are refused and change nothing.
pub async fn update_session_rejects_bad_input<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = new_session(sb, json!({})).await;
    for upd in [
        UpdateSession {
            metadata: Some(json!([1])),
            ttl_seconds: None,
        },
        UpdateSession {
            metadata: None,
            ttl_seconds: Some(0),
        },
        UpdateSession {
            metadata: Some(json!({"a": 1})),
            ttl_seconds: Some(MAX_TTL_SECONDS + 1),
        },
    ] {
        assert_eq!(code(sb.update_session(&s.id, upd).await), "invalid_request");
    }
    assert_eq!(sb.get_session(&s.id).await.unwrap(), s);
}

/// Delete removes the session and every version; it stays deleted, and a second delete is
/// `session_not_found`. Other sessions are untouched.
pub async fn delete_session_removes_everything<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = new_session(&sb, json!({"a": 1})).await;
    let other = new_session(&sb, json!({"b": 2})).await;
    write(&sb, &s.id, json!({"a": 2})).await;
    sb.delete_session(&s.id).await.unwrap();
    assert_eq!(code(sb.get_session(&s.id).await), "session_not_found");
    assert_eq!(code(sb.state_at(&s.id, 0).await), "session_not_found");
    assert_eq!(code(sb.delete_session(&s.id).await), "session_not_found");
    assert!(sb
        .store()
        .versions(sb.tenant_id(), &s.id, 0..10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        code(sb.replace_state(&s.id, StateWrite::new(json!({}))).await),
        "session_not_found"
    );
    drop(sb);
    env.reopen().await;
    let sb = env.sb();
    assert_eq!(code(sb.get_session(&s.id).await), "session_not_found");
    assert_eq!(sb.get_session(&other.id).await.unwrap(), other);
    let ids: Vec<_> = all_sessions(sb).await.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![other.id]);
}

/// Lists are newest first and filter by agent, user, creation time and metadata.
pub async fn list_sessions_newest_first_with_filters<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let mut made = Vec::new();
    for i in 0..6 {
        let req = CreateSession {
            agent_id: if i % 2 == 0 { "even" } else { "odd" }.into(),
            user_id: (i < 3).then(|| "early".to_owned()),
            metadata: Some(json!({"i": i, "env": if i % 3 == 0 { "prod" } else { "dev" }})),
            ..CreateSession::default()
        };
        made.push(sb.create_session(req).await.unwrap());
        env.advance(10);
    }
    let ids = |v: Vec<Session>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let newest_first: Vec<_> = made.iter().rev().map(|s| s.id.clone()).collect();
    assert_eq!(ids(all_sessions(sb).await), newest_first);
    let list = |q: ListSessions| async move { ids(sb.list_sessions(q).await.unwrap().data) };
    let expect = |idx: &[usize]| idx.iter().map(|&i| made[i].id.clone()).collect::<Vec<_>>();
    assert_eq!(
        list(ListSessions {
            agent_id: Some("odd".into()),
            ..Default::default()
        })
        .await,
        expect(&[5, 3, 1])
    );
    assert_eq!(
        list(ListSessions {
            user_id: Some("early".into()),
            ..Default::default()
        })
        .await,
        expect(&[2, 1, 0])
    );
    assert_eq!(
        list(ListSessions {
            created_after: Some(made[1].created_at),
            created_before: Some(made[4].created_at),
            ..Default::default()
        })
        .await,
        expect(&[3, 2])
    );
    assert_eq!(
        list(ListSessions {
            metadata: Some(obj(json!({"env": "prod"}))),
            ..Default::default()
        })
        .await,
        expect(&[3, 0])
    );
    assert_eq!(
        list(ListSessions {
            metadata: Some(obj(json!({"env": "prod"}))),
            agent_id: Some("odd".into()),
            ..Default::default()
        })
        .await,
        expect(&[3])
    );
    // Any key and any JSON value: a NUL, quotes and backslashes in keys, true against 1,
    // objects, numbers as numbers.
    let odd_keys = json!({"\u{0}k": 1, "q\"u\\o": {"a": [1, true]}, "t": true, "n": 2.5e123});
    let odd = sb
        .create_session(CreateSession {
            metadata: Some(odd_keys.clone()),
            ..CreateSession::new("odd-keys")
        })
        .await
        .unwrap();
    for (filter, hit) in [
        (json!({"\u{0}k": 1}), true),
        (json!({"\u{0}": 1}), false),
        (json!({"q\"u\\o": {"a": [1, true]}}), true),
        (json!({"q\"u\\o": {"a": [1, 1]}}), false),
        (json!({"t": true}), true),
        (json!({"t": 1}), false),
        (json!({"n": 2.5e123}), true),
        (odd_keys, true),
    ] {
        let found = list(ListSessions {
            metadata: Some(obj(filter.clone())),
            ..Default::default()
        })
        .await;
        let want = if hit { vec![odd.id.clone()] } else { vec![] };
        assert_eq!(found, want, "{filter}");
    }
}

/// Pages: default 20, max 100, `has_more`, `first_id`/`last_id`, `starting_after`; a bad
/// limit is `invalid_request`, an unknown cursor its kind's not-found.
pub async fn list_sessions_paginates<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let mut made = Vec::new();
    for _ in 0..25 {
        made.push(new_session(sb, json!({})).await.id);
        env.advance(1);
    }
    made.reverse();
    let first = sb.list_sessions(ListSessions::default()).await.unwrap();
    assert_eq!(first.data.len(), 20);
    assert!(first.has_more);
    assert_eq!(first.first_id.as_deref(), Some(made[0].as_str()));
    assert_eq!(first.last_id.as_deref(), Some(made[19].as_str()));
    let second = sb
        .list_sessions(ListSessions {
            starting_after: first.last_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got: Vec<_> = second.data.iter().map(|s| s.id.clone()).collect();
    assert_eq!(got, made[20..].to_vec());
    assert!(!second.has_more);
    let exact = sb
        .list_sessions(ListSessions {
            limit: Some(25),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!exact.has_more);
    for limit in [0, -1, 101] {
        let q = ListSessions {
            limit: Some(limit),
            ..Default::default()
        };
        assert_eq!(code(sb.list_sessions(q).await), "invalid_request");
    }
    // A cursor naming no session is a missing session.
    let q = ListSessions {
        starting_after: Some("sess_unknown0000".into()),
        ..Default::default()
    };
    assert_eq!(code(sb.list_sessions(q).await), "session_not_found");
}

/// Walking every page while other tasks create sessions yields each earlier session exactly
/// once and never repeats an id.
pub async fn list_sessions_walk_is_exact_while_creating<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let mut before = BTreeSet::new();
    for i in 0..60 {
        before.insert(new_session(&sb, json!({})).await.id);
        if i % 7 == 0 {
            env.advance(1);
        }
    }
    let creator = {
        let sb = sb.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                new_session(&sb, json!({})).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = sb
            .list_sessions(ListSessions {
                limit: Some(7),
                starting_after: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.data.iter().map(|s| s.id.clone()));
        if !page.has_more {
            break;
        }
        cursor = page.last_id;
        tokio::task::yield_now().await;
    }
    creator.await.unwrap();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an id was listed twice");
    assert!(
        before.iter().all(|id| unique.contains(id)),
        "a session was missed"
    );
}

/// Replace appends one version per write with the whole new state; reasoning and actor are
/// recorded on the version.
pub async fn replace_state_appends_versions<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().actor("api_key_test");
    let s = new_session(&sb, json!({"a": 1})).await;
    env.advance(5);
    let u = sb
        .replace_state(
            &s.id,
            StateWrite::new(json!({"b": 2})).reasoning("user said so"),
        )
        .await
        .unwrap();
    assert_eq!(
        (u.version, Value::Object(u.state.clone())),
        (1, json!({"b": 2}))
    );
    assert_eq!(u.updated_at, epoch() + Duration::seconds(5));
    assert_eq!(u.created_at, s.created_at);
    let u2 = write(&sb, &s.id, json!({})).await;
    assert_eq!(u2.version, 2);
    assert!(u2.state.is_empty());
    assert_eq!(sb.get_session(&s.id).await.unwrap(), u2);
    let v1 = sb.state_at(&s.id, 1).await.unwrap();
    assert_eq!(v1.reasoning.as_deref(), Some("user said so"));
    assert_eq!(v1.updated_by, "api_key_test");
    assert_eq!(v1.change, VersionChange::Replaced);
    assert_eq!(v1.created_at, epoch() + Duration::seconds(5));
    for bad in [json!(null), json!([1]), json!(1)] {
        assert_eq!(
            code(sb.replace_state(&s.id, StateWrite::new(bad)).await),
            "invalid_request"
        );
    }
    assert_eq!(sb.get_session(&s.id).await.unwrap().version, 2);
}

/// Merge applies an RFC 7386 merge patch: keys replace, nested objects merge, null removes.
pub async fn merge_state_applies_rfc_7386<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = new_session(
        sb,
        json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1]}),
    )
    .await;
    let u = sb
        .merge_state(
            &s.id,
            StateWrite::new(json!({"a": "z", "c": {"f": null}, "list": [2], "new": 1})),
        )
        .await
        .unwrap();
    assert_eq!(
        Value::Object(u.state),
        json!({"a": "z", "c": {"d": "e"}, "list": [2], "new": 1})
    );
    assert_eq!(u.version, 1);
    assert_eq!(
        sb.state_at(&s.id, 1).await.unwrap().change,
        VersionChange::Merged
    );
    assert_eq!(
        code(sb.merge_state(&s.id, StateWrite::new(json!("x"))).await),
        "invalid_request"
    );
}

/// A stale `expected_version` is `version_conflict` for replace, merge and rollback, and
/// writes nothing; a current one writes.
pub async fn stale_expected_version_conflicts_and_writes_nothing<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = new_session(sb, json!({"n": 0})).await;
    write(sb, &s.id, json!({"n": 1})).await;
    let stale = StateWrite::new(json!({"n": 99})).expect_version(0);
    assert_eq!(
        code(sb.replace_state(&s.id, stale.clone()).await),
        "version_conflict"
    );
    match sb.merge_state(&s.id, stale).await {
        Err(Error::Conflict { expected, actual }) => assert_eq!((expected, actual), (0, 1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let rb = RollbackTo {
        version: 0,
        reason: None,
        expected_version: Some(5),
    };
    assert_eq!(code(sb.rollback(&s.id, rb).await), "version_conflict");
    let now = sb.get_session(&s.id).await.unwrap();
    assert_eq!((now.version, now.state.get("n")), (1, Some(&json!(1))));
    let h = sb.history(&s.id, HistoryQuery::default()).await.unwrap();
    assert_eq!(h.versions.len(), 2);
    let ok = sb
        .replace_state(&s.id, StateWrite::new(json!({"n": 2})).expect_version(1))
        .await
        .unwrap();
    assert_eq!(ok.version, 2);
}

/// Any version can be read; negative numbers count back from the current; a version that
/// does not exist is `version_not_found`.
pub async fn state_at_any_version<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = new_session(sb, json!({"v": 0})).await;
    for v in 1..=4 {
        write(sb, &s.id, json!({ "v": v })).await;
    }
    for v in 0..=4i64 {
        let sv = sb.state_at(&s.id, v).await.unwrap();
        assert_eq!((sv.version as i64, sv.state.get("v")), (v, Some(&json!(v))));
        assert_eq!(sv.session_id, s.id);
    }
    assert_eq!(sb.state_at(&s.id, -1).await.unwrap().version, 3);
    assert_eq!(sb.state_at(&s.id, -4).await.unwrap().version, 0);
    for bad in [5, 100, -5, i64::MIN, i64::MAX] {
        assert_eq!(code(sb.state_at(&s.id, bad).await), "version_not_found");
    }
}

/// A big state edited a little at a time (stored as deltas between snapshots) reads back
/// exactly at every version, in history windows across snapshots, through rollback, fork
/// and diff, and after a reopen.
pub async fn small_edits_of_a_big_state_read_back_exactly<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let big: Value = (0..40)
        .map(|i| (format!("key_{i}"), json!(format!("{i} {}", "x".repeat(60)))))
        .collect::<Object>()
        .into();
    let s = new_session(env.sb(), big.clone()).await;
    let mut expected = vec![obj(big)];
    for v in 1..=40u64 {
        let patch = match v % 5 {
            0 => json!({ format!("key_{v}"): null }),
            1 => json!({ "nested": {"n": v, "list": [v, {"deep": null}]} }),
            2 => json!({ "nested": {"list": null}, "arr": [1, 2, v] }),
            3 => json!({ format!("added_{v}"): {"flag": true, "none": null} }),
            _ => json!({ "key_0": v }),
        };
        let s2 = env
            .sb()
            .merge_state(&s.id, StateWrite::new(patch.clone()))
            .await
            .unwrap();
        let mut next = expected.last().cloned().unwrap();
        crate::json::merge_patch(&mut next, &obj(patch));
        assert_eq!(s2.state, next, "version {v}");
        expected.push(next);
    }
    env.reopen().await;
    let sb = env.sb();
    for (v, want) in expected.iter().enumerate() {
        let got = sb.state_at(&s.id, v as i64).await.unwrap();
        assert_eq!(&got.state, want, "version {v}");
    }
    let q = HistoryQuery {
        limit: Some(20),
        since_version: Some(9),
        from_version: None,
    };
    let h = sb.history(&s.id, q).await.unwrap();
    let states: Vec<&Object> = h.versions.iter().map(|v| &v.state).collect();
    assert_eq!(states, expected[10..30].iter().collect::<Vec<_>>());
    let to = RollbackTo {
        version: 23,
        ..RollbackTo::default()
    };
    assert_eq!(
        sb.rollback(&s.id, to).await.unwrap().session.state,
        expected[23]
    );
    let from = ForkFrom {
        version: Some(37),
        ..ForkFrom::default()
    };
    let fork = sb.fork(&s.id, from).await.unwrap();
    assert_eq!(fork.state, expected[37]);
    let d = sb.diff(&s.id, 17, 18).await.unwrap();
    assert_eq!(
        d.diff,
        crate::json::Diff::between(&expected[17], &expected[18])
    );
    assert!(!d.diff.is_empty());
}

/// History: the latest `limit` (default 50) oldest first, the `limit` after
/// `since_version`, or the `limit` from `from_version` (0 reaches the start of a long
/// history; with both, the later bound); `current_version` is the head. Bad limits are
/// refused.
pub async fn history_windows<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = new_session(sb, json!({"v": 0})).await;
    for v in 1..=60 {
        write(sb, &s.id, json!({ "v": v })).await;
    }
    let nums = |h: &crate::History| h.versions.iter().map(|v| v.version).collect::<Vec<_>>();
    let h = sb.history(&s.id, HistoryQuery::default()).await.unwrap();
    assert_eq!(h.current_version, 60);
    assert_eq!(nums(&h), (11..=60).collect::<Vec<_>>());
    assert_eq!(h.versions[0].state.get("v"), Some(&json!(11)));
    let q = HistoryQuery {
        limit: Some(5),
        since_version: Some(2),
        from_version: None,
    };
    assert_eq!(
        nums(&sb.history(&s.id, q).await.unwrap()),
        vec![3, 4, 5, 6, 7]
    );
    let q = HistoryQuery {
        limit: Some(5),
        since_version: Some(58),
        from_version: None,
    };
    assert_eq!(nums(&sb.history(&s.id, q).await.unwrap()), vec![59, 60]);
    let q = HistoryQuery {
        limit: None,
        since_version: Some(60),
        from_version: None,
    };
    assert!(sb.history(&s.id, q).await.unwrap().versions.is_empty());
    let q = HistoryQuery {
        limit: Some(1000),
        since_version: None,
        from_version: None,
    };
    assert_eq!(sb.history(&s.id, q).await.unwrap().versions.len(), 61);
    // The start of a history longer than one window.
    let q = HistoryQuery {
        limit: Some(5),
        from_version: Some(0),
        ..HistoryQuery::default()
    };
    let h = sb.history(&s.id, q).await.unwrap();
    assert_eq!(nums(&h), vec![0, 1, 2, 3, 4]);
    assert_eq!(h.versions[0].state.get("v"), Some(&json!(0)));
    let q = HistoryQuery {
        limit: Some(5),
        from_version: Some(58),
        ..HistoryQuery::default()
    };
    assert_eq!(nums(&sb.history(&s.id, q).await.unwrap()), vec![58, 59, 60]);
    for (since, from, first) in [(1, 0, 2), (1, 5, 5)] {
        let both = HistoryQuery {
            limit: Some(2),
            since_version: Some(since),
            from_version: Some(from),
        };
        let h = sb.history(&s.id, both).await.unwrap();
        assert_eq!(nums(&h), vec![first, first + 1], "the later bound wins");
    }
    for limit in [0, 1001] {
        let q = HistoryQuery {
            limit: Some(limit),
            since_version: None,
            from_version: None,
        };
        assert_eq!(code(sb.history(&s.id, q).await), "invalid_request");
    }
}

/// Diffs between any two versions report added, removed and modified paths.
pub async fn diff_between_versions<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = new_session(sb, json!({"a": 1, "b": {"c": 2}, "gone": true})).await;
    write(sb, &s.id, json!({"a": 1, "b": {"c": 3}, "new": "x"})).await;
    write(sb, &s.id, json!({})).await;
    let d = sb.diff(&s.id, 0, 1).await.unwrap();
    assert_eq!((d.from_version, d.to_version), (0, 1));
    assert_eq!(d.diff.added.get("/new"), Some(&json!("x")));
    assert_eq!(d.diff.removed.get("/gone"), Some(&json!(true)));
    let m = &d.diff.modified["/b/c"];
    assert_eq!((&m.from, &m.to), (&json!(2), &json!(3)));
    assert!(!d.diff.added.contains_key("/a") && !d.diff.modified.contains_key("/a"));
    let back = sb.diff(&s.id, -1, 0).await.unwrap();
    assert_eq!(back.from_version, 1);
    assert!(sb.diff(&s.id, 1, 1).await.unwrap().diff.is_empty());
    let to_empty = sb.diff(&s.id, 1, 2).await.unwrap();
    assert_eq!(to_empty.diff.removed.len(), 3);
    assert_eq!(code(sb.diff(&s.id, 0, 3).await), "version_not_found");
}

/// Rollback appends a new version equal to the target (absolute or relative), keeps every
/// earlier version, records the reason; unknown versions are `version_not_found`.
pub async fn rollback_appends_a_copy_and_keeps_history<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = new_session(sb, json!({"step": 0})).await;
    for step in 1..=3 {
        write(sb, &s.id, json!({ "step": step })).await;
    }
    let rb = sb
        .rollback(
            &s.id,
            RollbackTo {
                version: 1,
                reason: Some("bad tool call".into()),
                expected_version: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(rb.restored_from_version, 1);
    assert_eq!(rb.session.version, 4);
    assert_eq!(rb.session.state.get("step"), Some(&json!(1)));
    let v4 = sb.state_at(&s.id, 4).await.unwrap();
    assert_eq!(v4.reasoning.as_deref(), Some("bad tool call"));
    assert_eq!(
        v4.change,
        VersionChange::RolledBack {
            restored_from_version: 1
        }
    );
    let trace = sb.get_trace(&rb.trace_id).await.unwrap();
    assert_eq!(trace.action, action::STATE_ROLLED_BACK);
    assert_eq!(trace.details["to_version"], json!(1));
    assert_eq!(trace.details["reason"], json!("bad tool call"));
    // -1: the version before the current one (3, step 3).
    let rel = sb
        .rollback(
            &s.id,
            RollbackTo {
                version: -1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((rel.restored_from_version, rel.session.version), (3, 5));
    assert_eq!(rel.session.state.get("step"), Some(&json!(3)));
    let zero = sb.rollback(&s.id, RollbackTo::default()).await.unwrap();
    assert_eq!(zero.session.state.get("step"), Some(&json!(0)));
    let h = sb.history(&s.id, HistoryQuery::default()).await.unwrap();
    let steps: Vec<_> = h.versions.iter().map(|v| v.state["step"].clone()).collect();
    assert_eq!(steps, [0, 1, 2, 3, 1, 3, 0].map(|n| json!(n)).to_vec());
    for bad in [7, -7] {
        let r = sb
            .rollback(
                &s.id,
                RollbackTo {
                    version: bad,
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(code(r), "version_not_found");
    }
    assert_eq!(sb.get_session(&s.id).await.unwrap().version, 6);
}

/// Fork makes a new session whose version 0 is the source's state at the version (default
/// latest); metadata gains `forked_from`/`forked_version`; agent and user carry over unless
/// overridden; the source is untouched.
pub async fn fork_copies_state_at_a_version<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let req = CreateSession {
        user_id: Some("u1".into()),
        metadata: Some(json!({"channel": "web"})),
        initial_state: Some(json!({"v": 0})),
        ..CreateSession::new("planner")
    };
    let src = sb.create_session(req).await.unwrap();
    for v in 1..=3 {
        write(sb, &src.id, json!({ "v": v })).await;
    }
    let src_before = sb.get_session(&src.id).await.unwrap();
    let f = sb
        .fork(
            &src.id,
            ForkFrom {
                version: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(f.id, src.id);
    assert_eq!((f.version, f.state.get("v")), (0, Some(&json!(1))));
    assert_eq!(
        (f.agent_id.as_str(), f.user_id.as_deref()),
        ("planner", Some("u1"))
    );
    assert_eq!(
        Value::Object(f.metadata.clone()),
        json!({"channel": "web", "forked_from": src.id, "forked_version": 1})
    );
    assert_eq!(
        sb.state_at(&f.id, 0).await.unwrap().change,
        VersionChange::Forked {
            source_session_id: src.id.clone(),
            source_version: 1
        }
    );
    let latest = sb.fork(&src.id, ForkFrom::default()).await.unwrap();
    assert_eq!(latest.state.get("v"), Some(&json!(3)));
    assert_eq!(latest.metadata["forked_version"], json!(3));
    let other = sb
        .fork(
            &src.id,
            ForkFrom {
                version: Some(-3),
                agent_id: Some("what-if".into()),
                user_id: Some("u2".into()),
                metadata: Some(json!({"experiment": true})),
                ttl_seconds: Some(60),
            },
        )
        .await
        .unwrap();
    assert_eq!(other.state.get("v"), Some(&json!(0)));
    assert_eq!(
        (other.agent_id.as_str(), other.user_id.as_deref()),
        ("what-if", Some("u2"))
    );
    assert_eq!(
        Value::Object(other.metadata.clone()),
        json!({"experiment": true, "forked_from": src.id, "forked_version": 0})
    );
    assert_eq!(other.ttl_expires_at, epoch() + Duration::seconds(60));
    // Writing to a fork leaves the source alone, and the other way round.
    write(sb, &f.id, json!({"fork": true})).await;
    assert_eq!(sb.get_session(&src.id).await.unwrap(), src_before);
    write(sb, &src.id, json!({"v": 4})).await;
    assert_eq!(
        sb.get_session(&f.id).await.unwrap().state.get("fork"),
        Some(&json!(true))
    );
    let bad = ForkFrom {
        version: Some(99),
        ..Default::default()
    };
    assert_eq!(code(sb.fork(&src.id, bad).await), "version_not_found");
    let bad = ForkFrom {
        agent_id: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(code(sb.fork(&src.id, bad).await), "invalid_request");
}

/// From the instant its TTL runs out, a session is `session_not_found` everywhere and is
/// left out of lists, before anything deletes it.
pub async fn expired_session_is_not_found_everywhere<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let req = CreateSession {
        ttl_seconds: Some(10),
        ..CreateSession::new("a")
    };
    let s = sb.create_session(req).await.unwrap();
    let keep = new_session(sb, json!({})).await;
    env.advance(9);
    sb.get_session(&s.id).await.unwrap();
    env.advance(1);
    let id = s.id.as_str();
    assert_eq!(code(sb.get_session(id).await), "session_not_found");
    assert_eq!(
        code(sb.merge_state(id, StateWrite::new(json!({}))).await),
        "session_not_found"
    );
    assert_eq!(code(sb.state_at(id, 0).await), "session_not_found");
    assert_eq!(
        code(sb.history(id, HistoryQuery::default()).await),
        "session_not_found"
    );
    assert_eq!(
        code(sb.rollback(id, RollbackTo::default()).await),
        "session_not_found"
    );
    assert_eq!(
        code(sb.fork(id, ForkFrom::default()).await),
        "session_not_found"
    );
    let extend = UpdateSession {
        metadata: None,
        ttl_seconds: Some(1000),
    };
    assert_eq!(
        code(sb.update_session(id, extend).await),
        "session_not_found"
    );
    assert_eq!(code(sb.delete_session(id).await), "session_not_found");
    let listed: Vec<_> = all_sessions(sb).await.into_iter().map(|s| s.id).collect();
    assert_eq!(listed, vec![keep.id]);
}

/// The sweep deletes every expired session of every tenant, returns them, writes one
/// `session.expired` trace each, and leaves live sessions alone.
pub async fn sweep_removes_expired_sessions<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let a = env.sb().tenant("a");
    let b = env.sb().tenant("b");
    let short = |sb: StateBase<F::Store>| async move {
        let req = CreateSession {
            ttl_seconds: Some(5),
            ..CreateSession::new("a")
        };
        sb.create_session(req).await.unwrap().id
    };
    let mut expiring = BTreeSet::new();
    for _ in 0..3 {
        expiring.insert(("a".to_owned(), short(a.clone()).await));
    }
    expiring.insert(("b".to_owned(), short(b.clone()).await));
    let live = new_session(&a, json!({})).await;
    assert!(env.sb().sweep_expired().await.unwrap().is_empty());
    env.advance(5);
    let removed: BTreeSet<_> = env
        .sb()
        .sweep_expired()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.tenant, e.session.id))
        .collect();
    assert_eq!(removed, expiring);
    assert!(env.sb().sweep_expired().await.unwrap().is_empty());
    a.get_session(&live.id).await.unwrap();
    for (tenant, id) in &expiring {
        let sb = env.sb().tenant(tenant);
        assert!(sb.store().session(tenant, id).await.unwrap().is_none());
        let traces = sb
            .list_traces(ListTraces {
                session_id: Some(id.clone()),
                action: Some(action::SESSION_EXPIRED.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(traces.data.len(), 1, "one session.expired for {id}");
    }
}

/// Tenant B can't read, list, update, write, fork, roll back or delete tenant A's session,
/// even with its id, nor see A's traces.
pub async fn tenants_are_isolated<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let a = env.sb().tenant("tenant-a");
    let b = env.sb().tenant("tenant-b");
    let created = new_session(&a, json!({"secret": 1})).await;
    let m = a
        .add_memory(AddMemory::new(&created.id, "a secret"))
        .await
        .unwrap();
    // Read by A first, so that a backend that caches reads holds them when B asks.
    let s = a.get_session(&created.id).await.unwrap();
    let id = s.id.as_str();
    a.get_memory(&m.id).await.unwrap();
    assert_eq!(code(b.get_memory(&m.id).await), "memory_not_found");
    every_session_call_is_not_found(&b, id).await;
    assert!(all_sessions(&b).await.is_empty());
    let q = ListSessions {
        starting_after: Some(s.id.clone()),
        ..Default::default()
    };
    assert_eq!(code(b.list_sessions(q).await), "session_not_found");
    let b_traces = b.list_traces(ListTraces::default()).await.unwrap();
    assert!(b_traces.data.is_empty());
    let a_traces = a.list_traces(ListTraces::default()).await.unwrap();
    assert_eq!(
        code(b.get_trace(&a_traces.data[0].id).await),
        "trace_not_found"
    );
    // A is untouched; the default tenant sees nothing either.
    assert_eq!(a.get_session(id).await.unwrap(), s);
    assert!(all_sessions(env.sb()).await.is_empty());
}

/// Every mutation writes one trace with its action, actor, timestamp and details.
pub async fn every_mutation_writes_a_trace<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().actor("api_key_sb_abc");
    let s = new_session(&sb, json!({"a": 1})).await;
    env.advance(1);
    sb.merge_state(&s.id, StateWrite::new(json!({"b": 2})).reasoning("why"))
        .await
        .unwrap();
    env.advance(1);
    write(&sb, &s.id, json!({"c": 3})).await;
    env.advance(1);
    sb.rollback(&s.id, RollbackTo::default()).await.unwrap();
    env.advance(1);
    let upd = UpdateSession {
        metadata: Some(json!({"m": 1})),
        ttl_seconds: Some(100),
    };
    sb.update_session(&s.id, upd).await.unwrap();
    env.advance(1);
    let f = sb.fork(&s.id, ForkFrom::default()).await.unwrap();
    env.advance(1);
    sb.delete_session(&s.id).await.unwrap();

    let all = sb.list_traces(ListTraces::default()).await.unwrap().data;
    let actions: Vec<_> = all.iter().map(|t| t.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            action::SESSION_DELETED,
            action::SESSION_FORKED,
            action::SESSION_UPDATED,
            action::STATE_ROLLED_BACK,
            action::STATE_UPDATED,
            action::STATE_UPDATED,
            action::SESSION_CREATED,
        ]
    );
    for t in &all {
        assert!(t.id.starts_with("trace_"), "{}", t.id);
        assert_eq!(t.actor, "api_key_sb_abc");
        assert_eq!(t.resource_type, "session");
        assert_eq!(sb.get_trace(&t.id).await.unwrap(), *t);
    }
    assert_eq!(all[1].session_id.as_ref(), Some(&f.id));
    assert_eq!(all[1].details["source_session_id"], json!(s.id));
    assert_eq!(all[6].session_id.as_ref(), Some(&s.id));
    assert_eq!(all[6].timestamp, epoch());
    let merged = &all[5];
    assert_eq!(merged.details["reasoning"], json!("why"));
    assert_eq!(merged.details["version"], json!(1));
    assert_eq!(merged.details["state_diff"]["added"]["/b"], json!(2));
    let replaced = &all[4];
    assert_eq!(replaced.details["state_diff"]["removed"]["/a"], json!(1));
    assert_eq!(all[2].details["metadata_diff"]["added"]["/m"], json!(1));
    assert_eq!(all[2].details["ttl_seconds"], json!(100));
}

/// Traces filter by session, action (either tense), resource and time, and paginate.
pub async fn traces_filter_and_paginate<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s1 = new_session(sb, json!({})).await;
    let s2 = new_session(sb, json!({})).await;
    for i in 0..5 {
        env.advance(1);
        write(sb, &s1.id, json!({ "i": i })).await;
    }
    let q = |f: ListTraces| async move { sb.list_traces(f).await.unwrap() };
    let s1_all = q(ListTraces {
        session_id: Some(s1.id.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(s1_all.data.len(), 6);
    let updates = q(ListTraces {
        action: Some("state.update".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(updates.data.len(), 5);
    let s2_all = q(ListTraces {
        resource_id: Some(s2.id.clone()),
        resource_type: Some("session".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(s2_all.data.len(), 1);
    let window = q(ListTraces {
        created_after: Some(epoch() + Duration::seconds(1)),
        created_before: Some(epoch() + Duration::seconds(5)),
        ..Default::default()
    })
    .await;
    assert_eq!(window.data.len(), 3);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = q(ListTraces {
            limit: Some(3),
            starting_after: cursor,
            ..Default::default()
        })
        .await;
        seen.extend(p.data.iter().map(|t| t.id.clone()));
        if !p.has_more {
            break;
        }
        cursor = p.last_id;
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
    // A memory's traces (of a resource inside a session) by resource, newest first.
    let m = sb
        .add_memory(AddMemory::new(&s1.id, "likes tea"))
        .await
        .unwrap();
    env.advance(1);
    let update = UpdateMemory {
        content: Some("likes coffee".into()),
        ..Default::default()
    };
    sb.update_memory(&m.id, update).await.unwrap();
    let by_memory = q(ListTraces {
        resource_id: Some(m.id.clone()),
        ..Default::default()
    })
    .await;
    let actions: Vec<_> = by_memory.data.iter().map(|t| t.action.as_str()).collect();
    assert_eq!(actions, [action::MEMORY_UPDATED, action::MEMORY_CREATED]);
    // A session's traces about itself by resource, in pages: the memory's are not among
    // them.
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let p = q(ListTraces {
            resource_id: Some(s1.id.clone()),
            limit: Some(2),
            starting_after: cursor,
            ..Default::default()
        })
        .await;
        pages.extend(p.data.iter().map(|t| t.id.clone()));
        if !p.has_more {
            break;
        }
        cursor = p.last_id;
    }
    let s1_ids: Vec<String> = s1_all.data.iter().map(|t| t.id.clone()).collect();
    assert_eq!(pages, s1_ids);
    let bad = ListTraces {
        limit: Some(101),
        ..Default::default()
    };
    assert_eq!(code(sb.list_traces(bad).await), "invalid_request");
}

/// Documents over the configured limit are `payload_too_large` (a merge that grows the state
/// past it too), and nothing is written.
pub async fn documents_over_the_limit_are_rejected<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let limits = crate::Limits {
        max_document_bytes: 1000,
        ..crate::Limits::default()
    };
    env.reopen_with(|c| c.limits = limits).await;
    let sb = env.sb();
    let s = new_session(sb, json!({"a": "x".repeat(600)})).await;
    let big = json!({"b": "y".repeat(600)});
    assert_eq!(
        code(sb.merge_state(&s.id, StateWrite::new(big.clone())).await),
        "payload_too_large"
    );
    assert_eq!(
        code(
            sb.replace_state(&s.id, StateWrite::new(json!({"c": "z".repeat(1000)})))
                .await
        ),
        "payload_too_large"
    );
    let meta = UpdateSession {
        metadata: Some(json!({"m": "x".repeat(1000)})),
        ttl_seconds: None,
    };
    assert_eq!(
        code(sb.update_session(&s.id, meta).await),
        "payload_too_large"
    );
    // Text limits count characters, as a client's JSON Schema does.
    let long_reason = StateWrite::new(json!({})).reasoning("r".repeat(65_537));
    assert_eq!(
        code(sb.replace_state(&s.id, long_reason).await),
        "invalid_request"
    );
    assert_eq!(sb.get_session(&s.id).await.unwrap(), s);
    let wide = sb
        .create_session(CreateSession::new("é".repeat(256)))
        .await
        .unwrap();
    assert_eq!(wide.agent_id.chars().count(), 256);
    assert_eq!(
        code(sb.create_session(CreateSession::new("é".repeat(257))).await),
        "invalid_request"
    );
    sb.replace_state(&s.id, StateWrite::new(big)).await.unwrap();
}

/// Many tasks writing with the same `expected_version`: exactly one wins each version, the
/// rest get `version_conflict`.
pub async fn concurrent_expected_version_has_one_winner<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = new_session(&sb, json!({})).await;
    for round in 0..5u64 {
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let sb = sb.clone();
                let id = s.id.clone();
                tokio::spawn(async move {
                    let w = StateWrite::new(json!({ "writer": t })).expect_version(round);
                    sb.replace_state(&id, w).await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(s) => {
                    assert_eq!(s.version, round + 1);
                    wins += 1;
                }
                Err(e) => assert_eq!(e.code(), "version_conflict"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    let h = sb.history(&s.id, HistoryQuery::default()).await.unwrap();
    assert_eq!(h.current_version, 5);
    assert_eq!(h.versions.len(), 6);
}

/// Many tasks merging without an expectation: n writes make n versions, no gaps, no
/// duplicates, and every write's key is in the final state.
pub async fn concurrent_updates_lose_nothing<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = new_session(&sb, json!({})).await;
    let n = 40;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let sb = sb.clone();
            let id = s.id.clone();
            tokio::spawn(async move {
                sb.merge_state(&id, StateWrite::new(json!({ format!("k{i}"): i })))
                    .await
                    .map(|s| s.version)
            })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for t in tasks {
        assert!(
            versions.insert(t.await.unwrap().unwrap()),
            "duplicate version"
        );
    }
    assert_eq!(versions, (1..=n).collect());
    let now = sb.get_session(&s.id).await.unwrap();
    assert_eq!(now.version, n);
    assert_eq!(now.state.len(), n as usize);
    let q = HistoryQuery {
        limit: Some(1000),
        since_version: None,
        from_version: None,
    };
    let h = sb.history(&s.id, q).await.unwrap();
    let nums: Vec<_> = h.versions.iter().map(|v| v.version).collect();
    assert_eq!(nums, (0..=n).collect::<Vec<_>>());
    // Each version adds exactly one key to the one before.
    for pair in h.versions.windows(2) {
        assert_eq!(pair[1].state.len(), pair[0].state.len() + 1);
    }
}

/// After the store is dropped and opened again, every acknowledged write is there: sessions,
/// versions, metadata, forks, deletions and traces.
pub async fn reopen_keeps_every_acknowledged_write<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let (s, f, gone, traces, history) = {
        let sb = env.sb().tenant("t1");
        let s = new_session(&sb, json!({"a": 1})).await;
        sb.merge_state(&s.id, StateWrite::new(json!({"b": 2})).reasoning("r"))
            .await
            .unwrap();
        sb.rollback(&s.id, RollbackTo::default()).await.unwrap();
        let upd = UpdateSession {
            metadata: Some(json!({"m": true})),
            ttl_seconds: Some(500),
        };
        let s = sb.update_session(&s.id, upd).await.unwrap();
        let f = sb
            .fork(
                &s.id,
                ForkFrom {
                    version: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let gone = new_session(&sb, json!({})).await;
        sb.delete_session(&gone.id).await.unwrap();
        let traces = sb.list_traces(ListTraces::default()).await.unwrap();
        let history = sb.history(&s.id, HistoryQuery::default()).await.unwrap();
        (s, f, gone, traces, history)
    };
    env.reopen().await;
    let sb = env.sb().tenant("t1");
    assert_eq!(sb.get_session(&s.id).await.unwrap(), s);
    assert_eq!(sb.get_session(&f.id).await.unwrap(), f);
    assert_eq!(code(sb.get_session(&gone.id).await), "session_not_found");
    assert_eq!(
        sb.history(&s.id, HistoryQuery::default()).await.unwrap(),
        history
    );
    assert_eq!(sb.list_traces(ListTraces::default()).await.unwrap(), traces);
    let ids: BTreeSet<_> = all_sessions(&sb).await.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, BTreeSet::from([s.id.clone(), f.id.clone()]));
    // And it keeps working after the reopen.
    let next = write(&sb, &s.id, json!({"after": "reopen"})).await;
    assert_eq!(next.version, 3);
}

/// The trace feed lists every tenant's traces once each, in commit order, with growing
/// positions; a reader resumes after the last position it saw, also after a reopen and
/// while writers run.
pub async fn trace_feed_is_every_trace_in_commit_order<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let last = {
        let (a, b) = (env.sb().tenant("a"), env.sb().tenant("b"));
        assert_eq!(a.store().trace_feed_end().await.unwrap(), 0);
        let s = new_session(&a, json!({})).await;
        write(&a, &s.id, json!({"n": 1})).await;
        // A turn that changes the state: the version's trace, then the turn's.
        let turn = AddTurn {
            state_after: Some(json!({"n": 2})),
            ..AddTurn::text("q", "a")
        };
        a.add_turn(&s.id, turn).await.unwrap();
        let t = new_session(&b, json!({})).await;
        a.delete_session(&s.id).await.unwrap();
        let feed = a.store().trace_feed(0, 100).await.unwrap();
        let seen: Vec<(&str, &str)> = feed
            .iter()
            .map(|e| (e.tenant.as_str(), e.trace.action.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a", action::SESSION_CREATED),
                ("a", action::STATE_UPDATED),
                ("a", action::STATE_UPDATED),
                ("a", action::TURN_ADDED),
                ("b", action::SESSION_CREATED),
                ("a", action::SESSION_DELETED),
            ]
        );
        assert_eq!(feed[4].trace.resource_id, t.id);
        assert!(feed.windows(2).all(|w| w[0].position < w[1].position));
        let rest = a.store().trace_feed(feed[1].position, 1).await.unwrap();
        assert_eq!(rest, feed[2..3]);
        assert_eq!(a.store().trace_feed_end().await.unwrap(), feed[5].position);
        feed[5].position
    };

    // Concurrent writers: a reader polling all along sees every trace exactly once.
    env.reopen().await;
    let sb = env.sb().tenant("a");
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(new_session(&sb, json!({})).await.id);
        }
        ids
    };
    let writers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (sb, id) = (sb.clone(), id.clone());
            tokio::spawn(async move {
                for i in 0..10 {
                    write(&sb, &id, json!({ "i": i })).await;
                }
            })
        })
        .collect();
    let mut after = last;
    let mut got = Vec::new();
    loop {
        let done = writers.iter().all(|w| w.is_finished());
        for e in sb.store().trace_feed(after, 7).await.unwrap() {
            after = e.position;
            got.push(e.trace.id);
        }
        if done && sb.store().trace_feed(after, 1).await.unwrap().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(sb.store().trace_feed_end().await.unwrap(), after);
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(got.len(), 4 + 40, "creates and writes, each once");
    assert_eq!(unique.len(), got.len());
}

/// The server's records: webhook endpoints by tenant, their deliveries (which go with them
/// and are not written for an endpoint that is gone) with the cursor, idempotent responses,
/// each pruned by age, and all kept across a reopen.
pub async fn server_records_round_trip<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let store = env.sb().store();
    let at = |s: i64| epoch() + Duration::seconds(s);
    let endpoint = |id: &str, tenant: &str, created: i64| WebhookEndpoint {
        id: id.into(),
        tenant: tenant.into(),
        url: "https://example.com/hook".into(),
        events: vec!["turn.added".into()],
        secret: "whsec_0123456789abcdef".into(),
        created_at: at(created),
    };
    for e in [
        endpoint("wh_b", "t1", 2),
        endpoint("wh_a", "t1", 1),
        endpoint("wh_c", "t2", 3),
    ] {
        store.put_webhook(e).await.unwrap();
    }
    let ids = |v: Vec<WebhookEndpoint>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_webhooks(Some("t1")).await.unwrap()),
        ["wh_a", "wh_b"]
    );
    assert_eq!(
        ids(store.list_webhooks(None).await.unwrap()),
        ["wh_a", "wh_b", "wh_c"]
    );
    assert_eq!(
        store.webhook("t1", "wh_a").await.unwrap(),
        Some(endpoint("wh_a", "t1", 1))
    );
    assert_eq!(
        store.webhook("t2", "wh_a").await.unwrap(),
        None,
        "another tenant's"
    );
    let mut renamed = endpoint("wh_a", "t1", 1);
    renamed.url = "https://example.org/".into();
    store.put_webhook(renamed.clone()).await.unwrap();
    assert_eq!(store.webhook("t1", "wh_a").await.unwrap(), Some(renamed));

    let delivery = |endpoint: &str, position: u64, done: Option<i64>| DeliveryRecord {
        endpoint_id: endpoint.into(),
        position,
        done_at: done.map(at),
        body: format!("{endpoint}/{position}").into_bytes(),
    };
    assert_eq!(store.delivery_cursor().await.unwrap(), 0);
    let owed = vec![
        delivery("wh_b", 7, None),
        delivery("wh_a", 9, None),
        delivery("wh_a", 3, Some(10)),
        delivery("wh_c", 4, None),
        delivery("wh_gone", 5, None),
    ];
    store.put_deliveries(owed, Some(9)).await.unwrap();
    assert_eq!(store.delivery_cursor().await.unwrap(), 9);
    let keys = |v: Vec<DeliveryRecord>| {
        v.into_iter()
            .map(|d| (d.endpoint_id, d.position))
            .collect::<Vec<_>>()
    };
    let key = |e: &str, p: u64| (e.to_owned(), p);
    assert_eq!(
        keys(store.deliveries(None, false).await.unwrap()),
        [
            key("wh_a", 3),
            key("wh_a", 9),
            key("wh_b", 7),
            key("wh_c", 4)
        ],
        "by endpoint then position, none for an endpoint that is gone"
    );
    assert_eq!(
        keys(store.deliveries(None, true).await.unwrap()),
        [key("wh_a", 9), key("wh_b", 7), key("wh_c", 4)]
    );
    assert_eq!(
        store.deliveries(Some("wh_a"), false).await.unwrap(),
        [delivery("wh_a", 3, Some(10)), delivery("wh_a", 9, None)]
    );
    // Done with: replaced in place.
    store
        .put_deliveries(vec![delivery("wh_a", 9, Some(20))], None)
        .await
        .unwrap();
    assert_eq!(
        store.delivery_cursor().await.unwrap(),
        9,
        "cursor left alone"
    );
    assert_eq!(
        keys(store.deliveries(Some("wh_a"), true).await.unwrap()),
        []
    );
    assert_eq!(store.prune_deliveries(at(15)).await.unwrap(), 1);
    assert_eq!(
        keys(store.deliveries(Some("wh_a"), false).await.unwrap()),
        [key("wh_a", 9)]
    );
    // An endpoint goes with its deliveries, and only its tenant can delete it.
    assert_eq!(
        code(store.delete_webhook("t2", "wh_b").await),
        "webhook_not_found"
    );
    store.delete_webhook("t1", "wh_b").await.unwrap();
    assert_eq!(store.webhook("t1", "wh_b").await.unwrap(), None);
    assert_eq!(
        keys(store.deliveries(Some("wh_b"), false).await.unwrap()),
        []
    );

    let response = |k: &str, s: i64| IdempotentResponse {
        key: k.into(),
        tenant: "t1".into(),
        subjects: vec![format!("sess_{s}"), "user:u1".into()],
        at: at(s),
        body: k.as_bytes().to_vec(),
    };
    for r in [response("key_1/a", 1), response("key_1/b", 100)] {
        store.put_idempotent_response(r).await.unwrap();
    }
    assert_eq!(
        store.idempotent_response("key_1/a").await.unwrap(),
        Some(response("key_1/a", 1))
    );
    assert_eq!(store.idempotent_response("key_1/c").await.unwrap(), None);
    assert_eq!(store.prune_idempotent_responses(at(50)).await.unwrap(), 1);
    assert_eq!(store.idempotent_response("key_1/a").await.unwrap(), None);

    env.reopen().await;
    let store = env.sb().store();
    assert_eq!(
        ids(store.list_webhooks(None).await.unwrap()),
        ["wh_a", "wh_c"]
    );
    assert_eq!(store.delivery_cursor().await.unwrap(), 9);
    assert_eq!(
        keys(store.deliveries(None, false).await.unwrap()),
        [key("wh_a", 9), key("wh_c", 4)]
    );
    assert_eq!(
        store.idempotent_response("key_1/b").await.unwrap(),
        Some(response("key_1/b", 100))
    );
}

/// A write answers with the session as that write left it, also while turns, memories and
/// metadata updates race it: its counts and metadata are those of the writes committed
/// before it, in the commit order of the trace feed.
pub async fn writes_answer_the_session_as_stored<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = new_session(&sb, json!({})).await;
    // (what answered, turn_count, memory_count, metadata keys) by the answer's trace.
    let mut answers = std::collections::HashMap::new();
    for round in 0..6 {
        let mut merges = Vec::new();
        let mut updates = Vec::new();
        let mut others = Vec::new();
        for i in 0..6 {
            let (merger, updater, other) = (sb.clone(), sb.clone(), sb.clone());
            let id = s.id.clone();
            merges.push(tokio::spawn(async move {
                let sb = merger;
                let w = StateWrite::new(json!({ format!("k{round}_{i}"): i }));
                sb.merge_state(&id, w).await.unwrap()
            }));
            let id = s.id.clone();
            updates.push(tokio::spawn(async move {
                let sb = updater;
                let req = UpdateSession {
                    metadata: Some(json!({ format!("m{round}_{i}"): true })),
                    ..Default::default()
                };
                sb.update_session(&id, req).await.unwrap()
            }));
            let id = s.id.clone();
            others.push(tokio::spawn(async move {
                let sb = other;
                sb.add_turn(&id, crate::AddTurn::text("q", "a"))
                    .await
                    .unwrap();
                let content = format!("fact {round} {i}");
                sb.add_memory(AddMemory::new(&id, &content)).await.unwrap();
            }));
        }
        for m in merges {
            let got = m.await.unwrap();
            answers.insert(("state", got.version), got);
        }
        for u in updates {
            let got = u.await.unwrap();
            // An update answers at its own version; the merges are told apart by theirs.
            answers
                .entry(("metadata", got.metadata.len() as u64))
                .or_insert(got);
        }
        for o in others {
            o.await.unwrap();
        }
    }
    let feed = sb.store().trace_feed(0, 100_000).await.unwrap();
    let (mut turns, mut memories, mut keys) = (0u64, 0u64, 0u64);
    let mut checked = 0;
    for entry in feed
        .iter()
        .filter(|e| e.trace.session_id.as_deref() == Some(s.id.as_str()))
    {
        let t = &entry.trace;
        match t.action.as_str() {
            action::TURN_ADDED => turns += 1,
            action::MEMORY_CREATED => memories += 1,
            action::SESSION_UPDATED => {
                keys += 1;
                let got = &answers[&("metadata", keys)];
                assert_eq!(
                    (got.turn_count, got.memory_count),
                    (turns, memories),
                    "a metadata update answered other counts than it stored"
                );
                checked += 1;
            }
            action::STATE_UPDATED => {
                let version = t.details["version"].as_u64().unwrap();
                let got = &answers[&("state", version)];
                assert_eq!(
                    (got.turn_count, got.memory_count, got.metadata.len() as u64),
                    (turns, memories, keys),
                    "the write of version {version} answered a session it did not store"
                );
                checked += 1;
            }
            _ => {}
        }
    }
    assert_eq!(checked, 6 * 6 * 2);
}

/// Stats count one tenant's live sessions, their turns, its memories and entities, the
/// sessions changed in the last 24 hours and its traces per hour, and nothing of another's.
pub async fn stats_count_a_tenants_records<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let (a, b) = (env.sb().tenant("a"), env.sb().tenant("b"));
    let month = |user: Option<&str>| CreateSession {
        ttl_seconds: Some(MAX_TTL_SECONDS),
        user_id: user.map(str::to_owned),
        ..CreateSession::new("agent")
    };
    let s1 = a.create_session(month(Some("u"))).await.unwrap();
    let s2 = a.create_session(month(None)).await.unwrap();
    let short = CreateSession {
        ttl_seconds: Some(60),
        ..CreateSession::new("agent")
    };
    let gone = a.create_session(short).await.unwrap();
    for sid in [&s1.id, &s1.id, &s2.id, &gone.id] {
        a.add_turn(sid, crate::AddTurn::text("q", "a"))
            .await
            .unwrap();
    }
    a.add_memory(AddMemory::new(&s1.id, "likes tea"))
        .await
        .unwrap();
    a.add_memory(AddMemory::new(&s2.id, "likes maps"))
        .await
        .unwrap();
    let user_level = AddMemory {
        session_id: None,
        user_id: Some("u".into()),
        ..AddMemory::new("", "lives in Oslo")
    };
    a.add_memory(user_level).await.unwrap();
    let entity = crate::CreateEntity {
        session_id: s2.id.clone(),
        entity_type: "t".into(),
        entity_id: "x".into(),
        attributes: None,
    };
    a.create_entity(entity).await.unwrap();
    let bs = b.create_session(month(None)).await.unwrap();
    b.add_turn(&bs.id, crate::AddTurn::text("q", "a"))
        .await
        .unwrap();
    env.advance(61);

    let stats = a.stats().await.unwrap();
    let totals = (stats.sessions, stats.turns, stats.memories, stats.entities);
    assert_eq!(
        totals,
        (2, 3, 3, 1),
        "the expired session and its turn are not counted"
    );
    assert_eq!(stats.active_sessions_24h, 2);
    let traced = a
        .list_traces(ListTraces {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .data
        .len() as u64;
    let counted: u64 = stats.recent_activity.iter().map(|(_, n)| n).sum();
    assert_eq!(counted, traced);
    assert_eq!(
        stats.recent_activity.len(),
        1,
        "{:?}",
        stats.recent_activity
    );
    let bstats = b.stats().await.unwrap();
    let btotals = (
        bstats.sessions,
        bstats.turns,
        bstats.memories,
        bstats.entities,
    );
    assert_eq!(btotals, (1, 1, 0, 0));
    assert_eq!(
        bstats.recent_activity.iter().map(|(_, n)| n).sum::<u64>(),
        2
    );

    // A day later only what changed since counts as active, and only its traces as activity.
    env.advance(25 * 3600);
    let write = StateWrite::new(json!({"later": true}));
    a.merge_state(&s1.id, write).await.unwrap();
    let later = a.stats().await.unwrap();
    assert_eq!((later.sessions, later.active_sessions_24h), (2, 1));
    let hour = crate::clock::hour_start(crate::Clock::now(env.clock.as_ref()));
    assert_eq!(later.recent_activity, [(hour, 1)]);
}
