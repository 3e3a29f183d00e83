//! Time, injectable so that tests (and TTL cases) are deterministic.

use chrono::{DateTime, Duration, DurationRound, Utc};
use parking_lot::Mutex;
use std::fmt::Debug;

/// A point in time, UTC. Serialised as RFC 3339 (`2026-01-31T04:00:00.123456Z`).
pub type Timestamp = DateTime<Utc>;

/// Where statebase reads the current time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time. Statebase truncates it to whole microseconds, the precision every
    /// backend stores.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }
}

/// A clock that only moves when told to: for tests of TTL expiry and ordering.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        *self.now.lock() = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock()
    }
}

/// Truncates to the microsecond precision every backend keeps, so that a value read back
/// equals the value written.
pub(crate) fn truncate(t: Timestamp) -> Timestamp {
    t.duration_trunc(Duration::microseconds(1)).unwrap_or(t)
}

/// The start of the hour (UTC) that `t` is in: how trace activity is counted.
pub fn hour_start(t: Timestamp) -> Timestamp {
    t.duration_trunc(Duration::hours(1)).unwrap_or(t)
}
