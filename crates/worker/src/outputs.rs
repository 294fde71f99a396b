//! Reads what `<tool> output -json` printed into the outputs a run reports. A sensitive
//! output keeps its name only in the report; its value goes nowhere, unless the job
//! asks for it to be handed to the launcher, which seals it to the pool key.

use gantry_proto::api::Output;
use gantry_proto::local::SensitiveOutput;
use serde_json::Value;

/// The outputs sorted by name, and (when `collect_sensitive` is set) the values of the
/// sensitive ones. An entry whose `sensitive` flag is missing or not a boolean counts as
/// sensitive, so an unexpected shape never leaks a value into the report.
pub(crate) fn parse_outputs(
    json: &[u8],
    collect_sensitive: bool,
) -> Result<(Vec<Output>, Vec<SensitiveOutput>), serde_json::Error> {
    let document: serde_json::Map<String, Value> = serde_json::from_slice(json)?;
    let mut sensitive_values = Vec::new();
    // `serde_json::Map` is a BTreeMap (no `preserve_order` feature), but sorting
    // explicitly keeps the order a documented property rather than a feature accident.
    let mut outputs: Vec<Output> = document
        .into_iter()
        .map(|(name, entry)| {
            let sensitive = entry.get("sensitive").and_then(Value::as_bool).unwrap_or(true);
            let value = entry.get("value").cloned();
            if !sensitive {
                return Output { name, value, sensitive };
            }
            if collect_sensitive && let Some(value) = value {
                sensitive_values.push(SensitiveOutput { name: name.clone(), value });
            }
            Output { name, value: None, sensitive }
        })
        .collect();
    outputs.sort_by(|left, right| left.name.cmp(&right.name));
    sensitive_values.sort_by(|left, right| left.name.cmp(&right.name));
    Ok((outputs, sensitive_values))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(json: &str, expect: Value) {
        let (outputs, sensitive) = parse_outputs(json.as_bytes(), false).unwrap();
        assert_eq!(serde_json::to_value(outputs).unwrap(), expect);
        assert!(sensitive.is_empty());
    }

    const MIXED: &str = r#"{
      "zeta": {"sensitive": false, "type": "string", "value": "z"},
      "secret": {"sensitive": true, "type": "string", "value": "hunter2"},
      "alpha": {"sensitive": false, "type": ["object", {"a": "number"}], "value": {"a": 1}}
    }"#;

    #[test]
    fn sensitive_values_are_dropped_and_names_sorted() {
        check(
            MIXED,
            json!([
                {"name": "alpha", "value": {"a": 1}, "sensitive": false},
                {"name": "secret", "value": null, "sensitive": true},
                {"name": "zeta", "value": "z", "sensitive": false},
            ]),
        );
    }

    #[test]
    fn collected_sensitive_values_stay_out_of_the_report() {
        let (outputs, sensitive) = parse_outputs(MIXED.as_bytes(), true).unwrap();
        assert!(!serde_json::to_string(&outputs).unwrap().contains("hunter2"));
        assert_eq!(sensitive.len(), 1);
        assert_eq!(
            (sensitive[0].name.as_str(), &sensitive[0].value),
            ("secret", &json!("hunter2"))
        );
        assert!(!format!("{sensitive:?}").contains("hunter2"), "Debug never prints a value");
    }

    #[test]
    fn no_outputs_and_unexpected_shapes() {
        check("{}", json!([]));
        check(
            r#"{"odd": {"value": "kept back"}}"#,
            json!([{"name": "odd", "value": null, "sensitive": true}]),
        );
    }

    #[test]
    fn a_document_that_is_not_an_object_is_an_error() {
        assert!(parse_outputs(b"[]", false).is_err());
        assert!(parse_outputs(b"", false).is_err());
    }
}
