//! Helm charts under test: the real `helm` binary (from `scripts/install-helm.sh`, `PATH`
//! or `GANTRY_TEST_HELM`), rendered manifests as YAML values, and the check that a chart's
//! templates and its `values.yaml` agree (every `.Values` reference exists, every value is
//! read). Shared by the server's and the operator's chart tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use yaml_serde::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file's text; panics naming the file.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A YAML file's value; panics naming the file.
pub fn parse_yaml(path: &Path) -> Value {
    yaml_serde::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// The value at a dotted path (`spec.template.spec.containers.0`); panics naming the path.
pub fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |value, segment| {
        let next = match (value, segment.parse::<usize>()) {
            (Value::Sequence(items), Ok(index)) => items.get(index),
            _ => value.get(segment),
        };
        next.unwrap_or_else(|| panic!("no `{path}` (stopped at `{segment}`) in {value:?}"))
    })
}

pub fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| panic!("`{path}` is not a string"))
}

/// The entry of the list at `path` whose `name` is `name` (a port, a volume, a mount).
pub fn named<'a>(value: &'a Value, path: &str, name: &str) -> &'a Value {
    let list = at(value, path).as_sequence().unwrap_or_else(|| panic!("`{path}` is not a list"));
    list.iter()
        .find(|entry| entry.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` in `{path}`"))
}

pub fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|document| text(document, "kind") == kind).collect()
}

/// The one document of `kind`; panics when there are none or several.
pub fn only<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(documents, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// Every `.Values.a.b` path in a template, with its line number. `$.Values` counts too.
fn values_references(template: &str) -> Vec<(usize, Vec<String>)> {
    const MARKER: &str = ".Values.";
    let mut found = Vec::new();
    for (index, line) in template.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find(MARKER) {
            let after = &rest[at + MARKER.len()..];
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(after.len());
            let path = after[..end]
                .split('.')
                .filter(|segment| !segment.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>();
            found.push((index + 1, path));
            rest = &after[end..];
        }
    }
    found
}

/// The paths of every value that is not a mapping with keys (scalars, lists, `{}`).
fn value_leaves(value: &Value, prefix: &mut Vec<String>, leaves: &mut Vec<Vec<String>>) {
    match value {
        Value::Mapping(mapping) if !mapping.is_empty() => {
            for (key, child) in mapping {
                prefix.push(key.as_str().unwrap_or("<non-string key>").to_owned());
                value_leaves(child, prefix, leaves);
                prefix.pop();
            }
        }
        _ => leaves.push(prefix.clone()),
    }
}

/// What is wrong between the templates (name, text) and the values: references to values
/// that do not exist, and values no template reads.
pub fn reference_problems(values: &Value, templates: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut referenced = BTreeSet::new();
    for (name, template) in templates {
        for (line, path) in values_references(template) {
            let mut value = values;
            for (depth, segment) in path.iter().enumerate() {
                match value.as_mapping().and_then(|mapping| mapping.get(segment.as_str())) {
                    Some(child) => value = child,
                    None => {
                        problems.push(format!(
                            "{name}:{line}: .Values.{} is not in values.yaml (no `{segment}` under `{}`)",
                            path.join("."),
                            if depth == 0 { "Values".to_owned() } else { path[..depth].join(".") }
                        ));
                        break;
                    }
                }
            }
            referenced.insert(path);
        }
    }
    let mut leaves = Vec::new();
    value_leaves(values, &mut Vec::new(), &mut leaves);
    for leaf in leaves {
        if !referenced.iter().any(|reference| leaf.starts_with(reference)) {
            problems.push(format!("values.yaml: {} is read by no template", leaf.join(".")));
        }
    }
    problems
}

/// Panics unless every `.Values` path the chart's templates read exists in its
/// `values.yaml` and every value is read; `at_least` templates must read values (a guard
/// against checking the wrong directory).
pub fn check_values_references(chart: &Path, at_least: usize) {
    let values = parse_yaml(&chart.join("values.yaml"));
    let templates = chart_templates(chart);
    let referencing = templates.iter().filter(|(_, text)| text.contains(".Values.")).count();
    assert!(
        referencing >= at_least,
        "only {referencing} templates read values: is this the chart?"
    );
    let problems = reference_problems(&values, &templates);
    assert!(problems.is_empty(), "the chart drifted from its values:\n{}", problems.join("\n"));
}

/// The chart's templates (file name, text), sorted by name.
pub fn chart_templates(chart: &Path) -> Vec<(String, String)> {
    let directory = chart.join("templates");
    let mut templates = std::fs::read_dir(&directory)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", directory.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), read(&path)))
        .collect::<Vec<_>>();
    templates.sort();
    templates
}

fn helm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GANTRY_TEST_HELM") {
        return path.into();
    }
    let installed = workspace().join("target/tools/bin/helm");
    if installed.is_file() {
        return installed;
    }
    if Command::new("helm").arg("version").output().is_ok_and(|o| o.status.success()) {
        return "helm".into();
    }
    panic!(
        "helm is not installed: run scripts/install-helm.sh (scripts/test.sh does), put helm on PATH or set GANTRY_TEST_HELM"
    );
}

/// Runs helm with these arguments, without the user's repositories, plugins or caches.
pub fn helm(args: &[&str]) -> Output {
    Command::new(helm_binary())
        .args(args)
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("gantry-test-helm/config"))
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("gantry-test-helm/cache"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("gantry-test-helm/data"))
        .output()
        .expect("helm runs")
}

/// `helm template gantry <chart> --namespace gantry` with these extra arguments: the
/// manifests, or helm's error.
pub fn render_chart(chart: &Path, args: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart.to_str().expect("a UTF-8 chart path");
    let mut all = vec!["template", "gantry", chart, "--namespace", "gantry"];
    all.extend_from_slice(args);
    let output = helm(&all);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let manifests = String::from_utf8(output.stdout).expect("helm prints UTF-8");
    let mut documents = Vec::new();
    for document in yaml_serde::Deserializer::from_str(&manifests) {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{manifests}"));
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// `helm lint --strict` of the chart with these extra arguments: helm's output on failure.
pub fn lint_chart(chart: &Path, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["lint", "--strict", chart.to_str().expect("a UTF-8 chart path")];
    all.extend_from_slice(args);
    let output = helm(&all);
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_check_reports_a_wrong_reference_and_an_unread_value() {
        let values: Value =
            yaml_serde::from_str("server:\n  publicUrl: ''\n  port: 8443\nunused: 1\n").unwrap();
        let templates = vec![(
            "deployment.yaml".to_owned(),
            "port: {{ .Values.server.port }}\nurl: {{ $.Values.server.publicURL | quote }}\n"
                .to_owned(),
        )];
        assert_eq!(
            reference_problems(&values, &templates),
            [
                "deployment.yaml:2: .Values.server.publicURL is not in values.yaml (no `publicURL` under `server`)",
                "values.yaml: server.publicUrl is read by no template",
                "values.yaml: unused is read by no template",
            ]
        );
    }
}
