#![doc = include_str!("../../README.md")]
#![forbid(unsafe_code)]

pub mod action;
pub mod archive;
pub mod clock;
mod codec;
mod entities;
mod error;
pub mod id;
pub mod json;
pub mod keys;
mod memories;
mod memory_store;
mod model;
mod retention;
pub mod search;
mod statebase;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod turns;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use error::{Error, ResourceKind, Result};
pub use id::{IdSource, RandomIds};
pub use json::Object;
pub use keys::hash_secret;
pub use memories::{DRIFT_THRESHOLD, EMBED_BATCH, MAX_MEMORY_CHARS, MAX_QUEUED_VECTORS};
pub use memory_store::MemoryStore;
pub use model::*;
pub use retention::MAX_KEEP_DAYS;
pub use search::embed::{Calibration, Embedder, HashEmbedder};
pub use search::vector::{HnswConfig, HnswIndex, VectorIndex};
pub use search::IndexFactory;
pub use statebase::{
    is_blank, Config, Limits, StateBase, DEFAULT_ACTOR, DEFAULT_TENANT, DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
};
pub use store::{
    EntityRecords, MemoryRecords, ObservedStore, ServerRecords, ServerStore, SessionLog, Store,
    StoreObserver, TraceLog,
};
