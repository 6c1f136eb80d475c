//! Kafka connection settings and everything that turns them into rdkafka configuration.
//!
//! This is the one place typed settings become librdkafka's string map, so the timeout
//! invariants live here, next to the values. Shell: talks to the broker (topic admin,
//! watermarks); knows nothing about events.

use crate::aggregate::Layout;
use crate::events::TopicRole;
use crate::log_every::LogEvery;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How often librdkafka's own repeated errors and log lines are let through.
const CLIENT_LOG_EVERY: Duration = Duration::from_secs(10);

/// librdkafka's errors and logs, rate-limited: a broker that is away makes every client
/// report "all brokers down" many times a second (hundreds of lines in half a minute);
/// here the first is logged, then one per 10 s with how many were held back.
#[derive(Debug)]
pub struct QuietLogs {
    errors: Mutex<LogEvery>,
    logs: Mutex<LogEvery>,
}

impl Default for QuietLogs {
    fn default() -> Self {
        QuietLogs {
            errors: Mutex::new(LogEvery::new(CLIENT_LOG_EVERY)),
            logs: Mutex::new(LogEvery::new(CLIENT_LOG_EVERY)),
        }
    }
}

fn allow(limiter: &Mutex<LogEvery>) -> Option<u64> {
    limiter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .allow(Instant::now())
}

impl ClientContext for QuietLogs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            tracing::debug!(target: "librdkafka", facility, "{message}");
            return;
        }
        let Some(held_back) = allow(&self.logs) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, similar_lines_not_logged = held_back, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, similar_lines_not_logged = held_back, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::info!(target: "librdkafka", facility, similar_lines_not_logged = held_back, "{message}")
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // The end of a partition is news only to a reader that asked for it (replay).
        if matches!(
            error,
            rdkafka::error::KafkaError::PartitionEOF(_)
                | rdkafka::error::KafkaError::Global(
                    rdkafka::types::RDKafkaErrorCode::PartitionEOF
                )
        ) {
            return;
        }
        if let Some(held_back) = allow(&self.errors) {
            tracing::error!(error = %error, reason, similar_errors_not_logged = held_back, "kafka client error (repeats are logged once per 10 s)");
        }
    }
}

impl ConsumerContext for QuietLogs {}

impl rdkafka::producer::ProducerContext for QuietLogs {
    type DeliveryOpaque = ();
    // Transactional producers learn the fate of their records from the commit.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, (): ()) {}
}

/// A consumer whose client logs are rate-limited.
pub type Consumer = BaseConsumer<QuietLogs>;

/// Adds `list`'s partitions to `consumer`'s assignment, read from their offsets and
/// unpaused. librdkafka keeps an application's pause of a partition across unassign and
/// assign: a partition paused under an earlier assignment would never deliver again.
pub fn assign_unpaused<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &rdkafka::TopicPartitionList,
) -> Result<(), rdkafka::error::KafkaError> {
    consumer.incremental_assign(list)?;
    consumer.resume(list)
}

/// Creates a client from `config` with a [`QuietLogs`] context.
pub fn quiet<T: rdkafka::config::FromClientConfigAndContext<QuietLogs>>(
    config: &ClientConfig,
) -> Result<T, KafkaError> {
    config
        .create_with_context(QuietLogs::default())
        .map_err(KafkaError::Config)
}

/// The names of the three topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// `OrderPlaced`, `OrderCancelled`.
    pub orders: String,
    /// `StockChanged`.
    pub inventory: String,
    /// `SessionSeen`.
    pub activity: String,
}

impl Topics {
    /// The topic of a role.
    pub fn name(&self, role: TopicRole) -> &str {
        match role {
            TopicRole::Orders => &self.orders,
            TopicRole::Inventory => &self.inventory,
            TopicRole::Activity => &self.activity,
        }
    }

    /// All three names, in [`TopicRole::ALL`] order.
    pub fn all(&self) -> [&str; 3] {
        TopicRole::ALL.map(|role| self.name(role))
    }
}

