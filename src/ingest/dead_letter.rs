//! The dead-letter topic: where a poison record goes, with its origin and reason in
//! headers, so nothing is lost and no partition stalls. The only producer of `serve`.
//!
//! Headers: `storepulse-source-topic`, `-source-partition`, `-source-offset`,
//! `storepulse-error` (the `DecodeError` label), `storepulse-reason` (its message), then
//! the record's own headers. Key and value are the record's, unchanged, except that a value
//! longer than [`MAX_PAYLOAD`] (or than the topic takes: each size refusal halves what is
//! kept) is cut to a prefix, with `storepulse-original-size` and `storepulse-original-sha256`
//! saying what the whole value was. A record is never dropped for its size.
//!
//! # Nothing lost
//!
//! A poison record is kept (a copy) in a ledger from the moment it is sent until the broker
//! acknowledges it; a failed delivery is sent again, with backoff, until it is. Each send
//! gets a number; the ingest thread holds a frozen checkpoint back until every poison
//! record sent before the freeze is acknowledged ([`DeadLetters::acknowledged_before`]), so
//! no checkpoint covers a record that is not in the dead-letter topic: after a crash the
//! records since the last checkpoint are read and dead-lettered again (at-least-once; the
//! source headers are the dedup key). While the topic does not acknowledge, the live
//! numbers keep moving, checkpoints wait, `/readyz` says so, and the ingest thread stops
//! reading once [`MAX_PENDING`] records wait (they stay in their source topics).

use crate::events::DecodeError;
use crate::kafka::{self, KafkaSettings};
use crate::log_every::LogEvery;
use crate::metrics::Metrics;
use rdkafka::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most poison records waiting for an acknowledgement before ingest stops reading.
pub const MAX_PENDING: usize = 10_000;

/// Most bytes of poison records (values and keys as first held) waiting for an
/// acknowledgement before ingest stops reading: ten 1 MB records do not hold 9 GB.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// Longest value a dead letter keeps: with our headers it stays under the producer's and the
/// broker's default 1 MB record limit. Longer values are cut to this prefix.
pub const MAX_PAYLOAD: usize = 900 * 1024;

/// How long the broker gets to acknowledge one attempt before it is failed and retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait before sending a failed record again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// At most one log line per this long about a dead-letter topic that does not acknowledge.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// While dead letters fail, the topic is created (if missing) at most this often.
const CREATE_EVERY: Duration = Duration::from_secs(10);

/// A poison record not yet acknowledged: what to send again.
struct Pending {
    key: Option<Vec<u8>>,
    /// The value, or its first [`MAX_PAYLOAD`] bytes (fewer after a size refusal).
    payload: Vec<u8>,
    /// Length and SHA-256 (hex) of the whole value, written when `payload` is shorter.
    original_size: usize,
    original_sha256: String,
    /// Origin and reason, then the record's own headers (dropped if even an empty value
    /// is refused for its size).
    ours: Vec<(&'static str, String)>,
    theirs: Option<OwnedHeaders>,
    origin: String,
    sent_at: Instant,
    /// Set when an attempt failed: when to send it again.
    retry_at: Option<Instant>,
    /// Bytes counted against [`MAX_PENDING_BYTES`] while it waits.
    held_bytes: usize,
}

/// Poison records in flight, by send number.
#[derive(Default)]
struct Ledger {
    next: u64,
    pending: BTreeMap<u64, Pending>,
    /// The `held_bytes` of `pending`, summed.
    bytes: usize,
    failures_log: Option<LogEvery>,
}

/// Acknowledges or fails deliveries in the ledger.
struct DeliveryReports {
    metrics: Arc<Metrics>,
    ledger: Arc<Mutex<Ledger>>,
    /// The client's own errors and logs, rate-limited.
    logs: kafka::QuietLogs,
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }
}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, number: Box<u64>) {
        let mut ledger = lock(&self.ledger);
        match result {
            Ok(_) => {
                if let Some(done) = ledger.pending.remove(&number) {
                    ledger.bytes -= done.held_bytes;
                    self.metrics.dead_lettered.inc();
                }
            }
            Err((error, _)) => {
                self.metrics.dead_letter_failures.inc();
                let now = Instant::now();
                let waiting = ledger.pending.len();
                if let Some(pending) = ledger.pending.get_mut(&number) {
                    if too_large(error) {
                        pending.shrink();
                    }
                    pending.retry_at = Some(now + RETRY_AFTER);
                    let origin = pending.origin.clone();
                    let log = ledger
                        .failures_log
                        .get_or_insert_with(|| LogEvery::new(LOG_EVERY));
                    if let Some(held_back) = log.allow(now) {
                        tracing::error!(error = %error, record = %origin, waiting, similar_errors_not_logged = held_back, "the dead-letter topic did not take a poison record; retrying, and no checkpoint covers it until it does");
                    }
                }
            }
        }
        self.metrics
            .control
            .set_dead_letters_pending(ledger.pending.len());
    }
}

