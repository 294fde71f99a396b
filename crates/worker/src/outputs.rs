//! Reads what `<tool> output -json` printed into the outputs a run reports. A sensitive
//! output keeps its name only: its value is dropped here and goes nowhere.

use gantry_proto::api::Output;
use serde_json::Value;

/// The outputs sorted by name. An entry whose `sensitive` flag is missing or not a
/// boolean counts as sensitive, so an unexpected shape never leaks a value.
pub(crate) fn parse_outputs(json: &[u8]) -> Result<Vec<Output>, serde_json::Error> {
    let document: serde_json::Map<String, Value> = serde_json::from_slice(json)?;
    // `serde_json::Map` is a BTreeMap (no `preserve_order` feature), but sorting
    // explicitly keeps the order a documented property rather than a feature accident.
    let mut outputs: Vec<Output> = document
        .into_iter()
        .map(|(name, entry)| {
            let sensitive = entry.get("sensitive").and_then(Value::as_bool).unwrap_or(true);
            let value = if sensitive { None } else { entry.get("value").cloned() };
            Output { name, value, sensitive }
        })
        .collect();
    outputs.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(json: &str, expect: Value) {
        let outputs = parse_outputs(json.as_bytes()).unwrap();
        assert_eq!(serde_json::to_value(outputs).unwrap(), expect);
    }

    #[test]
    fn sensitive_values_are_dropped_and_names_sorted() {
        check(
            r#"{
              "zeta": {"sensitive": false, "type": "string", "value": "z"},
              "secret": {"sensitive": true, "type": "string", "value": "hunter2"},
              "alpha": {"sensitive": false, "type": ["object", {"a": "number"}], "value": {"a": 1}}
            }"#,
            json!([
                {"name": "alpha", "value": {"a": 1}, "sensitive": false},
                {"name": "secret", "value": null, "sensitive": true},
                {"name": "zeta", "value": "z", "sensitive": false},
            ]),
        );
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
        assert!(parse_outputs(b"[]").is_err());
        assert!(parse_outputs(b"").is_err());
    }
}
