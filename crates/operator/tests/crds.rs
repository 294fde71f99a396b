//! The committed CRD YAML is what the Rust types generate, it fits a client-side
//! `kubectl apply`, and its validation rules hold what they promise.

use gantry_operator::crd::{WorkerPoolSpec, definitions_yaml};

const COMMITTED: &str = include_str!("../../../deploy/crds/workers.gantry.dev.yaml");

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = definitions_yaml();
    assert!(
        COMMITTED == generated,
        "deploy/crds/workers.gantry.dev.yaml is out of date: run \
         `cargo run -p gantry-operator --bin gantry-crdgen deploy/crds/workers.gantry.dev.yaml deploy/helm/gantry-operator/files/workers.gantry.dev.yaml`"
    );
}

#[test]
fn crds_fit_the_client_side_apply_annotation() {
    // kubectl's last-applied annotation holds at most 256 KiB per object.
    for document in definitions_yaml().split("\n---\n") {
        let json =
            serde_json::to_vec(&yaml_serde::from_str::<serde_json::Value>(document).unwrap())
                .unwrap();
        assert!(json.len() < 200 * 1024, "a CRD is {} bytes as JSON", json.len());
    }
}

#[test]
fn crds_have_the_scale_subresource_and_columns() {
    let yaml = definitions_yaml();
    for expected in [
        "specReplicasPath: .spec.poolSize",
        "statusReplicasPath: .status.actualPoolSize",
        "name: Desired",
        "name: Actual",
        "name: Registered",
        "name: Run ID",
        "group: workers.gantry.dev",
        "name: v1beta1",
    ] {
        assert!(yaml.contains(expected), "the CRDs lack `{expected}`");
    }
}

fn spec(value: serde_json::Value) -> Result<(), String> {
    WorkerPoolSpec::validate_cel(&value, None).map_err(|errors| errors.to_string())
}

fn secret(name: &str, key: &str) -> serde_json::Value {
    serde_json::json!({ "name": name, "key": key })
}

#[test]
fn token_and_private_key_come_together_or_not_at_all() {
    assert_eq!(
        spec(serde_json::json!({
            "poolSize": 2,
            "token": secret("pool", "token"),
            "privateKey": secret("pool", "key"),
        })),
        Ok(())
    );
    let only_token = spec(serde_json::json!({ "poolSize": 2, "token": secret("pool", "token") }))
        .expect_err("a token without a private key is refused");
    assert!(only_token.contains("token and privateKey are given together"), "{only_token}");
    let only_key = spec(serde_json::json!({ "poolSize": 2, "privateKey": secret("pool", "key") }))
        .expect_err("a private key without a token is refused");
    assert!(only_key.contains("token and privateKey are given together"), "{only_key}");
}

#[test]
fn without_credentials_the_pool_needs_registration() {
    let neither = spec(serde_json::json!({ "poolSize": 1 })).expect_err("no way to join a pool");
    assert!(neither.contains("registration"), "{neither}");
    assert_eq!(
        spec(serde_json::json!({
            "poolSize": 1,
            "registration": { "endpoint": "https://gantry.example.com", "apiKey": secret("admin", "key") },
        })),
        Ok(())
    );
}
