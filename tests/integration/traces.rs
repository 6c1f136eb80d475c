//! Traces in a real Jaeger (`scripts/stack up jaeger`): one order's trace goes from the
//! simulator's PRODUCER span through `serve`'s CONSUMER `process` span (with its topic,
//! partition and offset) to the frame that carried it and its fan-out; a poison record's
//! span is an error. Without an endpoint nothing is exported and no exporter thread runs.

use crate::helpers::{self, Server, database_url, fresh_topics};
use serde_json::Value;
use std::time::{Duration, Instant};

fn jaeger_api() -> String {
    let port = std::env::var("STOREPULSE_JAEGER_QUERY_PORT").unwrap_or_else(|_| "16686".into());
    format!("127.0.0.1:{port}")
}

fn otlp_endpoint() -> String {
    let port = std::env::var("STOREPULSE_JAEGER_OTLP_PORT").unwrap_or_else(|_| "14318".into());
    format!("http://127.0.0.1:{port}")
}

/// One span as Jaeger's API returns it.
#[derive(Debug)]
struct Span {
    name: String,
    kind: String,
    attributes: serde_json::Map<String, Value>,
    status: String,
    /// Trace ids of the spans it links to.
    links: Vec<String>,
}

/// Every span of a trace, flattened.
fn spans_of(trace_id: &str) -> Vec<Span> {
    let Some(body) = jaeger_get(&format!("/api/v3/traces/{trace_id}")) else {
        return Vec::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for resource in json["result"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let mut attributes = serde_json::Map::new();
                for a in span["attributes"].as_array().into_iter().flatten() {
                    let value = &a["value"];
                    let value = value
                        .get("stringValue")
                        .or_else(|| value.get("intValue"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    attributes.insert(a["key"].as_str().unwrap_or_default().to_owned(), value);
                }
                out.push(Span {
                    name: span["name"].as_str().unwrap_or_default().to_owned(),
                    kind: span["kind"].to_string(),
                    attributes,
                    status: span["status"]["code"].to_string(),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["traceId"].as_str().map(str::to_owned))
                        .collect(),
                });
            }
        }
    }
    out
}

