//! Metrics in a real Prometheus (`scripts/stack up prometheus`, Debian's package): a `serve`
//! is scraped while the traced simulator writes a short sale; Prometheus' HTTP API then
//! answers a `histogram_quantile` over the freshness histogram, the lag gauges and the
//! exemplars (trace ids) with real values, and every PromQL expression of the Grafana board
//! (`docker/grafana/dashboards/storepulse.json`) parses and returns data for this `serve`.

use crate::helpers::{self, Server, database_url, fresh_topics};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `http://127.0.0.1:PORT` of the stack's Prometheus.
fn prometheus_url() -> String {
    std::env::var("STOREPULSE_PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:19090".into())
}

/// The folder the running Prometheus discovers targets in: `targets/` beside its config
/// file (docker/prometheus/local.yml), asked from Prometheus itself, so a stack started
/// from another clone works too.
fn targets_dir() -> PathBuf {
    let flags = prometheus_get("/api/v1/status/flags");
    let config = flags["data"]["config.file"]
        .as_str()
        .expect("Prometheus reports its config file");
    PathBuf::from(config)
        .parent()
        .expect("the config's folder")
        .join("targets")
}

/// A target file for one `serve`; removed when dropped, so Prometheus stops scraping it.
struct Target(PathBuf);

impl Target {
    fn register(address: &str, name: &str) -> Target {
        let dir = targets_dir();
        std::fs::create_dir_all(&dir).expect("targets folder");
        let path = dir.join(format!("{name}.json"));
        let partial = dir.join(format!(".{name}.partial"));
        let body = serde_json::json!([{ "targets": [address], "labels": { "test": name } }]);
        // Written whole, then renamed: Prometheus never reads half a file.
        std::fs::write(&partial, body.to_string()).expect("target file");
        std::fs::rename(&partial, &path).expect("target file in place");
        Target(path)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// GET from Prometheus' API; the JSON body. HTTP/1.0, so Go answers without chunked
/// encoding and the body ends with the connection.
fn prometheus_get(path_and_query: &str) -> Value {
    use std::io::{Read, Write};
    let url = prometheus_url();
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("Prometheus at {url}: {e} (scripts/stack up prometheus)"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout is set");
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {address}\r\n\r\n"
    )
    .expect("request is written");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response is read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
    let json: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("Prometheus answered {status} {body:?}: {e}"));
    assert_eq!(
        json["status"], "success",
        "{path_and_query}: {status} {json}"
    );
    json
}

/// An instant query's result vector.
fn query(expression: &str) -> Vec<Value> {
    let json = prometheus_get(&format!("/api/v1/query?query={}", encode(expression)));
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The numeric value of each sample of a result vector.
fn values(result: &[Value]) -> Vec<f64> {
    result
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse().ok())
        .collect()
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Every PromQL expression of the Grafana board, with Grafana's variables as a user picking
/// `instance` would have them.
fn board_expressions(instance: &str) -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/dashboards/storepulse.json"
    );
    let board: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the board")).expect("JSON");
    let mut out = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let expr = expr
                    .replace("$instance", &instance.replace('.', "\\\\."))
                    .replace("$__rate_interval", "1m");
                out.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_freshness_lag_and_exemplars_and_every_board_query_returns_data() {
    let settings = fresh_topics("prometheus");
    let name = helpers::unique("prom");
    let jaeger = std::env::var("STOREPULSE_JAEGER_OTLP_PORT").unwrap_or_else(|_| "14318".into());
    let endpoint = format!("http://127.0.0.1:{jaeger}");
    let server = Server::start_with(
        &settings.topics,
        &name,
        &database_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", name.as_str()),
        ],
    );
    let _target = Target::register(&server.address, &name);
    // Prometheus discovers the target and scrapes it before the sale starts.
    let selector = format!("{{test=\"{name}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(&format!("up{selector}")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus at {} never scraped {} (targets in {})",
            prometheus_url(),
            server.address,
            _target.0.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Event time now, traced (every record's context sampled, so frames carry exemplars).
    let status = crate::helpers::storepulse(&settings.topics)
        .args(["simulate", "--quiet", "--count", "3000", "--rate", "600"])
        .args(["--partitions", "2", "--stores", "3", "--skus", "5"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", format!("{name}-sim"))
        .status()
        .expect("simulate runs");
    assert!(status.success());
    tokio::task::block_in_place(|| server.snapshot_at(3000, Duration::from_secs(60)));

    // Scraped after the last record: the counters reach 3000 in Prometheus.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read: f64 = values(&query(&format!("sum(storepulse_records_total{selector})")))
            .into_iter()
            .sum();
        let lag = values(&query(&format!(
            "storepulse_consumer_lag_records{selector}"
        )));
        if read >= 3000.0 && lag == [0.0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records {read}, lag {lag:?} in Prometheus"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let p99 = values(&query(&format!(
        "histogram_quantile(0.99, sum by (le) (rate(storepulse_freshness_seconds_bucket{{test=\"{name}\",scope=\"all\"}}[1m])))"
    )));
    assert_eq!(p99.len(), 1, "one p99 over all stores");
    assert!(
        p99[0].is_finite() && p99[0] > 0.0 && p99[0] < 60.0,
        "freshness p99 of a live sale on a local broker: {p99:?} s"
    );
    let per_store = query(&format!(
        "histogram_quantile(0.5, sum by (le, scope) (rate(storepulse_freshness_seconds_bucket{selector}[1m])))"
    ));
    assert_eq!(per_store.len(), 4, "three stores and all: {per_store:?}");
    // Per-partition lag: two partitions per topic, each caught up, each with its end.
    let lags = query(&format!("storepulse_partition_lag_records{selector}"));
    assert_eq!(lags.len(), 6, "{lags:?}");
    assert!(values(&lags).iter().all(|lag| *lag == 0.0), "{lags:?}");
    let ends: f64 = values(&query(&format!(
        "sum(storepulse_partition_high_watermark{selector})"
    )))
    .into_iter()
    .sum();
    assert_eq!(ends, 3000.0, "the partitions' ends are the records written");

    // Exemplars: the trace of a sampled record, kept by Prometheus.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let exemplars = prometheus_get(&format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        encode(&format!("storepulse_freshness_seconds_bucket{selector}")),
        now - 600,
        now + 60
    ));
    let trace_ids: Vec<String> = exemplars["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
        .collect();
    assert!(!trace_ids.is_empty(), "exemplars: {exemplars}");
    assert!(
        trace_ids
            .iter()
            .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())),
        "{trace_ids:?}"
    );

    // The board: every expression parses and returns data for this serve.
    let expressions = board_expressions(&server.address);
    assert!(expressions.len() >= 15, "{expressions:?}");
    for (panel, expression) in expressions {
        let result = query(&expression);
        assert!(
            !result.is_empty(),
            "panel {panel:?}: {expression} returned nothing"
        );
    }
    assert!(server.terminate(), "serve exits 0");
}
