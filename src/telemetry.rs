//! Traces: the one module that knows OpenTelemetry. It builds the OTLP/HTTP exporter from
//! the standard `OTEL_*` variables, carries W3C trace context in and out of Kafka headers,
//! and names the messaging attributes (semantic conventions still change: they live here).
//!
//! No endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), or
//! `OTEL_SDK_DISABLED=true`: no exporter, no tracer, no thread, and the record path checks
//! one boolean. With one: the SDK's batch processor exports on a thread of its own, the
//! resource comes from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, headers from
//! `OTEL_EXPORTER_OTLP_HEADERS`; spans are flushed by [`Telemetry::shutdown`], after the
//! final checkpoint.
//!
//! Sampling (`OTEL_TRACES_SAMPLER`/`_ARG`) is decided here, before any span object exists:
//! a record whose `traceparent` is sampled gets a span (its flag is read without parsing
//! the header); a record without one is a root, and [`RootSampler`] picks every n-th
//! (`traceidratio` 0.01: one in 100; `always_on` and the default `parentbased_always_on`:
//! all; `*always_off`: none). The SDK then samples whatever is started (parent-based,
//! roots always on), so a ratio is applied once, not twice.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported: checked on every record, so a plain flag.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether records' `traceparent` headers are read (`telemetry.producer_context`).
static FOLLOW_PRODUCER: AtomicBool = AtomicBool::new(true);

/// Sets whether `serve` reads each record's `traceparent` (true: continue the producer's
/// trace; false: never read headers, every record is a root for the [`RootSampler`]).
pub fn follow_producer_context(follow: bool) {
    FOLLOW_PRODUCER.store(follow, Ordering::Relaxed);
}

/// Root spans: one in this many is started (0: none).
static ROOT_EVERY: AtomicU64 = AtomicU64::new(1);

/// Roots seen so far (the ingest thread's or the simulator's; one writer each).
static ROOTS_SEEN: AtomicU64 = AtomicU64::new(0);

/// Which roots get a span, from `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSampler {
    /// Every n-th root (1: all).
    Every(u64),
    /// None.
    Never,
}

impl RootSampler {
    /// The spec's samplers; records with a `traceparent` follow its sampled flag whichever
    /// is chosen (storepulse reads `always_on`, `always_off` and `traceidratio` as their
    /// `parentbased_` forms). An unknown sampler or a bad ratio is an error.
    pub fn from_spec(sampler: Option<&str>, arg: Option<&str>) -> Result<RootSampler, String> {
        let ratio = || -> Result<RootSampler, String> {
            let ratio: f64 = match arg {
                None => 1.0,
                Some(arg) => arg
                    .trim()
                    .parse()
                    .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG {arg:?} is not a number"))?,
            };
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG {ratio} is not between 0 and 1"
                ));
            }
            Ok(if ratio == 0.0 {
                RootSampler::Never
            } else {
                RootSampler::Every((1.0 / ratio).round().max(1.0) as u64)
            })
        };
        match sampler.map(str::trim) {
            None | Some("" | "always_on" | "parentbased_always_on") => Ok(RootSampler::Every(1)),
            Some("always_off" | "parentbased_always_off") => Ok(RootSampler::Never),
            Some("traceidratio" | "parentbased_traceidratio") => ratio(),
            Some(other) => Err(format!(
                "OTEL_TRACES_SAMPLER {other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            )),
        }
    }
}

/// Whether this root (a record without `traceparent`, a record the simulator sends) gets a
/// span: an uncontended counter, no span object unless it does.
pub fn root_sampled() -> bool {
    let every = ROOT_EVERY.load(Ordering::Relaxed);
    every != 0
        && ROOTS_SEEN
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(every)
}

/// Messaging attribute names (OpenTelemetry semantic conventions for Kafka).
pub mod attributes {
    /// `kafka`.
    pub const SYSTEM: &str = "messaging.system";
    /// The topic.
    pub const DESTINATION: &str = "messaging.destination.name";
    /// The partition, as a string.
    pub const PARTITION: &str = "messaging.destination.partition.id";
    /// The record's offset.
    pub const OFFSET: &str = "messaging.kafka.offset";
    /// The consumer group.
    pub const GROUP: &str = "messaging.consumer.group.name";
    /// `send`, `process`.
    pub const OPERATION_TYPE: &str = "messaging.operation.type";
}

