//! Ingest benchmark against the real local stack (`scripts/stack up` first):
//!
//! 1. Pre-fills three topics with N simulated events (once; reused while they hold N).
//! 2. Catch-up from offset 0, alternating, R runs each:
//!    - baseline: a bare rdkafka `BaseConsumer` with serve's consumer settings that drains
//!      the same partitions and only counts bytes;
//!    - `storepulse serve` (the release binary, a fresh checkpoint group each run) until
//!      its `/metrics` count every record.
//!
//!    Wall time and the process's CPU time (user + system, from /proc) for each.
//! 3. Recovery: SIGKILL a caught-up `serve` (after a checkpoint), restart it, time until
//!    `/readyz` answers 200.
//! 4. A checkpoint of a state with 100 000 SKUs: serialisation, transaction and size.
//! 5. `/api/snapshot` throughput on the caught-up state (8 stores × 500 SKUs): C keep-alive
//!    clients (`BENCH_SNAPSHOT_CLIENTS`, 8) for 5 s, all stores and one store; requests/s
//!    and serve's CPU per request, R runs each.
//!
//! Prints Markdown for `docs/benchmarks.md`. Not a test: nothing here asserts a speed.
//! Settings: `BENCH_EVENTS` (default 2 000 000), `BENCH_RUNS` (3), and the stack's
//! `STOREPULSE_KAFKA_BROKERS` / `STOREPULSE_DATABASE_URL`.
//!
//! `BENCH_REPLAY=1` (`scripts/bench replay`) measures `storepulse replay` instead, on topics
//! of its own (record timestamps are event times): per run, interleaved, the bare
//! consumer, serve's catch-up, `replay --as-of` the end, and a timeline every minute.

mod common;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storepulse::aggregate::{AggregateConfig, Changes, Layout, PartitionKey, RecordRef, State};
use storepulse::checkpoint::{CheckpointStore, Frozen};
use storepulse::events::{Event, StockChangeReason, StockChanged, TopicRole};
use storepulse::kafka::{self, KafkaSettings, Topics};
use storepulse::simulate::{self, SimulateOptions};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn brokers() -> String {
    std::env::var("STOREPULSE_KAFKA_BROKERS").unwrap_or_else(|_| KafkaSettings::default().brokers)
}

fn database_url() -> String {
    std::env::var("STOREPULSE_DATABASE_URL").unwrap_or_else(|_| {
        storepulse::config::defaults()
            .checkpoint
            .database_url
            .clone()
    })
}

