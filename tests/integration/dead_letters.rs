//! Records that must not move the numbers, and must not be lost: a future-dated event is
//! dead-lettered, and a dead letter the topic does not take keeps every checkpoint before
//! it until the topic takes it, through a SIGKILL.

use crate::helpers::{
    self, Server, create_topics, database_url, fresh_topics, produce_raw, produce_timed, wait_for,
};
use serde_json::Value;
use std::time::Duration;
use storepulse::events::{Channel, Codec, Event, OrderLine, OrderPlaced};
use storepulse::kafka::KafkaSettings;

/// 2026-11-27T14:00:00Z.
const T0: i64 = 1_795_788_000_000;

fn order(id: &str, at: i64, total: i64) -> Event {
    Event::OrderPlaced(OrderPlaced {
        event_id: format!("ev-{id}"),
        store_id: "store-berlin".into(),
        occurred_at: at,
        order_id: id.into(),
        customer_id: "cust-1".into(),
        customer_name: "Noor Haddad".into(),
        lines: vec![OrderLine {
            sku: "BER-0001".into(),
            name: "Merino Hoodie".into(),
            quantity: 1,
            unit_price_minor: total,
        }],
        total_minor: total,
        currency: "EUR".into(),
        channel: Channel::Web,
    })
}

/// Encoded orders on the orders topic, keyed by order id.
fn orders(settings: &KafkaSettings, events: &[Event]) -> Vec<(String, String, Vec<u8>)> {
    let codec = Codec::new(&Default::default()).expect("schemas");
    events
        .iter()
        .map(|e| {
            (
                settings.topics.orders.clone(),
                e.key().to_owned(),
                codec.encode(e).expect("encodes"),
            )
        })
        .collect()
}

fn produce(records: &[(String, String, Vec<u8>)]) {
    let borrowed: Vec<(&str, String, Vec<u8>)> = records
        .iter()
        .map(|(t, k, v)| (t.as_str(), k.clone(), v.clone()))
        .collect();
    produce_raw(&borrowed);
}

