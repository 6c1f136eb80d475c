//! The checkpoint writer task and the checkpoint side of start-up: migrations at start,
//! the restore of the newest checkpoint, and the task that writes each frozen checkpoint
//! (retrying with backoff while PostgreSQL is down, always with the newest one).

use super::{CheckpointError, CheckpointStore, Frozen};
use crate::aggregate::{AggregateConfig, Layout, State};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Applies the migrations at start if configured; `false` if they still have to run
/// (the writer retries them before its first checkpoint).
pub async fn migrate_early(settings: &crate::config::Settings, store: &CheckpointStore) -> bool {
    if !settings.checkpoint.migrate_on_start {
        return true;
    }
    match store.migrate().await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = %error, "migrations failed; retried before the first checkpoint");
            false
        }
    }
}

/// The newest checkpoint's state, or an empty one (rebuilt from Kafka) when there is
/// none, the store is down, or the checkpoint cannot be restored.
pub async fn restore(
    store: &CheckpointStore,
    layout: &Layout,
    aggregate: &Arc<AggregateConfig>,
) -> State {
    match store.load_newest(layout, Arc::clone(aggregate)).await {
        Ok(Some((id, state))) => {
            tracing::info!(checkpoint = id, position = %layout.encode(state.position()), "restored checkpoint");
            return state;
        }
        Ok(None) => tracing::info!("no checkpoint: reading every partition from the beginning"),
        Err(error @ CheckpointError::Corrupt { .. }) => {
            tracing::error!(error = %error, "the newest checkpoint cannot be restored (a defect): rebuilding from kafka")
        }
        Err(error) => {
            tracing::warn!(error = %error, "checkpoint store unavailable at start: rebuilding from kafka")
        }
    }
    State::new(Arc::clone(aggregate))
}

/// The checkpoint writer task's inputs.
pub struct Writer {
    /// Where checkpoints go.
    pub store: CheckpointStore,
    /// The partition layout they are written for.
    pub layout: Layout,
    /// How many are kept.
    pub keep: crate::checkpoint::Keep,
    /// The engine's newest frozen checkpoint.
    pub frozen: watch::Receiver<Option<Arc<Frozen>>>,
    /// Each checkpoint written, back to the ingest thread (to commit offsets for lag tools).
    pub written: mpsc::UnboundedSender<Arc<Frozen>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// False while the migrations still have to run (before the first checkpoint).
    pub migrated: bool,
    /// Stop: write the newest once more, then return.
    pub stop: CancellationToken,
    /// The chain this process's checkpoints build on (its first, whole, checkpoint).
    pub base: Option<i64>,
}

/// First wait after a failed checkpoint.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between checkpoint attempts while the store is down: a returning database
/// is noticed within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The wait after `current` failed too: doubling, capped at [`MAX_BACKOFF`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Writes the newest frozen checkpoint whenever it changes; on failure retries with
/// exponential backoff ([`FIRST_BACKOFF`] to [`MAX_BACKOFF`]), always with the newest one.
/// On stop, writes what is newest once more and returns whether that final write
/// succeeded (or had nothing new to write).
pub async fn checkpoint_writer(mut w: Writer) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let mut last_position: Option<String> = None;
    loop {
        let finishing = w.stop.is_cancelled();
        let frozen = w.frozen.borrow_and_update().clone();
        if let Some(frozen) =
            frozen.filter(|f| last_position.as_deref() != Some(f.position.as_str()))
        {
            match w.write(Arc::clone(&frozen)).await {
                Ok(()) => {
                    last_position = Some(frozen.position.clone());
                    backoff = FIRST_BACKOFF;
                    w.metrics.control.checkpoint_attempted(true);
                    let _ = w.written.send(frozen);
                }
                Err(error) => {
                    w.metrics.checkpoint_failures.inc();
                    w.metrics.control.checkpoint_attempted(false);
                    if finishing {
                        tracing::error!(error = %error, "final checkpoint failed; the next start resumes from the previous one");
                        return false;
                    }
                    tracing::warn!(error = %error, retry_in = ?backoff, "checkpoint failed; processing continues");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = w.stop.cancelled() => {}
                    }
                    backoff = next_backoff(backoff);
                    continue;
                }
            }
        }
        if finishing {
            return true;
        }
        tokio::select! {
            changed = w.frozen.changed() => if changed.is_err() && !w.stop.is_cancelled() { return true },
            () = w.stop.cancelled() => {}
        }
    }
}

impl Writer {
    /// One checkpoint transaction (migrating first if that is still owed), with metrics.
    async fn write(&mut self, frozen: Arc<Frozen>) -> Result<(), CheckpointError> {
        if !self.migrated {
            self.store.migrate().await?;
            self.migrated = true;
        }
        let written = self
            .store
            .write(frozen, &self.layout, self.keep, self.base)
            .await?;
        self.base = Some(written.base_id);
        self.metrics.checkpoints.inc();
        self.metrics
            .checkpoint_duration
            .observe(written.duration.as_secs_f64());
        self.metrics.checkpoint_size.observe(written.bytes as f64);
        self.metrics
            .checkpoint_last_success
            .set(crate::wall_clock::unix_ms() as f64 / 1000.0);
        self.metrics
            .checkpoint_stores
            .observe(written.stores as f64);
        tracing::debug!(id = written.id, bytes = written.bytes, stores = written.stores, duration = ?written.duration, "checkpoint written");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregateConfig;
    use crate::events::TopicRole;

    #[test]
    fn backoff_doubles_from_half_a_second_to_eight() {
        let mut waits = vec![FIRST_BACKOFF];
        for _ in 0..6 {
            waits.push(next_backoff(*waits.last().expect("one")));
        }
        let secs: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
    }

    /// With the database down, a checkpoint fails and counts; stopped while backing off, the
    /// writer tries once more and returns (paused time: no backoff is slept for real).
    #[tokio::test(start_paused = true)]
    async fn a_dead_database_is_retried_with_backoff_and_the_writer_still_stops() {
        let layout = Layout::new(vec![
            (TopicRole::Orders, "o".into(), 1),
            (TopicRole::Inventory, "i".into(), 1),
            (TopicRole::Activity, "a".into(), 1),
        ]);
        // Nothing listens on port 1: every attempt fails at once.
        let store = CheckpointStore::connect_lazy("postgres://postgres@127.0.0.1:1/none", "g")
            .expect("a lazy pool");
        let state = State::new(Arc::new(AggregateConfig::default()));
        let (frozen_tx, frozen) = watch::channel(Some(Arc::new(Frozen::whole(&state, &layout))));
        let (written, mut written_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let writer = tokio::spawn(checkpoint_writer(Writer {
            store,
            layout,
            keep: crate::checkpoint::Keep {
                newest: 3,
                hourly: 0,
            },
            frozen,
            written,
            metrics: Arc::clone(&metrics),
            migrated: true,
            stop: stop.clone(),
            base: None,
        }));
        let failures = || metrics.checkpoint_failures.get();
        for _ in 0..600 {
            if failures() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(failures() >= 1, "the first attempt failed");
        // Stopped while backing off: one last attempt, then it returns (no endless retry).
        stop.cancel();
        drop(frozen_tx);
        let final_written = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer stops")
            .expect("no panic");
        assert!(!final_written, "the failed final checkpoint is reported");
        assert!(written_rx.try_recv().is_err(), "nothing was written");
    }
}