/// CPU seconds (user + system) of a process, from /proc (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the name: state is 0, utime is 11, stime is 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn prefill(settings: &KafkaSettings, events: u64, start_ms: i64) {
    let names = settings.topics.all();
    kafka::ensure_topics(settings, &names, PARTITIONS, Duration::from_secs(15))
        .await
        .expect("topics");
    let probe = settings.clone();
    // Topics just created may not be in the metadata yet: ask again for a few seconds.
    let held: i64 = tokio::task::spawn_blocking(move || {
        let count = || -> Result<i64, kafka::KafkaError> {
            probe
                .topics
                .all()
                .iter()
                .map(|t| kafka::total_records(&probe, t))
                .sum()
        };
        let mut attempts = 0;
        loop {
            match count() {
                Ok(held) => break held,
                Err(error) if attempts == 50 => panic!("watermarks: {error}"),
                Err(_) => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    })
    .await
    .expect("thread");
    if held == events as i64 {
        eprintln!("[bench] topics already hold {events} events");
        return;
    }
    assert_eq!(
        held, 0,
        "bench topics hold {held} records, not {events}: delete them or change BENCH_EVENTS"
    );
    eprintln!("[bench] producing {events} simulated events");
    let report = simulate::run(
        settings,
        SimulateOptions {
            scenario: common::catalog(7, start_ms),
            rate: None,
            count: Some(events),
            duration: None,
            partitions: PARTITIONS,
            create_topics: false,
            message_timeout: Duration::from_secs(120),
            progress_every: Some(Duration::from_secs(5)),
            junk_per_mille: 0,
            key_by_store: false,
            registry: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("prefill delivered");
    eprintln!(
        "[bench] produced {} in {:.1} s",
        report.acked,
        report.elapsed.as_secs_f64()
    );
}

/// Drains every partition from the beginning, counting bytes. Returns (wall, cpu) seconds.
fn baseline(settings: &KafkaSettings, events: u64) -> (f64, f64) {
    let pid = std::process::id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    // The same consumer settings as serve: the difference is the processing alone.
    let group = format!("bench-baseline-{}", rand::random::<u32>());
    let consumer: BaseConsumer = kafka::consumer_config(settings, &group)
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in settings.topics.all() {
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let (mut count, mut bytes) = (0u64, 0usize);
    while count < events {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            bytes += message.payload().map_or(0, <[u8]>::len);
            count += 1;
        }
    }
    std::hint::black_box(bytes);
    let wall = started.elapsed().as_secs_f64();
    drop(consumer);
    (wall, cpu_seconds(pid) - cpu_before)
}

struct Serve {
    child: Child,
    address: String,
}

impl Serve {
    fn start(topics: &Topics, group: &str, interval: &str) -> Serve {
        let database_url = database_url();
        let (child, address) = common::spawn_serve(
            topics,
            group,
            &[
                ("STOREPULSE_KAFKA_BROKERS", &brokers()),
                ("STOREPULSE_DATABASE_URL", &database_url),
                ("STOREPULSE_CHECKPOINT_INTERVAL", interval),
            ],
        );
        Serve { child, address }
    }

    fn get(&self, path: &str) -> (u16, String) {
        common::http_get(&self.address, path)
    }

    fn metric(&self, name: &str) -> i64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<i64>().ok()))
            .sum()
    }

    fn wait_for_records(&self, events: u64) {
        while self.metric("storepulse_records_total") < events as i64 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Catch-up of `serve` from offset 0. Returns (wall, cpu) seconds.
fn serve_catch_up(topics: &Topics, events: u64) -> (f64, f64) {
    let started = Instant::now();
    let serve = Serve::start(topics, &format!("bench-{}", rand::random::<u32>()), "5s");
    serve.wait_for_records(events);
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(serve.child.id());
    serve.kill();
    (wall, cpu)
}

/// SIGKILL a caught-up serve after a checkpoint; time from restart to `/readyz` 200.
fn recovery(topics: &Topics, events: u64) -> f64 {
    let group = format!("bench-recovery-{}", rand::random::<u32>());
    let serve = Serve::start(topics, &group, "1s");
    serve.wait_for_records(events);
    let written = serve.metric("storepulse_checkpoints_total");
    while serve.metric("storepulse_checkpoints_total") <= written {
        std::thread::sleep(Duration::from_millis(100));
    }
    serve.kill();
    let started = Instant::now();
    let serve = Serve::start(topics, &group, "1s");
    while serve.get("/readyz").0 != 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed().as_secs_f64();
    serve.kill();
    elapsed
}

/// One keep-alive HTTP/1.1 client: GETs `path` until `until`; returns (requests, bytes).
fn snapshot_client(address: &str, path: &str, until: Instant) -> (u64, u64) {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(address).expect("connects");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let (mut requests, mut bytes) = (0, 0);
    let mut body = Vec::new();
    while Instant::now() < until {
        writer.write_all(request.as_bytes()).expect("request");
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("a length");
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("body");
        assert_eq!(body.first(), Some(&b'{'), "a JSON snapshot");
        requests += 1;
        bytes += length as u64;
    }
    (requests, bytes)
}

/// `/api/snapshot` (and one store's) under `clients` keep-alive clients for `seconds`, on a
/// caught-up serve: per path (requests/s, serve CPU µs per request, bytes per response).
fn snapshot_throughput(
    topics: &Topics,
    events: u64,
    clients: usize,
    seconds: u64,
) -> Vec<(String, f64, f64, f64)> {
    let serve = Serve::start(
        topics,
        &format!("bench-snapshot-{}", rand::random::<u32>()),
        "5s",
    );
    serve.wait_for_records(events);
    // The all-stores snapshot is the rollup: a store to ask for comes from /api/stores.
    let (_, stores) = serve.get("/api/stores?limit=1");
    let store = stores
        .split("\"items\":[\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a store in /api/stores")
        .to_owned();
    let mut rows = Vec::new();
    for path in [
        "/api/snapshot".to_owned(),
        format!("/api/snapshot?store={store}"),
    ] {
        let cpu_before = cpu_seconds(serve.child.id());
        let until = Instant::now() + Duration::from_secs(seconds);
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (address, path) = (serve.address.clone(), path.clone());
                std::thread::spawn(move || snapshot_client(&address, &path, until))
            })
            .collect();
        let (requests, bytes) = threads
            .into_iter()
            .map(|t| t.join().expect("client"))
            .fold((0, 0), |(r, b), (r2, b2)| (r + r2, b + b2));
        let cpu = cpu_seconds(serve.child.id()) - cpu_before;
        rows.push((
            path,
            requests as f64 / seconds as f64,
            cpu * 1e6 / requests.max(1) as f64,
            bytes as f64 / requests.max(1) as f64,
        ));
    }
    serve.kill();
    rows
}

