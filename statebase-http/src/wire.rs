//! Response shapes: the superset every published client parses (spec §5).

use serde_json::{json, Value};
use statebase_core::{Memory, MemoryHit, Page, Rollback, Session, Trace, Turn};

/// A session: `object`, the documented fields, and its `version`.
pub fn session(s: &Session) -> Value {
    json!({
        "object": "session",
        "id": s.id,
        "agent_id": s.agent_id,
        "user_id": s.user_id,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "metadata": s.metadata,
        "state": s.state,
        "version": s.version,
        "memory_count": s.memory_count,
        "turn_count": s.turn_count,
        "ttl_expires_at": s.ttl_expires_at,
    })
}

/// A state read or write: `data` and `state` both hold the state.
pub fn state(s: &Session) -> Value {
    json!({
        "object": "state",
        "session_id": s.id,
        "version": s.version,
        "state": s.state,
        "data": s.state,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    })
}

/// A rollback: the OpenAPI shape and the state shape the SDKs parse, together.
pub fn rollback(r: &Rollback) -> Value {
    let mut v = state(&r.session);
    v["success"] = json!(true);
    v["new_version"] = json!(r.session.version);
    v["restored_from_version"] = json!(r.restored_from_version);
    v["trace_id"] = json!(r.trace_id);
    v
}

fn preview(io: &statebase_core::Object) -> String {
    let text = match io.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    text.chars().take(100).collect()
}

/// A turn, with the list previews of the OpenAPI list item.
pub fn turn(t: &Turn) -> Value {
    json!({
        "object": "turn",
        "id": t.id,
        "session_id": t.session_id,
        "turn_number": t.turn_number,
        "input": t.input,
        "output": t.output,
        "input_preview": preview(&t.input),
        "output_preview": preview(&t.output),
        "reasoning": t.reasoning,
        "metadata": t.metadata,
        "state_before": t.state_before,
        "state_after": t.state_after,
        "state_version": t.state_version,
        "created_at": t.created_at,
    })
}

/// A memory.
pub fn memory(m: &Memory) -> Value {
    json!({
        "object": "memory",
        "id": m.id,
        "session_id": m.session_id,
        "user_id": m.user_id,
        "content": m.content,
        "type": m.memory_type,
        "memory_type": m.memory_type,
        "tags": m.tags,
        "metadata": m.metadata,
        "version": m.version,
        "embedding_id": m.embedding_model.as_ref().map(|_| format!("vec_{}", &m.id[4..])),
        "embedding_model": m.embedding_model,
        "vector_available": m.embedding_model.is_some(),
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}

/// A search result or a context memory.
pub fn hit(h: &MemoryHit) -> Value {
    json!({
        "object": "memory",
        "id": h.id,
        "session_id": h.session_id,
        "user_id": h.user_id,
        "content": h.content,
        "type": h.memory_type,
        "tags": h.tags,
        "metadata": h.metadata,
        "score": h.score,
        "vector_score": h.vector_score,
        "keyword_score": h.keyword_score,
        "created_at": h.created_at,
    })
}

/// A trace: the OpenAPI fields and the documented ones.
pub fn trace(t: &Trace) -> Value {
    json!({
        "object": "trace",
        "id": t.id,
        "session_id": t.session_id,
        "action": t.action,
        "resource_type": t.resource_type,
        "resource_id": t.resource_id,
        "actor": t.actor,
        "actor_id": t.actor,
        "timestamp": t.timestamp,
        "created_at": t.timestamp,
        "details": t.details,
        "metadata": {},
        "context": null,
        "ip_address": null,
    })
}

/// A list page: `object`, `data`, `has_more`, `first_id`, `last_id`.
pub fn page<T>(p: &Page<T>, item: impl Fn(&T) -> Value) -> Value {
    json!({
        "object": "list",
        "data": p.data.iter().map(item).collect::<Vec<_>>(),
        "has_more": p.has_more,
        "first_id": p.first_id,
        "last_id": p.last_id,
    })
}
