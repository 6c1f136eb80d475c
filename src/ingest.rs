//! The ingest loop: the only Kafka consumer. It owns the [`State`] (one writer, no lock),
//! reads every assigned partition from the checkpoint's position, decodes, applies, sends
//! poison records to the dead-letter topic, and answers snapshot requests between polls.
//!
//! Runs on a dedicated OS thread with rdkafka's `BaseConsumer`: no async overhead per
//! record, and a slow reader can never block it (requests are served from a channel, the
//! state is never shared). Checkpoints are frozen here (the owner serialises) and handed to
//! the writer task through a `watch` (newest wins); after a write the writer sends the
//! positions back and they are committed to the consumer group, for lag tools only.

use crate::aggregate::view::SentLists;
use crate::aggregate::{Applied, Changes, Layout, PartitionKey, Position, RecordRef, State};
use crate::checkpoint::Frozen;
use crate::events::{Codec, StoreId, TopicRole};
use crate::kafka::{self, KafkaSettings};
use crate::metrics::{DECODE_ERROR_LABELS, Metrics};
use crate::stream::{Frame, FrameLog, LogLimits, sse_event};
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// A request to the state's owner.
#[derive(Debug)]
pub enum Request {
    /// A JSON snapshot of all stores (`None`) or one; replies `None` for an unknown store.
    Snapshot {
        /// Scope.
        store: Option<StoreId>,
        /// Where the JSON goes.
        reply: oneshot::Sender<Option<Arc<Vec<u8>>>>,
    },
    /// A live subscription: what to send first, and the frames after it.
    Subscribe {
        /// Scope.
        store: Option<StoreId>,
        /// The client's last event id, if any.
        since: Option<String>,
        /// Where the answer goes.
        reply: oneshot::Sender<Subscription>,
    },
}

/// The start of a live subscription, decided by the resume rules (docs/api.md). The
/// receiver is subscribed in the same step as the start is chosen, so nothing is missed
/// and nothing is sent twice.
#[derive(Debug)]
pub enum Subscription {
    /// Rules 1, 3 and 5: a snapshot (`event` is `snapshot`, or `resync` when the id was not
    /// understood), then the frames received.
    Snapshot {
        /// `snapshot` or `resync`.
        event: &'static str,
        /// The encoded SSE event.
        bytes: Bytes,
        /// Frames after it.
        live: broadcast::Receiver<Arc<Frame>>,
    },
    /// Rule 2: the frames after the client's id, then the frames received.
    Replay {
        /// Frames after the client's id (all scopes; filter by scope when sending).
        frames: Vec<Arc<Frame>>,
        /// Frames after those.
        live: broadcast::Receiver<Arc<Frame>>,
    },
    /// Rule 4: the client has seen a position this process has not reached.
    Ahead {
        /// The client's position.
        wanted: Position,
    },
    /// No event of that store yet.
    UnknownStore,
}

/// What the ingest loop reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Partitions assigned and reading.
    pub assigned: bool,
    /// The position of the state.
    pub position: Position,
    /// Newest event time applied.
    pub newest_event_time: i64,
}

/// Everything the loop needs.
pub struct Ingest {
    /// Broker and topics.
    pub kafka: KafkaSettings,
    /// Consumer group (offset commits for lag tools).
    pub group_id: String,
    /// Where poison records go.
    pub dead_letter_topic: String,
    /// The decoder.
    pub codec: Codec,
    /// Partitions read.
    pub layout: Layout,
    /// The state to continue from (a restored checkpoint, or empty).
    pub state: State,
    /// How often to freeze a checkpoint.
    pub checkpoint_interval: Duration,
    /// Frozen checkpoints for the writer (newest wins).
    pub checkpoints: watch::Sender<Option<Arc<Frozen>>>,
    /// Positions the writer has made durable, to commit to the group.
    pub written: mpsc::UnboundedReceiver<Arc<Frozen>>,
    /// Snapshot requests.
    pub requests: mpsc::Receiver<Request>,
    /// Status for readiness.
    pub status: watch::Sender<Status>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Stop reading (then a final checkpoint is frozen).
    pub stop: CancellationToken,
    /// Shortest time between frames under load.
    pub frame_interval: Duration,
    /// Bounds of the frame log.
    pub log_limits: LogLimits,
    /// The zero of frame build times (the log's age bound).
    pub started: Instant,
    /// Where frames are published.
    pub frames: broadcast::Sender<Arc<Frame>>,
}