/// The tracer provider, if traces are exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// A layer for `tracing` that turns its spans into OpenTelemetry spans.
pub type Layer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>;

impl Telemetry {
    /// From the environment; `service` names this process when `OTEL_SERVICE_NAME` (or a
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) does not.
    pub fn from_env<S>(service: &str) -> (Telemetry, Option<Layer<S>>)
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if disabled || endpoint.is_none() {
            return (Telemetry { provider: None }, None);
        }
        let roots = RootSampler::from_spec(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )
        .unwrap_or_else(|error| {
            eprintln!("[storepulse] {error}; sampling every root (parentbased_always_on)");
            RootSampler::Every(1)
        });
        ROOT_EVERY.store(
            match roots {
                RootSampler::Every(n) => n,
                RootSampler::Never => 0,
            },
            Ordering::Relaxed,
        );
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => exporter,
            Err(error) => {
                eprintln!("[storepulse] OTLP exporter not started: {error}");
                return (Telemetry { provider: None }, None);
            }
        };
        let named = var("OTEL_SERVICE_NAME").is_some()
            || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !named {
            resource = resource.with_service_name(service.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // What is started is sampled: the decision was made above (see the module doc).
            .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::AlwaysOn,
            )))
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("storepulse"));
        ENABLED.store(true, Ordering::Relaxed);
        (
            Telemetry {
                provider: Some(provider),
            },
            Some(layer),
        )
    }

    /// Exports what is buffered and stops the exporter (at the very end of a command).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown() {
                eprintln!("[storepulse] traces not all exported at shutdown: {error}");
            }
        }
    }
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A record's headers as a propagator reads them.
struct KafkaHeaders<'a>(&'a rdkafka::message::BorrowedHeaders);

impl Extractor for KafkaHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// Whether a `traceparent` value says "sampled" (its flags' low bit), without parsing
/// the rest: the cheap check of every record.
fn sampled_flag(traceparent: &[u8]) -> bool {
    traceparent.len() == 55
        && traceparent[53..].iter().all(u8::is_ascii_hexdigit)
        && (traceparent[54] as char)
            .to_digit(16)
            .is_some_and(|d| d & 1 == 1)
}

/// The `process {topic}` span of a record whose trace context is sampled (a CONSUMER span,
/// child of the producer's), or of a record without one that the [`RootSampler`] picks (a
/// root); else `None`, and nothing is created. The span's `trace_id` and `span_id` are
/// also fields, so JSON log lines inside it carry them.
pub fn record_span(message: &BorrowedMessage<'_>, group: &str) -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    let headers = if FOLLOW_PRODUCER.load(Ordering::Relaxed) {
        message.headers()
    } else {
        None // never parsed: the cost of reading them is what this setting avoids
    };
    let parent = match headers {
        Some(headers) => match headers.iter().find(|h| h.key == "traceparent") {
            Some(header) => {
                if !header.value.is_some_and(sampled_flag) {
                    return None;
                }
                Some(opentelemetry::global::get_text_map_propagator(|p| {
                    p.extract(&KafkaHeaders(headers))
                }))
            }
            None => None,
        },
        None => None,
    };
    if parent.is_none() && !root_sampled() {
        return None;
    }
    let topic = message.topic();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        "messaging.system" = "kafka",
        "messaging.destination.name" = topic,
        "messaging.destination.partition.id" = %message.partition(),
        "messaging.kafka.offset" = message.offset(),
        "messaging.consumer.group.name" = group,
        "messaging.operation.type" = "process",
        "storepulse.event_id" = tracing::field::Empty,
        "storepulse.store_id" = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
    let context = span_context(&span);
    span.record("trace_id", tracing::field::display(context.trace_id()));
    span.record("span_id", tracing::field::display(context.span_id()));
    Some(span)
}

/// Whether a stream connection is traced: its request's `traceparent` is sampled, or,
/// without one, the [`RootSampler`] picks it. Only traced connections get `write` spans.
pub fn connection_traced(traceparent: Option<&[u8]>) -> bool {
    enabled()
        && match traceparent {
            Some(value) => sampled_flag(value),
            None => root_sampled(),
        }
}

