//! Group commit for SQLite in WAL mode. Transactions commit without waiting for the disk
//! (`synchronous=NORMAL`: SQLite writes the WAL but does not sync it), then wait for a
//! sync of the WAL file that started after their commit. One sync covers every commit
//! made before it began, so concurrent writers share its cost, and no write is
//! acknowledged before it is on disk: the durability of `synchronous=FULL` without one
//! `fsync` per transaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, watch};

use crate::StoreError;

#[derive(Debug)]
pub(crate) struct GroupCommit {
    wal: PathBuf,
    database: PathBuf,
    /// Commits that finished: each takes the next number as its ticket.
    committed: AtomicU64,
    /// Every ticket up to this one is on disk.
    synced: watch::Sender<u64>,
    /// Held by the one task syncing now.
    syncing: Mutex<()>,
    syncs: AtomicU64,
}

impl GroupCommit {
    /// For the database file at `database`, whose WAL is `<database>-wal`.
    pub(crate) fn new(database: &Path) -> Self {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            wal: PathBuf::from(wal),
            database: database.to_path_buf(),
            committed: AtomicU64::new(0),
            synced: watch::channel(0).0,
            syncing: Mutex::new(()),
            syncs: AtomicU64::new(0),
        }
    }

    /// Returns once every transaction committed before this call is on disk.
    pub(crate) async fn durable(&self) -> Result<(), StoreError> {
        let ticket = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.subscribe();
        loop {
            if *synced.borrow_and_update() >= ticket {
                return Ok(());
            }
            match self.syncing.try_lock() {
                Ok(guard) => {
                    // Everything committed up to now is in the WAL: this sync covers it.
                    let covered = self.committed.load(Ordering::SeqCst);
                    let outcome = self.sync().await;
                    // Released before telling the waiters, so that one of them can
                    // lead the next sync at once.
                    drop(guard);
                    if outcome.is_ok() {
                        self.syncs.fetch_add(1, Ordering::Relaxed);
                        self.synced.send_modify(|synced| *synced = (*synced).max(covered));
                    } else {
                        // Wake the waiters anyway: each tries a sync of its own.
                        self.synced.send_modify(|_| {});
                    }
                    outcome?;
                }
                Err(_) => {
                    // A sync runs; it may have started before this commit, so look again
                    // when it ends.
                    if synced.changed().await.is_err() {
                        return Err(StoreError::Durability("the WAL sync stopped".to_owned()));
                    }
                }
            }
        }
    }

    /// How many syncs were made.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let wal = self.wal.clone();
        let database = self.database.clone();
        let synced = tokio::task::spawn_blocking(move || match std::fs::File::open(&wal) {
            Ok(file) => file.sync_data(),
            // Without a WAL (only between connections), the database file has it all.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::File::open(&database)?.sync_data()
            }
            Err(error) => Err(error),
        })
        .await
        .map_err(|error| StoreError::Durability(format!("the WAL sync task failed: {error}")))?;
        synced.map_err(|error| {
            StoreError::Durability(format!("cannot sync {}: {error}", self.wal.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commits_made_during_a_sync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("test.db");
        std::fs::write(&database, b"db").unwrap();
        std::fs::write(dir.path().join("test.db-wal"), b"wal").unwrap();
        let group = Arc::new(GroupCommit::new(&database));

        group.durable().await.unwrap();
        assert_eq!(group.syncs(), 1, "a lone commit syncs by itself");

        // A sync is in progress: the 50 commits made meanwhile all wait for the next.
        let in_progress = group.syncing.lock().await;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let group = Arc::clone(&group);
                tokio::spawn(async move { group.durable().await })
            })
            .collect();
        while group.committed.load(Ordering::SeqCst) < 51 {
            tokio::task::yield_now().await;
        }
        drop(in_progress);
        group.synced.send_modify(|_| {});
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // One sync covers all 50; a waiter that looks between the leader releasing the
        // sync and announcing it may make a second.
        assert!((2..=3).contains(&group.syncs()), "{} syncs for 50 commits", group.syncs() - 1);
        assert_eq!(*group.synced.borrow(), 51);
    }

    #[tokio::test]
    async fn without_a_wal_the_database_file_is_synced_and_without_either_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("test.db");
        let group = GroupCommit::new(&database);
        let error = group.durable().await.unwrap_err();
        assert!(error.to_string().contains("test.db-wal"), "{error}");
        std::fs::write(&database, b"db").unwrap();
        group.durable().await.unwrap();
        assert_eq!(group.syncs(), 1);
    }
}