/// A GET against Jaeger's API over HTTP/1.0 (so the body is not chunked); `None` unless 200.
fn jaeger_get(path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(jaeger_api()).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
        jaeger_api()
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

fn trace_id(traceparent: &str) -> String {
    traceparent
        .split('-')
        .nth(1)
        .expect("a trace id")
        .to_owned()
}

fn as_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orders_trace_runs_from_the_producer_through_processing_and_its_frame_to_the_write_to_a_client()
 {
    let settings = fresh_topics("traces");
    let service = helpers::unique("traced");
    let endpoint = otlp_endpoint();
    let server = Server::start_with(
        &settings.topics,
        &helpers::unique("traces"),
        &database_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", service.as_str()),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    let threads = helpers::thread_names(server.pid());
    assert!(
        threads.iter().any(|t| t.starts_with("OpenTelemetry")),
        "an exporter thread runs: {threads:?}"
    );
    // Topics first, so the stream below opens on an assigned layout.
    helpers::create_topics(&settings, 2).await;
    helpers::wait_for(
        || server.get("/api/snapshot").0 == 200,
        "partitions assigned",
    )
    .await;
    // A dashboard whose request carries a sampled context: its connection is traced, so
    // the frames it is written get `write` spans. It reads until serve stops.
    let reader = {
        let address = server.address.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(&address).expect("connects");
            let parent = format!(
                "00-{:032x}-{:016x}-01",
                rand::random::<u128>() | 1,
                rand::random::<u64>() | 1
            );
            write!(
                stream,
                "GET /api/stream HTTP/1.1\r\nHost: {address}\r\ntraceparent: {parent}\r\n\r\n"
            )
            .expect("request");
            let mut read = 0usize;
            let mut buffer = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                read += n;
            }
            read
        })
    };
    // The simulator, traced too: it creates the topics and sends 300 records, paced so
    // that each frame carries a few (a frame links at most 32 sampled records).
    let status = crate::helpers::storepulse(&settings.topics)
        .args([
            "simulate",
            "--quiet",
            "--count",
            "300",
            "--rate",
            "200",
            "--partitions",
            "2",
        ])
        .args([
            "--start",
            "2026-11-27T14:00:00Z",
            "--stores",
            "2",
            "--skus",
            "5",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", format!("{service}-sim"))
        .status()
        .expect("simulate runs");
    assert!(status.success());
    // A poison record whose context is sampled.
    let poison_trace = format!("{:032x}", rand::random::<u128>() | 1);
    produce_with_traceparent(
        &settings.topics.orders,
        &format!("00-{poison_trace}-{:016x}-01", rand::random::<u64>() | 1),
    );
    tokio::task::block_in_place(|| server.snapshot_at(301, Duration::from_secs(60)));
    assert!(
        server.terminate(),
        "SIGTERM exits 0 (and flushes the spans)"
    );
    assert!(
        reader.join().expect("reader") > 0,
        "the dashboard read frames"
    );

    let orders = settings.topics.orders.clone();
    let all = tokio::task::spawn_blocking(move || {
        let count = consume_count(&orders);
        helpers::consume_all(
            &helpers::brokers(),
            &[&orders],
            count,
            Duration::from_secs(30),
        )
    })
    .await
    .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let orders_topic = settings.topics.orders.clone();
    let mut found = None;
    'search: while Instant::now() < deadline {
        for record in all.iter().filter(|r| r.key.starts_with("ord-")) {
            let Some(traceparent) = &record.traceparent else {
                continue;
            };
            let spans = spans_of(&trace_id(traceparent));
            let producer = spans.iter().any(|s| {
                s.name == format!("send {orders_topic}")
                    && (s.kind.contains("PRODUCER") || s.kind == "4")
            });
            let process = spans.iter().any(|s| {
                s.name == format!("process {orders_topic}")
                    && (s.kind.contains("CONSUMER") || s.kind == "5")
                    && as_text(s.attributes.get("messaging.destination.partition.id"))
                        == record.partition.to_string()
                    && as_text(s.attributes.get("messaging.kafka.offset"))
                        == record.offset.to_string()
                    && as_text(s.attributes.get("messaging.system")) == "kafka"
                    && as_text(s.attributes.get("storepulse.store_id")).starts_with("store-")
                    && !as_text(s.attributes.get("storepulse.event_id")).is_empty()
            });
            // The frame that carried it: in this trace (it was the frame's first sampled
            // record), or linked from its `framed` span; the fan-out is inside the frame.
            let frame = spans.iter().any(|s| s.name == "frame");
            let framed_in = spans
                .iter()
                .filter(|s| s.name == "framed")
                .flat_map(|s| s.links.clone())
                .next();
            let frame_spans = if frame {
                spans
            } else {
                framed_in.map(|t| spans_of(&t)).unwrap_or_default()
            };
            // The fan-out, and the write to the traced client's connection.
            let deliver = frame_spans.iter().any(|s| s.name == "deliver");
            let write = frame_spans.iter().any(|s| {
                s.name == "write"
                    && as_text(s.attributes.get("storepulse.write.bytes"))
                        .parse::<u64>()
                        .is_ok_and(|b| b > 0)
            });
            if producer && process && deliver && write {
                found = Some(record.offset);
                break 'search;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        found.is_some(),
        "an order's trace holds its producer span, its process span (topic, partition, offset), its frame, the fan-out and the write to the traced dashboard"
    );
    // Its spans may reach Jaeger's store in another batch: wait for them too.
    let failed = |spans: &[Span]| {
        spans.iter().any(|s| {
            s.name == format!("process {orders_topic}")
                && (s.status.contains("ERROR") || s.status == "2")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poison = spans_of(&poison_trace);
    while !failed(&poison) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        poison = spans_of(&poison_trace);
    }
    assert!(
        failed(&poison),
        "the poison record's span is an error: {poison:?}"
    );
}

/// How many records the orders topic holds (all partitions).
fn consume_count(topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", helpers::brokers())
        .set("broker.address.family", "v4")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            usize::try_from(high - low).unwrap_or(0)
        })
        .sum()
}

fn produce_with_traceparent(topic: &str, traceparent: &str) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", helpers::brokers())
        .set("broker.address.family", "v4")
        .create()
        .expect("producer");
    producer
        .send(
            BaseRecord::to(topic)
                .key("junk")
                .payload(b"not avro at all".as_slice())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(traceparent),
                })),
        )
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_nothing_is_exported_and_no_exporter_thread_runs() {
    let settings = fresh_topics("untraced");
    helpers::create_topics(&settings, 1).await;
    let server = Server::start(
        &settings.topics,
        &helpers::unique("untraced"),
        &database_url(),
    );
    tokio::task::block_in_place(|| server.snapshot_at(0, Duration::from_secs(60)));
    let threads = helpers::thread_names(server.pid());
    assert!(threads.len() > 3, "threads are listed: {threads:?}");
    assert!(
        !threads.iter().any(|t| t.starts_with("OpenTelemetry")),
        "no exporter thread: {threads:?}"
    );
}

