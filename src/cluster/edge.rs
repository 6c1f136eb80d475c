//! The edge's thread (ADR 0007, decision 11): loads every slice from the changelog, then
//! reads the frames topic from a little before the oldest head it loaded, turning each
//! slice frame into a frame of the hub (the same hub `serve` feeds) and answering the
//! HTTP side's requests with the same serving half as `serve`'s engine.

use crate::aggregate::{Layout, Position, ViewsSnapshot};
use crate::events::StoreId;
use crate::fanout::{Held, Hub, Request, Serving, Status};
use crate::kafka::{self, KafkaError, KafkaSettings};
use crate::metrics::Metrics;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storepulse_core::aggregate::AggregateConfig;
use storepulse_core::cluster::edge::{Applied, Edge};
use storepulse_core::cluster::wire::SliceFrame;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How far before the oldest head loaded the frames are read from: a head and the frame
/// of the same transaction carry timestamps of the same producer, milliseconds apart.
const FRAMES_BEFORE_HEADS: Duration = Duration::from_secs(30);

/// Longest the changelog may take to read.
const CHANGELOG_READ: Duration = Duration::from_secs(120);

/// Most frames handled between two looks at requests.
const BATCH: usize = 500;

/// Longest a poll blocks when nothing is queued: bounds how long a request waits.
const POLL_WAIT: Duration = Duration::from_millis(5);

/// The edge's inputs.
pub struct EdgeRun {
    /// Broker.
    pub kafka: KafkaSettings,
    /// The cluster's topics.
    pub cluster: crate::config::ClusterSection,
    /// The inputs' layout (ids are positions in it).
    pub layout: Layout,
    /// Business rules (the rollup's list lengths, the time zones its snapshot lists).
    pub aggregate: Arc<AggregateConfig>,
    /// Where frames go.
    pub hub: Arc<Hub>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Readiness and position.
    pub status: watch::Sender<Status>,
    /// Requests from HTTP.
    pub requests: mpsc::Receiver<Request>,
    /// Longest wait for a client whose id is ahead (resume rule 4).
    pub resume_wait: Duration,
    /// Stop.
    pub stop: CancellationToken,
}

/// The edge's views as the serving half sees them.
struct EdgeViews<'a>(&'a Edge);

impl Held for EdgeViews<'_> {
    fn layout(&self) -> &Layout {
        self.0.layout()
    }

    fn position(&self) -> &Position {
        self.0.position()
    }

    fn store_known(&self, store: &StoreId) -> bool {
        self.0.store_known(store)
    }

    fn last_seq(&self) -> u64 {
        self.0.last_seq()
    }

    fn snapshot(&mut self, store: Option<&StoreId>) -> Option<ViewsSnapshot> {
        self.0.snapshot(store)
    }
}

impl EdgeRun {
    /// Runs until stopped.
    pub fn run(mut self) -> Result<(), KafkaError> {
        let started = Instant::now();
        let slices: Vec<i32> = (0..self.slices()).collect();
        let mut edge = Edge::new(self.layout.clone(), Arc::clone(&self.aggregate));
        let records = super::topics::read_changelog(
            &self.kafka,
            &self.cluster.slices_topic,
            &slices,
            CHANGELOG_READ,
        )?;
        let mut oldest: Option<i64> = None;
        for (_, records) in records {
            if let Some((head, time)) = records.head {
                oldest = Some(oldest.map_or(time, |o| o.min(time)));
                edge.load(head, records.views);
            }
        }
        let frames = self.frames_consumer(oldest)?;
        tracing::info!(slices = edge.slices().len(), position = %self.layout.encode(edge.position()), "edge loaded the changelog; reading frames");
        let mut serving = Serving::new(
            Arc::clone(&self.hub),
            Arc::clone(&self.metrics),
            self.resume_wait,
        );
        let mut next_status = Instant::now();
        let mut lag: Option<i64> = None;
        while !self.stop.is_cancelled() {
            let built_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.read_frames(&frames, &mut edge, &mut serving, built_ms);
            let now = Instant::now();
            while let Ok(request) = self.requests.try_recv() {
                self.handle(request, &edge, &mut serving, now);
            }
            let ready = serving.ready_parked(&EdgeViews(&edge), now);
            if !ready.is_empty() {
                serving.start_parked(&mut EdgeViews(&edge), ready);
            }
            if now >= next_status {
                next_status = now + Duration::from_secs(1);
                lag = frames_lag(&frames, &self.cluster.frames_topic).or(lag);
                self.metrics.control.set_consumer_lag(lag);
                self.status.send_replace(Status {
                    assigned: true,
                    position: edge.position().clone(),
                    newest_event_time: edge.newest_event_time(),
                });
            }
        }
        Ok(())
    }