/// `scripts/bench checkpoint`: [`checkpoint_cost`] of 100 000 SKUs in 100 and in 10 000
/// stores, medians of `runs`.
async fn checkpoint_bench(runs: usize) {
    println!(
        "| checkpoint of 100 000 SKUs, every store changed (median of {runs}) | 100 stores × 1 000 SKUs | 10 000 stores × 10 SKUs |"
    );
    println!("|---|---:|---:|");
    let mut shops = Vec::new();
    for per_store in [1_000, 10] {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.push(checkpoint_cost(100_000, per_store).await);
        }
        shops.push(all);
    }
    let row = |name: &str, f: fn(&CheckpointCost) -> f64, unit: &str, scale: f64| {
        let cells: Vec<String> = shops
            .iter()
            .map(|all| format!("{:.3} {unit}", median(all.iter().map(f).collect()) * scale))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row(
        "freeze (on the ingest thread: pointer copies of the changed stores, the head copied)",
        |c| c.freeze,
        "ms",
        1e3,
    );
    row(
        "first change of each store while a frozen checkpoint shares it (copies it, on the ingest thread), per store",
        |c| c.store_copy,
        "ms",
        1e3,
    );
    row(
        "serialise (the writer's blocking worker)",
        |c| c.encode,
        "ms",
        1e3,
    );
    row(
        "PostgreSQL transaction (one part per store)",
        |c| c.write,
        "ms",
        1e3,
    );
    row("size", |c| c.bytes as f64, "MB", 1e-6);
}

/// What one checkpoint of a state costs, and where.
struct CheckpointCost {
    /// Freezing it on the ingest thread (pointer copies of the stores, the head copied).
    freeze: f64,
    /// Serialising it (on a blocking worker of the writer).
    encode: f64,
    /// The PostgreSQL transaction of the encoded checkpoint.
    write: f64,
    bytes: usize,
    /// Mean copy of one store on its first change after a freeze (on the ingest thread).
    store_copy: f64,
}