struct DeadLetterContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => Metrics::inc(&self.metrics.dead_lettered),
            Err((error, record)) => {
                Metrics::inc(&self.metrics.dead_letter_failures);
                tracing::error!(error = %error, partition = record.partition(), offset = record.offset(), "failed to dead-letter a poison record; it stays in its source topic");
            }
        }
    }
}

fn role_index(role: TopicRole) -> usize {
    match role {
        TopicRole::Orders => 0,
        TopicRole::Inventory => 1,
        TopicRole::Activity => 2,
    }
}

/// The frames this process has built: their sequence, the log, and the lists their
/// clients hold (so a frame carries only the lists that changed).
struct Frames {
    seq: u64,
    log: FrameLog,
    sent_lists: SentLists,
}

impl Ingest {
    /// Runs until `stop`; returns the final frozen checkpoint. Blocking: run on its own
    /// thread.
    pub fn run(mut self) -> Result<Arc<Frozen>, kafka::KafkaError> {
        let consumer: BaseConsumer = kafka::consumer_config(&self.kafka, &self.group_id)
            .create()
            .map_err(kafka::KafkaError::Config)?;
        let dead_letters: ThreadedProducer<DeadLetterContext> =
            kafka::producer_config(&self.kafka, Duration::from_secs(30))
                .create_with_context(DeadLetterContext {
                    metrics: Arc::clone(&self.metrics),
                })
                .map_err(kafka::KafkaError::Config)?;
        let mut assignment = TopicPartitionList::new();
        for (role, name, count) in self.layout.topics() {
            for partition in 0..*count {
                let next = self.state.position().next_offset(PartitionKey {
                    role: *role,
                    partition,
                });
                let offset = if next > 0 {
                    Offset::Offset(next)
                } else {
                    Offset::Beginning
                };
                assignment
                    .add_partition_offset(name, partition, offset)
                    .map_err(kafka::KafkaError::Request)?;
            }
        }
        consumer
            .assign(&assignment)
            .map_err(kafka::KafkaError::Request)?;
        tracing::info!(position = %self.layout.encode(self.state.position()), "partitions assigned");

        let roles: Vec<(String, TopicRole)> = self
            .layout
            .topics()
            .iter()
            .map(|(role, name, _)| (name.clone(), *role))
            .collect();
        let mut changes = Changes::default();
        let mut cache: HashMap<Option<StoreId>, Arc<Vec<u8>>> = HashMap::new();
        let mut next_checkpoint = Instant::now() + self.checkpoint_interval;
        let mut next_status = Instant::now();
        let mut applied_since_cache = false;
        let mut frames = Frames {
            seq: 0,
            log: FrameLog::new(self.log_limits),
            sent_lists: SentLists::new(),
        };
        let mut last_frame = Instant::now() - self.frame_interval;

        while !self.stop.is_cancelled() {
            // Read a batch: block briefly for the first record, then take what is queued.
            let mut budget = 2_000;
            let mut wait = Duration::from_millis(5);
            while budget > 0 {
                let Some(result) = consumer.poll(wait) else {
                    break;
                };
                wait = Duration::ZERO;
                budget -= 1;
                let message = match result {
                    Ok(message) => message,
                    Err(error) => {
                        Metrics::inc(&self.metrics.consumer_errors);
                        tracing::warn!(error = %error, "consumer error");
                        continue;
                    }
                };
                let Some(role) = roles
                    .iter()
                    .find(|(name, _)| name == message.topic())
                    .map(|(_, role)| *role)
                else {
                    continue;
                };
                Metrics::inc(&self.metrics.records[role_index(role)]);
                let at = RecordRef {
                    partition: PartitionKey {
                        role,
                        partition: message.partition(),
                    },
                    offset: message.offset(),
                };
                let payload = message.payload().unwrap_or_default();
                match self.codec.decode(payload) {
                    Ok(event) => {
                        let outcome = self.state.apply(&event, at, &mut changes);
                        match outcome.applied {
                            Applied::Applied => Metrics::inc(&self.metrics.applied),
                            Applied::Duplicate => Metrics::inc(&self.metrics.duplicates),
                            Applied::AlreadyApplied => {}
                        }
                        if outcome.late {
                            Metrics::inc(&self.metrics.late);
                        }
                    }
                    Err(error) => {
                        let label = error.label();
                        if let Some(i) = DECODE_ERROR_LABELS.iter().position(|l| *l == label) {
                            Metrics::inc(&self.metrics.decode_errors[i]);
                        }
                        tracing::warn!(error = %error, topic = message.topic(), partition = at.partition.partition, offset = at.offset, "poison record sent to the dead-letter topic");
                        let partition = at.partition.partition.to_string();
                        let offset = at.offset.to_string();
                        let reason = error.to_string();
                        let headers = OwnedHeaders::new()
                            .insert(Header {
                                key: "storepulse-source-topic",
                                value: Some(message.topic()),
                            })
                            .insert(Header {
                                key: "storepulse-source-partition",
                                value: Some(&partition),
                            })
                            .insert(Header {
                                key: "storepulse-source-offset",
                                value: Some(&offset),
                            })
                            .insert(Header {
                                key: "storepulse-error",
                                value: Some(label),
                            })
                            .insert(Header {
                                key: "storepulse-reason",
                                value: Some(&reason),
                            });
                        let headers = match message.headers() {
                            Some(original) => original.iter().fold(headers, |h, header| {
                                h.insert(Header {
                                    key: header.key,
                                    value: header.value,
                                })
                            }),
                            None => headers,
                        };
                        let mut record: BaseRecord<'_, [u8], [u8]> =
                            BaseRecord::to(&self.dead_letter_topic)
                                .payload(payload)
                                .headers(headers);
                        if let Some(key) = message.key() {
                            record = record.key(key);
                        }
                        if let Err((error, _)) = dead_letters.send(record) {
                            Metrics::inc(&self.metrics.dead_letter_failures);
                            tracing::error!(error = %error, partition = at.partition.partition, offset = at.offset, "failed to queue a poison record for the dead-letter topic; it stays in its source topic");
                        }
                        // Never stall the partition: the position moves past it either way.
                        self.state.skip(at);
                    }
                }
                applied_since_cache = true;
            }
            if applied_since_cache {
                cache.clear();
                applied_since_cache = false;
            }
            if !changes.is_empty() && last_frame.elapsed() >= self.frame_interval {
                self.emit_frame(&mut frames, &mut changes);
                last_frame = Instant::now();
            }
            while let Ok(request) = self.requests.try_recv() {
                let (store, reply) = match request {
                    Request::Snapshot { store, reply } => (store, reply),
                    Request::Subscribe {
                        store,
                        since,
                        reply,
                    } => {
                        // Pending changes go out first, so the snapshot's position is the
                        // last frame's id: the next frame is new to this subscriber.
                        if !changes.is_empty() {
                            self.emit_frame(&mut frames, &mut changes);
                            last_frame = Instant::now();
                        }
                        let subscription = self.subscribe(store, since, &frames.log, &mut cache);
                        let _ = reply.send(subscription);
                        continue;
                    }
                };
                let json = match cache.get(&store) {
                    Some(json) => {
                        Metrics::inc(&self.metrics.snapshots_cached);
                        Some(Arc::clone(json))
                    }
                    None => self
                        .state
                        .snapshot(&self.layout, store.as_ref())
                        .map(|snapshot| {
                            Metrics::inc(&self.metrics.snapshots_built);
                            let json =
                                Arc::new(serde_json::to_vec(&snapshot).unwrap_or_else(|e| {
                                    panic!("a snapshot always serialises: {e}")
                                }));
                            cache.insert(store, Arc::clone(&json));
                            json
                        }),
                };
                let _ = reply.send(json);
            }
            while let Ok(written) = self.written.try_recv() {
                let mut offsets = TopicPartitionList::new();
                for (topic, partition, next) in &written.partitions {
                    if *next > 0 {
                        let _ =
                            offsets.add_partition_offset(topic, *partition, Offset::Offset(*next));
                    }
                }
                if offsets.count() > 0
                    && let Err(error) = consumer.commit(&offsets, CommitMode::Async)
                {
                    tracing::debug!(error = %error, "offset commit for lag tools failed");
                }
            }
            let now = Instant::now();
            if now >= next_checkpoint {
                self.checkpoints
                    .send_replace(Some(Arc::new(Frozen::of(&self.state, &self.layout))));
                next_checkpoint = now + self.checkpoint_interval;
            }
            if now >= next_status {
                self.publish_status();
                next_status = now + Duration::from_millis(200);
            }
        }
        let last = Arc::new(Frozen::of(&self.state, &self.layout));
        self.checkpoints.send_replace(Some(Arc::clone(&last)));
        use rdkafka::producer::Producer;
        if let Err(error) = dead_letters.flush(Duration::from_secs(5)) {
            tracing::error!(error = %error, "dead-letter records still queued at shutdown");
        }
        Ok(last)
    }

