//! One slice on an aggregator (ADR 0007, decisions 5–8, 12): its state, the frames it
//! publishes through its own transactional producer, and its checkpoints.
//!
//! A slice starts by fencing whoever held it before (`init_transactions` on the slice's
//! `transactional.id`), reads where the last published frame left the slice (its
//! changelog head), restores its newest checkpoint and applies records in silence up to
//! exactly that position; from there on each frame continues the previous one. Every
//! frame, its changelog records and the dead letters since the last one are one
//! transaction. A fenced producer means another aggregator owns the slice now: the slice
//! is dropped.

use crate::aggregate::{Changes, Layout, PartitionKey, RecordRef, State};
use crate::checkpoint::{Chain, CheckpointStore, Frozen};
use crate::events::{Codec, TopicRole};
use crate::kafka::{self, KafkaError, KafkaSettings};
use crate::metrics::Metrics;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storepulse_core::cluster::SlicePosition;
use storepulse_core::cluster::slice::SliceBuilder;
use storepulse_core::cluster::wire::{self, SliceFrame};
use storepulse_core::record::{self, Record};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Longest `init_transactions` (fencing the previous owner) and a commit may take.
const TRANSACTION_CALL: Duration = Duration::from_secs(30);

/// What every slice of an aggregator shares.
pub struct SliceContext {
    /// Broker and input topics.
    pub kafka: KafkaSettings,
    /// The inputs' layout (every slice has a partition of each topic).
    pub layout: Layout,
    /// Decoder.
    pub codec: Arc<Codec>,
    /// Business rules.
    pub aggregate: Arc<storepulse_core::aggregate::AggregateConfig>,
    /// The cluster's settings.
    pub cluster: crate::config::ClusterSection,
    /// Where poison records go.
    pub dead_letter_topic: String,
    /// Checkpoints (one group per slice on this store's pool).
    pub store: CheckpointStore,
    /// How many checkpoints are kept.
    pub keep: crate::checkpoint::Keep,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where the slices' checkpoint writers run.
    pub tasks: tokio_util::task::TaskTracker,
    /// The runtime the writers run on.
    pub runtime: tokio::runtime::Handle,
    /// Cancelled last: a slice's writer finishes its final checkpoint before it.
    pub writers_stop: CancellationToken,
}

/// Where a slice stands.
enum Phase {
    /// Applying records in silence up to the last published frame's position; records of
    /// a partition past it wait here (the partition is paused).
    CatchingUp {
        target: SlicePosition,
        held: Vec<OwnedMessage>,
    },
    /// Publishing: each frame continues the builder's previous one.
    Live { builder: Box<SliceBuilder> },
    /// Publishing, but the next frame must be whole (nothing was ever published for the
    /// slice, or a transaction failed and its frame is lost).
    Whole,
}

/// A poison record waiting for the slice's next transaction.
struct DeadLetter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

/// One slice owned by this aggregator.
pub struct Slice {
    number: i32,
    partitions: i32,
    state: State,
    changes: Changes,
    phase: Phase,
    producer: BaseProducer<kafka::QuietLogs>,
    dead_letters: Vec<DeadLetter>,
    chain: Chain,
    checkpoints: watch::Sender<Option<Arc<Frozen>>>,
    written: mpsc::UnboundedReceiver<Arc<Frozen>>,
    writer_stop: CancellationToken,
    last_publish: Instant,
    next_checkpoint: Instant,
    /// When [`Slice::start`] began: the caught-up log says how long taking it took.
    taken: Instant,
    /// The buffer each published record is encoded into (its capacity kept: a catch-up's
    /// frames are hundreds of KB, and a fresh buffer per record faulted its pages in anew).
    scratch: Vec<u8>,
}

/// Why a slice's producer can publish no more: Kafka fenced it (another producer took the
/// slice's transactional id, so another aggregator most likely owns the slice now), or it
/// failed fatally for another reason (a transaction left in a state the coordinator refuses
/// after a timed-out abort, say), when nobody else has the slice and it is best taken again
/// at once with a new producer.
#[derive(Debug)]
pub struct Lost {
    /// Fenced by a newer producer of the same transactional id.
    pub fenced: bool,
    pub reason: String,
}

