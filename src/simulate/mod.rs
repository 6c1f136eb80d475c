//! `storepulse simulate`: produces a [`scenario::Scenario`] to the real broker at a target
//! rate, and accounts for every record.
//!
//! Shell around the pure generator: the only clock here paces the production. Every record
//! is either acknowledged by the broker or counted as failed; a run with failures ends in
//! an error (non-zero exit) rather than a quiet shortfall. Each record carries a W3C
//! `traceparent` header so a later trace can start at the producer.

pub use storepulse_core::scenario;

use crate::events::{Codec, EncodeError, Event};
use crate::kafka::{self, KafkaError, KafkaSettings};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use scenario::{Phase, Scenario, ScenarioConfig};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// How a simulation run is bounded and paced, beyond the scenario itself.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// What to generate.
    pub scenario: ScenarioConfig,
    /// Target records per second of wall-clock time; `None` produces as fast as the
    /// broker accepts.
    pub rate: Option<f64>,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop after this much wall-clock time.
    pub duration: Option<Duration>,
    /// Partitions for topics this run creates.
    pub partitions: i32,
    /// Create missing topics first (admin API).
    pub create_topics: bool,
    /// How long a record may wait for delivery before it counts as failed.
    pub message_timeout: Duration,
    /// Print a progress line this often (to stderr); `None` is quiet.
    pub progress_every: Option<Duration>,
    /// A buggy producer: records in a thousand corrupted ([`scenario::BuggyProducer`]).
    pub junk_per_mille: u32,
    /// Key every record by its store id, placed by Kafka's default partitioner (murmur2):
    /// the producer contract of a cluster (docs/api.md, "Producing for a cluster").
    /// Otherwise by order id, SKU or session (one process takes any key).
    pub key_by_store: bool,
    /// Confluent framing under a schema registry's ids (`--schema-registry`), registering
    /// storepulse's schemas first.
    pub registry: Option<RegistryProducer>,
}

/// Producing in the Confluent framing under a registry's ids.
#[derive(Clone)]
pub struct RegistryProducer {
    /// The registry (a blocking client is made for each registration, off the runtime).
    pub settings: crate::config::SchemaRegistrySection,
    /// After this many records, register the next version of the orders subject
    /// (`OrderPlaced` with a field added) and write orders under its id.
    pub evolve_at: Option<u64>,
}

impl std::fmt::Debug for RegistryProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryProducer")
            .field("evolve_at", &self.evolve_at)
            .finish_non_exhaustive()
    }
}

/// Registers storepulse's schemas (`evolved`: the next version of the orders subject) and
/// says how to frame records under the ids.
async fn register(
    registry: &RegistryProducer,
    topics: &crate::kafka::Topics,
    evolved: bool,
) -> Result<crate::registry::Framing, SimulateError> {
    let settings = registry.settings.clone();
    let topics = topics.clone();
    let (framing, subjects) = tokio::task::spawn_blocking(move || {
        crate::registry::register(&crate::registry::client(&settings, None)?, &topics, evolved)
    })
    .await
    .map_err(|e| SimulateError::Registry(e.to_string()))?
    .map_err(|e| SimulateError::Registry(format!("{e:#}")))?;
    for (subject, id) in subjects {
        eprintln!(
            "[simulate] schema registry: subject {subject} has id {id}{}",
            if evolved { " (evolved)" } else { "" }
        );
    }
    Ok(framing)
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Records handed to the producer.
    pub produced: u64,
    /// Records the broker acknowledged.
    pub acked: u64,
    /// Records whose delivery failed (or never completed before the final flush).
    pub failed: u64,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
    /// Wall-clock time from the first record to the end of the flush.
    pub elapsed: Duration,
    /// Times the producer's queue was full and production waited for the broker.
    pub backpressure_waits: u64,
}

