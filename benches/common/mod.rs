//! Shared by the benchmark binaries: the benchmark catalog, a `serve` process, a tiny HTTP
//! client. Each binary uses part of it.
#![allow(dead_code)]

pub mod load;

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use storepulse::kafka::{self, KafkaSettings, Topics};
use storepulse::simulate::scenario::{FlashSale, ScenarioConfig};

/// The benchmarks' shop: 8 stores × 500 SKUs, a 10-minute flash sale on 5 SKUs each.
pub fn catalog(seed: u64, start_ms: i64) -> ScenarioConfig {
    ScenarioConfig {
        popularity: Default::default(),
        seed,
        start_ms,
        events_per_second: 2_000.0,
        stores: 8,
        skus_per_store: 500,
        flash_sale: Some(FlashSale {
            starts_after_ms: 60_000,
            duration_ms: 600_000,
            skus_per_store: 5,
            oversell: false,
            discount_percent: 30,
        }),
    }
}

/// The `storepulse` binary the benchmarks run: `BENCH_SERVE_BIN` if set (`scripts/bench`
/// sets it to a plain release build, without the dev-dependencies' features that `cargo
/// bench` unifies into its own copy; or an older build, for a before/after comparison with
/// the same harness), else this build's.
pub fn serve_bin() -> String {
    std::env::var("BENCH_SERVE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_storepulse").to_owned())
}

/// Starts the release `storepulse serve` ([`serve_bin`]) on `topics` with checkpoint group
/// `group` and a free port (plus `environment`); returns the process and its `host:port`.
pub fn spawn_serve(topics: &Topics, group: &str, environment: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(serve_bin())
        .arg("serve")
        .env("STOREPULSE_TOPIC_ORDERS", &topics.orders)
        .env("STOREPULSE_TOPIC_INVENTORY", &topics.inventory)
        .env("STOREPULSE_TOPIC_ACTIVITY", &topics.activity)
        .env("STOREPULSE_GROUP_ID", group)
        .env("STOREPULSE_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .envs(environment.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let address = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or_default()
        .to_owned();
    (child, address)
}

/// `GET path` over HTTP/1.0: `(status, body)`; `(0, "")` if nothing answers.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return (0, String::new());
    };
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `as_of_ms` of a delta's JSON, found by text: a bench client with a thousand
/// siblings on two cores cannot afford to parse every frame.
pub fn as_of_ms(data: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"as_of_ms\":";
    let at = data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&data[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// A `BENCH_*` setting, or its default.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Wall clock, epoch milliseconds (event times of a real-time run are on the same clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `p` quantile of sorted samples (-1 when there are none).
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Three new topics `<prefix>-<random>-{orders,inventory,activity}` of 4 partitions on the
/// broker of `STOREPULSE_KAFKA_BROKERS`; returns their settings and the random suffix.
pub async fn fresh_topics(prefix: &str) -> (KafkaSettings, u32) {
    let suffix: u32 = rand::random();
    let settings = KafkaSettings {
        brokers: std::env::var("STOREPULSE_KAFKA_BROKERS")
            .unwrap_or_else(|_| KafkaSettings::default().brokers),
        topics: Topics {
            orders: format!("{prefix}-{suffix}-orders"),
            inventory: format!("{prefix}-{suffix}-inventory"),
            activity: format!("{prefix}-{suffix}-activity"),
        },
    };
    kafka::ensure_topics(
        &settings,
        &settings.topics.all(),
        4,
        std::time::Duration::from_secs(15),
    )
    .await
    .expect("topics");
    (settings, suffix)
}
