//! The store contract on SQLite, plus what only a file-backed engine can show.

use gantry_store::{SqliteStore, Store};

async fn fresh() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gantry.db")).await.unwrap();
    (store, dir)
}

gantry_store::store_contract_tests!(fresh());

#[tokio::test]
async fn state_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.db");
    let first = SqliteStore::open(&path).await.unwrap();
    let value = first
        .secret_or_insert("ca", b"kept", gantry_domain::Timestamp::from_unix_millis(1))
        .await
        .unwrap();
    drop(first);
    let second = SqliteStore::open(&path).await.unwrap();
    let again = second
        .secret_or_insert("ca", b"new", gantry_domain::Timestamp::from_unix_millis(2))
        .await
        .unwrap();
    assert_eq!(value, again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_waits_for_a_sync_to_disk() {
    let (store, _dir) = fresh().await;
    let store = std::sync::Arc::new(store);
    let before = store.wal_syncs();
    let writes: Vec<_> = (0..100)
        .map(|i| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                let at = gantry_domain::Timestamp::from_unix_millis(i);
                store.secret_or_insert(&format!("secret-{i}"), b"value", at).await
            })
        })
        .collect();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    // How many share one depends on timing (the group commit's own tests show sharing):
    // every write waits for a sync, and none costs more than one.
    let syncs = store.wal_syncs() - before;
    assert!((1..=100).contains(&syncs), "100 writes made {syncs} syncs");
}

#[tokio::test]
async fn a_pass_commits_without_waiting_for_a_sync_and_the_next_write_syncs_it() {
    let (store, _dir) = fresh().await;
    let (promotions, assignments) = gantry_store::contract::a_pass_to_commit(&store).await;
    let at = gantry_domain::Timestamp::from_unix_millis(50);
    let before = store.wal_syncs();
    let committed = store.commit_pass(&promotions, &assignments, at).await.unwrap();
    assert_eq!(committed.assigned, [true]);
    assert_eq!(store.wal_syncs(), before, "a pass does not wait for the disk");
    // A durable write waits for a sync that starts after it, which covers the pass too.
    store.secret_or_insert("after-the-pass", b"value", at).await.unwrap();
    assert_eq!(store.wal_syncs(), before + 1);
}

#[tokio::test]
async fn an_unwritable_location_is_a_clear_error() {
    let error = SqliteStore::open(std::path::Path::new("/proc/gantry/nope.db")).await.unwrap_err();
    assert!(error.to_string().starts_with("the database is unavailable"), "{error}");
}