impl Report {
    /// Acknowledged records per second of wall-clock time.
    pub fn achieved_rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why a simulation could not run, or did not deliver everything.
#[derive(Debug, Error)]
pub enum SimulateError {
    /// The scenario settings are out of range.
    #[error("invalid scenario: {0}")]
    InvalidScenario(String),
    /// The schemas did not load (a build defect).
    #[error("failed to load schemas: {0}")]
    Schemas(crate::events::codec::SchemaError),
    /// A generated event did not encode (a defect).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Talking to the broker failed before production started.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The schema registry refused or did not answer a registration.
    #[error("schema registry: {0}")]
    Registry(String),
    /// Some records were not delivered. The report says how many.
    #[error("{} of {} records were not delivered (first error: {})", report.failed, report.produced, report.first_error.as_deref().unwrap_or("none reported"))]
    Undelivered {
        /// What the run did.
        report: Report,
    },
}

/// Counts delivery reports; runs on the producer's polling thread.
#[derive(Default)]
struct DeliveryCounter {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// A W3C trace context header value with random ids (never all-zero), sampled or not.
fn traceparent(rng: &mut ChaCha8Rng, sampled: bool) -> String {
    let trace_id: u128 = rng.random::<u128>().max(1);
    let span_id: u64 = rng.random::<u64>().max(1);
    let flags = if sampled { "01" } else { "00" };
    format!("00-{trace_id:032x}-{span_id:016x}-{flags}")
}

// Display says the cause; `source()` does not repeat it.
impl From<crate::events::codec::SchemaError> for SimulateError {
    fn from(error: crate::events::codec::SchemaError) -> Self {
        SimulateError::Schemas(error)
    }
}

/// Produces the scenario until its count or duration is reached, or `stop` is cancelled;
/// then flushes and reports. Errors if any record was not delivered.
pub async fn run(
    settings: &KafkaSettings,
    options: SimulateOptions,
    stop: CancellationToken,
) -> Result<Report, SimulateError> {
    options
        .scenario
        .validate()
        .map_err(SimulateError::InvalidScenario)?;
    let codec = Codec::new(&Default::default())?;
    let mut framing = match &options.registry {
        Some(registry) => Some(register(registry, &settings.topics, false).await?),
        None => None,
    };
    if options.create_topics {
        create_topics(settings, &options).await?;
    }
    let mut config = kafka::producer_config(settings, options.message_timeout);
    if options.key_by_store {
        // Java's default partitioner, as the contract says.
        config.set("partitioner", "murmur2_random");
    }
    let producer: ThreadedProducer<DeliveryCounter> = config
        .create_with_context(DeliveryCounter::default())
        .map_err(KafkaError::Config)?;
    let counter: Arc<DeliveryCounter> = Arc::clone(producer.context());
    let mut scenario = Scenario::new(options.scenario.clone());
    let mut trace_rng = ChaCha8Rng::seed_from_u64(options.scenario.seed ^ 0x7472_6163_6570_6172);
    let mut buggy = scenario::BuggyProducer::new(options.scenario.seed, options.junk_per_mille);
    let count = options.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut produced: u64 = 0;
    let mut backpressure_waits: u64 = 0;
    let mut next_progress = options.progress_every.map(|every| started + every);
    'production: while produced < count && !stop.is_cancelled() {
        let elapsed = started.elapsed();
        if options.duration.is_some_and(|limit| elapsed >= limit) {
            break;
        }
        // Records due by now at the target rate; with no rate, a batch at a time.
        let due = match options.rate {
            Some(rate) => ((elapsed.as_secs_f64() * rate) as u64).min(count),
            None => (produced + 10_000).min(count),
        };
        while produced < due {
            let mut event = scenario.next().unwrap_or_else(|| unreachable!("endless"));
            let junk = buggy.corrupt(&mut event);
            if let Some(registry) = &options.registry
                && registry.evolve_at == Some(produced)
            {
                framing = Some(register(registry, &settings.topics, true).await?);
            }
            let payload = match &framing {
                Some(framing) => framing.encode(&codec, &event)?,
                None => codec.encode(&event)?,
            };
            let mut outgoing = Outgoing::of(settings, &event, &payload, junk, &mut trace_rng);
            if options.key_by_store {
                outgoing.key = event.store_id().as_str().to_owned();
            }
            match send(&producer, &outgoing, &counter, &stop).await {
                Some(waits) => backpressure_waits += waits,
                None => break 'production,
            }
            produced += 1;
        }
        if let Some(at) = next_progress.filter(|at| Instant::now() >= *at) {
            print_progress(started, produced, &counter, scenario.phase());
            next_progress = options.progress_every.map(|every| at + every);
        }
        pace(options.rate, produced, started, &stop).await;
    }
    let report = finish(
        producer,
        &counter,
        &options,
        produced,
        started,
        backpressure_waits,
    )
    .await;
    if options.progress_every.is_some() {
        print_progress(started, produced, &counter, scenario.phase());
    }
    if report.failed > 0 || report.acked < report.produced {
        return Err(SimulateError::Undelivered { report });
    }
    Ok(report)
}

/// Creates the three topics if they are missing (a broker that cannot create them within
/// the delivery timeout cannot take records either).
async fn create_topics(
    settings: &KafkaSettings,
    options: &SimulateOptions,
) -> Result<(), SimulateError> {
    let timeout = options.message_timeout.min(Duration::from_secs(30));
    let names = settings.topics.all();
    let created = kafka::ensure_topics(settings, &names, options.partitions, timeout).await?;
    if !created.is_empty() {
        tracing::info!(topics = ?created, partitions = options.partitions, "created topics");
    }
    Ok(())
}

/// One record about to be produced: its topic, key, value, Kafka timestamp and trace context.
struct Outgoing<'a> {
    topic: &'a str,
    key: String,
    payload: &'a [u8],
    timestamp: i64,
    traceparent: String,
}

