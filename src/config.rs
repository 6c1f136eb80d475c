//! Settings of `storepulse serve`: one tree, loaded from the defaults in
//! `config/default.toml` (compiled in), an optional TOML file, and `STOREPULSE_…`
//! environment variables, in that order of precedence (last wins).
//!
//! Loading takes the environment as a map, so tests never touch the process environment.
//! Unknown keys in a file are an error, never ignored, and so is an unknown `STOREPULSE_…`
//! variable (a typo would otherwise be silently ignored). [`Settings::effective`] prints
//! what a process would run with, secrets masked (`storepulse config`).

use crate::aggregate::AggregateConfig;
use crate::events::ConfluentIds;
use crate::kafka::{KafkaSettings, Topics};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// The defaults, documented in place.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The settings of `config/default.toml` alone (no file, no environment): the defaults
/// every command falls back to.
pub fn defaults() -> &'static Settings {
    static DEFAULT_SETTINGS: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(|| {
        Settings::load(None, &HashMap::new())
            .unwrap_or_else(|e| panic!("config/default.toml is valid: {e}"))
    });
    &DEFAULT_SETTINGS
}

/// Environment variables and the setting each one sets.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("STOREPULSE_KAFKA_BROKERS", "kafka.brokers"),
    ("STOREPULSE_GROUP_ID", "kafka.group_id"),
    ("STOREPULSE_DEAD_LETTER_TOPIC", "kafka.dead_letter_topic"),
    ("STOREPULSE_CONFLUENT_IDS", "kafka.confluent_ids"),
    ("STOREPULSE_TOPIC_ORDERS", "kafka.topics.orders"),
    ("STOREPULSE_TOPIC_INVENTORY", "kafka.topics.inventory"),
    ("STOREPULSE_TOPIC_ACTIVITY", "kafka.topics.activity"),
    ("STOREPULSE_DATABASE_URL", "checkpoint.database_url"),
    ("STOREPULSE_CHECKPOINT_INTERVAL", "checkpoint.interval"),
    ("STOREPULSE_CHECKPOINT_KEEP", "checkpoint.keep"),
    (
        "STOREPULSE_CHECKPOINT_KEEP_HOURLY",
        "checkpoint.keep_hourly",
    ),
    ("STOREPULSE_MIGRATE_ON_START", "checkpoint.migrate_on_start"),
    ("STOREPULSE_HTTP_ADDR", "http.addr"),
    ("STOREPULSE_HTTP_HEADER_TIMEOUT", "http.header_timeout"),
    ("STOREPULSE_HTTP_MAX_CONNECTIONS", "http.max_connections"),
    ("STOREPULSE_HTTP_DRAIN", "http.drain"),
    ("STOREPULSE_CORS_ORIGINS", "http.cors_origins"),
    ("STOREPULSE_TRUSTED_PROXIES", "http.trusted_proxies"),
    ("STOREPULSE_AUTH_MODE", "auth.mode"),
    ("STOREPULSE_AUTH_ALLOW_ANONYMOUS", "auth.allow_anonymous"),
    ("STOREPULSE_AUTH_HS256_SECRET", "auth.hs256_secret"),
    ("STOREPULSE_AUTH_PUBLIC_KEY_FILE", "auth.public_key_file"),
    ("STOREPULSE_AUTH_JWKS_FILE", "auth.jwks_file"),
    ("STOREPULSE_AUTH_ISSUER", "auth.issuer"),
    ("STOREPULSE_AUTH_AUDIENCE", "auth.audience"),
    ("STOREPULSE_AUTH_PROTECT_METRICS", "auth.protect_metrics"),
    (
        "STOREPULSE_AUTH_METRICS_NAME_STORES",
        "auth.metrics_name_stores",
    ),
    ("STOREPULSE_AUTH_RENEW_URL", "auth.renew_url"),
    ("STOREPULSE_TLS_CERT_FILE", "http.tls_cert_file"),
    ("STOREPULSE_TLS_KEY_FILE", "http.tls_key_file"),
    ("STOREPULSE_SCHEMA_REGISTRY_URL", "schema_registry.url"),
    (
        "STOREPULSE_SCHEMA_REGISTRY_USERNAME",
        "schema_registry.username",
    ),
    (
        "STOREPULSE_SCHEMA_REGISTRY_PASSWORD",
        "schema_registry.password",
    ),
    ("STOREPULSE_SCHEMA_REGISTRY_TOKEN", "schema_registry.token"),
    (
        "STOREPULSE_SCHEMA_REGISTRY_MAX_SCHEMAS",
        "schema_registry.max_schemas",
    ),
    (
        "STOREPULSE_SCHEMA_REGISTRY_TIMEOUT",
        "schema_registry.timeout",
    ),
    ("STOREPULSE_STREAM_MAX_LIFETIME", "stream.max_lifetime"),
    (
        "STOREPULSE_LIMIT_STREAMS_PER_CLIENT",
        "limits.streams_per_client",
    ),
    (
        "STOREPULSE_LIMIT_STREAMS_PER_PRINCIPAL",
        "limits.streams_per_principal",
    ),
    (
        "STOREPULSE_LIMIT_REQUESTS_PER_SECOND",
        "limits.requests_per_second",
    ),
    ("STOREPULSE_LIMIT_BURST", "limits.burst"),
    ("STOREPULSE_READY_MAX_LAG", "ready.max_lag"),
    ("STOREPULSE_REPLAY_MAX_CONCURRENT", "replay.max_concurrent"),
    (
        "STOREPULSE_TRACE_PRODUCER_CONTEXT",
        "telemetry.producer_context",
    ),
    ("STOREPULSE_FRAME_INTERVAL", "stream.frame_interval"),
    ("STOREPULSE_HEARTBEAT", "stream.heartbeat"),
    ("STOREPULSE_RESUME_WAIT", "stream.resume_wait"),
    ("STOREPULSE_STREAM_RETRY", "stream.retry"),
    ("STOREPULSE_MAX_SUBSCRIBERS", "stream.max_subscribers"),
    ("STOREPULSE_LOG_MAX_FRAMES", "stream.log_max_frames"),
    ("STOREPULSE_LOG_MAX_BYTES", "stream.log_max_bytes"),
    ("STOREPULSE_LOG_MAX_AGE", "stream.log_max_age"),
    ("STOREPULSE_QUEUE_FRAMES", "stream.queue_frames"),
    ("STOREPULSE_STALL_TIMEOUT", "stream.stall_timeout"),
    ("STOREPULSE_SOCKET_SEND_BUFFER", "stream.socket_send_buffer"),
    (
        "STOREPULSE_LOW_STOCK_THRESHOLD",
        "aggregate.low_stock_threshold",
    ),
    (
        "STOREPULSE_SELL_OUT_ALERT_MINUTES",
        "aggregate.sell_out_alert_minutes",
    ),
    (
        "STOREPULSE_DEFAULT_TIME_ZONE",
        "aggregate.default_time_zone",
    ),
    ("STOREPULSE_MAX_STORES", "aggregate.max_stores"),
    (
        "STOREPULSE_MAX_SKUS_PER_STORE",
        "aggregate.max_skus_per_store",
    ),
    ("STOREPULSE_LIST_LIMIT", "aggregate.list_limit"),
    ("STOREPULSE_CLUSTER_GROUP_ID", "cluster.group_id"),
    ("STOREPULSE_CLUSTER_FRAMES_TOPIC", "cluster.frames_topic"),
    ("STOREPULSE_CLUSTER_SLICES_TOPIC", "cluster.slices_topic"),
    (
        "STOREPULSE_CLUSTER_TRANSACTIONAL_PREFIX",
        "cluster.transactional_prefix",
    ),
    (
        "STOREPULSE_CLUSTER_TRANSACTION_TIMEOUT",
        "cluster.transaction_timeout",
    ),
];