/// A producer whose delivery reports settle `ledger`.
fn producer(
    settings: &KafkaSettings,
    metrics: &Arc<Metrics>,
    ledger: &Arc<Mutex<Ledger>>,
) -> Result<ThreadedProducer<DeliveryReports>, kafka::KafkaError> {
    kafka::producer_config(settings, ATTEMPT_TIMEOUT)
        .create_with_context(DeliveryReports {
            metrics: Arc::clone(metrics),
            ledger: Arc::clone(ledger),
            logs: kafka::QuietLogs::default(),
        })
        .map_err(kafka::KafkaError::Config)
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A producer to the dead-letter topic, and the poison records it has not delivered yet.
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryReports>,
    settings: KafkaSettings,
    /// When the topic was last created (asked to be), after a failed attempt.
    created_at: std::cell::Cell<Option<Instant>>,
    topic: String,
    metrics: Arc<Metrics>,
    ledger: Arc<Mutex<Ledger>>,
    /// Where the topic's creation thread is tracked.
    tasks: tokio_util::task::TaskTracker,
}

impl DeadLetters {
    /// A producer to `topic` on the broker of `settings`; the threads it starts are
    /// tracked by `tasks`.
    pub fn new(
        settings: &KafkaSettings,
        topic: String,
        metrics: Arc<Metrics>,
        tasks: tokio_util::task::TaskTracker,
    ) -> Result<DeadLetters, kafka::KafkaError> {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let producer = producer(settings, &metrics, &ledger)?;
        Ok(DeadLetters {
            producer,
            settings: settings.clone(),
            created_at: std::cell::Cell::new(None),
            topic,
            metrics,
            ledger,
            tasks,
        })
    }

    /// Sends `message` to the dead-letter topic with why it is poison, and keeps it until
    /// the broker acknowledges it. Counted and logged here.
    pub fn send(&self, message: &BorrowedMessage<'_>, error: &DecodeError) {
        self.metrics.poison_record(error);
        let value = message.payload().unwrap_or_default();
        tracing::warn!(error = %error, topic = message.topic(), partition = message.partition(), offset = message.offset(), bytes = value.len(), "poison record: sending it to the dead-letter topic");
        let pending = Pending {
            key: message.key().map(<[u8]>::to_vec),
            payload: value[..value.len().min(MAX_PAYLOAD)].to_vec(),
            original_size: value.len(),
            original_sha256: sha256_hex(value),
            ours: origin_headers(message, error),
            theirs: message.headers().map(|h| h.detach()),
            origin: format!(
                "{}/{}@{}",
                message.topic(),
                message.partition(),
                message.offset()
            ),
            sent_at: Instant::now(),
            retry_at: None,
            held_bytes: value.len().min(MAX_PAYLOAD) + message.key().map_or(0, <[u8]>::len),
        };
        let mut ledger = lock(&self.ledger);
        let number = ledger.next;
        ledger.next += 1;
        let mut pending = pending;
        if !self.produce(number, &mut pending) {
            pending.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
        ledger.bytes += pending.held_bytes;
        ledger.pending.insert(number, pending);
        self.metrics
            .control
            .set_dead_letters_pending(ledger.pending.len());
    }

    /// Queues one attempt; false if the producer refused it (a failed attempt, retried; one
    /// refused for its size is shrunk first).
    fn produce(&self, number: u64, pending: &mut Pending) -> bool {
        let mut record: BaseRecord<'_, [u8], [u8], Box<u64>> =
            BaseRecord::with_opaque_to(&self.topic, Box::new(number))
                .payload(pending.payload.as_slice())
                .headers(pending.headers());
        if let Some(key) = &pending.key {
            record = record.key(key.as_slice());
        }
        match self.producer.send(record) {
            Ok(()) => true,
            Err((error, _)) => {
                self.metrics.dead_letter_failures.inc();
                tracing::debug!(error = %error, record = %pending.origin, "could not queue a dead letter; retrying");
                if too_large(&error) {
                    pending.shrink();
                }
                false
            }
        }
    }

    /// Sends again every failed record whose wait is over; publishes the age of the oldest
    /// record waiting (what `/readyz` reads).
    pub fn retry_due(&self, now: Instant) {
        let mut ledger = lock(&self.ledger);
        let failing = ledger.pending.values().any(|p| p.retry_at.is_some());
        if failing
            && self
                .created_at
                .get()
                .is_none_or(|at| now.duration_since(at) >= CREATE_EVERY)
        {
            self.created_at.set(Some(now));
            self.create_topic();
        }
        for (number, pending) in &mut ledger.pending {
            if pending.retry_at.is_some_and(|at| at <= now) {
                pending.retry_at = (!self.produce(*number, pending)).then_some(now + RETRY_AFTER);
            }
        }
        let oldest = ledger
            .pending
            .values()
            .map(|p| now.saturating_duration_since(p.sent_at))
            .max()
            .unwrap_or_default();
        self.metrics.control.set_dead_letters_oldest(oldest);
    }

    /// Creates the topic if it is missing, on a thread of its own (the ingest thread never
    /// waits for it): `serve` makes it at start, but Kafka may have been away then, or the
    /// topic deleted since. A topic that exists is left alone.
    fn create_topic(&self) {
        let settings = self.settings.clone();
        let topic = self.topic.clone();
        let spawned = crate::tasks::spawn_thread(&self.tasks, "dead-letter-topic", move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot create the dead-letter topic");
                    return;
                }
            };
            let created = runtime.block_on(kafka::ensure_topics(
                &settings,
                &[topic.as_str()],
                1,
                ATTEMPT_TIMEOUT,
            ));
            match created {
                Ok(created) if !created.is_empty() => {
                    tracing::info!(topic, "created the missing dead-letter topic");
                }
                Ok(_) => tracing::info!(topic, "the dead-letter topic exists"),
                Err(error) => {
                    tracing::warn!(error = %error, topic, "could not create the dead-letter topic; trying again in 10 s");
                }
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(error = %error, "cannot start the dead-letter topic creation");
        }
    }