impl<'a> Outgoing<'a> {
    fn of(
        settings: &'a KafkaSettings,
        event: &Event,
        payload: &'a [u8],
        junk: Option<scenario::Junk>,
        trace_rng: &mut ChaCha8Rng,
    ) -> Outgoing<'a> {
        let topic = settings.topics.name(event.kind().topic_role());
        // With an exporter: a PRODUCER span per record the sampler picks, whose context
        // the record carries, so its trace begins here; the others carry a context
        // marked not sampled (the producer decided; serve follows). Without an
        // exporter: a random context marked sampled, as an upstream system that traces
        // elsewhere would send.
        let traceparent = match crate::telemetry::producer_span(topic, event.key()) {
            Some((_, traceparent)) => traceparent,
            None => traceparent(trace_rng, !crate::telemetry::enabled()),
        };
        Outgoing {
            topic,
            key: event.key().to_owned(),
            payload,
            // The record's Kafka timestamp is its event time: replay finds a time range by
            // record time (offsets for times), and serve's future guard, which compares the
            // two, takes every simulated record (the broker refuses timestamps more than
            // `message.timestamp.after.max.ms`, 1 h, ahead). A buggy producer's
            // future-dated records carry no timestamp (CreateTime −1).
            timestamp: if junk == Some(scenario::Junk::NoTimestamp) {
                -1
            } else {
                event.occurred_at()
            },
            traceparent,
        }
    }
}

/// Queues one record, waiting while the producer's queue is full (the broker is slower
/// than the target rate: never drop). The waits it took, or `None` if stopped meanwhile; a
/// record the producer refuses is counted as failed.
async fn send(
    producer: &ThreadedProducer<DeliveryCounter>,
    outgoing: &Outgoing<'_>,
    counter: &DeliveryCounter,
    stop: &CancellationToken,
) -> Option<u64> {
    let mut record = BaseRecord::to(outgoing.topic)
        .key(outgoing.key.as_str())
        .payload(outgoing.payload)
        .timestamp(outgoing.timestamp)
        .headers(OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(outgoing.traceparent.as_str()),
        }));
    let mut waits = 0;
    loop {
        match producer.send(record) {
            Ok(()) => return Some(waits),
            Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                waits += 1;
                record = back;
                if stop.is_cancelled() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((error, _)) => {
                counter.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = counter.first_error.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
                return Some(waits);
            }
        }
    }
}

/// Waits until the next record is due at `rate` (a short nap, so stop is noticed), or
/// yields when there is no rate.
async fn pace(rate: Option<f64>, produced: u64, started: Instant, stop: &CancellationToken) {
    match rate {
        Some(rate) => {
            let next_due = Duration::from_secs_f64((produced + 1) as f64 / rate);
            let wait = next_due.saturating_sub(started.elapsed());
            tokio::select! {
                () = tokio::time::sleep(wait.clamp(Duration::from_micros(200), Duration::from_millis(50))) => {}
                () = stop.cancelled() => {}
            }
        }
        None => tokio::task::yield_now().await,
    }
}

/// Flushes (every record gets its delivery report within `message.timeout.ms`; this waits
/// a bit longer) and reports; records still in flight after the flush count as failed.
async fn finish(
    producer: ThreadedProducer<DeliveryCounter>,
    counter: &DeliveryCounter,
    options: &SimulateOptions,
    produced: u64,
    started: Instant,
    backpressure_waits: u64,
) -> Report {
    let flush_timeout = options.message_timeout + Duration::from_secs(5);
    let flushed = tokio::task::spawn_blocking(move || {
        let result = producer.flush(flush_timeout);
        (producer, result)
    })
    .await
    .unwrap_or_else(|e| panic!("flush thread panicked: {e}"));
    let acked = counter.acked.load(Ordering::Relaxed);
    let mut failed = counter.failed.load(Ordering::Relaxed);
    let mut first_error = counter.first_error.lock().ok().and_then(|e| e.clone());
    if let (_, Err(e)) = &flushed {
        failed = produced.saturating_sub(acked);
        first_error.get_or_insert_with(|| format!("flush did not complete: {e}"));
    }
    drop(flushed);
    Report {
        produced,
        acked,
        failed,
        first_error,
        elapsed: started.elapsed(),
        backpressure_waits,
    }
}

fn print_progress(started: Instant, produced: u64, counter: &DeliveryCounter, phase: Phase) {
    let elapsed = started.elapsed().as_secs_f64();
    let acked = counter.acked.load(Ordering::Relaxed);
    let phase = match phase {
        Phase::Baseline => "baseline",
        Phase::FlashSale => "FLASH SALE",
        Phase::AfterSale => "after the sale",
    };
    eprintln!(
        "[simulate] {elapsed:7.1} s  produced {produced:>9}  in kafka (acked) {acked:>9}  failed {:>5}  {:>8.0} records/s  {phase}",
        counter.failed.load(Ordering::Relaxed),
        acked as f64 / elapsed.max(1e-9),
    );
}
