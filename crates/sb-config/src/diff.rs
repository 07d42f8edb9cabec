//! Unified diffs between two versions' contents.

use similar::TextDiff;

/// A unified diff (3 lines of context) from `old` to `new`, with the given headers; empty
/// when the contents are equal.
pub fn unified_diff(old: &str, new: &str, old_header: &str, new_header: &str) -> String {
    let diff = TextDiff::from_lines(old, new);
    diff.unified_diff().context_radius(3).header(old_header, new_header).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines() {
        let diff = unified_diff("a\nb\nc\n", "a\nB\nc\n", "v1", "v2");
        assert!(diff.starts_with("--- v1\n+++ v2\n"), "{diff}");
        assert!(diff.contains("-b\n") && diff.contains("+B\n"), "{diff}");
        assert_eq!(unified_diff("same\n", "same\n", "v1", "v2"), "");
    }
}
