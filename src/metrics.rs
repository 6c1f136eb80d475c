//! Process metrics: plain atomic counters and gauges, rendered in the Prometheus text
//! format at `/metrics`. Written from the ingest thread and the checkpoint writer, read by
//! HTTP; no locks.
//!
//! Labelled counters are arrays indexed by the label's own type (`TopicRole::ALL`,
//! `DecodeError::index`), so a new role or decode error is counted without a change here.

use crate::events::{DecodeError, TopicRole};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The metrics of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records read, per topic role (in `TopicRole::ALL` order; see [`Metrics::record_read`]).
    pub records: [AtomicU64; TopicRole::ALL.len()],
    /// Events applied.
    pub applied: AtomicU64,
    /// Duplicate event ids skipped.
    pub duplicates: AtomicU64,
    /// Events later than the allowed lateness.
    pub late: AtomicU64,
    /// Orders placed again, or cancelled again, under a new event id (counted once).
    pub repeated: AtomicU64,
    /// Events of a day older than every held day (changed nothing).
    pub expired: AtomicU64,
    /// Poison records waiting for the dead-letter topic to acknowledge them.
    pub dead_letters_pending: AtomicI64,
    /// How long the oldest of them has waited, milliseconds (0 when none waits).
    pub dead_letters_oldest_ms: AtomicI64,
    /// Poison records, per decode error (see [`Metrics::poison_record`]).
    pub decode_errors: [AtomicU64; DecodeError::LABELS.len()],
    /// Poison records delivered to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Poison records the dead-letter topic did not take (they stay in their source topic).
    pub dead_letter_failures: AtomicU64,
    /// Consumer errors reported by the client.
    pub consumer_errors: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Checkpoint attempts that failed.
    pub checkpoint_failures: AtomicU64,
    /// Duration of the last checkpoint, microseconds.
    pub checkpoint_last_micros: AtomicU64,
    /// Size of the last checkpoint's state, bytes.
    pub checkpoint_last_bytes: AtomicU64,
    /// Records between the position and the partition ends (-1 unknown).
    pub consumer_lag: AtomicI64,
    /// Newest event time applied, epoch ms.
    pub newest_event_time_ms: AtomicI64,
    /// Snapshots served from cache / serialised.
    pub snapshots_cached: AtomicU64,
    /// Snapshots serialised.
    pub snapshots_built: AtomicU64,
    /// Delta frames built.
    pub frames: AtomicU64,
    /// Bytes of the all-stores encoding of those frames.
    pub frame_bytes: AtomicU64,
    /// Bytes held by the frame log.
    pub frame_log_bytes: AtomicU64,
    /// Live streams open now.
    pub subscribers: AtomicI64,
    /// Streams that fell behind their queue and caught up from the frame log (or from a
    /// snapshot when the log had moved past them).
    pub lagged_subscribers: AtomicU64,
    /// Times a stream behind (several frames queued, or lagged) caught up from the frame
    /// log's shared pieces.
    pub catch_ups: AtomicU64,
    /// Catch-up writes that were a span of frames (shared, conflated once per scope).
    pub span_writes: AtomicU64,
    /// Streams opened from the shared log and snapshot, without a round trip to ingest.
    pub openings_shared: AtomicU64,
    /// Streams opened by the ingest engine (no fresh shared snapshot, rule 4 or 5).
    pub openings_engine: AtomicU64,
    /// Streams closed because the client took nothing for the stall timeout.
    pub stalled_disconnects: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a record read from a topic of `role`.
    pub fn record_read(&self, role: TopicRole) {
        Metrics::inc(&self.records[role.index()]);
    }

    /// Counts a poison record by its decode error.
    pub fn poison_record(&self, error: &DecodeError) {
        Metrics::inc(&self.decode_errors[error.index()]);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP storepulse_{name} {help}\n# TYPE storepulse_{name} counter"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "storepulse_{name}{labels} {value}");
            }
        };
        let roles = TopicRole::ALL.map(|role| format!("{{topic=\"{}\"}}", role.name()));
        let samples: Vec<(&str, u64)> = TopicRole::ALL
            .iter()
            .map(|role| {
                (
                    roles[role.index()].as_str(),
                    get(&self.records[role.index()]),
                )
            })
            .collect();
        counter(
            "records_total",
            "Kafka records read, by topic role.",
            &samples,
        );
        counter(
            "events_applied_total",
            "Events applied to the aggregates.",
            &[("", get(&self.applied))],
        );
        counter(
            "duplicate_events_total",
            "Events skipped as duplicates of an applied event id.",
            &[("", get(&self.duplicates))],
        );
        counter(
            "late_events_total",
            "Events older than the allowed lateness behind the newest event.",
            &[("", get(&self.late))],
        );
        counter(
            "repeated_events_total",
            "Orders placed or cancelled again under a new event id (each order counts once).",
            &[("", get(&self.repeated))],
        );
        counter(
            "expired_events_total",
            "Events of a day older than every held day: counted, changed nothing.",
            &[("", get(&self.expired))],
        );
        let labels: Vec<String> = DecodeError::LABELS
            .iter()
            .map(|l| format!("{{reason=\"{l}\"}}"))
            .collect();
        let samples: Vec<(&str, u64)> = labels
            .iter()
            .zip(&self.decode_errors)
            .map(|(l, c)| (l.as_str(), get(c)))
            .collect();
        counter(
            "poison_records_total",
            "Records that did not decode or validate, by reason.",
            &samples,
        );
        counter(
            "dead_lettered_total",
            "Poison records written to the dead-letter topic.",
            &[("", get(&self.dead_lettered))],
        );
        counter(
            "dead_letter_failures_total",
            "Poison records the dead-letter topic did not take.",
            &[("", get(&self.dead_letter_failures))],
        );
        counter(
            "consumer_errors_total",
            "Errors reported by the Kafka consumer.",
            &[("", get(&self.consumer_errors))],
        );
        counter(
            "checkpoints_total",
            "Checkpoints written.",
            &[("", get(&self.checkpoints))],
        );
        counter(
            "checkpoint_failures_total",
            "Checkpoint attempts that failed (retried with backoff).",
            &[("", get(&self.checkpoint_failures))],
        );
        counter(
            "snapshots_built_total",
            "Snapshots serialised.",
            &[("", get(&self.snapshots_built))],
        );
        counter(
            "snapshots_cached_total",
            "Snapshots served from the per-position cache.",
            &[("", get(&self.snapshots_cached))],
        );
        counter(
            "frames_total",
            "Delta frames built (each serialised once for every subscriber).",
            &[("", get(&self.frames))],
        );
        counter(
            "frame_bytes_total",
            "Bytes of the frames built, as an all-stores subscriber receives them.",
            &[("", get(&self.frame_bytes))],
        );
        counter(
            "catch_ups_total",
            "Times a stream behind caught up from the frame log's shared pieces.",
            &[("", get(&self.catch_ups))],
        );
        counter(
            "span_writes_total",
            "Catch-up writes that were a shared span of frames.",
            &[("", get(&self.span_writes))],
        );
        counter(
            "stream_openings_total",
            "Streams opened, by who chose the opening: shared (log and snapshot) or engine.",
            &[
                ("{path=\"shared\"}", get(&self.openings_shared)),
                ("{path=\"engine\"}", get(&self.openings_engine)),
            ],
        );
        counter(
            "lagged_subscribers_total",
            "Streams that fell behind their queue and caught up from the frame log (or a snapshot).",
            &[("", get(&self.lagged_subscribers))],
        );
        counter(
            "stalled_disconnects_total",
            "Streams closed because the client read nothing for the stall timeout.",
            &[("", get(&self.stalled_disconnects))],
        );
        let mut gauge = |name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP storepulse_{name} {help}\n# TYPE storepulse_{name} gauge\nstorepulse_{name} {value}"
            );
        };
        gauge(
            "consumer_lag_records",
            "Records between the position and the partition ends (-1: unknown).",
            self.consumer_lag.load(Ordering::Relaxed),
        );
        gauge(
            "newest_event_time_ms",
            "Newest event time applied, epoch milliseconds.",
            self.newest_event_time_ms.load(Ordering::Relaxed),
        );
        gauge(
            "checkpoint_last_duration_us",
            "Duration of the last checkpoint transaction.",
            get(&self.checkpoint_last_micros) as i64,
        );
        gauge(
            "checkpoint_last_bytes",
            "Size of the last checkpoint's state.",
            get(&self.checkpoint_last_bytes) as i64,
        );
        gauge(
            "frame_log_bytes",
            "Bytes held by the frame log.",
            get(&self.frame_log_bytes) as i64,
        );
        gauge(
            "subscribers",
            "Live streams open now.",
            self.subscribers.load(Ordering::Relaxed),
        );
        gauge(
            "dead_letters_pending",
            "Poison records not yet acknowledged by the dead-letter topic (no checkpoint covers them).",
            self.dead_letters_pending.load(Ordering::Relaxed),
        );
        gauge(
            "dead_letters_oldest_wait_ms",
            "How long the oldest poison record has waited for the dead-letter topic.",
            self.dead_letters_oldest_ms.load(Ordering::Relaxed),
        );
        out
    }
}