/// `STOREPULSE_…` variables that are not settings but are read by a command's own options
/// (`simulate`, the config file, the log format) or by the scripts (`scripts/stack`, the
/// browser tests). Any other `STOREPULSE_…` variable is an error.
pub const OTHER_ENVIRONMENT: &[&str] = &[
    "STOREPULSE_CONFIG",
    "STOREPULSE_LOG_FORMAT",
    "STOREPULSE_SIM_RATE",
    "STOREPULSE_SIM_EVENT_RATE",
    "STOREPULSE_SIM_COUNT",
    "STOREPULSE_SIM_SCHEMA_REGISTRY",
    "STOREPULSE_SIM_DURATION",
    "STOREPULSE_SIM_STORES",
    "STOREPULSE_SIM_SKUS",
    "STOREPULSE_SIM_POPULARITY",
    "STOREPULSE_SIM_JUNK_PER_MILLE",
    "STOREPULSE_SIM_PARTITIONS",
    "STOREPULSE_SIM_KEY",
    "STOREPULSE_ROUTE_ORDERS_FROM",
    "STOREPULSE_ROUTE_INVENTORY_FROM",
    "STOREPULSE_ROUTE_ACTIVITY_FROM",
    "STOREPULSE_ROUTE_GROUP",
    "STOREPULSE_ROUTE_TRANSACTIONAL_ID",
    "STOREPULSE_ROUTE_BATCH",
    "STOREPULSE_SIM_SEED",
    "STOREPULSE_SIM_START",
    "STOREPULSE_SIM_FLASH_AT",
    "STOREPULSE_SIM_FLASH_FOR",
    "STOREPULSE_SIM_FLASH_SKUS",
    "STOREPULSE_SIM_OVERSELL",
    "STOREPULSE_BIN",
    "STOREPULSE_SCREENSHOT",
    "STOREPULSE_BROWSERS",
    "STOREPULSE_FAULT_SEED",
    "STOREPULSE_DRILL_SEED",
    "STOREPULSE_DRILL_BROKER_RESTARTS",
    "STOREPULSE_DRILL_LOG",
    "STOREPULSE_STACK_DIR",
    "STOREPULSE_STACK_SHARED",
    "STOREPULSE_CACHE_DIR",
    "STOREPULSE_KAFKA_PORT",
    "STOREPULSE_KAFKA_CONTROLLER_PORT",
    "STOREPULSE_KAFKA_HEAP",
    "STOREPULSE_KAFKA3_PORT",
    "STOREPULSE_KAFKA3_CONTROLLER_PORT",
    "STOREPULSE_KAFKA3_HEAP",
    "STOREPULSE_KAFKA3_BROKERS",
    "STOREPULSE_KAFKA3_DIR",
    "STOREPULSE_PG_PORT",
    "STOREPULSE_PG_DATABASE",
    "STOREPULSE_JAEGER_OTLP_PORT",
    "STOREPULSE_JAEGER_QUERY_PORT",
    "STOREPULSE_JAEGER_GRPC_PORT",
    "STOREPULSE_JAEGER_HEALTH_PORT",
    "STOREPULSE_PROMETHEUS_PORT",
    "STOREPULSE_REGISTRY_PORT",
    "STOREPULSE_REGISTRY_MANAGEMENT_PORT",
    "STOREPULSE_JAVA21",
    "STOREPULSE_STACK_REGISTRY_URL",
    "STOREPULSE_PROMETHEUS_URL",
];

