//! Shared test helpers: settings for the real stack, unique topic names, and a consumer
//! that reads whole topics back.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use storepulse::kafka::{KafkaSettings, Topics};

/// The broker address under test.
pub fn brokers() -> String {
    std::env::var("STOREPULSE_KAFKA_BROKERS").unwrap_or_else(|_| KafkaSettings::default().brokers)
}

/// The database under test.
pub fn database_url() -> String {
    std::env::var("STOREPULSE_DATABASE_URL").unwrap_or_else(|_| {
        storepulse::config::defaults()
            .checkpoint
            .database_url
            .clone()
    })
}

/// A short random suffix so concurrent tests and repeated runs never share topics.
pub fn unique(name: &str) -> String {
    format!(
        "test-{name}-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

/// Settings with three fresh topic names (not created yet).
pub fn fresh_topics(name: &str) -> KafkaSettings {
    let base = unique(name);
    KafkaSettings {
        brokers: brokers(),
        topics: Topics {
            orders: format!("{base}-orders"),
            inventory: format!("{base}-inventory"),
            activity: format!("{base}-activity"),
        },
    }
}

/// The `storepulse` binary under test, pointed at the broker under test and at `topics`
/// (the variables every command reads); add the subcommand and the rest.
pub fn storepulse(topics: &Topics) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_storepulse"));
    command
        .env("STOREPULSE_KAFKA_BROKERS", brokers())
        .env("STOREPULSE_TOPIC_ORDERS", &topics.orders)
        .env("STOREPULSE_TOPIC_INVENTORY", &topics.inventory)
        .env("STOREPULSE_TOPIC_ACTIVITY", &topics.activity);
    command
}

/// One record as it was read back from Kafka.
#[derive(Debug)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
    /// Every header, in order (values as UTF-8, lossy).
    pub headers: Vec<(String, String)>,
}

/// Reads every partition of `topics` from the beginning until `expected` records arrived.
/// Panics after `timeout` with what it has.
pub fn consume_all(
    brokers: &str,
    topics: &[&str],
    expected: usize,
    timeout: Duration,
) -> Vec<ConsumedRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("broker.address.family", "v4")
        .create()
        .expect("consumer is created");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .expect("partition is added");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::with_capacity(expected);
    while records.len() < expected {
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} records arrived within {timeout:?}",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("no consumer error");
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        });
        records.push(ConsumedRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().expect("every record has a key"))
                .into_owned(),
            payload: message
                .payload()
                .expect("every record has a value")
                .to_vec(),
            traceparent,
            headers,
        });
    }
    records
}

/// A minimal HTTP/1.1 GET against the server under test: `(status, body)`.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    try_http_get(address, path, &[]).expect("server accepts connections")
}

/// [`http_get`] with extra request `headers`; `None` if nothing accepts the connection
/// (a server being restarted).
pub fn try_http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout is set");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{extra}\r\n"
    )
    .expect("request is written");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response is read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    Some((status, body.to_owned()))
}

/// A `storepulse serve` process under test.
pub struct Server {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Its checkpoint group.
    pub group: String,
}

impl Server {
    /// Starts `serve` on `topics` with checkpoint group `group`, a free port and a short
    /// checkpoint interval; returns once it listens.
    pub fn start(topics: &Topics, group: &str, database_url: &str) -> Server {
        Server::start_with(topics, group, database_url, &[])
    }

    /// [`Server::start`] with more environment (later settings win).
    pub fn start_with(
        topics: &Topics,
        group: &str,
        database_url: &str,
        environment: &[(&str, &str)],
    ) -> Server {
        Server::start_logging(
            topics,
            group,
            database_url,
            environment,
            std::process::Stdio::inherit(),
        )
    }

    /// [`Server::start_with`], its log (stderr) going to `log`.
    pub fn start_logging(
        topics: &Topics,
        group: &str,
        database_url: &str,
        environment: &[(&str, &str)],
        log: std::process::Stdio,
    ) -> Server {
        Server::start_wrapped(&[], topics, group, database_url, environment, log)
    }

    /// [`Server::start_logging`] run by `wrapper` (e.g. `["prlimit", "--nofile=256:4096",
    /// "--"]`), which must exec `serve` in its place.
    pub fn start_wrapped(
        wrapper: &[&str],
        topics: &Topics,
        group: &str,
        database_url: &str,
        environment: &[(&str, &str)],
        log: std::process::Stdio,
    ) -> Server {
        Server::start_command(
            wrapper,
            "serve",
            topics,
            group,
            database_url,
            environment,
            log,
        )
    }

