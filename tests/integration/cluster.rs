//! A cluster on the real stack (ADR 0007): two aggregators and two edges as real
//! processes, clients on both edges, an aggregator and an edge SIGKILLed mid-sale. Every
//! client ends equal to the snapshot with ids that only move forward, the clients of the
//! killed edge resume on the other one by their last id (frames after it, no snapshot:
//! any edge resumes any id), and the edges' snapshots equal a single `serve`'s of the
//! same topics, to the cent.

use crate::helpers::{self, Server, database_url, fresh_topics, position_total, unique};
use crate::stream::{Sse, SseClient, check_and_apply};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use storepulse::kafka::KafkaSettings;
use storepulse::simulate::scenario::ScenarioConfig;
use storepulse::simulate::{self, SimulateOptions};
use tokio_util::sync::CancellationToken;

/// 2026-12-01T00:00:00Z: event times of the records.
const START: i64 = 1_796_083_200_000;

/// Records keyed by store id (the cluster's producer contract), 8 stores.
async fn produce_keyed(
    settings: &KafkaSettings,
    seed: u64,
    start_ms: i64,
    count: u64,
    rate: f64,
) -> i64 {
    let report = simulate::run(
        settings,
        SimulateOptions {
            scenario: ScenarioConfig {
                popularity: Default::default(),
                seed,
                start_ms,
                events_per_second: 200.0,
                stores: 8,
                skus_per_store: 15,
                flash_sale: None,
            },
            rate: Some(rate),
            count: Some(count),
            duration: None,
            partitions: 2,
            create_topics: false,
            message_timeout: Duration::from_secs(30),
            progress_every: None,
            junk_per_mille: 0,
            key_by_store: true,
        },
        CancellationToken::new(),
    )
    .await
    .expect("records delivered");
    i64::try_from(report.acked).expect("a count")
}

