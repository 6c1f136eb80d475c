//! The benches' load generator: many SSE clients as tokio tasks of the bench process (the
//! server is always another process, so its CPU and RSS from `/proc` are its own), the
//! records they watch, and a CPU hog for contended runs.
//!
//! A client finds `as_of_ms` by text (no JSON parse: ten thousand of them share the bench's
//! cores), reconnects with its last id, optionally asks for gzip and decodes it, and can be
//! told to drop its connection (a reconnect storm with the server up).

use super::{as_of_ms, now_ms, percentile};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storepulse::kafka::KafkaSettings;
use storepulse::live::client::{SseParser, SseRef};
use storepulse::simulate::scenario::ScenarioConfig;
use storepulse::simulate::{self, SimulateOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What a group of clients saw.
#[derive(Default)]
pub struct Tally {
    /// Delta events received.
    pub deliveries: AtomicU64,
    /// Bytes read from the sockets (as on the wire: compressed when gzip).
    pub bytes: AtomicU64,
    /// Connections open.
    pub connected: AtomicUsize,
    /// Clients that received an event (not `progress`) since the mark was moved.
    pub fresh: AtomicUsize,
    /// Latencies (ms, now − the delta's `as_of_ms`) while recording.
    pub latencies: Mutex<Vec<i64>>,
    /// Per delta id (hashed), the first and last time a client received it, while recording.
    pub arrivals: Mutex<std::collections::HashMap<u64, (i64, i64)>>,
    /// Record latencies and arrivals.
    pub recording: AtomicBool,
}

impl Tally {
    /// p50, p99 and p99.9 latency, ms.
    pub fn latency(&self) -> (i64, i64, i64) {
        let mut all = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        all.sort_unstable();
        (
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&all, 0.999),
        )
    }

    /// p99 of the fan-out spread (first client → last client, ms) over the recorded frames.
    pub fn spread_p99(&self) -> i64 {
        let mut spreads: Vec<i64> = self
            .arrivals
            .lock()
            .map(|a| a.values().map(|(first, last)| last - first).collect())
            .unwrap_or_default();
        spreads.sort_unstable();
        percentile(&spreads, 0.99)
    }
}

/// How the clients of a group behave.
#[derive(Clone, Copy, Default)]
pub struct ClientMode {
    /// `Accept-Encoding: gzip`.
    pub gzip: bool,
}

/// One group's shared controls.
struct Shared {
    tally: Arc<Tally>,
    /// Moved to count who has an event after it.
    mark: AtomicI64,
    /// Bumped to make every client drop its connection once and resume by its last id.
    drop: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
    mode: ClientMode,
}

async fn sse_client(address: String, shared: Arc<Shared>) {
    let mut last_id: Option<String> = None;
    let mut my_mark = i64::MIN;
    let mut drops = shared.drop.subscribe();
    let mut arrivals: Vec<(u64, i64)> = Vec::new();
    while !shared.stop.is_cancelled() {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut request = format!("GET /api/stream HTTP/1.0\r\nHost: {address}\r\n");
        if let Some(id) = &last_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        if shared.mode.gzip {
            request.push_str("Accept-Encoding: gzip\r\n");
        }
        request.push_str("\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        let tally = &shared.tally;
        tally.connected.fetch_add(1, Ordering::Relaxed);
        let mut parser = SseParser::new();
        let mut decoder: Option<flate2::write::GzDecoder<Vec<u8>>> = None;
        let mut chunk = vec![0u8; 16 * 1024];
        let mut header: Option<Vec<u8>> = Some(Vec::new());
        let mut on_event =
            |event: SseRef<'_>, my_mark: &mut i64, arrivals: &mut Vec<(u64, i64)>| {
                if event.event == "progress" {
                    return;
                }
                // The naive baseline's events have no id.
                let id = event.id.unwrap_or_default();
                if event.id.is_some() {
                    last_id = Some(id.to_owned());
                }
                let mark = shared.mark.load(Ordering::Relaxed);
                if mark != *my_mark {
                    *my_mark = mark;
                    tally.fresh.fetch_add(1, Ordering::Relaxed);
                }
                if event.event == "delta" {
                    tally.deliveries.fetch_add(1, Ordering::Relaxed);
                    if tally.recording.load(Ordering::Relaxed) {
                        let now = now_ms();
                        let mut hasher = std::collections::hash_map::DefaultHasher::new();
                        id.hash(&mut hasher);
                        arrivals.push((hasher.finish(), now));
                        if let Some(as_of) = as_of_ms(event.data)
                            && let Ok(mut all) = tally.latencies.lock()
                        {
                            all.push(now - as_of);
                        }
                    }
                }
            };
        loop {
            let read = tokio::select! {
                read = stream.read(&mut chunk) => read.unwrap_or(0),
                () = shared.stop.cancelled() => 0,
                _ = drops.changed() => 0, // drop the connection, resume by the last id
            };
            if read == 0 {
                break;
            }
            tally.bytes.fetch_add(read as u64, Ordering::Relaxed);
            let mut body = chunk[..read].to_vec();
            if let Some(bytes) = header.as_mut() {
                bytes.extend_from_slice(&body);
                let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                if head.contains("content-encoding: gzip") {
                    decoder = Some(flate2::write::GzDecoder::new(Vec::new()));
                }
                body = bytes.split_off(end + 4);
                header = None;
            }
            if let Some(decoder) = decoder.as_mut() {
                use std::io::Write;
                if decoder
                    .write_all(&body)
                    .and_then(|()| decoder.flush())
                    .is_err()
                {
                    break;
                }
                body = std::mem::take(decoder.get_mut());
            }
            parser.push(&body, |event| on_event(event, &mut my_mark, &mut arrivals));
        }
        tally.connected.fetch_sub(1, Ordering::Relaxed);
    }
    if let Ok(mut all) = shared.tally.arrivals.lock() {
        for (id, at) in arrivals {
            let entry = all.entry(id).or_insert((at, at));
            entry.0 = entry.0.min(at);
            entry.1 = entry.1.max(at);
        }
    }
}

