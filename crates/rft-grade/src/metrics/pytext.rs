//! Python's `str` semantics that the reference metrics rely on (`str.split()`, `str.isspace()`).

/// Python's `str.isspace()` for one character: Unicode White_Space plus the ASCII separators
/// U+001C..U+001F, which Python counts as whitespace and Rust's `char::is_whitespace` does not.
pub(crate) fn is_py_space(c: char) -> bool {
    matches!(c, '\u{1c}'..='\u{1f}') || c.is_whitespace()
}

/// Python's `str.split()` with no arguments: runs of whitespace separate words, no empty words.
pub(crate) fn py_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_py_space).filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_split_matches_python_on_exotic_separators() {
        let words: Vec<&str> = py_split(" a\u{1c}b\u{a0}c\u{85}d\u{3000}e\t\n").collect();
        assert_eq!(words, ["a", "b", "c", "d", "e"]);
        // U+200B (zero width space) is not whitespace in Python.
        assert_eq!(py_split("a\u{200b}b").count(), 1);
    }
}
