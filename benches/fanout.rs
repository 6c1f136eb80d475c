//! Fan-out, cost per dashboard and resume storm of the live stream, against the real local
//! stack (`scripts/bench fanout` brings it up). Every server is a separate process, so its
//! RSS and CPU (from `/proc`) are its own; the clients are tokio tasks in this process.
//!
//! 1. Fan-out: N idle SSE clients (server RSS per client), then records at a fixed rate
//!    (deliveries/s, latency = parse time − the frame's `as_of_ms`, server CPU); the same
//!    against the naive baseline in the same run: an axum `Sse` handler that serialises
//!    every delta once per client and writes one event per delta through a tokio
//!    broadcast (this binary, re-executed as `naive-server`, fed by one storepulse stream).
//! 2. Cost per dashboard: server CPU for M dashboards on the stream vs the same M polling
//!    `/api/snapshot` every second, at the same record rate, less the CPU of the same
//!    records with no client (ingest). The stream twice: frames every 25 ms (default) and
//!    every 1 s (as fresh as the polling).
//! 3. Resume storm: M clients on the stream, `serve` SIGKILLed and restarted on the same
//!    port from its checkpoint; time until every client has an event again.
//!
//! Prints Markdown for `docs/benchmarks.md`; asserts nothing about speed. Settings:
//! `BENCH_CLIENTS` (10000), `BENCH_DASHBOARDS` (1000), `BENCH_SECONDS` (10),
//! `BENCH_RATE` (200 records/s).

mod common;

use common::load::{ClientMode, Clients, produce, usage, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use storepulse::kafka::KafkaSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Fan-out numbers of one server.
struct FanOut {
    rss_per_client: f64,
    deliveries_per_s: f64,
    cpu_s: f64,
    p50: i64,
    p99: i64,
    p999: i64,
}

async fn fan_out(
    first_event: bool,
    pid: u32,
    address: &str,
    settings: &KafkaSettings,
    n: usize,
    rate: f64,
    seconds: u64,
) -> FanOut {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_before) = usage(pid);
    let clients = Clients::connect(address, n, first_event, ClientMode::default()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_before, rss_idle) = usage(pid);
    clients.tally.recording.store(true, Ordering::Relaxed);
    let delivered_before = clients.tally.deliveries.load(Ordering::Relaxed);
    let started = Instant::now();
    produce(settings, rand::random(), rate, seconds).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, _) = usage(pid);
    let delivered = clients.tally.deliveries.load(Ordering::Relaxed) - delivered_before;
    let (p50, p99, p999) = clients.tally.latency();
    clients.close().await;
    FanOut {
        rss_per_client: rss_idle.saturating_sub(rss_before) as f64 / n as f64,
        deliveries_per_s: delivered as f64 / elapsed,
        cpu_s: cpu_after - cpu_before,
        p50,
        p99,
        p999,
    }
}