/// Settings whose values are secrets: masked by [`Settings::effective`] (a URL keeps all
/// but its password).
pub const SECRET_KEYS: &[&str] = &[
    "checkpoint.database_url",
    "auth.hs256_secret",
    "schema_registry.password",
    "schema_registry.token",
];

/// Every `STOREPULSE_…` variable of `environment` that nothing reads, with the known
/// name it is closest to (one or two edits away), if any.
pub fn unknown_variables(
    environment: &HashMap<String, String>,
) -> Vec<(String, Option<&'static str>)> {
    let known = || {
        ENVIRONMENT
            .iter()
            .map(|(variable, _)| *variable)
            .chain(OTHER_ENVIRONMENT.iter().copied())
    };
    let mut unknown: Vec<_> = environment
        .keys()
        .filter(|name| name.starts_with("STOREPULSE_") && !known().any(|k| k == name.as_str()))
        .map(|name| {
            let nearest = known()
                .map(|k| (edit_distance(name, k), k))
                .filter(|(distance, _)| *distance <= 2)
                .min()
                .map(|(_, k)| k);
            (name.clone(), nearest)
        })
        .collect();
    unknown.sort();
    unknown
}

/// Levenshtein distance of two ASCII-ish names (bytes).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(x != y));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `scheme://user:password@host/…` with the password replaced by `****`; anything else
/// not a URL with a password is masked whole unless it has no secret part.
pub fn mask_secret(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest
                .split_once('/')
                .map_or((rest, None), |(a, p)| (a, Some(p)));
            let masked = match authority.rsplit_once('@') {
                Some((credentials, host)) => match credentials.split_once(':') {
                    Some((user, _)) => format!("{user}:****@{host}"),
                    None => authority.to_owned(),
                },
                None => authority.to_owned(),
            };
            match path {
                Some(path) => format!("{scheme}://{masked}/{path}"),
                None => format!("{scheme}://{masked}"),
            }
        }
        None if value.is_empty() => String::new(),
        None => "****".to_owned(),
    }
}

/// Why settings could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A TOML document does not parse.
    #[error("{source_name}: {message}")]
    Parse {
        /// Which document.
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// `STOREPULSE_…` variables that no setting or command reads.
    #[error("unknown environment variable{}: {}", if .0.len() == 1 { "" } else { "s" }, describe_unknown(.0))]
    UnknownVariables(Vec<(String, Option<&'static str>)>),
    /// A value is of the right type but not acceptable.
    #[error("setting {key}: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn describe_unknown(unknown: &[(String, Option<&'static str>)]) -> String {
    let names: Vec<String> = unknown
        .iter()
        .map(|(name, nearest)| match nearest {
            Some(nearest) => format!("{name} (did you mean {nearest}?)"),
            None => name.clone(),
        })
        .collect();
    format!(
        "{} (the README's Configuration table lists every variable)",
        names.join(", ")
    )
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

/// `[kafka]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group and checkpoint namespace.
    pub group_id: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Confluent id mapping.
    pub confluent_ids: String,
    /// Topic names.
    pub topics: TopicsSection,
}

/// `[kafka.topics]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsSection {
    /// Orders topic.
    pub orders: String,
    /// Inventory topic.
    pub inventory: String,
    /// Activity topic.
    pub activity: String,
}

/// `[checkpoint]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Postgres URL.
    pub database_url: String,
    /// Interval between checkpoints.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Newest checkpoints kept.
    pub keep: i64,
    /// Hours of event time whose newest checkpoint is kept too (replay warm-ups).
    pub keep_hourly: i64,
    /// Run migrations on start.
    pub migrate_on_start: bool,
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Listen address.
    pub addr: SocketAddr,
    /// Longest wait for a request's headers, from the connection's start or its previous
    /// response (so also the keep-alive idle timeout).
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// At a stop (SIGTERM): readiness false at once, and open streams end one by one over
    /// this long before the server closes (zero: together, at once).
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
    /// Origins allowed to call the API from a browser page (CORS with credentials).
    pub cors_origins: Vec<String>,
    /// Addresses of proxies whose `X-Forwarded-For` names the client (per-client limits).
    pub trusted_proxies: Vec<String>,
    /// A PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN); empty: plain HTTP.
    pub tls_cert_file: String,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
}

