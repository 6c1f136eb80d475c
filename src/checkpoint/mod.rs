//! The checkpoint store: aggregate state and Kafka positions in PostgreSQL, written in one
//! transaction, read back on start. The only SQL in the project.
//!
//! A checkpoint is written in parts (`migrations/0002_checkpoint_stores.sql`): its row holds
//! the head and the positions; each store changed since the process's previous checkpoint
//! is a row of `checkpoint_stores`, in the same transaction. A process's first checkpoint
//! writes every store and starts its chain (`base_id`); a load reads the head and, per
//! store, the newest part of the chain at or before the checkpoint. Pruning follows the
//! kept checkpoints: a part no kept checkpoint reads is deleted in the same transaction.
//!
//! Serialisation is versioned ([`FORMAT_VERSION`]): a checkpoint of another version, or of
//! another partition layout, is skipped with a log line and the process rebuilds from
//! Kafka; it is never misread. Connections are lazy, so a database that is down at start
//! delays checkpoints (the writer retries with backoff, `writer.rs`) and never stops
//! processing.

use crate::aggregate::{AggregateConfig, Layout, State};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use storepulse_core::checkpoint::{Encoded, FORMAT_VERSION, FormatError, Frozen};
use thiserror::Error;

mod chain;
mod writer;
pub use chain::Chain;
pub use writer::{Writer, checkpoint_writer, migrate_early, restore};

/// Migrations in `migrations/`, compiled in.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A failed checkpoint operation.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The database did not answer or refused (inside the store; callers get
    /// [`CheckpointError::Unavailable`], which says where and why).
    #[error("checkpoint store: {0}")]
    Database(sqlx::Error),
    /// The database did not answer or refused: which one (no password), and the cause a
    /// direct connection attempt reports when the pool only says it timed out.
    #[error("checkpoint store {target}: {cause}")]
    Unavailable {
        /// `postgres://host:port/database`.
        target: String,
        /// Why, e.g. "Connection refused (os error 111)".
        cause: String,
    },
    /// Migrations failed.
    #[error("checkpoint migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The stored state cannot be restored although its version matched the query (a
    /// defect: never guessed at, the state is rebuilt from Kafka).
    #[error("checkpoint {id} cannot be restored: {cause}")]
    Corrupt {
        /// Checkpoint id.
        id: i64,
        /// Why.
        cause: FormatError,
    },
}

// Display says the cause; `source()` does not repeat it.
impl From<sqlx::Error> for CheckpointError {
    fn from(error: sqlx::Error) -> Self {
        CheckpointError::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for CheckpointError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        CheckpointError::Migrate(error)
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    /// The new checkpoint's id.
    pub id: i64,
    /// Its chain: the id of the process's first (whole) checkpoint.
    pub base_id: i64,
    /// Bytes of state written (head and changed stores).
    pub bytes: usize,
    /// Stores written.
    pub stores: usize,
    /// Time the transaction took.
    pub duration: Duration,
}

/// Which checkpoints a write keeps (the others of the group are deleted in its
/// transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    /// The newest this many (restarts load the newest).
    pub newest: i64,
    /// Also the newest checkpoint of each of the last this many hours of event time
    /// (`newest_event_time` truncated to the hour): warm-ups for replays of older ranges.
    pub hourly: i64,
}

/// Checkpoints of one group in one database.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    pool: PgPool,
    group: String,
    options: PgConnectOptions,
    target: String,
}