/// The `write` span of a frame to one traced connection: a child of the frame's span, so
/// an order's trace ends at the bytes handed to the client's socket.
pub fn write_span(frame: SpanContext, seq: u64, scope: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "write",
        "storepulse.frame.seq" = seq,
        "storepulse.scope" = scope.unwrap_or("all"),
        "storepulse.write.bytes" = tracing::field::Empty,
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(frame));
    span
}

/// On a sampled record's span: the event decoded (its id and store as attributes).
pub fn decoded(span: &tracing::Span, event_id: &str, store: &str) {
    span.record("storepulse.event_id", event_id);
    span.record("storepulse.store_id", store);
    span.add_event("decoded", Vec::new());
}

/// On a sampled record's span: what applying it did (`applied`, `duplicate`, …).
pub fn applied(span: &tracing::Span, outcome: &'static str, late: bool) {
    span.add_event(
        "applied",
        vec![
            opentelemetry::KeyValue::new("storepulse.outcome", outcome),
            opentelemetry::KeyValue::new("storepulse.late", late),
        ],
    );
}

/// Marks a span as failed with `reason` (a dead-lettered record).
pub fn fail(span: &tracing::Span, reason: &str) {
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
}

/// The OpenTelemetry context of a span, to link to it.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// A `send {topic}` PRODUCER span for a record about to be produced, and the
/// `traceparent` that carries it; `None` when no spans are exported.
pub fn producer_span(topic: &str, key: &str) -> Option<(tracing::Span, String)> {
    if !enabled() || !root_sampled() {
        return None;
    }
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        "messaging.system" = "kafka",
        "messaging.destination.name" = topic,
        "messaging.operation.type" = "send",
        "messaging.kafka.message.key" = key,
    );
    let mut carrier = TraceParent(None);
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&span.context(), &mut carrier)
    });
    Some((span, carrier.0?))
}

/// Collects the `traceparent` a propagator writes.
struct TraceParent(Option<String>);

impl Injector for TraceParent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampled_flag_is_read_from_the_last_hex_digit_only_when_the_header_is_well_formed() {
        let id = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331";
        assert!(sampled_flag(format!("{id}-01").as_bytes()));
        assert!(sampled_flag(format!("{id}-03").as_bytes()));
        assert!(!sampled_flag(format!("{id}-00").as_bytes()));
        assert!(!sampled_flag(format!("{id}-0x").as_bytes()));
        assert!(!sampled_flag(b"00-short-01"));
        assert!(!sampled_flag(b""));
    }

    #[test]
    fn samplers_follow_the_spec_names_and_a_ratio_picks_one_root_in_n() {
        let from = RootSampler::from_spec;
        assert_eq!(from(None, None), Ok(RootSampler::Every(1)));
        assert_eq!(
            from(Some("parentbased_always_on"), None),
            Ok(RootSampler::Every(1))
        );
        assert_eq!(from(Some("always_off"), None), Ok(RootSampler::Never));
        assert_eq!(
            from(Some("traceidratio"), Some("0.01")),
            Ok(RootSampler::Every(100))
        );
        assert_eq!(
            from(Some("parentbased_traceidratio"), Some("0.3")),
            Ok(RootSampler::Every(3))
        );
        assert_eq!(
            from(Some("traceidratio"), Some("0")),
            Ok(RootSampler::Never)
        );
        assert_eq!(from(Some("traceidratio"), None), Ok(RootSampler::Every(1)));
        assert!(
            from(Some("traceidratio"), Some("2"))
                .expect_err("an error")
                .contains("between 0 and 1")
        );
        assert!(from(Some("traceidratio"), Some("x")).is_err());
        assert!(
            from(Some("jaeger_remote"), None)
                .expect_err("an error")
                .contains("not one of")
        );
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported_and_no_span_is_made() {
        // The test process has no OTEL_* endpoint set.
        let (telemetry, layer) =
            Telemetry::from_env::<tracing_subscriber::Registry>("storepulse-test");
        assert!(layer.is_none());
        assert!(!enabled());
        assert!(producer_span("orders", "k").is_none());
        telemetry.shutdown();
    }
}
