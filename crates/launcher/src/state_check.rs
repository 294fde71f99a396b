//! What a run may store as its stack's next managed state. A run's code is hostile: it
//! can replace `gantry.tfstate` with anything. Only Terraform or OpenTofu state of the
//! stack's own lineage, whose serial does not go back and whose size is bounded, becomes
//! the next version; anything else fails the run and the stack keeps the state it had,
//! so that no run can leave its stack unable to run.

use std::io::Read;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// The fields of a state that tie it to its stack's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateIdentity {
    pub(crate) lineage: String,
    pub(crate) serial: u64,
}

/// The longest lineage accepted: Terraform writes a UUID (36 characters).
const MAX_LINEAGE_BYTES: usize = 256;

/// Why a state was refused; each names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StateRefusal {
    #[error("it is not Terraform or OpenTofu state: {0}")]
    NotState(String),
    #[error(
        "its lineage {found:?} is not the stack's lineage {expected:?}: it is another configuration's state, or a forged one"
    )]
    OtherLineage { expected: String, found: String },
    #[error("its serial went back from {previous} to {found}: Terraform only ever increases it")]
    SerialWentBack { previous: u64, found: u64 },
}

#[derive(Deserialize)]
struct StateHeader {
    version: u64,
    serial: u64,
    lineage: String,
    // Read for their shape only: a state whose resources are not a list or whose outputs
    // are not a map would fail the next run's init.
    #[serde(default, rename = "resources")]
    _resources: AnyList,
    #[serde(default, rename = "outputs")]
    _outputs: AnyMap,
}

/// A list (or `null`) whose items are skipped without being kept: only its shape counts.
#[derive(Default)]
struct AnyList;

impl<'de> Deserialize<'de> for AnyList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Zero-sized items: no memory however long the list is.
        Option::<Vec<IgnoredAny>>::deserialize(deserializer).map(|_| Self)
    }
}

/// A map (or `null`) whose entries are skipped without being kept: only its shape counts.
#[derive(Default)]
struct AnyMap;

impl<'de> Deserialize<'de> for AnyMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(Self)
    }
}

impl<'de> serde::de::Visitor<'de> for AnyMap {
    type Value = Self;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a map")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self)
    }
}

/// Reads the identity of a state document; fields other than `version`, `serial` and
/// `lineage` are skipped without being kept, so memory stays bounded whatever the size.
pub(crate) fn identify(input: impl Read) -> Result<StateIdentity, StateRefusal> {
    let header: StateHeader = serde_json::from_reader(std::io::BufReader::new(input))
        .map_err(|error| StateRefusal::NotState(describe(&error)))?;
    // A later version would be stored, and then refused by the next run's `terraform
    // init` ("Unsupported state file format"): the stack could no longer run.
    if !(3..=4).contains(&header.version) {
        return Err(StateRefusal::NotState(format!(
            "its format version is {}, and Terraform 0.12 and later and OpenTofu read 3 and 4 and write 4",
            header.version
        )));
    }
    if header.lineage.is_empty() || header.lineage.len() > MAX_LINEAGE_BYTES {
        return Err(StateRefusal::NotState(
            "its lineage must be a non-empty string of at most 256 bytes".to_owned(),
        ));
    }
    Ok(StateIdentity { lineage: header.lineage, serial: header.serial })
}

/// Whether `next` may follow `previous` (none for a stack without state yet).
pub(crate) fn check_successor(
    previous: Option<&StateIdentity>,
    next: &StateIdentity,
) -> Result<(), StateRefusal> {
    let Some(previous) = previous else { return Ok(()) };
    if previous.lineage != next.lineage {
        return Err(StateRefusal::OtherLineage {
            expected: previous.lineage.clone(),
            found: next.lineage.clone(),
        });
    }
    if next.serial < previous.serial {
        return Err(StateRefusal::SerialWentBack { previous: previous.serial, found: next.serial });
    }
    Ok(())
}

