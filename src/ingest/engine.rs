//! The ingest engine: the state's owner and everything that happens to it, one small
//! handler per input. The consumer thread (`ingest/mod.rs`) turns Kafka and channels into
//! calls here; the engine itself has no Kafka code, so tests drive it directly.
//!
//! | input | handler |
//! |---|---|
//! | a record's payload | [`Engine::process_record`] (decode, apply: the one place a record is processed) |
//! | a poison record | [`Engine::skip`] (after it was dead-lettered) |
//! | the end of a poll batch | [`Engine::end_batch`] (snapshot cache, frame, parked resumes) |
//!
//! | a request from HTTP | [`Engine::handle_request`] |
//! | time passing | [`Engine::tick`] (checkpoints, status) |
//!
//! Frames and snapshot events go to the fan-out's [`Hub`], which HTTP reads without a
//! round trip; the engine answers only the subscriptions the hub cannot open alone (no
//! reusable shared snapshot, rules 4 and 5), deciding them with the same `live::start`.

use super::freshness::PendingAges;
use crate::aggregate::{Applied, Changes, Layout, RecordRef, State};
use crate::checkpoint::{Chain, Frozen};
use crate::events::{Codec, DecodeError, StoreId};
use crate::fanout::{Held, Hub, Request, Serving, Status, Subscribed};
use crate::live::FrameBuilder;
use crate::metrics::Metrics;
use opentelemetry::trace::TraceContextExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storepulse_core::record::{self, Processed, Record};

/// Most sampled records a frame span links to (it counts them all).
const FRAME_LINKS: usize = 32;
use tokio::sync::{oneshot, watch};

/// Open streams per `stream.frame_interval` of the time between frames.
pub const STREAMS_PER_INTERVAL: u32 = 1_000;
/// Most times `stream.frame_interval` the time between frames grows to.
pub const MAX_FRAME_STRETCH: u32 = 10;

/// `base` stretched for `streams` open streams (see `Engine::frame_interval`).
pub fn stretched_interval(base: Duration, streams: i64) -> Duration {
    let streams = u32::try_from(streams.max(0)).unwrap_or(u32::MAX);
    base * streams
        .div_ceil(STREAMS_PER_INTERVAL)
        .clamp(1, MAX_FRAME_STRETCH)
}

/// The engine's timing and bounds.
#[derive(Clone, Copy, Debug)]
pub struct EngineSettings {
    /// Shortest time between frames under load.
    pub frame_interval: Duration,
    /// Longest wait for a client whose id is ahead (resume rule 4).
    pub resume_wait: Duration,
    /// How often to freeze a checkpoint.
    pub checkpoint_interval: Duration,
}

/// Where the engine publishes.
#[derive(Debug)]
pub struct Outputs {
    /// The live stream's shared side: frames, the log, snapshot events.
    pub hub: Arc<Hub>,
    /// Frozen checkpoints for the writer (newest wins).
    pub checkpoints: watch::Sender<Option<Arc<Frozen>>>,
    /// Status for readiness and the stream's progress events.
    pub status: watch::Sender<Status>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The state's owner.
pub struct Engine {
    state: State,
    layout: Layout,
    codec: Codec,
    settings: EngineSettings,
    out: Outputs,
    changes: Changes,
    /// The stores owed to the next checkpoint.
    chain: Chain,
    /// Sampled records since the last frame (bounded) and how many there were.
    sampled: Vec<opentelemetry::trace::SpanContext>,
    sampled_records: u64,
    /// How old what the next frame carries is (for the freshness histograms).
    pending_ages: PendingAges,
    dirty: bool,
    builder: FrameBuilder,
    serving: Serving,
    started: Instant,
    last_frame: Instant,
    next_checkpoint: Instant,
    next_status: Instant,
}

impl Engine {
    /// An engine continuing from `state` (a restored checkpoint, or empty).
    pub fn new(
        state: State,
        layout: Layout,
        codec: Codec,
        settings: EngineSettings,
        out: Outputs,
    ) -> Engine {
        let now = Instant::now();
        let serving = Serving::new(
            Arc::clone(&out.hub),
            Arc::clone(&out.metrics),
            settings.resume_wait,
        );
        Engine {
            state,
            layout,
            codec,
            settings,
            out,
            changes: Changes::default(),
            chain: Chain::default(),
            dirty: false,
            sampled: Vec::new(),
            sampled_records: 0,
            pending_ages: PendingAges::default(),
            builder: FrameBuilder::new(),
            serving,
            started: now,
            last_frame: now.checked_sub(settings.frame_interval).unwrap_or(now),
            next_checkpoint: now + settings.checkpoint_interval,
            next_status: now,
        }
    }

