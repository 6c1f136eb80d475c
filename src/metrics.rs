//! Process metrics on `prometheus-client`, exposed at `/metrics` in the OpenMetrics text
//! format (exemplars need it). Written from the ingest thread, the checkpoint writer, the
//! lag monitor and HTTP; read by the scrape. No lock on a per-record path: counters and
//! gauges are atomics, labelled ones are created once and kept as handles.
//!
//! Labels are types: a topic role, an event type, a decode error, an opening path or a
//! disconnect reason maps to its label in an exhaustive `match`, so a new variant cannot
//! go uncounted. The topic label is the real topic name. Histograms are observed per batch,
//! per frame or per checkpoint, never per event. docs/operations.md lists every metric.

mod control;
mod process;

pub use control::{Control, ControlCollector};

use crate::events::{DecodeError, Event, StoreId, TopicRole};
use crate::kafka::Topics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct stores given their own `scope` label on the freshness histogram; events of
/// further stores are observed under `scope="other"` (store ids come from producers, and
/// a label per id would let one bad producer grow the series without bound).
pub const MAX_SCOPE_LABELS: usize = 64;

/// The `scope` label of the all-stores view.
pub const ALL_SCOPE: &str = "all";

/// The one `scope` label of every store when stores are not named (see
/// [`Metrics::name_stores`]).
pub const STORES_SCOPE: &str = "store";

/// A gauge of seconds (or another fractional unit).
pub type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventTypeLabels {
    event_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// How a fetch of a writer schema from the registry ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaFetch {
    /// A schema our readers can read.
    Found,
    /// The registry has no such id.
    NotFound,
    /// A schema our readers cannot read.
    Incompatible,
    /// The registry did not answer (tried again).
    Failed,
}

impl SchemaFetch {
    const ALL: [SchemaFetch; 4] = [
        SchemaFetch::Found,
        SchemaFetch::NotFound,
        SchemaFetch::Incompatible,
        SchemaFetch::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            SchemaFetch::Found => "found",
            SchemaFetch::NotFound => "not_found",
            SchemaFetch::Incompatible => "incompatible",
            SchemaFetch::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

/// An exemplar's labels: the trace of a sampled record in the observed frame.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    trace_id: String,
}

/// The `event_type` labels, in [`event_type_index`] order.
const EVENT_TYPES: [&str; 4] = [
    "order_placed",
    "order_cancelled",
    "stock_changed",
    "session_seen",
];

/// An event type's place in [`EVENT_TYPES`] (exhaustive: a new event type must be added).
fn event_type_index(event: &Event) -> usize {
    match event {
        Event::OrderPlaced(_) => 0,
        Event::OrderCancelled(_) => 1,
        Event::StockChanged(_) => 2,
        Event::SessionSeen(_) => 3,
    }
}

/// Who opened a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpeningPath {
    /// From the shared frame log and snapshot, without a round trip to ingest.
    Shared,
    /// By the ingest engine (no fresh shared snapshot, rule 4 or 5).
    Engine,
}

impl OpeningPath {
    fn label(self) -> &'static str {
        match self {
            OpeningPath::Shared => "shared",
            OpeningPath::Engine => "engine",
        }
    }
}

/// Why a live stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client went away (closed the connection, or the network did).
    ClientClosed,
    /// The client took nothing for the stall timeout; the server closed it.
    Stalled,
    /// The server is shutting down.
    Shutdown,
    /// The frame feed ended (ingest stopped) or a fresh opening failed.
    FeedEnded,
    /// The token expired (a `session-expired` event was sent first).
    SessionExpired,
    /// The stream reached `stream.max_lifetime` (the client resumes by id).
    Lifetime,
}

impl DisconnectReason {
    const ALL: [DisconnectReason; 6] = [
        DisconnectReason::ClientClosed,
        DisconnectReason::Stalled,
        DisconnectReason::Shutdown,
        DisconnectReason::FeedEnded,
        DisconnectReason::SessionExpired,
        DisconnectReason::Lifetime,
    ];

    fn label(self) -> &'static str {
        match self {
            DisconnectReason::ClientClosed => "client_closed",
            DisconnectReason::Stalled => "stalled",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::FeedEnded => "feed_ended",
            DisconnectReason::SessionExpired => "session_expired",
            DisconnectReason::Lifetime => "lifetime",
        }
    }
}

