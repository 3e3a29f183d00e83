//! The one error type of the library, with stable codes the HTTP layer reuses.

use std::fmt;

/// What kind of record a [`Error::NotFound`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A session (missing, expired, deleted, or another tenant's).
    Session,
    /// A state version of a session.
    Version,
    /// An audit trace.
    Trace,
    /// A conversation turn.
    Turn,
    /// A memory.
    Memory,
    /// An entity.
    Entity,
    /// An API key.
    ApiKey,
    /// A webhook endpoint.
    Webhook,
    /// A webhook event (of one endpoint's deliveries).
    Event,
    /// A retention policy of a tenant or a session.
    RetentionPolicy,
}

impl ResourceKind {
    /// The stable error code for a missing record of this kind.
    pub fn not_found_code(self) -> &'static str {
        match self {
            ResourceKind::Session => "session_not_found",
            ResourceKind::Version => "version_not_found",
            ResourceKind::Trace => "trace_not_found",
            ResourceKind::Turn => "turn_not_found",
            ResourceKind::Memory => "memory_not_found",
            ResourceKind::Entity => "entity_not_found",
            ResourceKind::ApiKey => "key_not_found",
            ResourceKind::Webhook => "webhook_not_found",
            ResourceKind::Event => "event_not_found",
            ResourceKind::RetentionPolicy => "retention_policy_not_found",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Session => "session",
            ResourceKind::Version => "version",
            ResourceKind::Trace => "trace",
            ResourceKind::Turn => "turn",
            ResourceKind::Memory => "memory",
            ResourceKind::Entity => "entity",
            ResourceKind::ApiKey => "API key",
            ResourceKind::Webhook => "webhook",
            ResourceKind::Event => "event",
            ResourceKind::RetentionPolicy => "retention policy",
        })
    }
}

/// Errors returned by every statebase call.
///
/// Each variant has a stable [`code`](Error::code); messages are for people and may change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: a missing field, a value out of range, a bad type.
    #[error("invalid {param}: {message}")]
    InvalidInput {
        /// The request field at fault, e.g. `agent_id` or `initial_state`.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The record does not exist for this tenant (or has expired).
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked for.
        kind: ResourceKind,
        /// The id (for versions, `<session id>@<version>`).
        id: String,
    },
    /// An optimistic-concurrency expectation was stale; nothing was written.
    #[error("version conflict: expected version {expected}, current version is {actual}")]
    Conflict {
        /// The version the caller expected to be current.
        expected: u64,
        /// The version that is current.
        actual: u64,
    },
    /// A document is larger than the configured limit; nothing was written.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Which document, e.g. `state`.
        what: &'static str,
        /// Its encoded size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A memory's content is longer than the limit; nothing was written.
    #[error("content is {size} characters, over the limit of {limit}")]
    ContentTooLarge {
        /// Its length in characters.
        size: usize,
        /// The limit in characters.
        limit: usize,
    },
    /// An update would give a memory the content another memory of its scope already has;
    /// nothing was written.
    #[error("memory {other} already has this content")]
    DuplicateContent {
        /// The memory that has it.
        other: String,
    },
    /// An entity was created with the type and application id another entity of its
    /// session already has; nothing was written.
    #[error("entity {other} already has this entity_type and entity_id in this session")]
    DuplicateEntity {
        /// The entity that has them.
        other: String,
    },
    /// A state version that retention removed (see
    /// [`StateBase::prune_session`](crate::StateBase::prune_session) or a policy).
    #[error(
        "version {version} of session {session_id} was pruned by retention; versions from {kept_from} are kept"
    )]
    Pruned {
        /// The session.
        session_id: String,
        /// The version asked for.
        version: u64,
        /// The session's oldest kept version.
        kept_from: u64,
    },
    /// A memory of a session was given another `user_id` than the session's; nothing was
    /// written.
    #[error("user_id differs from the session's user_id")]
    UserMismatch,
    /// The store cannot be reached now (its server is down or restarting, every connection
    /// is busy, a statement ran out of time): retrying later may succeed. A write that
    /// failed so may or may not have been applied. The message is internal.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The storage backend failed. The message is internal and must not reach API clients.
    #[error("storage backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_request",
            Error::NotFound { kind, .. } => kind.not_found_code(),
            Error::Pruned { .. } => "version_not_found",
            Error::Conflict { .. } => "version_conflict",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::ContentTooLarge { .. } => "content_too_large",
            Error::DuplicateContent { .. } => "duplicate_content",
            Error::DuplicateEntity { .. } => "duplicate_entity",
            Error::UserMismatch => "user_id_mismatch",
            Error::Unavailable(_) => "service_unavailable",
            Error::Backend(_) => "internal_error",
        }
    }

    /// Wraps any backend failure.
    pub fn backend(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Backend(err.into())
    }

    /// The store cannot be reached now.
    pub fn unavailable(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Unavailable(err.into())
    }

    /// Bad input in `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            param,
            message: message.into(),
        }
    }

    pub(crate) fn session_not_found(id: &str) -> Self {
        Self::not_found(ResourceKind::Session, id)
    }

    /// No such record.
    pub fn not_found(kind: ResourceKind, id: &str) -> Self {
        Error::NotFound {
            kind,
            id: id.to_owned(),
        }
    }

    pub(crate) fn version_not_found(session_id: &str, version: i64) -> Self {
        Error::NotFound {
            kind: ResourceKind::Version,
            id: format!("{session_id}@{version}"),
        }
    }
}

/// The result type of every statebase call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
