//! End-to-end latency of the live stream against the real local stack (`scripts/stack up`
//! first): the simulator produces in real time (event time = wall clock, paced), `serve`
//! turns the records into frames, and N SSE clients on loopback parse every frame. The
//! latency of a frame is the wall clock when a client has parsed it minus the frame's
//! `as_of_ms` (the event time of its newest record, i.e. when that record was produced).
//!
//! Baseline in the same run: a bare rdkafka consumer on the same topics, latency = wall
//! clock at consumption minus the record's event time: what Kafka itself costs.
//!
//! Prints Markdown for `docs/benchmarks.md`. Not a test: nothing here asserts a speed.
//! Settings: `BENCH_CLIENTS` (default 1000), `BENCH_SECONDS` (15), `BENCH_RATE` (2000/s),
//! `BENCH_FRAME_INTERVAL` (serve's `stream.frame_interval`; its default when unset).
//!
//! `BENCH_REPLAYS=n` (default 0): the topics first get a history (100 000 records dated an
//! hour ago), and while the live clients are measured, n dashboards each watch that history
//! through `/api/replay/stream`, paced to last the whole measurement: what replays cost the
//! live path.

mod common;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storepulse::events::Codec;
use storepulse::kafka::{self, KafkaSettings};
use storepulse::live::client::SseParser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Reads one SSE client until `stop`, recording the latency of every delta it reads.
async fn client(address: String, latencies: Arc<Mutex<Vec<i64>>>, stop: CancellationToken) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else {
        return;
    };
    let request = format!("GET /api/stream HTTP/1.0\r\nHost: {address}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    // The shared test client's parser; the response's headers (\r\n lines) are skipped
    // with the `retry:` block.
    let mut parser = SseParser::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut mine = Vec::new();
    loop {
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read.unwrap_or(0),
            () = stop.cancelled() => 0,
        };
        if read == 0 {
            break;
        }
        parser.push(&chunk[..read], |event| {
            if event.event == "delta"
                && let Some(as_of) = common::as_of_ms(event.data)
            {
                mine.push(common::now_ms() - as_of);
            }
        });
    }
    if let Ok(mut all) = latencies.lock() {
        all.extend(mine);
    }
}

/// A bare consumer from the end of the topics; latency per record.
fn bare_consumer(settings: KafkaSettings, stop: CancellationToken) -> Vec<i64> {
    let codec = Codec::new(&Default::default()).expect("schemas");
    let consumer: BaseConsumer = kafka::consumer_config(&settings, "bench-latency-baseline")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in settings.topics.all() {
        for partition in 0..4 {
            assignment
                .add_partition_offset(topic, partition, Offset::End)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut latencies = Vec::new();
    while !stop.is_cancelled() {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50))
            && let Ok(event) = codec.decode(message.payload().unwrap_or_default())
        {
            latencies.push(common::now_ms() - event.occurred_at());
        }
    }
    latencies
}

#[tokio::main]
async fn main() {
    let clients = common::setting("BENCH_CLIENTS", 1_000) as usize;
    let seconds = common::setting("BENCH_SECONDS", 15);
    let rate = common::setting("BENCH_RATE", 2_000) as f64;
    let (settings, suffix) = common::fresh_topics("bench-latency").await;
    // BENCH_FRAME_INTERVAL: serve's `stream.frame_interval` (its default, 25ms, if unset).
    let frame_interval = std::env::var("BENCH_FRAME_INTERVAL").ok();
    let environment: Vec<(&str, &str)> = frame_interval
        .as_deref()
        .map(|v| ("STOREPULSE_FRAME_INTERVAL", v))
        .into_iter()
        .collect();
    let replays = common::setting("BENCH_REPLAYS", 0) as usize;
    // A history for the replays: 100 000 records an hour ago, 2 000 a second of event time.
    let history_start = common::now_ms() - 3_600_000;
    let history_ms: i64 = 50_000;
    if replays > 0 {
        storepulse::simulate::run(
            &settings,
            storepulse::simulate::SimulateOptions {
                scenario: common::catalog(3, history_start),
                rate: None,
                count: Some(100_000),
                duration: None,
                partitions: 4,
                create_topics: false,
                message_timeout: Duration::from_secs(60),
                progress_every: None,
                junk_per_mille: 0,
                key_by_store: false,
                registry: None,
            },
            CancellationToken::new(),
        )
        .await
        .expect("history produced");
    }
    let mut environment = environment;
    environment.push(("STOREPULSE_REPLAY_MAX_CONCURRENT", "16"));
    let (mut serve, address) = common::spawn_serve(
        &settings.topics,
        &format!("bench-latency-{suffix}"),
        &environment,
    );
    // Wait until serve has its partitions (the stream answers 200).
    for _ in 0..100 {
        let ready = common::http_get(&address, "/readyz").0 == 200;
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stop = CancellationToken::new();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(client(
            address.clone(),
            Arc::clone(&latencies),
            stop.clone(),
        )));
    }
    let baseline = {
        let (settings, stop) = (settings.clone(), stop.clone());
        tokio::task::spawn_blocking(move || bare_consumer(settings, stop))
    };
    // The replays: the history at a speed that makes it last the measurement.
    let speed = (history_ms / 1000 / seconds.max(1) as i64).max(1);
    let time = |ms: i64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
            .to_string()
    };
    let replay_path = format!(
        "/api/replay/stream?from={}&to={}&speed={speed}",
        time(history_start),
        time(history_start + history_ms)
    );
    let replayed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..replays {
        let (address, path, stop, replayed) = (
            address.clone(),
            replay_path.clone(),
            stop.clone(),
            Arc::clone(&replayed),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else { return };
            let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
            if stream.write_all(request.as_bytes()).await.is_err() {
                return;
            }
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    read = stream.read(&mut chunk) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => { replayed.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed); }
                    },
                    () = stop.cancelled() => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = common::load::produce(&settings, suffix.into(), rate, seconds).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let mut base = baseline.await.expect("baseline");
    let (_, metrics) = common::http_get(&address, "/metrics");
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let built = metric("storepulse_frames_total");
    println!(
        "serve built {built} frames, {:.0} bytes each on average; {} span writes; {} lagged streams",
        metric("storepulse_frame_bytes_total") / built.max(1.0),
        metric("storepulse_span_writes_total"),
        metric("storepulse_lagged_subscribers_total"),
    );
    let _ = serve.kill();
    let _ = serve.wait();
    let mut frames = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    frames.sort_unstable();
    base.sort_unstable();
    println!(
        "{} records at {rate}/s for {seconds} s; {clients} SSE clients; {} frame deliveries; {replays} replays at {speed}x read {} bytes",
        acked,
        frames.len(),
        replayed.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!();
    println!("| path | p50 ms | p99 ms | p99.9 ms | samples |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| bare consumer (record produced → consumed) | {} | {} | {} | {} |",
        common::percentile(&base, 0.5),
        common::percentile(&base, 0.99),
        common::percentile(&base, 0.999),
        base.len()
    );
    println!(
        "| storepulse (newest record of a frame produced → frame parsed by a client) | {} | {} | {} | {} |",
        common::percentile(&frames, 0.5),
        common::percentile(&frames, 0.99),
        common::percentile(&frames, 0.999),
        frames.len()
    );
}
