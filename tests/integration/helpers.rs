//! Shared test helpers: settings for the real stack, unique topic names, and a consumer
//! that reads whole topics back.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use storepulse::kafka::{DEFAULT_BROKERS, KafkaSettings, Topics};

/// The broker address under test.
pub fn brokers() -> String {
    std::env::var("STOREPULSE_KAFKA_BROKERS").unwrap_or_else(|_| DEFAULT_BROKERS.to_owned())
}

/// The database under test.
pub fn database_url() -> String {
    std::env::var("STOREPULSE_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432/storepulse".to_owned())
}

/// A short random suffix so concurrent tests and repeated runs never share topics.
pub fn unique(name: &str) -> String {
    format!(
        "test-{name}-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

/// Settings with three fresh topic names (not created yet).
pub fn fresh_topics(name: &str) -> KafkaSettings {
    let base = unique(name);
    KafkaSettings {
        brokers: brokers(),
        topics: Topics {
            orders: format!("{base}-orders"),
            inventory: format!("{base}-inventory"),
            activity: format!("{base}-activity"),
        },
    }
}

/// One record as it was read back from Kafka.
#[derive(Debug)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

/// Reads every partition of `topics` from the beginning until `expected` records arrived.
/// Panics after `timeout` with what it has.
pub fn consume_all(
    brokers: &str,
    topics: &[&str],
    expected: usize,
    timeout: Duration,
) -> Vec<ConsumedRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("broker.address.family", "v4")
        .create()
        .expect("consumer is created");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .expect("partition is added");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::with_capacity(expected);
    while records.len() < expected {
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} records arrived within {timeout:?}",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("no consumer error");
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        records.push(ConsumedRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().expect("every record has a key"))
                .into_owned(),
            payload: message
                .payload()
                .expect("every record has a value")
                .to_vec(),
            traceparent,
        });
    }
    records
}