/// One client: reads from `edges[first]`; when that edge goes away it resumes on the
/// next one with its last id, as an EventSource behind a load balancer does. Once
/// `target` is set (the edges have every record), reads until an event covers it (all
/// stores), or until no data came for 2 s (one store: its last frame may be older).
/// Returns its events and, per resume, the first event after it.
fn client(
    edges: Vec<String>,
    first: usize,
    path: String,
    target: Arc<AtomicI64>,
) -> (Vec<Sse>, Vec<Sse>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut events: Vec<Sse> = Vec::new();
    let mut resumed_with = Vec::new();
    let mut edge = first;
    let mut connection = SseClient::connect(&edges[edge], &path, None);
    let scoped = path.contains("store=");
    let mut last_data = Instant::now();
    let mut reached = 0;
    let mut resuming = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "a client of edge {first} ({path}) never reached {}: {} events, the last {:?}, resumed with {:?}",
            target.load(Ordering::SeqCst),
            events.len(),
            events.last().map(|e| (&e.event, &e.id)),
            resumed_with
                .iter()
                .map(|e: &Sse| (&e.event, &e.id))
                .collect::<Vec<_>>()
        );
        match connection.try_next() {
            Some(event) => {
                let target = target.load(Ordering::SeqCst);
                if event.event != "progress" {
                    last_data = Instant::now();
                    if let Some(id) = &event.id {
                        reached =
                            reached.max(position_total(&serde_json::json!({ "position": id })));
                    }
                    if std::mem::take(&mut resuming) {
                        resumed_with.push(event.clone());
                    }
                }
                let quiet =
                    scoped && target < i64::MAX && last_data.elapsed() > Duration::from_secs(2);
                let done = reached >= target || quiet;
                events.push(event);
                if done {
                    return (events, resumed_with);
                }
            }
            None => {
                let last = events.iter().rev().find_map(|e| e.id.clone());
                edge = (edge + 1) % edges.len();
                connection =
                    SseClient::connect(&edges[edge], &path, last.as_deref().map(str::as_bytes));
                resuming = true;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_loses_an_aggregator_and_an_edge_mid_sale_and_every_client_ends_exact() {
    let settings = fresh_topics("cluster");
    helpers::create_topics(&settings, 2).await;
    let name = unique("cluster");
    let frames = format!("{name}-frames");
    let slices = format!("{name}-slices");
    let dead_letters = format!("{}-dlq", settings.topics.orders);
    let environment: Vec<(&str, &str)> = vec![
        ("STOREPULSE_CLUSTER_GROUP_ID", name.as_str()),
        ("STOREPULSE_CLUSTER_TRANSACTIONAL_PREFIX", name.as_str()),
        ("STOREPULSE_CLUSTER_FRAMES_TOPIC", frames.as_str()),
        ("STOREPULSE_CLUSTER_SLICES_TOPIC", slices.as_str()),
        ("STOREPULSE_DEAD_LETTER_TOPIC", dead_letters.as_str()),
        // Progress events twice a second: a client notices its stream went quiet.
        ("STOREPULSE_HEARTBEAT", "500ms"),
    ];
    let database = database_url();
    let first = produce_keyed(&settings, 1, START, 1_000, 5_000.0).await;
    let aggregators: Vec<Server> = (0..2)
        .map(|_| Server::start_role("aggregator", &settings.topics, &database, &environment))
        .collect();
    let edges: Vec<Server> = (0..2)
        .map(|_| Server::start_role("edge", &settings.topics, &database, &environment))
        .collect();
    for edge in &edges {
        edge.rollup_at(first, Duration::from_secs(60));
    }
    let addresses: Vec<String> = edges.iter().map(|e| e.address.clone()).collect();
    let target = Arc::new(AtomicI64::new(i64::MAX));
    // Five clients per edge: the rollup, and one store each.
    let paths = [
        "/api/stream",
        "/api/stream?store=store-berlin",
        "/api/stream?store=store-tokyo",
        "/api/stream",
        "/api/stream?store=store-nyc",
    ];
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let (edges, target) = (addresses.clone(), Arc::clone(&target));
            let path = paths[i % paths.len()].to_owned();
            let scope = path.split_once("store=").map(|(_, s)| s.to_owned());
            let handle = std::thread::spawn(move || client(edges, i % 2, path, target));
            (i % 2, scope, handle)
        })
        .collect();
    // The sale: 6 000 records over 4 s; an aggregator dies at 1.5 s, an edge at 3 s.
    let producing = {
        let settings = settings.clone();
        tokio::spawn(
            async move { produce_keyed(&settings, 2, START + 600_000, 6_000, 1_500.0).await },
        )
    };
    let mut aggregators = aggregators.into_iter();
    let (doomed, survivor) = (
        aggregators.next().expect("two"),
        aggregators.next().expect("two"),
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    doomed.kill();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut edges = edges.into_iter();
    let (kept, lost) = (edges.next().expect("two"), edges.next().expect("two"));
    lost.kill();
    let total = first + producing.await.expect("producer");
    let rollup = kept.rollup_at(total, Duration::from_secs(90));
    target.store(total, Ordering::SeqCst);
    let mut resumed = 0;
    for (edge, scope, handle) in clients {
        let (events, resumed_with) = handle.join().expect("client");
        let mut view = None;
        check_and_apply(&mut view, &events);
        let view = view.expect("a snapshot came first");
        match &scope {
            None => assert!(view == rollup, "client of edge {edge}: the rollup differs"),
            Some(store) => {
                // A store's stream is at its last change; the snapshot at the newest
                // position: the store's numbers are what must agree.
                let (_, body) = kept.get(&format!("/api/snapshot?store={store}"));
                let expected: Value = serde_json::from_str(&body).expect("json");
                assert!(
                    view["stores"] == expected["stores"],
                    "client of edge {edge}: {store} differs"
                );
            }
        }
        assert!(
            resumed_with.iter().all(|e| e.event != "resync"),
            "a resumed client is never told its id means nothing"
        );
        if edge == 1 {
            resumed += 1;
            // The first event after the resume (none if the store did not change again).
            assert!(
                resumed_with.len() <= 1,
                "the killed edge's clients resumed once"
            );
            assert!(
                resumed_with.iter().all(|e| e.event == "delta"),
                "resumed on the other edge by its last id: the frames after it (rule 2), got {:?}",
                resumed_with.iter().map(|e| &e.event).collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(
        resumed, 5,
        "every client of the killed edge resumed on the other"
    );
    // The same records through one process: the same numbers, to the cent.
    let single = Server::start(&settings.topics, &unique("cluster-serve"), &database);
    assert_eq!(single.rollup_at(total, Duration::from_secs(90)), rollup);
    for store in ["store-berlin", "store-tokyo", "store-nyc", "store-paris"] {
        let path = format!("/api/snapshot?store={store}");
        assert_eq!(single.get(&path), kept.get(&path), "{store}");
    }
    assert_eq!(
        kept.metric("storepulse_slice_reloads_total"),
        0,
        "no slice frame ever broke its chain"
    );
    drop(survivor);
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_aggregator_whose_slices_moved_is_fenced_and_changes_nothing() {
    let settings = fresh_topics("zombie");
    helpers::create_topics(&settings, 2).await;
    let name = unique("zombie");
    let frames = format!("{name}-frames");
    let slices = format!("{name}-slices");
    let environment: Vec<(&str, &str)> = vec![
        ("STOREPULSE_CLUSTER_GROUP_ID", name.as_str()),
        ("STOREPULSE_CLUSTER_TRANSACTIONAL_PREFIX", name.as_str()),
        ("STOREPULSE_CLUSTER_FRAMES_TOPIC", frames.as_str()),
        ("STOREPULSE_CLUSTER_SLICES_TOPIC", slices.as_str()),
    ];
    let database = database_url();
    let mut total = produce_keyed(&settings, 5, START, 600, 5_000.0).await;
    let zombie = Server::start_role("aggregator", &settings.topics, &database, &environment);
    let other = Server::start_role("aggregator", &settings.topics, &database, &environment);
    let edge = Server::start_role("edge", &settings.topics, &database, &environment);
    edge.rollup_at(total, Duration::from_secs(60));
    // Paused past the group's session timeout (6 s): its slices move to the other.
    signal(zombie.pid(), "STOP");
    total += produce_keyed(&settings, 6, START + 300_000, 1_500, 1_000.0).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    edge.rollup_at(total, Duration::from_secs(60));
    // Resumed, it still believes it owns them for a moment, reads the new records, and
    // tries to publish: Kafka refuses it (fenced), and its frames are never read.
    signal(zombie.pid(), "CONT");
    total += produce_keyed(&settings, 7, START + 600_000, 1_500, 1_000.0).await;
    let rollup = edge.rollup_at(total, Duration::from_secs(90));
    let single = Server::start(&settings.topics, &unique("zombie-serve"), &database);
    assert_eq!(single.rollup_at(total, Duration::from_secs(90)), rollup);
    assert_eq!(
        edge.metric("storepulse_slice_reloads_total"),
        0,
        "every frame the edge read continued its slice"
    );
    drop((zombie, other));
}
