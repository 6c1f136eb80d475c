//! `storepulse route` on the real broker: records keyed by event on three source topics are
//! copied to the configured topics keyed by store id, each on the partition murmur2 gives
//! its store (the cluster's producer contract), exactly once although the first route is
//! SIGKILLed mid-run; the routed topics give the same numbers as the sources.

use crate::helpers::{self, Sale, Server, consume_all, database_url, fresh_topics, unique};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use storepulse::events::Codec;
use storepulse::kafka::KafkaSettings;
use storepulse_core::cluster::slice_of;

const STORES: [&str; 8] = [
    "store-berlin",
    "store-nyc",
    "store-tokyo",
    "store-london",
    "store-paris",
    "store-sydney",
    "store-toronto",
    "store-zurich",
];

/// `count` records keyed by event (order id, SKU, session), as a producer that knows
/// nothing of the cluster writes them.
async fn produce_by_event(settings: &KafkaSettings, count: u64) -> usize {
    let sale = Sale {
        seed: 17,
        start_ms: 1_796_601_600_000,
        count,
        rate: None,
        stores: STORES.len(),
        skus: 12,
        partitions: 2,
        by_store: false,
    };
    usize::try_from(helpers::produce_sale(settings, sale).await).expect("a count")
}

fn route(sources: &KafkaSettings, targets: &KafkaSettings, name: &str) -> std::process::Child {
    helpers::storepulse(&targets.topics)
        .arg("route")
        .env("STOREPULSE_ROUTE_ORDERS_FROM", &sources.topics.orders)
        .env("STOREPULSE_ROUTE_INVENTORY_FROM", &sources.topics.inventory)
        .env("STOREPULSE_ROUTE_ACTIVITY_FROM", &sources.topics.activity)
        .env("STOREPULSE_ROUTE_GROUP", name)
        .env("STOREPULSE_ROUTE_TRANSACTIONAL_ID", format!("{name}-0"))
        .env("STOREPULSE_ROUTE_BATCH", "100")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("route starts")
}

/// The sum of the high watermarks of `settings`' topics (records written, committed or
/// not, and transaction markers).
fn high_watermarks(settings: &KafkaSettings) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()
        .expect("a client");
    let mut sum = 0;
    for topic in settings.topics.all() {
        for partition in 0..2 {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .expect("watermarks");
            sum += high;
        }
    }
    sum
}

/// A store's snapshot without its position (the two topics' offsets differ); `None` while
/// the server is starting.
fn numbers(server: &Server, store: &str) -> Option<Value> {
    let (status, body) = server.get(&format!("/api/snapshot?store={store}"));
    if status == 503 || status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{body}");
    let mut snapshot: Value = serde_json::from_str(&body).expect("json");
    snapshot
        .as_object_mut()
        .expect("an object")
        .remove("position");
    Some(snapshot)
}

#[tokio::test(flavor = "multi_thread")]
async fn route_rekeys_by_store_exactly_once_across_a_kill() {
    let sources = fresh_topics("route-from");
    helpers::create_topics(&sources, 2).await;
    let targets = fresh_topics("route-to");
    helpers::create_topics(&targets, 2).await;
    let total = produce_by_event(&sources, 6_000).await;
    let name = unique("route");
    // The first route dies mid-run (SIGKILL: its open transaction is left behind); the
    // second, with the same transactional id, aborts it and goes on from the committed
    // offsets.
    let mut first = route(&sources, &targets, &name);
    // Killed as soon as its first records reach the targets: mid-run, most likely with a
    // transaction open (batches of 100).
    let written = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let written = high_watermarks(&targets);
            if written > 0 {
                return written;
            }
            assert!(Instant::now() < deadline, "the first route wrote nothing");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    assert!(
        written < i64::try_from(total).expect("a count"),
        "killed mid-run"
    );
    let mut second = route(&sources, &targets, &name);
    let brokers = helpers::brokers();
    let topics = targets.topics.all();
    let routed = tokio::task::block_in_place(|| {
        consume_all(&brokers, &topics, total, Duration::from_secs(90))
    });
    // Nothing more arrives: exactly `total`, no duplicate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = tokio::task::block_in_place(|| {
        consume_all(&brokers, &topics, total, Duration::from_secs(30))
    });
    assert_eq!(again.len(), total);
    second.kill().expect("stopped");
    second.wait().expect("reaped");
    let source_records = tokio::task::block_in_place(|| {
        consume_all(
            &brokers,
            &sources.topics.all(),
            total,
            Duration::from_secs(30),
        )
    });
    let codec = Codec::new(&Default::default()).expect("schemas");
    let mut by_payload: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for record in &source_records {
        *by_payload.entry(record.payload.clone()).or_default() += 1;
    }
    for record in &routed {
        let event = codec
            .decode(&record.payload)
            .expect("a routed record decodes");
        let store = event.store_id().as_str();
        assert_eq!(record.key, store, "keyed by its store");
        assert_eq!(record.partition, slice_of(store, 2), "placed by murmur2");
        let left = by_payload
            .get_mut(&record.payload)
            .expect("a source record");
        *left -= 1;
        assert!(*left >= 0, "a record routed twice");
    }
    assert!(
        by_payload.values().all(|n| *n == 0),
        "every record routed once"
    );
    // The same numbers from the sources and from the routed topics.
    let database = database_url();
    let from_sources = Server::start(&sources.topics, &unique("route-a"), &database);
    let from_targets = Server::start(&targets.topics, &unique("route-b"), &database);
    let deadline = Instant::now() + Duration::from_secs(60);
    for store in STORES {
        loop {
            let (a, b) = (numbers(&from_sources, store), numbers(&from_targets, store));
            if a.is_some() && a == b {
                break;
            }
            assert!(Instant::now() < deadline, "{store}: {a:?} vs {b:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
