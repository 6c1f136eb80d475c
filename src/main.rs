//! The `storepulse` binary: logging, Ctrl-C, and the command line in [`storepulse::cli`].

use clap::Parser;

// mimalloc for Rust's allocations: faster than glibc malloc for the many small strings of
// decoded events, and a heap apart from librdkafka's (which frees fetched messages on its
// own threads), so the two do not contend for one allocator lock (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_freed_memory)
        .build()?
        .block_on(run())
}

/// Called as a runtime worker goes idle: at most every 2 s per worker, mimalloc collects the
/// worker's heap (not forced: the frees other threads handed it and its empty pages), so
/// the memory of closed connections goes back to the OS instead of staying with a heap that
/// allocates little more: after 10 000 streams closed, RSS 100 MB instead of 335 MB. A
/// forced collection cost the health probes ~40× their median under 10 000 streams
/// (docs/benchmarks.md, the 10 000-stream flood).
#[allow(unsafe_code)] // the one FFI call of the project: mimalloc has no safe wrapper for it
fn collect_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(2));
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: mi_collect takes no pointer; it walks and frees this thread's own heap.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

async fn run() -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cli = storepulse::cli::Cli::parse();
    let (telemetry, traces) = storepulse::telemetry::Telemetry::from_env(cli.service_name());
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // STOREPULSE_LOG_FORMAT=json: one JSON object a line, with the current spans' fields.
    let lines = if std::env::var("STOREPULSE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        lines.json().boxed()
    } else {
        lines.boxed()
    };
    // RUST_LOG filters the log lines only: spans are exported whatever the log level, and
    // our spans (only sampled records have any) reach the log layer too, so a line logged
    // inside one carries its fields: `trace_id` and `span_id` (JSON: under "span").
    use tracing_subscriber::filter::FilterExt;
    let env_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "storepulse=info,warn".into());
    // The most verbose level any line may have. Libraries that log through the `log` crate
    // (rdkafka's trace and debug calls on every poll) are cut by it at their call sites;
    // with the filters per layer the subscriber gives no level hint, and every such call
    // reached the filter (~3 % of an aggregator's CPU in a catch-up profile).
    let most_verbose = env_filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let log_filter = env_filter.or(tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("storepulse")
    }));
    let span_filter =
        tracing_subscriber::filter::Targets::new().with_target("storepulse", tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(traces.map(|layer| layer.with_filter(span_filter)))
        .with(lines.with_filter(log_filter))
        .init();
    log::set_max_level(match most_verbose.into_level() {
        None => log::LevelFilter::Off,
        Some(tracing::Level::ERROR) => log::LevelFilter::Error,
        Some(tracing::Level::WARN) => log::LevelFilter::Warn,
        Some(tracing::Level::INFO) => log::LevelFilter::Info,
        Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
        Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
    });
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    // SIGINT (Ctrl-C) or SIGTERM: finish cleanly; a second signal aborts.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        for attempt in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            if attempt == 1 {
                std::process::exit(130);
            }
            eprintln!("[storepulse] stopping: finishing cleanly (signal again to abort)");
            on_signal.cancel();
        }
    });
    let result = storepulse::cli::run(cli, stop).await;
    // After the final checkpoint: export what is buffered.
    tokio::task::block_in_place(|| telemetry.shutdown());
    result
}