/// Where the broker is and which topics to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic names.
    pub topics: Topics,
}

/// A failed conversation with the broker. Each message says its cause, and `source()`
/// does not repeat it (so a chain of causes prints each once).
#[derive(Debug, Error)]
pub enum KafkaError {
    /// A client could not be created from the configuration.
    #[error("invalid kafka client configuration: {0}")]
    Config(rdkafka::error::KafkaError),
    /// The broker refused an operation on a topic (creating it, reading its metadata).
    #[error("topic {topic}: {code}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// A request got no answer (broker down or unreachable).
    #[error("kafka request failed: {0}")]
    Request(rdkafka::error::KafkaError),
}

/// Commits `producer`'s open transaction, waiting at most `timeout`.
///
/// rdkafka's `BaseProducer::commit_transaction` flushes first with polls of up to 100 ms
/// that last their whole length even once every delivery report has arrived, so each
/// commit took at least 100 ms. Here the reports are served as they come (a poll that
/// does not wait, then a 0.5 ms sleep while records are in flight: a poll with a timeout
/// under 1 ms spins), so a commit waits only for the broker.
pub fn commit_transaction<C: ProducerContext + 'static>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<()> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() > 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    producer.commit_transaction(deadline.saturating_duration_since(Instant::now()))
}

/// Settings every client shares.
fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "storepulse")
        // The local stack listens on IPv4 loopback only; skip futile ::1 attempts.
        .set("broker.address.family", "v4");
    config
}

/// Settings of an admin client.
pub fn admin_config(settings: &KafkaSettings) -> ClientConfig {
    base_config(settings)
}

/// Producer settings for durable, ordered, complete delivery.
///
/// Invariants: `message.timeout.ms` bounds how long a record may wait for delivery
/// (queueing + retries) before its delivery report says it failed; it must exceed
/// `request.timeout.ms` or retries never happen. Idempotence keeps per-partition order
/// through retries, which the per-SKU stock history relies on.
pub fn producer_config(settings: &KafkaSettings, message_timeout: Duration) -> ClientConfig {
    let message_timeout_ms = message_timeout.as_millis().max(1_000);
    let request_timeout_ms = (message_timeout_ms / 2).clamp(500, 30_000);
    let mut config = base_config(settings);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        // Small batching delay: throughput without adding visible latency.
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("request.timeout.ms", request_timeout_ms.to_string())
        .set("message.timeout.ms", message_timeout_ms.to_string());
    config
}

/// Creates each of `names` that does not exist yet, with `partitions` partitions and the
/// broker's default replication (`default.replication.factor`: 1 on the local stack, 3 on
/// its three-broker cluster). Returns the topics it created. A broker that does not answer
/// within `timeout` is an error.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    names: &[&str],
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<QuietLogs> = quiet(&base_config(settings))?;
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(KafkaError::Request)?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::Topic { topic, code }),
        }
    }
    Ok(created)
}

/// Consumer settings for the ingest loop.
///
/// Offsets are assigned explicitly from the checkpoint and committed only after a
/// checkpoint (for lag tools); nothing is auto-committed or auto-stored. Latency:
/// `fetch.wait.max.ms` bounds how long the broker holds a fetch when there is no data
/// (default 500 ms, far too slow for a live dashboard). Memory: the prefetch queue is
/// bounded (librdkafka's defaults buffer up to 64 MiB per partition set).
pub fn consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    // (librdkafka reads `read_committed` by default: records of aborted transactions, such
    // as a fenced aggregator's, are never delivered.)
    let mut config = base_config(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "50")
        .set("queued.min.messages", "20000")
        .set("queued.max.messages.kbytes", "32768")
        // When the prefetch queue is full librdkafka postpones the next fetch of that
        // partition by this much (default 1000 ms): a consumer busier than the broker then
        // idles for most of each second. Resume fetching as soon as there is room.
        .set("fetch.queue.backoff.ms", "5")
        .set("socket.nagle.disable", "true");
    config
}