impl Slice {
    /// Takes slice `number` of `partitions`: fences the previous owner, finds where it
    /// stopped publishing and restores the newest checkpoint. Blocking.
    pub fn start(
        number: i32,
        partitions: i32,
        context: &SliceContext,
    ) -> Result<Slice, KafkaError> {
        let started = Instant::now();
        let producer = transactional_producer(context, number)?;
        producer
            .init_transactions(TRANSACTION_CALL)
            .map_err(KafkaError::Request)?;
        let fenced = started.elapsed();
        let published = super::topics::read_head(
            &context.kafka,
            &context.cluster.slices_topic,
            number,
            TRANSACTION_CALL,
        )?
        .map(|head| head.position);
        let headed = started.elapsed();
        let group = format!("{}/slice-{number}", context.cluster.group_id);
        let store = context.store.for_group(&group);
        let mut state = context.runtime.block_on(crate::checkpoint::restore(
            &store,
            &context.layout,
            &context.aggregate,
        ));
        let at = SlicePosition::of(state.position(), number);
        let phase = match published {
            Some(target) if target == at => Phase::Live {
                builder: Box::new(SliceBuilder::continuing(number, &state)),
            },
            Some(target) if target.covers(&at) => Phase::CatchingUp {
                target,
                held: Vec::new(),
            },
            Some(target) => {
                // A checkpoint past the last frame: the changelog was lost. Start again.
                tracing::warn!(slice = number, checkpoint = ?at, published = ?target, "checkpoint ahead of the slice's last frame: rebuilding the slice from its records");
                state = State::new(Arc::clone(&context.aggregate));
                Phase::CatchingUp {
                    target,
                    held: Vec::new(),
                }
            }
            None => Phase::Whole,
        };
        tracing::info!(
            slice = number,
            position = ?SlicePosition::of(state.position(), number),
            published = ?published,
            fence_ms = fenced.as_millis(),
            changelog_head_ms = (headed - fenced).as_millis(),
            checkpoint_ms = (started.elapsed() - headed).as_millis(),
            "slice taken"
        );
        if !matches!(phase, Phase::CatchingUp { .. }) {
            context
                .metrics
                .slice_catch_up
                .observe(started.elapsed().as_secs_f64());
        }
        let (checkpoints, frozen) = watch::channel(None);
        let (written_tx, written) = mpsc::unbounded_channel();
        let writer_stop = context.writers_stop.child_token();
        context.tasks.spawn_on(
            crate::checkpoint::checkpoint_writer(crate::checkpoint::Writer {
                store,
                layout: context.layout.clone(),
                keep: context.keep,
                frozen,
                written: written_tx,
                metrics: Arc::clone(&context.metrics),
                migrated: true,
                stop: writer_stop.clone(),
                base: None,
            }),
            &context.runtime,
        );
        let now = Instant::now();
        Ok(Slice {
            number,
            partitions,
            state,
            changes: Changes::default(),
            phase,
            producer,
            dead_letters: Vec::new(),
            chain: Chain::default(),
            checkpoints,
            written,
            writer_stop,
            last_publish: now,
            next_checkpoint: now + context.checkpoint_interval,
            taken: started,
            scratch: Vec::new(),
        })
    }

    /// The slice's position: where its records are read from.
    pub fn position(&self) -> SlicePosition {
        SlicePosition::of(self.state.position(), self.number)
    }

    /// The slice's state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// True once it publishes (caught up with the last owner's frames).
    pub fn is_live(&self) -> bool {
        !matches!(self.phase, Phase::CatchingUp { .. })
    }

    /// One record of the slice's partitions. Returns `true` if the record's partition must
    /// pause (it is past the catch-up target; the record is held).
    pub fn on_record(
        &mut self,
        role: TopicRole,
        message: &rdkafka::message::BorrowedMessage<'_>,
        context: &SliceContext,
    ) -> bool {
        if let Phase::CatchingUp { target, held } = &mut self.phase
            && message.offset() >= target.0[role.index()]
        {
            held.push(message.detach());
            return true;
        }
        self.process(role, message, context);
        self.maybe_caught_up(context);
        false
    }

    fn process<M: Message>(&mut self, role: TopicRole, message: &M, context: &SliceContext) {
        let at = RecordRef {
            partition: PartitionKey {
                role,
                partition: message.partition(),
            },
            offset: message.offset(),
        };
        let record = Record {
            at,
            payload: message.payload(),
            timestamp_ms: message.timestamp().to_millis(),
        };
        let silent = matches!(self.phase, Phase::CatchingUp { .. });
        match record::process_in_slice(
            &mut self.state,
            &context.codec,
            record,
            &mut self.changes,
            self.partitions,
        ) {
            Ok(processed) => context.metrics.event_decoded(&processed.event),
            Err(error) => {
                self.state.skip(at);
                // Caught up in silence: the previous owner dead-lettered it already.
                if !silent {
                    context.metrics.poison_record(&error);
                    context.metrics.dead_lettered.inc();
                    tracing::warn!(error = %error, topic = message.topic(), partition = message.partition(), offset = message.offset(), "poison record: dead-lettered with the slice's next frame");
                    self.dead_letters.push(DeadLetter {
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                        headers: dead_letter_headers(message, &error),
                    });
                }
            }
        }
    }

