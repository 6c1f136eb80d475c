//! The `storepulse` binary: logging, Ctrl-C, and the command line in [`storepulse::cli`].

use clap::Parser;

// mimalloc for Rust's allocations: faster than glibc malloc for the many small strings of
// decoded events, and a heap apart from librdkafka's (which frees fetched messages on its
// own threads), so the two do not contend for one allocator lock (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "storepulse=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = storepulse::cli::Cli::parse();
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
    storepulse::cli::run(cli, stop).await
}