    /// Builds the frame of the pending changes, logs it and publishes it.
    fn emit_frame(&self, frames: &mut Frames, changes: &mut Changes) {
        frames.seq += 1;
        let frame = Arc::new(self.build_frame(frames.seq, changes, &mut frames.sent_lists));
        *changes = Changes::default();
        frames.log.push(Arc::clone(&frame));
        self.metrics
            .frame_log_bytes
            .store(frames.log.bytes() as u64, Ordering::Relaxed);
        Metrics::inc(&self.metrics.frames);
        self.metrics
            .frame_bytes
            .fetch_add(frame.all.len() as u64, Ordering::Relaxed);
        // Never waits: a subscriber that falls behind gets `Lagged`, then catches up from
        // the log (or a snapshot).
        let _ = self.frames.send(frame);
    }

    /// Serialises the delta of `changes` once for all stores and once per changed store.
    fn build_frame(&self, seq: u64, changes: &Changes, sent_lists: &mut SentLists) -> Frame {
        let mut delta = self.state.delta(&self.layout, changes);
        delta.omit_unchanged_lists(sent_lists);
        let encode = |value: &crate::aggregate::view::Delta| {
            let json = serde_json::to_vec(value)
                .unwrap_or_else(|e| panic!("a delta always serialises: {e}"));
            Bytes::from(sse_event("delta", Some(&delta.position), &json))
        };
        let all = encode(&delta);
        let per_store: HashMap<StoreId, Bytes> = delta
            .stores
            .iter()
            .map(|(id, view)| {
                let scoped = crate::aggregate::view::Delta {
                    position: delta.position.clone(),
                    as_of: delta.as_of.clone(),
                    as_of_ms: delta.as_of_ms,
                    stores: std::collections::BTreeMap::from([(id.clone(), view.clone())]),
                    all_stores: None,
                };
                (StoreId(id.clone()), encode(&scoped))
            })
            .collect();
        let size = all.len() + per_store.values().map(Bytes::len).sum::<usize>();
        Frame {
            seq,
            id: delta.position.clone(),
            all,
            per_store,
            size,
            built_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            delta: Arc::new(delta),
        }
    }