/// Server CPU seconds while `m` dashboards poll `/api/snapshot` every second.
async fn polling_cpu(
    pid: u32,
    address: &str,
    settings: &KafkaSettings,
    m: usize,
    rate: f64,
    seconds: u64,
) -> (f64, u64) {
    let stop = CancellationToken::new();
    let polls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..m {
        let (address, stop, polls) = (address.to_owned(), stop.clone(), Arc::clone(&polls));
        tasks.push(tokio::spawn(async move {
            // Spread over the second, as independent dashboards are.
            tokio::time::sleep(Duration::from_millis((i as u64 * 1000) / m as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.is_cancelled() {
                tick.tick().await;
                if get_ok(&address, "/api/snapshot").await {
                    polls.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, _) = usage(pid);
    produce(settings, rand::random(), rate, seconds).await;
    let (after, _) = usage(pid);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    (after - before, polls.load(Ordering::Relaxed))
}

/// `GET path` over HTTP/1.0, reading the whole body; true on a 200.
async fn get_ok(address: &str, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await.is_ok() && body.starts_with(b"HTTP/1.1 200")
        || body.starts_with(b"HTTP/1.0 200")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("naive-server") {
        common::load::naive_server(args.get(2).cloned().expect("source address")).await;
        return;
    }
    let n = common::setting("BENCH_CLIENTS", 10_000) as usize;
    let m = common::setting("BENCH_DASHBOARDS", 1_000) as usize;
    let seconds = common::setting("BENCH_SECONDS", 10);
    let rate = common::setting("BENCH_RATE", 200) as f64;
    let (settings, suffix) = common::fresh_topics("bench-fanout").await;
    produce(&settings, 1, rate, 2).await;
    let group = format!("bench-fanout-{suffix}");
    // Every client comes from one loopback address: the per-client caps would refuse
    // all but the first few dozen.
    let environment = vec![
        ("STOREPULSE_MAX_SUBSCRIBERS", "20000"),
        ("STOREPULSE_LIMIT_STREAMS_PER_CLIENT", "0"),
        ("STOREPULSE_LIMIT_STREAMS_PER_PRINCIPAL", "0"),
        ("STOREPULSE_LIMIT_REQUESTS_PER_SECOND", "0"),
    ];
    let (mut serve, address) = common::spawn_serve(&settings.topics, &group, &environment);
    wait_for("readiness", Duration::from_secs(60), || {
        common::http_get(&address, "/readyz").0 == 200
    })
    .await;
    let pid = serve.id();

    // 1. Fan-out: storepulse, then the naive baseline fed by it.
    let ours = fan_out(true, pid, &address, &settings, n, rate, seconds).await;
    // How storepulse's clients were served: shared frames, span writes, lag recovery.
    let served = {
        let (_, metrics) = common::http_get(&address, "/metrics");
        let metric = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        format!(
            "storepulse built {} frames; {} span writes; {} streams fell behind their queue",
            metric("storepulse_frames_total "),
            metric("storepulse_span_writes_total "),
            metric("storepulse_lagged_subscribers_total "),
        )
    };
    let (mut naive, naive_address) = common::load::spawn_naive(&address);
    let theirs = fan_out(
        false,
        naive.id(),
        &naive_address,
        &settings,
        n,
        rate,
        seconds,
    )
    .await;
    let _ = naive.kill();
    let _ = naive.wait();

    // 2. Cost per dashboard: the stream vs polling, M dashboards each, less ingest.
    let stream_cpu = |pid: u32, address: String| {
        let settings = settings.clone();
        async move {
            let clients = Clients::connect(&address, m, true, ClientMode::default()).await;
            let (before, _) = usage(pid);
            produce(&settings, rand::random(), rate, seconds).await;
            let (after, _) = usage(pid);
            clients.close().await;
            after - before
        }
    };
    let ingest_cpu = {
        let (before, _) = usage(pid);
        produce(&settings, rand::random(), rate, seconds).await;
        usage(pid).0 - before
    };
    let fast_cpu = stream_cpu(pid, address.clone()).await - ingest_cpu;
    let (poll_cpu, polls) = polling_cpu(pid, &address, &settings, m, rate, seconds).await;
    let poll_cpu = poll_cpu - ingest_cpu;
    let slow_cpu = {
        let environment = [("STOREPULSE_FRAME_INTERVAL", "1s")];
        let (mut slow, slow_address) =
            common::spawn_serve(&settings.topics, &format!("{group}-1s"), &environment);
        wait_for("the 1 s server", Duration::from_secs(60), || {
            common::http_get(&slow_address, "/readyz").0 == 200
        })
        .await;
        let cpu = stream_cpu(slow.id(), slow_address).await - ingest_cpu;
        let _ = slow.kill();
        let _ = slow.wait();
        cpu
    };

    // 3. Resume storm: M clients, SIGKILL, restart on the same port.
    let storm = Clients::connect(&address, m, true, ClientMode::default()).await;
    produce(&settings, rand::random(), rate, 2).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // a checkpoint behind the clients
    let _ = serve.kill();
    let _ = serve.wait();
    let killed = Instant::now();
    storm.mark();
    let mut restart_env = environment.clone();
    restart_env.push(("STOREPULSE_HTTP_ADDR", address.as_str()));
    let (mut serve, _) = common::spawn_serve(&settings.topics, &group, &restart_env);
    let listening = killed.elapsed();
    let tally = Arc::clone(&storm.tally);
    wait_for("the storm", Duration::from_secs(120), || {
        tally.fresh.load(Ordering::Relaxed) >= m
    })
    .await;
    let all_live = killed.elapsed();
    storm.close().await;
    let _ = serve.kill();
    let _ = serve.wait();

    println!("## Fan-out: {n} SSE clients, {rate} records/s for {seconds} s (3 stores × 40 SKUs)");
    println!();
    println!(
        "| server | RSS per idle client | deliveries/s | server CPU s | p50 ms | p99 ms | p99.9 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, f) in [
        ("storepulse", &ours),
        ("naive broadcast (baseline)", &theirs),
    ] {
        println!(
            "| {name} | {:.1} KB | {:.0} | {:.2} | {} | {} | {} |",
            f.rss_per_client / 1024.0,
            f.deliveries_per_s,
            f.cpu_s,
            f.p50,
            f.p99,
            f.p999
        );
    }
    println!();
    println!("{served}");
    println!();
    println!("## Cost per dashboard: {m} dashboards, {rate} records/s for {seconds} s");
    println!();
    println!("Ingest alone (no client): {ingest_cpu:.2} CPU s, subtracted from each row.");
    println!();
    println!("| mode | serving CPU s | polling ÷ this |");
    println!("|---|---:|---:|");
    println!(
        "| SSE, frames every 25 ms | {fast_cpu:.2} | {:.1}× |",
        poll_cpu / fast_cpu.max(0.01)
    );
    println!(
        "| SSE, frames every 1 s | {slow_cpu:.2} | {:.1}× |",
        poll_cpu / slow_cpu.max(0.01)
    );
    println!("| polling /api/snapshot every 1 s ({polls} polls) | {poll_cpu:.2} | 1 |");
    println!();
    println!("## Resume storm: {m} clients, serve SIGKILLed and restarted on the same port");
    println!();
    println!("| kill → restarted process spawned | kill → every client has an event again |");
    println!("|---:|---:|");
    println!(
        "| {} ms | {} ms |",
        listening.as_millis(),
        all_live.as_millis()
    );
}
