//! A real schema registry (Apicurio Registry 3.3.3, Confluent-compatible API, started by
//! `scripts/stack up`): records framed with registry ids, a schema evolved mid-stream, an
//! incompatible version and an unknown id dead-lettered, and the registry SIGKILLed while a
//! new id is on its way: every number equals the same events in single-object encoding.

use crate::helpers::{Server, create_topics, database_url, fresh_topics, produce_raw, storepulse};
use serde_json::Value;
use std::time::{Duration, Instant};
use storepulse::events::{Codec, Event};
use storepulse::kafka::KafkaSettings;
use storepulse::simulate::scenario::{Scenario, ScenarioConfig};

/// The stack's registry (its Confluent-compatible API).
fn registry_url() -> String {
    std::env::var("STOREPULSE_STACK_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:18081/apis/ccompat/v7".into())
}

/// `work` with a registry client, off the async runtime (the client is blocking).
async fn with_registry<T: Send + 'static>(
    work: impl FnOnce(&storepulse::registry::RegistryClient) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || {
        let client = storepulse::registry::client(
            &storepulse::config::defaults().schema_registry,
            Some(&registry_url()),
        )
        .expect("a registry client");
        work(&client)
    })
    .await
    .expect("the registry work ran")
}

/// One registry test at a time: one of them kills the registry.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 2026-11-27T14:00:00Z.
const T0: i64 = 1_795_788_000_000;

fn events(seed: u64, count: usize) -> Vec<Event> {
    Scenario::new(ScenarioConfig {
        popularity: Default::default(),
        seed,
        start_ms: T0,
        events_per_second: 50.0,
        stores: 3,
        skus_per_store: 12,
        flash_sale: None,
    })
    .take(count)
    .collect()
}

/// `events` encoded by `encode`, on `settings`' topics, keyed as a producer keys them.
fn produce(settings: &KafkaSettings, events: &[Event], encode: impl Fn(&Event) -> Vec<u8>) {
    let records: Vec<(&str, String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            (
                settings.topics.name(e.kind().topic_role()),
                e.key().to_owned(),
                encode(e),
            )
        })
        .collect();
    produce_raw(&records);
}

/// The whole picture without positions (the two runs' offsets may differ).
fn numbers(mut snapshot: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("position");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut snapshot);
    snapshot
}

fn registry_env() -> Vec<(&'static str, String)> {
    vec![("STOREPULSE_SCHEMA_REGISTRY_URL", registry_url())]
}

fn start(settings: &KafkaSettings, group: &str, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(&settings.topics, group, &database_url(), &env)
}