/// A JSON error in words that do not quote the document: a state holds secrets.
fn describe(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let position = format!("line {}, column {}", error.line(), error.column());
    match error.classify() {
        Category::Io => "it could not be read".to_owned(),
        Category::Syntax => format!("it is not JSON (syntax error at {position})"),
        Category::Eof => "it is not JSON (it ends too early)".to_owned(),
        Category::Data => {
            // serde's message quotes the value it found: keep only the field's name or
            // the type it expected.
            let message = error.to_string();
            let message = message.split(" at line").next().unwrap_or(&message);
            if message.starts_with("missing field") {
                format!("{message}, at {position}")
            } else {
                let expected = message.rsplit_once(", expected ").map(|(_, expected)| expected);
                match expected {
                    Some(expected) => format!("a field is not {expected}, at {position}"),
                    None => format!("a field has the wrong type, at {position}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(document: &str, expect: Result<(&str, u64), &str>) {
        let found = identify(document.as_bytes());
        match expect {
            Ok((lineage, serial)) => assert_eq!(
                found,
                Ok(StateIdentity { lineage: lineage.to_owned(), serial }),
                "{document}"
            ),
            Err(expected) => {
                let error = found.unwrap_err().to_string();
                assert!(error.contains(expected), "{document}: {error}");
            }
        }
    }

    #[test]
    fn states_are_known_by_their_lineage_and_serial() {
        check(
            r#"{"version":4,"terraform_version":"1.11.0","serial":3,"lineage":"1d6c","outputs":{},"resources":[{"a":[1,2,{"b":null}]}]}"#,
            Ok(("1d6c", 3)),
        );
        check(r#"{"lineage":"x","serial":0,"version":3}"#, Ok(("x", 0)));
        check("", Err("it ends too early"));
        check("PATH=/usr/bin\0GANTRY_POOL_PRIVATE_KEY=abc", Err("not JSON (syntax error"));
        check("[1,2]", Err("a field is not struct StateHeader"));
        check(r#"{"version":4,"serial":1}"#, Err("missing field `lineage`"));
        check(r#"{"version":4,"lineage":"x","serial":-1}"#, Err("not Terraform or OpenTofu state"));
        check(r#"{"version":2,"lineage":"x","serial":1}"#, Err("format version is 2"));
        check(r#"{"version":5,"lineage":"x","serial":1}"#, Err("format version is 5"));
        check(r#"{"version":4,"lineage":"","serial":1}"#, Err("non-empty string"));
        check(
            r#"{"version":4,"lineage":"x","serial":1,"resources":5}"#,
            Err("a field is not a sequence"),
        );
        check(
            r#"{"version":4,"lineage":"x","serial":1,"outputs":[]}"#,
            Err("a field is not a map"),
        );
        check(
            r#"{"version":4,"lineage":"x","serial":1,"resources":[{"a":1}],"outputs":{"o":{}}}"#,
            Ok(("x", 1)),
        );
        check(
            &format!(r#"{{"version":4,"lineage":"{}","serial":1}}"#, "a".repeat(257)),
            Err("at most 256"),
        );
    }

    #[test]
    fn refusals_never_quote_the_document() {
        let secret = "s3cr3t-value-in-state";
        for document in [
            format!(r#"{{"version":4,"lineage":"x","serial":"{secret}"}}"#),
            format!(r#"{{"version":"{secret}"}}"#),
            secret.to_owned(),
            format!(r#"{{"version":4,"lineage":["{secret}"],"serial":1}}"#),
        ] {
            let error = identify(document.as_bytes()).unwrap_err().to_string();
            assert!(!error.contains(secret), "{error}");
        }
    }

    #[test]
    fn a_successor_keeps_the_lineage_and_never_goes_back() {
        let identity =
            |lineage: &str, serial| StateIdentity { lineage: lineage.to_owned(), serial };
        assert_eq!(check_successor(None, &identity("a", 0)), Ok(()));
        assert_eq!(check_successor(Some(&identity("a", 4)), &identity("a", 4)), Ok(()));
        assert_eq!(check_successor(Some(&identity("a", 4)), &identity("a", 9)), Ok(()));
        assert_eq!(
            check_successor(Some(&identity("a", 4)), &identity("b", 9)).unwrap_err().to_string(),
            "its lineage \"b\" is not the stack's lineage \"a\": it is another configuration's state, or a forged one"
        );
        assert_eq!(
            check_successor(Some(&identity("a", 4)), &identity("a", 3)).unwrap_err().to_string(),
            "its serial went back from 4 to 3: Terraform only ever increases it"
        );
    }

    proptest! {
        /// Whatever a run leaves in the state file, reading it never panics.
        #[test]
        fn any_bytes_are_identified_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = identify(bytes.as_slice());
        }

        #[test]
        fn mutated_states_are_identified_or_refused(
            position in 0usize..80,
            byte in any::<u8>(),
        ) {
            let mut document = br#"{"version":4,"serial":12,"lineage":"0b7e-4f","resources":[]}"#.to_vec();
            let index = position % document.len();
            document[index] = byte;
            let _ = identify(document.as_slice());
        }
    }
}
