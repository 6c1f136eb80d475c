//! Fetching writer schemas from a Confluent-compatible schema registry
//! (`schema_registry.url`), for the ingest thread, and holding the partitions that wait for
//! one.
//!
//! The first record of an id the codec does not know stops its partition there: the
//! partition is paused (the others go on), the id is asked of the [`Fetcher`]'s own thread,
//! and nothing of that partition is applied or skipped meanwhile. When the registry answers
//! the schema (resolved by `events::RegisteredSchema::resolve`) or that it has no such id,
//! the codec learns the outcome, the partition is sought back to the waiting record and
//! resumed: the record decodes, or is dead-lettered with its reason
//! (`unknown_confluent_id`, `incompatible_schema`). A registry that is down or slow only
//! delays the partitions waiting for a new id: the fetch is tried again (0.5 s doubling to
//! 10 s) until it answers, and nothing is lost. Every id is fetched once while the codec
//! remembers it (`schema_registry.max_schemas`).

use crate::config::SchemaRegistrySection;
use crate::events::{Codec, Refusal, RegisteredSchema};
use crate::metrics::Metrics;
use crate::registry::{Answer, RegistryClient, Unavailable};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// First wait before a failed fetch is tried again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// The fetching thread: ids in, answers out; each id asked once until answered.
pub struct Fetcher {
    ask: mpsc::Sender<u32>,
    answers: mpsc::Receiver<(u32, Answer)>,
    asked: HashSet<u32>,
}

