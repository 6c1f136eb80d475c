//! `storepulse route`: the re-keying stage for producers that do not key by store (ADR 0007,
//! decision 3). Reads three source topics through a consumer group and writes each record
//! to the matching configured topic keyed by its store id (placed by murmur2, as Kafka's
//! default partitioner), exactly once: each batch is one transaction that also carries the
//! consumer's offsets (`send_offsets_to_transaction`, fenced by the group's generation), so
//! a route killed mid-batch leaves nothing half-written and its successor starts where the
//! last committed batch ended. A store's records keep the order of each source partition.
//!
//! A record it cannot decode keeps its key and bytes and goes on: the aggregator owning its
//! partition dead-letters it with its reason (one place for dead letters).

use crate::events::Codec;
use crate::kafka::{self, KafkaError, KafkaSettings};
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest a transactional call may wait on the brokers.
const TRANSACTION_CALL: Duration = Duration::from_secs(30);

/// What `storepulse route` reads and how it identifies itself.
#[derive(Clone, Debug)]
pub struct RouteOptions {
    /// Source topics: orders, inventory, activity (the configured topics are the targets).
    pub from: [String; 3],
    /// The route's consumer group.
    pub group: String,
    /// This instance's transactional id (stable across its restarts: a restart then aborts
    /// what its killed predecessor left open at once).
    pub transactional_id: String,
    /// Most records in one transaction.
    pub batch: usize,
}

/// What a run moved.
#[derive(Debug, Default)]
pub struct RouteReport {
    /// Records written to the targets.
    pub routed: u64,
    /// Of those, records that did not decode (kept their key).
    pub undecoded: u64,
    /// Transactions committed.
    pub transactions: u64,
}

/// Routes until `stop` is cancelled. Blocking.
pub fn run(
    settings: &KafkaSettings,
    codec: &Codec,
    options: &RouteOptions,
    stop: &CancellationToken,
) -> Result<RouteReport, KafkaError> {
    let targets = [
        settings.topics.orders.clone(),
        settings.topics.inventory.clone(),
        settings.topics.activity.clone(),
    ];
    let mut consumer_config = kafka::consumer_config(settings, &options.group);
    consumer_config.set("enable.partition.eof", "false");
    let consumer: kafka::Consumer = kafka::quiet(&consumer_config)?;
    let sources: Vec<&str> = options.from.iter().map(String::as_str).collect();
    consumer.subscribe(&sources).map_err(KafkaError::Request)?;
    let mut producer_config = kafka::producer_config(settings, TRANSACTION_CALL);
    producer_config
        .set("transactional.id", &options.transactional_id)
        .set("transaction.timeout.ms", "10000")
        .set("message.timeout.ms", "10000")
        .set("request.timeout.ms", "5000")
        // Java's default partitioner: the cluster's producer contract (docs/api.md).
        .set("partitioner", "murmur2_random");
    let producer: BaseProducer<kafka::QuietLogs> = kafka::quiet(&producer_config)?;
    producer
        .init_transactions(TRANSACTION_CALL)
        .map_err(KafkaError::Request)?;
    let mut report = RouteReport::default();
    let mut batch = Vec::with_capacity(options.batch);
    while !stop.is_cancelled() {
        // Read a batch outside any transaction: a rebalance runs inside poll, between
        // transactions, never in the middle of one.
        batch.clear();
        let until = Instant::now() + Duration::from_millis(50);
        while batch.len() < options.batch && Instant::now() < until {
            match consumer.poll(Duration::from_millis(10)) {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(error)) => tracing::warn!(error = %error, "route: reading the sources"),
                None => {}
            }
        }
        if batch.is_empty() {
            continue;
        }
        match route_batch(&consumer, &producer, codec, options, &targets, &batch) {
            Ok(undecoded) => {
                report.routed += batch.len() as u64;
                report.undecoded += undecoded;
                report.transactions += 1;
            }
            Err(error) if is_fatal(&error) => return Err(KafkaError::Request(error)),
            Err(error) => {
                tracing::warn!(error = %error, "route: a transaction failed: aborted; reading again from the committed offsets");
                let _ = producer.abort_transaction(TRANSACTION_CALL);
                rewind(&consumer)?;
            }
        }
    }
    Ok(report)
}

/// One batch's transaction: its records re-keyed, and the consumer's next offsets.
fn route_batch(
    consumer: &kafka::Consumer,
    producer: &BaseProducer<kafka::QuietLogs>,
    codec: &Codec,
    options: &RouteOptions,
    targets: &[String; 3],
    batch: &[rdkafka::message::OwnedMessage],
) -> rdkafka::error::KafkaResult<u64> {
    producer.begin_transaction()?;
    let mut undecoded = 0;
    let mut next = TopicPartitionList::new();
    for message in batch {
        let Some(role) = options.from.iter().position(|t| t == message.topic()) else {
            continue;
        };
        let payload = message.payload().unwrap_or_default();
        let store_key = match codec.decode(payload) {
            Ok(event) => Some(event.store_id().as_str().to_owned()),
            Err(_) => {
                undecoded += 1;
                None
            }
        };
        let key: Option<&[u8]> = match &store_key {
            Some(store) => Some(store.as_bytes()),
            None => message.key(),
        };
        let mut headers = OwnedHeaders::new();
        if let Some(source) = message.headers() {
            for header in source.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&targets[role])
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(time) = message.timestamp().to_millis() {
            record = record.timestamp(time);
        }
        producer.send(record).map_err(|(error, _)| error)?;
        next.add_partition_offset(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset() + 1),
        )?;
    }
    let group = consumer
        .group_metadata()
        .expect("a subscribed consumer has group metadata");
    producer.send_offsets_to_transaction(&next, &group, TRANSACTION_CALL)?;
    kafka::commit_transaction(producer, TRANSACTION_CALL)?;
    Ok(undecoded)
}

/// After an aborted transaction: every assigned partition back to its committed offset.
fn rewind(consumer: &kafka::Consumer) -> Result<(), KafkaError> {
    let committed = consumer
        .committed(TRANSACTION_CALL)
        .map_err(KafkaError::Request)?;
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Invalid => Offset::Beginning,
            offset => offset,
        };
        consumer
            .seek(
                element.topic(),
                element.partition(),
                offset,
                TRANSACTION_CALL,
            )
            .map_err(KafkaError::Request)?;
    }
    Ok(())
}

/// Fenced (another instance with this transactional id, or this one's group generation
/// is gone) or otherwise unrecoverable.
fn is_fatal(error: &rdkafka::error::KafkaError) -> bool {
    matches!(error, rdkafka::error::KafkaError::Transaction(error) if error.is_fatal())
}
