//! The synthetic memory corpus the measuring programs share: sentences of a few common
//! words, deterministic in their index.

const WORDS: &[&str] = &[
    "flight",
    "hotel",
    "refund",
    "invoice",
    "window",
    "seat",
    "meal",
    "vegetarian",
    "lisbon",
    "march",
    "password",
    "reset",
    "account",
    "premium",
    "upgrade",
    "cancel",
    "delivery",
    "address",
    "london",
    "parcel",
    "late",
    "support",
    "email",
    "phone",
    "prefers",
    "dark",
    "mode",
    "editor",
    "budget",
    "quarterly",
    "report",
    "meeting",
    "monday",
    "allergy",
    "peanuts",
    "birthday",
    "july",
    "spanish",
    "answers",
    "cats",
];

/// A deterministic pseudo-random sentence of 6 to 12 words.
pub fn sentence(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 6 + next() % 7;
    (0..n)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}
