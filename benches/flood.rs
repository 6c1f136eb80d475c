//! Issue 13's flood: does `serve` stay responsive with 10 000 streams open? Against the
//! real local stack (`scripts/bench flood`): records are produced at `BENCH_RATE` (500/s)
//! the whole time, so frames fan out to every stream, and `/healthz`, `/readyz`,
//! `/metrics` and `/api/snapshot` are requested one after another (`BENCH_PROBES` times
//! each, 40) first with no stream open (the baseline, same run, same ingest load), then
//! with `BENCH_CLIENTS` (10 000) streams open from one address. Also: how long the
//! 10 000 take to open (each until its first event), and serve's RSS before they open,
//! while they are open, and 10 s after they have all closed. `BENCH_RUNS` (3) runs;
//! medians. Per-address limits are lifted (`[limits]` = 0): one bench process is every
//! client here.
//!
//! Prints Markdown for `docs/benchmarks.md`. Not a test: nothing here asserts a speed.

mod common;

use common::load::{ClientMode, Clients, usage};
use std::time::{Duration, Instant};

const ENDPOINTS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/api/snapshot"];

/// Latencies (µs) of `probes` sequential requests to each endpoint, interleaved.
fn probe(address: &str, probes: usize) -> Vec<Vec<i64>> {
    let mut latencies = vec![Vec::with_capacity(probes); ENDPOINTS.len()];
    for _ in 0..probes {
        for (i, path) in ENDPOINTS.iter().enumerate() {
            let started = Instant::now();
            let (status, _) = common::http_get(address, path);
            let micros = started.elapsed().as_micros() as i64;
            // A failed request counts as the time it took (never dropped as an outlier).
            let _ = status;
            latencies[i].push(micros);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for l in &mut latencies {
        l.sort_unstable();
    }
    latencies
}

struct Run {
    quiet: Vec<(i64, i64)>,
    loaded: Vec<(i64, i64, i64)>,
    open_s: f64,
    rss_before: u64,
    rss_during: u64,
    rss_after: u64,
}

fn subscribers(address: &str) -> i64 {
    let (_, body) = common::http_get(address, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("storepulse_subscribers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

async fn one_run(run: u64, clients: usize, rate: f64, probes: usize) -> Run {
    let (settings, suffix) = common::fresh_topics("bench-flood").await;
    let max = (clients + 1_000).to_string();
    let (mut serve, address) = common::spawn_serve(
        &settings.topics,
        &format!("bench-flood-{suffix}"),
        &[
            ("STOREPULSE_MAX_SUBSCRIBERS", max.as_str()),
            ("STOREPULSE_LIMIT_STREAMS_PER_CLIENT", "0"),
            ("STOREPULSE_LIMIT_STREAMS_PER_PRINCIPAL", "0"),
            ("STOREPULSE_LIMIT_REQUESTS_PER_SECOND", "0"),
        ],
    );
    let pid = serve.id();
    // Records for the whole run, from the start.
    let producing = {
        let settings = settings.clone();
        tokio::spawn(async move { common::load::produce(&settings, run + 1, rate, 100_000).await })
    };
    common::load::wait_for("serve ready", Duration::from_secs(60), || {
        common::http_get(&address, "/readyz").0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = {
        let address = address.clone();
        tokio::task::spawn_blocking(move || probe(&address, probes))
            .await
            .expect("probe")
    };
    let rss_before = usage(pid).1;
    let started = Instant::now();
    let streams = Clients::connect(&address, clients, true, ClientMode::default()).await;
    let open_s = started.elapsed().as_secs_f64();
    let loaded = {
        let address = address.clone();
        tokio::task::spawn_blocking(move || probe(&address, probes))
            .await
            .expect("probe")
    };
    let rss_during = usage(pid).1;
    streams.close().await;
    common::load::wait_for("every stream closed", Duration::from_secs(120), || {
        subscribers(&address) == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_after = usage(pid).1;
    producing.abort();
    let _ = serve.kill();
    let _ = serve.wait();
    let pct = |l: &Vec<i64>, p| common::percentile(l, p);
    Run {
        quiet: quiet.iter().map(|l| (pct(l, 0.5), pct(l, 0.99))).collect(),
        loaded: loaded
            .iter()
            .map(|l| (pct(l, 0.5), pct(l, 0.99), *l.last().unwrap_or(&-1)))
            .collect(),
        open_s,
        rss_before,
        rss_during,
        rss_after,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let clients = common::setting("BENCH_CLIENTS", 10_000) as usize;
    let rate = common::setting("BENCH_RATE", 500) as f64;
    let probes = common::setting("BENCH_PROBES", 40) as usize;
    let runs = common::setting("BENCH_RUNS", 3);
    let mut all = Vec::new();
    for run in 0..runs {
        eprintln!("[flood] run {} of {runs}", run + 1);
        all.push(one_run(run, clients, rate, probes).await);
    }
    let ms = |us: f64| us / 1000.0;
    println!(
        "{clients} streams from one address, {rate} records/s produced throughout, {probes} sequential requests per endpoint per phase, median of {runs} runs:\n"
    );
    println!(
        "| endpoint | p50, no stream (ms) | p99, no stream (ms) | p50, {clients} streams (ms) | p99, {clients} streams (ms) | max, {clients} streams (ms) | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, path) in ENDPOINTS.iter().enumerate() {
        let q50 = median(all.iter().map(|r| r.quiet[i].0 as f64).collect());
        let q99 = median(all.iter().map(|r| r.quiet[i].1 as f64).collect());
        let l50 = median(all.iter().map(|r| r.loaded[i].0 as f64).collect());
        let l99 = median(all.iter().map(|r| r.loaded[i].1 as f64).collect());
        let lmax = median(all.iter().map(|r| r.loaded[i].2 as f64).collect());
        println!(
            "| `{path}` | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}× |",
            ms(q50),
            ms(q99),
            ms(l50),
            ms(l99),
            ms(lmax),
            l99 / q99.max(1.0)
        );
    }
    let mb = |f: fn(&Run) -> u64| median(all.iter().map(|r| f(r) as f64 / 1e6).collect());
    println!(
        "\nOpening the {clients} streams (each until its first event): {:.1} s. serve's RSS: {:.0} MB before, {:.0} MB with them open, {:.0} MB 10 s after they all closed.",
        median(all.iter().map(|r| r.open_s).collect()),
        mb(|r| r.rss_before),
        mb(|r| r.rss_during),
        mb(|r| r.rss_after)
    );
}