    /// Slices: the partitions of the orders topic.
    fn slices(&self) -> i32 {
        self.layout
            .topics()
            .first()
            .map_or(0, |(_, _, count)| *count)
    }

    /// The frames topic's reader, from [`FRAMES_BEFORE_HEADS`] before the oldest head
    /// (from its beginning when there is none).
    fn frames_consumer(&self, oldest: Option<i64>) -> Result<kafka::Consumer, KafkaError> {
        let consumer: kafka::Consumer =
            kafka::quiet(&kafka::consumer_config(&self.kafka, "storepulse-edge"))?;
        let topic = &self.cluster.frames_topic;
        let mut list = TopicPartitionList::new();
        let offset = match oldest {
            None => Offset::Beginning,
            Some(time) => {
                let from = time - i64::try_from(FRAMES_BEFORE_HEADS.as_millis()).unwrap_or(0);
                let mut query = TopicPartitionList::new();
                query
                    .add_partition_offset(topic, 0, Offset::Offset(from.max(0)))
                    .map_err(KafkaError::Request)?;
                let found = consumer
                    .offsets_for_times(query, Duration::from_secs(15))
                    .map_err(KafkaError::Request)?;
                found
                    .find_partition(topic, 0)
                    .map(|p| p.offset())
                    .filter(|o| matches!(o, Offset::Offset(_)))
                    .unwrap_or(Offset::End)
            }
        };
        list.add_partition_offset(topic, 0, offset)
            .map_err(KafkaError::Request)?;
        consumer.assign(&list).map_err(KafkaError::Request)?;
        Ok(consumer)
    }

    /// Applies the frames read, by the chain rule; a gap reloads its slice.
    fn read_frames(
        &self,
        frames: &kafka::Consumer,
        edge: &mut Edge,
        serving: &mut Serving,
        built_ms: u64,
    ) {
        let mut wait = POLL_WAIT;
        for _ in 0..BATCH {
            let Some(result) = frames.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    self.metrics.consumer_errors.inc();
                    tracing::debug!(error = %error, "frames consumer error");
                    continue;
                }
            };
            let Some(bytes) = message.payload() else {
                continue;
            };
            let frame = match SliceFrame::decode(bytes) {
                Ok(frame) => frame,
                Err(error) => {
                    tracing::error!(error = %error, offset = message.offset(), "unreadable slice frame: skipped");
                    continue;
                }
            };
            match edge.apply(&frame, built_ms) {
                Applied::Frame(made) => self.publish(made, serving),
                Applied::Duplicate => {}
                Applied::Gap { held, from } => {
                    self.metrics.slice_reloads.inc();
                    tracing::warn!(
                        slice = frame.slice,
                        ?held,
                        ?from,
                        "a slice frame does not continue what this edge holds: reloading the slice from the changelog"
                    );
                    match super::topics::read_changelog(
                        &self.kafka,
                        &self.cluster.slices_topic,
                        &[frame.slice],
                        CHANGELOG_READ,
                    ) {
                        Ok(mut records) => {
                            if let Some(records) = records.remove(&frame.slice)
                                && let Some((head, _)) = records.head
                            {
                                let made = edge.reload(head, records.views, built_ms);
                                self.publish(made, serving);
                            }
                        }
                        Err(error) => tracing::error!(error = %error, "cannot reload the slice"),
                    }
                }
            }
        }
    }

    fn publish(&self, frame: storepulse_core::live::Frame, serving: &mut Serving) {
        let bytes = frame.all.len() as u64;
        let log_bytes = self.hub.publish_frame(Arc::new(frame), None);
        serving.moved();
        let metrics = &self.metrics;
        metrics.frame_log_bytes.set(log_bytes as i64);
        metrics.frames.inc();
        metrics.frame_bytes.inc_by(bytes);
        metrics.frame_size.observe(bytes as f64);
    }

    fn handle(&self, request: Request, edge: &Edge, serving: &mut Serving, now: Instant) {
        match request {
            Request::Snapshot { store, reply } => {
                let _ = reply.send(serving.snapshot_json(&mut EdgeViews(edge), store));
            }
            // Stock levels live in the aggregators' state, not in views.
            Request::Stock { reply, .. } => {
                let _ = reply.send(None);
            }
            Request::Stores {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(edge.store_page(after.as_deref(), limit));
            }
            Request::Subscribe {
                store,
                since,
                reply,
            } => serving.subscribe(&mut EdgeViews(edge), store, since.as_deref(), reply, now),
        }
    }
}

/// Records of the frames topic not read yet (one short request to the broker).
fn frames_lag(consumer: &kafka::Consumer, topic: &str) -> Option<i64> {
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_millis(200))
        .ok()?;
    let position = consumer.position().ok()?;
    let next = match position.find_partition(topic, 0)?.offset() {
        Offset::Offset(next) => next,
        _ => 0,
    };
    Some((high - next).max(0))
}
