//! Fuzz tests of the state validator: a run leaves anything in `gantry.tfstate`. Arbitrary
//! bytes, mutations of a real Terraform state and states nested or sized to the extreme
//! are identified or refused, never with a panic or a hang; what is accepted is what the
//! document says (its last word, as JSON reads it), and a refusal never quotes the
//! document, which holds secrets.

use gantry_testkit::fuzz::{self, mutated, within_hang_limit};
use proptest::prelude::*;
use serde_json::Value;

use super::{StateIdentity, identify};

/// A value no refusal may show: it stands for a secret kept in the state.
const SECRET: &str = "s3cr3t-db-p4ssw0rd";

/// State as `terraform apply` writes it, a sensitive output and a resource attribute
/// holding the secret.
fn real_state() -> String {
    serde_json::json!({
        "version": 4,
        "terraform_version": "1.11.0",
        "serial": 7,
        "lineage": "3f1c2a8e-5b1d-4a77-9d0e-1c2b3a4d5e6f",
        "outputs": {"password": {"value": SECRET, "type": "string", "sensitive": true}},
        "resources": [{
            "mode": "managed",
            "type": "terraform_data",
            "name": "db",
            "provider": "provider[\"terraform.io/builtin/terraform\"]",
            "instances": [{
                "schema_version": 0,
                "attributes": {"id": "d7a1", "input": SECRET, "output": [1, 2.5, null, {}]},
                "sensitive_attributes": [],
            }],
        }],
        "check_results": null,
    })
    .to_string()
}

/// Documents that stress the reader rather than the rules: deep nesting in a field that
/// is skipped, a long lineage, keys repeated, numbers at the edges.
fn extreme_state() -> impl Strategy<Value = String> {
    let head = r#""version":4,"serial":1,"lineage":"x""#;
    prop_oneof![
        (1usize..200_000).prop_map(move |depth| {
            format!(r#"{{{head},"resources":{}{}}}"#, "[".repeat(depth), "]".repeat(depth))
        }),
        (1usize..100_000).prop_map(|len| {
            format!(r#"{{"version":4,"serial":1,"lineage":"{}"}}"#, "l".repeat(len))
        }),
        Just(format!(r#"{{{head},"lineage":"y"}}"#)),
        Just(r#"{"version":4,"serial":18446744073709551615,"lineage":"x"}"#.to_owned()),
        Just(r#"{"version":4,"serial":18446744073709551616,"lineage":"x"}"#.to_owned()),
        Just(r#"{"version":4,"serial":1e3,"lineage":"x"}"#.to_owned()),
        Just(format!(r#"{{{head}}}   {{}}"#)),
        Just(format!("\u{feff}{{{head}}}")),
    ]
}

fn document() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        4 => mutated(real_state().into_bytes()),
        1 => extreme_state().prop_map(String::into_bytes),
    ]
}

/// What JSON itself says the document's identity is: `None` when it has no valid one,
/// `Some(None)` when the document nests deeper than a `Value` may. The validator skips
/// what it does not need without that limit, and without checking that the strings there
/// are UTF-8 (which Terraform does not insist on either): so are they read here.
fn as_json_reads_it(document: &[u8]) -> Option<Option<StateIdentity>> {
    let value: Value = match serde_json::from_str(&String::from_utf8_lossy(document)) {
        Ok(value) => value,
        Err(error) if error.to_string().starts_with("recursion limit exceeded") => {
            return Some(None);
        }
        Err(_) => return None,
    };
    Some(Some(StateIdentity {
        lineage: value.get("lineage")?.as_str()?.to_owned(),
        serial: value.get("serial")?.as_u64()?,
    }))
}

proptest! {
    #![proptest_config(fuzz::config(512))]

    #[test]
    fn any_state_is_identified_as_it_reads_or_refused_without_quoting_it(
        document in document(),
    ) {
        within_hang_limit(move || {
            match identify(document.as_slice()) {
                Ok(identity) => {
                    prop_assert!(!identity.lineage.is_empty() && identity.lineage.len() <= 256);
                    // A document with a repeated key is refused (serde's derive), so
                    // whatever is accepted has one lineage and one serial.
                    match as_json_reads_it(&document) {
                        Some(Some(read)) => prop_assert_eq!(identity, read),
                        Some(None) => {}
                        None => prop_assert!(false, "accepted what is not valid JSON state"),
                    }
                }
                Err(refusal) => {
                    let message = refusal.to_string();
                    // Any 8 bytes in a row of the secret would be a quote.
                    for window in SECRET.as_bytes().windows(8) {
                        let window = std::str::from_utf8(window).unwrap();
                        prop_assert!(!message.contains(window), "{} quotes the state", message);
                    }
                }
            }
            Ok::<_, TestCaseError>(())
        })?;
    }
}