    /// The state (read-only).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The partition layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.out.metrics
    }

    /// The decoder (which registry schemas it knows).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The decoder, to teach it a registry's schema.
    pub fn codec_mut(&mut self) -> &mut Codec {
        &mut self.codec
    }

    /// Decodes and applies one record at `at` (`None`: a tombstone, poison). On a poison
    /// record returns the error; the caller dead-letters it and then calls [`Engine::skip`].
    pub fn process_record(
        &mut self,
        at: RecordRef,
        payload: Option<&[u8]>,
        record_time_ms: Option<i64>,
    ) -> Result<(), DecodeError> {
        self.process_traced(at, payload, record_time_ms, None)
    }

    /// [`Engine::process_record`] for a sampled record: its span gets the event id and
    /// store as attributes, and `decoded` and `applied` (with the outcome) as events.
    pub fn process_traced(
        &mut self,
        at: RecordRef,
        payload: Option<&[u8]>,
        record_time_ms: Option<i64>,
        span: Option<&tracing::Span>,
    ) -> Result<(), DecodeError> {
        self.dirty = true;
        let record = Record {
            at,
            payload,
            timestamp_ms: record_time_ms,
        };
        let Processed { event, outcome } =
            record::process(&mut self.state, &self.codec, record, &mut self.changes)?;
        if let Some(span) = span {
            crate::telemetry::decoded(span, event.event_id(), &event.store_id().0);
            crate::telemetry::applied(span, outcome_label(outcome.applied), outcome.late);
        }
        let metrics = &self.out.metrics;
        metrics.event_decoded(&event);
        match outcome.applied {
            Applied::Applied => {
                metrics.applied.inc();
                self.pending_ages.note(&event, record_time_ms);
            }
            Applied::Duplicate => {
                metrics.duplicates.inc();
            }
            Applied::Repeated => {
                metrics.repeated.inc();
            }
            Applied::Expired => {
                metrics.expired.inc();
            }
            Applied::AlreadyApplied => {}
        }
        if outcome.late {
            metrics.late.inc();
        }
        Ok(())
    }

    /// Remembers a sampled record's span for the next frame's span (the first is its
    /// parent, the others are linked; at most [`FRAME_LINKS`] kept, all counted).
    pub fn sampled(&mut self, record: opentelemetry::trace::SpanContext) {
        self.sampled_records += 1;
        if self.sampled.len() < FRAME_LINKS {
            self.sampled.push(record);
        }
    }

    /// Moves the position past a record that was not applied (a poison record, already
    /// dead-lettered): a partition never stalls.
    pub fn skip(&mut self, at: RecordRef) {
        self.dirty = true;
        self.state.skip(at);
    }

    /// After a batch of records: the cached snapshots are stale if anything moved; a frame
    /// goes out when the frame interval has passed; parked resumes are answered.
    pub fn end_batch(&mut self, now: Instant) {
        if std::mem::take(&mut self.dirty) {
            self.serving.moved();
        }
        if !self.changes.is_empty() && now >= self.last_frame + self.frame_interval() {
            self.emit_frame(now);
        }
        self.answer_parked(now);
    }

    /// The interval between frames: `stream.frame_interval` up to 1 000 open streams, then
    /// one more interval per 1 000 (10 000 streams: 10×), at most [`MAX_FRAME_STRETCH`]
    /// times. Each frame costs one write per stream, so with many streams fewer, fuller
    /// frames keep the machine (and its health and snapshot requests) responsive; a
    /// dashboard renders 5 times a second anyway.
    fn frame_interval(&self) -> Duration {
        stretched_interval(
            self.settings.frame_interval,
            self.out.metrics.control.open_streams(),
        )
    }