/// What a store's day says: orders, EUR revenue, day.
fn berlin(snapshot: &Value) -> (Value, Value, Value) {
    let b = &snapshot["stores"]["store-berlin"];
    (
        b["orders_today"].clone(),
        b["revenue_today"].clone(),
        b["day"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_future_dated_order_is_dead_lettered_and_moves_no_number() {
    let settings = fresh_topics("future");
    create_topics(&settings, 1).await;
    let server = Server::start(
        &settings.topics,
        &helpers::unique("future"),
        &database_url(),
    );
    let day: Vec<Event> = (0..20)
        .map(|i| order(&format!("o{i}"), T0 + i * 1_000, 1_000))
        .collect();
    produce(&orders(&settings, &day));
    let before = tokio::task::block_in_place(|| server.snapshot_at(20, Duration::from_secs(60)));
    assert_eq!(berlin(&before).0, 20);
    // Dated 2030, produced now: its record timestamp is today's clock.
    produce(&orders(
        &settings,
        &[order("x2030", 1_900_000_000_000, 1_234)],
    ));
    let after = tokio::task::block_in_place(|| server.snapshot_at(21, Duration::from_secs(60)));
    assert_eq!(berlin(&after), berlin(&before), "the day did not move");
    assert_eq!(after["as_of_ms"], before["as_of_ms"]);
    assert_eq!(
        server.metric("storepulse_poison_records_total{reason=\"event_time_in_future\"}"),
        1
    );
    let dlq = format!("{}-dlq", settings.topics.orders);
    let dead = tokio::task::spawn_blocking(move || {
        helpers::consume_all(&helpers::brokers(), &[&dlq], 1, Duration::from_secs(30))
    })
    .await
    .expect("consumer thread");
    assert_eq!(dead[0].key, "x2030");
    assert!(
        dead[0]
            .headers
            .contains(&("storepulse-error".into(), "event_time_in_future".into())),
        "{:?}",
        dead[0].headers
    );
    // What comes after is counted as usual, not as late.
    produce(&orders(&settings, &[order("o20", T0 + 20_000, 1_000)]));
    let last = tokio::task::block_in_place(|| server.snapshot_at(22, Duration::from_secs(60)));
    assert_eq!(berlin(&last).0, 21);
    assert_eq!(server.metric("storepulse_late_events_total"), 0);
}

/// One record of each kind the probes sent, each against a store with a real day:
/// none may move a number, each is dead-lettered with its reason, and the store's later
/// events count as usual.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_records_are_dead_lettered_and_move_no_number() {
    use storepulse::events::SessionSeen;
    let settings = fresh_topics("hostile");
    create_topics(&settings, 1).await;
    let server = Server::start(
        &settings.topics,
        &helpers::unique("hostile"),
        &database_url(),
    );
    let codec = Codec::new(&Default::default()).expect("schemas");
    let session = |id: &str, store: &str, at: i64| {
        codec
            .encode(&Event::SessionSeen(SessionSeen {
                event_id: format!("ev-{id}"),
                store_id: store.into(),
                occurred_at: at,
                session_id: format!("sess-{id}"),
                user_id: None,
            }))
            .expect("encodes")
    };
    let day: Vec<Event> = (0..20)
        .map(|i| order(&format!("o{i}"), T0 + i * 1_000, 1_000))
        .collect();
    produce(&orders(&settings, &day));
    let before = tokio::task::block_in_place(|| server.snapshot_at(20, Duration::from_secs(60)));
    let activity = settings.topics.activity.as_str();
    let ordered = settings.topics.orders.as_str();
    let ten_years = 10 * 365 * 86_400_000;
    let mut huge = orders(&settings, &[order("huge", T0 + 30_000, i64::MAX)]);
    let huge = huge.remove(0).2;
    let tricky_id = "store-berl\u{200b}in";
    produce_timed(&[
        // No Kafka timestamp, and nothing earlier in its partition to judge it by.
        (
            activity,
            "s1".into(),
            session("s1", "store-berlin", T0 + ten_years),
            -1,
        ),
        // A real one, then one without a timestamp dated ten years after it.
        (
            activity,
            "s2".into(),
            session("s2", "store-berlin", T0 + 21_000),
            T0 + 21_000,
        ),
        (
            activity,
            "s3".into(),
            session("s3", "store-berlin", T0 + ten_years),
            -1,
        ),
        (
            activity,
            "s4".into(),
            session("s4", "store-berlin", i64::MAX),
            T0,
        ),
        (activity, "s5".into(), session("s5", "all", T0), T0),
        (activity, "s6".into(), session("s6", tricky_id, T0), T0),
        (
            activity,
            "s7".into(),
            session("s7", &"x".repeat(10_000), T0),
            T0,
        ),
        (ordered, "huge".into(), huge.clone(), T0 + 30_000),
        (ordered, "huge2".into(), huge, T0 + 30_000),
    ]);
    // Eight poison records and one session: 29 records read.
    let after = tokio::task::block_in_place(|| server.snapshot_at(29, Duration::from_secs(60)));
    assert_eq!(berlin(&after), berlin(&before), "the day did not move");
    assert_eq!(after["as_of_ms"], T0 + 21_000);
    assert_eq!(
        after["stores"].as_object().map(|s| s.len()),
        Some(1),
        "{}",
        after["stores"]
    );
    assert_eq!(
        server.metric("storepulse_poison_records_total{reason=\"no_timestamp\"}"),
        1
    );
    assert_eq!(
        server.metric("storepulse_poison_records_total{reason=\"event_time_in_future\"}"),
        1
    );
    assert_eq!(
        server.metric("storepulse_poison_records_total{reason=\"invalid\"}"),
        6
    );
    let dlq = format!("{}-dlq", settings.topics.orders);
    let dead = tokio::task::spawn_blocking(move || {
        helpers::consume_all(&helpers::brokers(), &[&dlq], 8, Duration::from_secs(30))
    })
    .await
    .expect("consumer thread");
    assert_eq!(dead.len(), 8);
    // Bytes that are no event: a tombstone, a record too short for any framing, an unknown
    // schema fingerprint, a session cut in half.
    let whole = session("s8", "store-berlin", T0 + 22_000);
    produce_tombstone(ordered, "gone");
    produce_raw(&[
        (activity, "short".into(), vec![0xC3]),
        (
            activity,
            "fingerprint".into(),
            vec![0xC3, 0x01, 0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0, 0, 0x02],
        ),
        (activity, "cut".into(), whole[..whole.len() / 2].to_vec()),
    ]);
    // Later events count as usual.
    produce(&orders(&settings, &[order("o20", T0 + 40_000, 1_000)]));
    let last = tokio::task::block_in_place(|| server.snapshot_at(34, Duration::from_secs(60)));
    assert_eq!(berlin(&last).0, 21);
    // `storepulse replay` of the same records takes the same record path: every poison
    // record is skipped for the reason serve dead-lettered it.
    let mut served: Vec<String> = storepulse::events::DecodeError::LABELS
        .iter()
        .filter_map(|label| {
            let count = server.metric(&format!(
                "storepulse_poison_records_total{{reason=\"{label}\"}}"
            ));
            (count > 0).then(|| format!("{label} {count}"))
        })
        .collect();
    served.sort(); // the replay's summary lists its reasons in this order
    assert_eq!(served.len(), 7, "{served:?}");
    let replayed = helpers::storepulse(&settings.topics)
        .args([
            "replay",
            "--from",
            "2026-11-27T13:00:00Z",
            "--out",
            "/dev/null",
        ])
        .args([
            "--to-position",
            last["position"].as_str().expect("a position"),
        ])
        .env(
            "STOREPULSE_GROUP_ID",
            "storepulse-replay-test-no-checkpoints",
        )
        .env("STOREPULSE_DATABASE_URL", database_url())
        .output()
        .expect("replay runs");
    let summary = String::from_utf8_lossy(&replayed.stderr);
    assert!(replayed.status.success(), "{summary}");
    assert!(
        summary.contains(&format!(
            "(12 poison records skipped, as serve dead-letters them: {})",
            served.join(", ")
        )),
        "serve: {served:?}; replay: {summary}"
    );
    assert!(server.terminate(), "SIGTERM exits 0");
}

/// Produces a record with no value (a tombstone) and waits for its delivery.
fn produce_tombstone(topic: &str, key: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", helpers::brokers())
        .create()
        .expect("a producer");
    producer
        .send(BaseRecord::<str, [u8]>::to(topic).key(key))
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("delivered");
}

async fn delete_topic(settings: &KafkaSettings, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("broker.address.family", "v4")
        .create()
        .expect("admin client");
    let results = admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .expect("delete request");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Deleted once the broker's metadata no longer has it (before that it might still
    // take a record).
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("broker.address.family", "v4")
        .create()
        .expect("metadata client");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            let gone = rdkafka::consumer::Consumer::fetch_metadata(
                &consumer,
                Some(&topic),
                Duration::from_secs(5),
            )
            .is_ok_and(|m| m.topics().iter().all(|t| t.error().is_some()));
            if gone {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{topic} is still in the broker's metadata");
    })
    .await
    .expect("metadata thread");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_the_topic_does_not_take_is_never_skipped_even_through_a_kill() {
    let settings = fresh_topics("dlq-down");
    create_topics(&settings, 1).await;
    let group = helpers::unique("dlq-down");
    let dlq = format!("{}-dlq", settings.topics.orders);
    // A dead-letter topic the broker refuses (a name Kafka does not allow; serve cannot
    // create it either, so it stays refused); after the kill, serve runs with a good one.
    let refused = format!("{dlq} refused");
    let server = Server::start_with(
        &settings.topics,
        &group,
        &database_url(),
        &[("STOREPULSE_DEAD_LETTER_TOPIC", refused.as_str())],
    );
    let first: Vec<Event> = (0..10)
        .map(|i| order(&format!("a{i}"), T0 + i * 1_000, 1_000))
        .collect();
    produce(&orders(&settings, &first));
    tokio::task::block_in_place(|| server.snapshot_at(10, Duration::from_secs(60)));
    // A poison record and good records follow.
    let mut records = vec![(
        settings.topics.orders.clone(),
        "junk".to_owned(),
        b"not avro at all".to_vec(),
    )];
    let second: Vec<Event> = (10..20)
        .map(|i| order(&format!("a{i}"), T0 + i * 1_000, 1_000))
        .collect();
    records.extend(orders(&settings, &second));
    produce(&records);
    // The live numbers keep moving...
    let live = tokio::task::block_in_place(|| server.snapshot_at(21, Duration::from_secs(60)));
    assert_eq!(berlin(&live).0, 20);
    // ...but the poison record waits for the topic, and says so.
    assert_eq!(server.metric("storepulse_dead_letters_pending"), 1);
    wait_for(
        || {
            let (status, body) = server.get("/readyz");
            status == 503
                && serde_json::from_str::<Value>(&body)
                    .is_ok_and(|b| b["dead_letter_topic"]["ready"] == false)
        },
        "/readyz to report the dead-letter topic",
    )
    .await;
    wait_for(
        || server.metric("storepulse_dead_letter_failures_total") >= 1,
        "a failed attempt to be counted (each attempt has 10 s)",
    )
    .await;
    assert_eq!(server.metric("storepulse_dead_lettered_total"), 0);
    // Killed while it waits: no checkpoint may have covered the poison record.
    server.kill();
    let server = Server::start(&settings.topics, &group, &database_url());
    let end = tokio::task::block_in_place(|| server.snapshot_at(21, Duration::from_secs(60)));
    assert_eq!(berlin(&end).0, 20, "every order counted once");
    let topic = dlq.clone();
    let dead = tokio::task::spawn_blocking(move || {
        helpers::consume_all(&helpers::brokers(), &[&topic], 1, Duration::from_secs(60))
    })
    .await
    .expect("consumer thread");
    assert_eq!(dead[0].key, "junk");
    assert_eq!(dead[0].payload, b"not avro at all");
    wait_for(
        || server.get("/readyz").0 == 200,
        "/readyz once the dead letter is taken",
    )
    .await;
    assert_eq!(server.metric("storepulse_dead_letters_pending"), 0);
    assert!(server.terminate(), "SIGTERM exits 0");
}

/// The dead-letter topic missing after start (Kafka was away when serve made it, or it
/// was deleted): serve creates it when a dead letter fails, and the record is delivered
/// without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_dead_letter_topic_is_created_when_a_poison_record_needs_it() {
    let settings = fresh_topics("dlq-gone");
    create_topics(&settings, 1).await;
    let dlq = format!("{}-dlq", settings.topics.orders);
    let server = Server::start_with(
        &settings.topics,
        &helpers::unique("dlq-gone"),
        &database_url(),
        &[("RUST_LOG", "storepulse=info,warn")],
    );
    produce(&orders(&settings, &[order("a0", T0, 1_000)]));
    tokio::task::block_in_place(|| server.snapshot_at(1, Duration::from_secs(60)));
    delete_topic(&settings, &dlq).await;
    produce_raw(&[(
        settings.topics.orders.as_str(),
        "junk".to_owned(),
        b"not avro at all".to_vec(),
    )]);
    // The first attempt fails after 10 s; then serve creates the topic and sends again.
    wait_for(
        || server.metric("storepulse_dead_lettered_total") == 1,
        "the dead letter to be acknowledged",
    )
    .await;
    assert_eq!(server.metric("storepulse_dead_letters_pending"), 0);
    let topic = dlq.clone();
    let dead = tokio::task::spawn_blocking(move || {
        helpers::consume_all(&helpers::brokers(), &[&topic], 1, Duration::from_secs(30))
    })
    .await
    .expect("consumer thread");
    assert_eq!(dead[0].key, "junk");
    wait_for(
        || server.get("/readyz").0 == 200,
        "/readyz once the dead letter is taken",
    )
    .await;
    assert!(server.terminate(), "SIGTERM exits 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulators_events_ahead_of_the_clock_carry_their_time_and_are_applied() {
    use storepulse::simulate::scenario::ScenarioConfig;
    use storepulse::simulate::{self, SimulateOptions};
    let settings = fresh_topics("ahead");
    create_topics(&settings, 1).await;
    let server = Server::start(&settings.topics, &helpers::unique("ahead"), &database_url());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // Dated from half an hour ahead: an unpaced run of a long history looks like this (the
    // broker refuses timestamps more than its `message.timestamp.after.max.ms`, 1 h, ahead).
    let report = simulate::run(
        &settings,
        SimulateOptions {
            scenario: ScenarioConfig {
                popularity: Default::default(),
                seed: 5,
                start_ms: now + 1_800_000,
                events_per_second: 100.0,
                stores: 2,
                skus_per_store: 5,
                flash_sale: None,
            },
            rate: None,
            count: Some(300),
            duration: None,
            partitions: 1,
            create_topics: false,
            message_timeout: Duration::from_secs(30),
            progress_every: None,
            junk_per_mille: 0,
            key_by_store: false,
            registry: None,
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("simulated");
    assert_eq!(report.acked, 300);
    let snapshot = tokio::task::block_in_place(|| server.snapshot_at(300, Duration::from_secs(60)));
    assert!(snapshot["as_of_ms"].as_i64().expect("as_of") > now + 1_800_000);
    assert_eq!(
        server.metric("storepulse_poison_records_total{reason=\"event_time_in_future\"}"),
        0,
        "their Kafka timestamps are their event times"
    );
}

/// A tombstone (a record with no value) is dead-lettered with reason `tombstone`, and the
/// next record is processed.
#[tokio::test(flavor = "multi_thread")]
async fn a_tombstone_is_dead_lettered_with_its_own_reason() {
    let settings = crate::helpers::fresh_topics("tombstone");
    crate::helpers::create_topics(&settings, 1).await;
    let server = crate::helpers::Server::start(
        &settings.topics,
        &crate::helpers::unique("tombstone"),
        &crate::helpers::database_url(),
    );
    produce_tombstone(&settings.topics.orders, "order-1");
    let dlq = format!("{}-dlq", settings.topics.orders);
    let records = tokio::task::block_in_place(|| {
        crate::helpers::consume_all(
            &crate::helpers::brokers(),
            &[&dlq],
            1,
            Duration::from_secs(60),
        )
    });
    let header = |name: &str| {
        records[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("storepulse-error").as_deref(), Some("tombstone"));
    assert!(
        header("storepulse-reason").is_some_and(|r| r.contains("no value")),
        "{:?}",
        records[0].headers
    );
    let (_, metrics) = server.get("/metrics");
    let poison: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("storepulse_poison_records_total{"))
        .collect();
    assert!(
        poison.contains(&"storepulse_poison_records_total{reason=\"tombstone\"} 1"),
        "{poison:?}"
    );
}

/// Sends one 1 000 000-byte record (the broker takes it; it is poison) and then a good
/// order; returns the dead letter, once the order is applied, and serve's metrics. With
/// `dead_letter_limit` the dead-letter topic is created first with that `max.message.bytes`.
async fn dead_letter_of_a_huge_record(
    name: &str,
    dead_letter_limit: Option<&str>,
) -> (helpers::ConsumedRecord, Vec<u8>, String) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let settings = fresh_topics(name);
    let dlq = format!("{}-dlq", settings.topics.orders);
    if let Some(limit) = dead_letter_limit {
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", helpers::brokers())
            .create()
            .expect("an admin client");
        let topic =
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)).set("max.message.bytes", limit);
        let created = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("the broker answers");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
    }
    create_topics(&settings, 1).await;
    let server = Server::start(&settings.topics, &helpers::unique(name), &database_url());
    // Bytes that do not compress (the dead-letter producer compresses; a topic's limit
    // applies to what it stores).
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let huge: Vec<u8> = (0..1_000_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u8
        })
        .collect();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", helpers::brokers())
        .set("message.max.bytes", "2000000")
        .create()
        .expect("a producer");
    producer
        .send(
            BaseRecord::to(&settings.topics.orders)
                .key("huge")
                .payload(&huge),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    producer
        .flush(Duration::from_secs(30))
        .expect("the broker takes a 1 000 000-byte record");
    produce(&orders(&settings, &[order("after-huge", T0, 1_500)]));
    let snapshot = server.snapshot_at(2, Duration::from_secs(60));
    assert_eq!(berlin(&snapshot).0, 1, "the order after it is applied");
    let record = tokio::task::block_in_place(|| {
        helpers::consume_all(&helpers::brokers(), &[&dlq], 1, Duration::from_secs(60))
    })
    .remove(0);
    wait_for(
        || server.metric("storepulse_dead_lettered_total") == 1,
        "the dead letter is counted once acknowledged",
    )
    .await;
    let (_, metrics) = server.get("/metrics");
    (record, huge, metrics)
}

fn header<'a>(record: &'a helpers::ConsumedRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn sha256_hex(value: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A record too large for a dead letter is not lost: its value is cut to 900 KiB and the
/// headers say the original size and SHA-256; it is counted sent once the broker has it.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_too_large_for_a_dead_letter_is_cut_with_its_size_and_hash() {
    let (record, huge, metrics) = dead_letter_of_a_huge_record("huge-dlq", None).await;
    assert_eq!(record.payload.len(), 900 * 1024);
    assert_eq!(record.payload, huge[..900 * 1024]);
    assert_eq!(header(&record, "storepulse-original-size"), Some("1000000"));
    assert_eq!(
        header(&record, "storepulse-original-sha256"),
        Some(sha256_hex(&huge).as_str())
    );
    assert_eq!(header(&record, "storepulse-source-offset"), Some("0"));
    assert!(
        metrics.contains("storepulse_dead_letter_failures_total 0\n"),
        "nothing failed on the way"
    );
}

/// A dead-letter topic that takes less than 900 KiB: each refusal halves what is kept,
/// until the topic takes it; the failures are counted, the record is there once.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_refused_for_its_size_is_sent_shorter_until_taken() {
    let (record, huge, metrics) = dead_letter_of_a_huge_record("small-dlq", Some("200000")).await;
    // 921 600 → 460 800 → 230 400 → 115 200 bytes: the first that fits 200 000.
    assert_eq!(record.payload.len(), 115_200);
    assert_eq!(record.payload, huge[..115_200]);
    assert_eq!(header(&record, "storepulse-original-size"), Some("1000000"));
    assert_eq!(
        header(&record, "storepulse-original-sha256"),
        Some(sha256_hex(&huge).as_str())
    );
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("storepulse_dead_letter_failures_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(failures, Some(3), "three refusals before it fit");
}
