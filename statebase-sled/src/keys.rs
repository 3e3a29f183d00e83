//! The key layout, all in one place.
//!
//! Three trees. Every key starts with one kind byte; strings inside keys are length-prefixed
//! (`u32` big-endian length, then the bytes) so a prefix names exactly one tenant, session
//! or user; numbers are big-endian so byte order is numeric order; timestamps are
//! microseconds with the sign bit flipped, so byte order is time order. The last component
//! of an index key is a raw id, so within a prefix keys sort by `(time, id)` exactly as the
//! core's cursors expect.
//!
//! `records` (point keys, read inside transactions; the id, last, is raw so that a
//! tenant's records sort by id):
//! - `F` → the format version (`u64`)
//! - `S` str(tenant) id → session record (JSON)
//! - `M` str(tenant) id → memory record (`u32` JSON length, JSON, vector as `f32` LE)
//! - `D` str(tenant) dedupe key → memory id
//! - `T` str(tenant) id → trace (JSON)
//! - `U` str(tenant) turn id → `u64`(turn number) session id
//! - `E` str(tenant) id → entity (JSON)
//! - `I` str(tenant) str(session) str(type) entity id → id: an entity by its name
//! - `K` key id → API key (JSON)
//! - `H` key hash → key id
//! - `P` → the last trace feed position given out (`u64`)
//! - `W` endpoint id → webhook endpoint (JSON)
//! - `L` str(endpoint) `u64`(position) → webhook delivery: `u8` done, time(done at) if
//!   done, then its body
//! - `C` → the webhook delivery cursor (`u64`)
//! - `J` key → idempotent response: time(kept at), then its body
//! - `G` key → the idempotent response's tenant and subjects (JSON)
//! - `O` str(tenant) str(subject) key → empty: idempotent responses by subject
//! - `X` str(tenant) id → user id: the tombstone of an erased session or memory
//! - `Y` str(tenant) session id, or nothing for the tenant's own → retention policy (JSON)
//! - `Q` str(space) key → the server's records before format 4 (moved to the above on open)
//!
//! `log` (ordered per owner):
//! - `V` str(tenant) str(session) `u64`(version) → time(created) body
//! - `N` str(tenant) str(session) `u64`(turn number) → turn (JSON)
//! - `R` str(tenant) str(memory) `u64`(version) → revision (JSON)
//! - `A` str(tenant) str(entity) `u64`(version) → entity version (JSON)
//!
//! `index` (empty values; iterate backwards for newest first):
//! - `s` str(tenant) time(created) id — sessions
//! - `a` str(tenant) str(agent) time(created) id — sessions by agent
//! - `u` str(tenant) str(user) time(created) id — sessions by user
//! - `e` time(expires) str(tenant) id — sessions by expiry, across tenants
//! - `m` str(tenant) time(created) id — memories
//! - `n` str(tenant) str(session) time(created) id — memories by session
//! - `o` str(tenant) str(user) time(created) id — memories by user
//! - `y` str(tenant) str(type) time(created) id — memories by type
//! - `g` str(tenant) str(tag) time(created) id — memories by tag
//! - `i` str(tenant) time(created) id — entities
//! - `j` str(tenant) str(session) time(created) id — entities by session
//! - `k` str(tenant) str(type) time(created) id — entities by type
//! - `t` str(tenant) time(timestamp) id — traces
//! - `x` str(tenant) str(session) time(timestamp) id — traces by session
//! - `c` str(tenant) str(action) time(timestamp) id — traces by action
//! - `p` `u64`(position) str(tenant) id — every tenant's traces in commit order

//!
//! A list walks the most selective index its filters allow (agent or user for sessions;
//! session, user, type or a single tag for memories; session or type for entities; session
//! or action for traces) and
//! checks the other filters on each record. Memories filtered by several tags at once walk
//! the tenant's memory index.

use statebase_core::Timestamp;

/// Builds a key component by component.
#[derive(Debug, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key of the given kind.
    pub fn new(kind: u8) -> Self {
        Key(vec![kind])
    }

    /// Appends a length-prefixed string.
    pub fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// Appends a number.
    pub fn num(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Appends a time.
    pub fn time(mut self, t: Timestamp) -> Self {
        self.0.extend_from_slice(&time_bytes(t));
        self
    }

    /// Appends raw bytes: the last component of an index key.
    pub fn raw(mut self, id: &str) -> Self {
        self.0.extend_from_slice(id.as_bytes());
        self
    }

    /// The bytes.
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Microseconds with the sign bit flipped: byte order is time order.
pub fn time_bytes(t: Timestamp) -> [u8; 8] {
    ((t.timestamp_micros() as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`time_bytes`].
pub fn time_from(bytes: &[u8]) -> Option<Timestamp> {
    let raw = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    Timestamp::from_timestamp_micros((raw ^ (1 << 63)) as i64)
}

/// The big-endian `u64` at the end of `key`.
pub fn trailing_num(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[start..].try_into().ok()?))
}

/// The id at the end of an index key whose prefix is `prefix_len` bytes followed by a time.
pub fn index_id(key: &[u8], prefix_len: usize) -> Option<String> {
    String::from_utf8(key.get(prefix_len + 8..)?.to_vec()).ok()
}

/// The time right after an index key's prefix.
pub fn index_time(key: &[u8], prefix_len: usize) -> Option<Timestamp> {
    time_from(key.get(prefix_len..prefix_len + 8)?)
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only for an all-0xFF prefix, which no kind byte is.
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sort_as_bytes_and_round_trip() {
        let ts = |us: i64| Timestamp::from_timestamp_micros(us).unwrap();
        let order = [
            ts(-5_000_000),
            ts(-1),
            ts(0),
            ts(1),
            ts(1_800_000_000_000_000),
        ];
        for pair in order.windows(2) {
            assert!(time_bytes(pair[0]) < time_bytes(pair[1]));
        }
        for t in order {
            assert_eq!(time_from(&time_bytes(t)), Some(t));
        }
    }

    #[test]
    fn prefixes_are_exact() {
        let a = Key::new(b'S').str("ab").done();
        let ab = Key::new(b'S').str("abc").done();
        assert!(!ab.starts_with(&a), "tenant ab must not prefix tenant abc");
        assert!(prefix_end(&a) > Key::new(b'S').str("ab").str("zzzz").done());
        assert_eq!(prefix_end(&[1, 255]), vec![2]);
    }
}