/// `storepulse simulate --schema-registry … --evolve-schema-at …` against plain records of
/// the same seed: the registry's ids, OrderPlaced's next version mid-stream, the same
/// numbers to the cent.
#[tokio::test]
async fn a_schema_evolved_mid_stream_keeps_every_number_exact() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let plain = fresh_topics("registry-plain");
    let framed = fresh_topics("registry-framed");
    let run = |settings: &KafkaSettings, registry: bool| {
        let mut command = storepulse(&settings.topics);
        command.args([
            "simulate",
            "--quiet",
            "--count",
            "3000",
            "--rate",
            "0",
            "--seed",
            "61",
            "--stores",
            "3",
            "--skus",
            "12",
            "--start",
            "2026-11-27T14:00:00Z",
            "--partitions",
            "3",
        ]);
        if registry {
            command.args([
                "--schema-registry",
                &registry_url(),
                "--evolve-schema-at",
                "1500",
            ]);
        }
        let output = command.output().expect("simulate runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    run(&plain, false);
    let said = run(&framed, true);
    assert!(
        said.contains("(evolved)"),
        "the run evolved a schema: {said}"
    );
    let expected = start(&plain, &crate::helpers::unique("registry-plain"), &[]);
    let under_test = start(
        &framed,
        &crate::helpers::unique("registry-framed"),
        &registry_env(),
    );
    let want = numbers(expected.snapshot_at(3000, Duration::from_secs(90)));
    let got = numbers(under_test.snapshot_at(3000, Duration::from_secs(90)));
    assert_eq!(
        got, want,
        "the registry's framing and evolution change no number"
    );
    // Three subjects, then the orders subject's next version: four ids fetched, once each.
    assert_eq!(
        under_test.metric("storepulse_schema_fetches_total{outcome=\"found\"}"),
        4
    );
    assert_eq!(under_test.metric("storepulse_dead_lettered_total"), 0);
}

/// An id whose schema our readers cannot read, and an id the registry does not have: each
/// record is dead-lettered with its own reason; the records around them are applied.
#[tokio::test]
async fn an_incompatible_version_and_an_unknown_id_are_dead_lettered() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let settings = fresh_topics("registry-refused");
    create_topics(&settings, 1).await;
    let topics = settings.topics.clone();
    let (framing, _) = with_registry(move |client| {
        storepulse::registry::register(client, &topics, false).expect("registered")
    })
    .await;
    // A StockChanged whose delta is text: BACKWARD refuses it as the subject's next
    // version, so a careless producer registers it elsewhere and writes with its id.
    let mut retyped: Value = serde_json::from_str(storepulse::events::codec::current_text(
        storepulse::events::EventKind::StockChanged,
    ))
    .expect("json");
    for field in retyped["fields"].as_array_mut().expect("fields") {
        if field["name"] == "delta" {
            field["type"] = "string".into();
        }
    }
    let subject = format!("{}-value", settings.topics.inventory);
    let elsewhere = format!("{}-careless-value", settings.topics.inventory);
    let text = retyped.to_string();
    let incompatible = with_registry(move |client| {
        let refused = client.register(&subject, &text);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("409")),
            "BACKWARD refuses it: {refused:?}"
        );
        client
            .set_compatibility(&elsewhere, "NONE")
            .expect("compatibility set");
        client
            .register(&elsewhere, &text)
            .expect("registered elsewhere")
    })
    .await;
    let codec = Codec::new(&Default::default()).expect("schemas");
    let all = events(71, 400);
    let stock: Vec<&Event> = all
        .iter()
        .filter(|e| matches!(e, Event::StockChanged(_)))
        .take(2)
        .collect();
    let mut records: Vec<(String, String, Vec<u8>)> = Vec::new();
    let topic = settings.topics.inventory.clone();
    records.push((
        topic.clone(),
        "bad-1".into(),
        codec
            .encode_confluent(incompatible, stock[0])
            .expect("encodes"),
    ));
    records.push((
        topic.clone(),
        "bad-2".into(),
        codec
            .encode_confluent(987_654_321, stock[1])
            .expect("encodes"),
    ));
    let borrowed: Vec<(&str, String, Vec<u8>)> = records
        .iter()
        .map(|(t, k, v)| (t.as_str(), k.clone(), v.clone()))
        .collect();
    produce_raw(&borrowed);
    produce(&settings, &all, |e| {
        framing.encode(&codec, e).expect("encodes")
    });
    let server = start(
        &settings,
        &crate::helpers::unique("registry-refused"),
        &registry_env(),
    );
    let snapshot = server.snapshot_at(402, Duration::from_secs(90));
    assert!(
        snapshot["stores"]
            .as_object()
            .is_some_and(|s| !s.is_empty())
    );
    for (name, value) in [
        (
            "storepulse_poison_records_total{reason=\"incompatible_schema\"}",
            1,
        ),
        (
            "storepulse_poison_records_total{reason=\"unknown_confluent_id\"}",
            1,
        ),
        ("storepulse_dead_lettered_total", 2),
        (
            "storepulse_schema_fetches_total{outcome=\"incompatible\"}",
            1,
        ),
        ("storepulse_schema_fetches_total{outcome=\"not_found\"}", 1),
    ] {
        assert_eq!(server.metric(name), value, "{name}");
    }
    // And the 400 events are exactly what the same events say in single-object encoding.
    assert_eq!(
        numbers(server.snapshot_at(402, Duration::from_secs(30))),
        plain_numbers("registry-refused-plain", 1, &all).await
    );
}

