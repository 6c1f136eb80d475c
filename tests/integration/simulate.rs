//! The simulator against the real broker: what it produces is exactly what the scenario
//! generates, keyed and partitioned so each SKU's history stays in order; and a run that
//! cannot deliver says so and fails.

use crate::helpers::{self, consume_all, fresh_topics};
use std::collections::HashMap;
use std::time::Duration;
use storepulse::events::{Codec, Event, TopicRole};
use storepulse::simulate::scenario::{FlashSale, Scenario, ScenarioConfig};
use storepulse::simulate::{self, SimulateError, SimulateOptions};
use tokio_util::sync::CancellationToken;

fn scenario(seed: u64) -> ScenarioConfig {
    ScenarioConfig {
        popularity: Default::default(),
        seed,
        start_ms: 1_795_773_600_000,
        events_per_second: 1_000.0,
        stores: 3,
        skus_per_store: 15,
        flash_sale: Some(FlashSale {
            starts_after_ms: 1_000,
            duration_ms: 3_000,
            skus_per_store: 2,
            oversell: true,
            discount_percent: 30,
        }),
    }
}

fn options(seed: u64, count: u64) -> SimulateOptions {
    SimulateOptions {
        scenario: scenario(seed),
        rate: None,
        count: Some(count),
        duration: None,
        partitions: 3,
        create_topics: true,
        message_timeout: Duration::from_secs(30),
        progress_every: None,
        junk_per_mille: 0,
        key_by_store: false,
        registry: None,
    }
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3] == "01"
        && parts[1..3]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()) && p.bytes().any(|b| b != b'0'))
}

#[tokio::test]
async fn simulated_records_round_trip_through_kafka_exactly() {
    const COUNT: u64 = 5_000;
    let settings = fresh_topics("roundtrip");
    let report = simulate::run(&settings, options(11, COUNT), CancellationToken::new())
        .await
        .expect("every record is delivered");
    assert_eq!(
        (report.produced, report.acked, report.failed),
        (COUNT, COUNT, 0)
    );

    let topics: Vec<String> = settings.topics.all().map(str::to_owned).to_vec();
    let records = tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consume_all(
            &helpers::brokers(),
            &topics,
            COUNT as usize,
            Duration::from_secs(60),
        )
    })
    .await
    .expect("consumer thread");
    assert_eq!(
        records.len(),
        COUNT as usize,
        "nothing more than was produced"
    );

    let expected: Vec<Event> = Scenario::new(scenario(11)).take(COUNT as usize).collect();
    let generation_index: HashMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id(), i))
        .collect();
    let codec = Codec::new(&Default::default()).expect("schemas load");
    let mut seen = vec![false; expected.len()];
    let mut last_index_per_partition: HashMap<(String, i32), (i64, usize)> = HashMap::new();
    let mut partition_of_sku: HashMap<String, i32> = HashMap::new();
    for record in &records {
        let event = codec.decode(&record.payload).expect("every record decodes");
        let index = generation_index[event.event_id()];
        assert_eq!(event, expected[index], "content survives the trip");
        assert!(!seen[index], "no duplicate: {}", event.event_id());
        seen[index] = true;
        assert_eq!(record.key, event.key(), "keyed by order id, SKU or session");
        assert_eq!(
            record.topic,
            settings.topics.name(event.kind().topic_role()),
            "{:?} lands on its topic",
            event.kind()
        );
        let trace = record.traceparent.as_deref().expect("traceparent header");
        assert!(is_traceparent(trace), "W3C traceparent: {trace}");
        // Within a partition, offsets are dense from 0 and follow generation order.
        let (next_offset, last_index) = last_index_per_partition
            .entry((record.topic.clone(), record.partition))
            .or_insert((0, 0));
        assert_eq!(
            record.offset, *next_offset,
            "no offset skipped or read twice"
        );
        assert!(
            index >= *last_index,
            "partition order follows generation order"
        );
        *next_offset += 1;
        *last_index = index;
        if event.kind().topic_role() == TopicRole::Inventory {
            let partition = *partition_of_sku
                .entry(record.key.clone())
                .or_insert(record.partition);
            assert_eq!(partition, record.partition, "one SKU, one partition");
        }
    }
    assert!(seen.iter().all(|s| *s), "every generated event arrived");
    let partitions_used: std::collections::HashSet<i32> =
        records.iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions_used.len(),
        3,
        "records spread over all partitions"
    );
}

#[tokio::test]
async fn a_paced_run_stops_at_its_count() {
    let settings = fresh_topics("paced");
    let mut options = options(12, 300);
    options.rate = Some(2_000.0);
    let report = simulate::run(&settings, options, CancellationToken::new())
        .await
        .expect("delivered");
    assert_eq!((report.produced, report.acked), (300, 300));
}

