//! Record ids: a prefix and random lowercase alphanumerics from the operating system's
//! cryptographic source, so ids can't be guessed across tenants.

use std::fmt::Debug;

/// How many random characters follow an id's prefix (`sess_` + 12, as the API documents).
pub const ID_RANDOM_LEN: usize = 12;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Where statebase gets new record ids.
pub trait IdSource: Send + Sync + Debug + 'static {
    /// A new unique id that starts with `prefix` (for example `sess_`).
    fn new_id(&self, prefix: &str) -> String;
}

/// Ids from the operating system's cryptographic random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn new_id(&self, prefix: &str) -> String {
        let mut id = String::with_capacity(prefix.len() + ID_RANDOM_LEN);
        id.push_str(prefix);
        let mut buf = [0u8; 32];
        while id.len() < prefix.len() + ID_RANDOM_LEN {
            getrandom::fill(&mut buf).expect("the operating system's random source failed");
            // Rejection sampling keeps every character equally likely: 252 = 7 * 36.
            for &b in buf.iter().filter(|&&b| b < 252) {
                if id.len() == prefix.len() + ID_RANDOM_LEN {
                    break;
                }
                id.push(ALPHABET[usize::from(b % 36)] as char);
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_twelve_lowercase_alphanumerics() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| RandomIds.new_id("sess_")).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids {
            let rest = id.strip_prefix("sess_").unwrap();
            assert_eq!(rest.len(), ID_RANDOM_LEN);
            assert!(rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        }
    }
}