    /// A cluster's `aggregator` or `edge` (`role`) on `topics`, with the cluster's
    /// settings in `environment`; returns once it listens.
    pub fn start_role(
        role: &str,
        topics: &Topics,
        database_url: &str,
        environment: &[(&str, &str)],
    ) -> Server {
        Server::start_command(
            &[],
            role,
            topics,
            "unused",
            database_url,
            environment,
            std::process::Stdio::piped(),
        )
    }

    fn start_command(
        wrapper: &[&str],
        subcommand: &str,
        topics: &Topics,
        group: &str,
        database_url: &str,
        environment: &[(&str, &str)],
        log: std::process::Stdio,
    ) -> Server {
        use std::io::BufRead;
        let program = env!("CARGO_BIN_EXE_storepulse");
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut command = std::process::Command::new(first);
                command.args(rest).arg(program);
                command
            }
            None => std::process::Command::new(program),
        };
        let mut child = command
            .arg(subcommand)
            .env("STOREPULSE_KAFKA_BROKERS", brokers())
            .env("STOREPULSE_TOPIC_ORDERS", &topics.orders)
            .env("STOREPULSE_TOPIC_INVENTORY", &topics.inventory)
            .env("STOREPULSE_TOPIC_ACTIVITY", &topics.activity)
            .env(
                "STOREPULSE_DEAD_LETTER_TOPIC",
                format!("{}-dlq", topics.orders),
            )
            .env("STOREPULSE_GROUP_ID", group)
            .env("STOREPULSE_DATABASE_URL", database_url)
            .env("STOREPULSE_HTTP_ADDR", "127.0.0.1:0")
            .env("STOREPULSE_CHECKPOINT_INTERVAL", "300ms")
            .env("RUST_LOG", "storepulse=warn,warn")
            .envs(environment.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("serve starts");
        // A piped log is the cluster's: each line says which process wrote it.
        if let Some(stderr) = child.stderr.take() {
            let label = format!("[{subcommand} {}]", child.id());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{label} {line}");
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("serve prints its address");
        let address = line
            .trim()
            .rsplit("http://")
            .next()
            .expect("an address")
            .to_owned();
        assert!(address.contains(':'), "unexpected first line: {line:?}");
        Server {
            child,
            address,
            group: group.to_owned(),
        }
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.address, path)
    }

    /// Waits until the snapshot's position covers `records` records in total, then returns
    /// the snapshot (all stores).
    pub fn snapshot_at(&self, records: i64, timeout: Duration) -> serde_json::Value {
        self.snapshot_at_with(records, timeout, |snapshot| self.with_stores(snapshot))
    }

    /// The all-stores snapshot itself (the rollup, no store's view) once the position
    /// covers `records`: taken mid-stream, when the stores' own snapshots would be at later
    /// positions.
    pub fn rollup_at(&self, records: i64, timeout: Duration) -> serde_json::Value {
        self.snapshot_at_with(records, timeout, Some)
    }

    fn snapshot_at_with(
        &self,
        records: i64,
        timeout: Duration,
        complete: impl Fn(serde_json::Value) -> Option<serde_json::Value>,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get("/api/snapshot");
            if status == 200 {
                let snapshot: serde_json::Value =
                    serde_json::from_str(&body).expect("snapshot is JSON");
                if position_total(&snapshot) >= records
                    && let Some(whole) = complete(snapshot)
                {
                    return whole;
                }
            }
            assert!(
                Instant::now() < deadline,
                "serve did not reach {records} records in {timeout:?} (last: {status} {})",
                &body[..body.len().min(300)]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The all-stores snapshot `rollup` with every store's own view under `stores` (from
    /// `GET /api/stores` and one `/api/snapshot?store=` each), in the shape `storepulse
    /// replay` writes: the whole picture the tests check. `None` if a store's view is at
    /// another position (records still arriving).
    pub fn with_stores(&self, mut rollup: serde_json::Value) -> Option<serde_json::Value> {
        assert!(
            rollup.get("stores").is_none(),
            "the all-stores snapshot holds no store's view"
        );
        let mut stores = serde_json::Map::new();
        let mut after = String::new();
        loop {
            let path = if after.is_empty() {
                "/api/stores?limit=1000".to_owned()
            } else {
                format!("/api/stores?limit=1000&after={after}")
            };
            let (status, body) = self.get(&path);
            assert_eq!(status, 200, "{body}");
            let page: serde_json::Value = serde_json::from_str(&body).expect("a page");
            for id in page["items"].as_array().expect("items") {
                let id = id.as_str().expect("an id");
                let (status, body) = self.get(&format!("/api/snapshot?store={id}"));
                assert_eq!(status, 200, "{body}");
                let one: serde_json::Value = serde_json::from_str(&body).expect("json");
                if one["position"] != rollup["position"] {
                    return None;
                }
                stores.insert(id.to_owned(), one["stores"][id].clone());
            }
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => break,
            }
        }
        if Some(stores.len() as u64) != rollup["store_count"].as_u64() {
            return None;
        }
        // The shape `storepulse replay` writes: position, stores and the rollup.
        let object = rollup.as_object_mut().expect("an object");
        for field in ["store_count", "time_zones", "default_time_zone"] {
            object.remove(field);
        }
        rollup["stores"] = serde_json::Value::Object(stores);
        Some(rollup)
    }

    /// The process id of `serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of one sample of `/metrics` (`name` with its labels, if any).
    pub fn metric(&self, name: &str) -> i64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("metric {name}"))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, and wait; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.child.wait().expect("exits").success()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of the next offsets in an encoded snapshot position.
