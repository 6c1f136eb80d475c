//! A cluster on the real stack (ADR 0007): two aggregators and two edges as real
//! processes, clients on both edges, an aggregator and an edge SIGKILLed mid-sale. Every
//! client ends equal to the snapshot with ids that only move forward, the clients of the
//! killed edge resume on the other one by their last id (frames after it, no snapshot:
//! any edge resumes any id), and the edges' snapshots equal a single `serve`'s of the
//! same topics, to the cent.

use crate::helpers::{self, Sale, Server, database_url, fresh_topics, signal, unique};
use crate::sse::{check_and_apply, follow_resuming};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use storepulse::kafka::KafkaSettings;

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
    let sale = Sale {
        seed,
        start_ms,
        count,
        rate: Some(rate),
        stores: 8,
        skus: 15,
        partitions: 2,
        by_store: true,
    };
    helpers::produce_sale(settings, sale).await
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
            let handle = std::thread::spawn(move || {
                // From its edge on; a resume goes to the next edge.
                let address_of = |n: usize| edges[(i % 2 + n) % edges.len()].clone();
                follow_resuming(address_of, &path, &target, Duration::from_secs(120))
            });
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
        // Shown if the test fails: who took, gave up and was fenced from which slice.
        ("RUST_LOG", "storepulse=info,librdkafka=warn,warn"),
    ];
    let database = database_url();
    let mut total = produce_keyed(&settings, 5, START, 600, 5_000.0).await;
    let zombie = Server::start_role("aggregator", &settings.topics, &database, &environment);
    let other = Server::start_role("aggregator", &settings.topics, &database, &environment);
    let edge = Server::start_role("edge", &settings.topics, &database, &environment);
    edge.rollup_at(total, Duration::from_secs(60));
    // The group gives the second member its slice a moment after it joins: the zombie
    // must own one when it stops.
    helpers::wait_for(
        || {
            zombie.metric("storepulse_slices_owned") >= 1
                && other.metric("storepulse_slices_owned") >= 1
        },
        "each aggregator owns a slice",
    )
    .await;
    // Paused mid-sale (most likely inside a frame's transaction) past the group's
    // session timeout (3 s): its slices move to the other.
    let producing = {
        let settings = settings.clone();
        tokio::spawn(
            async move { produce_keyed(&settings, 6, START + 300_000, 1_500, 1_000.0).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(zombie.pid(), "STOP");
    let stopped = std::time::Instant::now();
    total += producing.await.expect("producer");
    // The edge has every record while the zombie is still stopped: its open transaction,
    // if any, was aborted when the new owner fenced it and holds no frame back.
    edge.rollup_at(total, Duration::from_secs(60));
    eprintln!(
        "every record on the edge {:?} after the stop, the zombie still stopped",
        stopped.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(stopped.elapsed())).await;
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
    // Fenced, the zombie does not take its slice back while the group still lists it
    // there for a moment: that would fence the owner the group chose.
    assert_eq!(
        other.metric("storepulse_slices_fenced_total"),
        0,
        "the group's chosen owner was never fenced"
    );
    assert!(
        zombie.metric("storepulse_slices_revoked_total") >= 1,
        "the zombie's slice was revoked when it heard from the group"
    );
    assert!(
        other.metric("storepulse_slice_catch_up_seconds_count") >= 2,
        "the other took its own slice and the zombie's: each take measured"
    );
    drop((zombie, other));
}

/// librdkafka keeps an application's pause of a partition across unassign and assign. An
/// aggregator pauses a slice's partition while it catches up (a record past its target
/// arrived); if the slice is dropped then and taken again later,
/// [`storepulse::kafka::assign_unpaused`] must read the partition again.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_paused_under_an_earlier_assignment_delivers_when_assigned_again() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let settings = fresh_topics("repaused");
    helpers::create_topics(&settings, 1).await;
    let topic = settings.topics.orders.clone();
    helpers::produce_raw(&[(topic.as_str(), "k".to_owned(), b"one".to_vec())]);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", helpers::brokers())
        .set("broker.address.family", "v4")
        .set("group.id", unique("repaused"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("offset");
    let delivers = |within: Duration| {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                return true;
            }
        }
        false
    };
    consumer.incremental_assign(&list).expect("assigned");
    assert!(delivers(Duration::from_secs(20)), "the partition delivers");
    consumer.pause(&list).expect("paused");
    consumer.incremental_unassign(&list).expect("unassigned");
    // Assigned again the plain way: still paused (why `assign_unpaused` exists).
    consumer.incremental_assign(&list).expect("assigned again");
    assert!(
        !delivers(Duration::from_secs(2)),
        "librdkafka dropped the pause at assign: assign_unpaused's resume is not needed"
    );
    consumer
        .incremental_unassign(&list)
        .expect("unassigned again");
    storepulse::kafka::assign_unpaused(&consumer, &list).expect("assigned unpaused");
    assert!(
        delivers(Duration::from_secs(20)),
        "the partition delivers again"
    );
}
