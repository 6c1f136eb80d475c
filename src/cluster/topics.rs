//! The cluster's own topics: the frames topic (one partition, records deleted by age) and
//! the slices' changelog (compacted, one partition per slice), created when missing;
//! reading a changelog partition to its committed end (an edge), and a slice's last head
//! from the partition's tail (an aggregator taking the slice).

use crate::kafka::{self, KafkaError, KafkaSettings};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use storepulse_core::aggregate::view::StoreView;
use storepulse_core::cluster::wire::{self, SliceHead};
use storepulse_core::events::StoreId;

/// Creates the frames topic (1 partition) and the changelog (`slices` partitions,
/// compacted) if they do not exist. Replication follows the broker's default.
pub async fn ensure(
    settings: &KafkaSettings,
    frames: &str,
    changelog: &str,
    slices: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<kafka::QuietLogs> = kafka::quiet(&kafka::admin_config(settings))?;
    let topics = [
        NewTopic::new(frames, 1, TopicReplication::Fixed(-1)),
        NewTopic::new(changelog, slices, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact")
            .set("min.compaction.lag.ms", "0")
            .set("segment.ms", "600000"),
    ];
    let timeout = Duration::from_secs(15);
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(KafkaError::Request)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::Topic { topic, code }),
        }
    }
    Ok(())
}

/// The newest head of slice `partition` in the changelog (`None` if it was never
/// published), read from the partition's tail: the last transaction of a slice holds its
/// head, so the cost is that transaction's records, not the whole partition (whose active
/// segment keeps every view written until it rolls). Read committed: call it once the
/// previous owner is fenced, so nothing of it is still open. Blocking.
pub fn read_head(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<SliceHead>, KafkaError> {
    let mut config = kafka::consumer_config(settings, "storepulse-changelog-reader");
    config.set("enable.partition.eof", "true");
    let consumer: kafka::Consumer = kafka::quiet(&config)?;
    let deadline = Instant::now() + timeout;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(KafkaError::Request)?;
    if low == high {
        return Ok(None);
    }
    // Records (and transaction markers) read back from the end: the reach grows until a
    // head is found or the partition's start is reached.
    let mut back = 256;
    loop {
        let start = (high - back).max(low);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(KafkaError::Request)?;
        consumer.assign(&list).map_err(KafkaError::Request)?;
        let mut head = None;
        loop {
            if Instant::now() > deadline {
                return Err(KafkaError::Request(
                    rdkafka::error::KafkaError::MessageConsumption(
                        RDKafkaErrorCode::OperationTimedOut,
                    ),
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => tracing::warn!(error = %error, "reading the slice's head"),
                Some(Ok(message)) if message.key() == Some(wire::HEAD_KEY.as_bytes()) => {
                    match message.payload().map(SliceHead::decode) {
                        Some(Ok(decoded)) => head = Some(decoded),
                        Some(Err(error)) => {
                            tracing::error!(error = %error, partition, "unreadable slice head in the changelog")
                        }
                        None => {}
                    }
                }
                Some(Ok(_)) => {}
            }
        }
        if head.is_some() || start == low {
            return Ok(head);
        }
        back *= 4;
    }
}

/// What a changelog partition holds: the slice's head (if it was ever published) and each
/// store's newest view, with the Kafka timestamp of the head.
#[derive(Debug, Default)]
pub struct SliceRecords {
    /// The head and its record's timestamp (ms).
    pub head: Option<(SliceHead, i64)>,
    /// Each store's view.
    pub views: BTreeMap<StoreId, StoreView>,
}

/// Reads `partitions` of the changelog from their beginning to their committed end
/// (`read_committed`: a fenced owner's aborted writes are never seen). Blocking.
pub fn read_changelog(
    settings: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<BTreeMap<i32, SliceRecords>, KafkaError> {
    let mut config = kafka::consumer_config(settings, "storepulse-changelog-reader");
    config.set("enable.partition.eof", "true");
    let consumer: kafka::Consumer = kafka::quiet(&config)?;
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(KafkaError::Request)?;
    }
    consumer.assign(&list).map_err(KafkaError::Request)?;
    let mut slices: BTreeMap<i32, SliceRecords> = partitions
        .iter()
        .map(|p| (*p, SliceRecords::default()))
        .collect();
    let mut ended: Vec<i32> = Vec::new();
    let deadline = Instant::now() + timeout;
    while ended.len() < partitions.len() {
        if Instant::now() > deadline {
            return Err(KafkaError::Request(
                rdkafka::error::KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition)))
                if !ended.contains(&partition) =>
            {
                ended.push(partition);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(error)) => tracing::warn!(error = %error, "reading the slices' changelog"),
            Some(Ok(message)) => {
                let Some(slice) = slices.get_mut(&message.partition()) else {
                    continue;
                };
                let (Some(key), Some(value)) = (message.key(), message.payload()) else {
                    continue;
                };
                let key = String::from_utf8_lossy(key);
                if key == wire::HEAD_KEY {
                    match SliceHead::decode(value) {
                        Ok(head) => {
                            let time = message.timestamp().to_millis().unwrap_or(0);
                            slice.head = Some((head, time));
                        }
                        Err(error) => {
                            tracing::error!(error = %error, partition = message.partition(), "unreadable slice head in the changelog")
                        }
                    }
                } else if let Some(store) = wire::store_of_key(&key) {
                    match wire::decode_view(value) {
                        Ok(view) => {
                            slice.views.insert(StoreId(store.to_owned()), view);
                        }
                        Err(error) => {
                            tracing::error!(error = %error, store, "unreadable store view in the changelog")
                        }
                    }
                }
            }
        }
    }
    Ok(slices)
}