/// The trace and span ids (`span.trace_id`, `span.span_id`) of the JSON log lines of five
/// poison records: one with a sampled `traceparent` (its trace id is returned too), then
/// four without one; serve samples roots at 0.5, with `environment` on top.
async fn poison_log_ids(
    environment: &[(&str, &str)],
) -> (String, Vec<(Option<String>, Option<String>)>) {
    let settings = fresh_topics("tracelogs");
    helpers::create_topics(&settings, 1).await;
    let log_path = std::env::temp_dir().join(format!("{}.log", helpers::unique("serve-json")));
    let log = std::fs::File::create(&log_path).expect("log file");
    let endpoint = otlp_endpoint();
    let server = Server::start_logging(
        &settings.topics,
        &helpers::unique("tracelogs"),
        &database_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("STOREPULSE_LOG_FORMAT", "json"),
        ]
        .into_iter()
        .chain(environment.iter().copied())
        .collect::<Vec<_>>(),
        log.into(),
    );
    // One poison record with a sampled context, then four without any: a ratio of 0.5
    // starts a root span for one in two of them.
    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    let orders = settings.topics.orders.clone();
    let parent = format!("00-{trace}-{:016x}-01", rand::random::<u64>() | 1);
    tokio::task::block_in_place(|| {
        produce_with_traceparent(&orders, &parent);
        let junk: Vec<(&str, String, Vec<u8>)> = (0..4)
            .map(|n| {
                (
                    orders.as_str(),
                    format!("junk-{n}"),
                    b"not avro either".to_vec(),
                )
            })
            .collect();
        helpers::produce_raw(&junk);
    });
    helpers::wait_for(
        || server.metric("storepulse_poison_records_total{reason=\"unknown_framing\"}") == 5,
        "five poison records counted",
    )
    .await;
    assert!(server.terminate(), "serve exits 0");
    let text = std::fs::read_to_string(&log_path).expect("the log");
    let _ = std::fs::remove_file(&log_path);
    let poison_lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("poison record"))
        })
        .collect();
    assert_eq!(poison_lines.len(), 5, "{text}");
    let ids = |line: &Value| {
        (
            line["span"]["trace_id"].as_str().map(str::to_owned),
            line["span"]["span_id"].as_str().map(str::to_owned),
        )
    };
    (trace, poison_lines.iter().map(ids).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_in_a_sampled_span_carry_its_ids_and_headerless_records_are_sampled_one_in_n()
 {
    let (trace, lines) = poison_log_ids(&[]).await;
    let (first_trace, first_span) = lines[0].clone();
    assert_eq!(first_trace.as_deref(), Some(trace.as_str()), "{lines:?}");
    assert!(first_span.is_some_and(|s| s.len() == 16 && s != "0000000000000000"));
    let headerless = &lines[1..];
    let traced = headerless
        .iter()
        .filter(|(t, s)| t.is_some() && s.is_some())
        .count();
    assert_eq!(traced, 2, "one in two roots is sampled: {headerless:?}");
    assert!(
        headerless
            .iter()
            .flat_map(|(t, _)| t)
            .all(|t| *t != trace && t.len() == 32),
        "roots start their own traces: {headerless:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_producer_context_off_headers_are_not_read_and_every_record_is_a_root() {
    let (trace, lines) = poison_log_ids(&[("STOREPULSE_TRACE_PRODUCER_CONTEXT", "false")]).await;
    assert!(
        lines
            .iter()
            .all(|(t, _)| t.as_deref() != Some(trace.as_str())),
        "the producer's trace is not continued: {lines:?}"
    );
    let traced = lines.iter().filter(|(t, _)| t.is_some()).count();
    assert!(
        (2..=3).contains(&traced),
        "one in two of the five records is a sampled root: {lines:?}"
    );
}
