//! Graceful degradation of the live stream, quiet and contended, against the real local
//! stack (`scripts/bench degrade`). The server is a process of its own (its CPU and RSS
//! from `/proc` are its own); the clients are this process's tasks (`common::load`); a
//! contended run adds a busy loop on one core in a third process for the measured window.
//!
//! Per row (medians of `BENCH_RUNS`, 3): deliveries/s (delta events received by all
//! clients), deliveries ÷ (clients × frames built), server CPU-µs per delivery net of
//! ingest (the same records with no client, same mode, same run), bytes per client-second
//! as read from the sockets, p50/p99 latency (now − the delta's `as_of_ms`), p99 fan-out
//! spread (first → last client to receive a frame). Then a reconnect storm with the server
//! up (every client drops and resumes by its Last-Event-ID at once: time until each has an
//! event again), and RSS with no client and per idle client.
//!
//! Prints Markdown for `docs/benchmarks.md`; asserts nothing about speed. Settings:
//! `BENCH_RUNS` (3), `BENCH_SECONDS` (8), `BENCH_PARTS` (`loads,storms`: which parts run).

mod common;

use common::load::{ClientMode, Clients, CpuHog, produce, spawn_naive, usage, wait_for};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use storepulse::kafka::KafkaSettings;

/// One measured configuration.
#[derive(Clone, Copy)]
struct Load {
    clients: usize,
    rate: f64,
    contended: bool,
    gzip: bool,
}

/// What one run of a [`Load`] measured.
#[derive(Clone, Copy, Default)]
struct Measured {
    deliveries_per_s: f64,
    ratio: f64,
    cpu_us: f64,
    bytes_per_client_s: f64,
    p50: f64,
    p99: f64,
    spread_p99: f64,
    /// CPU seconds of this process (the clients) per second of the run.
    clients_cpu: f64,
}