/// Partition count of each topic; `None` for a topic that does not exist (yet).
/// Blocking: call from a blocking thread.
pub fn partition_counts(
    settings: &KafkaSettings,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<Option<i32>>, KafkaError> {
    let consumer: Consumer = quiet(base_config(settings).set("group.id", "storepulse-metadata"))?;
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(KafkaError::Request)?;
    Ok(topics
        .iter()
        .map(|name| {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == *name && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .filter(|count| *count > 0)
        })
        .collect())
}

/// Asks the broker for partitions' high watermarks (their ends), with one long-lived client.
pub struct WatermarkProbe {
    consumer: Consumer,
}

impl WatermarkProbe {
    /// A probe for `settings`' broker.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(WatermarkProbe {
            consumer: quiet(base_config(settings).set("group.id", "storepulse-watermarks"))?,
        })
    }

    /// The low and high watermarks of each `(topic, partition)`: its first retained offset
    /// and its next offset. Blocking.
    pub fn watermarks(
        &self,
        partitions: &[(String, i32)],
        timeout: Duration,
    ) -> Result<Vec<(i64, i64)>, KafkaError> {
        partitions
            .iter()
            .map(|(topic, partition)| {
                self.consumer
                    .fetch_watermarks(topic, *partition, timeout)
                    .map_err(KafkaError::Request)
            })
            .collect()
    }
}

/// The sum over all partitions of `topic` of the high watermark: how many records the
/// topic holds (from its creation, ignoring retention). Blocking: call from a blocking
/// thread.
pub fn total_records(settings: &KafkaSettings, topic: &str) -> Result<i64, KafkaError> {
    let consumer: Consumer = quiet(base_config(settings).set("group.id", "storepulse-watermarks"))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(KafkaError::Request)?;
    let mut total = 0;
    for t in metadata.topics() {
        if let Some(code) = t.error() {
            return Err(KafkaError::Topic {
                topic: topic.to_owned(),
                code: code.into(),
            });
        }
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(KafkaError::Request)?;
            debug_assert!(low <= high);
            total += high;
        }
    }
    Ok(total)
}

/// Waits until the three topics exist, then returns their layout; `None` if stopped first.
pub async fn wait_for_layout(
    settings: &KafkaSettings,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Layout> {
    let mut warned = false;
    loop {
        let probe = settings.clone();
        let counts = tokio::task::spawn_blocking(move || {
            partition_counts(&probe, &probe.topics.all(), Duration::from_secs(5))
        })
        .await
        .unwrap_or_else(|e| panic!("metadata thread panicked: {e}"));
        match counts {
            Ok(counts) if counts.iter().all(Option::is_some) => {
                let topics = TopicRole::ALL
                    .into_iter()
                    .zip(counts)
                    .map(|(role, count)| {
                        (
                            role,
                            settings.topics.name(role).to_owned(),
                            count.unwrap_or(0),
                        )
                    })
                    .collect();
                return Some(Layout::new(topics));
            }
            Ok(counts) if !warned => {
                let missing: Vec<&str> = settings
                    .topics
                    .all()
                    .into_iter()
                    .zip(counts)
                    .filter(|(_, c)| c.is_none())
                    .map(|(name, _)| name)
                    .collect();
                tracing::warn!(
                    ?missing,
                    "waiting for topics to exist (e.g. storepulse simulate creates them)"
                );
                warned = true;
            }
            Err(error) if !warned => {
                tracing::warn!(error = %error, "waiting for kafka");
                warned = true;
            }
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// Creates the dead-letter topic if it is missing (a warning if Kafka cannot be asked: the
/// dead-letter producer creates it when a poison record needs it).
pub async fn ensure_dead_letter_topic(settings: &KafkaSettings, topic: &str) {
    if let Err(error) = ensure_topics(settings, &[topic], 1, Duration::from_secs(10)).await {
        tracing::warn!(error = %error, topic, "could not create the dead-letter topic");
    }
}