#[tokio::test]
async fn producing_to_a_missing_topic_counts_every_failure_and_errors() {
    let settings = fresh_topics("missing");
    let mut options = options(13, 25);
    options.create_topics = false;
    options.message_timeout = Duration::from_secs(2);
    let error = simulate::run(&settings, options, CancellationToken::new())
        .await
        .expect_err("nothing can be delivered to a topic that does not exist");
    let SimulateError::Undelivered { report } = error else {
        panic!("expected an undelivered report, got {error}");
    };
    assert_eq!(report.produced, 25);
    assert_eq!(report.acked, 0);
    assert_eq!(report.failed, 25);
    assert!(report.first_error.is_some(), "the cause is reported");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
    let mut settings = fresh_topics("unreachable");
    // Nothing listens on port 1 of the loopback.
    settings.brokers = "127.0.0.1:1".into();
    let mut options = options(15, 10);
    options.message_timeout = Duration::from_secs(2);
    let error = simulate::run(&settings, options, CancellationToken::new())
        .await
        .expect_err("no broker, no simulation");
    assert!(
        matches!(error, SimulateError::Kafka(_)),
        "a kafka error before producing, got {error}"
    );
}

#[tokio::test]
async fn a_cancelled_run_flushes_what_it_produced() {
    let settings = fresh_topics("cancelled");
    let mut options = options(14, u64::MAX);
    options.count = None;
    options.rate = Some(500.0);
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        stopper.cancel();
    });
    let report = simulate::run(&settings, options, stop)
        .await
        .expect("a cancelled run still delivers what it produced");
    assert!(report.produced > 0);
    assert_eq!(report.acked, report.produced);
}

/// Runs `storepulse simulate ARGS` on fresh topics, named through the environment
/// variables (which the binary reads), against the broker under test.
fn simulate_cli(name: &str, args: &[&str]) -> std::process::Output {
    let topics = fresh_topics(name).topics;
    crate::helpers::storepulse(&topics)
        .arg("simulate")
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn the_cli_reports_what_reached_kafka() {
    let out = simulate_cli(
        "cli",
        &["--count", "400", "--rate", "0", "--quiet", "--seed", "5"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("produced 400 records"), "{stdout}");
    assert!(
        stdout.contains("400 acknowledged by kafka, 0 failed"),
        "{stdout}"
    );
    // The high watermarks of the fresh topics add up to what was produced.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("records in kafka now"))
        .expect("watermark line");
    assert!(
        line.contains("test-cli-"),
        "the topics from the environment: {line}"
    );
    let total: i64 = line
        .split_whitespace()
        .filter_map(|w| w.split_once('=').and_then(|(_, n)| n.parse::<i64>().ok()))
        .sum();
    assert_eq!(total, 400, "{line}");
}

#[test]
fn the_cli_exits_non_zero_when_records_are_not_delivered() {
    let out = simulate_cli(
        "cli-missing",
        &[
            "--count",
            "5",
            "--quiet",
            "--no-create-topics",
            "--message-timeout",
            "2s",
        ],
    );
    assert!(!out.status.success(), "undelivered records fail the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("5 of 5 records were not delivered"),
        "{stderr}"
    );
}

#[test]
fn the_cli_rejects_an_impossible_scenario_with_a_reason() {
    let out = simulate_cli("cli-stores", &["--stores", "10001", "--count", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stores must be between 1 and 10000"),
        "{stderr}"
    );
}

/// `--junk-per-mille`: a buggy producer's records reach serve as what they are. Every junk
/// store id beyond `aggregate.max_stores` is `store_limit`, every absurd amount `invalid`,
/// every record without a timestamp dated ten years ahead refused by the event-time guard;
/// the real stores' day stays where the real records put it.
#[tokio::test(flavor = "multi_thread")]
async fn a_buggy_producers_records_are_dead_lettered_by_their_reasons() {
    const COUNT: u64 = 3_000;
    let settings = fresh_topics("buggy");
    let mut run = options(21, COUNT);
    run.junk_per_mille = 300;
    let report = simulate::run(&settings, run, CancellationToken::new())
        .await
        .expect("every record is delivered");
    assert_eq!(report.acked, COUNT);
    let server = helpers::Server::start_with(
        &settings.topics,
        &helpers::unique("buggy"),
        &helpers::database_url(),
        &[("STOREPULSE_MAX_STORES", "10")],
    );
    let snapshot =
        tokio::task::block_in_place(|| server.snapshot_at(COUNT as i64, Duration::from_secs(90)));
    let stores = snapshot["stores"].as_object().expect("stores");
    assert_eq!(
        stores.len(),
        10,
        "three real stores and seven junk ones, then the limit"
    );
    for real in ["store-berlin", "store-nyc", "store-tokyo"] {
        assert!(stores.contains_key(real), "{real}");
    }
    let reason = |r: &str| {
        server.metric(&format!(
            "storepulse_poison_records_total{{reason=\"{r}\"}}"
        ))
    };
    let (limit, invalid, future, none) = (
        reason("store_limit"),
        reason("invalid"),
        reason("event_time_in_future"),
        reason("no_timestamp"),
    );
    assert!(
        limit > 100 && invalid > 50 && future + none > 100,
        "{limit} {invalid} {future} {none}"
    );
    // The newest event is a real one: 3 000 records at 1 000/s of event time.
    let as_of = snapshot["as_of_ms"].as_i64().expect("as_of");
    assert!(as_of < 1_795_773_600_000 + 10_000, "{as_of}");
    assert!(server.terminate());
}