/// A state with `skus` SKUs (`per_store` in each store), then every store changed and
/// checkpointed once (a partial checkpoint of every store: a catch-up's).
async fn checkpoint_cost(skus: usize, per_store: usize) -> CheckpointCost {
    let layout = Layout::new(vec![
        (TopicRole::Orders, "o".into(), 4),
        (TopicRole::Inventory, "i".into(), 4),
        (TopicRole::Activity, "a".into(), 4),
    ]);
    let mut state = State::new(Arc::new(AggregateConfig::default()));
    let mut changes = Changes::default();
    for i in 0..skus {
        let event = Event::StockChanged(StockChanged {
            event_id: format!("bench-{i}"),
            store_id: format!("store-{:05}", i / per_store).into(),
            occurred_at: 1_795_773_600_000 + i as i64,
            sku: format!("SKU-{i:07}").into(),
            name: format!("Product number {i}"),
            new_level: (i % 300) as i64,
            delta: 1,
            reason: StockChangeReason::Restock,
        });
        let at = RecordRef {
            partition: PartitionKey {
                role: TopicRole::Inventory,
                partition: (i % 4) as i32,
            },
            offset: (i / 4) as i64,
        };
        state.apply(&event, at, &mut changes);
    }
    let ids: Vec<_> = state.stores().keys().cloned().collect();
    let started = Instant::now();
    let frozen = std::sync::Arc::new(Frozen::of(&state, &layout, &ids, false, 1));
    let freeze = started.elapsed().as_secs_f64();
    // Every store changes once more while the frozen checkpoint still shares it: each
    // first change copies that store (once).
    let stores = ids.len();
    let started = Instant::now();
    for i in 0..stores {
        let event = Event::StockChanged(StockChanged {
            event_id: format!("bench-again-{i}"),
            store_id: format!("store-{i:05}").into(),
            occurred_at: 1_795_773_600_000 + skus as i64,
            sku: format!("SKU-{:07}", i * per_store).into(),
            name: "Product".into(),
            new_level: 5,
            delta: 1,
            reason: StockChangeReason::Restock,
        });
        let at = RecordRef {
            partition: PartitionKey {
                role: TopicRole::Inventory,
                partition: 0,
            },
            offset: (skus + i) as i64,
        };
        state.apply(&event, at, &mut changes);
    }
    let store_copy = started.elapsed().as_secs_f64() / stores as f64;
    let started = Instant::now();
    std::hint::black_box(frozen.encode());
    let encode = started.elapsed().as_secs_f64();
    let store = CheckpointStore::connect_lazy(&database_url(), "bench-checkpoint").expect("pool");
    store.migrate().await.expect("migrations");
    let keep = storepulse::checkpoint::Keep {
        newest: 1,
        hourly: 0,
    };
    // A partial checkpoint needs a chain: a first (empty) one starts it.
    let empty = State::new(Arc::new(AggregateConfig::default()));
    let chain = store
        .write(
            Arc::new(Frozen::whole(&empty, &layout)),
            &layout,
            keep,
            None,
        )
        .await
        .expect("written");
    let written = store
        .write(frozen, &layout, keep, Some(chain.base_id))
        .await
        .expect("written");
    CheckpointCost {
        freeze,
        encode,
        write: written.duration.as_secs_f64(),
        bytes: written.bytes,
        store_copy,
    }
}