    /// Answers a request from HTTP.
    pub fn handle_request(&mut self, request: Request, now: Instant) {
        match request {
            Request::Snapshot { store, reply } => {
                // Pending changes go out first: the views are those of the last frame.
                if !self.changes.is_empty() {
                    self.emit_frame(now);
                }
                let mut held = Views {
                    state: &self.state,
                    layout: &self.layout,
                    builder: &mut self.builder,
                };
                let _ = reply.send(self.serving.snapshot_json(&mut held, store));
            }
            Request::Stock {
                store,
                after,
                limit,
                reply,
            } => {
                let page = self
                    .state
                    .stock_page(&self.layout, &store, after.as_deref(), limit);
                let _ = reply.send(page);
            }
            Request::Stores {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.state.store_page(&self.layout, after.as_deref(), limit));
            }
            Request::Subscribe {
                store,
                since,
                reply,
            } => self.subscribe(store, since.as_deref(), reply, now),
        }
    }

    /// Publishes the status every 200 ms; returns a frozen checkpoint when one is due (the
    /// caller publishes it with [`Engine::publish_checkpoint`] once nothing it covers is
    /// still unaccounted for).
    #[must_use]
    pub fn tick(&mut self, now: Instant) -> Option<Arc<Frozen>> {
        if now >= self.next_status {
            self.publish_status();
            self.next_status = now + Duration::from_millis(200);
        }
        (now >= self.next_checkpoint).then(|| {
            self.next_checkpoint = now + self.settings.checkpoint_interval;
            self.freeze()
        })
    }

    /// Hands a frozen checkpoint to the writer (newest wins).
    pub fn publish_checkpoint(&self, frozen: Arc<Frozen>) {
        self.out.checkpoints.send_replace(Some(frozen));
    }

    /// The state and its position as checkpoint bytes: the head and the stores changed
    /// since the last checkpoint written (every store until this process has written a
    /// whole one).
    pub fn freeze(&mut self) -> Arc<Frozen> {
        let started = Instant::now();
        self.chain.note(self.changes.stores.keys());
        let frozen = Arc::new(self.chain.freeze(&self.state, &self.layout));
        // The time ingest stood still for it (the write happens on the writer's task).
        self.out
            .metrics
            .checkpoint_freeze
            .observe(started.elapsed().as_secs_f64());
        frozen
    }

    /// A checkpoint was written: the stores it carried that have not changed since are
    /// clean.
    pub fn checkpoint_written(&mut self, written: &Frozen) {
        self.chain.written(written);
    }

    /// Builds the frame of the pending changes, logs it and publishes it.
    fn emit_frame(&mut self, now: Instant) {
        let built_ms =
            u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        self.chain.note(self.changes.stores.keys());
        let changes = std::mem::take(&mut self.changes);
        self.out
            .metrics
            .checkpoint_store_copies
            .inc_by(changes.store_copies);
        let frame = Arc::new(
            self.builder
                .build(&self.state, &self.layout, &changes, built_ms),
        );
        // The interval counts from the end of a build (as it always has): under load a build
        // takes a good part of it, and frames must not crowd out the records they report.
        self.last_frame = Instant::now();
        let frame_bytes = frame.all.len() as u64;
        let trace = self
            .sampled
            .first()
            .map(|record| record.trace_id().to_string());
        self.pending_ages.observe(
            &self.out.metrics,
            crate::wall_clock::unix_ms(),
            trace.as_deref(),
        );
        // Traced only when sampled records went into it: a `frame` span (child of the first,
        // linked to the others) and the fan-out inside it.
        let span = self.frame_span(frame.seq, frame_bytes);
        let trace = span.as_ref().map(crate::telemetry::span_context);
        let _frame = span.as_ref().map(tracing::Span::enter);
        let _deliver = span.as_ref().map(|_| {
            tracing::info_span!(
                "deliver",
                "storepulse.subscribers" = self.out.metrics.control.open_streams(),
                "storepulse.frame.bytes" = frame_bytes,
            )
            .entered()
        });
        let log_bytes = self.out.hub.publish_frame(frame, trace);
        let metrics = &self.out.metrics;
        metrics.frame_log_bytes.set(log_bytes as i64);
        metrics.frames.inc();
        metrics.frame_bytes.inc_by(frame_bytes);
        metrics.frame_size.observe(frame_bytes as f64);
    }

    /// Decides where a subscription starts (`live::start`, as the state's owner, in
    /// [`Serving`]) and subscribes it to the frames that follow in the same step.
    fn subscribe(
        &mut self,
        store: Option<StoreId>,
        since: Option<&str>,
        reply: oneshot::Sender<Subscribed>,
        now: Instant,
    ) {
        // Pending changes go out first, so a snapshot's position is the last frame's id and
        // a client whose id is the newest position finds its frame (rule 2).
        if !self.changes.is_empty() {
            self.emit_frame(now);
        }
        let mut held = Views {
            state: &self.state,
            layout: &self.layout,
            builder: &mut self.builder,
        };
        self.serving.subscribe(&mut held, store, since, reply, now);
    }

    /// Asks again for the parked subscriptions: a snapshot once the state caught up, a
    /// resync once the wait ran out (the client replaces what it holds).
    fn answer_parked(&mut self, now: Instant) {
        let held = Views {
            state: &self.state,
            layout: &self.layout,
            builder: &mut self.builder,
        };
        let ready = self.serving.ready_parked(&held, now);
        if ready.is_empty() {
            return;
        }
        // Only a subscription that starts now frames what is pending (a waiting one must
        // not build frames ahead of the frame interval).
        if !self.changes.is_empty() {
            self.emit_frame(now);
        }
        let mut held = Views {
            state: &self.state,
            layout: &self.layout,
            builder: &mut self.builder,
        };
        self.serving.start_parked(&mut held, ready);
    }

    /// The span of a frame that carries sampled records, or `None`: a child of the first
    /// sampled record, linked to the others; each of those gets a `framed` span (its child,
    /// linked back to the frame), so every sampled record's trace says which frame carried
    /// it (docs/adr/0005-traces.md).
    fn frame_span(&mut self, seq: u64, bytes: u64) -> Option<tracing::Span> {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let records = std::mem::take(&mut self.sampled_records);
        let mut sampled = std::mem::take(&mut self.sampled).into_iter();
        let first = sampled.next()?;
        let span = tracing::info_span!(
            "frame",
            "storepulse.frame.seq" = seq,
            "storepulse.frame.bytes" = bytes,
            "storepulse.frame.sampled_records" = records,
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(first));
        let frame = crate::telemetry::span_context(&span);
        for record in sampled {
            span.add_link(record.clone());
            let framed = tracing::info_span!("framed", "storepulse.frame.seq" = seq);
            let _ =
                framed.set_parent(opentelemetry::Context::new().with_remote_span_context(record));
            framed.add_link(frame.clone());
        }
        Some(span)
    }

    fn publish_status(&self) {
        self.out
            .metrics
            .newest_event_time
            .set(self.state.newest_event_time() as f64 / 1000.0);
        self.out.status.send_replace(Status {
            assigned: true,
            position: self.state.position().clone(),
            newest_event_time: self.state.newest_event_time(),
        });
    }
}

