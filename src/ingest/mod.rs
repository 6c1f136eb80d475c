//! The ingest thread: the only Kafka consumer. It reads every assigned partition from the
//! checkpoint's position and turns what happens into calls on the [`Engine`], which owns
//! the state (one writer, no lock): records, requests from HTTP, checkpoints the writer
//! has made durable, and time passing.
//!
//! Runs on a dedicated OS thread with rdkafka's `BaseConsumer`: no async overhead per
//! record, and a slow reader can never block it (requests come through a channel, the
//! state is never shared). Checkpoints are frozen by the engine and handed to the writer
//! task through a `watch` (newest wins); after a write the writer sends the positions back
//! and they are committed to the consumer group, for lag tools only.

mod dead_letter;
mod engine;
mod freshness;
mod lag;
pub mod schemas;

pub use dead_letter::DeadLetters;
pub use engine::{Engine, EngineSettings, Outputs, stretched_interval};
pub use lag::monitor_lag;

use crate::aggregate::{Layout, PartitionKey, RecordRef};
use crate::checkpoint::Frozen;
use crate::events::TopicRole;
use crate::fanout::Request;
use crate::kafka::{self, KafkaSettings};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most records handled between two looks at requests and timers.
const BATCH: usize = 2_000;

/// Longest a poll blocks when nothing is queued: bounds how long a request waits.
const POLL_WAIT: Duration = Duration::from_millis(5);

/// The consumer thread's inputs and its engine.
pub struct Ingest {
    /// Where the threads it starts are tracked.
    pub tasks: tokio_util::task::TaskTracker,
    /// Broker and topics.
    pub kafka: KafkaSettings,
    /// Consumer group (offset commits for lag tools).
    pub group_id: String,
    /// Where poison records go.
    pub dead_letter_topic: String,
    /// The state's owner.
    pub engine: Engine,
    /// Positions the writer has made durable, to commit to the group.
    pub written: mpsc::UnboundedReceiver<Arc<Frozen>>,
    /// Requests from HTTP.
    pub requests: mpsc::Receiver<Request>,
    /// Stop reading (then a final checkpoint is frozen).
    pub stop: CancellationToken,
    /// Consumer errors are logged at most once per 10 s.
    pub consumer_errors_log: crate::log_every::LogEvery,
    /// With a schema registry: its fetcher and the partitions waiting for it.
    pub schemas: Option<schemas::SchemaWait>,
}

impl Ingest {
    /// Runs until `stop`; returns the final frozen checkpoint. Blocking: run on its own
    /// thread.
    pub fn run(mut self) -> Result<Arc<Frozen>, kafka::KafkaError> {
        let consumer: kafka::Consumer =
            kafka::quiet(&kafka::consumer_config(&self.kafka, &self.group_id))?;
        let metrics = Arc::clone(self.engine.metrics());
        let dead_letters = DeadLetters::new(
            &self.kafka,
            self.dead_letter_topic.clone(),
            metrics,
            self.tasks.clone(),
        )?;
        consumer
            .assign(&assignment(self.engine.layout(), |p| {
                self.engine.state().position().next_offset(p)
            })?)
            .map_err(kafka::KafkaError::Request)?;
        tracing::info!(position = %self.engine.layout().encode(self.engine.state().position()), "partitions assigned");
        let roles: Vec<(String, TopicRole)> = self
            .engine
            .layout()
            .topics()
            .iter()
            .map(|(role, name, _)| (name.clone(), *role))
            .collect();
        // A frozen checkpoint waits here until every poison record sent before it was
        // frozen is acknowledged by the dead-letter topic.
        let mut held: Option<(Arc<Frozen>, u64)> = None;
        while !self.stop.is_cancelled() {
            if dead_letters.saturated() {
                std::thread::sleep(POLL_WAIT); // the records stay in their topics meanwhile
            } else {
                self.read_batch(&consumer, &dead_letters, &roles);
            }
            let now = Instant::now();
            self.engine.end_batch(now);
            while let Ok(request) = self.requests.try_recv() {
                self.engine.handle_request(request, now);
            }
            while let Ok(written) = self.written.try_recv() {
                self.engine.checkpoint_written(&written);
                commit_for_lag_tools(&consumer, &written);
            }
            dead_letters.retry_due(now);
            if let Some(schemas) = &mut self.schemas {
                schemas.take_answers(self.engine.codec_mut(), &consumer);
            }
            if let Some(frozen) = self.engine.tick(now) {
                held = Some((frozen, dead_letters.sent()));
            }
            if let Some((frozen, sent)) = held.take() {
                if dead_letters.acknowledged_before(sent) {
                    self.engine.publish_checkpoint(frozen);
                } else {
                    held = Some((frozen, sent));
                }
            }
        }
        dead_letters.flush();
        let last = self.engine.freeze();
        if dead_letters.acknowledged_before(dead_letters.sent()) {
            self.engine.publish_checkpoint(Arc::clone(&last));
        } else {
            tracing::error!(
                pending = self.engine.metrics().control.dead_letters_pending(),
                "final checkpoint withheld: poison records are not in the dead-letter topic yet; the next start reads them again"
            );
            if let Some((frozen, sent)) = held
                && dead_letters.acknowledged_before(sent)
            {
                self.engine.publish_checkpoint(frozen);
            }
        }
        Ok(last)
    }

