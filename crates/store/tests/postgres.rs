//! The store contract on PostgreSQL, plus what only a database shared by several server
//! processes can show. Each test gets a fresh database on the cluster the test command
//! started.

use std::sync::Arc;

use gantry_store::{PostgresStore, Store};

async fn fresh() -> Option<(PostgresStore, ())> {
    let url = gantry_test_postgres::fresh_database().await?;
    Some((PostgresStore::connect(&url).await.unwrap(), ()))
}

gantry_store::store_contract_tests!(optional fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once_and_share_state() {
    let Some(url) = gantry_test_postgres::fresh_database().await else { return };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    let mut replicas = Vec::new();
    for start in starts {
        replicas.push(Arc::new(start.await.unwrap().unwrap()));
    }
    let at = gantry_domain::Timestamp::from_unix_millis(1);
    let first = replicas[0].secret_or_insert("ca", b"from replica 0", at).await.unwrap();
    for replica in &replicas[1..] {
        assert_eq!(replica.secret_or_insert("ca", b"other", at).await.unwrap(), first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignment_is_atomic_across_replicas() {
    let Some(url) = gantry_test_postgres::fresh_database().await else { return };
    // Two processes' worth of connection pools on one database: the contract case, with
    // the batches sent through both.
    let one = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let two = Arc::new(PostgresStore::connect(&url).await.unwrap());
    gantry_store::contract::overlapping_batches_through(vec![one, two]).await;
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error_without_the_password() {
    let error = PostgresStore::connect("postgres://gantry:hunter2@127.0.0.1:1/gantry")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error
            .contains("cannot connect to the database at postgres://gantry:***@127.0.0.1:1/gantry"),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
    // The cause, not the pool's "timed out" after its acquire timeout.
    assert!(error.contains("refused"), "{error}");
    assert!(!error.contains("timed out"), "{error}");
    let error = PostgresStore::connect("postgres://gantry:hunter2@db:notaport/gantry")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not a valid postgres:// URL"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[tokio::test]
async fn a_signal_from_one_replica_reaches_another() {
    use futures_util::StreamExt;
    let Some(url) = gantry_test_postgres::fresh_database().await else { return };
    let sender = PostgresStore::connect(&url).await.unwrap();
    let receiver = PostgresStore::connect(&url).await.unwrap();
    let mut signals = receiver.signals().await.unwrap().unwrap();
    sender.publish_signal("run 01J changed").await.unwrap();
    let got =
        tokio::time::timeout(std::time::Duration::from_secs(10), signals.next()).await.unwrap();
    assert_eq!(got, Some(gantry_store::Signal::Message("run 01J changed".to_owned())));
}