/// One `storepulse replay` over `topics` with `args`; wall seconds of the whole process.
fn replay_run(topics: &Topics, args: &[&str]) -> f64 {
    let started = Instant::now();
    let out = std::process::Command::new(common::serve_bin())
        .arg("replay")
        .args(args)
        .args(["--quiet", "--out", "/dev/null"])
        .env("STOREPULSE_KAFKA_BROKERS", brokers())
        .env("STOREPULSE_TOPIC_ORDERS", &topics.orders)
        .env("STOREPULSE_TOPIC_INVENTORY", &topics.inventory)
        .env("STOREPULSE_TOPIC_ACTIVITY", &topics.activity)
        .output()
        .expect("replay runs");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

/// `BENCH_REPLAY=1`: replay beside the bare consumer and serve's catch-up.
async fn replay_bench(events: u64, runs: usize) {
    // Dated yesterday, in topics of the day (see `main`).
    let day = storepulse::wall_clock::unix_ms() / 86_400_000;
    let start_ms = (day - 1) * 86_400_000;
    let settings = KafkaSettings {
        brokers: brokers(),
        topics: Topics {
            orders: format!("bench-replay-{events}-{day}-orders"),
            inventory: format!("bench-replay-{events}-{day}-inventory"),
            activity: format!("bench-replay-{events}-{day}-activity"),
        },
    };
    prefill(&settings, events, start_ms).await;
    // The catalog's events start at `start_ms`, at 2 000 events/s of event time.
    let end_ms = start_ms + (events as i64 * 1000 / 2000) + 60_000;
    let time = |ms: i64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
            .to_string()
    };
    let (from, to) = (time(start_ms), time(end_ms));
    let modes = [
        "bare rdkafka consumer (baseline)",
        "serve, catch-up from offset 0",
        "replay --as-of the end",
        "replay --every 1m (timeline)",
        "replay --every 10s (timeline)",
    ];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for run in 1..=runs {
        let s = settings.clone();
        walls[0].push(
            tokio::task::spawn_blocking(move || baseline(&s, events).0)
                .await
                .expect("baseline"),
        );
        let t = settings.topics.clone();
        walls[1].push(
            tokio::task::spawn_blocking(move || serve_catch_up(&t, events).0)
                .await
                .expect("serve"),
        );
        walls[2].push(replay_run(
            &settings.topics,
            &["--from", &from, "--as-of", &to],
        ));
        walls[3].push(replay_run(
            &settings.topics,
            &["--from", &from, "--to", &to, "--every", "1m"],
        ));
        walls[4].push(replay_run(
            &settings.topics,
            &["--from", &from, "--to", &to, "--every", "10s"],
        ));
        eprintln!(
            "[bench] run {run}: {:?}",
            walls
                .iter()
                .map(|w| w.last().copied().unwrap_or(0.0))
                .collect::<Vec<_>>()
        );
    }
    let base = median(walls[0].clone());
    let serve = median(walls[1].clone());
    let as_of = median(walls[2].clone());
    println!(
        "replay of {events} records ({} min of event time), medians of {runs} interleaved runs:\n",
        (end_ms - start_ms) / 60_000
    );
    println!("| path | events/s | wall s | vs bare consumer | vs serve catch-up | vs as-of |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (mode, values) in modes.iter().zip(&walls) {
        let wall = median(values.clone());
        println!(
            "| {mode} | {:.0} | {wall:.2} | {:.2} | {:.2} | {:.2} |",
            events as f64 / wall,
            base / wall,
            serve / wall,
            as_of / wall
        );
    }
    println!("\nruns (wall s): {walls:.2?}");
}

