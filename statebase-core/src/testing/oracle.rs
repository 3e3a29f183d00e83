//! The property test: random operation sequences (sessions, state writes, rollbacks, forks,
//! turns, memories, deletes, clock jumps, sweeps, reopens) applied to a store and to a small
//! reference model, compared after every step.

use super::{Env, StoreFactory};
use crate::json::{self, Object};
use crate::{
    AddMemory, AddTurn, CreateSession, ForkFrom, HistoryQuery, ListMemories, ListSessions,
    ListTurns, Result, RollbackTo, SearchMemories, Session, StateWrite,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
enum Op {
    Create {
        state: Object,
        ttl: i64,
    },
    Replace {
        s: usize,
        state: Object,
    },
    Merge {
        s: usize,
        patch: Object,
    },
    Rollback {
        s: usize,
        version: i64,
    },
    Fork {
        s: usize,
        version: Option<i64>,
    },
    Delete {
        s: usize,
    },
    AddTurn {
        s: usize,
        state_after: Option<Object>,
    },
    AddMemory {
        s: usize,
        content: &'static str,
    },
    DeleteMemory {
        s: usize,
        m: usize,
    },
    Advance {
        seconds: i64,
    },
    Sweep,
    Reopen,
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i8>().prop_map(|i| json!(i)),
        "[a-z]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop::collection::btree_map(prop::sample::select(vec!["x", "y"]), inner, 0..3)
            .prop_map(|m| json!(m))
    })
}

fn object() -> impl Strategy<Value = Object> {
    prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), value(), 0..4)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// An initial state, half the time with a long value that later merges keep: states big
/// enough to be stored as deltas between snapshots.
fn padded() -> impl Strategy<Value = Object> {
    (object(), any::<bool>()).prop_map(|(mut state, pad)| {
        if pad {
            state.insert("pad".into(), json!("p".repeat(600)));
        }
        state
    })
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..8usize;
    prop_oneof![
        3 => (padded(), 1..300i64).prop_map(|(state, ttl)| Op::Create { state, ttl }),
        4 => (s.clone(), object()).prop_map(|(s, state)| Op::Replace { s, state }),
        4 => (s.clone(), object()).prop_map(|(s, patch)| Op::Merge { s, patch }),
        2 => (s.clone(), -4..6i64).prop_map(|(s, version)| Op::Rollback { s, version }),
        2 => (s.clone(), prop::option::of(-3..5i64)).prop_map(|(s, version)| Op::Fork { s, version }),
        1 => s.clone().prop_map(|s| Op::Delete { s }),
        3 => (s.clone(), prop::option::of(object())).prop_map(|(s, state_after)| Op::AddTurn { s, state_after }),
        3 => (s.clone(), prop::sample::select(CONTENTS.to_vec())).prop_map(|(s, content)| Op::AddMemory { s, content }),
        1 => (s, 0..4usize).prop_map(|(s, m)| Op::DeleteMemory { s, m }),
        2 => (0..200i64).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Reopen),
    ]
}

/// Memory contents: few, so adds often repeat one (dedupe) and every one is a distinct
/// keyword set (search).
const CONTENTS: [&str; 4] = ["alpha fact", "beta fact", "gamma note", "delta memo"];