/// The engine's views as the serving half sees them: those of the last frame (the caller
/// publishes what is pending first).
struct Views<'a> {
    state: &'a State,
    layout: &'a Layout,
    builder: &'a mut FrameBuilder,
}

impl Held for Views<'_> {
    fn layout(&self) -> &Layout {
        self.layout
    }

    fn position(&self) -> &crate::aggregate::Position {
        self.state.position()
    }

    fn store_known(&self, store: &StoreId) -> bool {
        self.state.stores().contains_key(store)
    }

    fn last_seq(&self) -> u64 {
        self.builder.last_seq()
    }

    fn snapshot(&mut self, store: Option<&StoreId>) -> Option<crate::aggregate::ViewsSnapshot> {
        self.builder
            .views(self.state)
            .snapshot(self.state, self.layout, store)
    }
}

/// An apply outcome as a span attribute.
fn outcome_label(applied: Applied) -> &'static str {
    match applied {
        Applied::Applied => "applied",
        Applied::Duplicate => "duplicate",
        Applied::AlreadyApplied => "already_applied",
        Applied::Repeated => "repeated",
        Applied::Expired => "expired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_interval_stretches_with_the_streams_open() {
        let base = Duration::from_millis(25);
        let ms = |streams| stretched_interval(base, streams).as_millis();
        assert_eq!(
            [0, 1, 1_000, 1_001, 2_000, 10_000, 50_000, -1].map(ms),
            [25, 25, 25, 50, 50, 250, 250, 25]
        );
    }
}