#[tokio::main]
async fn main() {
    let events = env_or("BENCH_EVENTS", 2_000_000);
    let runs = env_or("BENCH_RUNS", 3) as usize;
    if std::env::var("BENCH_REPLAY").is_ok_and(|v| v == "1") {
        replay_bench(events, runs).await;
        return;
    }
    if std::env::var("BENCH_CHECKPOINT").is_ok_and(|v| v == "1") {
        checkpoint_bench(runs).await;
        return;
    }
    // Records dated yesterday (UTC) in topics named for the day: Kafka's retention deletes
    // records by their timestamps, so a fixed past date would be deleted under a bench that
    // still counts them (and wait for them forever).
    let day = storepulse::wall_clock::unix_ms() / 86_400_000;
    let start_ms = (day - 1) * 86_400_000;
    let settings = KafkaSettings {
        brokers: brokers(),
        topics: Topics {
            orders: format!("bench-{events}-{day}-orders"),
            inventory: format!("bench-{events}-{day}-inventory"),
            activity: format!("bench-{events}-{day}-activity"),
        },
    };
    prefill(&settings, events, start_ms).await;

    let (mut base_wall, mut base_cpu, mut serve_wall, mut serve_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let s = settings.clone();
        let (wall, cpu) = tokio::task::spawn_blocking(move || baseline(&s, events))
            .await
            .expect("baseline");
        eprintln!("[bench] run {run}: baseline {wall:.2} s wall, {cpu:.2} s cpu");
        base_wall.push(wall);
        base_cpu.push(cpu);
        let topics = settings.topics.clone();
        let (wall, cpu) = tokio::task::spawn_blocking(move || serve_catch_up(&topics, events))
            .await
            .expect("serve");
        eprintln!("[bench] run {run}: serve {wall:.2} s wall, {cpu:.2} s cpu");
        serve_wall.push(wall);
        serve_cpu.push(cpu);
    }
    let topics = settings.topics.clone();
    let recoveries: Vec<f64> =
        tokio::task::spawn_blocking(move || (0..runs).map(|_| recovery(&topics, events)).collect())
            .await
            .expect("recovery");
    let checkpoint = checkpoint_cost(100_000, 1_000).await;
    let clients = env_or("BENCH_SNAPSHOT_CLIENTS", 8) as usize;
    let topics = settings.topics.clone();
    let snapshot_runs: Vec<Vec<(String, f64, f64, f64)>> = tokio::task::spawn_blocking(move || {
        (0..runs)
            .map(|_| snapshot_throughput(&topics, events, clients, 5))
            .collect()
    })
    .await
    .expect("snapshot throughput");

    let rate = |wall: f64| events as f64 / wall;
    let (bw, sw) = (median(base_wall.clone()), median(serve_wall.clone()));
    let (bc, sc) = (median(base_cpu), median(serve_cpu));
    println!("| path | events/s (median of {runs}) | wall s | CPU µs/event | ratio to baseline |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| bare rdkafka consumer (baseline) | {:.0} | {bw:.2} | {:.2} | 1.00 |",
        rate(bw),
        bc * 1e6 / events as f64
    );
    println!(
        "| storepulse serve, catch-up from offset 0 | {:.0} | {sw:.2} | {:.2} | {:.2} |",
        rate(sw),
        sc * 1e6 / events as f64,
        bw / sw
    );
    println!();
    println!("runs (wall s): baseline {base_wall:.2?}, serve {serve_wall:.2?}");
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| SIGKILL → /readyz 200, {events} events in history (median of {runs}) | {:.2} s |",
        median(recoveries.clone())
    );
    println!(
        "| checkpoint of 100 000 SKUs (100 stores, all changed): freeze (on the ingest thread) | {:.2} ms |",
        checkpoint.freeze * 1e3
    );
    println!(
        "| … serialise (on the writer's blocking worker) | {:.1} ms |",
        checkpoint.encode * 1e3
    );
    println!(
        "| … PostgreSQL transaction | {:.1} ms |",
        checkpoint.write * 1e3
    );
    println!("| … size | {:.1} MB |", checkpoint.bytes as f64 / 1e6);
    println!(
        "| … first change of a 1 000-SKU store it shares (copies the store, on the ingest thread) | {:.3} ms |",
        checkpoint.store_copy * 1e3
    );
    println!();
    println!("recovery runs (s): {recoveries:.2?}");
    println!();
    println!(
        "| `/api/snapshot`, {clients} keep-alive clients, 5 s (median of {runs}) | requests/s | serve CPU µs/request | KB/response |"
    );
    println!("|---|---:|---:|---:|");
    for (i, (path, ..)) in snapshot_runs[0].iter().enumerate() {
        let column = |f: fn(&(String, f64, f64, f64)) -> f64| {
            median(snapshot_runs.iter().map(|run| f(&run[i])).collect())
        };
        println!(
            "| `{path}` | {:.0} | {:.0} | {:.1} |",
            column(|r| r.1),
            column(|r| r.2),
            column(|r| r.3) / 1e3
        );
    }
    let per_run: Vec<Vec<String>> = snapshot_runs
        .iter()
        .map(|run| run.iter().map(|r| format!("{:.0}", r.1)).collect())
        .collect();
    println!();
    println!("snapshot runs (requests/s, all stores / one store): {per_run:?}");
}