pub fn position_total(snapshot: &serde_json::Value) -> i64 {
    snapshot["position"]
        .as_str()
        .and_then(|p| p.split_once(':'))
        .map(|(_, offsets)| {
            offsets
                .split(',')
                .filter_map(|o| o.parse::<i64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Produces raw record values with keys and explicit Kafka timestamps (CreateTime; −1 is a
/// record without one), waiting for every delivery.
pub fn produce_timed(records: &[(&str, String, Vec<u8>, i64)]) {
    produce_records(records.iter().map(|(t, k, v, ts)| (*t, k, v, Some(*ts))));
}

/// Produces raw record values with keys, waiting for every delivery.
pub fn produce_raw(records: &[(&str, String, Vec<u8>)]) {
    produce_records(records.iter().map(|(t, k, v)| (*t, k, v, None)));
}

/// (topic, key, value, timestamp: the producer's clock when `None`), each delivered.
fn produce_records<'a>(
    records: impl Iterator<Item = (&'a str, &'a String, &'a Vec<u8>, Option<i64>)>,
) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("broker.address.family", "v4")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (topic, key, value, timestamp) in records {
        let mut record = BaseRecord::to(topic).key(key).payload(value);
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
        }
        producer.send(record).expect("queued");
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every record is delivered");
}

/// Polls `condition` every 200 ms, for at most a minute.
pub async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..300 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Creates the three topics of `settings` with `partitions` partitions each.
pub async fn create_topics(settings: &storepulse::kafka::KafkaSettings, partitions: i32) {
    storepulse::kafka::ensure_topics(
        settings,
        &settings.topics.all(),
        partitions,
        Duration::from_secs(15),
    )
    .await
    .expect("topics are created");
}

/// The names of the threads of process `pid` (Linux truncates them to 15 bytes).
pub fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect()
}

/// A simulated sale for [`produce_sale`].
pub struct Sale {
    /// The scenario's seed.
    pub seed: u64,
    /// The first event's time (ms).
    pub start_ms: i64,
    /// Records.
    pub count: u64,
    /// Records per second (`None`: as fast as the broker takes them).
    pub rate: Option<f64>,
    /// Stores.
    pub stores: usize,
    /// SKUs per store.
    pub skus: usize,
    /// The topics' partitions.
    pub partitions: i32,
    /// Keyed by store id (a cluster's producer contract), or by event (order id, SKU,
    /// session).
    pub by_store: bool,
}

/// Produces `sale` to `settings`' topics (which must exist); returns the records
/// acknowledged.
pub async fn produce_sale(settings: &storepulse::kafka::KafkaSettings, sale: Sale) -> i64 {
    use storepulse::simulate::{self, SimulateOptions, scenario::ScenarioConfig};
    let report = simulate::run(
        settings,
        SimulateOptions {
            scenario: ScenarioConfig {
                popularity: Default::default(),
                seed: sale.seed,
                start_ms: sale.start_ms,
                events_per_second: 200.0,
                stores: sale.stores,
                skus_per_store: sale.skus,
                flash_sale: None,
            },
            rate: sale.rate,
            count: Some(sale.count),
            duration: None,
            partitions: sale.partitions,
            create_topics: false,
            message_timeout: Duration::from_secs(60),
            progress_every: None,
            junk_per_mille: 0,
            key_by_store: sale.by_store,
            registry: None,
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("records delivered");
    i64::try_from(report.acked).expect("a count")
}

/// Sends `name` (`KILL`, `TERM`, `STOP`, `CONT`) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}
