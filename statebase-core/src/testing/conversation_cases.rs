//! Cases for a conversation: turns, memories, search, context, and the API keys it is reached by.

use super::{code, Env, StoreFactory};
use crate::store::*;
use crate::{
    action, AddMemory, AddTurn, ContextRequest, CreateSession, ForkFrom, HashEmbedder,
    HistoryQuery, KeyLimits, ListMemories, ListTraces, ListTurns, Memory, Order, SearchMemories,
    Session, StateBase, UpdateMemory, VersionChange, MAX_MEMORY_CHARS,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

async fn session<S: Store>(sb: &StateBase<S>, user: Option<&str>) -> Session {
    let req = CreateSession {
        user_id: user.map(str::to_owned),
        initial_state: Some(json!({"step": 0})),
        ..CreateSession::new("agent")
    };
    sb.create_session(req).await.expect("create session")
}

async fn remember<S: Store>(sb: &StateBase<S>, session_id: &str, content: &str) -> Memory {
    sb.add_memory(AddMemory::new(session_id, content))
        .await
        .expect("add memory")
}

fn ids(hits: &[crate::MemoryHit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// Turns are numbered 1, 2, 3…; a plain string becomes `{type: "text", content}`; extra keys
/// of an object are kept; `turn_count` follows.
pub async fn turns_are_numbered_and_keep_their_input<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    let t1 = sb
        .add_turn(&s.id, AddTurn::text("hi", "hello!"))
        .await
        .unwrap();
    assert!(t1.id.starts_with("turn_") && t1.id.len() == 17, "{}", t1.id);
    assert_eq!(t1.turn_number, 1);
    assert_eq!(
        Value::Object(t1.input.clone()),
        json!({"type": "text", "content": "hi"})
    );
    let tool = AddTurn {
        input: json!({"type": "tool_call", "content": "weather", "tool_metadata": {"name": "wx", "arguments": {"city": "Oslo"}}}),
        output: json!({"type": "tool_response", "content": "sunny", "output": {"temp": 21}}),
        reasoning: Some("user asked".into()),
        metadata: Some(json!({"model": "m1", "tokens_input": 12})),
        ..AddTurn::default()
    };
    let t2 = sb.add_turn(&s.id, tool).await.unwrap();
    assert_eq!(t2.turn_number, 2);
    assert_eq!(
        t2.input["tool_metadata"]["arguments"]["city"],
        json!("Oslo")
    );
    assert_eq!(t2.output["output"]["temp"], json!(21));
    assert_eq!(t2.reasoning.as_deref(), Some("user asked"));
    assert_eq!(t2.metadata["tokens_input"], json!(12));
    assert_eq!(
        (
            t2.state_before.clone(),
            t2.state_after.clone(),
            t2.state_version
        ),
        (None, None, None)
    );
    let no_type = AddTurn {
        input: json!({"content": "x"}),
        output: json!("y"),
        ..AddTurn::default()
    };
    assert_eq!(
        sb.add_turn(&s.id, no_type).await.unwrap().input["type"],
        json!("text")
    );
    let now = sb.get_session(&s.id).await.unwrap();
    assert_eq!((now.turn_count, now.version), (3, 0));
    assert_eq!(sb.get_turn(&s.id, &t2.id).await.unwrap(), t2);
}

/// A `state_after` that differs from the current state becomes the next version in the same
/// step as the turn; an equal one writes no version.
pub async fn turn_state_after_writes_a_version_atomically<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    let t = AddTurn {
        state_before: Some(json!({"step": 0})),
        state_after: Some(json!({"step": 1, "topic": "billing"})),
        reasoning: Some("moved on".into()),
        ..AddTurn::text("a", "b")
    };
    let t1 = sb.add_turn(&s.id, t).await.unwrap();
    assert_eq!(t1.state_version, Some(1));
    assert_eq!(
        t1.state_before.as_ref().map(|o| o["step"].clone()),
        Some(json!(0))
    );
    let now = sb.get_session(&s.id).await.unwrap();
    assert_eq!((now.version, now.turn_count), (1, 1));
    assert_eq!(
        Value::Object(now.state.clone()),
        json!({"step": 1, "topic": "billing"})
    );
    let v1 = sb.state_at(&s.id, 1).await.unwrap();
    assert_eq!(
        v1.change,
        VersionChange::Turn {
            turn_id: t1.id.clone(),
            turn_number: 1
        }
    );
    assert_eq!(v1.reasoning.as_deref(), Some("moved on"));
    let same = AddTurn {
        state_after: Some(json!({"step": 1, "topic": "billing"})),
        ..AddTurn::text("c", "d")
    };
    let t2 = sb.add_turn(&s.id, same).await.unwrap();
    assert_eq!(t2.state_version, None);
    assert_eq!(sb.get_session(&s.id).await.unwrap().version, 1);
    let updates = sb
        .list_traces(ListTraces {
            session_id: Some(s.id.clone()),
            action: Some(action::STATE_UPDATED.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(updates.data.len(), 1);
    assert_eq!(updates.data[0].details["turn_id"], json!(t1.id));
}

/// Bad turns are refused and write nothing; unknown sessions are `session_not_found`.
pub async fn bad_turns_are_refused<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    let bad = [
        AddTurn {
            input: json!(5),
            output: json!("x"),
            ..AddTurn::default()
        },
        AddTurn {
            input: json!({"type": "text"}),
            output: json!("x"),
            ..AddTurn::default()
        },
        AddTurn {
            input: json!({"type": 3, "content": "x"}),
            output: json!("x"),
            ..AddTurn::default()
        },
        AddTurn {
            state_after: Some(json!([1])),
            ..AddTurn::text("a", "b")
        },
        AddTurn {
            metadata: Some(json!("m")),
            ..AddTurn::text("a", "b")
        },
    ];
    for t in bad {
        assert_eq!(
            code(sb.add_turn(&s.id, t.clone()).await),
            "invalid_request",
            "{t:?}"
        );
    }
    assert_eq!(
        code(sb.add_turn("sess_nope", AddTurn::text("a", "b")).await),
        "session_not_found"
    );
    let now = sb.get_session(&s.id).await.unwrap();
    assert_eq!((now.turn_count, now.version), (0, 0));
}

/// Turn lists are newest first by default, oldest first on request, and paginate; a turn is
/// only found through its own session.
pub async fn turn_lists_order_and_paginate<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    let other = session(sb, None).await;
    let other_turn = sb
        .add_turn(&other.id, AddTurn::text("o", "o"))
        .await
        .unwrap();
    let mut made = Vec::new();
    for i in 0..25 {
        made.push(
            sb.add_turn(&s.id, AddTurn::text(&format!("q{i}"), "a"))
                .await
                .unwrap(),
        );
    }
    let numbers =
        |p: &crate::Page<crate::Turn>| p.data.iter().map(|t| t.turn_number).collect::<Vec<_>>();
    let desc = sb.list_turns(&s.id, ListTurns::default()).await.unwrap();
    assert_eq!(numbers(&desc), (6..=25).rev().collect::<Vec<_>>());
    assert!(desc.has_more);
    let rest = sb
        .list_turns(
            &s.id,
            ListTurns {
                starting_after: desc.last_id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(numbers(&rest), (1..=5).rev().collect::<Vec<_>>());
    assert!(!rest.has_more);
    let asc = sb
        .list_turns(
            &s.id,
            ListTurns {
                order: Order::Asc,
                limit: Some(10),
                starting_after: Some(made[4].id.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(numbers(&asc), (6..=15).collect::<Vec<_>>());
    let foreign = ListTurns {
        starting_after: Some(other_turn.id.clone()),
        ..Default::default()
    };
    // A cursor that names no turn of this session is a missing turn.
    assert_eq!(code(sb.list_turns(&s.id, foreign).await), "turn_not_found");
    assert_eq!(
        code(sb.get_turn(&s.id, &other_turn.id).await),
        "turn_not_found"
    );
    assert_eq!(
        code(sb.get_turn(&s.id, "turn_nope").await),
        "turn_not_found"
    );
    let bad = ListTurns {
        limit: Some(101),
        ..Default::default()
    };
    assert_eq!(code(sb.list_turns(&s.id, bad).await), "invalid_request");
}

/// Concurrent turns (some moving the state) get numbers 1..=n with no gap or duplicate, and
/// every state-moving turn gets its own version.
pub async fn concurrent_turns_have_no_gaps<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = session(&sb, None).await;
    let n = 30u64;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let sb = sb.clone();
            let id = s.id.clone();
            tokio::spawn(async move {
                let t = AddTurn {
                    state_after: (i % 3 == 0).then(|| json!({ "by": i })),
                    ..AddTurn::text(&format!("{i}"), "ok")
                };
                sb.add_turn(&id, t).await
            })
        })
        .collect();
    let mut numbers = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for t in tasks {
        let turn = t.await.unwrap().unwrap();
        assert!(numbers.insert(turn.turn_number));
        if let Some(v) = turn.state_version {
            assert!(versions.insert(v));
        }
    }
    assert_eq!(numbers, (1..=n).collect());
    let now = sb.get_session(&s.id).await.unwrap();
    assert_eq!(now.turn_count, n);
    assert_eq!(versions, (1..=now.version).collect());
    assert_eq!(versions.len(), 10);
}

/// A new memory has `mem_` + 12 chars, type `general`, version 1, the embedder's model, and
/// counts in its session; bad input is refused with stable codes.
pub async fn memories_have_defaults_and_limits<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, Some("u1")).await;
    let m = remember(sb, &s.id, "The user prefers dark mode").await;
    assert!(m.id.starts_with("mem_") && m.id.len() == 16, "{}", m.id);
    assert_eq!((m.memory_type.as_str(), m.version), ("general", 1));
    assert_eq!(m.user_id.as_deref(), Some("u1"));
    assert_eq!(
        m.embedding_model.as_deref(),
        Some(sb.config().embedder.model_id())
    );
    assert_eq!(sb.get_memory(&m.id).await.unwrap(), m);
    assert_eq!(sb.get_session(&s.id).await.unwrap().memory_count, 1);
    let plain = AddMemory {
        embed: Some(false),
        memory_type: Some("preference".into()),
        tags: Some(vec!["ui".into(), "ui".into(), "theme".into()]),
        metadata: Some(json!({"source": "chat"})),
        ..AddMemory::new(&s.id, "Likes large fonts")
    };
    let p = sb.add_memory(plain).await.unwrap();
    assert_eq!(p.embedding_model, None);
    assert_eq!(p.tags, vec!["ui", "theme"]);
    assert_eq!(p.memory_type, "preference");
    let longest = "x".repeat(MAX_MEMORY_CHARS);
    sb.add_memory(AddMemory::new(&s.id, &longest))
        .await
        .unwrap();
    let too_long = "é".repeat(MAX_MEMORY_CHARS + 1);
    assert_eq!(
        code(sb.add_memory(AddMemory::new(&s.id, &too_long)).await),
        "content_too_large"
    );
    assert_eq!(
        code(sb.add_memory(AddMemory::new(&s.id, "  ")).await),
        "invalid_request"
    );
    let orphan = AddMemory {
        session_id: None,
        ..AddMemory::new("", "no scope")
    };
    assert_eq!(code(sb.add_memory(orphan).await), "invalid_request");
    let wrong_user = AddMemory {
        user_id: Some("u2".into()),
        ..AddMemory::new(&s.id, "x")
    };
    assert_eq!(code(sb.add_memory(wrong_user).await), "user_id_mismatch");
    assert_eq!(
        code(sb.add_memory(AddMemory::new("sess_nope", "x")).await),
        "session_not_found"
    );
    assert_eq!(code(sb.get_memory("mem_nope").await), "memory_not_found");
    assert_eq!(sb.get_session(&s.id).await.unwrap().memory_count, 3);
}

/// The same content in the same scope is one memory, also when adds race; another scope gets
/// its own.
pub async fn same_content_in_a_scope_is_one_memory<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb().clone();
    let s = session(&sb, Some("u1")).await;
    let other = session(&sb, Some("u1")).await;
    let a = remember(&sb, &s.id, "Allergic to peanuts").await;
    let again = remember(&sb, &s.id, "Allergic to peanuts").await;
    assert_eq!(again, a);
    assert_ne!(
        remember(&sb, &other.id, "Allergic to peanuts").await.id,
        a.id
    );
    let user_level = |content: &str| AddMemory {
        session_id: None,
        user_id: Some("u1".into()),
        ..AddMemory::new("", content)
    };
    let u1 = sb.add_memory(user_level("Lives in Oslo")).await.unwrap();
    assert_eq!(u1.session_id, None);
    assert_eq!(
        sb.add_memory(user_level("Lives in Oslo")).await.unwrap().id,
        u1.id
    );
    let racers: Vec<_> = (0..12)
        .map(|_| {
            let sb = sb.clone();
            let id = s.id.clone();
            tokio::spawn(async move { sb.add_memory(AddMemory::new(&id, "Raced content")).await })
        })
        .collect();
    let mut winners = HashSet::new();
    for r in racers {
        winners.insert(r.await.unwrap().unwrap().id);
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(sb.get_session(&s.id).await.unwrap().memory_count, 2);
    let listed = sb
        .list_memories(ListMemories {
            session_id: Some(s.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 2);
}

/// Updates re-embed new content, replace tags, merge metadata, bump the version and keep
/// every revision; content that another memory of the scope has is refused.
pub async fn memory_updates_are_versioned<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    let m = sb
        .add_memory(AddMemory {
            tags: Some(vec!["a".into(), "b".into()]),
            metadata: Some(json!({"keep": 1, "drop": 2})),
            ..AddMemory::new(&s.id, "Favourite colour is blue")
        })
        .await
        .unwrap();
    let other = remember(sb, &s.id, "Owns a bicycle").await;
    env.advance(3);
    let u = sb
        .update_memory(
            &m.id,
            UpdateMemory {
                content: Some("Favourite colour is green".into()),
                tags: Some(vec!["c".into()]),
                metadata: Some(json!({"drop": null, "new": true})),
                memory_type: Some("preference".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(u.version, 2);
    assert_eq!(u.content, "Favourite colour is green");
    assert_eq!(u.tags, vec!["c"]);
    assert_eq!(u.memory_type, "preference");
    assert_eq!(
        Value::Object(u.metadata.clone()),
        json!({"keep": 1, "new": true})
    );
    assert!(u.updated_at > u.created_at);
    assert_eq!(sb.get_memory(&m.id).await.unwrap(), u);
    let history = sb.memory_history(&m.id).await.unwrap();
    let contents: Vec<_> = history
        .iter()
        .map(|r| (r.version, r.content.as_str()))
        .collect();
    assert_eq!(
        contents,
        [
            (1, "Favourite colour is blue"),
            (2, "Favourite colour is green")
        ]
    );
    let q = |text: &str| SearchMemories {
        threshold: Some(0.99),
        session_id: Some(s.id.clone()),
        ..SearchMemories::new(text)
    };
    assert_eq!(
        ids(&sb.search_memories(q("green")).await.unwrap()),
        vec![m.id.clone()]
    );
    assert!(sb.search_memories(q("blue")).await.unwrap().is_empty());
    let clash = UpdateMemory {
        content: Some(other.content.clone()),
        ..Default::default()
    };
    // Another memory of the scope has that content: a conflict, and nothing changes.
    assert_eq!(
        code(sb.update_memory(&m.id, clash).await),
        "duplicate_content"
    );
    assert_eq!(sb.get_memory(&m.id).await.unwrap().version, 2);
    assert_eq!(
        code(sb.update_memory("mem_nope", UpdateMemory::default()).await),
        "memory_not_found"
    );
}

/// Deleting a memory removes it from reads, lists, search and its session's count.
pub async fn deleted_memories_are_gone<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    let m = remember(sb, &s.id, "Prefers email over phone").await;
    let keep = remember(sb, &s.id, "Works night shifts").await;
    sb.delete_memory(&m.id).await.unwrap();
    assert_eq!(code(sb.get_memory(&m.id).await), "memory_not_found");
    assert_eq!(code(sb.memory_history(&m.id).await), "memory_not_found");
    assert_eq!(code(sb.delete_memory(&m.id).await), "memory_not_found");
    assert_eq!(sb.get_session(&s.id).await.unwrap().memory_count, 1);
    let hits = sb
        .search_memories(SearchMemories {
            threshold: Some(0.0),
            ..SearchMemories::new("email phone")
        })
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![keep.id.clone()]);
    // The content can be added again, as a new memory.
    assert_ne!(
        remember(sb, &s.id, "Prefers email over phone").await.id,
        m.id
    );
}

/// Memory lists filter by session, user, type and tags (any of), newest first, and paginate.
pub async fn memory_lists_filter_and_paginate<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let a = session(sb, Some("ua")).await;
    let b = session(sb, Some("ub")).await;
    let mut made = Vec::new();
    for i in 0..6 {
        let req = AddMemory {
            memory_type: Some(if i % 2 == 0 { "fact" } else { "event" }.into()),
            tags: Some(vec![format!("t{}", i % 3)]),
            ..AddMemory::new(
                if i < 4 { &a.id } else { &b.id },
                &format!("memory number {i}"),
            )
        };
        made.push(sb.add_memory(req).await.unwrap().id);
        env.advance(1);
    }
    let list = |q: ListMemories| async move {
        sb.list_memories(q)
            .await
            .unwrap()
            .data
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>()
    };
    let pick = |idx: &[usize]| idx.iter().map(|&i| made[i].clone()).collect::<Vec<_>>();
    assert_eq!(
        list(ListMemories::default()).await,
        pick(&[5, 4, 3, 2, 1, 0])
    );
    assert_eq!(
        list(ListMemories {
            session_id: Some(a.id.clone()),
            ..Default::default()
        })
        .await,
        pick(&[3, 2, 1, 0])
    );
    assert_eq!(
        list(ListMemories {
            user_id: Some("ub".into()),
            ..Default::default()
        })
        .await,
        pick(&[5, 4])
    );
    assert_eq!(
        list(ListMemories {
            memory_type: Some("fact".into()),
            ..Default::default()
        })
        .await,
        pick(&[4, 2, 0])
    );
    assert_eq!(
        list(ListMemories {
            tags: vec!["t0".into(), "t2".into()],
            ..Default::default()
        })
        .await,
        pick(&[5, 3, 2, 0])
    );
    let first = sb
        .list_memories(ListMemories {
            limit: Some(4),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(first.has_more);
    let rest = list(ListMemories {
        starting_after: first.last_id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(rest, pick(&[1, 0]));
}

/// Search ranks by meaning and keywords, honours the threshold, the filters and the limit,
/// never misses a memory that contains every keyword of the query, and finds a memory as
/// soon as its add returns.
pub async fn search_ranks_and_filters<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, Some("u1")).await;
    let other = session(sb, Some("u2")).await;
    let dark = sb
        .add_memory(AddMemory {
            memory_type: Some("preference".into()),
            tags: Some(vec!["ui".into()]),
            ..AddMemory::new(&s.id, "The user prefers dark mode in every editor")
        })
        .await
        .unwrap();
    let trip = sb
        .add_memory(AddMemory {
            memory_type: Some("event".into()),
            tags: Some(vec!["travel".into()]),
            ..AddMemory::new(&s.id, "Booked a flight to Lisbon for the March conference")
        })
        .await
        .unwrap();
    let plain = sb
        .add_memory(AddMemory {
            embed: Some(false),
            ..AddMemory::new(&s.id, "Invoice number 4471 was paid late")
        })
        .await
        .unwrap();
    let elsewhere = remember(sb, &other.id, "The user prefers dark mode too").await;
    let loose = SearchMemories {
        threshold: Some(0.0),
        session_id: Some(s.id.clone()),
        ..SearchMemories::new("dark mode preference for the editor")
    };
    let hits = sb.search_memories(loose.clone()).await.unwrap();
    assert_eq!(hits[0].id, dark.id);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(hits
        .iter()
        .all(|h| h.session_id.as_deref() == Some(s.id.as_str())));
    let h = &hits[0];
    assert_eq!(
        (h.memory_type.as_str(), h.tags.clone()),
        ("preference", vec!["ui".to_owned()])
    );
    assert!(h.score >= h.vector_score && h.score >= h.keyword_score);
    // Every keyword present: found at the default threshold whatever the vector says.
    let exact = SearchMemories::new("invoice 4471 paid late");
    let found = sb.search_memories(exact).await.unwrap();
    assert_eq!(ids(&found), vec![plain.id.clone()]);
    assert_eq!(found[0].keyword_score, 1.0);
    // The default threshold of 0.7 drops weak matches.
    let weak = sb
        .search_memories(SearchMemories::new("quarterly revenue forecast"))
        .await
        .unwrap();
    assert!(weak.is_empty(), "{weak:?}");
    // Filters.
    let typed = SearchMemories {
        types: vec!["event".into()],
        ..loose.clone()
    };
    assert_eq!(
        ids(&sb.search_memories(typed).await.unwrap()),
        vec![trip.id.clone()]
    );
    let tagged = SearchMemories {
        tags: vec!["nothing".into(), "ui".into()],
        ..loose.clone()
    };
    assert_eq!(
        ids(&sb.search_memories(tagged).await.unwrap()),
        vec![dark.id.clone()]
    );
    let by_user = SearchMemories {
        session_id: None,
        user_id: Some("u2".into()),
        ..loose.clone()
    };
    assert_eq!(
        ids(&sb.search_memories(by_user).await.unwrap()),
        vec![elsewhere.id.clone()]
    );
    let tenant_wide = SearchMemories {
        session_id: None,
        limit: Some(2),
        ..loose.clone()
    };
    let both = sb.search_memories(tenant_wide).await.unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(
        both.iter().map(|h| h.id.clone()).collect::<BTreeSet<_>>(),
        BTreeSet::from([dark.id.clone(), elsewhere.id.clone()])
    );
    // Searchable as soon as added.
    let fresh = remember(sb, &s.id, "Speaks Norwegian and Portuguese").await;
    let q = SearchMemories::new("norwegian portuguese");
    assert_eq!(ids(&sb.search_memories(q).await.unwrap()), vec![fresh.id]);
    for bad in [
        SearchMemories::new("  "),
        SearchMemories {
            limit: Some(101),
            ..SearchMemories::new("x")
        },
        SearchMemories {
            limit: Some(0),
            ..SearchMemories::new("x")
        },
        SearchMemories {
            threshold: Some(1.5),
            ..SearchMemories::new("x")
        },
        SearchMemories {
            threshold: Some(f64::NAN),
            ..SearchMemories::new("x")
        },
    ] {
        assert_eq!(code(sb.search_memories(bad).await), "invalid_request");
    }
}

/// Another tenant can't read, update, delete, list or find a tenant's memories and turns.
pub async fn memories_and_turns_are_tenant_isolated<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let a = env.sb().tenant("a");
    let b = env.sb().tenant("b");
    let s = session(&a, Some("shared-user")).await;
    let m = remember(&a, &s.id, "Secret launch date is June 3").await;
    let t = a.add_turn(&s.id, AddTurn::text("x", "y")).await.unwrap();
    assert_eq!(code(b.get_memory(&m.id).await), "memory_not_found");
    assert_eq!(
        code(b.update_memory(&m.id, UpdateMemory::default()).await),
        "memory_not_found"
    );
    assert_eq!(code(b.delete_memory(&m.id).await), "memory_not_found");
    assert_eq!(code(b.memory_history(&m.id).await), "memory_not_found");
    assert!(b
        .list_memories(ListMemories::default())
        .await
        .unwrap()
        .data
        .is_empty());
    let q = SearchMemories {
        threshold: Some(0.0),
        ..SearchMemories::new("secret launch date June")
    };
    assert!(b.search_memories(q.clone()).await.unwrap().is_empty());
    let q_user = SearchMemories {
        user_id: Some("shared-user".into()),
        ..q.clone()
    };
    assert!(b.search_memories(q_user).await.unwrap().is_empty());
    assert_eq!(
        code(b.add_memory(AddMemory::new(&s.id, "x")).await),
        "session_not_found"
    );
    assert_eq!(code(b.get_turn(&s.id, &t.id).await), "session_not_found");
    assert_eq!(
        code(b.list_turns(&s.id, ListTurns::default()).await),
        "session_not_found"
    );
    assert_eq!(
        code(b.add_turn(&s.id, AddTurn::text("x", "y")).await),
        "session_not_found"
    );
    assert_eq!(
        code(b.context(&s.id, ContextRequest::default()).await),
        "session_not_found"
    );
    assert_eq!(ids(&a.search_memories(q).await.unwrap()), vec![m.id]);
}

/// Deleting a session deletes its turns and memories (and they leave the search index);
/// its user's user-level memories stay.
pub async fn session_delete_takes_turns_and_memories<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, Some("u1")).await;
    let m = remember(sb, &s.id, "Drives an electric car").await;
    let t = sb.add_turn(&s.id, AddTurn::text("a", "b")).await.unwrap();
    let user_level = AddMemory {
        session_id: None,
        user_id: Some("u1".into()),
        ..AddMemory::new("", "Drives to work on Mondays")
    };
    let keep = sb.add_memory(user_level).await.unwrap();
    // Load the index before the delete, so the delete must remove from it.
    let q = SearchMemories {
        threshold: Some(0.0),
        ..SearchMemories::new("drives electric car")
    };
    assert_eq!(sb.search_memories(q.clone()).await.unwrap().len(), 2);
    sb.delete_session(&s.id).await.unwrap();
    assert_eq!(code(sb.get_memory(&m.id).await), "memory_not_found");
    assert!(sb
        .store()
        .turn(sb.tenant_id(), &t.id)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        ids(&sb.search_memories(q).await.unwrap()),
        vec![keep.id.clone()]
    );
    assert_eq!(sb.get_memory(&keep.id).await.unwrap(), keep);
}

/// Context returns the state, the memories of the session and its user's user-level ones
/// best first (newest first without a query), the latest turns newest first, the average
/// relevance, and a drift warning when the memories found are only weakly related.
pub async fn context_gathers_state_memories_and_turns<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, Some("u1")).await;
    let other = session(sb, Some("u1")).await;
    let pref = remember(sb, &s.id, "Prefers answers in Spanish").await;
    env.advance(1);
    remember(sb, &s.id, "Has two cats named Tom and Jerry").await;
    env.advance(1);
    let user_level = AddMemory {
        session_id: None,
        user_id: Some("u1".into()),
        ..AddMemory::new("", "Account plan is Enterprise with Spanish support")
    };
    let account = sb.add_memory(user_level).await.unwrap();
    env.advance(1);
    remember(sb, &other.id, "Prefers answers in Spanish, other session").await;
    for i in 0..12 {
        sb.add_turn(&s.id, AddTurn::text(&format!("q{i}"), "a"))
            .await
            .unwrap();
    }
    sb.merge_state(&s.id, crate::StateWrite::new(json!({"lang": "es"})))
        .await
        .unwrap();
    let req = ContextRequest {
        query: Some("answers in Spanish".into()),
        ..Default::default()
    };
    let ctx = sb.context(&s.id, req).await.unwrap();
    assert_eq!(ctx.session.state.get("lang"), Some(&json!("es")));
    assert_eq!(ctx.memories[0].id, pref.id);
    assert!(ctx.memories.len() <= 5);
    assert!(ctx.memories.iter().any(|m| m.id == account.id));
    assert!(ctx
        .memories
        .iter()
        .all(|m| m.session_id.as_deref() != Some(other.id.as_str())));
    let turns: Vec<u64> = ctx.recent_turns.iter().map(|t| t.turn_number).collect();
    assert_eq!(turns, (3..=12).rev().collect::<Vec<_>>());
    let mean = ctx.memories.iter().map(|m| m.score).sum::<f32>() / ctx.memories.len() as f32;
    assert!((ctx.average_relevance - mean).abs() < 1e-6);
    assert!(!ctx.drift_warning, "{ctx:?}");
    // An unrelated question: weak matches, drift.
    let off = ContextRequest {
        query: Some("quarterly revenue forecast".into()),
        memory_limit: Some(2),
        turn_limit: Some(1),
    };
    let drift = sb.context(&s.id, off).await.unwrap();
    assert_eq!((drift.memories.len(), drift.recent_turns.len()), (2, 1));
    assert!(drift.drift_warning, "{drift:?}");
    // No query: the most recent memories, no relevance.
    let recent = sb.context(&s.id, ContextRequest::default()).await.unwrap();
    assert_eq!(recent.memories[0].id, account.id);
    assert_eq!(recent.memories.len(), 3);
    assert_eq!(
        (recent.average_relevance, recent.drift_warning),
        (0.0, false)
    );
    assert_eq!(recent.recent_turns.len(), 10);
    for bad in [
        ContextRequest {
            memory_limit: Some(21),
            ..Default::default()
        },
        ContextRequest {
            turn_limit: Some(51),
            ..Default::default()
        },
        ContextRequest {
            turn_limit: Some(0),
            ..Default::default()
        },
    ] {
        assert_eq!(code(sb.context(&s.id, bad).await), "invalid_request");
    }
    // A fork starts without turns or memories of its own.
    let f = sb.fork(&s.id, ForkFrom::default()).await.unwrap();
    let fctx = sb.context(&f.id, ContextRequest::default()).await.unwrap();
    assert!(fctx.recent_turns.is_empty());
    assert_eq!(ids(&fctx.memories), vec![account.id]);
}