/// What `events` in single-object encoding add up to, on topics of their own with
/// `partitions` partitions, read by a `serve` without a registry.
async fn plain_numbers(name: &str, partitions: i32, events: &[Event]) -> Value {
    let codec = Codec::new(&Default::default()).expect("schemas");
    let plain = fresh_topics(name);
    create_topics(&plain, partitions).await;
    produce(&plain, events, |e| codec.encode(e).expect("encodes"));
    let expected = start(&plain, &crate::helpers::unique(name), &[]);
    let records = i64::try_from(events.len()).expect("a count");
    numbers(expected.snapshot_at(records, Duration::from_secs(90)))
}

/// The checkout under test (at run time: one target folder may serve several clones).
fn repo() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// The registry's process id, from the stack's pid file.
fn registry_pid() -> u32 {
    let dir =
        std::env::var("STOREPULSE_STACK_DIR").unwrap_or_else(|_| format!("{}/.stack", repo()));
    std::fs::read_to_string(format!("{dir}/registry/registry.pid"))
        .expect("the stack started the registry")
        .trim()
        .parse()
        .expect("a pid")
}

/// SIGKILL the registry while records of an id `serve` has not seen are on their way: the
/// partitions holding them wait (the others go on), nothing is skipped, and once the
/// registry is back every number is exact.
#[tokio::test]
async fn a_registry_killed_mid_run_loses_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let settings = fresh_topics("registry-killed");
    create_topics(&settings, 2).await;
    // The next version is registered now; serve learns its id only when a record has it.
    let topics = settings.topics.clone();
    let ((first, _), (evolved, _)) = with_registry(move |client| {
        (
            storepulse::registry::register(client, &topics, false).expect("registered"),
            storepulse::registry::register(client, &topics, true).expect("registered"),
        )
    })
    .await;
    let codec = Codec::new(&Default::default()).expect("schemas");
    let all = events(81, 1_200);
    let (before, after) = all.split_at(600);
    produce(&settings, before, |e| {
        first.encode(&codec, e).expect("encodes")
    });
    let server = start(
        &settings,
        &crate::helpers::unique("registry-killed"),
        &registry_env(),
    );
    server.snapshot_at(600, Duration::from_secs(90));

    let pid = registry_pid();
    crate::helpers::signal(pid, "KILL");
    produce(&settings, after, |e| {
        evolved.encode(&codec, e).expect("encodes")
    });
    // Orders now carry the evolved id: their partitions wait for it; inventory and activity
    // (ids it knows) go on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("storepulse_schema_registry_down") != 1
        || server.metric("storepulse_schema_waiting_partitions") == 0
    {
        assert!(
            Instant::now() < deadline,
            "the wait for the registry is visible"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let waiting = server.rollup_at(600, Duration::from_secs(10));
    assert!(
        crate::helpers::position_total(&waiting) < 1_200,
        "orders wait"
    );
    assert_eq!(
        server.metric("storepulse_dead_lettered_total"),
        0,
        "nothing skipped"
    );

    // Gone, as a crashed registry would be, before it is started again.
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let restarted =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"))
            .args(["up", "registry"])
            .output()
            .expect("scripts/stack runs");
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let got = numbers(server.snapshot_at(1_200, Duration::from_secs(90)));
    assert_eq!(server.metric("storepulse_schema_waiting_partitions"), 0);
    assert_eq!(server.metric("storepulse_schema_registry_down"), 0);
    assert_eq!(server.metric("storepulse_dead_lettered_total"), 0);
    assert_eq!(
        got,
        plain_numbers("registry-killed-plain", 2, &all).await,
        "nothing lost, nothing twice"
    );
}