/// Buckets of latencies from 1 ms to ~9 min (doubling).
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 20)
}

/// The metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    /// The control state the gauges of open streams, lag, dead letters and checkpoint
    /// failures show (read at each scrape).
    pub control: Arc<Control>,
    registry: Registry,
    records: [Counter; TopicRole::ALL.len()],
    events: [Counter; 4],
    poison: Family<ReasonLabels, Counter>,
    openings: [Counter; 2],
    disconnects: Family<ReasonLabels, Counter>,
    partition_position: Family<PartitionLabels, Gauge>,
    partition_high_watermark: Family<PartitionLabels, Gauge>,
    partition_lag: Family<PartitionLabels, Gauge>,
    freshness: Family<ScopeLabels, HistogramWithExemplars<TraceLabels>>,
    /// Store scopes given a label so far (saturates past [`MAX_SCOPE_LABELS`]).
    store_scopes: AtomicUsize,
    /// Whether stores get a `scope` label of their own (see [`Metrics::name_stores`]).
    store_labels: std::sync::atomic::AtomicBool,
    /// Events applied.
    pub applied: Counter,
    /// Duplicate event ids skipped.
    pub duplicates: Counter,
    /// Events later than the allowed lateness (applied where their minute is still held).
    pub late: Counter,
    /// Orders placed or cancelled again under a new event id (counted once).
    pub repeated: Counter,
    /// Events of a day older than every held day (changed nothing).
    pub expired: Counter,
    /// Poison records delivered to the dead-letter topic.
    pub dead_lettered: Counter,
    /// Attempts the dead-letter topic did not take (each retried).
    pub dead_letter_failures: Counter,
    /// Consumer errors reported by the client.
    pub consumer_errors: Counter,
    /// Checkpoints written.
    pub checkpoints: Counter,
    /// Checkpoint attempts that failed.
    pub checkpoint_failures: Counter,
    /// Duration of each checkpoint transaction.
    pub checkpoint_duration: Histogram,
    /// Bytes of state each checkpoint wrote (its head and the stores that changed).
    pub checkpoint_size: Histogram,
    /// Stores each checkpoint wrote (those changed since the previous one; every store in a
    /// process's first).
    pub checkpoint_stores: Histogram,
    /// Time the ingest thread stands still to freeze a checkpoint (pointer copies).
    pub checkpoint_freeze: Histogram,
    /// A cluster aggregator's slice transactions (begin to commit).
    pub slice_commit: Histogram,
    /// A cluster aggregator's takes of a slice: from fencing the previous owner to
    /// publishing the slice's frames again.
    pub slice_catch_up: Histogram,
    /// Stores the ingest thread copied because a frozen checkpoint still shared them.
    pub checkpoint_store_copies: Counter,
    /// When the last checkpoint was written, Unix seconds (0 before the first).
    pub checkpoint_last_success: FloatGauge,
    /// Newest event time applied, Unix seconds.
    pub newest_event_time: FloatGauge,
    /// Time to decode and apply one batch of records.
    pub batch_duration: Histogram,
    /// Records in one batch.
    pub batch_records: Histogram,
    /// Kafka record timestamp (the producer's) → the frame that carries the record.
    pub produce_to_frame: Histogram,
    /// Snapshots served from the per-position cache.
    pub snapshots_cached: Counter,
    /// Snapshots serialised.
    pub snapshots_built: Counter,
    /// Delta frames built.
    pub frames: Counter,
    /// Bytes of the frames built, as an all-stores subscriber receives them.
    pub frame_bytes: Counter,
    /// Size of each frame (all-stores encoding).
    pub frame_size: Histogram,
    /// Bytes held by the frame log.
    pub frame_log_bytes: Gauge,
    /// Streams refused because the subscriber cap was reached.
    pub refused_streams: Counter,
    /// Failed `accept` calls (e.g. out of file descriptors), each followed by a back-off.
    pub accept_errors: Counter,
    /// Streams that fell behind their queue and caught up from the frame log.
    pub lagged_subscribers: Counter,
    /// A cluster edge's slices reloaded from the changelog (a frame did not continue).
    pub slice_reloads: Counter,
    /// A cluster aggregator's slices: owned now.
    pub slices_owned: Gauge,
    /// HTTP connections open now, by protocol.
    connections: Family<ProtocolLabels, Gauge>,
    /// Schema fetches from the registry, by outcome.
    schema_fetches: Family<OutcomeLabels, Counter>,
    /// Partitions stopped at a record whose schema is being fetched.
    pub schema_waiting_partitions: Gauge,
    /// Registry ids the codec remembers (schemas and refusals).
    pub registry_schemas_held: Gauge,
    /// 1 while the registry does not answer a fetch (it is being tried again).
    pub schema_registry_down: Gauge,
    /// Live streams open on every store and the rollup.
    pub watchers_rollup: Gauge,
    /// Stores with at least one live stream open on them.
    pub watched_stores: Gauge,
    /// The most live streams open on one store.
    pub watchers_most: Gauge,
    /// Slices this aggregator took (at start or by a rebalance).
    pub slices_taken: Counter,
    /// Slices this aggregator dropped because Kafka fenced its producer (another owns them).
    pub slices_fenced: Counter,
    /// Slices the group revoked from this aggregator (a rebalance, or its membership lost).
    pub slices_revoked: Counter,
    /// Times a stream behind caught up from the frame log's shared pieces.
    pub catch_ups: Counter,
    /// Catch-up writes that were a span of frames (conflated once per scope, shared).
    pub span_writes: Counter,
    /// Openings that were a resync (rule 5: an id of another layout, or not an id).
    pub resyncs: Counter,
}