/// `[limits]`: per client address and per principal (see `http/limits.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Most open streams from one address (0: none).
    pub streams_per_client: usize,
    /// Most open streams of one token subject (0: none).
    pub streams_per_principal: usize,
    /// Sustained snapshot/stream/replay requests per second from one address (0: none).
    pub requests_per_second: u32,
    /// Requests at once above the rate.
    pub burst: u32,
}

/// `[auth]`: who may read what (see `crate::auth`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `none` or `jwt`.
    pub mode: String,
    /// Allow `none` on a non-loopback address.
    pub allow_anonymous: bool,
    /// The HS256 secret (empty: no HS256).
    pub hs256_secret: secrecy::SecretString,
    /// A PEM public key (RS256 or ES256), empty for none.
    pub public_key_file: String,
    /// A JWKS file, empty for none.
    pub jwks_file: String,
    /// Required `iss`, empty for any.
    pub issuer: String,
    /// Required `aud`, empty for any.
    pub audience: String,
    /// Whether `/metrics` needs role operator.
    pub protect_metrics: bool,
    /// Whether unprotected `/metrics` may name stores (label values) with auth on.
    pub metrics_name_stores: bool,
    /// Where the dashboard fetches a fresh token to renew its session, empty for none.
    pub renew_url: String,
}

impl AuthSection {
    /// The origin `auth.renew_url` is fetched from: `Some("")` for a path on this origin,
    /// `Some("https://host[:port]")` for an absolute URL; `None` when it is neither.
    pub fn renew_origin(&self) -> Option<&str> {
        let url = self.renew_url.as_str();
        if url
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == ';')
        {
            return None;
        }
        if url.starts_with('/') && !url.starts_with("//") {
            return Some("");
        }
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))?;
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        (host_end > 0).then(|| &url[..url.len() - rest.len() + host_end])
    }
}

/// `[stream]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// Shortest time between frames under load.
    #[serde(deserialize_with = "duration")]
    pub frame_interval: Duration,
    /// Interval of progress events.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Frames held for resume.
    pub log_max_frames: usize,
    /// Bytes held for resume.
    pub log_max_bytes: usize,
    /// Oldest frame held for resume.
    #[serde(deserialize_with = "duration")]
    pub log_max_age: Duration,
    /// Frames a subscriber may be behind before it catches up from the frame log instead.
    pub queue_frames: usize,
    /// A client that reads nothing for this long is disconnected ("0s": never).
    #[serde(deserialize_with = "duration")]
    pub stall_timeout: Duration,
    /// `SO_SNDBUF` of every accepted connection; 0 keeps the kernel's autotuning.
    pub socket_send_buffer: usize,
    /// Longest wait for a client id that is ahead.
    #[serde(deserialize_with = "duration")]
    pub resume_wait: Duration,
    /// Most concurrent streams.
    pub max_subscribers: usize,
    /// A stream is closed after this long ("0s": never); the client resumes by id.
    #[serde(deserialize_with = "duration")]
    pub max_lifetime: Duration,
    /// The `retry:` every stream opens with: how long an EventSource waits before it
    /// reconnects after a drop.
    #[serde(deserialize_with = "duration")]
    pub retry: Duration,
}

/// `[ready]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySection {
    /// Most records behind the partition ends that still count as caught up.
    pub max_lag: i64,
}

/// `[replay]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    /// Replay streams at once.
    pub max_concurrent: usize,
}

/// `[telemetry]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// Read each record's `traceparent` to continue the producer's trace.
    pub producer_context: bool,
}

/// `[aggregate]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// Low-stock threshold.
    pub low_stock_threshold: i64,
    /// Sell-out alert horizon.
    pub sell_out_alert_minutes: i64,
    /// A projected sell-out alerts at or under this level.
    pub sell_out_alert_level: i64,
    /// How far an event may be dated after its record's timestamp.
    #[serde(deserialize_with = "duration")]
    pub max_future_skew: Duration,
    /// Time zone of unlisted stores.
    pub default_time_zone: String,
    /// Lateness that counts as late.
    #[serde(deserialize_with = "duration")]
    pub allowed_lateness: Duration,
    /// Dedup window.
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// Dedup capacity per partition.
    pub dedup_capacity: usize,
    /// Days held.
    pub days_held: i32,
    /// Most stores held.
    pub max_stores: usize,
    /// Most SKUs held per store.
    pub max_skus_per_store: usize,
    /// Most entries of a view's low-stock, oversold and alert lists.
    pub list_limit: usize,
    /// Store time zones.
    pub time_zones: BTreeMap<String, String>,
    /// Per-SKU thresholds.
    pub low_stock_overrides: BTreeMap<String, i64>,
}