impl CheckpointStore {
    /// A store on a lazily connecting pool: creating it never fails on a dead database.
    pub fn connect_lazy(database_url: &str, group: &str) -> Result<Self, CheckpointError> {
        let options: PgConnectOptions = database_url.parse()?;
        let target = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options.clone());
        Ok(CheckpointStore {
            pool,
            group: group.to_owned(),
            options,
            target,
        })
    }

    /// The same database and connections for another group's checkpoints (a cluster's
    /// aggregator keeps one group per slice).
    pub fn for_group(&self, group: &str) -> CheckpointStore {
        CheckpointStore {
            group: group.to_owned(),
            ..self.clone()
        }
    }

    /// Where the store is (`postgres://host:port/database`, no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Applies the migrations in `migrations/`.
    pub async fn migrate(&self) -> Result<(), CheckpointError> {
        let result = MIGRATOR.run(&self.pool).await;
        match result {
            Err(sqlx::migrate::MigrateError::Execute(error)) => Err(self.unavailable(error).await),
            other => Ok(other?),
        }
    }

    /// A database error as [`CheckpointError::Unavailable`]: the pool says only "timed out",
    /// so then one direct connection is tried for the real cause.
    async fn unavailable(&self, error: sqlx::Error) -> CheckpointError {
        let cause = if matches!(error, sqlx::Error::PoolTimedOut) {
            match tokio::time::timeout(
                Duration::from_secs(3),
                PgConnection::connect_with(&self.options),
            )
            .await
            {
                Err(_) => "no answer within 3 s".to_owned(),
                Ok(Err(direct)) => direct.to_string(),
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    "no pooled connection within 3 s, though a direct one succeeds (the database is overloaded or at max_connections)".to_owned()
                }
            }
        } else {
            error.to_string()
        };
        CheckpointError::Unavailable {
            target: self.target.clone(),
            cause,
        }
    }

    /// [`CheckpointError::Database`] made [`CheckpointError::Unavailable`].
    async fn explained<T>(&self, result: Result<T, CheckpointError>) -> Result<T, CheckpointError> {
        match result {
            Err(CheckpointError::Database(error)) => Err(self.unavailable(error).await),
            other => other,
        }
    }

    /// True if the database answers a trivial query.
    pub async fn is_reachable(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Writes a checkpoint and prunes all but those `keep` keeps, in one transaction. A
    /// `frozen` that is not whole builds on the chain `base` (the [`Written::base_id`] of
    /// this process's previous write); a whole one starts a chain.
    /// The frozen state is serialised on a blocking worker first (never on the thread that
    /// froze it).
    pub async fn write(
        &self,
        frozen: Arc<Frozen>,
        layout: &Layout,
        keep: Keep,
        base: Option<i64>,
    ) -> Result<Written, CheckpointError> {
        let started = Instant::now();
        let encoded = {
            let frozen = Arc::clone(&frozen);
            match tokio::task::spawn_blocking(move || frozen.encode()).await {
                Ok(encoded) => encoded,
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        };
        let result = self
            .write_transaction(&frozen, &encoded, layout, keep, base, started)
            .await;
        self.explained(result).await
    }

    async fn write_transaction(
        &self,
        frozen: &Frozen,
        encoded: &Encoded,
        layout: &Layout,
        keep: Keep,
        base: Option<i64>,
        started: Instant,
    ) -> Result<Written, CheckpointError> {
        let base = match (frozen.full, base) {
            (true, _) => None,
            (false, Some(base)) => Some(base),
            (false, None) => {
                return Err(CheckpointError::Corrupt {
                    id: 0,
                    cause: FormatError::Corrupt(
                        "a partial checkpoint without a chain to build on (a defect)".into(),
                    ),
                });
            }
        };
        let mut tx = self.pool.begin().await?;
        let (id, base_id) = self
            .insert_head(&mut tx, frozen, encoded, layout, base)
            .await?;
        self.insert_parts(&mut tx, base_id, id, encoded).await?;
        insert_positions(&mut tx, id, frozen).await?;
        self.prune(&mut tx, keep, base_id).await?;
        tx.commit().await?;
        Ok(Written {
            id,
            base_id,
            bytes: encoded.bytes(),
            stores: encoded.stores.len(),
            duration: started.elapsed(),
        })
    }

    /// The checkpoint's row (head, position); a chain's first checkpoint is its own base.
    /// Returns its id and its chain's base.
    async fn insert_head(
        &self,
        tx: &mut PgConnection,
        frozen: &Frozen,
        encoded: &Encoded,
        layout: &Layout,
        base: Option<i64>,
    ) -> Result<(i64, i64), CheckpointError> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO checkpoints (group_name, format_version, layout_tag, position, newest_event_time, state, base_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&self.group)
        .bind(FORMAT_VERSION)
        .bind(layout.tag())
        .bind(&frozen.position)
        .bind(frozen.newest_event_time)
        .bind(&encoded.head)
        .bind(base)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(base) = base {
            return Ok((id, base));
        }
        sqlx::query("UPDATE checkpoints SET base_id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok((id, id))
    }

    /// One part per store the checkpoint wrote; older parts of those stores in the chain
    /// are superseded (kept while a kept checkpoint reads them).
    async fn insert_parts(
        &self,
        tx: &mut PgConnection,
        base_id: i64,
        id: i64,
        encoded: &Encoded,
    ) -> Result<(), CheckpointError> {
        let (ids, states): (Vec<String>, Vec<Vec<u8>>) = encoded.stores.iter().cloned().unzip();
        sqlx::query(
            "UPDATE checkpoint_stores SET superseded = true
              WHERE group_name = $1 AND base_id = $2 AND store_id = ANY($3) AND NOT superseded",
        )
        .bind(&self.group)
        .bind(base_id)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO checkpoint_stores (group_name, base_id, store_id, version, state)
             SELECT $1, $2, u.store_id, $3, u.state FROM UNNEST($4::text[], $5::bytea[]) AS u(store_id, state)",
        )
        .bind(&self.group)
        .bind(base_id)
        .bind(id)
        .bind(&ids)
        .bind(&states)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Deletes the checkpoints beyond `keep`, then the parts no kept checkpoint reads:
    /// superseded ones that every kept checkpoint of their chain reads a newer version of
    /// (or is older than), and any part of a chain with no kept checkpoint left. Only
    /// superseded parts and other chains are looked at, never the current chain's newest
    /// parts (the newest checkpoint reads them).
    async fn prune(
        &self,
        tx: &mut PgConnection,
        keep: Keep,
        base_id: i64,
    ) -> Result<(), CheckpointError> {
        sqlx::query(
            "DELETE FROM checkpoints WHERE group_name = $1
               AND id NOT IN (SELECT id FROM checkpoints WHERE group_name = $1
                                ORDER BY id DESC LIMIT $2)
               AND id NOT IN (SELECT max(id) FROM checkpoints WHERE group_name = $1
                                GROUP BY div(newest_event_time, 3600000)
                                ORDER BY div(newest_event_time, 3600000) DESC LIMIT $3)",
        )
        .bind(&self.group)
        .bind(keep.newest)
        .bind(keep.hourly)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM checkpoint_stores p
              WHERE p.group_name = $1
                AND (p.superseded OR p.base_id <> $2)
                AND NOT EXISTS (
                  SELECT 1 FROM checkpoints c
                   WHERE c.group_name = $1 AND c.base_id = p.base_id AND c.id >= p.version
                     AND NOT EXISTS (
                       SELECT 1 FROM checkpoint_stores q
                        WHERE q.group_name = $1 AND q.base_id = p.base_id
                          AND q.store_id = p.store_id
                          AND q.version > p.version AND q.version <= c.id))",
        )
        .bind(&self.group)
        .bind(base_id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// The state of checkpoint `id`: its head and the newest part of each store of its
    /// chain at or before it.
    async fn restore(
        &self,
        id: i64,
        base_id: Option<i64>,
        head: &[u8],
        config: Arc<AggregateConfig>,
    ) -> Result<State, CheckpointError> {
        let Some(base_id) = base_id else {
            return Err(CheckpointError::Corrupt {
                id,
                cause: FormatError::Corrupt("no chain (base_id) recorded".into()),
            });
        };
        let stores: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT DISTINCT ON (store_id) store_id, state FROM checkpoint_stores
              WHERE group_name = $1 AND base_id = $2 AND version <= $3
              ORDER BY store_id, version DESC",
        )
        .bind(&self.group)
        .bind(base_id)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        storepulse_core::checkpoint::restore_parts(FORMAT_VERSION, head, stores, config)
            .map_err(|source| CheckpointError::Corrupt { id, cause: source })
    }

    /// The newest checkpoint of this group in this format and layout, restored.
    /// Newer checkpoints of another format or layout are skipped (logged).
    pub async fn load_newest(
        &self,
        layout: &Layout,
        config: Arc<AggregateConfig>,
    ) -> Result<Option<(i64, State)>, CheckpointError> {
        let result = self.read_newest(layout, config).await;
        self.explained(result).await
    }

    /// The newest checkpoint of this group, format and layout whose position `fits`
    /// (replay: at or before where it must start), restored; `None` if none fits.
    pub async fn load_newest_fitting(
        &self,
        layout: &Layout,
        config: Arc<AggregateConfig>,
        fits: impl Fn(&crate::aggregate::Position) -> bool,
    ) -> Result<Option<(i64, State)>, CheckpointError> {
        let result = self.read_newest_fitting(layout, config, fits).await;
        self.explained(result).await
    }

    async fn read_newest_fitting(
        &self,
        layout: &Layout,
        config: Arc<AggregateConfig>,
        fits: impl Fn(&crate::aggregate::Position) -> bool,
    ) -> Result<Option<(i64, State)>, CheckpointError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, position FROM checkpoints WHERE group_name = $1 AND format_version = $2
               AND layout_tag = $3 ORDER BY id DESC",
        )
        .bind(&self.group)
        .bind(FORMAT_VERSION)
        .bind(layout.tag())
        .fetch_all(&self.pool)
        .await?;
        let Some(id) = rows.into_iter().find_map(|(id, position)| {
            layout
                .decode(&position)
                .ok()
                .filter(|position| fits(position))
                .map(|_| id)
        }) else {
            return Ok(None);
        };
        let (head, base_id): (Vec<u8>, Option<i64>) =
            sqlx::query_as("SELECT state, base_id FROM checkpoints WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        let state = self.restore(id, base_id, &head, config).await?;
        Ok(Some((id, state)))
    }

    async fn read_newest(
        &self,
        layout: &Layout,
        config: Arc<AggregateConfig>,
    ) -> Result<Option<(i64, State)>, CheckpointError> {
        let skipped: (i64,) = sqlx::query_as(
            "SELECT count(*) FROM checkpoints WHERE group_name = $1
               AND (format_version <> $2 OR layout_tag <> $3)
               AND id > COALESCE((SELECT max(id) FROM checkpoints WHERE group_name = $1
                                    AND format_version = $2 AND layout_tag = $3), 0)",
        )
        .bind(&self.group)
        .bind(FORMAT_VERSION)
        .bind(layout.tag())
        .fetch_one(&self.pool)
        .await?;
        if skipped.0 > 0 {
            tracing::warn!(
                skipped = skipped.0,
                format_version = FORMAT_VERSION,
                layout = layout.tag(),
                "newer checkpoints of another format or partition layout are ignored; older state is rebuilt from kafka"
            );
        }
        let row: Option<(i64, Vec<u8>, Option<i64>)> = sqlx::query_as(
            "SELECT id, state, base_id FROM checkpoints WHERE group_name = $1 AND format_version = $2
               AND layout_tag = $3 ORDER BY id DESC LIMIT 1",
        )
        .bind(&self.group)
        .bind(FORMAT_VERSION)
        .bind(layout.tag())
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, head, base_id)) = row else {
            return Ok(None);
        };
        let state = self.restore(id, base_id, &head, config).await?;
        Ok(Some((id, state)))
    }
}