impl Default for Metrics {
    /// With the default topic names (tests).
    fn default() -> Self {
        Metrics::new(&crate::kafka::KafkaSettings::default().topics)
    }
}

/// Registers each `(name, help, metric)`.
fn register_all<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    metrics: &[(&str, &str, &M)],
) {
    for (name, help, metric) in metrics {
        r.register(*name, *help, (*metric).clone());
    }
}

/// Registers each `(name, help, metric)` in `unit`.
fn register_all_in<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    unit: Unit,
    metrics: &[(&str, &str, &M)],
) {
    for (name, help, metric) in metrics {
        r.register_with_unit(*name, *help, unit.clone(), (*metric).clone());
    }
}

/// The metrics with labels, registered, with the labels known up front created at zero.
struct Labeled {
    records: [Counter; 3],
    events: [Counter; EVENT_TYPES.len()],
    poison: Family<ReasonLabels, Counter>,
    openings: [Counter; 2],
    disconnects: Family<ReasonLabels, Counter>,
    freshness: Family<ScopeLabels, HistogramWithExemplars<TraceLabels>>,
}

impl Labeled {
    fn register(r: &mut Registry, topics: &Topics) -> Labeled {
        let records_family = Family::<TopicLabels, Counter>::default();
        r.register(
            "records",
            "Kafka records read, by topic",
            records_family.clone(),
        );
        let records = TopicRole::ALL.map(|role| {
            records_family.get_or_create_owned(&TopicLabels {
                topic: topics.name(role).to_owned(),
            })
        });
        let events_family = Family::<EventTypeLabels, Counter>::default();
        r.register(
            "events",
            "Events decoded, by type (before dedup)",
            events_family.clone(),
        );
        let events = EVENT_TYPES
            .map(|event_type| events_family.get_or_create_owned(&EventTypeLabels { event_type }));
        let poison = Family::<ReasonLabels, Counter>::default();
        r.register(
            "poison_records",
            "Records that did not decode or validate, by reason (each dead-lettered)",
            poison.clone(),
        );
        for reason in DecodeError::LABELS {
            let _ = poison.get_or_create_owned(&ReasonLabels { reason });
        }
        let openings_family = Family::<PathLabels, Counter>::default();
        r.register(
            "stream_openings",
            "Streams opened, by who chose the opening: shared (log and snapshot) or engine",
            openings_family.clone(),
        );
        let openings = [OpeningPath::Shared, OpeningPath::Engine]
            .map(|path| openings_family.get_or_create_owned(&PathLabels { path: path.label() }));
        let disconnects = Family::<ReasonLabels, Counter>::default();
        r.register(
            "disconnects",
            "Live streams ended, by reason",
            disconnects.clone(),
        );
        for reason in DisconnectReason::ALL {
            let _ = disconnects.get_or_create_owned(&ReasonLabels {
                reason: reason.label(),
            });
        }
        let freshness =
            Family::<ScopeLabels, HistogramWithExemplars<TraceLabels>>::new_with_constructor(
                || HistogramWithExemplars::new(latency_buckets()),
            );
        r.register_with_unit(
            "freshness",
            "Event time (occurred_at) to the frame that carries it, by scope (a store or all); the oldest event of each frame. Exemplar: a sampled record's trace",
            Unit::Seconds,
            freshness.clone(),
        );
        Labeled {
            records,
            events,
            poison,
            openings,
            disconnects,
            freshness,
        }
    }
}

