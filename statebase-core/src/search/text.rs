//! The words of a text as search matches them: lowercased, stopwords left out, common
//! English endings cut.

/// Lowercased alphanumeric words of `text`.
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Words that say little about what a text is about, left out of keyword matching.
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from",
    "has", "have", "how", "i", "in", "is", "it", "me", "my", "of", "on", "or", "that", "the",
    "this", "to", "was", "we", "what", "when", "where", "which", "who", "why", "with", "you",
    "your",
];

/// The words of `text` that keyword matching uses: no stopwords, common English endings
/// cut (`meals` and `meal`, `asked` and `ask` match), no repeats, sorted.
pub fn keywords(text: &str) -> Vec<String> {
    let mut k: Vec<String> = words(text)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w).into_owned())
        .collect();
    k.sort_unstable();
    k.dedup();
    k
}

/// A light suffix stripper: enough for plurals and regular verb forms, never below three
/// characters.
fn stem(word: &str) -> std::borrow::Cow<'_, str> {
    let long_enough = |stem: &str| stem.chars().count() >= 3;
    if let Some(stem) = word.strip_suffix("ies").filter(|s| long_enough(s)) {
        return format!("{stem}y").into();
    }
    if let Some(stem) = word.strip_suffix("sses") {
        return format!("{stem}ss").into();
    }
    for suffix in ["ing", "ed", "s"] {
        if let Some(stem) = word.strip_suffix(suffix) {
            if long_enough(stem) && !(suffix == "s" && stem.ends_with(['s', 'u'])) {
                return stem.into();
            }
        }
    }
    word.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_drop_stopwords_and_repeats() {
        assert_eq!(
            keywords("What did I tell you about my Preferences? preference!"),
            vec!["preference", "tell"]
        );
        assert_eq!(
            keywords("meals asked booking class classes stories"),
            vec!["ask", "book", "class", "meal", "story"]
        );
    }
}