    /// At the target: from here on every frame continues the last owner's.
    fn maybe_caught_up(&mut self, context: &SliceContext) {
        let Phase::CatchingUp { target, .. } = &self.phase else {
            return;
        };
        if self.position() != *target {
            return;
        }
        let Phase::CatchingUp { held, .. } = std::mem::replace(
            &mut self.phase,
            Phase::Live {
                builder: Box::new(SliceBuilder::continuing(self.number, &self.state)),
            },
        ) else {
            unreachable!()
        };
        self.changes = Changes::default();
        context
            .metrics
            .slice_catch_up
            .observe(self.taken.elapsed().as_secs_f64());
        tracing::info!(slice = self.number, position = ?self.position(), held = held.len(), since_taken_ms = self.taken.elapsed().as_millis(), "slice caught up with its last frame: publishing");
        for message in held {
            if let Some(role) = role_of(&context.layout, message.topic()) {
                self.process(role, &message, context);
            }
        }
    }

    /// The partitions to resume once caught up (those paused while catching up).
    pub fn partitions(&self, layout: &Layout) -> Vec<(String, i32)> {
        layout
            .topics()
            .iter()
            .map(|(_, name, _)| (name.clone(), self.number))
            .collect()
    }

    /// Publishes a frame if one is due ([`Slice::frame_due`], then
    /// [`Slice::publish`]). `Err` if the producer can publish no more ([`Lost`]).
    pub fn publish_due(
        &mut self,
        now: Instant,
        interval: Duration,
        context: &SliceContext,
    ) -> Result<(), Lost> {
        match self.frame_due(now, interval) {
            Some(frame) => self.publish(&frame, now, context),
            None => Ok(()),
        }
    }

    /// The frame due now, if any: changes or dead letters waiting for `interval` since the
    /// last one (a whole frame at once). Built on the aggregator's thread (it reads the
    /// state); [`Slice::publish`] may run on another.
    pub fn frame_due(&mut self, now: Instant, interval: Duration) -> Option<SliceFrame> {
        while let Ok(written) = self.written.try_recv() {
            self.chain.written(&written);
        }
        let pending = !self.changes.is_empty() || !self.dead_letters.is_empty();
        let due = match self.phase {
            Phase::CatchingUp { .. } => false,
            Phase::Whole => true,
            Phase::Live { .. } => pending && now >= self.last_publish + interval,
        };
        if !due {
            return None;
        }
        self.last_publish = now;
        self.chain.note(self.changes.stores.keys());
        let changes = std::mem::take(&mut self.changes);
        Some(match &mut self.phase {
            Phase::Live { builder } => builder.build(&self.state, &changes),
            _ => {
                let (builder, frame) = SliceBuilder::whole(self.number, &self.state);
                self.phase = Phase::Live {
                    builder: Box::new(builder),
                };
                frame
            }
        })
    }