    /// How many poison records have been sent so far (the number the next one gets).
    pub fn sent(&self) -> u64 {
        lock(&self.ledger).next
    }

    /// Whether every poison record numbered below `number` is acknowledged.
    pub fn acknowledged_before(&self, number: u64) -> bool {
        lock(&self.ledger)
            .pending
            .first_key_value()
            .is_none_or(|(first, _)| *first >= number)
    }

    /// Whether so many records wait that ingest must stop reading.
    pub fn saturated(&self) -> bool {
        let ledger = lock(&self.ledger);
        ledger.pending.len() >= MAX_PENDING || ledger.bytes >= MAX_PENDING_BYTES
    }

    /// Waits (bounded) for the records in flight to be acknowledged: at shutdown.
    pub fn flush(&self) {
        if let Err(error) = self.producer.flush(Duration::from_secs(5)) {
            tracing::error!(error = %error, "dead-letter records still in flight at shutdown");
        }
    }
}

impl Pending {
    /// Our headers (with the original size and hash when the value is cut), then the
    /// record's own.
    fn headers(&self) -> OwnedHeaders {
        let size = self.original_size.to_string();
        let cut = self.payload.len() < self.original_size;
        let sized = cut.then_some([
            ("storepulse-original-size", size.as_str()),
            ("storepulse-original-sha256", self.original_sha256.as_str()),
        ]);
        let headers = self
            .ours
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .chain(sized.into_iter().flatten())
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value),
                })
            });
        match &self.theirs {
            Some(original) => original.iter().fold(headers, |headers, header| {
                headers.insert(Header {
                    key: header.key,
                    value: header.value,
                })
            }),
            None => headers,
        }
    }

    /// After a refusal for size: keep half as much of the value; with nothing left to cut,
    /// drop the record's own headers (ours, with the size and hash, always fit).
    fn shrink(&mut self) {
        if self.payload.is_empty() {
            if self.theirs.take().is_some() {
                self.ours
                    .push(("storepulse-headers-dropped", "true".to_owned()));
            }
        } else {
            self.payload.truncate(self.payload.len() / 2);
        }
        tracing::warn!(record = %self.origin, kept = self.payload.len(), original = self.original_size, "a dead letter was refused for its size; sending a shorter prefix of its value (the original size and SHA-256 are in its headers)");
    }
}

/// Whether a send failed because the record is larger than the producer or topic take.
fn too_large(error: &rdkafka::error::KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
}

/// Lower-case hex SHA-256 of `value`.
fn sha256_hex(value: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The origin and reason of a poison record.
fn origin_headers(
    message: &BorrowedMessage<'_>,
    error: &DecodeError,
) -> Vec<(&'static str, String)> {
    vec![
        ("storepulse-source-topic", message.topic().to_owned()),
        (
            "storepulse-source-partition",
            message.partition().to_string(),
        ),
        ("storepulse-source-offset", message.offset().to_string()),
        ("storepulse-error", error.label().to_owned()),
        ("storepulse-reason", error.to_string()),
    ]
}