/// Turns, memories, revisions and the search index survive a reopen; after a reopen with
/// another embedding model, stale vectors are not compared (and a search writes nothing)
/// until the memories are re-embedded, then they are found by meaning again.
pub async fn turns_and_memories_survive_reopen<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let (s, m, turns, history) = {
        let sb = env.sb();
        let s = session(sb, Some("u1")).await;
        let m = remember(sb, &s.id, "Birthday is on the 4th of July").await;
        sb.update_memory(
            &m.id,
            UpdateMemory {
                tags: Some(vec!["date".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for i in 0..3 {
            let t = crate::AddTurn {
                state_after: Some(json!({ "i": i })),
                ..AddTurn::text("q", "a")
            };
            sb.add_turn(&s.id, t).await.unwrap();
        }
        let turns = sb.list_turns(&s.id, ListTurns::default()).await.unwrap();
        let history = sb.memory_history(&m.id).await.unwrap();
        (
            sb.get_session(&s.id).await.unwrap(),
            sb.get_memory(&m.id).await.unwrap(),
            turns,
            history,
        )
    };
    env.reopen().await;
    let sb = env.sb();
    assert_eq!(sb.get_session(&s.id).await.unwrap(), s);
    assert_eq!((s.turn_count, s.memory_count, s.version), (3, 1, 3));
    assert_eq!(sb.get_memory(&m.id).await.unwrap(), m);
    assert_eq!(sb.memory_history(&m.id).await.unwrap(), history);
    assert_eq!(
        sb.list_turns(&s.id, ListTurns::default()).await.unwrap(),
        turns
    );
    let q = SearchMemories::new("birthday july");
    assert_eq!(
        ids(&sb.search_memories(q.clone()).await.unwrap()),
        vec![m.id.clone()]
    );
    let h = sb.history(&s.id, HistoryQuery::default()).await.unwrap();
    assert_eq!(h.versions.len(), 4);
    // A new model: stored vectors are stale until they are re-embedded.
    env.reopen_with(|c| c.embedder = Arc::new(HashEmbedder::with_dimensions(64)))
        .await;
    let sb = env.sb();
    let semantic = SearchMemories {
        threshold: Some(0.3),
        ..SearchMemories::new("birthday is on the 4th of july")
    };
    let hits = sb.search_memories(semantic.clone()).await.unwrap();
    assert_eq!(ids(&hits), vec![m.id.clone()], "found by its keywords");
    assert_eq!(hits[0].vector_score, 0.0, "a stale vector compared");
    let before = sb.get_memory(&m.id).await.unwrap();
    assert_eq!(before.embedding_model, m.embedding_model, "a search wrote");
    assert_eq!(sb.reembed_memories().await.unwrap(), 1);
    assert_eq!(sb.reembed_memories().await.unwrap(), 0, "re-embedded twice");
    let hits = sb.search_memories(semantic).await.unwrap();
    assert_eq!(ids(&hits), vec![m.id.clone()]);
    assert!(hits[0].vector_score > 0.9, "{hits:?}");
    let now = sb.get_memory(&m.id).await.unwrap();
    assert_eq!(now.embedding_model.as_deref(), Some("statebase-hash-v1-64"));
    assert_eq!(now.version, m.version);
}

/// A vector is set only on the version it was made for: not once the memory changed, not on
/// a memory that is gone, not on another tenant's; each call says whether it wrote.
pub async fn a_vector_is_set_only_on_its_version<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    let m = remember(sb, &s.id, "Likes green tea").await;
    let store = sb.store();
    let tenant = crate::DEFAULT_TENANT;
    let vector = || vec![0.0; sb.config().embedder.dimensions()];
    let set = |tenant: &'static str, id: String, version: u64| async move {
        store
            .set_embedding(tenant, &id, version, "model-b", vector())
            .await
            .unwrap()
    };
    assert!(
        !set("another-tenant", m.id.clone(), 1).await,
        "another tenant's"
    );
    assert!(
        !set(tenant, m.id.clone(), 2).await,
        "a version it is not at"
    );
    assert!(set(tenant, m.id.clone(), 1).await);
    let read = store.memory(tenant, &m.id).await.unwrap().unwrap();
    assert_eq!(read.memory.embedding_model.as_deref(), Some("model-b"));
    let update = UpdateMemory {
        content: Some("Likes black tea".into()),
        ..Default::default()
    };
    sb.update_memory(&m.id, update).await.unwrap();
    assert!(!set(tenant, m.id.clone(), 1).await, "an old version");
    let read = store.memory(tenant, &m.id).await.unwrap().unwrap();
    assert_eq!(
        read.memory.embedding_model, m.embedding_model,
        "overwritten"
    );
    sb.delete_memory(&m.id).await.unwrap();
    assert!(!set(tenant, m.id.clone(), 2).await, "a deleted memory");
}

/// The embedder down costs no write: a memory added or changed meanwhile is stored with its
/// vector pending, found by keywords at once (the query's vector failing too), and by its
/// vector once `embed_pending` runs with the embedder back; one left pending by a process
/// that stopped is found by `reembed_memories`; a remote embedder leaves every write's
/// vector to `embed_pending`.
pub async fn vectors_pending_while_the_embedder_is_down_come_later<F: StoreFactory>(factory: F) {
    let embedder = Arc::new(super::FlakyEmbedder::new());
    let mut env = Env::new(factory).await;
    env.reopen_with(|c| c.embedder = embedder.clone()).await;
    let (s, pending, changed) = {
        let sb = env.sb();
        let s = session(sb, Some("u1")).await;
        let embedded = remember(sb, &s.id, "Drinks green tea every morning").await;
        assert!(embedded.vector_available);
        embedder.set_down(true);
        let m = remember(sb, &s.id, "Prefers email over phone calls").await;
        assert!(!m.vector_available, "{m:?}");
        assert_eq!(m.embedding_model, embedded.embedding_model);
        let update = UpdateMemory {
            content: Some("Drinks black tea every morning".into()),
            ..Default::default()
        };
        let changed = sb.update_memory(&embedded.id, update).await.unwrap();
        assert!(!changed.vector_available, "{changed:?}");
        assert_eq!(sb.pending_vectors(), 2);
        let q = SearchMemories {
            threshold: Some(0.1),
            ..SearchMemories::new("email")
        };
        let hits = sb.search_memories(q.clone()).await.unwrap();
        assert_eq!(ids(&hits), vec![m.id.clone()], "keywords find it at once");
        assert_eq!(hits[0].vector_score, 0.0);
        assert!(sb.embed_pending().await.is_err(), "the embedder is down");
        assert_eq!(sb.pending_vectors(), 2, "a failed try keeps them");
        embedder.set_down(false);
        assert_eq!(sb.embed_pending().await.unwrap(), 2);
        assert_eq!(
            (sb.pending_vectors(), sb.embed_pending().await.unwrap()),
            (0, 0)
        );
        for id in [&m.id, &embedded.id] {
            let read = sb.get_memory(id).await.unwrap();
            assert!(read.vector_available, "{read:?}");
            let listed = sb.list_memories(ListMemories::default()).await.unwrap();
            assert!(listed
                .data
                .iter()
                .any(|l| l.id == *id && l.vector_available));
        }
        let hits = sb.search_memories(q).await.unwrap();
        assert_eq!(ids(&hits), vec![m.id.clone()]);
        assert!(hits[0].vector_score > 0.1, "no vector compared: {hits:?}");
        let tea = SearchMemories {
            threshold: Some(0.1),
            ..SearchMemories::new("black tea")
        };
        let hits = sb.search_memories(tea).await.unwrap();
        assert_eq!(ids(&hits), vec![embedded.id.clone()]);
        assert!(
            hits[0].vector_score > 0.1,
            "the new content's vector: {hits:?}"
        );
        embedder.set_down(true);
        let pending = remember(sb, &s.id, "Lives in Lisbon").await;
        (s, pending, changed)
    };
    // The process stops with a vector pending; the next one finds it.
    env.reopen().await;
    embedder.set_down(false);
    let sb = env.sb();
    assert!(!sb.get_memory(&pending.id).await.unwrap().vector_available);
    assert_eq!(sb.pending_vectors(), 0, "another process's queue");
    assert_eq!(sb.reembed_memories().await.unwrap(), 1);
    assert!(sb.get_memory(&pending.id).await.unwrap().vector_available);
    assert!(sb.get_memory(&changed.id).await.unwrap().vector_available);
    // A remote embedder: writes never wait for it.
    let remote = Arc::new(super::FlakyEmbedder::remote());
    env.reopen_with(|c| c.embedder = remote.clone()).await;
    let sb = env.sb();
    let m = remember(sb, &s.id, "Plays the cello").await;
    assert!(!m.vector_available);
    // The query has a vector; the pending memory none to compare.
    let cello = SearchMemories {
        threshold: Some(0.1),
        ..SearchMemories::new("cello")
    };
    let hits = sb.search_memories(cello.clone()).await.unwrap();
    assert_eq!(
        (ids(&hits), hits[0].vector_score),
        (vec![m.id.clone()], 0.0)
    );
    assert_eq!(sb.embed_pending().await.unwrap(), 1);
    let hits = sb.search_memories(cello).await.unwrap();
    assert!(hits[0].vector_score > 0.1, "{hits:?}");
    assert!(sb.get_memory(&m.id).await.unwrap().vector_available);
    let off = AddMemory {
        embed: Some(false),
        ..AddMemory::new(&s.id, "Not to be embedded")
    };
    let off = sb.add_memory(off).await.unwrap();
    assert!(!off.vector_available && off.embedding_model.is_none());
    assert_eq!(sb.pending_vectors(), 0, "embed: false is not pending");
    // One batch with two tenants' memories and one deleted meanwhile: each tenant's get
    // their vectors in their own tenant; the deleted one is skipped.
    let other = sb.tenant("other-tenant");
    let theirs = session(&other, None).await;
    let theirs = remember(&other, &theirs.id, "Plays the cello").await;
    let gone = remember(sb, &s.id, "Moved to Porto").await;
    let kept = remember(sb, &s.id, "Learns Portuguese").await;
    sb.delete_memory(&gone.id).await.unwrap();
    assert_eq!(sb.pending_vectors(), 3);
    assert_eq!(sb.embed_pending().await.unwrap(), 2);
    assert!(other.get_memory(&theirs.id).await.unwrap().vector_available);
    assert!(sb.get_memory(&kept.id).await.unwrap().vector_available);
    assert_eq!(code(sb.get_memory(&theirs.id).await), "memory_not_found");
    assert_eq!(sb.pending_vectors(), 0);
}

/// Turn and memory changes each write one trace with their resource.
pub async fn turn_and_memory_changes_are_traced<F: StoreFactory>(factory: F) {
    let env = Env::new(factory).await;
    let sb = env.sb();
    let s = session(sb, None).await;
    env.advance(1);
    let t = sb.add_turn(&s.id, AddTurn::text("a", "b")).await.unwrap();
    env.advance(1);
    let m = remember(sb, &s.id, "Note one").await;
    env.advance(1);
    sb.update_memory(
        &m.id,
        UpdateMemory {
            content: Some("Note two".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    env.advance(1);
    sb.delete_memory(&m.id).await.unwrap();
    let traces = sb.list_traces(ListTraces::default()).await.unwrap().data;
    let got: Vec<(&str, &str, &str)> = traces
        .iter()
        .take(4)
        .map(|t| {
            (
                t.action.as_str(),
                t.resource_type.as_str(),
                t.resource_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (action::MEMORY_DELETED, "memory", m.id.as_str()),
            (action::MEMORY_UPDATED, "memory", m.id.as_str()),
            (action::MEMORY_CREATED, "memory", m.id.as_str()),
            (action::TURN_ADDED, "turn", t.id.as_str()),
        ]
    );
    assert!(traces
        .iter()
        .take(4)
        .all(|t| t.session_id.as_deref() == Some(s.id.as_str())));
    assert_eq!(traces[3].details["turn_number"], json!(1));
    assert_eq!(traces[2].details["content_preview"], json!("Note one"));
    assert_eq!(traces[1].details["content_changed"], json!(true));
    let by_alias = sb
        .list_traces(ListTraces {
            action: Some("turn.add".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_alias.data.len(), 1);
}

/// API keys: the secret is `sb_` + 24 characters and authenticates to its tenant until it
/// is revoked or expires; importing a known secret changes nothing; keys survive a reopen.
pub async fn api_keys_authenticate_until_revoked<F: StoreFactory>(factory: F) {
    let mut env = Env::new(factory).await;
    let (a, b, imported) = {
        let sb = env.sb();
        let (a, secret) = sb
            .create_api_key(
                "acme",
                "ci",
                KeyLimits {
                    rate_limit: Some(10),
                    burst: Some(20),
                },
                None,
            )
            .await
            .unwrap();
        assert!(secret.starts_with("sb_") && secret.len() == 27, "{secret}");
        assert!(secret[3..]
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(
            (a.tenant.as_str(), a.rate_limit, a.burst, a.is_active),
            ("acme", Some(10), Some(20), true)
        );
        assert!(!a.key_hash.contains(&secret[3..]));
        assert_eq!(sb.authenticate(&secret).await.unwrap(), Some(a.clone()));
        assert_eq!(
            sb.authenticate("sb_wrongwrongwrongwrongwrong")
                .await
                .unwrap(),
            None
        );
        let expires = super::epoch() + chrono::Duration::seconds(61);
        let (b, b_secret) = sb
            .create_api_key("other", "short", KeyLimits::default(), Some(expires))
            .await
            .unwrap();
        assert_eq!(
            (b.rate_limit, b.burst),
            (None, None),
            "no limit of its own: the server's applies"
        );
        env.advance(1);
        let imported = sb
            .import_api_key(
                "acme",
                "provisioned",
                "sb_provisionedkey0000000001",
                KeyLimits::default(),
                None,
            )
            .await
            .unwrap();
        let again = sb
            .import_api_key(
                "acme",
                "renamed",
                "sb_provisionedkey0000000001",
                KeyLimits::per_minute(5),
                None,
            )
            .await
            .unwrap();
        assert_eq!(again, imported);
        assert_eq!(
            code(
                sb.import_api_key("acme", "x", "short", KeyLimits::default(), None)
                    .await
            ),
            "invalid_request"
        );
        env.advance(60);
        assert_eq!(sb.authenticate(&b_secret).await.unwrap(), None, "expired");
        (a, b, imported)
    };
    env.reopen().await;
    let sb = env.sb();
    let acme: Vec<String> = sb
        .list_api_keys(Some("acme"))
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(acme, vec![a.id.clone(), imported.id.clone()]);
    assert_eq!(sb.list_api_keys(None).await.unwrap().len(), 3);
    assert_eq!(
        code(sb.revoke_api_key(&a.id, Some("other")).await),
        "key_not_found"
    );
    let a_stored = sb.store().api_key_by_hash(&a.key_hash).await.unwrap();
    assert_eq!(a_stored.as_ref(), Some(&a), "its limits survive a reopen");
    let revoked = sb.revoke_api_key(&a.id, Some("acme")).await.unwrap();
    assert!(!revoked.is_active);
    let stored = sb
        .store()
        .api_key_by_hash(&a.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.is_active);
    assert_eq!(sb.store().api_key(&a.id).await.unwrap(), Some(stored));
    assert_eq!(sb.store().api_key("key_unknown").await.unwrap(), None);
    assert_eq!(
        code(sb.revoke_api_key("key_unknown", None).await),
        "key_not_found"
    );
    assert!(sb.list_api_keys(Some("other")).await.unwrap() == vec![b]);
}