/// Each partition's next offset at the checkpoint.
async fn insert_positions(
    tx: &mut PgConnection,
    id: i64,
    frozen: &Frozen,
) -> Result<(), CheckpointError> {
    let (topics, partitions, offsets): (Vec<String>, Vec<i32>, Vec<i64>) =
        frozen.partitions.iter().cloned().fold(
            Default::default(),
            |(mut t, mut p, mut o), (topic, partition, offset)| {
                t.push(topic);
                p.push(partition);
                o.push(offset);
                (t, p, o)
            },
        );
    sqlx::query(
        "INSERT INTO checkpoint_positions (checkpoint_id, topic, partition, next_offset)
         SELECT $1, * FROM UNNEST($2::text[], $3::int[], $4::bigint[])",
    )
    .bind(id)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod unavailable_tests {
    use super::*;
    use crate::events::TopicRole;

    #[tokio::test]
    async fn a_down_database_is_named_with_the_real_cause_not_a_pool_timeout() {
        // Nothing listens on port 1; the password never appears.
        let store =
            CheckpointStore::connect_lazy("postgres://postgres:secret@127.0.0.1:1/none", "g")
                .expect("a lazy pool");
        assert_eq!(store.target(), "postgres://127.0.0.1:1/none");
        let layout = Layout::new(vec![
            (TopicRole::Orders, "o".into(), 1),
            (TopicRole::Inventory, "i".into(), 1),
            (TopicRole::Activity, "a".into(), 1),
        ]);
        let error = store
            .load_newest(&layout, Arc::new(AggregateConfig::default()))
            .await
            .expect_err("nothing listens");
        let text = error.to_string();
        assert!(
            text.starts_with("checkpoint store postgres://127.0.0.1:1/none: "),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "the cause: {text}");
        assert!(
            !text.contains("pool timed out") && !text.contains("secret"),
            "{text}"
        );
        let migrate = store
            .migrate()
            .await
            .expect_err("nothing listens")
            .to_string();
        assert!(
            migrate.contains("127.0.0.1:1") && migrate.to_lowercase().contains("refused"),
            "{migrate}"
        );
    }
}