#[derive(Debug)]
struct ModelSession {
    id: String,
    versions: Vec<Object>,
    turns: u64,
    /// (content, memory id), in insertion order.
    memories: Vec<(&'static str, String)>,
    /// Seconds after the epoch.
    expires_at: i64,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Model {
    sessions: Vec<ModelSession>,
    /// Seconds after the epoch.
    now: i64,
}

impl Model {
    /// Session-addressed operations pick among every session the model has seen, deleted and
    /// expired ones included; `None` before the first.
    fn pick(&self, s: usize) -> Option<usize> {
        (!self.sessions.is_empty()).then(|| s % self.sessions.len())
    }

    fn live(&self, i: usize) -> bool {
        let s = &self.sessions[i];
        !s.deleted && self.now < s.expires_at
    }

    /// The absolute version `v` names in session `i`, if it exists.
    fn resolve(&self, i: usize, v: i64) -> Option<usize> {
        let head = self.sessions[i].versions.len() as i64 - 1;
        let k = if v < 0 { head + v } else { v };
        (0..=head).contains(&k).then_some(k as usize)
    }
}

/// Runs random operation sequences against stores from `make` (a fresh one per sequence)
/// and the reference model; panics with the shrunk failing sequence on a mismatch.
///
/// `PROPTEST_CASES` sets the number of sequences (default 128).
pub fn check_against_model<F: StoreFactory>(make: impl Fn() -> F) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(128);
    let config = Config {
        failure_persistence: None,
        ..Config::with_cases(cases)
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(run(make(), ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("the store diverged from the model: {e}");
    }
}

fn expect_not_found<T: std::fmt::Debug>(r: Result<T>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.code(), "session_not_found", "{what}"),
        Ok(v) => panic!("{what}: expected session_not_found, got {v:?}"),
    }
}

async fn run<F: StoreFactory>(factory: F, ops: Vec<Op>) {
    let mut env = Env::new(factory).await;
    let mut model = Model::default();
    for op in ops {
        let sb = env.sb().clone();
        let merge = matches!(op, Op::Merge { .. });
        match op {
            Op::Create { state, ttl } => {
                let req = CreateSession {
                    initial_state: Some(Value::Object(state.clone())),
                    ttl_seconds: Some(ttl),
                    ..CreateSession::new("agent")
                };
                let s = sb.create_session(req).await.unwrap();
                model.sessions.push(ModelSession {
                    id: s.id,
                    versions: vec![state],
                    turns: 0,
                    memories: Vec::new(),
                    expires_at: model.now + ttl,
                    deleted: false,
                });
            }
            Op::Replace { s, state } | Op::Merge { s, patch: state } => {
                let Some(i) = model.pick(s) else { continue };
                let id = model.sessions[i].id.clone();
                let w = StateWrite::new(Value::Object(state.clone()));
                let r = if merge {
                    sb.merge_state(&id, w).await
                } else {
                    sb.replace_state(&id, w).await
                };
                if model.live(i) {
                    let versions = &mut model.sessions[i].versions;
                    let mut next = state;
                    if merge {
                        let mut merged = versions.last().cloned().unwrap_or_default();
                        json::merge_patch(&mut merged, &next);
                        next = merged;
                    }
                    versions.push(next);
                    assert_eq!(r.unwrap().version as usize, versions.len() - 1);
                } else {
                    expect_not_found(r, "write");
                }
            }
            Op::Rollback { s, version } => {
                let Some(i) = model.pick(s) else { continue };
                let req = RollbackTo {
                    version,
                    ..Default::default()
                };
                let r = sb.rollback(&model.sessions[i].id, req).await;
                match (model.live(i), model.resolve(i, version)) {
                    (false, _) => expect_not_found(r, "rollback"),
                    (true, None) => assert_eq!(r.unwrap_err().code(), "version_not_found"),
                    (true, Some(k)) => {
                        let versions = &mut model.sessions[i].versions;
                        versions.push(versions[k].clone());
                        assert_eq!(r.unwrap().restored_from_version as usize, k);
                    }
                }
            }
            Op::Fork { s, version } => {
                let Some(i) = model.pick(s) else { continue };
                let req = ForkFrom {
                    version,
                    ..Default::default()
                };
                let r = sb.fork(&model.sessions[i].id, req).await;
                let k = match version {
                    None => Some(model.sessions[i].versions.len() - 1),
                    Some(v) => model.resolve(i, v),
                };
                match (model.live(i), k) {
                    (false, _) => expect_not_found(r, "fork"),
                    (true, None) => assert_eq!(r.unwrap_err().code(), "version_not_found"),
                    (true, Some(k)) => {
                        let f = r.unwrap();
                        let state = model.sessions[i].versions[k].clone();
                        model.sessions.push(ModelSession {
                            id: f.id,
                            versions: vec![state],
                            turns: 0,
                            memories: Vec::new(),
                            expires_at: model.now + crate::DEFAULT_TTL_SECONDS,
                            deleted: false,
                        });
                    }
                }
            }
            Op::Delete { s } => {
                let Some(i) = model.pick(s) else { continue };
                let r = sb.delete_session(&model.sessions[i].id).await;
                if model.live(i) {
                    r.unwrap();
                    model.sessions[i].deleted = true;
                    model.sessions[i].memories.clear();
                } else {
                    expect_not_found(r, "delete");
                }
            }
            Op::AddTurn { s, state_after } => {
                let Some(i) = model.pick(s) else { continue };
                let req = AddTurn {
                    state_after: state_after.clone().map(Value::Object),
                    ..AddTurn::text("in", "out")
                };
                let r = sb.add_turn(&model.sessions[i].id, req).await;
                if !model.live(i) {
                    expect_not_found(r, "add turn");
                    continue;
                }
                let m = &mut model.sessions[i];
                m.turns += 1;
                let turn = r.unwrap();
                assert_eq!(turn.turn_number, m.turns);
                match state_after {
                    Some(after) if Some(&after) != m.versions.last() => {
                        m.versions.push(after);
                        assert_eq!(turn.state_version, Some(m.versions.len() as u64 - 1));
                    }
                    _ => assert_eq!(turn.state_version, None),
                }
            }
            Op::AddMemory { s, content } => {
                let Some(i) = model.pick(s) else { continue };
                let r = sb
                    .add_memory(AddMemory::new(&model.sessions[i].id, content))
                    .await;
                if !model.live(i) {
                    expect_not_found(r, "add memory");
                    continue;
                }
                let id = r.unwrap().id;
                let m = &mut model.sessions[i];
                match m.memories.iter().find(|(c, _)| *c == content) {
                    Some((_, existing)) => assert_eq!(*existing, id, "dedupe"),
                    None => m.memories.push((content, id)),
                }
            }
            Op::DeleteMemory { s, m } => {
                let Some(i) = model.pick(s) else { continue };
                let session = &mut model.sessions[i];
                if session.memories.is_empty() {
                    continue;
                }
                let (_, id) = session.memories.remove(m % session.memories.len());
                // A dead session's memories went with it.
                let r = sb.delete_memory(&id).await;
                if session.deleted {
                    assert_eq!(r.unwrap_err().code(), "memory_not_found");
                } else {
                    r.unwrap();
                }
            }
            Op::Advance { seconds } => {
                env.advance(seconds);
                model.now += seconds;
            }
            Op::Sweep => {
                let swept: BTreeSet<String> = sb
                    .sweep_expired()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.session.id)
                    .collect();
                let mut expected = BTreeSet::new();
                for s in model.sessions.iter_mut() {
                    if !s.deleted && model.now >= s.expires_at {
                        s.deleted = true;
                        s.memories.clear();
                        expected.insert(s.id.clone());
                    }
                }
                assert_eq!(swept, expected);
            }
            Op::Reopen => {
                drop(sb);
                env.reopen().await;
            }
        }
        check(&env, &model).await;
    }
}

