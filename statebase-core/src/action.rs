//! The audit trace actions, as the API spells them (past tense).

/// A session was created.
pub const SESSION_CREATED: &str = "session.created";
/// A session's metadata or TTL changed.
pub const SESSION_UPDATED: &str = "session.updated";
/// A session was deleted by a caller.
pub const SESSION_DELETED: &str = "session.deleted";
/// A session was removed because its TTL ran out.
pub const SESSION_EXPIRED: &str = "session.expired";
/// A session was created as a fork of another.
pub const SESSION_FORKED: &str = "session.forked";
/// A session's state got a new version by replace or merge.
pub const STATE_UPDATED: &str = "state.updated";
/// A session's state got a new version equal to an earlier one.
pub const STATE_ROLLED_BACK: &str = "state.rolled_back";
/// A session's oldest state versions were removed by retention.
pub const STATE_PRUNED: &str = "state.pruned";
/// A session's oldest turns were removed by retention.
pub const TURNS_PRUNED: &str = "turns.pruned";
/// A tenant's oldest traces were removed by retention.
pub const TRACES_PRUNED: &str = "traces.pruned";
/// A retention policy of a tenant or a session was set or removed.
pub const RETENTION_UPDATED: &str = "retention.updated";

/// A turn was logged.
pub const TURN_ADDED: &str = "turn.added";
/// A memory was added.
pub const MEMORY_CREATED: &str = "memory.created";
/// A memory was changed.
pub const MEMORY_UPDATED: &str = "memory.updated";
/// A memory was deleted.
pub const MEMORY_DELETED: &str = "memory.deleted";
/// An entity was created.
pub const ENTITY_CREATED: &str = "entity.created";
/// An entity's attributes got a new version.
pub const ENTITY_UPDATED: &str = "entity.updated";
/// An entity was deleted.
pub const ENTITY_DELETED: &str = "entity.deleted";
/// Everything of a user was erased.
pub const USER_ERASED: &str = "user.erased";

/// The canonical (past tense) spelling of an action name; older clients filter with the
/// present tense (`state.update`, `turn.add`, `state.rollback`).
pub fn canonical(action: &str) -> String {
    match action {
        "session.create" => SESSION_CREATED.into(),
        "session.update" => SESSION_UPDATED.into(),
        "session.delete" => SESSION_DELETED.into(),
        "session.expire" => SESSION_EXPIRED.into(),
        "session.fork" => SESSION_FORKED.into(),
        "state.update" => STATE_UPDATED.into(),
        "state.rollback" | "state.roll_back" => STATE_ROLLED_BACK.into(),
        "turn.add" => TURN_ADDED.into(),
        "memory.create" => MEMORY_CREATED.into(),
        "memory.update" => MEMORY_UPDATED.into(),
        "memory.delete" => MEMORY_DELETED.into(),
        "entity.create" => ENTITY_CREATED.into(),
        "entity.update" => ENTITY_UPDATED.into(),
        "entity.delete" => ENTITY_DELETED.into(),
        "user.erase" => USER_ERASED.into(),
        other => other.into(),
    }
}