    /// Reads up to [`BATCH`] records: blocks briefly for the first, then takes what is
    /// queued.
    fn read_batch(
        &mut self,
        consumer: &kafka::Consumer,
        dead_letters: &DeadLetters,
        roles: &[(String, TopicRole)],
    ) {
        let mut wait = POLL_WAIT;
        let mut first: Option<Instant> = None;
        let mut records = 0u64;
        for _ in 0..BATCH {
            let Some(result) = consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            first.get_or_insert_with(Instant::now);
            records += 1;
            match result {
                Ok(message) => self.on_record(consumer, &message, dead_letters, roles),
                Err(error) => {
                    self.engine.metrics().consumer_errors.inc();
                    // Once per 10 s: a broker that is away fails every poll.
                    if let Some(held_back) = self.consumer_errors_log.allow(Instant::now()) {
                        tracing::warn!(error = %error, similar_errors_not_logged = held_back, "consumer error (storepulse_consumer_errors_total counts them all)");
                    }
                }
            }
        }
        // From the first record in hand to the last: decode, apply, dead-letter (the wait
        // for the first is not work).
        if let Some(first) = first {
            let metrics = self.engine.metrics();
            metrics
                .batch_duration
                .observe(first.elapsed().as_secs_f64());
            metrics.batch_records.observe(records as f64);
        }
    }

    /// One record: the one place a record is processed (applied, or dead-lettered and
    /// skipped, so the position never passes a record that is not accounted for).
    fn on_record(
        &mut self,
        consumer: &kafka::Consumer,
        message: &BorrowedMessage<'_>,
        dead_letters: &DeadLetters,
        roles: &[(String, TopicRole)],
    ) {
        let Some(role) = roles
            .iter()
            .find(|(name, _)| name == message.topic())
            .map(|(_, role)| *role)
        else {
            return;
        };
        let at = RecordRef {
            partition: PartitionKey {
                role,
                partition: message.partition(),
            },
            offset: message.offset(),
        };
        if let Some(schemas) = &mut self.schemas {
            let (topic, partition) = (message.topic(), message.partition());
            // Its partition waits at an earlier record, or this one waits for its schema:
            // read again once the schema is known.
            if schemas.holds(topic, partition)
                || schemas.stop_if_unknown(
                    self.engine.codec(),
                    consumer,
                    topic,
                    partition,
                    message.offset(),
                    message.payload(),
                )
            {
                return;
            }
            // Read before a seek back took effect: already applied.
            if message.offset() < self.engine.state().position().next_offset(at.partition) {
                return;
            }
        }
        self.engine.metrics().record_read(role);
        // A span only for a record whose trace context is sampled (no exporter: none).
        let span = crate::telemetry::record_span(message, &self.group_id);
        let _entered = span.as_ref().map(tracing::Span::enter);
        let record_time_ms = message.timestamp().to_millis();
        if let Err(error) =
            self.engine
                .process_traced(at, message.payload(), record_time_ms, span.as_ref())
        {
            if let Some(span) = &span {
                crate::telemetry::fail(span, &error.to_string());
            }
            dead_letters.send(message, &error);
            self.engine.skip(at);
        } else if let Some(span) = &span {
            self.engine.sampled(crate::telemetry::span_context(span));
        }
    }
}

/// Every partition of `layout`, each from its next offset (the beginning when 0).
fn assignment(
    layout: &Layout,
    next_offset: impl Fn(PartitionKey) -> i64,
) -> Result<TopicPartitionList, kafka::KafkaError> {
    let mut list = TopicPartitionList::new();
    for (role, name, count) in layout.topics() {
        for partition in 0..*count {
            let next = next_offset(PartitionKey {
                role: *role,
                partition,
            });
            let offset = if next > 0 {
                Offset::Offset(next)
            } else {
                Offset::Beginning
            };
            list.add_partition_offset(name, partition, offset)
                .map_err(kafka::KafkaError::Request)?;
        }
    }
    Ok(list)
}

/// Commits a durable checkpoint's positions to the consumer group: for lag tools only,
/// correctness never reads them.
fn commit_for_lag_tools(consumer: &kafka::Consumer, written: &Frozen) {
    let mut offsets = TopicPartitionList::new();
    for (topic, partition, next) in &written.partitions {
        if *next > 0 {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
    }
    if offsets.count() > 0
        && let Err(error) = consumer.commit(&offsets, CommitMode::Async)
    {
        tracing::debug!(error = %error, "offset commit for lag tools failed");
    }
}
