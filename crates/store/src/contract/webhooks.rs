//! The webhooks' contract: one webhook per provider and repository, a delivery log that
//! keeps a delivery's first record and forgets old ones, and at most one run of a stack
//! per delivery.

use std::sync::Arc;

use gantry_domain::{RunId, RunState};

use super::{at, run_record, stack_record, world};
use crate::{DELIVERY_RETENTION, DeliveryRecord, Store, StoreError, WebhookRecord};

fn webhook(id: &str, provider: &str, key: &str) -> WebhookRecord {
    WebhookRecord {
        id: id.to_owned(),
        provider: provider.to_owned(),
        repository: format!("https://{key}.git"),
        repository_key: key.to_owned(),
        created_by: "admin".to_owned(),
        created_at: at(1),
    }
}

fn delivery(digest: &str, received_at: i64, outcome: &str) -> DeliveryRecord {
    DeliveryRecord {
        provider: "github".to_owned(),
        digest: digest.to_owned(),
        delivery_id: format!("id-of-{digest}"),
        received_at: at(received_at),
        event: "push".to_owned(),
        repository: "https://github.com/acme/infra.git".to_owned(),
        status: 202,
        outcome: outcome.to_owned(),
        runs: vec![RunId::from_u128(7), RunId::from_u128(8)],
    }
}

pub async fn webhooks_are_one_per_provider_and_repository<S: Store>(store: Arc<S>) {
    let first = webhook("01JD0000000000000000000001", "github", "github.com/acme/infra");
    store.insert_webhook(&first).await.unwrap();
    let again = webhook("01JD0000000000000000000002", "github", "github.com/acme/infra");
    let refused = store.insert_webhook(&again).await.unwrap_err();
    assert!(matches!(refused, StoreError::AlreadyExists { kind: "webhook", .. }), "{refused}");
    // Another provider for the same repository is another webhook.
    let gitea = webhook("01JD0000000000000000000003", "gitea", "github.com/acme/infra");
    store.insert_webhook(&gitea).await.unwrap();
    assert_eq!(store.list_webhooks().await.unwrap(), vec![first.clone(), gitea.clone()]);
    assert!(store.delete_webhook(&first.id).await.unwrap());
    assert!(!store.delete_webhook(&first.id).await.unwrap());
    assert_eq!(store.list_webhooks().await.unwrap(), vec![gitea]);
}

pub async fn a_delivery_keeps_its_first_record_and_old_ones_are_forgotten<S: Store>(store: Arc<S>) {
    let first = delivery("d-1", 1_000, "triggered 2 runs");
    assert!(store.record_delivery(&first).await.unwrap());
    assert!(!store.record_delivery(&delivery("d-1", 2_000, "again")).await.unwrap());
    assert_eq!(store.get_delivery("github", "d-1").await.unwrap(), Some(first.clone()));
    assert_eq!(store.get_delivery("gitlab", "d-1").await.unwrap(), None);
    let second = DeliveryRecord { runs: vec![], ..delivery("d-2", 3_000, "ignored: a tag push") };
    store.record_delivery(&second).await.unwrap();
    assert_eq!(store.list_deliveries(10).await.unwrap(), vec![second.clone(), first.clone()]);
    assert_eq!(store.list_deliveries(1).await.unwrap(), vec![second.clone()]);
    let retention = i64::try_from(DELIVERY_RETENTION.as_millis()).unwrap();
    let later = delivery("d-3", 1_000 + retention + 1, "later");
    store.record_delivery(&later).await.unwrap();
    assert_eq!(store.list_deliveries(10).await.unwrap(), vec![later, second]);
}

pub async fn a_delivery_triggers_one_run_per_stack<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    let triggered = |stack, created| {
        let mut run = run_record(stack, RunState::Queued, created);
        run.triggered_by = "webhook:github:d-1".to_owned();
        run
    };
    store.insert_run(&triggered(&stack, 1)).await.unwrap();
    let again = store.insert_run(&triggered(&stack, 2)).await.unwrap_err();
    assert!(
        matches!(&again, StoreError::AlreadyExists { kind: "run", name } if name == "webhook:github:d-1"),
        "{again}"
    );
    store.insert_run(&triggered(&other, 3)).await.unwrap();
}
