//! Quickstart: a session whose state is versioned, rolled back and forked.
//!
//! Run with `cargo run -p statebase-examples --bin quickstart`.

use serde_json::json;
use statebase_core::{
    CreateSession, ForkFrom, HistoryQuery, MemoryStore, RollbackTo, StateBase, StateWrite,
};

#[tokio::main]
async fn main() -> Result<(), statebase_core::Error> {
    let sb = StateBase::new(MemoryStore::new());

    let session = sb
        .create_session(CreateSession {
            user_id: Some("user_123".into()),
            initial_state: Some(json!({"status": "new", "priority": "normal"})),
            ..CreateSession::new("customer-support")
        })
        .await?;
    println!("created {} at version {}", session.id, session.version);

    // Every change is a new version.
    sb.merge_state(
        &session.id,
        StateWrite::new(json!({"status": "in_progress", "step": "gathering_requirements"}))
            .reasoning("user described the problem"),
    )
    .await?;
    sb.merge_state(
        &session.id,
        StateWrite::new(json!({"priority": "urgent"})).reasoning("tool misread the ticket"),
    )
    .await?;

    // What did the last change do?
    let diff = sb.diff(&session.id, -1, 2).await?;
    println!(
        "last change: {}",
        serde_json::to_string(&diff.diff).unwrap_or_default()
    );

    // Undo it: a new version equal to the one before; history is kept.
    let undone = sb
        .rollback(
            &session.id,
            RollbackTo {
                version: -1,
                reason: Some("priority change was wrong".into()),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "rolled back to v{}: now v{} {}",
        undone.restored_from_version,
        undone.session.version,
        json!(undone.session.state)
    );

    // Try a what-if in a fork of version 1; the original is untouched.
    let fork = sb
        .fork(
            &session.id,
            ForkFrom {
                version: Some(1),
                ..Default::default()
            },
        )
        .await?;
    println!("forked {} from {}", fork.id, session.id);

    for v in sb
        .history(&session.id, HistoryQuery::default())
        .await?
        .versions
    {
        println!(
            "v{} {:?} {}",
            v.version,
            v.reasoning.unwrap_or_default(),
            json!(v.state)
        );
    }
    Ok(())
}
