//! The live stream against the real stack: a client that applies the snapshot and the
//! deltas ends equal to `/api/snapshot`; it resumes by `Last-Event-ID` without a gap or a
//! duplicate (rule 2), gets a snapshot when the log has moved past its id (rule 3), and a
//! `resync` snapshot for ids it sent that mean nothing here (rule 5); slow and stalled
//! clients do not hold anyone back and catch up by shared spans; a thousand clients (half
//! of them gzip) come through a reconnect storm and a restart exact.

use crate::helpers::{self, Server, database_url, fresh_topics, position_total};
use crate::sse::{Sse, SseClient, check_and_apply};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storepulse::kafka::{self, KafkaSettings};
use storepulse::live::client::SseParser;
use storepulse::simulate::scenario::ScenarioConfig;
use storepulse::simulate::{self, SimulateOptions};
use tokio_util::sync::CancellationToken;

async fn produce(
    settings: &KafkaSettings,
    seed: u64,
    start_ms: i64,
    count: u64,
    rate: Option<f64>,
) -> i64 {
    simulate::run(
        settings,
        SimulateOptions {
            scenario: ScenarioConfig {
                popularity: Default::default(),
                seed,
                start_ms,
                events_per_second: 500.0,
                stores: 2,
                skus_per_store: 12,
                flash_sale: None,
            },
            rate,
            count: Some(count),
            duration: None,
            partitions: 2,
            create_topics: true,
            message_timeout: Duration::from_secs(30),
            progress_every: None,
            junk_per_mille: 0,
            key_by_store: false,
            registry: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("delivered")
    .acked as i64
}

const START: i64 = 1_795_788_000_000;

/// Fresh topics holding `count` simulated records, and a server that has applied them all.
async fn caught_up_server(
    name: &str,
    seed: u64,
    count: u64,
    environment: &'static [(&'static str, &'static str)],
) -> (KafkaSettings, Server, i64) {
    let settings = fresh_topics(name);
    kafka::ensure_topics(
        &settings,
        &settings.topics.all(),
        2,
        Duration::from_secs(15),
    )
    .await
    .expect("topics");
    let first = produce(&settings, seed, START, count, None).await;
    let topics = settings.topics.clone();
    let group = helpers::unique(name);
    let server = tokio::task::spawn_blocking(move || {
        let server = Server::start_with(&topics, &group, &database_url(), environment);
        server.snapshot_at(first, Duration::from_secs(60));
        server
    })
    .await
    .expect("thread");
    (settings, server, first)
}

/// Reads until an event whose position covers `total` records; returns the events.
fn read_until(client: &mut SseClient, total: i64) -> Vec<Sse> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "stream did not reach {total} records"
        );
        let event = client.next();
        let reached = event.event != "progress"
            && position_total(&serde_json::json!({ "position": event.id })) >= total;
        events.push(event);
        if reached {
            return events;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_applying_the_stream_ends_equal_to_the_snapshot_and_resumes_without_gaps() {
    let (settings, server, first) = caught_up_server("stream", 1, 1_000, &[]).await;
    let address = server.address.clone();

    // A client connects; more records arrive while it reads.
    let mut client = SseClient::connect(&address, "/api/stream", None);
    let opening = client.next();
    assert_eq!(opening.event, "snapshot");
    let producing = {
        let settings = settings.clone();
        tokio::spawn(async move {
            produce(&settings, 2, START + 10 * 60_000, 1_500, Some(1_500.0)).await
        })
    };
    let mut view = Some(serde_json::from_str::<Value>(&opening.data).expect("json"));
    // Part of the way, the client drops; it resumes with the id of the last frame it saw.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = tokio::task::block_in_place(|| client.next());
        if event.event == "delta" {
            seen.push(event);
        }
    }
    check_and_apply(&mut view, &seen);
    let last_id = seen.last().and_then(|e| e.id.clone()).expect("an id");
    drop(client);
    let second = producing.await.expect("producer");
    let total = first + second;
    let events = tokio::task::block_in_place(|| {
        let mut resumed = SseClient::connect(&address, "/api/stream", Some(last_id.as_bytes()));
        read_until(&mut resumed, total)
    });
    assert_eq!(
        events[0].event, "delta",
        "rule 2: the frames after the id, no snapshot"
    );
    check_and_apply(&mut view, &events);
    let (_, body) = server.get("/api/snapshot");
    let snapshot: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(position_total(&snapshot), total);
    assert_eq!(
        view.expect("a view"),
        snapshot,
        "snapshot + deltas = the snapshot"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_that_mean_nothing_here_get_a_resync_and_a_moved_log_a_snapshot() {
    let (_settings, server, first) = caught_up_server("stream-ids", 3, 500, &[]).await;
    let address = server.address.clone();
    let snapshot = server.snapshot_at(first, Duration::from_secs(60));
    let position = snapshot["position"].as_str().expect("position").to_owned();
    let (tag, offsets) = position.split_once(':').expect("tagged");
    let negative = format!("{tag}:{}", offsets.replace(',', ",-"));
    let huge = "9".repeat(10_000);
    let hostile: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        b"deadbeef:1,2,3".to_vec(),
        negative.into_bytes(),
        huge.into_bytes(),
        vec![0xff, 0xfe, b':', b'1'],
    ];
    tokio::task::block_in_place(|| {
        for id in &hostile {
            let mut client = SseClient::connect(&address, "/api/stream", Some(id));
            let first = client.next();
            assert_eq!(
                first.event,
                "resync",
                "id {:?}",
                String::from_utf8_lossy(&id[..id.len().min(40)])
            );
            assert_eq!(first.id.as_deref(), Some(position.as_str()));
        }
        // Past the header limit (16 KiB in all): a 431 with a JSON reason, not a resync;
        // past what one connection buffers (32 KiB), hyper's own 431, and the connection
        // closes.
        for (length, json) in [(20_000, true), (100_000, false)] {
            use std::io::{Read, Write};
            let mut raw = std::net::TcpStream::connect(&address).expect("connects");
            let _ = write!(
                raw,
                "GET /api/stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\nLast-Event-ID: {}\r\n\r\n",
                "9".repeat(length)
            );
            let mut answer = String::new();
            let _ = raw.read_to_string(&mut answer);
            assert!(
                answer.starts_with("HTTP/1.1 431"),
                "{length}: {}",
                &answer[..answer.len().min(200)]
            );
            assert_eq!(answer.contains("{\"error\":"), json, "{answer}");
        }
        // `?since=` works like the header; a store-scoped stream carries that store only.
        // A valid id of this layout, behind, that is no frame's id: a snapshot (rule 3).
        let mut numbers: Vec<i64> = offsets
            .split(',')
            .map(|o| o.parse().expect("offset"))
            .collect();
        let largest = (0..numbers.len())
            .max_by_key(|i| numbers[*i])
            .expect("partitions");
        numbers[largest] -= 1;
        let behind = format!(
            "{tag}:{}",
            numbers
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut scoped = SseClient::connect(
            &address,
            &format!("/api/stream?store=store-berlin&since={behind}"),
            None,
        );
        let first = scoped.next();
        assert_eq!(
            first.event, "snapshot",
            "rule 3: not a frame id here, so a snapshot"
        );
        let data: Value = serde_json::from_str(&first.data).expect("json");
        assert_eq!(data["stores"].as_object().map(|s| s.len()), Some(1));
        assert!(data["stores"]["store-berlin"].is_object());
    });
    assert_eq!(server.get("/api/stream?store=store-atlantis").0, 404);
    assert_eq!(server.get("/api/stream?shop=1").0, 400);
}

/// Reads a whole stream until `total` records, applying it; returns the view and last id.
fn follow(address: &str, since: Option<&str>, total: i64) -> (Vec<Sse>, Value) {
    let mut client = SseClient::connect(address, "/api/stream", since.map(str::as_bytes));
    let events = read_until(&mut client, total);
    let mut view = None;
    check_and_apply(&mut view, &events);
    (events, view.expect("a snapshot came first"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_ahead_of_a_restarted_process_waits_and_never_steps_back_and_may_resume_on_a_replica()
 {
    let settings = fresh_topics("stream-ahead");
    kafka::ensure_topics(
        &settings,
        &settings.topics.all(),
        2,
        Duration::from_secs(15),
    )
    .await
    .expect("topics");
    let total = produce(&settings, 5, START, 20_000, None).await;
    let group = helpers::unique("ahead");
    let topics = settings.topics.clone();
    tokio::task::spawn_blocking(move || {
        // No checkpoint is written before the kill: the restart begins at offset 0, far
        // behind what the client has shown. Heartbeats every second end a quiet wait.
        let environment = [
            ("STOREPULSE_CHECKPOINT_INTERVAL", "1h"),
            ("STOREPULSE_HEARTBEAT", "1s"),
        ];
        let server = Server::start_with(&topics, &group, &database_url(), &environment);
        server.snapshot_at(total, Duration::from_secs(60));
        let (_, shown) = follow(&server.address, None, total);
        let last_id = shown["position"].as_str().expect("position").to_owned();
        server.kill();

        // Rule 4: the restarted process is behind the client's id; it waits until it has
        // caught up and then sends a snapshot (or, if it caught up first and the id is its
        // newest frame, nothing to replay). Never a resync, never older numbers.
        for (name, server) in [
            (
                "restarted",
                Server::start_with(&topics, &group, &database_url(), &environment),
            ),
            (
                "replica",
                Server::start_with(
                    &topics,
                    &helpers::unique("replica"),
                    &database_url(),
                    &environment,
                ),
            ),
        ] {
            let mut client =
                SseClient::connect(&server.address, "/api/stream", Some(last_id.as_bytes()));
            let first = client.next();
            match first.event.as_str() {
                "snapshot" => {
                    let after: Value = serde_json::from_str(&first.data).expect("json");
                    assert!(
                        position_total(&after) >= total,
                        "{name}: never older than shown"
                    );
                    assert_eq!(after, shown.clone(), "{name}");
                }
                "progress" => {} // already exactly where the client is: nothing to send
                other => panic!("{name}: expected a snapshot, got {other}"),
            }
            let (_, view) = follow(&server.address, None, total);
            assert_eq!(view, shown.clone(), "{name} agrees");
        }
    })
    .await
    .expect("thread");
}

/// Room for about 16 KB in the kernel on each side, so a client that stops reading blocks
/// the server's writes after a few frames rather than after megabytes.
const SMALL_BUFFERS: [(&str, &str); 2] = [
    ("STOREPULSE_FRAME_INTERVAL", "2ms"),
    ("STOREPULSE_SOCKET_SEND_BUFFER", "8192"),
];
const SMALL_RECEIVE_BUFFER: Option<usize> = Some(8192);

fn counter(server: &Server, name: &str) -> i64 {
    server.metric(name)
}

/// A client whose kernel buffers little and that will read nothing for a while, and one
/// that reads along.
fn idle_and_reading_clients(address: &str) -> (SseClient, SseClient) {
    tokio::task::block_in_place(|| {
        (
            SseClient::connect_with(address, "/api/stream", None, SMALL_RECEIVE_BUFFER),
            SseClient::connect(address, "/api/stream", None),
        )
    })
}

/// Every client's events, checked and applied from its snapshot, end at `/api/snapshot`.
fn assert_each_ends_at_the_snapshot(server: &Server, clients: &[&[Sse]]) {
    let (_, body) = server.get("/api/snapshot");
    let snapshot: Value = serde_json::from_str(&body).expect("json");
    for (i, events) in clients.iter().enumerate() {
        let mut view = None;
        check_and_apply(&mut view, events);
        assert_eq!(
            view.expect("a snapshot came first"),
            snapshot.clone(),
            "client {i}"
        );
    }
}

/// Produces rounds of 5 000 records while `fast` reads along, until `happened` is true of the
/// server (at most 12 rounds: how many frames a round makes depends on how busy the machine
/// is, since a starved engine folds more records into each frame); returns the reader's
/// events and the total.
async fn produce_while_reading_until(
    settings: &KafkaSettings,
    server: &Server,
    fast: SseClient,
    first: i64,
    happened: impl Fn(&Server) -> bool,
) -> (Vec<Sse>, i64) {
    const ROUND: u64 = 5_000;
    let mut total = first;
    let mut fast = fast;
    let mut fast_events = Vec::new();
    for round in 0..12 {
        let target = total + ROUND as i64;
        let fast_reader = tokio::task::spawn_blocking(move || {
            let events = read_until(&mut fast, target);
            (fast, events)
        });
        let start = START + 60_000 + round * 20_000;
        let more = produce(settings, 8 + round as u64, start, ROUND, Some(6_000.0)).await;
        assert_eq!(total + more, target);
        let (reader, events) = fast_reader.await.expect("reader");
        fast = reader;
        fast_events.extend(events);
        total = target;
        if happened(server) {
            break;
        }
    }
    assert_eq!(
        fast_events.iter().filter(|e| e.event == "snapshot").count(),
        1,
        "the reading client never needed another snapshot"
    );
    (fast_events, total)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_falls_behind_the_queue_catches_up_with_shared_spans_not_a_backlog() {
    let environment: &'static [(&str, &str)] = &[
        SMALL_BUFFERS[0],
        SMALL_BUFFERS[1],
        ("STOREPULSE_QUEUE_FRAMES", "32"),
        ("STOREPULSE_STALL_TIMEOUT", "0s"),
        // The idle client's last frame must still be in the log when it reads again: the
        // rounds made 1 517 frames of ~11 KB in a run here (how many records each frame
        // holds depends on the machine's speed), more than the default 16 MiB holds.
        ("STOREPULSE_LOG_MAX_BYTES", "268435456"),
    ];
    let (settings, server, first) = caught_up_server("stream-slow", 7, 200, environment).await;
    let address = server.address.clone();
    let (mut slow, fast) = idle_and_reading_clients(&address);
    // Frames while the slow client reads nothing and the other reads along, until the slow
    // one's socket fills and its queue of 32 frames overflows.
    let (fast_events, total) = produce_while_reading_until(&settings, &server, fast, first, |s| {
        counter(s, "storepulse_lagged_subscribers_total") >= 1
    })
    .await;
    let slow_events = tokio::task::block_in_place(|| read_until(&mut slow, total));
    assert!(
        counter(&server, "storepulse_lagged_subscribers_total") >= 1,
        "the idle client fell behind the frames"
    );
    // The frames it missed are still in the log: shared spans of them from its last frame
    // (rule 2), no second snapshot, far fewer events than the reader got.
    assert!(
        counter(&server, "storepulse_span_writes_total") >= 1,
        "it caught up by spans"
    );
    assert!(
        slow_events
            .iter()
            .skip(1)
            .all(|e| e.event == "delta" || e.event == "progress"),
        "a lagged client whose frames are in the log needs no snapshot"
    );
    let deltas = |events: &[Sse]| events.iter().filter(|e| e.event == "delta").count();
    assert!(
        deltas(&slow_events) < deltas(&fast_events),
        "spans: {} deltas for the lagged client, {} for the reader",
        deltas(&slow_events),
        deltas(&fast_events)
    );
    assert_eq!(
        counter(&server, "storepulse_disconnects_total{reason=\"stalled\"}"),
        0
    );
    assert_each_ends_at_the_snapshot(&server, &[&fast_events, &slow_events]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_nothing_is_disconnected_and_resumes_exactly_by_its_last_id() {
    let environment: &'static [(&str, &str)] = &[
        SMALL_BUFFERS[0],
        SMALL_BUFFERS[1],
        ("STOREPULSE_STALL_TIMEOUT", "1s"),
    ];
    let (settings, server, first) = caught_up_server("stream-stall", 9, 200, environment).await;
    let address = server.address.clone();
    let (mut stalled, fast) = idle_and_reading_clients(&address);
    // Frames until the stalled client, taking nothing, has had a blocked socket for a
    // second and the server closes it.
    let (fast_events, total) = produce_while_reading_until(&settings, &server, fast, first, |s| {
        counter(s, "storepulse_disconnects_total{reason=\"stalled\"}") >= 1
    })
    .await;
    assert!(
        counter(&server, "storepulse_disconnects_total{reason=\"stalled\"}") >= 1,
        "the client that read nothing was disconnected"
    );
    // It reads what its socket held, finds the end, and reconnects with its last id, as an
    // EventSource does: the frames after it (rule 2), no snapshot, and ends exact.
    let mut events = Vec::new();
    tokio::task::block_in_place(|| {
        while let Some(event) = stalled.try_next() {
            events.push(event);
        }
    });
    let last_id = events
        .iter()
        .rev()
        .find_map(|e| e.id.clone())
        .expect("the opening snapshot had an id");
    let resumed = tokio::task::block_in_place(|| {
        let mut client = SseClient::connect(&address, "/api/stream", Some(last_id.as_bytes()));
        read_until(&mut client, total)
    });
    assert!(
        resumed
            .iter()
            .all(|e| e.event != "snapshot" && e.event != "resync"),
        "resumed from the frame log, without a snapshot"
    );
    events.extend(resumed);
    assert_each_ends_at_the_snapshot(&server, &[&fast_events, &events]);
}

/// How one of many clients behaves.
#[derive(Clone, Default)]
struct ManyOptions {
    /// Ask for `Accept-Encoding: gzip` and decode the stream.
    gzip: bool,
    /// When cancelled, the client drops its connection once and reconnects at once with its
    /// last id (a reconnect storm while the server stays up).
    drop: Option<CancellationToken>,
    /// Counts the clients that have received a `delta` (so their last id is a frame's).
    framed: Option<Arc<AtomicI64>>,
}

/// One of many concurrent clients: an EventSource in miniature over tokio, which reconnects
/// with its last id whenever the stream ends or the server is down. It keeps the events it
/// saw, interned in `seen` so that a thousand clients hold each shared frame once.
async fn many_client(
    address: String,
    total: Arc<AtomicI64>,
    seen: Arc<Mutex<HashSet<Arc<Sse>>>>,
    options: ManyOptions,
) -> Vec<Arc<Sse>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut events: Vec<Arc<Sse>> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut dropped = false;
    let never = CancellationToken::new();
    let drop = options.drop.clone().unwrap_or_else(|| never.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut framed = false;
    'connect: loop {
        assert!(Instant::now() < deadline, "a client never reached the end");
        let Ok(stream) = tokio::net::TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut reader = tokio::io::BufReader::new(stream);
        let mut request = format!("GET /api/stream HTTP/1.0\r\nHost: {address}\r\n");
        if let Some(id) = &last_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        if options.gzip {
            request.push_str("Accept-Encoding: gzip\r\n");
        }
        request.push_str("\r\n");
        if reader
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 || !line.contains(" 200 ") {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut gzip = false;
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(n) if n > 0 && line != "\r\n" => {
                    gzip |= line.eq_ignore_ascii_case("content-encoding: gzip\r\n");
                }
                Ok(n) if n > 0 => break,
                _ => continue 'connect,
            }
        }
        assert_eq!(gzip, options.gzip, "gzip exactly when asked for");
        // Headers were read line by line above; the body (first what the reader holds
        // buffered) goes through the shared parser, after the gzip decoder if any.
        let mut parser = SseParser::new();
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        let mut chunk = vec![0u8; 16 * 1024];
        let mut input = Vec::new();
        loop {
            if gzip {
                std::io::Write::write_all(&mut decoder, &input).expect("a valid gzip stream");
                std::io::Write::flush(&mut decoder).expect("gzip flush");
                input = std::mem::take(decoder.get_mut());
            }
            let mut parsed = Vec::new();
            parser.push(&input, |e| parsed.push(e.to_owned()));
            for sse in parsed {
                if sse.id.is_some() {
                    last_id.clone_from(&sse.id);
                }
                if sse.event == "delta" && !framed {
                    framed = true;
                    if let Some(count) = &options.framed {
                        count.fetch_add(1, AtomicOrdering::AcqRel);
                    }
                }
                let reached = sse.event != "progress"
                    && position_total(&serde_json::json!({ "position": sse.id }))
                        >= total.load(AtomicOrdering::Acquire);
                let sse = {
                    let mut seen = seen.lock().expect("lock");
                    match seen.get(&sse) {
                        Some(known) => Arc::clone(known),
                        None => {
                            let sse = Arc::new(sse);
                            seen.insert(Arc::clone(&sse));
                            sse
                        }
                    }
                };
                events.push(sse);
                if reached {
                    return events;
                }
            }
            let read = tokio::select! {
                // Biased: every client drops at its next read once the storm is on.
                biased;
                () = drop.cancelled(), if !dropped => {
                    dropped = true;
                    continue 'connect; // drops this connection, reconnects with last_id
                }
                read = tokio::io::AsyncReadExt::read(&mut reader, &mut chunk) => read,
            };
            match read {
                Ok(n) if n > 0 => input = chunk[..n].to_vec(),
                _ => continue 'connect, // the server went away: reconnect with last_id
            }
        }
    }
}

/// Each distinct event sequence of `clients`: no resync, no step back, ends equal to
/// `snapshot`.
async fn assert_all_exact(
    clients: Vec<tokio::task::JoinHandle<Vec<Arc<Sse>>>>,
    snapshot: &Value,
) -> usize {
    let mut by_sequence: HashMap<Vec<*const Sse>, usize> = HashMap::new();
    let mut sequences = Vec::new();
    for client in clients {
        let events = client.await.expect("client");
        let key: Vec<*const Sse> = events.iter().map(Arc::as_ptr).collect();
        if by_sequence.insert(key, sequences.len()).is_none() {
            sequences.push(events);
        }
    }
    // A view is a function of the events applied, so each distinct sequence is checked once.
    for events in &sequences {
        let owned: Vec<Sse> = events.iter().map(|e| e.as_ref().clone()).collect();
        assert!(
            owned.iter().all(|e| e.event != "resync"),
            "no client is resynced"
        );
        let positions: Vec<i64> = owned
            .iter()
            .filter(|e| e.event != "progress")
            .map(|e| position_total(&serde_json::json!({ "position": e.id })))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] <= w[1]),
            "no client ever steps back"
        );
        let mut view = None;
        check_and_apply(&mut view, &owned);
        assert_eq!(
            view.expect("view"),
            snapshot.clone(),
            "every client ends exact"
        );
    }
    sequences.len()
}

/// A thousand clients on one server, half of them gzip.
async fn thousand_clients(
    address: &str,
    total: &Arc<AtomicI64>,
    drop: Option<CancellationToken>,
    framed: Option<&Arc<AtomicI64>>,
) -> Vec<tokio::task::JoinHandle<Vec<Arc<Sse>>>> {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    (0..1_000)
        .map(|i| {
            let options = ManyOptions {
                gzip: i % 2 == 1,
                drop: drop.clone(),
                framed: framed.cloned(),
            };
            tokio::spawn(many_client(
                address.to_owned(),
                Arc::clone(total),
                Arc::clone(&seen),
                options,
            ))
        })
        .collect()
}

async fn wait_for_subscribers(server: &Server, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(server, "storepulse_subscribers") < n {
        assert!(Instant::now() < deadline, "not all clients connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_clients_dropping_at_once_resume_from_the_shared_log_and_end_exact() {
    let (settings, server, first) = caught_up_server("stream-storm", 21, 2_000, &[]).await;
    const MORE: i64 = 3_000;
    let total = Arc::new(AtomicI64::new(first + 2 * MORE));
    let storm = CancellationToken::new();
    let framed = Arc::new(AtomicI64::new(0));
    let clients =
        thousand_clients(&server.address, &total, Some(storm.clone()), Some(&framed)).await;
    wait_for_subscribers(&server, 1_000).await;
    let openings = |path: &str| {
        counter(
            &server,
            &format!("storepulse_stream_openings_total{{path=\"{path}\"}}"),
        )
    };
    let mut produced =
        first + produce(&settings, 22, START + 60_000, MORE as u64, Some(2_000.0)).await;
    // Every client holds a frame's id (one that only held its opening snapshot, built
    // before these records, would rightly get a new snapshot from the engine).
    let deadline = Instant::now() + Duration::from_secs(60);
    while framed.load(AtomicOrdering::Acquire) < 1_000 {
        assert!(Instant::now() < deadline, "every client receives a frame");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every client drops its connection at once and resumes by its last id while records
    // keep coming: the server stays up.
    let (shared_before, engine_before) = (openings("shared"), openings("engine"));
    storm.cancel();
    produced += produce(&settings, 23, START + 120_000, MORE as u64, Some(2_000.0)).await;
    assert_eq!(produced, total.load(AtomicOrdering::Acquire));
    let snapshot =
        tokio::task::block_in_place(|| server.rollup_at(produced, Duration::from_secs(60)));
    let sequences = assert_all_exact(clients, &snapshot).await;
    let (shared, engine) = (
        openings("shared") - shared_before,
        openings("engine") - engine_before,
    );
    assert!(
        shared >= 1_000,
        "the resumes were answered from the shared log, not by the ingest thread: {shared} shared, {engine} by the engine"
    );
    assert!(
        openings("engine") - engine_before < 100,
        "few round trips to ingest"
    );
    println!("1000 clients through a reconnect storm, {sequences} distinct event sequences");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_clients_through_a_restart_all_end_exact() {
    let (settings, server, first) = caught_up_server("stream-many", 11, 2_000, &[]).await;
    let address = server.address.clone();
    const MORE: i64 = 3_000;
    // Known before any client could reach it (the producer delivers every record or fails).
    let total = Arc::new(AtomicI64::new(first + 2 * MORE));
    let clients = thousand_clients(&address, &total, None, None).await;
    // All connected, then records flow, then serve is killed mid-stream and restarted on
    // the same address from its last checkpoint (behind what the clients have shown).
    wait_for_subscribers(&server, 1_000).await;
    let mut produced =
        first + produce(&settings, 12, START + 60_000, MORE as u64, Some(2_000.0)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let group = server.group.clone();
    let topics = settings.topics.clone();
    let restarted = tokio::task::spawn_blocking({
        let address = address.clone();
        move || {
            server.kill();
            let environment = [("STOREPULSE_HTTP_ADDR", address.as_str())];
            Server::start_with(&topics, &group, &database_url(), &environment)
        }
    });
    produced += produce(&settings, 13, START + 120_000, MORE as u64, Some(2_000.0)).await;
    assert_eq!(produced, total.load(AtomicOrdering::Acquire));
    let restarted = restarted.await.expect("restart");
    let snapshot =
        tokio::task::block_in_place(|| restarted.rollup_at(produced, Duration::from_secs(60)));
    let sequences = assert_all_exact(clients, &snapshot).await;
    println!("1000 clients through a restart, {sequences} distinct event sequences");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_server_is_not_ready_and_ends_its_streams_one_by_one() {
    let (_settings, server, _first) =
        caught_up_server("drain", 31, 300, &[("STOREPULSE_HTTP_DRAIN", "2s")]).await;
    let address = server.address.clone();
    let clients: Vec<SseClient> = (0..12)
        .map(|_| {
            let mut client = SseClient::connect(&address, "/api/stream", None);
            assert_eq!(client.next().event, "snapshot");
            client
        })
        .collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                while client.try_next().is_some() {}
                Instant::now()
            })
        })
        .collect();
    let stopped = Instant::now();
    let stopping = std::thread::spawn(move || server.terminate());
    // Not ready at once, while the streams are still ending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = helpers::http_get(&address, "/readyz");
    assert_eq!(status, 503, "{body}");
    let readiness: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(readiness["draining"], true, "{body}");
    let mut ends: Vec<Duration> = readers
        .into_iter()
        .map(|reader| reader.join().expect("reader") - stopped)
        .collect();
    ends.sort();
    assert!(
        stopping.join().expect("stops"),
        "serve exits 0 after its drain"
    );
    let (first, last) = (ends[0], ends[ends.len() - 1]);
    assert!(
        last < Duration::from_secs(4),
        "every stream ended within the drain: {ends:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1_200),
        "the streams ended one by one over the 2 s window, not together: {ends:?}"
    );
}
