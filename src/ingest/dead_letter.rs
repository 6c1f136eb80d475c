//! The dead-letter topic: where a poison record goes, with its origin and reason in
//! headers, so nothing is lost and no partition stalls. The only producer of `serve`.
//!
//! Headers: `storepulse-source-topic`, `-source-partition`, `-source-offset`,
//! `storepulse-error` (the `DecodeError` label), `storepulse-reason` (its message), then
//! the record's own headers. Key and value are the record's, unchanged.

use crate::events::DecodeError;
use crate::kafka::{self, KafkaSettings};
use crate::metrics::Metrics;
use rdkafka::ClientContext;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::Arc;
use std::time::Duration;

/// Counts deliveries to the dead-letter topic and logs the failures.
struct DeliveryReports {
    metrics: Arc<Metrics>,
}

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
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

/// A producer to the dead-letter topic.
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryReports>,
    topic: String,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    /// A producer to `topic` on the broker of `settings`.
    pub fn new(
        settings: &KafkaSettings,
        topic: String,
        metrics: Arc<Metrics>,
    ) -> Result<DeadLetters, kafka::KafkaError> {
        let producer = kafka::producer_config(settings, Duration::from_secs(30))
            .create_with_context(DeliveryReports {
                metrics: Arc::clone(&metrics),
            })
            .map_err(kafka::KafkaError::Config)?;
        Ok(DeadLetters {
            producer,
            topic,
            metrics,
        })
    }

    /// Queues `message` for the dead-letter topic with why it is poison. Counted and
    /// logged here; the delivery report counts the outcome.
    pub fn send(&self, message: &BorrowedMessage<'_>, error: &DecodeError) {
        self.metrics.poison_record(error);
        tracing::warn!(error = %error, topic = message.topic(), partition = message.partition(), offset = message.offset(), "poison record sent to the dead-letter topic");
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .payload(message.payload().unwrap_or_default())
            .headers(headers(message, error));
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Err((error, _)) = self.producer.send(record) {
            Metrics::inc(&self.metrics.dead_letter_failures);
            tracing::error!(error = %error, partition = message.partition(), offset = message.offset(), "failed to queue a poison record for the dead-letter topic; it stays in its source topic");
        }
    }

    /// Waits (bounded) for the queued records to be delivered: at shutdown.
    pub fn flush(&self) {
        if let Err(error) = self.producer.flush(Duration::from_secs(5)) {
            tracing::error!(error = %error, "dead-letter records still queued at shutdown");
        }
    }
}

/// The origin and reason of a poison record, then its own headers.
fn headers(message: &BorrowedMessage<'_>, error: &DecodeError) -> OwnedHeaders {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let reason = error.to_string();
    let ours = [
        ("storepulse-source-topic", message.topic()),
        ("storepulse-source-partition", partition.as_str()),
        ("storepulse-source-offset", offset.as_str()),
        ("storepulse-error", error.label()),
        ("storepulse-reason", reason.as_str()),
    ];
    let headers = ours
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        });
    match message.headers() {
        Some(original) => original.iter().fold(headers, |headers, header| {
            headers.insert(Header {
                key: header.key,
                value: header.value,
            })
        }),
        None => headers,
    }
}
