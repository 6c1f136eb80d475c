//! The checkpoint store: aggregate state and Kafka positions in PostgreSQL, written in one
//! transaction, read back on start. The only SQL in the project.
//!
//! Serialisation is versioned ([`FORMAT_VERSION`]): a checkpoint of another version, or of
//! another partition layout, is skipped with a log line and the process rebuilds from
//! Kafka; it is never misread. Connections are lazy, so a database that is down at start
//! delays checkpoints (the caller retries with backoff) and never stops processing.

use crate::aggregate::{AggregateConfig, Layout, State};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use storepulse_core::checkpoint::{FORMAT_VERSION, FormatError, Frozen};
use thiserror::Error;

/// Migrations in `migrations/`, compiled in.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A failed checkpoint operation.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The database did not answer or refused.
    #[error("checkpoint store: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("checkpoint migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The stored state cannot be restored although its version matched the query (a
    /// defect: never guessed at, the state is rebuilt from Kafka).
    #[error("checkpoint {id} cannot be restored: {source}")]
    Corrupt {
        /// Checkpoint id.
        id: i64,
        /// Why.
        source: FormatError,
    },
}

/// What a write did.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    /// The new checkpoint's id.
    pub id: i64,
    /// Bytes of state.
    pub bytes: usize,
    /// Time the transaction took.
    pub duration: Duration,
}

/// Checkpoints of one group in one database.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    pool: PgPool,
    group: String,
}

impl CheckpointStore {
    /// A store on a lazily connecting pool: creating it never fails on a dead database.
    pub fn connect_lazy(database_url: &str, group: &str) -> Result<Self, CheckpointError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(database_url)?;
        Ok(CheckpointStore {
            pool,
            group: group.to_owned(),
        })
    }

    /// Applies the migrations in `migrations/`.
    pub async fn migrate(&self) -> Result<(), CheckpointError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// True if the database answers a trivial query.
    pub async fn is_reachable(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Writes a checkpoint and prunes all but the newest `keep`, in one transaction.
    pub async fn write(
        &self,
        frozen: &Frozen,
        layout: &Layout,
        keep: i64,
    ) -> Result<Written, CheckpointError> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO checkpoints (group_name, format_version, layout_tag, position, newest_event_time, state)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&self.group)
        .bind(FORMAT_VERSION)
        .bind(layout.tag())
        .bind(&frozen.position)
        .bind(frozen.newest_event_time)
        .bind(&frozen.bytes)
        .fetch_one(&mut *tx)
        .await?;
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
        sqlx::query(
            "DELETE FROM checkpoints WHERE group_name = $1 AND id NOT IN
               (SELECT id FROM checkpoints WHERE group_name = $1 ORDER BY id DESC LIMIT $2)",
        )
        .bind(&self.group)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Written {
            id,
            bytes: frozen.bytes.len(),
            duration: started.elapsed(),
        })
    }

    /// The newest checkpoint of this group in this format and layout, restored.
    /// Newer checkpoints of another format or layout are skipped (logged).
    pub async fn load_newest(
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
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT id, state FROM checkpoints WHERE group_name = $1 AND format_version = $2
               AND layout_tag = $3 ORDER BY id DESC LIMIT 1",
        )
        .bind(&self.group)
        .bind(FORMAT_VERSION)
        .bind(layout.tag())
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, bytes)) = row else {
            return Ok(None);
        };
        let state = storepulse_core::checkpoint::restore(FORMAT_VERSION, &bytes, config)
            .map_err(|source| CheckpointError::Corrupt { id, source })?;
        Ok(Some((id, state)))
    }
}