    /// The frame's transaction (its records, changelog records and the dead letters since
    /// the last), then a checkpoint if one is due. `Err` if the producer can publish no more
    /// ([`Lost`]); an error it can abort and go on from is logged and the next frame is
    /// whole.
    pub fn publish(
        &mut self,
        frame: &SliceFrame,
        now: Instant,
        context: &SliceContext,
    ) -> Result<(), Lost> {
        let started = Instant::now();
        let committed = self.commit(frame, context);
        context
            .metrics
            .slice_commit
            .observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                self.dead_letters.clear();
                context.metrics.frames.inc();
                if now >= self.next_checkpoint {
                    self.next_checkpoint = now + context.checkpoint_interval;
                    let frozen = self.chain.freeze(&self.state, &context.layout);
                    self.checkpoints.send_replace(Some(Arc::new(frozen)));
                }
                Ok(())
            }
            Err(error) if is_fatal(&error) => Err(Lost {
                fenced: is_fenced(&error),
                reason: error.to_string(),
            }),
            Err(error) => {
                tracing::warn!(slice = self.number, error = %error, "a slice transaction failed: aborted; the next frame is whole");
                let _ = self.producer.abort_transaction(TRANSACTION_CALL);
                self.phase = Phase::Whole;
                Ok(())
            }
        }
    }

    /// One frame's transaction.
    fn commit(
        &mut self,
        frame: &SliceFrame,
        context: &SliceContext,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let cluster = &context.cluster;
        let slice_key = self.number.to_string();
        self.producer.begin_transaction()?;
        let send = |producer: &BaseProducer<kafka::QuietLogs>,
                    record: BaseRecord<'_, [u8], [u8]>| {
            producer.send(record).map_err(|(error, _)| error)
        };
        // librdkafka copies each record's bytes as it is sent: one buffer serves them all.
        let scratch = &mut self.scratch;
        frame.encode_into(scratch);
        send(
            &self.producer,
            BaseRecord::to(&cluster.frames_topic)
                .partition(0)
                .key(slice_key.as_bytes())
                .payload(scratch.as_slice()),
        )?;
        frame.head.encode_into(scratch);
        send(
            &self.producer,
            BaseRecord::to(&cluster.slices_topic)
                .partition(self.number)
                .key(wire::HEAD_KEY.as_bytes())
                .payload(scratch.as_slice()),
        )?;
        let Phase::Live { builder } = &self.phase else {
            unreachable!("a frame is built live")
        };
        for id in frame.stores.keys() {
            let Some(view) = builder.view(&storepulse_core::events::StoreId(id.clone())) else {
                continue;
            };
            let key = wire::store_key(id);
            wire::encode_view_into(view, scratch);
            send(
                &self.producer,
                BaseRecord::to(&cluster.slices_topic)
                    .partition(self.number)
                    .key(key.as_bytes())
                    .payload(scratch.as_slice()),
            )?;
        }
        for letter in &self.dead_letters {
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&context.dead_letter_topic).headers(letter.headers.clone());
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            if let Some(value) = &letter.value {
                record = record.payload(value);
            }
            send(&self.producer, record)?;
        }
        kafka::commit_transaction(&self.producer, TRANSACTION_CALL)
    }

    /// Gives the slice up (revoked, or the process stops): what is pending goes out if it
    /// still can, then a final checkpoint at the published position.
    pub fn give_up(mut self, context: &SliceContext) {
        let published = self.is_live()
            && self
                .publish_due(
                    Instant::now() + Duration::from_secs(3600),
                    Duration::ZERO,
                    context,
                )
                .is_ok();
        if published && self.changes.is_empty() {
            let frozen = self.chain.freeze(&self.state, &context.layout);
            self.checkpoints.send_replace(Some(Arc::new(frozen)));
        }
        self.writer_stop.cancel();
        tracing::info!(slice = self.number, position = ?self.position(), "slice given up");
    }
}

fn transactional_producer(
    context: &SliceContext,
    number: i32,
) -> Result<BaseProducer<kafka::QuietLogs>, KafkaError> {
    // A record may not wait longer than its transaction may stay open.
    let mut config = kafka::producer_config(&context.kafka, context.cluster.transaction_timeout);
    config
        .set(
            "transactional.id",
            format!("{}-slice-{number}", context.cluster.transactional_prefix),
        )
        .set(
            "transaction.timeout.ms",
            context.cluster.transaction_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "0");
    kafka::quiet(&config)
}

/// The role of a topic of the inputs.
pub fn role_of(layout: &Layout, topic: &str) -> Option<TopicRole> {
    layout
        .topics()
        .iter()
        .find(|(_, name, _)| name == topic)
        .map(|(role, _, _)| *role)
}

/// An error after which the producer can publish no more.
fn is_fatal(error: &rdkafka::error::KafkaError) -> bool {
    match error {
        rdkafka::error::KafkaError::Transaction(e) => e.is_fatal(),
        other => is_fenced(other) || other.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal),
    }
}

/// Fenced by a newer producer of the same transactional id (the broker's codes for it and
/// librdkafka's own).
fn is_fenced(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

/// A dead letter's headers: where the record came from and why (as `serve` writes them),
/// then the record's own.
fn dead_letter_headers<M: Message>(
    message: &M,
    error: &storepulse_core::events::DecodeError,
) -> OwnedHeaders {
    let ours = [
        ("storepulse-source-topic", message.topic().to_owned()),
        (
            "storepulse-source-partition",
            message.partition().to_string(),
        ),
        ("storepulse-source-offset", message.offset().to_string()),
        ("storepulse-error", error.label().to_owned()),
        ("storepulse-reason", error.to_string()),
    ];
    let mut headers = ours
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        });
    if let Some(theirs) = message.headers() {
        for header in theirs.iter() {
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::{is_fatal, is_fenced};
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    /// Only a fence holds a slice back (another aggregator likely owns it); any other fatal
    /// error replaces the producer at once, and an abortable one keeps it.
    #[test]
    fn a_fence_is_told_apart_from_other_fatal_errors() {
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::Fenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert!(is_fenced(&error) && is_fatal(&error), "{code:?}");
        }
        let fatal = KafkaError::Global(RDKafkaErrorCode::Fatal);
        assert!(is_fatal(&fatal) && !is_fenced(&fatal));
        let refused = KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTransactionalState);
        assert!(!is_fenced(&refused));
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(!is_fatal(&timed_out) && !is_fenced(&timed_out));
    }
}