impl Metrics {
    /// Every metric, registered, with the labels known up front created at zero.
    pub fn new(topics: &Topics) -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let r = root.sub_registry_with_prefix("storepulse");
        let Labeled {
            records,
            events,
            poison,
            openings,
            disconnects,
            freshness,
        } = Labeled::register(r, topics);
        let m = Metrics {
            control: Arc::new(Control::default()),
            records,
            events,
            poison,
            openings,
            disconnects,
            freshness,
            store_scopes: AtomicUsize::new(0),
            store_labels: std::sync::atomic::AtomicBool::new(true),
            partition_position: Family::default(),
            partition_high_watermark: Family::default(),
            partition_lag: Family::default(),
            applied: Counter::default(),
            duplicates: Counter::default(),
            late: Counter::default(),
            repeated: Counter::default(),
            expired: Counter::default(),
            dead_lettered: Counter::default(),
            dead_letter_failures: Counter::default(),
            consumer_errors: Counter::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
            checkpoint_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            checkpoint_size: Histogram::new(exponential_buckets(1024.0, 2.0, 18)),
            checkpoint_stores: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            checkpoint_freeze: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            slice_commit: Histogram::new(exponential_buckets(0.000_5, 2.0, 14)),
            slice_catch_up: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            checkpoint_store_copies: Counter::default(),
            checkpoint_last_success: FloatGauge::default(),
            newest_event_time: FloatGauge::default(),
            batch_duration: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            produce_to_frame: Histogram::new(latency_buckets()),
            snapshots_cached: Counter::default(),
            snapshots_built: Counter::default(),
            frames: Counter::default(),
            frame_bytes: Counter::default(),
            frame_size: Histogram::new(exponential_buckets(64.0, 2.0, 16)),
            frame_log_bytes: Gauge::default(),
            refused_streams: Counter::default(),
            accept_errors: Counter::default(),
            lagged_subscribers: Counter::default(),
            slice_reloads: Counter::default(),
            slices_owned: Gauge::default(),
            connections: Family::default(),
            schema_fetches: Family::default(),
            schema_waiting_partitions: Gauge::default(),
            registry_schemas_held: Gauge::default(),
            schema_registry_down: Gauge::default(),
            watchers_rollup: Gauge::default(),
            watched_stores: Gauge::default(),
            watchers_most: Gauge::default(),
            slices_taken: Counter::default(),
            slices_fenced: Counter::default(),
            slices_revoked: Counter::default(),
            catch_ups: Counter::default(),
            span_writes: Counter::default(),
            resyncs: Counter::default(),
            registry: Registry::default(),
        };
        r.register_collector(Box::new(ControlCollector(Arc::clone(&m.control))));
        m.register_ingest(r);
        m.register_lag(r);
        m.register_checkpoints(r);
        m.register_stream(r);
        m.register_stream_sizes(r);
        Metrics {
            registry: root,
            ..m
        }
    }

    /// The consumer's and the aggregates' metrics: records and events, dead letters, lag.
    fn register_ingest(&self, r: &mut Registry) {
        let counters: [(&str, &str, &Counter); 8] = [
            (
                "events_applied",
                "Events applied to the aggregates",
                &self.applied,
            ),
            (
                "duplicate_events",
                "Events skipped as duplicates of an applied event id",
                &self.duplicates,
            ),
            (
                "late_events",
                "Events older than the allowed lateness behind the newest event",
                &self.late,
            ),
            (
                "repeated_events",
                "Orders placed or cancelled again under a new event id (each order counts once)",
                &self.repeated,
            ),
            (
                "expired_events",
                "Events of a day older than every held day: counted, changed nothing",
                &self.expired,
            ),
            (
                "dead_lettered",
                "Poison records the dead-letter topic acknowledged",
                &self.dead_lettered,
            ),
            (
                "dead_letter_failures",
                "Attempts the dead-letter topic did not take (each retried; the record is kept)",
                &self.dead_letter_failures,
            ),
            (
                "consumer_errors",
                "Errors reported by the Kafka consumer",
                &self.consumer_errors,
            ),
        ];
        register_all(r, &counters);
        let histograms: [(&str, &str, Unit, &Histogram); 1] = [(
            "batch_duration",
            "Decoding and applying one batch of records (up to 2 000)",
            Unit::Seconds,
            &self.batch_duration,
        )];
        for (name, help, unit, histogram) in histograms {
            r.register_with_unit(name, help, unit, histogram.clone());
            // A count, not a unit: named as documented (no `_records` suffix twice).
            r.register(
                "batch_records",
                "Records in one batch",
                self.batch_records.clone(),
            );
        }
    }

    /// How far the consumer is behind, and the dead letters it waits for.
    fn register_lag(&self, r: &mut Registry) {
        // The lag and the dead letters waiting are control state (`control.rs`).
        r.register_with_unit(
            "newest_event_timestamp",
            "Newest event time applied, Unix time",
            Unit::Seconds,
            self.newest_event_time.clone(),
        );
        let partitions: [(&str, &str, &Family<PartitionLabels, Gauge>); 3] = [
            (
                "partition_position",
                "Next offset ingest reads, per partition",
                &self.partition_position,
            ),
            (
                "partition_high_watermark",
                "The partition's end (its next offset to be written)",
                &self.partition_high_watermark,
            ),
            (
                "partition_lag_records",
                "Records between the position and the partition's end",
                &self.partition_lag,
            ),
        ];
        register_all(r, &partitions);
    }

    /// The checkpoints' metrics.
    fn register_checkpoints(&self, r: &mut Registry) {
        let counters: [(&str, &str, &Counter); 2] = [
            ("checkpoints", "Checkpoints written", &self.checkpoints),
            (
                "checkpoint_failures",
                "Checkpoint attempts that failed (retried with backoff)",
                &self.checkpoint_failures,
            ),
        ];
        register_all(r, &counters);
        let seconds: [(&str, &str, &FloatGauge); 1] = [(
            "checkpoint_last_success_timestamp",
            "When the last checkpoint was written, Unix time (0: none yet)",
            &self.checkpoint_last_success,
        )];
        register_all_in(r, Unit::Seconds, &seconds);
        let histograms: [(&str, &str, Unit, &Histogram); 2] = [
            (
                "checkpoint_duration",
                "One checkpoint transaction",
                Unit::Seconds,
                &self.checkpoint_duration,
            ),
            (
                "checkpoint_size",
                "State one checkpoint wrote: its head and the stores that changed",
                Unit::Bytes,
                &self.checkpoint_size,
            ),
        ];
        for (name, help, unit, histogram) in histograms {
            r.register_with_unit(name, help, unit, histogram.clone());
        }
        r.register_with_unit(
            "checkpoint_freeze",
            "Time the ingest thread stands still to freeze one checkpoint (pointer copies of the changed stores and the head's chunks); serialising and the write happen elsewhere",
            Unit::Seconds,
            self.checkpoint_freeze.clone(),
        );
        r.register_with_unit(
            "slice_commit",
            "A cluster aggregator's transaction of one slice frame (its records, changelog records and dead letters), begin to commit",
            Unit::Seconds,
            self.slice_commit.clone(),
        );
        r.register_with_unit(
            "slice_catch_up",
            "A cluster aggregator's take of a slice: fencing the previous owner, reading the slice's changelog head, restoring its checkpoint and applying records in silence up to the last published frame, until its frames go out again",
            Unit::Seconds,
            self.slice_catch_up.clone(),
        );
        r.register(
            "checkpoint_store_copies",
            "Stores the ingest thread copied on a change because a frozen checkpoint not yet serialised still shared them (once per store per checkpoint at most)",
            self.checkpoint_store_copies.clone(),
        );
        r.register(
            "checkpoint_stores",
            "Stores one checkpoint wrote: those changed since the previous one (every store in a process's first)",
            self.checkpoint_stores.clone(),
        );
    }

    /// The live stream's metrics: snapshots, frames, subscribers, catch-ups.
    fn register_stream(&self, r: &mut Registry) {
        let counters: [(&str, &str, &Counter); 14] = [
            (
                "snapshots_built",
                "Snapshots serialised",
                &self.snapshots_built,
            ),
            (
                "snapshots_cached",
                "Snapshots served from the per-position cache",
                &self.snapshots_cached,
            ),
            (
                "frames",
                "Delta frames built (each serialised once for every subscriber)",
                &self.frames,
            ),
            (
                "frame_bytes",
                "Bytes of the frames built, as an all-stores subscriber receives them",
                &self.frame_bytes,
            ),
            (
                "refused_streams",
                "Streams refused: 503 at the subscriber cap, 429 over a client's stream cap or request rate",
                &self.refused_streams,
            ),
            (
                "accept_errors",
                "Failed accepts (e.g. EMFILE: out of file descriptors), each followed by a back-off of 10 ms doubling to 1 s",
                &self.accept_errors,
            ),
            (
                "lagged_subscribers",
                "Streams that fell behind their queue and caught up from the frame log (or a snapshot)",
                &self.lagged_subscribers,
            ),
            (
                "slice_reloads",
                "A cluster edge's slices reloaded from the changelog because a slice frame did not continue what it held (never in a correct run)",
                &self.slice_reloads,
            ),
            (
                "slices_taken",
                "Slices a cluster aggregator took (at start or by a rebalance)",
                &self.slices_taken,
            ),
            (
                "slices_fenced",
                "Slices a cluster aggregator dropped because Kafka fenced its producer: another aggregator owns them",
                &self.slices_fenced,
            ),
            (
                "slices_revoked",
                "Slices the group revoked from a cluster aggregator (a rebalance, or its membership lost after a pause past the session timeout)",
                &self.slices_revoked,
            ),
            (
                "catch_ups",
                "Times a stream behind caught up from the frame log's shared pieces",
                &self.catch_ups,
            ),
            (
                "span_writes",
                "Catch-up writes that were a shared, conflated span of frames",
                &self.span_writes,
            ),
            (
                "resyncs",
                "Openings that were a resync snapshot (an id of another layout or not an id, or an id ahead whose wait ran out)",
                &self.resyncs,
            ),
        ];
        register_all(r, &counters);
    }

    /// How much the live stream holds and how fresh its frames are.
    fn register_stream_sizes(&self, r: &mut Registry) {
        r.register(
            "frame_log_bytes",
            "Bytes held by the frame log",
            self.frame_log_bytes.clone(),
        );
        r.register(
            "slices_owned",
            "Slices a cluster aggregator owns now",
            self.slices_owned.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open now, by protocol (http/1.1, h2)",
            self.connections.clone(),
        );
        for protocol in ["http/1.1", "h2"] {
            let _ = self.connections.get_or_create(&ProtocolLabels { protocol });
        }
        r.register(
            "schema_fetches",
            "Writer schemas fetched from the schema registry, by outcome (found, not_found, incompatible, failed: tried again)",
            self.schema_fetches.clone(),
        );
        for outcome in SchemaFetch::ALL {
            let _ = self.schema_fetches.get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            });
        }
        r.register(
            "schema_waiting_partitions",
            "Partitions stopped at a record whose writer schema is being fetched from the registry",
            self.schema_waiting_partitions.clone(),
        );
        r.register(
            "registry_schemas_held",
            "Schema registry ids remembered (schemas and refusals; at most schema_registry.max_schemas)",
            self.registry_schemas_held.clone(),
        );
        r.register(
            "schema_registry_down",
            "1 while the schema registry does not answer a fetch (it is tried again)",
            self.schema_registry_down.clone(),
        );
        r.register(
            "watchers_rollup",
            "Live streams open on every store and the rollup (this process's)",
            self.watchers_rollup.clone(),
        );
        r.register(
            "watched_stores",
            "Stores with at least one live stream of their own open (this process's)",
            self.watched_stores.clone(),
        );
        r.register(
            "watchers_most",
            "The most live streams open on one store (this process's)",
            self.watchers_most.clone(),
        );
        let histograms: [(&str, &str, Unit, &Histogram); 2] = [
            (
                "produce_to_frame",
                "Kafka record timestamp (set by the producer) to the frame carrying the record; the oldest record of each frame",
                Unit::Seconds,
                &self.produce_to_frame,
            ),
            (
                "frame_size",
                "One frame as an all-stores subscriber receives it",
                Unit::Bytes,
                &self.frame_size,
            ),
        ];
        for (name, help, unit, histogram) in histograms {
            r.register_with_unit(name, help, unit, histogram.clone());
        }
    }

    /// Counts a record read from the topic of `role`.
    pub fn record_read(&self, role: TopicRole) {
        self.records[role.index()].inc();
    }

    /// Counts a decoded event by its type.
    pub fn event_decoded(&self, event: &Event) {
        self.events[event_type_index(event)].inc();
    }

    /// Counts a poison record by its decode error.
    pub fn poison_record(&self, error: &DecodeError) {
        self.poison
            .get_or_create(&ReasonLabels {
                reason: error.label(),
            })
            .inc();
    }

    /// Counts a stream opening.
    pub fn opened(&self, path: OpeningPath) {
        self.openings[match path {
            OpeningPath::Shared => 0,
            OpeningPath::Engine => 1,
        }]
        .inc();
    }

    /// Counts a stream's end.
    pub fn disconnected(&self, reason: DisconnectReason) {
        self.disconnects
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// A connection of `protocol` opened (`1`) or ended (`-1`).
    pub fn connection_opened(&self, protocol: crate::http::server::Protocol, change: i64) {
        let protocol = match protocol {
            crate::http::server::Protocol::Http1 => "http/1.1",
            crate::http::server::Protocol::Http2 => "h2",
        };
        self.connections
            .get_or_create(&ProtocolLabels { protocol })
            .inc_by(change);
    }

    /// A schema fetch ended so.
    pub fn schema_fetch(&self, outcome: SchemaFetch) {
        self.schema_fetches
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// How many streams ended for `reason`.
    pub fn disconnects(&self, reason: DisconnectReason) -> u64 {
        self.disconnects
            .get(&ReasonLabels {
                reason: reason.label(),
            })
            .map_or(0, |c| c.get())
    }

    /// Publishes one partition's position, end and lag.
    pub fn partition(&self, topic: &str, partition: i32, position: i64, high_watermark: i64) {
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition,
        };
        self.partition_position.get_or_create(&labels).set(position);
        self.partition_high_watermark
            .get_or_create(&labels)
            .set(high_watermark);
        self.partition_lag
            .get_or_create(&labels)
            .set((high_watermark - position).max(0));
    }

    /// Whether `/metrics` may name stores (a `scope` label per store, up to
    /// [`MAX_SCOPE_LABELS`]); when not, every store's frames are observed under
    /// `scope="store"`. Named when anyone may read every store anyway (`auth.mode =
    /// "none"`), when `/metrics` needs an operator token, or when configured to.
    pub fn name_stores(&self, yes: bool) {
        self.store_labels.store(yes, Ordering::Relaxed);
    }

    /// Observes how old the oldest event of a frame's scope was when the frame went out.
    /// `store` `None` is the all-stores scope; stores past [`MAX_SCOPE_LABELS`] share
    /// `scope="other"`. The exemplar is a sampled record's trace in the frame, if any.
    pub fn observe_freshness(&self, store: Option<&StoreId>, age: Duration, trace: Option<&str>) {
        let scope = match store {
            None => ALL_SCOPE.to_owned(),
            Some(_) if !self.store_labels.load(Ordering::Relaxed) => STORES_SCOPE.to_owned(),
            Some(store) => {
                let labels = ScopeLabels {
                    scope: store.0.clone(),
                };
                let known = self.freshness.get(&labels).is_some();
                if known || self.store_scopes.fetch_add(1, Ordering::Relaxed) < MAX_SCOPE_LABELS {
                    labels.scope
                } else {
                    "other".to_owned()
                }
            }
        };
        let exemplar = trace.map(|trace_id| TraceLabels {
            trace_id: trace_id.to_owned(),
        });
        self.freshness
            .get_or_create(&ScopeLabels { scope })
            .observe(age.as_secs_f64(), exemplar, Some(SystemTime::now()));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric `/metrics` exposes is in docs/operations.md's table, and there are as
    /// many as before the registration was split by concern.
    #[test]
    fn every_metric_exposed_is_documented() {
        let operations = include_str!("../docs/operations.md");
        let text = Metrics::default().render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE storepulse_"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        // 56 registered; the freshness and per-partition families show once they have a series.
        assert_eq!(names.len(), 57, "{names:?}");
        for name in names {
            assert!(
                operations.contains(&format!("storepulse_{name}")),
                "storepulse_{name} is not in docs/operations.md"
            );
        }
    }

    #[test]
    fn every_decode_error_and_disconnect_reason_is_exposed_at_zero() {
        let text = Metrics::default().render();
        for label in DecodeError::LABELS {
            assert!(
                text.contains(&format!(
                    "storepulse_poison_records_total{{reason=\"{label}\"}} 0\n"
                )),
                "{label}"
            );
        }
        for reason in DisconnectReason::ALL {
            assert!(text.contains(&format!(
                "storepulse_disconnects_total{{reason=\"{}\"}} 0\n",
                reason.label()
            )));
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    }

    #[test]
    fn the_topic_label_is_the_real_topic_name() {
        let topics = Topics {
            orders: "shop.orders.v1".into(),
            inventory: "shop.inventory".into(),
            activity: "shop.activity".into(),
        };
        let metrics = Metrics::new(&topics);
        metrics.record_read(TopicRole::Orders);
        metrics.record_read(TopicRole::Orders);
        let text = metrics.render();
        assert!(
            text.contains("storepulse_records_total{topic=\"shop.orders.v1\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("storepulse_records_total{topic=\"shop.activity\"} 0\n"));
    }

    #[test]
    fn unnamed_stores_share_one_scope() {
        let metrics = Metrics::new(&crate::kafka::KafkaSettings::default().topics);
        metrics.name_stores(false);
        for store in ["store-berlin", "store-paris"] {
            metrics.observe_freshness(Some(&store.into()), Duration::from_millis(5), None);
        }
        metrics.observe_freshness(None, Duration::from_millis(5), None);
        let text = metrics.render();
        assert!(!text.contains("store-berlin") && !text.contains("store-paris"));
        assert!(text.contains("storepulse_freshness_seconds_count{scope=\"store\"} 2\n"));
        assert!(text.contains("storepulse_freshness_seconds_count{scope=\"all\"} 1\n"));
    }

    #[test]
    fn freshness_scopes_are_bounded_and_carry_a_trace_exemplar() {
        let metrics = Metrics::default();
        metrics.observe_freshness(
            None,
            Duration::from_millis(150),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        );
        for n in 0..(MAX_SCOPE_LABELS + 10) {
            metrics.observe_freshness(
                Some(&StoreId(format!("store-{n}"))),
                Duration::from_millis(20),
                None,
            );
        }
        let text = metrics.render();
        assert!(
            text.contains("storepulse_freshness_seconds_bucket{le=\"0.256\",scope=\"all\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.15"),
            "{text}"
        );
        assert!(text.contains("storepulse_freshness_seconds_count{scope=\"other\"} 10\n"));
        assert!(text.contains("storepulse_freshness_seconds_count{scope=\"store-0\"} 1\n"));
        assert!(!text.contains(&format!("scope=\"store-{MAX_SCOPE_LABELS}\"")));
    }

    #[test]
    fn partition_gauges_carry_topic_and_partition() {
        let metrics = Metrics::default();
        metrics.partition("orders", 3, 90, 100);
        let text = metrics.render();
        assert!(
            text.contains(
                "storepulse_partition_lag_records{topic=\"orders\",partition=\"3\"} 10\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "storepulse_partition_high_watermark{topic=\"orders\",partition=\"3\"} 100\n"
        ));
    }

    #[test]
    fn process_metrics_are_exposed() {
        let text = Metrics::default().render();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_threads ",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .parse()
                .expect("a number");
            assert!(value >= 0.0, "{name}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(
            rss > 1_000_000.0,
            "a test process holds more than 1 MB: {rss}"
        );
    }
}