/// Every setting of `serve`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Kafka.
    pub kafka: KafkaSection,
    /// Checkpoints.
    pub checkpoint: CheckpointSection,
    /// HTTP.
    pub http: HttpSection,
    /// Access control.
    pub auth: AuthSection,
    /// Per-client limits.
    pub limits: LimitsSection,
    /// Readiness.
    pub ready: ReadySection,
    /// The live stream.
    pub stream: StreamSection,
    /// Traces (beyond the OTEL_* variables).
    pub telemetry: TelemetrySection,
    /// Replays streamed to dashboards.
    pub replay: ReplaySection,
    /// Business rules.
    pub aggregate: AggregateSection,
    /// The roles of a cluster (`storepulse aggregator`, `storepulse edge`).
    pub cluster: ClusterSection,
    /// A Confluent-compatible schema registry for records in the Confluent framing.
    pub schema_registry: SchemaRegistrySection,
}

/// `[schema_registry]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistrySection {
    /// Its Confluent-compatible API (e.g. Apicurio's `…/apis/ccompat/v7`); empty: none.
    pub url: String,
    /// Basic-auth user, empty for none.
    pub username: String,
    /// Basic-auth password.
    pub password: secrecy::SecretString,
    /// A bearer token instead of basic auth, empty for none.
    pub token: secrecy::SecretString,
    /// Registry ids remembered (schemas and refusals together).
    pub max_schemas: usize,
    /// Longest one fetch may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

/// `[cluster]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The aggregators' consumer group (KIP-848 protocol) and checkpoint namespace.
    pub group_id: String,
    /// Slice frames, one partition.
    pub frames_topic: String,
    /// The slices' changelog, compacted, one partition per slice.
    pub slices_topic: String,
    /// Prefix of each slice's `transactional.id`.
    pub transactional_prefix: String,
    /// Longest a slice's transaction may stay open.
    #[serde(deserialize_with = "duration")]
    pub transaction_timeout: Duration,
}

/// Sets `key` (dotted) to `raw`, typed as the value already there: a number stays a number,
/// a flag a flag, anything else is a string. `origin` names where `raw` came from.
fn set_typed(
    table: &mut toml::Table,
    key: &str,
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let path: Vec<&str> = key.split('.').collect();
    let mut node = table;
    for part in &path[..path.len() - 1] {
        node = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid {
                key: key.to_string(),
                message: "not a section".into(),
            })?;
    }
    let last = path[path.len() - 1];
    let value = match node.get(last) {
        Some(toml::Value::Integer(_)) => raw.trim().parse().map(toml::Value::Integer).ok(),
        Some(toml::Value::Boolean(_)) => raw.trim().parse().map(toml::Value::Boolean).ok(),
        // A list from the environment: comma-separated strings.
        Some(toml::Value::Array(_)) => Some(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        )),
        _ => Some(toml::Value::String(raw.to_owned())),
    }
    .ok_or_else(|| ConfigError::Invalid {
        key: key.to_string(),
        message: format!("{origin}={raw:?} is not of the setting's type"),
    })?;
    node.insert(last.to_owned(), value);
    Ok(())
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(overlay)) => {
                merge(existing, overlay);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn parse(source_name: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        source_name: source_name.to_owned(),
        message: e.to_string(),
    })
}

impl Default for KafkaSettings {
    /// The local stack's broker and topics, from `config/default.toml` (the one place
    /// defaults live).
    fn default() -> Self {
        defaults().kafka()
    }
}

impl Settings {
    /// Defaults, then `file` (name and TOML text) if given, then the environment.
    pub fn load(
        file: Option<(&str, &str)>,
        environment: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        Settings::load_with(file, environment, &[])
    }

    /// [`Settings::load`], then `key=value` overrides on top (replay's what-if), each typed
    /// as its default is.
    pub fn load_with(
        file: Option<(&str, &str)>,
        environment: &HashMap<String, String>,
        overrides: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        Ok(Settings::merged(file, environment, overrides)?.0)
    }

    /// The effective configuration as TOML (what [`Settings::load`] would run with), with
    /// [`SECRET_KEYS`] masked, preceded by comments naming the file and each variable that
    /// set something.
    pub fn effective(
        file: Option<(&str, &str)>,
        environment: &HashMap<String, String>,
    ) -> Result<String, ConfigError> {
        let (_, mut table) = Settings::merged(file, environment, &[])?;
        for key in SECRET_KEYS {
            let (section, name) = key.split_once('.').expect("dotted");
            if let Some(toml::Value::String(value)) = table
                .get_mut(section)
                .and_then(toml::Value::as_table_mut)
                .and_then(|t| t.get_mut(name))
            {
                *value = mask_secret(value);
            }
        }
        let mut out = String::from("# storepulse: effective configuration (secrets masked)\n");
        out.push_str("# defaults: config/default.toml\n");
        if let Some((name, _)) = file {
            out.push_str(&format!("# file: {name}\n"));
        }
        for (variable, key) in ENVIRONMENT {
            if environment.contains_key(*variable) {
                out.push_str(&format!("# {variable} sets {key}\n"));
            }
        }
        out.push('\n');
        out.push_str(&toml::to_string(&table).map_err(|e| ConfigError::Parse {
            source_name: "effective configuration".into(),
            message: e.to_string(),
        })?);
        Ok(out)
    }

