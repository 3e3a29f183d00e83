//! Search and context with the built-in model: by meaning, at the default threshold.

use statebase_core::{
    AddMemory, Config, ContextRequest, CreateSession, MemoryStore, SearchMemories, StateBase,
};
use statebase_embed::StaticEmbedder;

async fn statebase() -> (StateBase<MemoryStore>, String) {
    let config = Config {
        embedder: StaticEmbedder::builtin(),
        ..Config::default()
    };
    let sb = StateBase::with_config(MemoryStore::new(), config);
    let s = sb.create_session(CreateSession::new("bot")).await.unwrap();
    for fact in [
        "User prefers email over SMS",
        "Has two cats named Miso and Tofu",
        "Allergic to peanuts",
        "Works as a nurse at the children's hospital",
    ] {
        sb.add_memory(AddMemory::new(&s.id, fact)).await.unwrap();
    }
    (sb, s.id)
}

/// A question sharing no word with its memory finds it first at the SDKs' default
/// threshold (0.7); with `HashEmbedder` (the default of `Config`) the same search finds
/// nothing.
#[tokio::test]
async fn a_paraphrase_is_found_at_the_default_threshold() {
    let (sb, session) = statebase().await;
    let search = |query: &str| SearchMemories {
        session_id: Some(session.clone()),
        ..SearchMemories::new(query)
    };
    for (query, fact) in [
        (
            "Does the client own any pets?",
            "Has two cats named Miso and Tofu",
        ),
        (
            "What is their job?",
            "Works as a nurse at the children's hospital",
        ),
    ] {
        let hits = sb.search_memories(search(query)).await.unwrap();
        assert_eq!(
            hits.first().map(|h| h.content.as_str()),
            Some(fact),
            "{query}: {hits:?}"
        );
        assert!(
            hits[0].score >= 0.7 && hits[0].keyword_score == 0.0,
            "{hits:?}"
        );
        // `vector_score` stays the raw cosine; `score` is its calibrated value.
        assert!(hits[0].vector_score < hits[0].score, "{hits:?}");
    }
    let hash = StateBase::new(MemoryStore::new());
    let s = hash
        .create_session(CreateSession::new("bot"))
        .await
        .unwrap();
    hash.add_memory(AddMemory::new(&s.id, "Has two cats named Miso and Tofu"))
        .await
        .unwrap();
    let hits = hash
        .search_memories(SearchMemories::new("Does the client own any pets?"))
        .await
        .unwrap();
    assert!(hits.is_empty(), "{hits:?}");
}

/// Context warns of drift when what it found is unrelated to the question, not otherwise.
#[tokio::test]
async fn context_warns_of_drift_on_the_calibrated_scale() {
    let (sb, session) = statebase().await;
    let ask = |query: &str| ContextRequest {
        query: Some(query.into()),
        memory_limit: Some(1),
        ..Default::default()
    };
    let near = sb
        .context(&session, ask("How should we contact them?"))
        .await
        .unwrap();
    assert_eq!(near.memories[0].content, "User prefers email over SMS");
    assert!(!near.drift_warning, "{near:?}");
    let off = sb
        .context(&session, ask("quarterly revenue forecast for the board"))
        .await
        .unwrap();
    assert!(off.drift_warning, "{off:?}");
}