    /// Chooses where a subscription starts (the resume rules), in the same step as it
    /// subscribes to the frames that follow.
    fn subscribe(
        &mut self,
        store: Option<StoreId>,
        since: Option<String>,
        log: &FrameLog,
        cache: &mut HashMap<Option<StoreId>, Arc<Vec<u8>>>,
    ) -> Subscription {
        let mut event = "snapshot";
        if let Some(since) = since {
            match self.layout.decode(&since) {
                Ok(wanted) => {
                    if let Some(frames) = log.after(&since) {
                        return Subscription::Replay {
                            frames,
                            live: self.frames.subscribe(),
                        };
                    }
                    if wanted
                        .compare(self.state.position())
                        .is_none_or(|o| o == std::cmp::Ordering::Greater)
                    {
                        return Subscription::Ahead { wanted };
                    }
                }
                Err(_) => event = "resync",
            }
        }
        let json = match cache.get(&store) {
            Some(json) => Arc::clone(json),
            None => {
                let Some(snapshot) = self.state.snapshot(&self.layout, store.as_ref()) else {
                    return Subscription::UnknownStore;
                };
                Metrics::inc(&self.metrics.snapshots_built);
                let json = Arc::new(
                    serde_json::to_vec(&snapshot)
                        .unwrap_or_else(|e| panic!("a snapshot always serialises: {e}")),
                );
                cache.insert(store, Arc::clone(&json));
                json
            }
        };
        let id = self.layout.encode(self.state.position());
        Subscription::Snapshot {
            event,
            bytes: Bytes::from(sse_event(event, Some(&id), &json)),
            live: self.frames.subscribe(),
        }
    }

    fn publish_status(&self) {
        self.metrics
            .newest_event_time_ms
            .store(self.state.newest_event_time(), Ordering::Relaxed);
        self.status.send_replace(Status {
            assigned: true,
            position: self.state.position().clone(),
            newest_event_time: self.state.newest_event_time(),
        });
    }
}
