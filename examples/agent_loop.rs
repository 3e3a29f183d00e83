//! An agent loop: each turn asks for context, "answers", logs the turn with the state it
//! moved to, and stores what it learned as a memory.
//!
//! Run with `cargo run -p statebase-examples --bin agent_loop`.

use serde_json::json;
use statebase_core::{
    AddMemory, AddTurn, ContextRequest, CreateSession, MemoryStore, SearchMemories, StateBase,
};

#[tokio::main]
async fn main() -> Result<(), statebase_core::Error> {
    let sb = StateBase::new(MemoryStore::new());
    let session = sb
        .create_session(CreateSession {
            user_id: Some("user_42".into()),
            initial_state: Some(json!({"stage": "greeting"})),
            ..CreateSession::new("travel-assistant")
        })
        .await?;

    // Something known about the user before this conversation: a user-level memory.
    sb.add_memory(AddMemory {
        session_id: None,
        user_id: Some("user_42".into()),
        memory_type: Some("preference".into()),
        ..AddMemory::new("", "Prefers window seats and vegetarian meals")
    })
    .await?;

    let conversation = [
        (
            "I need a flight to Lisbon in March",
            "planning",
            "Wants to fly to Lisbon in March",
        ),
        (
            "Make it a window seat please",
            "booking",
            "Asked again for a window seat",
        ),
        ("What meal did I ask for?", "booking", ""),
    ];
    for (message, stage, learned) in conversation {
        // 1. Everything the next prompt needs, in one call.
        let ctx = sb
            .context(
                &session.id,
                ContextRequest {
                    query: Some(message.into()),
                    ..Default::default()
                },
            )
            .await?;
        println!("\nuser: {message}");
        println!(
            "  state v{} {} | {} memories (relevance {:.2}{}) | {} earlier turns",
            ctx.session.version,
            json!(ctx.session.state),
            ctx.memories.len(),
            ctx.average_relevance,
            if ctx.drift_warning { ", drifting" } else { "" },
            ctx.recent_turns.len()
        );
        for m in &ctx.memories {
            println!("    {:.2} {}", m.score, m.content);
        }

        // 2. The model would answer here.
        let answer = format!("(answer using {} memories)", ctx.memories.len());

        // 3. Log the turn; its new state becomes a version in the same step.
        let turn = sb
            .add_turn(
                &session.id,
                AddTurn {
                    state_after: Some(json!({"stage": stage, "destination": "Lisbon"})),
                    reasoning: Some(format!("moved to {stage}")),
                    ..AddTurn::text(message, &answer)
                },
            )
            .await?;
        println!(
            "  turn {} -> state v{:?}",
            turn.turn_number, turn.state_version
        );

        // 4. Keep what was learned.
        if !learned.is_empty() {
            sb.add_memory(AddMemory::new(&session.id, learned)).await?;
        }
    }

    let hits = sb
        .search_memories(SearchMemories {
            threshold: Some(0.2),
            ..SearchMemories::new("window seat")
        })
        .await?;
    println!("\nsearch 'window seat':");
    for h in hits {
        println!("  {:.2} {}", h.score, h.content);
    }
    Ok(())
}