fn metric(address: &str, name: &str) -> f64 {
    let (_, metrics) = common::http_get(address, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Server CPU seconds for `seconds` of records at `rate` with no client.
async fn ingest_cpu(
    pid: u32,
    settings: &KafkaSettings,
    rate: f64,
    seconds: u64,
    contended: bool,
) -> f64 {
    let _hog = contended.then(|| CpuHog::start(seconds + 3));
    let (before, _) = usage(pid);
    produce(settings, rand::random(), rate, seconds).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    usage(pid).0 - before
}

/// One run: `load.clients` clients on the server `pid` at `address` (storepulse's own
/// address `source` counts the frames), records for `seconds`.
async fn run(
    pid: u32,
    address: &str,
    source: &str,
    settings: &KafkaSettings,
    load: Load,
    seconds: u64,
    ingest_cpu: f64,
) -> Measured {
    let naive = address != source;
    let mode = ClientMode { gzip: load.gzip };
    let clients = Clients::connect(address, load.clients, !naive, mode).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hog = load.contended.then(|| CpuHog::start(seconds + 3));
    let tally = &clients.tally;
    let frames_before = metric(source, "storepulse_frames_total");
    let (cpu_before, _) = usage(pid);
    let (clients_before, _) = usage(std::process::id());
    let (delivered_before, bytes_before) = (
        tally.deliveries.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed),
    );
    tally.recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    produce(settings, rand::random(), load.rate, seconds).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tally.recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, _) = usage(pid);
    let (clients_after, _) = usage(std::process::id());
    drop(hog);
    let frames = metric(source, "storepulse_frames_total") - frames_before;
    let delivered = (tally.deliveries.load(Ordering::Relaxed) - delivered_before) as f64;
    let bytes = (tally.bytes.load(Ordering::Relaxed) - bytes_before) as f64;
    let (p50, p99, _) = tally.latency();
    let tally = std::sync::Arc::clone(&clients.tally);
    clients.close().await;
    let serving_cpu = (cpu_after - cpu_before) - if naive { 0.0 } else { ingest_cpu };
    Measured {
        deliveries_per_s: delivered / elapsed,
        ratio: delivered / (load.clients as f64 * frames.max(1.0)),
        cpu_us: serving_cpu.max(0.0) * 1e6 / delivered.max(1.0),
        bytes_per_client_s: bytes / load.clients as f64 / elapsed,
        p50: p50 as f64,
        p99: p99 as f64,
        spread_p99: tally.spread_p99() as f64,
        clients_cpu: (clients_after - clients_before) / elapsed,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn medians(runs: &[Measured]) -> Measured {
    let of = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    Measured {
        deliveries_per_s: of(|m| m.deliveries_per_s),
        ratio: of(|m| m.ratio),
        cpu_us: of(|m| m.cpu_us),
        bytes_per_client_s: of(|m| m.bytes_per_client_s),
        p50: of(|m| m.p50),
        p99: of(|m| m.p99),
        spread_p99: of(|m| m.spread_p99),
        clients_cpu: of(|m| m.clients_cpu),
    }
}

/// Reconnect storm with the server up: `n` clients on the stream while records flow at
/// `rate`; all drop at once and resume by their last id. Time until the server has opened
/// all `n` again, and until each client has an event.
async fn storm(
    address: &str,
    settings: &KafkaSettings,
    n: usize,
    rate: f64,
    contended: bool,
) -> (Option<Duration>, Duration) {
    let clients = Clients::connect(address, n, true, ClientMode::default()).await;
    let _hog = contended.then(|| CpuHog::start(40));
    let producing = {
        let settings = settings.clone();
        tokio::spawn(async move { produce(&settings, rand::random(), rate, 6).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let openings = || {
        metric(address, "storepulse_stream_openings_total{path=\"shared\"}")
            + metric(address, "storepulse_stream_openings_total{path=\"engine\"}")
    };
    let before = openings();
    // An older build (BENCH_SERVE_BIN) may not count openings: then only the clients tell.
    let counted = metric(address, "storepulse_subscribers") > 0.0 && before > 0.0;
    let started = Instant::now();
    clients.mark();
    clients.drop_all();
    let tally = std::sync::Arc::clone(&clients.tally);
    let mut opened = None;
    wait_for("the storm", Duration::from_secs(120), || {
        if counted && opened.is_none() && openings() >= before + n as f64 {
            opened = Some(started.elapsed());
        }
        (!counted || opened.is_some()) && tally.fresh.load(Ordering::Relaxed) >= n
    })
    .await;
    let all_live = started.elapsed();
    let _ = producing.await;
    clients.close().await;
    (opened, all_live)
}

/// A `serve` on fresh topics with two seconds of records, ready; with the naive baseline
/// fed by it if asked. Killed when dropped.
struct Server {
    serve: std::process::Child,
    address: String,
    settings: KafkaSettings,
    naive: Option<(std::process::Child, String)>,
}

impl Server {
    async fn start(with_naive: bool) -> Server {
        let (settings, suffix) = common::fresh_topics("bench-degrade").await;
        produce(&settings, 1, 200.0, 2).await;
        // Every client comes from one loopback address: no per-client caps.
        let environment = [
            ("STOREPULSE_MAX_SUBSCRIBERS", "20000"),
            ("STOREPULSE_LIMIT_STREAMS_PER_CLIENT", "0"),
            ("STOREPULSE_LIMIT_STREAMS_PER_PRINCIPAL", "0"),
            ("STOREPULSE_LIMIT_REQUESTS_PER_SECOND", "0"),
        ];
        let (serve, address) = common::spawn_serve(
            &settings.topics,
            &format!("bench-degrade-{suffix}"),
            &environment,
        );
        wait_for("readiness", Duration::from_secs(60), || {
            common::http_get(&address, "/readyz").0 == 200
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let naive = with_naive.then(|| spawn_naive(&address));
        Server {
            serve,
            address,
            settings,
            naive,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((naive, _)) = self.naive.as_mut() {
            let _ = naive.kill();
            let _ = naive.wait();
        }
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

/// How storepulse served, summed over the servers of the run.
#[derive(Default)]
struct Served {
    catch_ups: f64,
    spans: f64,
    lagged: f64,
    shared: f64,
    engine: f64,
}

impl Served {
    fn add(&mut self, address: &str) {
        self.catch_ups += metric(address, "storepulse_catch_ups_total");
        self.spans += metric(address, "storepulse_span_writes_total");
        self.lagged += metric(address, "storepulse_lagged_subscribers_total");
        self.shared += metric(address, "storepulse_stream_openings_total{path=\"shared\"}");
        self.engine += metric(address, "storepulse_stream_openings_total{path=\"engine\"}");
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("naive-server") => {
            common::load::naive_server(args.get(2).cloned().expect("source address")).await;
            return;
        }
        Some("hog") => {
            CpuHog::run(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10));
            return;
        }
        _ => {}
    }
    let runs = common::setting("BENCH_RUNS", 3) as usize;
    let seconds = common::setting("BENCH_SECONDS", 8);
    let quiet = |clients, rate| Load {
        clients,
        rate,
        contended: false,
        gzip: false,
    };
    let contended = |clients, rate| Load {
        contended: true,
        ..quiet(clients, rate)
    };
    let gzip = |clients, rate| Load {
        gzip: true,
        ..quiet(clients, rate)
    };
    let loads: Vec<(&str, Load, bool)> = vec![
        ("keeping up", quiet(2_000, 200.0), false),
        ("busy", quiet(1_000, 2_000.0), false),
        ("busy, contended", contended(1_000, 2_000.0), false),
        ("many", quiet(10_000, 200.0), false),
        ("many", quiet(10_000, 200.0), true),
        ("many, contended", contended(10_000, 200.0), false),
        ("many, contended", contended(10_000, 200.0), true),
        ("dashboards, plain", quiet(20, 2_000.0), false),
        ("dashboards, gzip", gzip(20, 2_000.0), false),
    ];
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "loads,storms".into());
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); loads.len()];
    let (mut rss_empty, mut rss_idle) = (Vec::new(), Vec::new());
    let mut served = Served::default();
    for round in 0..runs * usize::from(parts.contains("loads")) {
        eprintln!("round {} of {runs}", round + 1);
        let mut ingest = std::collections::HashMap::new();
        for (i, (_, load, on_naive)) in loads.iter().enumerate() {
            // Each measurement on a fresh server and fresh topics: the frames' size depends
            // on the state (lists grow as stock runs low), so every row starts equal.
            let server = Server::start(*on_naive).await;
            let pid = server.serve.id();
            rss_empty.push(usage(pid).1 as f64);
            let key = (load.rate as u64, load.contended);
            if let std::collections::hash_map::Entry::Vacant(entry) = ingest.entry(key) {
                let cpu = ingest_cpu(pid, &server.settings, load.rate, seconds, load.contended);
                entry.insert(cpu.await);
            }
            if load.clients == 10_000 && !on_naive && !load.contended {
                // RSS per idle client: 10 000 connected, before any record.
                let (_, before) = usage(pid);
                let idle =
                    Clients::connect(&server.address, load.clients, true, ClientMode::default())
                        .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                rss_idle.push((usage(pid).1 as f64 - before as f64) / load.clients as f64);
                idle.close().await;
            }
            let (server_pid, server_address) = match &server.naive {
                Some((naive, address)) => (naive.id(), address.as_str()),
                None => (pid, server.address.as_str()),
            };
            let measured = run(
                server_pid,
                server_address,
                &server.address,
                &server.settings,
                *load,
                seconds,
                ingest[&key],
            )
            .await;
            results[i].push(measured);
            served.add(&server.address);
        }
    }
    let mut storms = Vec::new();
    let storm_loads = [
        (1_000, false),
        (10_000, false),
        (1_000, true),
        (10_000, true),
    ];
    for (n, contended) in storm_loads.into_iter().filter(|_| parts.contains("storms")) {
        let (mut opened, mut live) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let server = Server::start(false).await;
            let (all_opened, all_live) =
                storm(&server.address, &server.settings, n, 200.0, contended).await;
            opened.extend(all_opened.map(|d| d.as_secs_f64() * 1e3));
            live.push(all_live.as_secs_f64() * 1e3);
            served.add(&server.address);
        }
        let opened = if opened.is_empty() {
            f64::NAN
        } else {
            median(opened)
        };
        storms.push((n, contended, opened, median(live)));
    }
    let rss_empty = median(rss_empty);
    let Served {
        catch_ups,
        spans,
        lagged,
        shared,
        engine,
    } = served;

    println!("## Graceful degradation: medians of {runs} runs, {seconds} s of records each");
    println!();
    println!(
        "| load | server | clients | records/s | deliveries/s | deliveries ÷ (clients × frames) | server CPU-µs per delivery (net of ingest) | bytes per client-s | p50 ms | p99 ms | p99 spread ms | load generator CPU |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((name, load, on_naive), runs) in loads.iter().zip(&results) {
        if runs.is_empty() {
            continue;
        }
        let m = medians(runs);
        println!(
            "| {name} | {} | {} | {} | {:.0} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} cores |",
            if *on_naive {
                "naive broadcast"
            } else {
                "storepulse"
            },
            load.clients,
            load.rate,
            m.deliveries_per_s,
            m.ratio,
            m.cpu_us,
            m.bytes_per_client_s,
            m.p50,
            m.p99,
            m.spread_p99,
            m.clients_cpu,
        );
    }
    println!();
    println!(
        "storepulse over the whole run: {catch_ups} catch-ups, {spans} span writes, {lagged} streams lagged their queue; openings {shared} shared, {engine} by the engine."
    );
    println!();
    println!(
        "## Reconnect storm, server up (200 records/s): every client drops at once and resumes by its Last-Event-ID"
    );
    println!();
    println!(
        "| clients | machine | server has opened all again (median ms) | all have an event again (median ms) |"
    );
    println!("|---:|---|---:|---:|");
    for (n, contended, opened, live) in storms {
        let opened = if opened.is_nan() {
            "—".to_owned()
        } else {
            format!("{opened:.0}")
        };
        println!(
            "| {n} | {} | {opened} | {live:.0} |",
            if contended { "contended" } else { "quiet" }
        );
    }
    println!();
    println!("## Memory");
    println!();
    println!("| serve RSS, no client | per idle client (10 000 connected) |");
    println!("|---:|---:|");
    println!(
        "| {:.1} MB | {:.1} KB |",
        rss_empty / 1e6,
        median(rss_idle) / 1024.0
    );
}
