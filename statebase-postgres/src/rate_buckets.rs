//! Rate limits shared by every server: GCRA buckets in the database.
//!
//! A bucket is its "theoretical arrival time" `tat`; a token advances it by one interval,
//! and is there while `tat` stays within `burst` intervals of now. Every bucket row is one
//! lock that all of a key's requests need, so the requests of one key that wait on each
//! other in this process take their tokens together: one round trip for all of them, each
//! still given a token of the shared bucket (or refused) before it runs.

use crate::query::{self, Res};
use crate::{PostgresError, PostgresStore};
use parking_lot::Mutex;
use statebase_core::store::{BucketState, RateBucket};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens taken at most in one round trip.
const MOST_AT_ONCE: u32 = 64;
/// How long a token taken for a request that then went away may serve another.
const KEPT_FOR: Duration = Duration::from_secs(1);
/// Bucket sets followed at most; past it the idle ones are forgotten.
const CAPACITY: usize = 10_000;

/// This process's requests for tokens, by the buckets (names and rates) they take from.
#[derive(Default)]
pub struct TokenQueues {
    queues: Mutex<HashMap<Vec<BucketId>, Arc<Queue>>>,
}

/// A bucket's name and rate: requests of other rates do not share a round trip.
type BucketId = (String, u32, u32);

#[derive(Default)]
struct Queue {
    /// Requests waiting for `taken`: how many tokens the next round trip asks for.
    waiting: AtomicU32,
    taken: tokio::sync::Mutex<Taken>,
}

/// A request counted among those waiting for a queue's tokens until dropped, also when
/// it goes away while it waits (a client gone, a timeout).
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the last round trip took: tokens not yet given to a request, or a refusal that
/// stands until a refusing bucket has a token again; with the buckets' states then.
#[derive(Default)]
struct Taken {
    left: u32,
    at: Option<Instant>,
    states: Vec<BucketState>,
}

impl Taken {
    /// A token left, or the refusal, if either still holds: the buckets' states now.
    fn give(&mut self) -> Option<Vec<BucketState>> {
        let elapsed = self.at?.elapsed();
        let refused_for = self.states.iter().filter_map(|s| s.retry_after).max();
        match refused_for {
            Some(wait) if elapsed >= wait => return None,
            Some(_) => {}
            None if self.left == 0 || elapsed >= KEPT_FOR => return None,
            None => self.left -= 1,
        }
        // The tokens still left here are the key's too.
        let states = self.states.iter().map(|s| BucketState {
            remaining: s.remaining.saturating_add(self.left),
            reset_in: s.reset_in.saturating_sub(elapsed),
            retry_after: s.retry_after.map(|wait| wait.saturating_sub(elapsed)),
        });
        Some(states.collect())
    }
}

impl TokenQueues {
    fn queue(&self, buckets: &[RateBucket]) -> Arc<Queue> {
        let id = buckets
            .iter()
            .map(|b| (b.name.clone(), b.per_minute, b.burst));
        let id = id.collect();
        let mut queues = self.queues.lock();
        if queues.len() >= CAPACITY {
            queues.retain(|_, q| Arc::strong_count(q) > 1);
        }
        queues.entry(id).or_default().clone()
    }
}

fn interval(b: &RateBucket) -> f64 {
    60.0 / f64::from(b.per_minute.max(1))
}

/// How far ahead of now a bucket's `tat` may be with a token still there.
fn room(b: &RateBucket) -> f64 {
    f64::from(b.burst.max(1)) * interval(b)
}

/// A bucket's state when its `tat` is `ahead` seconds ahead of now; `refused` if the
/// request was.
fn state(b: &RateBucket, ahead: f64, refused: bool) -> BucketState {
    let (step, left) = (interval(b), room(b) - ahead);
    BucketState {
        remaining: (left / step + 1e-6).floor().max(0.0) as u32,
        reset_in: Duration::from_secs_f64(ahead.max(0.0)),
        // Refused, the bucket the database found short says how long: no slack here.
        retry_after: (refused && left < step)
            .then(|| Duration::from_secs_f64((step - left).max(0.0))),
    }
}

impl PostgresStore {
    /// Takes a token from each of `buckets` or from none (see `ServerRecords::take_tokens`).
    pub(crate) async fn take_tokens_shared(&self, buckets: &[RateBucket]) -> Res<Vec<BucketState>> {
        let queue = self.token_queues.queue(buckets);
        let waiting = Waiting::new(&queue.waiting);
        let mut taken = queue.taken.lock().await;
        // This request and those still waiting behind it.
        let wanted = queue.waiting.load(Ordering::SeqCst);
        drop(waiting);
        if let Some(states) = taken.give() {
            return Ok(states);
        }
        let (ahead, count) = self.take_from_buckets(buckets, wanted).await?;
        let refused = count == 0;
        *taken = Taken {
            left: count,
            at: Some(Instant::now()),
            states: buckets
                .iter()
                .zip(ahead)
                .map(|(b, a)| state(b, a, refused))
                .collect(),
        };
        Ok(taken.give().unwrap_or_else(|| taken.states.clone()))
    }

    /// Takes up to `wanted` tokens from each bucket, as many from each: how many, and how
    /// far each bucket's `tat` is ahead of now after.
    async fn take_from_buckets(&self, buckets: &[RateBucket], wanted: u32) -> Res<(Vec<f64>, u32)> {
        let names: Vec<&str> = buckets.iter().map(|b| b.name.as_str()).collect();
        let steps: Vec<f64> = buckets.iter().map(interval).collect();
        let rooms: Vec<f64> = buckets.iter().map(room).collect();
        let wanted = i32::try_from(wanted.clamp(1, MOST_AT_ONCE)).unwrap_or(1);
        let conn = self.conn().await?;
        let found = query::row(
            &conn,
            "SELECT ahead, taken FROM statebase_take_tokens($1, $2, $3, $4)",
            &[&names, &steps, &rooms, &wanted],
        )
        .await?
        .ok_or_else(|| PostgresError::Corrupt("no answer from the rate buckets".into()))?;
        let ahead: Vec<f64> = found.try_get("ahead")?;
        let taken: i32 = found.try_get("taken")?;
        if ahead.len() != buckets.len() {
            return Err(PostgresError::Corrupt("a rate bucket is gone".into()));
        }
        Ok((ahead, u32::try_from(taken).unwrap_or(0)))
    }
}