async fn check<F: StoreFactory>(env: &Env<F>, model: &Model) {
    let sb = env.sb();
    let mut live = BTreeSet::new();
    for (i, m) in model.sessions.iter().enumerate() {
        let got = sb.get_session(&m.id).await;
        if !model.live(i) {
            expect_not_found(got, "get of a dead session");
            continue;
        }
        live.insert(m.id.clone());
        let s: Session = got.unwrap();
        assert_eq!(s.version as usize, m.versions.len() - 1);
        assert_eq!(Some(&s.state), m.versions.last());
        let q = HistoryQuery {
            limit: Some(1000),
            since_version: None,
            from_version: None,
        };
        let h = sb.history(&m.id, q).await.unwrap();
        let states: Vec<&Object> = h.versions.iter().map(|v| &v.state).collect();
        assert_eq!(states, m.versions.iter().collect::<Vec<_>>());
        assert_eq!(
            (s.turn_count, s.memory_count),
            (m.turns, m.memories.len() as u64)
        );
        let turns = sb
            .list_turns(
                &m.id,
                ListTurns {
                    limit: Some(100),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let numbers: Vec<u64> = turns.data.iter().map(|t| t.turn_number).collect();
        assert_eq!(numbers, (1..=m.turns).rev().collect::<Vec<_>>());
        let listed: BTreeSet<String> = sb
            .list_memories(ListMemories {
                session_id: Some(m.id.clone()),
                limit: Some(100),
                ..Default::default()
            })
            .await
            .unwrap()
            .data
            .into_iter()
            .map(|x| x.id)
            .collect();
        let expected: BTreeSet<String> = m.memories.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(listed, expected);
        for (content, id) in &m.memories {
            let q = SearchMemories {
                session_id: Some(m.id.clone()),
                threshold: Some(0.99),
                ..SearchMemories::new(content)
            };
            let hits = sb.search_memories(q).await.unwrap();
            assert_eq!(hits.iter().map(|h| &h.id).collect::<Vec<_>>(), vec![id]);
        }
    }
    let listed: BTreeSet<String> = sb
        .list_sessions(ListSessions {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .data
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, live);
}