impl Fetcher {
    /// Starts the thread, which makes its blocking HTTP client (never on the async
    /// runtime); it ends when the fetcher drops.
    pub fn start(
        settings: SchemaRegistrySection,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Fetcher> {
        let (ask, asks) = mpsc::channel::<u32>();
        let (answer, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("schema-fetch".into())
            .spawn(move || {
                let client = match RegistryClient::new(&settings) {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::error!(error = %error, "no schema registry client: records of new ids wait");
                        return;
                    }
                };
                let mut log = crate::log_every::LogEvery::new(Duration::from_secs(10));
                while let Ok(id) = asks.recv() {
                    let mut wait = FIRST_RETRY;
                    let found = loop {
                        match client.fetch(id) {
                            Ok(found) => break found,
                            Err(Unavailable(why)) => {
                                metrics.schema_fetch(crate::metrics::SchemaFetch::Failed);
                                metrics.schema_registry_down.set(1);
                                if let Some(held_back) = log.allow(std::time::Instant::now()) {
                                    tracing::warn!(id, error = %why, retry_in = ?wait, similar_errors_not_logged = held_back, "schema registry unavailable: the partitions waiting for this id wait (nothing is skipped)");
                                }
                                std::thread::sleep(wait);
                                wait = (wait * 2).min(MAX_RETRY);
                            }
                        }
                    };
                    metrics.schema_registry_down.set(0);
                    if answer.send((id, found)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Fetcher {
            ask,
            answers,
            asked: HashSet::new(),
        })
    }

    /// Asks for `id` unless it was asked already.
    fn want(&mut self, id: u32) {
        if self.asked.insert(id) {
            let _ = self.ask.send(id);
        }
    }
}

/// A partition stopped at a record whose schema is being fetched.
struct Waiting {
    offset: i64,
    id: u32,
}

/// The registry side of the ingest thread: the fetcher and the partitions waiting for it.
pub struct SchemaWait {
    fetcher: Fetcher,
    waiting: HashMap<(String, i32), Waiting>,
    metrics: Arc<Metrics>,
}

impl SchemaWait {
    /// With a registry configured: its fetcher; `None` without one.
    pub fn start(
        settings: &SchemaRegistrySection,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Option<SchemaWait>> {
        if settings.url.is_empty() {
            return Ok(None);
        }
        let fetcher = Fetcher::start(settings.clone(), Arc::clone(metrics))?;
        Ok(Some(SchemaWait {
            fetcher,
            waiting: HashMap::new(),
            metrics: Arc::clone(metrics),
        }))
    }

    /// Whether a record of `topic`/`partition` is to be left alone: its partition waits at
    /// an earlier record (it is read again once the wait ends).
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        // Asked of every record: no key is built while nothing waits (the usual case).
        !self.waiting.is_empty() && self.waiting.contains_key(&(topic.to_owned(), partition))
    }

    /// Stops the partition at this record if its schema must be fetched first; true if it
    /// did (the record is then neither applied nor skipped).
    pub fn stop_if_unknown(
        &mut self,
        codec: &Codec,
        consumer: &crate::kafka::Consumer,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: Option<&[u8]>,
    ) -> bool {
        let Some(id) = payload.and_then(|bytes| codec.wants_schema(bytes)) else {
            return false;
        };
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        if let Err(error) = consumer.pause(&list) {
            tracing::warn!(topic, partition, error = %error, "cannot pause a partition waiting for a schema");
        }
        self.waiting
            .insert((topic.to_owned(), partition), Waiting { offset, id });
        self.metrics
            .schema_waiting_partitions
            .set(i64::try_from(self.waiting.len()).unwrap_or(i64::MAX));
        tracing::info!(
            topic,
            partition,
            offset,
            id,
            "fetching schema {id} from the registry; the partition waits at this record"
        );
        self.fetcher.want(id);
        true
    }

    /// Takes the registry's answers into the codec and resumes the partitions that waited
    /// for them, each from its waiting record.
    pub fn take_answers(&mut self, codec: &mut Codec, consumer: &crate::kafka::Consumer) {
        while let Ok((id, answer)) = self.fetcher.answers.try_recv() {
            self.fetcher.asked.remove(&id);
            let outcome = match answer {
                Answer::Schema(text) => RegisteredSchema::resolve(&text),
                Answer::NotFound => Err(Refusal::NotFound),
                Answer::NotAvro(kind) => {
                    Err(Refusal::Incompatible(format!("a {kind} schema, not Avro")))
                }
            };
            let kind = match &outcome {
                Ok(schema) => {
                    tracing::info!(id, kinds = ?schema.kinds(), "schema {id} from the registry resolved");
                    crate::metrics::SchemaFetch::Found
                }
                Err(Refusal::NotFound) => {
                    tracing::warn!(
                        id,
                        "the registry has no schema {id}: its records are dead-lettered (unknown_confluent_id)"
                    );
                    crate::metrics::SchemaFetch::NotFound
                }
                Err(Refusal::Incompatible(why)) => {
                    tracing::warn!(id, reason = %why, "schema {id} is incompatible: its records are dead-lettered (incompatible_schema)");
                    crate::metrics::SchemaFetch::Incompatible
                }
            };
            self.metrics.schema_fetch(kind);
            codec.learn(id, outcome);
            self.metrics
                .registry_schemas_held
                .set(i64::try_from(codec.registry_ids_held()).unwrap_or(i64::MAX));
            let resumed: Vec<(String, i32)> = self
                .waiting
                .iter()
                .filter(|(_, w)| w.id == id)
                .map(|(key, _)| key.clone())
                .collect();
            for key in resumed {
                let Some(waiting) = self.waiting.remove(&key) else {
                    continue;
                };
                let (topic, partition) = &key;
                // Back to the waiting record: what was read after it meanwhile was left
                // alone, and is read again.
                if let Err(error) = consumer.seek(
                    topic,
                    *partition,
                    Offset::Offset(waiting.offset),
                    Duration::from_secs(5),
                ) {
                    tracing::error!(topic, partition, error = %error, "cannot seek back to the record that waited for its schema; it waits on");
                    self.waiting.insert(key, waiting);
                    continue;
                }
                let mut list = TopicPartitionList::new();
                list.add_partition(topic, *partition);
                if let Err(error) = consumer.resume(&list) {
                    tracing::error!(topic, partition, error = %error, "cannot resume a partition after its schema came");
                }
            }
            self.metrics
                .schema_waiting_partitions
                .set(i64::try_from(self.waiting.len()).unwrap_or(i64::MAX));
        }
    }
}
