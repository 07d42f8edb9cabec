//! Validation of what callers name and ask for: namespaces, tags and batch sizes.

use crate::error::{IdError, IdResult};

/// The namespace of a segment tag when none is given.
pub const DEFAULT_NAMESPACE: &str = "public";
/// The longest namespace or tag name.
pub const MAX_NAME_LEN: usize = 128;
/// The most IDs one request may ask for.
pub const MAX_COUNT: u64 = 10_000;

/// A namespace or tag: 1 to 128 characters of `A-Z a-z 0-9 _ - . :`.
pub fn check_name(field: &'static str, name: &str) -> IdResult<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(IdError::invalid(
            field,
            format!("{field} {name:?} is {} characters, must be 1 to {MAX_NAME_LEN}", name.len()),
        ));
    }
    if let Some(bad) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(IdError::invalid(
            field,
            format!("{field} {name:?} contains {bad:?}; allowed are letters, digits, '_', '-', '.' and ':'"),
        ));
    }
    Ok(())
}

/// A batch size as a caller wrote it: a whole number from 1 to 10,000.
pub fn check_count(raw: Option<&str>) -> IdResult<usize> {
    let Some(raw) = raw else { return Ok(1) };
    let count: i128 = raw.trim().parse().map_err(|_| {
        IdError::invalid("count", format!("count is {raw:?}, expected a whole number from 1 to {MAX_COUNT}"))
    })?;
    if count < 1 || count > i128::from(MAX_COUNT) {
        return Err(IdError::invalid("count", format!("count is {count}, must be from 1 to {MAX_COUNT}")));
    }
    Ok(count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_one_to_ten_thousand_are_refused_by_value() {
        assert_eq!(check_count(None).unwrap(), 1);
        assert_eq!(check_count(Some("10000")).unwrap(), 10_000);
        for bad in ["0", "-1", "10001", "abc", "1.5", "", "99999999999999999999999999999999999999999"] {
            let err = check_count(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("count is") && err.contains("10000"), "{bad}: {err}");
        }
    }

    #[test]
    fn names_are_checked() {
        check_name("tag", "orders.v2:eu-1_x").unwrap();
        assert!(check_name("tag", "").is_err());
        assert!(check_name("tag", "a/b").unwrap_err().to_string().contains("'/'"));
        assert!(check_name("tag", &"x".repeat(129)).is_err());
    }
}