    /// The settings and the merged table they were read from.
    fn merged(
        file: Option<(&str, &str)>,
        environment: &HashMap<String, String>,
        overrides: &[(String, String)],
    ) -> Result<(Settings, toml::Table), ConfigError> {
        let unknown = unknown_variables(environment);
        if !unknown.is_empty() {
            return Err(ConfigError::UnknownVariables(unknown));
        }
        let mut table = parse("config/default.toml", DEFAULTS)?;
        if let Some((name, text)) = file {
            merge(&mut table, parse(name, text)?);
        }
        for (variable, key) in ENVIRONMENT {
            if let Some(raw) = environment.get(*variable) {
                set_typed(&mut table, key, raw, variable)?;
            }
        }
        for (key, raw) in overrides {
            set_typed(&mut table, key, raw, key)?;
        }
        let settings: Settings =
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    source_name: file.map_or("environment", |(name, _)| name).to_owned(),
                    message: e.to_string(),
                })?;
        settings.validate()?;
        Ok((settings, table))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.aggregate_config()?;
        self.confluent_ids()?;
        self.validate_auth()?;
        self.validate_http()?;
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        // (is it out of bounds, the key, what it must be)
        let bounds: [(bool, &str, &str); 10] = [
            (
                self.checkpoint.interval < Duration::from_millis(100),
                "checkpoint.interval",
                "must be at least 100ms",
            ),
            (
                self.checkpoint.keep < 1,
                "checkpoint.keep",
                "must be at least 1",
            ),
            (
                self.checkpoint.keep_hourly < 0,
                "checkpoint.keep_hourly",
                "must be 0 or more",
            ),
            (
                self.aggregate.days_held < 1,
                "aggregate.days_held",
                "must be at least 1",
            ),
            (
                self.aggregate.max_stores < 1,
                "aggregate.max_stores",
                "must be at least 1",
            ),
            (
                self.aggregate.max_skus_per_store < 1,
                "aggregate.max_skus_per_store",
                "must be at least 1",
            ),
            (
                !(1..=1_000).contains(&self.aggregate.list_limit),
                "aggregate.list_limit",
                "must be 1 to 1000",
            ),
            (
                self.http.max_connections < 1,
                "http.max_connections",
                "must be at least 1",
            ),
            (
                self.stream.queue_frames < 1,
                "stream.queue_frames",
                "must be at least 1",
            ),
            (
                !(Duration::from_millis(100)..=Duration::from_secs(60))
                    .contains(&self.stream.retry),
                "stream.retry",
                "must be 100ms to 60s",
            ),
        ];
        match bounds.into_iter().find(|(out, _, _)| *out) {
            Some((_, key, message)) => Err(invalid(key, message)),
            None => Ok(()),
        }
    }

    /// `auth.mode` and its key.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        let secret = self.auth.hs256_secret.expose_secret();
        match self.auth.mode.as_str() {
            "none" => {}
            "jwt" => {
                if secret.is_empty()
                    && self.auth.public_key_file.is_empty()
                    && self.auth.jwks_file.is_empty()
                {
                    return Err(invalid(
                        "auth.mode",
                        "jwt needs a key: auth.hs256_secret, auth.public_key_file or auth.jwks_file",
                    ));
                }
            }
            _ => return Err(invalid("auth.mode", "must be none or jwt")),
        }
        if !secret.is_empty() && secret.len() < 32 {
            return Err(invalid(
                "auth.hs256_secret",
                "must be at least 32 bytes (e.g. openssl rand -base64 48)",
            ));
        }
        if !self.auth.renew_url.is_empty() && self.auth.renew_origin().is_none() {
            return Err(invalid(
                "auth.renew_url",
                "must be a path on this origin (/…) or an https:// (or http://) URL without spaces or quotes",
            ));
        }
        Ok(())
    }

    /// The trusted proxies' addresses and the CORS origins.
    fn validate_http(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self
            .http
            .trusted_proxies
            .iter()
            .any(|a| a.parse::<std::net::IpAddr>().is_err())
        {
            return Err(invalid(
                "http.trusted_proxies",
                "each entry is an IP address (no names, no ranges)",
            ));
        }
        let registry = &self.schema_registry;
        if !registry.url.is_empty() && !registry.url.starts_with("http://") {
            return Err(invalid(
                "schema_registry.url",
                "must be an http:// URL of the registry's Confluent-compatible API (https:// is not supported yet)",
            ));
        }
        if registry.max_schemas == 0 {
            return Err(invalid("schema_registry.max_schemas", "must be at least 1"));
        }
        if self.http.tls_cert_file.is_empty() != self.http.tls_key_file.is_empty() {
            return Err(invalid(
                "http.tls_cert_file",
                "http.tls_cert_file and http.tls_key_file are set together (or neither)",
            ));
        }
        for origin in &self.http.cors_origins {
            let scheme_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if scheme_host.is_none_or(|rest| rest.is_empty() || rest.contains('/')) {
                return Err(invalid(
                    "http.cors_origins",
                    "each origin is scheme://host[:port] (no path, never *)",
                ));
            }
        }
        Ok(())
    }

    /// The Kafka connection settings.
    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.kafka.brokers.clone(),
            topics: Topics {
                orders: self.kafka.topics.orders.clone(),
                inventory: self.kafka.topics.inventory.clone(),
                activity: self.kafka.topics.activity.clone(),
            },
        }
    }

    /// The Confluent id mapping.
    pub fn confluent_ids(&self) -> Result<ConfluentIds, ConfigError> {
        self.kafka
            .confluent_ids
            .parse()
            .map_err(|message| ConfigError::Invalid {
                key: "kafka.confluent_ids".into(),
                message,
            })
    }

    /// The business rules.
    pub fn aggregate_config(&self) -> Result<AggregateConfig, ConfigError> {
        let a = &self.aggregate;
        let zone = |key: String, name: &str| {
            name.parse::<chrono_tz::Tz>()
                .map_err(|_| ConfigError::Invalid {
                    key,
                    message: format!("{name:?} is not an IANA time zone"),
                })
        };
        let mut time_zones = BTreeMap::new();
        for (store, name) in &a.time_zones {
            time_zones.insert(
                store.clone(),
                zone(format!("aggregate.time_zones.{store}"), name)?,
            );
        }
        Ok(AggregateConfig {
            time_zones,
            default_time_zone: zone("aggregate.default_time_zone".into(), &a.default_time_zone)?,
            low_stock_threshold: a.low_stock_threshold,
            low_stock_overrides: a.low_stock_overrides.clone(),
            sell_out_alert_minutes: a.sell_out_alert_minutes,
            sell_out_alert_level: a.sell_out_alert_level,
            max_future_skew_ms: a.max_future_skew.as_millis() as i64,
            days_held: a.days_held,
            dedup_window_ms: a.dedup_window.as_millis() as i64,
            dedup_capacity: a.dedup_capacity,
            allowed_lateness_ms: a.allowed_lateness.as_millis() as i64,
            max_stores: a.max_stores,
            max_skus_per_store: a.max_skus_per_store,
            list_limit: a.list_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_renew_url_is_a_path_here_or_an_http_url_whose_origin_the_page_may_fetch() {
        let origin = |url: &str| {
            let mut auth = defaults().auth.clone();
            auth.renew_url = url.into();
            auth.renew_origin().map(str::to_owned)
        };
        assert_eq!(origin("/sso/token").as_deref(), Some(""));
        assert_eq!(
            origin("https://id.shop.example:8443/token?for=storepulse").as_deref(),
            Some("https://id.shop.example:8443")
        );
        assert_eq!(
            origin("http://127.0.0.1:9/t").as_deref(),
            Some("http://127.0.0.1:9")
        );
        for bad in [
            "//evil.example/t",
            "javascript:alert(1)",
            "https://",
            "/a b",
            "https://x; script-src *",
        ] {
            assert_eq!(origin(bad), None, "{bad}");
        }
        let registry = Settings::load(
            None,
            &env(&[("STOREPULSE_SCHEMA_REGISTRY_URL", "registry:8081")]),
        );
        assert!(
            matches!(registry, Err(ConfigError::Invalid { ref key, .. }) if key == "schema_registry.url"),
            "{registry:?}"
        );
        let refused = Settings::load(None, &env(&[("STOREPULSE_AUTH_RENEW_URL", "ftp://x/")]));
        assert!(
            matches!(refused, Err(ConfigError::Invalid { ref key, .. }) if key == "auth.renew_url"),
            "{refused:?}"
        );
    }

    #[test]
    fn the_defaults_load_and_point_at_the_local_stack() {
        let s = Settings::load(None, &HashMap::new()).expect("defaults load");
        assert_eq!(s.kafka.brokers, "127.0.0.1:19092");
        assert_eq!(s.checkpoint.interval, Duration::from_secs(5));
        let a = s.aggregate_config().expect("valid");
        assert_eq!(a.time_zone(&"store-tokyo".into()), chrono_tz::Asia::Tokyo);
        assert_eq!(a.low_stock_threshold, 10);
    }

    #[test]
    fn a_file_overrides_defaults_and_the_environment_overrides_both() {
        let file = "[kafka]\nbrokers = \"kafka:9092\"\n[ready]\nmax_lag = 5\n[aggregate.low_stock_overrides]\n\"BER-0001\" = 25\n";
        let s = Settings::load(
            Some(("test.toml", file)),
            &env(&[
                ("STOREPULSE_READY_MAX_LAG", "7"),
                ("STOREPULSE_HTTP_ADDR", "0.0.0.0:9000"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.kafka.brokers, "kafka:9092");
        assert_eq!(s.ready.max_lag, 7);
        assert_eq!(s.http.addr.port(), 9000);
        assert_eq!(s.kafka.group_id, "storepulse", "untouched defaults stay");
        assert_eq!(
            s.aggregate_config()
                .expect("valid")
                .threshold(&"BER-0001".into()),
            25
        );
    }

    #[test]
    fn unknown_keys_bad_types_and_bad_values_are_errors_with_the_key() {
        let unknown = Settings::load(
            Some(("x.toml", "[kafka]\nbrokerz = \"x\"\n")),
            &HashMap::new(),
        );
        assert!(
            unknown
                .expect_err("rejected")
                .to_string()
                .contains("brokerz")
        );
        let bad_number = Settings::load(None, &env(&[("STOREPULSE_READY_MAX_LAG", "lots")]));
        assert!(
            bad_number
                .expect_err("rejected")
                .to_string()
                .contains("ready.max_lag")
        );
        let bad_zone = Settings::load(
            None,
            &env(&[("STOREPULSE_DEFAULT_TIME_ZONE", "Mars/Olympus")]),
        );
        assert!(bad_zone.expect_err("rejected").to_string().contains("IANA"));
        let bad_duration =
            Settings::load(None, &env(&[("STOREPULSE_CHECKPOINT_INTERVAL", "often")]));
        assert!(bad_duration.is_err());
        let retry = Settings::load(None, &env(&[("STOREPULSE_STREAM_RETRY", "250ms")]))
            .expect("a retry in bounds");
        assert_eq!(retry.stream.retry, Duration::from_millis(250));
        let hammering = Settings::load(None, &env(&[("STOREPULSE_STREAM_RETRY", "10ms")]));
        assert!(
            hammering
                .expect_err("rejected")
                .to_string()
                .contains("stream.retry")
        );
        let proxies = Settings::load(
            None,
            &env(&[("STOREPULSE_TRUSTED_PROXIES", "10.0.0.9, ::1")]),
        )
        .expect("addresses");
        assert_eq!(proxies.http.trusted_proxies.len(), 2);
        let bad_proxy = Settings::load(
            None,
            &env(&[("STOREPULSE_TRUSTED_PROXIES", "proxy.internal")]),
        );
        assert!(
            bad_proxy
                .expect_err("rejected")
                .to_string()
                .contains("http.trusted_proxies")
        );
    }

    #[test]
    fn an_unknown_storepulse_variable_is_an_error_that_suggests_the_known_one() {
        let typo = Settings::load(None, &env(&[("STOREPULSE_HTTP_ADR", "0.0.0.0:1")]))
            .expect_err("rejected")
            .to_string();
        assert!(typo.contains("STOREPULSE_HTTP_ADR"), "{typo}");
        assert!(
            typo.contains("did you mean STOREPULSE_HTTP_ADDR?"),
            "{typo}"
        );
        let far = Settings::load(None, &env(&[("STOREPULSE_NOTHING_LIKE_IT", "1")]))
            .expect_err("rejected")
            .to_string();
        assert!(!far.contains("did you mean"), "{far}");
        // Variables of other tools and of our scripts pass.
        Settings::load(
            None,
            &env(&[
                ("STOREPULSE_SIM_RATE", "5"),
                ("STOREPULSE_PG_PORT", "1"),
                ("KAFKA_HOME", "/x"),
            ]),
        )
        .expect("known or not ours");
    }

    #[test]
    fn every_storepulse_variable_the_scripts_read_is_known() {
        let sources = [
            include_str!("../scripts/stack"),
            include_str!("../scripts/lib.sh"),
            include_str!("../scripts/test"),
            include_str!("../scripts/demo"),
            include_str!("../scripts/bench"),
            include_str!("../.ci/run"),
        ];
        let mut names = HashMap::new();
        for source in sources {
            for (at, _) in source.match_indices("STOREPULSE_") {
                let name: String = source[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.ends_with('_') {
                    names.insert(name, String::new());
                }
            }
        }
        assert_eq!(unknown_variables(&names), vec![]);
    }

    #[test]
    fn the_effective_configuration_masks_the_database_password_and_loads_back() {
        let text = Settings::effective(
            None,
            &env(&[
                (
                    "STOREPULSE_DATABASE_URL",
                    "postgres://app:hunter2@db:5432/sp",
                ),
                ("STOREPULSE_READY_MAX_LAG", "7"),
                ("STOREPULSE_SCHEMA_REGISTRY_URL", "http://registry:8081"),
                ("STOREPULSE_SCHEMA_REGISTRY_PASSWORD", "registry-password"),
                ("STOREPULSE_SCHEMA_REGISTRY_TOKEN", "registry-token"),
            ]),
        )
        .expect("effective");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            !text.contains("registry-password") && !text.contains("registry-token"),
            "the registry's credentials are masked: {text}"
        );
        assert!(text.contains("postgres://app:****@db:5432/sp"), "{text}");
        assert!(
            text.contains("# STOREPULSE_READY_MAX_LAG sets ready.max_lag"),
            "{text}"
        );
        let back = Settings::load(Some(("printed", &text)), &HashMap::new()).expect("loads");
        assert_eq!(back.ready.max_lag, 7);
        assert_eq!(
            mask_secret("postgres://postgres@127.0.0.1:15432/storepulse"),
            "postgres://postgres@127.0.0.1:15432/storepulse"
        );
        assert_eq!(mask_secret("plain-secret"), "****");
    }
}
