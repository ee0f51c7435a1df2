//! How a value a client sent appears in a message the server sends back, logs or stores:
//! quoted and shortened. A client controls its strings' length; a message quoting one whole
//! would let a megabyte of input become a megabyte of status, history and log.

use std::fmt;

/// Characters of a client's value kept in a message; the rest is cut off with an ellipsis.
pub const QUOTED_CHARS: usize = 64;

/// A client's value, shown as a quoted string of at most [`QUOTED_CHARS`] characters.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTED_CHARS) {
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

/// Shorthand for [`Quoted`].
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted(value)
}

/// `value` itself when it is at most [`QUOTED_CHARS`] characters, else its first ones and an
/// ellipsis: for a client's value kept as data (a rejection's external id).
pub fn shortened(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Cuts `text` to at most `max_bytes` bytes on a character boundary, marking the cut with an
/// ellipsis: for messages assembled from several parts (a status, a stored reason).
pub fn truncate_bytes(mut text: String, max_bytes: usize) -> String {
    const ELLIPSIS: &str = "…";
    if text.len() <= max_bytes {
        return text;
    }
    let mut cut = max_bytes.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(ELLIPSIS);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_quoted_shortened() {
        let long = "é".repeat(1_000_000);
        let shown = quoted(&long).to_string();
        assert_eq!(shown.chars().count(), QUOTED_CHARS + 3, "{shown}");
        assert!(shown.ends_with("\"…"));
        assert_eq!(quoted("a\"b").to_string(), r#""a\"b""#);
        assert_eq!(shortened(&long).chars().count(), QUOTED_CHARS + 1);
        assert_eq!(shortened("short"), "short");
    }

    #[test]
    fn truncation_keeps_whole_characters_within_the_budget() {
        for budget in 0..20 {
            let cut = truncate_bytes("ab€cd€ef€gh€ij€kl".repeat(3), budget.max(3));
            assert!(cut.len() <= budget.max(3), "{budget}: {cut}");
        }
        assert_eq!(truncate_bytes("short".into(), 1024), "short");
    }
}