/// Waits (polling every 20 ms) until `done`, at most `limit`; returns how long it took.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// One group of clients against `address`.
pub struct Clients {
    /// What they saw.
    pub tally: Arc<Tally>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// `n` clients; waits until all are connected and, with `first_event`, until each has
    /// had an event (the naive baseline sends nothing before its first delta).
    pub async fn connect(address: &str, n: usize, first_event: bool, mode: ClientMode) -> Clients {
        let shared = Arc::new(Shared {
            tally: Arc::new(Tally::default()),
            mark: AtomicI64::new(0),
            drop: tokio::sync::watch::channel(0).0,
            stop: CancellationToken::new(),
            mode,
        });
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tasks.push(tokio::spawn(sse_client(
                address.to_owned(),
                Arc::clone(&shared),
            )));
            if i % 500 == 499 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let tally = Arc::clone(&shared.tally);
        wait_for("clients", Duration::from_secs(180), || {
            tally.connected.load(Ordering::Relaxed) >= n
                && (!first_event || tally.fresh.load(Ordering::Relaxed) >= n)
        })
        .await;
        Clients {
            tally: Arc::clone(&shared.tally),
            shared,
            tasks,
        }
    }

    /// From now on, count the clients that receive an event (not `progress`).
    pub fn mark(&self) {
        self.shared.mark.fetch_add(1, Ordering::Relaxed);
        self.tally.fresh.store(0, Ordering::Relaxed);
    }

    /// Every client drops its connection and reconnects with its last id.
    pub fn drop_all(&self) {
        self.shared.drop.send_modify(|n| *n += 1);
    }

    /// Stops every client and merges what they recorded.
    pub async fn close(self) {
        self.shared.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A process's CPU seconds (utime + stime) and RSS bytes, from `/proc`.
pub fn usage(pid: u32) -> (f64, u64) {
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

/// Produces `rate` records/s for `seconds` (3 stores × 40 SKUs, events dated now); returns
/// the records acknowledged.
pub async fn produce(settings: &KafkaSettings, seed: u64, rate: f64, seconds: u64) -> u64 {
    simulate::run(
        settings,
        SimulateOptions {
            scenario: ScenarioConfig {
                popularity: Default::default(),
                seed,
                start_ms: now_ms(),
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
            junk_per_mille: 0,
            key_by_store: false,
            registry: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("produced")
    .acked
}

/// A busy loop on one core for at most `seconds`, in a process of its own (this bench
/// binary re-executed with `hog`): the contended runs' competitor for the two cores.
pub struct CpuHog(std::process::Child);

impl CpuHog {
    /// Starts the hog.
    pub fn start(seconds: u64) -> CpuHog {
        CpuHog(
            std::process::Command::new(std::env::current_exe().expect("self"))
                .args(["hog", &seconds.to_string()])
                .spawn()
                .expect("the CPU hog starts"),
        )
    }

    /// The hog's body: spins until `seconds` have passed.
    pub fn run(seconds: u64) {
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut x: u64 = 1;
        while Instant::now() < until {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The naive baseline: one storepulse stream in, every delta re-serialised for every client.
pub async fn naive_server(source: String) {
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

/// Starts the naive baseline (this bench binary re-executed with `naive-server`) fed by the
/// storepulse stream at `source`; returns the process and its address.
pub fn spawn_naive(source: &str) -> (std::process::Child, String) {
    let mut naive = std::process::Command::new(std::env::current_exe().expect("self"))
        .args(["naive-server", source])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("naive server starts");
    let address = {
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
    (naive, address)
}
