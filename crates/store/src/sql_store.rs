//! The `Store` operations written once for both SQL engines: the statements are the same
//! on SQLite and PostgreSQL, apart from the few fragments and steps each adapter supplies
//! (`Tx`, `IDS`, `LOG_CHUNKS`, `LOCK_ROW`, `TEXT_BYTES`, `begin`, `commit`, `durable`, `unsynced`,
//! `flush`, `commit_offered`). A macro rather than
//! generic code: each expansion sees one concrete engine, so no trait bounds spell out
//! which Rust types each engine can bind.

/// Implements `Store` for an adapter with `writer` and `reader` pools and the steps above,
/// plus the engine's own methods given in braces.
macro_rules! sql_store {
    ($store:ty $({ $($engine_methods:tt)* })?) => {
        impl $store {
            /// Sets `drained` on the workers whose `column` (`id` or `pool_id`) is `value`;
            /// returns them as they are now.
            async fn set_drained_where(
                &self,
                column: &'static str,
                value: &str,
                drained: bool,
            ) -> Result<Vec<WorkerRecord>> {
                // `column` is one of two literals, never input.
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE workers SET drained = $2 WHERE {column} = $1 RETURNING {WORKER_COLUMNS}"
                )))
                .bind(value)
                .bind(i64::from(drained))
                .fetch_all(&self.writer)
                .await?;
                self.durable().await?;
                let mut workers: Vec<WorkerRecord> =
                    rows.iter().map(worker_from_row).collect::<Result<_>>()?;
                workers.sort_by_key(|worker| (worker.created_at, worker.id.to_string()));
                Ok(workers)
            }

            /// Counts the `fresh` chunks just stored in the run's sizes and cuts the
            /// tail's oldest chunks while the tail is over its share of `max_bytes`
            /// (`LogSizes`). The newest chunk is never cut.
            async fn keep_log_within(
                tx: &mut Tx,
                run_id: RunId,
                fresh: &[(u64, &str)],
                max_bytes: u64,
            ) -> Result<()> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {LOG_SIZE_COLUMNS} FROM run_log_sizes WHERE run_id = $1"
                )))
                .bind(run_id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
                let mut sizes = row.as_ref().map(LogSizes::from_row).transpose()?.unwrap_or_default();
                for (seq, text) in fresh {
                    sizes.add(*seq, text.len() as u64, max_bytes);
                }
                let newest = fresh.last().map_or(0, |(seq, _)| *seq);
                while sizes.tail_over(max_bytes) {
                    let Some(from) = sizes.tail_start.filter(|&start| start < newest) else { break };
                    // `TEXT_BYTES` is one of two literals, never input.
                    let oldest = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT seq, {bytes} AS bytes FROM run_logs
                         WHERE run_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq LIMIT 256",
                        bytes = Self::TEXT_BYTES
                    )))
                    .bind(run_id.to_string())
                    .bind(signed(from))
                    .bind(signed(newest))
                    .fetch_all(&mut **tx)
                    .await?;
                    if oldest.is_empty() {
                        break;
                    }
                    for chunk in &oldest {
                        if !sizes.tail_over(max_bytes) {
                            break;
                        }
                        sizes.cut(count(chunk, "seq")?, count(chunk, "bytes")?);
                    }
                    let kept_from = sizes.tail_start.unwrap_or(from);
                    sqlx::query("DELETE FROM run_logs WHERE run_id = $1 AND seq >= $2 AND seq < $3")
                        .bind(run_id.to_string())
                        .bind(signed(from))
                        .bind(signed(kept_from))
                        .execute(&mut **tx)
                        .await?;
                }
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO run_log_sizes (run_id, {LOG_SIZE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (run_id) DO UPDATE SET head_bytes = excluded.head_bytes,
                         tail_bytes = excluded.tail_bytes, head_end = excluded.head_end,
                         tail_start = excluded.tail_start, cut_bytes = excluded.cut_bytes,
                         cut_chunks = excluded.cut_chunks"
                )))
                .bind(run_id.to_string())
                .bind(signed(sizes.head_bytes))
                .bind(signed(sizes.tail_bytes))
                .bind(sizes.head_end.map(signed))
                .bind(sizes.tail_start.map(signed))
                .bind(signed(sizes.cut_bytes))
                .bind(signed(sizes.cut_chunks))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Locks the stack's row until `tx` ends, so that the stack's state-version
            /// writes (adding, rolling back, pruning) happen one after the other across
            /// replicas; `NotFound` when there is no such stack.
            async fn lock_stack(
                tx: &mut Tx,
                stack_id: StackId,
            ) -> Result<()> {
                // `LOCK_ROW` is one of two literals, never input.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM stacks WHERE id = $1{lock}",
                    lock = Self::LOCK_ROW
                )))
                .bind(stack_id.to_string())
                .fetch_optional(&mut **tx)
                .await?
                .map(|_| ())
                .ok_or_else(|| StoreError::NotFound { kind: "stack", id: stack_id.to_string() })
            }

            /// Locks the stack (`lock_stack`) and returns the number its next state
            /// version takes.
            async fn next_state_seq(
                tx: &mut Tx,
                stack_id: StackId,
            ) -> Result<u64> {
                Self::lock_stack(tx, stack_id).await?;
                let seq: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM state_versions WHERE stack_id = $1",
                )
                .bind(stack_id.to_string())
                .fetch_one(&mut **tx)
                .await?;
                u64::try_from(seq).map_err(|error| corrupt("seq", error))
            }

            async fn insert_state_version(
                tx: &mut Tx,
                version: &StateVersionRecord,
            ) -> Result<()> {
                // An adoption is recorded in the rollback's columns, told apart by `adoption`.
                let rollback = version.rollback.as_ref().or(version.adoption.as_ref());
                sqlx::query(
                    "INSERT INTO state_versions (stack_id, seq, run_id, blob_key, sha256, size, created_at, rollback_of, rolled_back_by, orphaned, adoption)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(version.stack_id.to_string())
                .bind(i64::try_from(version.seq).unwrap_or(i64::MAX))
                .bind(version.run_id.to_string())
                .bind(&version.blob.key)
                .bind(&version.blob.sha256)
                .bind(version.blob.size as i64)
                .bind(version.blob.created_at.unix_millis())
                .bind(rollback.map(|rollback| i64::try_from(rollback.of_seq).unwrap_or(i64::MAX)))
                .bind(rollback.map(|rollback| rollback.by.as_str()))
                .bind(i64::from(version.orphaned))
                .bind(i64::from(version.adoption.is_some()))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Appends a version that repeats version `of_seq`'s blob and producing run: a
            /// rollback to a version that is not orphaned, or the adoption of one that is.
            async fn restore_state_version(
                &self,
                stack_id: StackId,
                of_seq: u64,
                adopt: bool,
                by: &str,
                at: Timestamp,
            ) -> Result<StateVersionRecord> {
                let mut tx = self.begin().await?;
                // Locks the stack first: a prune that deletes the version waits, or made
                // it missing before this reads it.
                let seq = Self::next_state_seq(&mut tx, stack_id).await?;
                let restored = sqlx::query(select(
                    STATE_VERSION_COLUMNS,
                    "FROM state_versions WHERE stack_id = $1 AND seq = $2 AND orphaned = $3",
                ))
                .bind(stack_id.to_string())
                .bind(i64::try_from(of_seq).unwrap_or(i64::MAX))
                .bind(i64::from(adopt))
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: if adopt { "orphaned state version" } else { "state version" },
                    id: format!("{of_seq} of stack {stack_id}"),
                })?;
                let restored = state_version_from_row(&restored)?;
                let record = StateRollbackRecord { of_seq, by: by.to_owned() };
                let (rollback, adoption) = if adopt { (None, Some(record)) } else { (Some(record), None) };
                let version = StateVersionRecord {
                    stack_id,
                    seq,
                    run_id: restored.run_id,
                    blob: BlobRecord { created_at: at, ..restored.blob },
                    rollback,
                    orphaned: false,
                    adoption,
                };
                Self::insert_state_version(&mut tx, &version).await?;
                self.commit(tx).await?;
                Ok(version)
            }

            /// Runs `set` (an assignment list over the run's columns, with the time as `$2`) on
            /// the run with id `$1`, and returns the run.
            async fn update_run(&self, id: RunId, set: &'static str, at: Timestamp) -> Result<RunRecord> {
                // `set` is one of the literals below, never input.
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE runs SET {set}, updated_at = $2 WHERE id = $1 RETURNING {RUN_COLUMNS}"
                )))
                .bind(id.to_string())
                .bind(at.unix_millis())
                .fetch_optional(&self.writer)
                .await?
                .ok_or_else(|| StoreError::NotFound { kind: "run", id: id.to_string() })?;
                self.durable().await?;
                run_from_row(&row)
            }
        }

        $crate::effects::sql_effects!($store);
        $crate::webhooks::sql_webhooks!($store);
        $crate::schedules::sql_schedules!($store);

        #[async_trait::async_trait]
        impl $crate::Store for $store {
            $($($engine_methods)*)?

            async fn claim_effects(
                &self,
                now: Timestamp,
                lease: std::time::Duration,
                limit: u32,
            ) -> Result<Vec<$crate::PendingEffectRecord>> {
                self.claim_due_effects(now, lease, limit).await
            }

            async fn complete_effect(&self, effect: &$crate::Effect) -> Result<()> {
                self.delete_effect(effect).await
            }

            async fn postpone_effect(
                &self,
                effect: &$crate::Effect,
                due_at: Timestamp,
                error: &str,
            ) -> Result<()> {
                self.postpone_pending_effect(effect, due_at, error).await
            }

            async fn pending_effects(&self) -> Result<Vec<$crate::PendingEffectRecord>> {
                self.read_pending_effects().await
            }

            async fn add_effects(&self, effects: &[$crate::Effect], at: Timestamp) -> Result<()> {
                self.insert_effects(effects, at).await
            }

            async fn insert_webhook(&self, webhook: &$crate::WebhookRecord) -> Result<()> {
                self.write_webhook(webhook).await
            }

            async fn list_webhooks(&self) -> Result<Vec<$crate::WebhookRecord>> {
                self.read_webhooks().await
            }

            async fn delete_webhook(&self, id: &str) -> Result<bool> {
                self.remove_webhook(id).await
            }

            async fn record_delivery(&self, delivery: &$crate::DeliveryRecord) -> Result<bool> {
                self.write_delivery(delivery).await
            }

            async fn get_delivery(
                &self,
                provider: &str,
                digest: &str,
            ) -> Result<Option<$crate::DeliveryRecord>> {
                self.read_delivery(provider, digest).await
            }

            async fn list_deliveries(&self, limit: u32) -> Result<Vec<$crate::DeliveryRecord>> {
                self.read_deliveries(limit).await
            }

            async fn insert_schedule(&self, schedule: &$crate::ScheduleRecord) -> Result<()> {
                self.write_schedule(schedule).await
            }

            async fn list_schedules(
                &self,
                stack_id: Option<StackId>,
            ) -> Result<Vec<$crate::ScheduleRecord>> {
                self.read_schedules(stack_id).await
            }

            async fn due_schedules(
                &self,
                now: Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::ScheduleRecord>> {
                self.read_due_schedules(now, limit).await
            }

            async fn advance_schedule(
                &self,
                id: &str,
                fired_at: Timestamp,
                next_fire_at: Timestamp,
                outcome: &str,
            ) -> Result<bool> {
                self.move_schedule_on(id, fired_at, next_fire_at, outcome).await
            }

            async fn delete_schedule(&self, id: &str) -> Result<bool> {
                self.remove_schedule(id).await
            }

            async fn mark_drifted(&self, drift: &$crate::DriftRecord) -> Result<()> {
                self.write_drift(drift).await
            }

            async fn clear_drift(&self, stack_id: StackId) -> Result<bool> {
                self.remove_drift(stack_id).await
            }

            async fn drifted_stacks(&self) -> Result<Vec<$crate::DriftRecord>> {
                self.read_drift().await
            }

            async fn claim_periodic(
                &self,
                name: &str,
                every: std::time::Duration,
                now: Timestamp,
            ) -> Result<bool> {
                // One statement: the row's lock (PostgreSQL) or the single writer (SQLite)
                // lets exactly one claimant through per interval.
                let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
                let claimed = sqlx::query(
                    "INSERT INTO periodic_work (name, last_run_at) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET last_run_at = excluded.last_run_at
                     WHERE periodic_work.last_run_at <= $2 - $3
                     RETURNING name",
                )
                .bind(name)
                .bind(now.unix_millis())
                .bind(every)
                .fetch_optional(&self.writer)
                .await?;
                if claimed.is_some() {
                    self.durable().await?;
                }
                Ok(claimed.is_some())
            }

            async fn secret_or_insert(
                &self,
                name: &str,
                candidate: &[u8],
                now: Timestamp,
            ) -> Result<Vec<u8>> {
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(candidate)
                .bind(now.unix_millis())
                .execute(&mut *tx)
                .await?;
                let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                self.commit(tx).await?;
                Ok(value)
            }

            async fn list_secrets(&self) -> Result<Vec<(String, Vec<u8>)>> {
                let rows: Vec<(String, Vec<u8>)> =
                    sqlx::query_as("SELECT name, value FROM server_secrets ORDER BY name")
                        .fetch_all(&self.writer)
                        .await?;
                Ok(rows)
            }

            async fn replace_secrets(&self, replacements: &[(&str, &[u8], &[u8])]) -> Result<()> {
                let mut tx = self.begin().await?;
                for (name, expected, new) in replacements {
                    let replaced =
                        sqlx::query("UPDATE server_secrets SET value = $3 WHERE name = $1 AND value = $2")
                            .bind(*name)
                            .bind(*expected)
                            .bind(*new)
                            .execute(&mut *tx)
                            .await?;
                    if replaced.rows_affected() != 1 {
                        // Dropping the transaction rolls back the rows already replaced.
                        return Err(StoreError::SecretChanged { name: (*name).to_owned() });
                    }
                }
                self.commit(tx).await?;
                // The values replaced are clear copies or sealed with a retired key.
                self.erase_freed().await
            }

            async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO api_keys (id, name, secret_hash, role, scope, created_by, created_at, expires_at, last_used_at, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&key.id)
                .bind(&key.name)
                .bind(&key.secret_hash)
                .bind(key.role.as_str())
                .bind(to_json(&key.scope.written()))
                .bind(&key.created_by)
                .bind(key.created_at.unix_millis())
                .bind(key.expires_at.map(Timestamp::unix_millis))
                .bind(key.last_used_at.map(Timestamp::unix_millis))
                .bind(key.revoked_at.map(Timestamp::unix_millis))
                .execute(&self.writer)
                .await
                .map_err(|e| already_exists("API key", &key.name, e))?;
                self.durable().await?;
                Ok(())
            }

            async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKeyRecord>> {
                let row = sqlx::query(select(API_KEY_COLUMNS, "FROM api_keys WHERE secret_hash = $1"))
                    .bind(secret_hash)
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(api_key_from_row).transpose()
            }

            async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
                let row = sqlx::query(select(API_KEY_COLUMNS, "FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(api_key_from_row).transpose()
            }

            async fn count_api_keys(&self) -> Result<u64> {
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM api_keys").fetch_one(&self.reader).await?;
                Ok(count as u64)
            }

            async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
                let rows = sqlx::query(select(API_KEY_COLUMNS, "FROM api_keys ORDER BY created_at, id"))
                    .fetch_all(&self.reader)
                    .await?;
                rows.iter().map(api_key_from_row).collect()
            }

            async fn revoke_api_key(&self, id: &str, at: Timestamp) -> Result<ApiKeyRecord> {
                let mut tx = self.begin().await?;
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1
                     RETURNING {API_KEY_COLUMNS}"
                )))
                .bind(id)
                .bind(at.unix_millis())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound { kind: "API key", id: id.to_owned() })?;
                sqlx::query("DELETE FROM ui_sessions WHERE key_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                self.commit(tx).await?;
                api_key_from_row(&row)
            }

            async fn touch_api_key(&self, id: &str, at: Timestamp) -> Result<()> {
                // Not made durable: losing a last-use time to a crash is harmless.
                sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at.unix_millis())
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn insert_ui_session(&self, session: &UiSessionRecord) -> Result<()> {
                let mut tx = self.begin().await?;
                sqlx::query("DELETE FROM ui_sessions WHERE expires_at < $1")
                    .bind(session.created_at.unix_millis())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO ui_sessions (id_hash, key_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&session.id_hash)
                .bind(&session.key_id)
                .bind(session.created_at.unix_millis())
                .bind(session.expires_at.unix_millis())
                .execute(&mut *tx)
                .await?;
                self.commit(tx).await
            }

            async fn find_ui_session(
                &self,
                id_hash: &str,
            ) -> Result<Option<(UiSessionRecord, ApiKeyRecord)>> {
                // One query per UI request: the session and its key together.
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT s.id_hash AS session_id_hash, s.key_id AS session_key_id,
                            s.created_at AS session_created_at, s.expires_at AS session_expires_at,
                            {key_columns}
                     FROM ui_sessions s JOIN api_keys k ON k.id = s.key_id
                     WHERE s.id_hash = $1",
                    key_columns = qualified("k", API_KEY_COLUMNS),
                )))
                .bind(id_hash)
                .fetch_optional(&self.reader)
                .await?;
                row.as_ref()
                    .map(|row| Ok((ui_session_from_row(row)?, api_key_from_row(row)?)))
                    .transpose()
            }

            async fn delete_ui_session(&self, id_hash: &str) -> Result<()> {
                sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&self.writer)
                    .await?;
                self.durable().await?;
                Ok(())
            }

            async fn append_audit(&self, entry: &$crate::AuditEntry) -> Result<$crate::AuditRecord> {
                let mut tx = self.begin().await?;
                // The head row's lock (PostgreSQL) or the single writer (SQLite) puts
                // appends one after the other, so each sees the hash the previous one wrote.
                let head = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT seq, hash FROM audit_head WHERE id = 1{lock}",
                    lock = Self::LOCK_ROW
                )))
                .fetch_one(&mut *tx)
                .await?;
                let seq = count(&head, "seq")? + 1;
                let prev_hash = text(&head, "hash")?;
                let hash = $crate::audit_hash(seq, &prev_hash, entry);
                sqlx::query(
                    "INSERT INTO audit_log (seq, at, actor, action, target, source, outcome, prev_hash, hash)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(signed(seq))
                .bind(entry.at.unix_millis())
                .bind(&entry.actor)
                .bind(&entry.action)
                .bind(&entry.target)
                .bind(&entry.source)
                .bind(&entry.outcome)
                .bind(&prev_hash)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                    .bind(signed(seq))
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                self.commit(tx).await?;
                Ok($crate::AuditRecord { seq, entry: entry.clone(), prev_hash, hash })
            }

            async fn list_audit(&self, filter: &$crate::AuditFilter) -> Result<Vec<$crate::AuditRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM audit_log
                     WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR actor = $2)
                     ORDER BY seq",
                    columns = $crate::audit::AUDIT_COLUMNS
                )))
                .bind(filter.since.map(Timestamp::unix_millis))
                .bind(filter.actor.as_deref())
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map($crate::audit::audit_from_row).collect()
            }

            async fn insert_pool(&self, pool: &PoolRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO pools (id, name, kind, description, labels, certificate_pem, certificate_fingerprint, key_algorithm, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(pool.id.to_string())
                .bind(&pool.name)
                .bind(pool.kind.as_str())
                .bind(&pool.description)
                .bind(to_json(&pool.labels))
                .bind(&pool.certificate_pem)
                .bind(&pool.certificate_fingerprint)
                .bind(&pool.key_algorithm)
                .bind(pool.created_at.unix_millis())
                .bind(pool.updated_at.unix_millis())
                .execute(&self.writer)
                .await
                .map_err(|e| already_exists("pool", &pool.name, e))?;
                self.durable().await?;
                Ok(())
            }

            async fn get_pool(&self, id: PoolId) -> Result<Option<PoolRecord>> {
                let row = sqlx::query(select(POOL_COLUMNS, "FROM pools WHERE id = $1"))
                    .bind(id.to_string())
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(pool_from_row).transpose()
            }

            async fn find_pool_by_name(&self, name: &str) -> Result<Option<PoolRecord>> {
                let row = sqlx::query(select(POOL_COLUMNS, "FROM pools WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(pool_from_row).transpose()
            }

            async fn list_pools(&self) -> Result<Vec<PoolRecord>> {
                let rows = sqlx::query(select(POOL_COLUMNS, "FROM pools ORDER BY name"))
                    .fetch_all(&self.reader)
                    .await?;
                rows.iter().map(pool_from_row).collect()
            }

            async fn insert_session(&self, session: &SessionRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO sessions (token_hash, pool_id, launcher_id, certificate_fingerprint, hostname, launcher_version, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&session.token_hash)
                .bind(session.pool_id.to_string())
                .bind(session.launcher_id.to_string())
                .bind(&session.certificate_fingerprint)
                .bind(&session.hostname)
                .bind(&session.launcher_version)
                .bind(session.created_at.unix_millis())
                .bind(session.expires_at.unix_millis())
                .execute(&self.writer)
                .await?;
                self.durable().await?;
                Ok(())
            }

            async fn find_session(&self, token_hash: &str) -> Result<Option<FoundSession>> {
                // One query per authenticated agent request: the session and its pool together.
                let row = sqlx::query(
                    "SELECT s.token_hash, s.pool_id, s.launcher_id, s.certificate_fingerprint,
                            s.hostname, s.launcher_version, s.created_at, s.expires_at,
                            p.certificate_fingerprint AS pool_certificate_fingerprint,
                            p.cycle_requested_at AS pool_cycle_requested_at
                     FROM sessions s JOIN pools p ON p.id = s.pool_id
                     WHERE s.token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&self.reader)
                .await?;
                row.as_ref()
                    .map(|row| {
                        Ok(FoundSession {
                            session: session_from_row(row)?,
                            pool_certificate_fingerprint: optional_text(
                                row,
                                "pool_certificate_fingerprint",
                            )?,
                            pool_cycle_requested_at: optional_timestamp(row, "pool_cycle_requested_at")?,
                        })
                    })
                    .transpose()
            }

            async fn delete_session(&self, token_hash: &str) -> Result<()> {
                sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                    .bind(token_hash)
                    .execute(&self.writer)
                    .await?;
                self.durable().await?;
                Ok(())
            }

            async fn delete_expired_sessions(&self, now: Timestamp) -> Result<u64> {
                let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                    .bind(now.unix_millis())
                    .execute(&self.writer)
                    .await?;
                self.durable().await?;
                Ok(done.rows_affected())
            }

            async fn register_worker(&self, worker: &WorkerRecord) -> Result<WorkerRecord> {
                let mut tx = self.begin().await?;
                let existing_pool: Option<String> =
                    sqlx::query_scalar("SELECT pool_id FROM workers WHERE id = $1")
                        .bind(worker.id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                match existing_pool {
                    Some(pool) if pool != worker.pool_id.to_string() => {
                        return Err(StoreError::AlreadyExists {
                            kind: "worker",
                            name: worker.id.to_string(),
                        });
                    }
                    Some(_) => {
                        sqlx::query(
                            "UPDATE workers SET launcher_id = $2, metadata = $3, launcher_version = $4, hostname = $5, last_seen_at = $6
                             WHERE id = $1",
                        )
                        .bind(worker.id.to_string())
                        .bind(worker.launcher_id.to_string())
                        .bind(to_json(&worker.metadata))
                        .bind(&worker.launcher_version)
                        .bind(&worker.hostname)
                        .bind(worker.last_seen_at.unix_millis())
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO workers (id, pool_id, launcher_id, metadata, launcher_version, hostname, drained, current_run_id, created_at, last_seen_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        )
                        .bind(worker.id.to_string())
                        .bind(worker.pool_id.to_string())
                        .bind(worker.launcher_id.to_string())
                        .bind(to_json(&worker.metadata))
                        .bind(&worker.launcher_version)
                        .bind(&worker.hostname)
                        .bind(i64::from(worker.drained))
                        .bind(worker.current_run_id.map(|id| id.to_string()))
                        .bind(worker.created_at.unix_millis())
                        .bind(worker.last_seen_at.unix_millis())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                let row = sqlx::query(select(WORKER_COLUMNS, "FROM workers WHERE id = $1"))
                    .bind(worker.id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
                self.commit(tx).await?;
                worker_from_row(&row)
            }

            async fn get_worker(&self, id: WorkerId) -> Result<Option<WorkerRecord>> {
                let row = sqlx::query(select(WORKER_COLUMNS, "FROM workers WHERE id = $1"))
                    .bind(id.to_string())
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(worker_from_row).transpose()
            }

            async fn list_workers(&self, pool_id: Option<PoolId>) -> Result<Vec<WorkerRecord>> {
                let rows = match pool_id {
                    Some(pool_id) => {
                        sqlx::query(select(
                            WORKER_COLUMNS,
                            "FROM workers WHERE pool_id = $1 ORDER BY created_at, id",
                        ))
                        .bind(pool_id.to_string())
                        .fetch_all(&self.reader)
                        .await?
                    }
                    None => {
                        sqlx::query(select(WORKER_COLUMNS, "FROM workers ORDER BY created_at, id"))
                            .fetch_all(&self.reader)
                            .await?
                    }
                };
                rows.iter().map(worker_from_row).collect()
            }

            async fn launcher_workers(&self, launcher_id: LauncherId) -> Result<Vec<WorkerRecord>> {
                let rows = sqlx::query(select(
                    WORKER_COLUMNS,
                    "FROM workers WHERE launcher_id = $1 ORDER BY created_at, id",
                ))
                .bind(launcher_id.to_string())
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map(worker_from_row).collect()
            }

            async fn held_runs(
                &self,
                launcher_id: LauncherId,
                pool_id: PoolId,
            ) -> Result<Vec<HeldRunRecord>> {
                // The stack's columns carry a prefix so as not to shadow the run's.
                let rows = sqlx::query(select(
                    &format!(
                        "{runs}, {stacks},
                         CASE WHEN r.state IN ('READY', 'CONFIRMED') THEN
                             (SELECT COALESCE(MAX(l.seq) + 1, 0) FROM run_logs l WHERE l.run_id = r.id)
                         END AS pickup_next_log_seq,
                         (SELECT COUNT(*) FROM stack_dependencies d WHERE d.downstream_stack_id = r.stack_id)
                             AS pickup_upstreams,
                         r.commit_author_name AS pickup_commit_author_name,
                         r.commit_author_email AS pickup_commit_author_email,
                         r.commit_authored_at AS pickup_commit_authored_at",
                        runs = qualified("r", RUN_COLUMNS),
                        stacks = prefixed("s", STACK_COLUMNS, PICKUP_STACK),
                    ),
                    "FROM workers w JOIN runs r ON r.id = w.current_run_id AND r.worker_id = w.id
                     LEFT JOIN stacks s ON s.id = r.stack_id
                     WHERE w.launcher_id = $1 AND w.pool_id = $2
                     ORDER BY w.created_at, w.id",
                ))
                .bind(launcher_id.to_string())
                .bind(pool_id.to_string())
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map(held_run_from_row).collect()
            }

            async fn worker_counts(&self) -> Result<Vec<WorkerCountsRecord>> {
                let rows = sqlx::query(
                    "SELECT pool_id, COUNT(*) AS connected,
                            COUNT(current_run_id) AS busy, SUM(CASE WHEN drained != 0 THEN 1 ELSE 0 END) AS drained
                     FROM workers GROUP BY pool_id ORDER BY pool_id",
                )
                .fetch_all(&self.reader)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(WorkerCountsRecord {
                            pool_id: parsed(row, "pool_id")?,
                            connected: count(row, "connected")?,
                            busy: count(row, "busy")?,
                            drained: count(row, "drained")?,
                        })
                    })
                    .collect()
            }

            async fn idle_workers(&self, pool_id: PoolId, limit: u32) -> Result<Vec<WorkerRecord>> {
                let rows = sqlx::query(select(
                    WORKER_COLUMNS,
                    "FROM workers WHERE pool_id = $1 AND current_run_id IS NULL AND drained = 0
                     ORDER BY created_at, id LIMIT $2",
                ))
                .bind(pool_id.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map(worker_from_row).collect()
            }

            async fn touch_workers(
                &self,
                launcher_id: LauncherId,
                worker_ids: &[WorkerId],
                now: Timestamp,
            ) -> Result<Vec<WorkerId>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE workers SET last_seen_at = $3
                     WHERE launcher_id = $2 AND id IN ({ids})
                     RETURNING id",
                    ids = Self::IDS
                )))
                .bind(id_list(worker_ids))
                .bind(launcher_id.to_string())
                .bind(now.unix_millis())
                .fetch_all(&self.writer)
                .await?;
                self.durable().await?;
                let touched: Vec<WorkerId> =
                    rows.iter().map(|row| parsed(row, "id")).collect::<Result<_>>()?;
                Ok(worker_ids.iter().filter(|id| !touched.contains(id)).copied().collect())
            }

            async fn delete_workers(&self, worker_ids: &[WorkerId]) -> Result<()> {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM workers WHERE id IN ({ids})",
                    ids = Self::IDS
                )))
                    .bind(id_list(worker_ids))
                    .execute(&self.writer)
                    .await?;
                self.durable().await
            }

            async fn delete_dead_workers(
                &self,
                worker_ids: &[WorkerId],
                seen_before: Timestamp,
            ) -> Result<Vec<WorkerId>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM workers
                     WHERE id IN ({ids}) AND last_seen_at < $2
                       AND NOT EXISTS (SELECT 1 FROM runs
                                       WHERE runs.id = workers.current_run_id
                                         AND runs.worker_id = workers.id)
                     RETURNING id",
                    ids = Self::IDS
                )))
                .bind(id_list(worker_ids))
                .bind(seen_before.unix_millis())
                .fetch_all(&self.writer)
                .await?;
                self.durable().await?;
                rows.iter().map(|row| parsed(row, "id")).collect()
            }

            async fn insert_stack(&self, stack: &StackRecord) -> Result<()> {
                let environment: Vec<StoredVariable> = stack
                    .environment
                    .iter()
                    .map(|v| StoredVariable {
                        name: v.name.clone(),
                        value: v.value.clone(),
                        secret: v.secret,
                    })
                    .collect();
                sqlx::query(
                    "INSERT INTO stacks (id, name, repository, branch, project_root, pool_id, tool, runner_image, autodeploy, managed_state, share_sensitive_outputs, environment, description, labels, trigger_paths, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                )
                .bind(stack.id.to_string())
                .bind(&stack.name)
                .bind(&stack.repository)
                .bind(&stack.branch)
                .bind(&stack.project_root)
                .bind(stack.pool_id.to_string())
                .bind(stack.tool.as_str())
                .bind(&stack.runner_image)
                .bind(i64::from(stack.autodeploy))
                .bind(i64::from(stack.managed_state))
                .bind(i64::from(stack.share_sensitive_outputs))
                .bind(to_json(&environment))
                .bind(&stack.description)
                .bind(to_json(&stack.labels))
                .bind(to_json(&stack.trigger_paths))
                .bind(stack.created_at.unix_millis())
                .execute(&self.writer)
                .await
                .map_err(|e| already_exists("stack", &stack.name, e))?;
                self.durable().await?;
                Ok(())
            }

            async fn update_stack_environments(
                &self,
                updates: &[(StackId, PoolId, Vec<gantry_domain::EnvironmentVariable>)],
            ) -> Result<()> {
                let mut tx = self.begin().await?;
                for (stack_id, pool_id, environment) in updates {
                    let environment: Vec<StoredVariable> = environment
                        .iter()
                        .map(|v| StoredVariable {
                            name: v.name.clone(),
                            value: v.value.clone(),
                            secret: v.secret,
                        })
                        .collect();
                    let done =
                        sqlx::query("UPDATE stacks SET pool_id = $2, environment = $3 WHERE id = $1")
                            .bind(stack_id.to_string())
                            .bind(pool_id.to_string())
                            .bind(to_json(&environment))
                            .execute(&mut *tx)
                            .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound { kind: "stack", id: stack_id.to_string() });
                    }
                }
                self.commit(tx).await?;
                // The rows' former values may have held secrets in clear.
                self.erase_freed().await
            }

            async fn get_stack(&self, id: StackId) -> Result<Option<StackRecord>> {
                let row = sqlx::query(select(STACK_COLUMNS, "FROM stacks WHERE id = $1"))
                    .bind(id.to_string())
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(stack_from_row).transpose()
            }

            async fn find_stack_by_name(&self, name: &str) -> Result<Option<StackRecord>> {
                let row = sqlx::query(select(STACK_COLUMNS, "FROM stacks WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(stack_from_row).transpose()
            }

            async fn list_stacks(&self) -> Result<Vec<StackRecord>> {
                let rows = sqlx::query(select(STACK_COLUMNS, "FROM stacks ORDER BY name"))
                    .fetch_all(&self.reader)
                    .await?;
                rows.iter().map(stack_from_row).collect()
            }

            async fn insert_run_visible_first(
                &self,
                run: &RunRecord,
                visible: &(dyn Fn() + Send + Sync),
            ) -> Result<()> {
                // One statement: the `runs_history_on_insert` trigger records the first state.
                // Committed without waiting for the disk, then flushed: see `unsynced`.
                sqlx::query(
                    "INSERT INTO runs (id, stack_id, pool_id, run_type, state, branch, commit_sha, commit_message, autodeploy, worker_id, prioritized, has_changes, failure, triggered_by, command, stop_requested_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
                )
                .bind(run.id.to_string())
                .bind(run.stack_id.to_string())
                .bind(run.pool_id.to_string())
                .bind(run.run_type.as_str())
                .bind(run.state.as_str())
                .bind(&run.branch)
                .bind(&run.commit_sha)
                .bind(&run.commit_message)
                .bind(i64::from(run.autodeploy))
                .bind(run.worker_id.map(|id| id.to_string()))
                .bind(i64::from(run.prioritized))
                .bind(run.has_changes.map(i64::from))
                .bind(&run.failure)
                .bind(&run.triggered_by)
                .bind(&run.command)
                .bind(run.stop_requested_at.map(Timestamp::unix_millis))
                .bind(run.created_at.unix_millis())
                .bind(run.updated_at.unix_millis())
                .execute(self.unsynced())
                .await
                // `runs_one_per_upstream_run`: this upstream run triggered this stack already.
                .map_err(|error| already_exists("run", &run.triggered_by, error))?;
                visible();
                self.flush().await
            }

            async fn get_run(&self, id: RunId) -> Result<Option<RunRecord>> {
                let row = sqlx::query(select(RUN_COLUMNS, "FROM runs WHERE id = $1"))
                    .bind(id.to_string())
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(run_from_row).transpose()
            }

            async fn get_run_with_launcher(
                &self,
                id: RunId,
            ) -> Result<Option<(RunRecord, Option<LauncherId>)>> {
                let row = sqlx::query(select(
                    &format!("{}, w.launcher_id AS worker_launcher_id", qualified("r", RUN_COLUMNS)),
                    "FROM runs r LEFT JOIN workers w ON w.id = r.worker_id WHERE r.id = $1",
                ))
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await?;
                row.map(|row| Ok((run_from_row(&row)?, optional_parsed(&row, "worker_launcher_id")?)))
                    .transpose()
            }

            async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
                let limit = i64::from(if filter.limit == 0 { 50 } else { filter.limit });
                let rows = match filter.stack_id {
                    Some(stack_id) => {
                        sqlx::query(select(
                            RUN_COLUMNS,
                            "FROM runs WHERE stack_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
                        ))
                        .bind(stack_id.to_string())
                        .bind(limit)
                        .fetch_all(&self.reader)
                        .await?
                    }
                    None => {
                        sqlx::query(select(
                            RUN_COLUMNS,
                            "FROM runs ORDER BY created_at DESC, id DESC LIMIT $1",
                        ))
                        .bind(limit)
                        .fetch_all(&self.reader)
                        .await?
                    }
                };
                rows.iter().map(run_from_row).collect()
            }

            async fn active_runs(&self) -> Result<Vec<RunRecord>> {
                let rows = sqlx::query(select(
                    RUN_COLUMNS,
                    "FROM runs WHERE state NOT IN ('FINISHED', 'FAILED', 'STOPPED', 'DISCARDED', 'CANCELED', 'SKIPPED')
                     ORDER BY created_at, id",
                ))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map(run_from_row).collect()
            }

            async fn run_history(&self, id: RunId) -> Result<Vec<StateChangeRecord>> {
                let rows = sqlx::query("SELECT state, at FROM run_states WHERE run_id = $1 ORDER BY seq")
                    .bind(id.to_string())
                    .fetch_all(&self.reader)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(StateChangeRecord { state: parsed(row, "state")?, at: timestamp(row, "at")? })
                    })
                    .collect()
            }

            async fn change_run(&self, change: &RunChange) -> Result<RunRecord> {
                let mut tx = self.begin().await?;
                // Compare and set in one statement: the `runs_history_on_change` trigger records
                // the new state and `runs_release_worker` frees the worker, atomically with it.
                let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE runs SET state = $3, updated_at = $4,
                         worker_id = CASE WHEN $5 = 1 THEN NULL ELSE worker_id END,
                         failure = COALESCE($6, failure),
                         has_changes = COALESCE($7, has_changes)
                     WHERE id = $1 AND state = $2
                     RETURNING {RUN_COLUMNS}"
                )))
                .bind(change.run_id.to_string())
                .bind(change.from.as_str())
                .bind(change.to.as_str())
                .bind(change.at.unix_millis())
                .bind(i64::from(change.release_worker))
                .bind(&change.failure)
                .bind(change.has_changes.map(i64::from))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = updated else {
                    let found: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
                        .bind(change.run_id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    let found = found.ok_or_else(|| StoreError::NotFound {
                        kind: "run",
                        id: change.run_id.to_string(),
                    })?;
                    return Err(StoreError::StateConflict {
                        run_id: change.run_id,
                        expected: change.from,
                        found: found.parse().map_err(|error| corrupt("runs.state", error))?,
                    });
                };
                let run = run_from_row(&row)?;
                if let Some(until) = change.fence_stack_until {
                    // In the run's transaction: no scheduling pass sees the run ended and
                    // its stack unfenced.
                    sqlx::query(
                        "INSERT INTO stack_lock_fences (stack_id, run_id, until_at, created_at, holder_launcher_id)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (stack_id) DO UPDATE SET
                             run_id = CASE WHEN excluded.until_at >= stack_lock_fences.until_at
                                 THEN excluded.run_id ELSE stack_lock_fences.run_id END,
                             holder_launcher_id = CASE WHEN excluded.until_at >= stack_lock_fences.until_at
                                 THEN excluded.holder_launcher_id ELSE stack_lock_fences.holder_launcher_id END,
                             created_at = CASE WHEN excluded.until_at >= stack_lock_fences.until_at
                                 THEN excluded.created_at ELSE stack_lock_fences.created_at END,
                             until_at = CASE WHEN excluded.until_at >= stack_lock_fences.until_at
                                 THEN excluded.until_at ELSE stack_lock_fences.until_at END",
                    )
                    .bind(run.stack_id.to_string())
                    .bind(run.id.to_string())
                    .bind(until.unix_millis())
                    .bind(change.at.unix_millis())
                    .bind(change.fence_holder.map(|launcher| launcher.to_string()))
                    .execute(&mut *tx)
                    .await?;
                }
                // In the run's transaction too: what must follow the change survives a
                // crash right after it.
                Self::record_effects(&mut tx, &change.effects, change.at).await?;
                Self::release_run_blobs(&mut tx, run.id, &change.release_blobs, change.at).await?;
                self.commit(tx).await?;
                Ok(run)
            }

            async fn lock_fences(&self, now: Timestamp) -> Result<Vec<LockFenceRecord>> {
                let rows = sqlx::query(
                    "SELECT stack_id, run_id, until_at, created_at FROM stack_lock_fences
                     WHERE until_at > $1 ORDER BY until_at, stack_id",
                )
                .bind(now.unix_millis())
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map(lock_fence_from_row).collect()
            }

            async fn lift_lock_fence(
                &self,
                stack_id: StackId,
                now: Timestamp,
            ) -> Result<Option<LockFenceRecord>> {
                // Every fence of the stack goes, the past ones too; only one in force counts
                // as lifted.
                let row = sqlx::query(
                    "DELETE FROM stack_lock_fences WHERE stack_id = $1
                     RETURNING stack_id, run_id, until_at, created_at",
                )
                .bind(stack_id.to_string())
                .fetch_optional(&self.writer)
                .await?;
                self.durable().await?;
                let lifted = row.as_ref().map(lock_fence_from_row).transpose()?;
                Ok(lifted.filter(|fence| fence.until > now))
            }

            async fn lift_lock_fence_of_run(
                &self,
                run_id: RunId,
                holder: LauncherId,
                now: Timestamp,
            ) -> Result<Option<LockFenceRecord>> {
                let row = sqlx::query(
                    "DELETE FROM stack_lock_fences
                     WHERE run_id = $1 AND holder_launcher_id = $2 AND until_at > $3
                     RETURNING stack_id, run_id, until_at, created_at",
                )
                .bind(run_id.to_string())
                .bind(holder.to_string())
                .bind(now.unix_millis())
                .fetch_optional(&self.writer)
                .await?;
                if row.is_some() {
                    self.durable().await?;
                }
                row.as_ref().map(lock_fence_from_row).transpose()
            }

            async fn set_run_commit(
                &self,
                id: RunId,
                sha: &str,
                message: &str,
                author: Option<&$crate::CommitAuthorRecord>,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE runs SET commit_sha = $2, commit_message = $3, commit_author_name = $4,
                         commit_author_email = $5, commit_authored_at = $6
                     WHERE id = $1",
                )
                .bind(id.to_string())
                .bind(sha)
                .bind(message)
                .bind(author.map(|author| author.name.as_str()))
                .bind(author.map(|author| author.email.as_str()))
                .bind(author.map(|author| author.authored_at.unix_millis()))
                .execute(&self.writer)
                .await?;
                self.durable().await?;
                Ok(())
            }

            async fn commit_pass(
                &self,
                promotions: &[RunId],
                assignments: &[(RunId, WorkerId)],
                at: Timestamp,
            ) -> Result<CommittedPass> {
                // A run or a worker offered again within the batch is refused there.
                let mut seen_runs = std::collections::HashSet::new();
                let mut seen_workers = std::collections::HashSet::new();
                let offered: Vec<bool> = assignments
                    .iter()
                    .map(|(run_id, worker_id)| {
                        let fresh = !seen_runs.contains(run_id) && !seen_workers.contains(worker_id);
                        if fresh {
                            seen_runs.insert(*run_id);
                            seen_workers.insert(*worker_id);
                        }
                        fresh
                    })
                    .collect();
                let pairs: Vec<[String; 2]> = assignments
                    .iter()
                    .zip(&offered)
                    .filter(|(_, offered)| **offered)
                    .map(|((run_id, worker_id), _)| [run_id.to_string(), worker_id.to_string()])
                    .collect();
                if promotions.is_empty() && pairs.is_empty() {
                    return Ok(CommittedPass { promoted: Vec::new(), assigned: offered });
                }
                let (promoted, taken) = self.commit_offered(promotions, &pairs, at).await?;
                Ok(CommittedPass {
                    // In the order asked for, as the scheduler decided them.
                    promoted: promotions
                        .iter()
                        .filter_map(|id| promoted.iter().find(|run| run.id == *id).cloned())
                        .collect(),
                    assigned: assignments
                        .iter()
                        .zip(&offered)
                        .map(|((run_id, _), offered)| *offered && taken.contains(run_id))
                        .collect(),
                })
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.reader).await?;
                Ok(())
            }

            async fn append_logs(
                &self,
                run_id: RunId,
                chunks: &[(u64, String)],
                max_bytes: u64,
                now: Timestamp,
            ) -> Result<u64> {
                let mut tx = self.begin().await?;
                // Locks the run's row until the chunks are in: a seal waits for this append,
                // and this one, once the seal is in, sees it (`seal_log`). One run's appends
                // also take turns across replicas, so its sizes are counted once.
                let sealed = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT log_sealed_at FROM runs WHERE id = $1{lock}",
                    lock = Self::LOCK_ROW
                )))
                .bind(run_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound { kind: "run", id: run_id.to_string() })?;
                if optional_timestamp(&sealed, "log_sealed_at")?.is_some() {
                    tx.rollback().await?;
                    return Err(StoreError::LogSealed { run_id });
                }
                let next: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM run_logs WHERE run_id = $1")
                        .bind(run_id.to_string())
                        .fetch_one(&mut *tx)
                        .await?;
                let mut next = next as u64;
                let mut gap = None;
                let mut fresh: Vec<(u64, &str)> = Vec::new();
                for (seq, text) in chunks {
                    if *seq < next {
                        continue;
                    }
                    if *seq > next {
                        gap = Some(*seq);
                        break;
                    }
                    fresh.push((*seq, text));
                    next += 1;
                }
                if fresh.is_empty() {
                    tx.rollback().await?;
                } else {
                    // One statement for the whole batch: the writer is held for one round trip.
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO run_logs (run_id, seq, text, at)
                         SELECT $2, chunk.seq, chunk.text, $3 FROM ({chunks}) AS chunk WHERE true
                         ON CONFLICT (run_id, seq) DO NOTHING",
                        chunks = Self::LOG_CHUNKS
                    )))
                    .bind(to_json(&fresh))
                    .bind(run_id.to_string())
                    .bind(now.unix_millis())
                    .execute(&mut *tx)
                    .await?;
                    Self::keep_log_within(&mut tx, run_id, &fresh, max_bytes).await?;
                    self.commit(tx).await?;
                }
                match gap {
                    Some(received) => Err(StoreError::LogGap { expected: next, received }),
                    None => Ok(next),
                }
            }

            async fn read_logs(
                &self,
                run_id: RunId,
                from_seq: u64,
                limit: u32,
            ) -> Result<Vec<LogChunkRecord>> {
                let rows = sqlx::query("SELECT seq, text, at FROM run_logs WHERE run_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3")
                    .bind(run_id.to_string())
                    .bind(from_seq as i64)
                    .bind(i64::from(limit))
                    .fetch_all(&self.reader)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(LogChunkRecord {
                            seq: count(row, "seq")?,
                            text: text(row, "text")?,
                            at: timestamp(row, "at")?,
                        })
                    })
                    .collect()
            }

            async fn log_cut(&self, run_id: RunId) -> Result<Option<LogCutRecord>> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {LOG_SIZE_COLUMNS} FROM run_log_sizes WHERE run_id = $1"
                )))
                .bind(run_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
                Ok(row.as_ref().map(LogSizes::from_row).transpose()?.and_then(|sizes| sizes.cut_record()))
            }

            async fn seal_log(&self, run_id: RunId, at: Timestamp) -> Result<()> {
                // The update waits for the row lock of any append under way (`append_logs`).
                let updated = sqlx::query(
                    "UPDATE runs SET log_sealed_at = COALESCE(log_sealed_at, $2) WHERE id = $1",
                )
                .bind(run_id.to_string())
                .bind(at.unix_millis())
                .execute(&self.writer)
                .await?;
                if updated.rows_affected() == 0 {
                    return Err(StoreError::NotFound { kind: "run", id: run_id.to_string() });
                }
                self.durable().await
            }

            async fn runs_with_logs_to_archive(
                &self,
                ended_before: Timestamp,
                skip: &[RunId],
                limit: u32,
            ) -> Result<Vec<RunId>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT r.id FROM runs r
                     WHERE r.state IN ('FINISHED', 'FAILED', 'STOPPED', 'DISCARDED', 'CANCELED', 'SKIPPED')
                       AND r.updated_at < $2
                       AND (r.log_sealed_at IS NULL
                            OR EXISTS (SELECT 1 FROM run_logs l WHERE l.run_id = r.id))
                       AND r.id NOT IN ({skip})
                     ORDER BY r.updated_at, r.id LIMIT $3",
                    skip = Self::IDS
                )))
                .bind(id_list(skip))
                .bind(ended_before.unix_millis())
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map(|row| parsed(row, "id")).collect()
            }

            async fn delete_logs(&self, run_id: RunId) -> Result<()> {
                sqlx::query("DELETE FROM run_logs WHERE run_id = $1")
                    .bind(run_id.to_string())
                    .execute(&self.writer)
                    .await?;
                self.durable().await
            }

            async fn replace_outputs(&self, run_id: RunId, outputs: &[OutputRecord]) -> Result<()> {
                let mut tx = self.begin().await?;
                sqlx::query("DELETE FROM run_outputs WHERE run_id = $1")
                    .bind(run_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                for output in outputs {
                    sqlx::query(
                        "INSERT INTO run_outputs (run_id, name, value, sensitive) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(run_id.to_string())
                    .bind(&output.name)
                    .bind(&output.value_json)
                    .bind(i64::from(output.sensitive))
                    .execute(&mut *tx)
                    .await?;
                }
                self.commit(tx).await?;
                Ok(())
            }

            async fn outputs(&self, run_id: RunId) -> Result<Vec<OutputRecord>> {
                let rows = sqlx::query(
                    "SELECT name, value, sensitive FROM run_outputs WHERE run_id = $1 ORDER BY name",
                )
                .bind(run_id.to_string())
                .fetch_all(&self.reader)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(OutputRecord {
                            name: text(row, "name")?,
                            value_json: optional_text(row, "value")?,
                            sensitive: flag(row, "sensitive")?,
                        })
                    })
                    .collect()
            }

            async fn reset_pool_certificate(
                &self,
                pool_id: PoolId,
                certificate_pem: &str,
                fingerprint: &str,
                key_algorithm: &str,
                at: Timestamp,
            ) -> Result<PoolRecord> {
                let mut tx = self.begin().await?;
                let updated = sqlx::query(
                    "UPDATE pools SET certificate_pem = $2, certificate_fingerprint = $3, key_algorithm = $4, updated_at = $5
                     WHERE id = $1",
                )
                .bind(pool_id.to_string())
                .bind(certificate_pem)
                .bind(fingerprint)
                .bind(key_algorithm)
                .bind(at.unix_millis())
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    return Err(StoreError::NotFound { kind: "pool", id: pool_id.to_string() });
                }
                sqlx::query("DELETE FROM sessions WHERE pool_id = $1")
                    .bind(pool_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query(select(POOL_COLUMNS, "FROM pools WHERE id = $1"))
                    .bind(pool_id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
                self.commit(tx).await?;
                pool_from_row(&row)
            }

            async fn put_run_blob(&self, run_id: RunId, purpose: &str, blob: &BlobRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO run_blobs (run_id, purpose, blob_key, sha256, size, created_at) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (run_id, purpose) DO UPDATE SET blob_key = excluded.blob_key, sha256 = excluded.sha256,
                         size = excluded.size, created_at = excluded.created_at",
                )
                .bind(run_id.to_string())
                .bind(purpose)
                .bind(&blob.key)
                .bind(&blob.sha256)
                .bind(blob.size as i64)
                .bind(blob.created_at.unix_millis())
                .execute(&self.writer)
                .await?;
                self.durable().await?;
                Ok(())
            }

            async fn put_run_blob_once(
                &self,
                run_id: RunId,
                purpose: &str,
                blob: &BlobRecord,
            ) -> Result<bool> {
                let inserted = sqlx::query(
                    "INSERT INTO run_blobs (run_id, purpose, blob_key, sha256, size, created_at) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (run_id, purpose) DO NOTHING",
                )
                .bind(run_id.to_string())
                .bind(purpose)
                .bind(&blob.key)
                .bind(&blob.sha256)
                .bind(blob.size as i64)
                .bind(blob.created_at.unix_millis())
                .execute(&self.writer)
                .await?;
                self.durable().await?;
                Ok(inserted.rows_affected() == 1)
            }

            async fn run_blob(&self, run_id: RunId, purpose: &str) -> Result<Option<BlobRecord>> {
                let row = sqlx::query("SELECT blob_key, sha256, size, created_at FROM run_blobs WHERE run_id = $1 AND purpose = $2")
                    .bind(run_id.to_string())
                    .bind(purpose)
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(blob_from_row).transpose()
            }

            async fn add_state_version(
                &self,
                stack_id: StackId,
                run_id: RunId,
                blob: &BlobRecord,
            ) -> Result<StateVersionRecord> {
                let mut tx = self.begin().await?;
                let seq = Self::next_state_seq(&mut tx, stack_id).await?;
                let version = StateVersionRecord {
                    stack_id,
                    seq,
                    run_id,
                    blob: blob.clone(),
                    rollback: None,
                    orphaned: false,
                    adoption: None,
                };
                Self::insert_state_version(&mut tx, &version).await?;
                self.commit(tx).await?;
                Ok(version)
            }

            async fn add_run_state_version(
                &self,
                stack_id: StackId,
                run_id: RunId,
                fence: Option<$crate::StateFence>,
                blob: &BlobRecord,
            ) -> Result<(StateVersionRecord, bool)> {
                let mut tx = self.begin().await?;
                // The stack's row lock orders this with the passes that give its lock to
                // the next run (they raise the generation) and its other version writes.
                let seq = Self::next_state_seq(&mut tx, stack_id).await?;
                let holder = sqlx::query(
                    "SELECT s.lock_generation AS stack_generation, r.state, r.lock_generation
                     FROM stacks s JOIN runs r ON r.stack_id = s.id
                     WHERE s.id = $1 AND r.id = $2",
                )
                .bind(stack_id.to_string())
                .bind(run_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "run",
                    id: format!("{run_id} of stack {stack_id}"),
                })?;
                let stack_generation = count(&holder, "stack_generation")?;
                let run_state: gantry_domain::RunState = parsed(&holder, "state")?;
                // Runs that took the lock before generations were recorded count as 0.
                let run_generation = holder.optional_integer("lock_generation")?.unwrap_or(0);
                let current = fence.is_some_and(|fence| {
                    fence.run_state == run_state
                        && u64::try_from(run_generation).ok() == Some(stack_generation)
                        && fence.lock_generation.is_none_or(|sent| sent == stack_generation)
                });
                // A retried upload is the version it made the first time.
                let same = sqlx::query(select(
                    STATE_VERSION_COLUMNS,
                    "FROM state_versions WHERE stack_id = $1 AND run_id = $2 AND sha256 = $3
                       AND rollback_of IS NULL
                       AND (orphaned = 1 OR seq = (SELECT MAX(seq) FROM state_versions
                                                   WHERE stack_id = $1 AND orphaned = 0))
                     ORDER BY seq DESC LIMIT 1",
                ))
                .bind(stack_id.to_string())
                .bind(run_id.to_string())
                .bind(&blob.sha256)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(same) = same {
                    tx.rollback().await?;
                    return Ok((state_version_from_row(&same)?, false));
                }
                let version = StateVersionRecord {
                    stack_id,
                    seq,
                    run_id,
                    blob: blob.clone(),
                    rollback: None,
                    orphaned: !current,
                    adoption: None,
                };
                Self::insert_state_version(&mut tx, &version).await?;
                self.commit(tx).await?;
                Ok((version, true))
            }

            async fn current_state_version(&self, stack_id: StackId) -> Result<Option<StateVersionRecord>> {
                let row = sqlx::query(select(
                    STATE_VERSION_COLUMNS,
                    "FROM state_versions WHERE stack_id = $1 AND orphaned = 0 ORDER BY seq DESC LIMIT 1",
                ))
                .bind(stack_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
                row.as_ref().map(state_version_from_row).transpose()
            }

            async fn list_state_versions(&self, stack_id: StackId) -> Result<Vec<StateVersionRecord>> {
                let rows = sqlx::query(select(
                    STATE_VERSION_COLUMNS,
                    "FROM state_versions WHERE stack_id = $1 ORDER BY seq DESC",
                ))
                .bind(stack_id.to_string())
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map(state_version_from_row).collect()
            }

            async fn rollback_state_version(
                &self,
                stack_id: StackId,
                to_seq: u64,
                by: &str,
                at: Timestamp,
            ) -> Result<StateVersionRecord> {
                self.restore_state_version(stack_id, to_seq, false, by, at).await
            }

            async fn adopt_state_version(
                &self,
                stack_id: StackId,
                seq: u64,
                by: &str,
                at: Timestamp,
            ) -> Result<StateVersionRecord> {
                self.restore_state_version(stack_id, seq, true, by, at).await
            }

            async fn prune_state_versions(&self, stack_id: StackId, keep: u32) -> Result<Vec<String>> {
                let mut tx = self.begin().await?;
                Self::lock_stack(&mut tx, stack_id).await?;
                let deleted: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM state_versions WHERE stack_id = $1 AND orphaned = 0 AND seq < (
                         SELECT MIN(seq) FROM (
                             SELECT seq FROM state_versions WHERE stack_id = $1 AND orphaned = 0
                             ORDER BY seq DESC LIMIT $2
                         ) AS kept
                     )
                     RETURNING blob_key",
                )
                .bind(stack_id.to_string())
                .bind(i64::from(keep))
                .fetch_all(&mut *tx)
                .await?;
                if deleted.is_empty() {
                    tx.rollback().await?;
                    return Ok(deleted);
                }
                // Read in the same transaction, after the deletion: a rollback that could
                // still name one of these blobs is serialized by the stack's lock.
                let still_named: std::collections::HashSet<String> = sqlx::query_scalar(
                    sqlx::AssertSqlSafe(format!(
                        "SELECT DISTINCT blob_key FROM state_versions WHERE blob_key IN ({ids})",
                        ids = Self::IDS
                    )),
                )
                .bind(to_json(&deleted))
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
                let mut unnamed: Vec<String> =
                    deleted.into_iter().filter(|key| !still_named.contains(key)).collect();
                unnamed.sort();
                unnamed.dedup();
                // Their deletion is recorded with the rows' deletion: a crash before the
                // blobs go leaves it pending, not the blobs behind for good.
                let deletions: Vec<$crate::Effect> =
                    unnamed.iter().map(|key| $crate::Effect::DeleteBlob { key: key.clone() }).collect();
                Self::record_effects(&mut tx, &deletions, $crate::effects::wall_clock()).await?;
                self.commit(tx).await?;
                Ok(unnamed)
            }

            async fn request_pool_cycle(&self, pool_id: PoolId, at: Timestamp) -> Result<PoolRecord> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE pools SET cycle_requested_at = $2, updated_at = $2 WHERE id = $1
                     RETURNING {POOL_COLUMNS}"
                )))
                .bind(pool_id.to_string())
                .bind(at.unix_millis())
                .fetch_optional(&self.writer)
                .await?
                .ok_or_else(|| StoreError::NotFound { kind: "pool", id: pool_id.to_string() })?;
                self.durable().await?;
                pool_from_row(&row)
            }

            async fn set_worker_drained(
                &self,
                worker_id: WorkerId,
                drained: bool,
            ) -> Result<Option<WorkerRecord>> {
                Ok(self.set_drained_where("id", &worker_id.to_string(), drained).await?.pop())
            }

            async fn set_pool_drained(&self, pool_id: PoolId, drained: bool) -> Result<Vec<WorkerRecord>> {
                self.set_drained_where("pool_id", &pool_id.to_string(), drained).await
            }

            async fn prioritize_run(&self, id: RunId, at: Timestamp) -> Result<RunRecord> {
                self.update_run(id, "prioritized = 1", at).await
            }

            async fn request_run_stop(&self, id: RunId, at: Timestamp) -> Result<RunRecord> {
                self.update_run(id, "stop_requested_at = COALESCE(stop_requested_at, $2)", at).await
            }

            async fn put_dependency(&self, dependency: &DependencyRecord) -> Result<()> {
                let references: Vec<StoredReference> = dependency
                    .references
                    .iter()
                    .map(|r| StoredReference {
                        output: r.output.clone(),
                        variable: r.variable.clone(),
                        trigger_always: r.trigger_always,
                    })
                    .collect();
                sqlx::query(
                    "INSERT INTO stack_dependencies (downstream_stack_id, upstream_stack_id, output_references, created_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (downstream_stack_id, upstream_stack_id) DO UPDATE SET output_references = excluded.output_references",
                )
                .bind(dependency.downstream.to_string())
                .bind(dependency.upstream.to_string())
                .bind(to_json(&references))
                .bind(dependency.created_at.unix_millis())
                .execute(&self.writer)
                .await?;
                self.durable().await?;
                Ok(())
            }

            async fn delete_dependency(&self, downstream: StackId, upstream: StackId) -> Result<bool> {
                let done = sqlx::query("DELETE FROM stack_dependencies WHERE downstream_stack_id = $1 AND upstream_stack_id = $2")
                    .bind(downstream.to_string())
                    .bind(upstream.to_string())
                    .execute(&self.writer)
                    .await?;
                self.durable().await?;
                Ok(done.rows_affected() > 0)
            }

            async fn list_dependencies(&self) -> Result<Vec<DependencyRecord>> {
                let rows = sqlx::query(
                    "SELECT downstream_stack_id, upstream_stack_id, output_references, created_at FROM stack_dependencies
                     ORDER BY created_at, downstream_stack_id, upstream_stack_id",
                )
                .fetch_all(&self.reader)
                .await?;
                rows.iter()
                    .map(|row| {
                        let references: Vec<StoredReference> = json(row, "output_references")?;
                        Ok(DependencyRecord {
                            downstream: parsed(row, "downstream_stack_id")?,
                            upstream: parsed(row, "upstream_stack_id")?,
                            references: references
                                .into_iter()
                                .map(|r| OutputReferenceRecord {
                                    output: r.output,
                                    variable: r.variable,
                                    trigger_always: r.trigger_always,
                                })
                                .collect(),
                            created_at: timestamp(row, "created_at")?,
                        })
                    })
                    .collect()
            }

        }
    };
}

pub(crate) use sql_store;
