//! Names users give to pools and stacks: short, URL-safe, unambiguous with ids.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not a valid {kind} name: expected 1 to 63 characters from a-z, 0-9, '-' and '_', starting with a letter or digit"
)]
pub struct NameError {
    kind: &'static str,
    value: String,
}

/// Checks a pool or stack name. A 26-character name that is also a ULID is refused so
/// that a name can never be mistaken for an id on the command line.
pub fn validate_name(kind: &'static str, value: &str) -> Result<(), NameError> {
    let refuse = || NameError { kind, value: value.to_owned() };
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let looks_like_id = value.len() == 26 && ulid::Ulid::from_string(value).is_ok();
    if first_ok && rest_ok && value.len() <= 63 && !looks_like_id { Ok(()) } else { Err(refuse()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "prod-eu_1", "0pool"] {
            assert_eq!(validate_name("pool", good), Ok(()), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-a", "A", "a b", "é", long.as_str(), "01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
            assert!(validate_name("pool", bad).is_err(), "{bad}");
        }
    }
}
