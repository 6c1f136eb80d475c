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

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use storepulse::kafka::KafkaSettings;
use storepulse::live::client::{SseParser, SseRef};
use storepulse::simulate::scenario::ScenarioConfig;
use storepulse::simulate::{self, SimulateOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What a group of clients saw.
#[derive(Default)]
struct Tally {
    deliveries: AtomicU64,
    bytes: AtomicU64,
    connected: AtomicUsize,
    /// Clients that received an event since `mark` was reset.
    fresh: AtomicUsize,
    latencies: std::sync::Mutex<Vec<i64>>,
    recording: std::sync::atomic::AtomicBool,
}

/// A process's CPU seconds and RSS bytes, from `/proc`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, rss_kb * 1024)
}

/// An SSE client that reconnects with its last id; counts events, and records the latency
/// of deltas while `tally.recording` is set. Finds fields by text, not by parsing JSON,
/// so that ten thousand of them fit on the bench's cores.
async fn sse_client(
    address: String,
    tally: Arc<Tally>,
    seen_fresh: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    let mut last_id: Option<String> = None;
    let mut my_mark = i64::MIN;
    while !stop.is_cancelled() {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut request = format!("GET /api/stream HTTP/1.0\r\nHost: {address}\r\n");
        if let Some(id) = &last_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        tally.connected.fetch_add(1, Ordering::Relaxed);
        // The shared test client's parser (it borrows each event from its buffer), after
        // the response's headers.
        let mut parser = SseParser::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let mut header: Option<Vec<u8>> = Some(Vec::new());
        loop {
            let read = tokio::select! {
                read = stream.read(&mut chunk) => read.unwrap_or(0),
                () = stop.cancelled() => 0,
            };
            if read == 0 {
                break;
            }
            tally.bytes.fetch_add(read as u64, Ordering::Relaxed);
            let body = match header.as_mut() {
                None => &chunk[..read],
                Some(bytes) => {
                    bytes.extend_from_slice(&chunk[..read]);
                    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let rest = bytes.split_off(end + 4);
                    header = None;
                    parser.push(&rest, |event| {
                        on_event(event, &tally, &seen_fresh, &mut my_mark, &mut last_id)
                    });
                    continue;
                }
            };
            parser.push(body, |event| {
                on_event(event, &tally, &seen_fresh, &mut my_mark, &mut last_id)
            });
        }
        tally.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one event: its id for the reconnect, the first event after a mark, and the
/// latency of deltas while recording.
fn on_event(
    event: SseRef<'_>,
    tally: &Tally,
    seen_fresh: &AtomicI64,
    my_mark: &mut i64,
    last_id: &mut Option<String>,
) {
    if let Some(id) = event.id {
        *last_id = Some(id.to_owned());
    }
    let mark = seen_fresh.load(Ordering::Relaxed);
    if mark != *my_mark {
        *my_mark = mark;
        tally.fresh.fetch_add(1, Ordering::Relaxed);
    }
    if event.event == "delta" {
        tally.deliveries.fetch_add(1, Ordering::Relaxed);
        if tally.recording.load(Ordering::Relaxed)
            && let Some(as_of) = common::as_of_ms(event.data)
            && let Ok(mut all) = tally.latencies.lock()
        {
            all.push(common::now_ms() - as_of);
        }
    }
}

async fn produce(settings: &KafkaSettings, seed: u64, rate: f64, seconds: u64) -> u64 {
    simulate::run(
        settings,
        SimulateOptions {
            scenario: ScenarioConfig {
                seed,
                start_ms: common::now_ms(),
                events_per_second: rate,
                stores: 3,
                skus_per_store: 40,
                flash_sale: None,
            },
            rate: Some(rate),
            count: None,
            duration: Some(Duration::from_secs(seconds)),
            partitions: 4,
            create_topics: false,
            message_timeout: Duration::from_secs(30),
            progress_every: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("produced")
    .acked
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// One group of clients against `address`.
struct Clients {
    tally: Arc<Tally>,
    mark: Arc<AtomicI64>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// `n` clients; waits until all are connected and, with `first_event`, until each has
    /// had an event (the naive baseline sends nothing before its first delta).
    async fn connect(address: &str, n: usize, first_event: bool) -> Clients {
        let tally = Arc::new(Tally::default());
        let mark = Arc::new(AtomicI64::new(0));
        let stop = CancellationToken::new();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tasks.push(tokio::spawn(sse_client(
                address.to_owned(),
                Arc::clone(&tally),
                Arc::clone(&mark),
                stop.clone(),
            )));
            if i % 500 == 499 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let clients = Clients {
            tally,
            mark,
            stop,
            tasks,
        };
        let tally = Arc::clone(&clients.tally);
        wait_for("clients", Duration::from_secs(120), || {
            tally.connected.load(Ordering::Relaxed) >= n
                && (!first_event || tally.fresh.load(Ordering::Relaxed) >= n)
        })
        .await;
        clients
    }

    async fn close(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

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
    let clients = Clients::connect(address, n, first_event).await;
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
    let mut latencies = clients
        .tally
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    clients.close().await;
    FanOut {
        rss_per_client: rss_idle.saturating_sub(rss_before) as f64 / n as f64,
        deliveries_per_s: delivered as f64 / elapsed,
        cpu_s: cpu_after - cpu_before,
        p50: common::percentile(&latencies, 0.5),
        p99: common::percentile(&latencies, 0.99),
        p999: common::percentile(&latencies, 0.999),
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

/// The naive baseline: one storepulse stream in, every delta re-serialised for every client.
async fn naive_server(source: String) {
    use axum::response::sse::{Event, Sse};
    use tokio::sync::broadcast;
    let (tx, _) = broadcast::channel::<Arc<serde_json::Value>>(1024);
    let feed = tx.clone();
    tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(&source)
            .await
            .expect("source");
        let request = format!("GET /api/stream HTTP/1.0\r\nHost: {source}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        // The response's headers hold no blank line of their own (\r\n): the parser
        // skips them with the `retry:` block.
        let mut parser = SseParser::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let read = stream.read(&mut chunk).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            parser.push(&chunk[..read], |event| {
                if event.event == "delta"
                    && let Ok(value) = serde_json::from_slice(event.data)
                {
                    let _ = feed.send(Arc::new(value));
                }
            });
        }
    });
    let router = axum::Router::new().route(
        "/api/stream",
        axum::routing::get(move || {
            let mut rx = tx.subscribe();
            async move {
                let events = async_stream::stream! {
                    loop {
                        match rx.recv().await {
                            Ok(delta) => {
                                let json = serde_json::to_string(&*delta).unwrap_or_default();
                                yield Ok::<Event, std::convert::Infallible>(Event::default().event("delta").data(json));
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                };
                Sse::new(events)
            }
        }),
    );
    let listener =
        storepulse::http::listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    println!(
        "naive serving on http://{}",
        listener.local_addr().expect("addr")
    );
    axum::serve(listener, router).await.expect("naive server");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("naive-server") {
        naive_server(args.get(2).cloned().expect("source address")).await;
        return;
    }
    let n = common::setting("BENCH_CLIENTS", 10_000) as usize;
    let m = common::setting("BENCH_DASHBOARDS", 1_000) as usize;
    let seconds = common::setting("BENCH_SECONDS", 10);
    let rate = common::setting("BENCH_RATE", 200) as f64;
    let (settings, suffix) = common::fresh_topics("bench-fanout").await;
    produce(&settings, 1, rate, 2).await;
    let group = format!("bench-fanout-{suffix}");
    let environment = vec![("STOREPULSE_MAX_SUBSCRIBERS", "20000")];
    let (mut serve, address) = common::spawn_serve(&settings.topics, &group, &environment);
    wait_for("readiness", Duration::from_secs(60), || {
        common::http_get(&address, "/readyz").0 == 200
    })
    .await;
    let pid = serve.id();

    // 1. Fan-out: storepulse, then the naive baseline fed by it.
    let ours = fan_out(true, pid, &address, &settings, n, rate, seconds).await;
    // How storepulse's clients were served: shared frames, conflated writes, lag recovery.
    let served = {
        let (_, metrics) = common::http_get(&address, "/metrics");
        let metric = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        format!(
            "storepulse built {} frames; {} conflated writes; {} streams fell behind their queue",
            metric("storepulse_frames_total "),
            metric("storepulse_span_writes_total "),
            metric("storepulse_lagged_subscribers_total "),
        )
    };
    let mut naive = std::process::Command::new(std::env::current_exe().expect("self"))
        .args(["naive-server", &address])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("naive server starts");
    let naive_address = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(naive.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("address");
        line.trim()
            .rsplit("http://")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
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
            let clients = Clients::connect(&address, m, true).await;
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
    let storm = Clients::connect(&address, m, true).await;
    produce(&settings, rand::random(), rate, 2).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // a checkpoint behind the clients
    let _ = serve.kill();
    let _ = serve.wait();
    let killed = Instant::now();
    storm.mark.fetch_add(1, Ordering::Relaxed);
    storm.tally.fresh.store(0, Ordering::Relaxed);
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
