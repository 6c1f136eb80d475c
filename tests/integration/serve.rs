//! `storepulse serve` against the real broker and database: exact numbers, dead letters,
//! crashes at random points, a clean restart, and PostgreSQL going away and coming back.

use crate::helpers::{
    self, Server, create_topics, database_url, fresh_topics, position_total, produce_raw, wait_for,
};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use storepulse::events::{
    Channel, Codec, Event, OrderCancelled, OrderLine, OrderPlaced, SessionSeen, StockChangeReason,
    StockChanged,
};
use storepulse::kafka::KafkaSettings;
use storepulse::simulate::scenario::{FlashSale, ScenarioConfig};
use storepulse::simulate::{self, SimulateOptions};
use tokio_util::sync::CancellationToken;

/// 2026-11-27T14:00:00Z: 15:00 in Berlin, 23:00 in Tokyo.
const T0: i64 = 1_795_788_000_000;
const MIN: i64 = 60_000;

fn order(id: &str, store: &str, at: i64, total: i64, currency: &str) -> Event {
    Event::OrderPlaced(OrderPlaced {
        event_id: format!("ev-{id}"),
        store_id: store.into(),
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
        currency: currency.into(),
        channel: Channel::Web,
    })
}

fn stock(id: &str, sku: &str, at: i64, level: i64) -> Event {
    Event::StockChanged(StockChanged {
        event_id: id.into(),
        store_id: "store-berlin".into(),
        occurred_at: at,
        sku: sku.into(),
        name: format!("Product {sku}"),
        new_level: level,
        delta: 0,
        reason: StockChangeReason::Correction,
    })
}

fn session(id: &str, at: i64, user: Option<&str>) -> Event {
    Event::SessionSeen(SessionSeen {
        event_id: format!("ev-{id}"),
        store_id: "store-berlin".into(),
        occurred_at: at,
        session_id: id.into(),
        user_id: user.map(str::to_owned),
    })
}

fn money(list: &Value, currency: &str) -> Option<i64> {
    list.as_array()?
        .iter()
        .find(|m| m["currency"] == currency)
        .and_then(|m| m["minor"].as_i64())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_snapshot_equals_independently_computed_numbers_and_poison_goes_to_the_dead_letter_topic()
 {
    let settings = fresh_topics("exact");
    create_topics(&settings, 3).await;
    let codec = Codec::new(&Default::default()).expect("schemas");
    let encode = |e: &Event| codec.encode(e).expect("encodes");
    let t = &settings.topics;
    let b2 = order("b2", "store-berlin", T0 + 60 * MIN, 2_500, "EUR");
    let mut invalid = order("bad", "store-berlin", T0 + 61 * MIN, 100, "EUR");
    if let Event::OrderPlaced(o) = &mut invalid {
        o.currency = "euro".into();
    }
    let events: Vec<(&str, Event)> = vec![
        (
            &t.orders,
            order("b1", "store-berlin", T0 + 50 * MIN, 10_000, "EUR"),
        ),
        (&t.orders, b2.clone()),
        (&t.orders, b2), // a redelivery: same event id, same key
        (
            &t.orders,
            order("b3", "store-berlin", T0 + 70 * MIN, 4_000, "USD"),
        ),
        // 40 minutes older than the newest Berlin event: late, still today.
        (
            &t.orders,
            order("b4", "store-berlin", T0 + 30 * MIN, 1_000, "EUR"),
        ),
        (
            &t.orders,
            Event::OrderCancelled(OrderCancelled {
                event_id: "ev-cancel-b1".into(),
                store_id: "store-berlin".into(),
                occurred_at: T0 + 68 * MIN,
                order_id: "b1".into(),
                order_placed_at: T0 + 50 * MIN,
                total_minor: 10_000,
                currency: "EUR".into(),
                reason: "customer request".into(),
            }),
        ),
        // Tokyo: 23:10 on the 27th, then 00:05 and 00:06 on the 28th.
        (
            &t.orders,
            order("t1", "store-tokyo", T0 + 10 * MIN, 1_500, "JPY"),
        ),
        (
            &t.orders,
            order("t2", "store-tokyo", T0 + 65 * MIN, 2_000, "JPY"),
        ),
        (
            &t.orders,
            order("t3", "store-tokyo", T0 + 66 * MIN, 3_000, "JPY"),
        ),
        (&t.inventory, stock("s1", "BER-0001", T0 + 40 * MIN, 50)),
        (&t.inventory, stock("s2", "BER-0001", T0 + 69 * MIN, 5)),
        (&t.inventory, stock("s3", "BER-0002", T0 + 40 * MIN, 3)),
        (&t.inventory, stock("s4", "BER-0002", T0 + 69 * MIN, -2)),
        (&t.inventory, stock("s5", "BER-0003", T0 + 40 * MIN, 100)),
        (&t.activity, session("sess-1", T0 + 69 * MIN, Some("u1"))),
        (&t.activity, session("sess-2", T0 + 69 * MIN, Some("u1"))),
        (&t.activity, session("sess-3", T0 + 69 * MIN, None)),
    ];
    let mut records: Vec<(&str, String, Vec<u8>)> = events
        .iter()
        .map(|(topic, e)| (*topic, e.key().to_owned(), encode(e)))
        .collect();
    records.push((&t.orders, "junk".into(), b"not avro at all".to_vec()));
    records.push((&t.orders, "bad".into(), encode(&invalid)));
    let total = records.len() as i64;
    produce_raw(&records);

    let group = helpers::unique("exact-group");
    let server = Server::start(&settings.topics, &group, &database_url());
    let snapshot = tokio::task::spawn_blocking(move || {
        let s = server.snapshot_at(total, Duration::from_secs(60));
        (server, s)
    })
    .await
    .expect("snapshot thread");
    let (server, snapshot) = snapshot;
    assert_eq!(
        position_total(&snapshot),
        total,
        "every record, poison too, moved the position"
    );

    let berlin = &snapshot["stores"]["store-berlin"];
    assert_eq!(berlin["day"], "2026-11-27");
    assert_eq!(
        berlin["orders_today"], 4,
        "b1 b2 b3 b4; the redelivery counted once"
    );
    assert_eq!(berlin["cancelled_today"], 1);
    assert_eq!(
        money(&berlin["revenue_today"], "EUR"),
        Some(10_000 + 2_500 + 1_000 - 10_000)
    );
    assert_eq!(money(&berlin["revenue_today"], "USD"), Some(4_000));
    assert_eq!(
        money(&berlin["average_order_value"], "EUR"),
        Some(13_500 / 3)
    );
    let per_minute: i64 = berlin["per_minute"]
        .as_array()
        .expect("minutes")
        .iter()
        .map(|m| m["orders"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        per_minute, 4,
        "all four within the last hour of Berlin's event time"
    );
    let recent = berlin["recent_orders"].as_array().expect("orders");
    assert_eq!(recent.len(), 4);
    assert_eq!(recent[0]["order_id"], "b3", "newest first");
    assert!(
        recent
            .iter()
            .any(|o| o["order_id"] == "b1" && o["cancelled"] == true)
    );
    assert_eq!(
        berlin["active_users"]["today"], 2,
        "u1 (two sessions) and sess-3"
    );
    // Every level, a page at a time (the catalog is not in snapshots).
    let page = |query: &str| -> Value {
        let (status, body) = server.get(&format!("/api/stock?store=store-berlin{query}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    };
    let levels = |page: &Value| -> Vec<(String, i64)> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|s| {
                (
                    s["sku"].as_str().unwrap_or("").to_owned(),
                    s["level"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    };
    let first = page("&limit=2");
    assert_eq!(first["skus"], 3);
    assert_eq!(first["next"], "BER-0002");
    let second = page("&limit=2&after=BER-0002");
    assert!(second["next"].is_null(), "the last page");
    assert_eq!(
        [levels(&first), levels(&second)].concat(),
        vec![
            ("BER-0001".into(), 5),
            ("BER-0002".into(), -2),
            ("BER-0003".into(), 100)
        ]
    );
    assert_eq!(berlin["counts"]["skus"], 3);
    assert_eq!(berlin["counts"]["oversold"], 1);
    assert_eq!(server.get("/api/stock").0, 400, "a store is required");
    assert_eq!(server.get("/api/stock?store=store-berlin&limit=0").0, 400);
    assert_eq!(
        server.get("/api/stock?store=store-berlin&limit=1001").0,
        400
    );
    assert_eq!(server.get("/api/stock?store=store-atlantis").0, 404);
    assert_eq!(berlin["low_stock"][0]["sku"], "BER-0001");
    assert_eq!(berlin["low_stock"].as_array().map(Vec::len), Some(1));
    assert_eq!(berlin["oversold"][0]["sku"], "BER-0002");

    let tokyo = &snapshot["stores"]["store-tokyo"];
    assert_eq!(
        tokyo["day"], "2026-11-28",
        "Tokyo's day rolled over by event time"
    );
    assert_eq!(tokyo["time_zone"], "Asia/Tokyo");
    assert_eq!(tokyo["orders_today"], 2);
    assert_eq!(money(&tokyo["revenue_today"], "JPY"), Some(5_000));

    let all = &snapshot["all_stores"];
    assert_eq!(all["orders_today"], 6);
    assert_eq!(money(&all["revenue_today"], "JPY"), Some(5_000));
    assert_eq!(all["cancelled_today"], 1);

    let (status, single) = server.get("/api/snapshot?store=store-tokyo");
    assert_eq!(status, 200);
    let single: Value = serde_json::from_str(&single).expect("json");
    assert!(single["all_stores"].is_null() && single["stores"]["store-berlin"].is_null());
    assert_eq!(server.get("/api/snapshot?store=store-atlantis").0, 404);
    assert_eq!(server.get("/api/snapshot?shop=x").0, 400);
    assert_eq!(server.get("/healthz").0, 200);

    let (_, metrics) = server.get("/metrics");
    let metric = |name: &str| -> i64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(metric("storepulse_duplicate_events_total"), 1);
    assert!(metric("storepulse_late_events_total") >= 1);
    assert_eq!(
        metric("storepulse_poison_records_total{reason=\"unknown_framing\"}"),
        1
    );
    assert_eq!(
        metric("storepulse_poison_records_total{reason=\"invalid\"}"),
        1
    );

    // Both poison records are in the dead-letter topic, bytes and origin intact.
    let dlq = format!("{}-dlq", settings.topics.orders);
    let dead = tokio::task::spawn_blocking(move || {
        helpers::consume_all(&helpers::brokers(), &[&dlq], 2, Duration::from_secs(30))
    })
    .await
    .expect("consumer thread");
    let junk = dead
        .iter()
        .find(|r| r.key == "junk")
        .expect("the junk record");
    assert_eq!(junk.payload, b"not avro at all");
    assert!(dead.iter().any(|r| r.key == "bad"));
    assert!(server.terminate(), "SIGTERM exits 0");
}

/// Produces a seeded flash sale; returns how many records it produced.
async fn produce_flash_sale(
    settings: &KafkaSettings,
    seed: u64,
    count: u64,
    rate: Option<f64>,
) -> i64 {
    let report = simulate::run(
        settings,
        SimulateOptions {
            scenario: ScenarioConfig {
                popularity: Default::default(),
                seed,
                start_ms: T0,
                events_per_second: 200.0,
                stores: 3,
                skus_per_store: 20,
                flash_sale: Some(FlashSale {
                    starts_after_ms: 5_000,
                    duration_ms: 60_000,
                    skus_per_store: 2,
                    oversell: true,
                    discount_percent: 30,
                }),
            },
            rate,
            count: Some(count),
            duration: None,
            partitions: 3,
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
    .expect("delivered");
    report.acked as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_random_points_then_restarted_ends_equal_to_an_uninterrupted_run() {
    let settings = fresh_topics("crash");
    create_topics(&settings, 3).await;
    let group = helpers::unique("crash-group");
    let url = database_url();
    // The simulator runs while serve is killed and restarted.
    let producer_settings = settings.clone();
    let producing = tokio::spawn(async move {
        produce_flash_sale(&producer_settings, 21, 12_000, Some(4_000.0)).await
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    for _ in 0..4 {
        let server = Server::start(&settings.topics, &group, &url);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        server.kill();
    }
    let total = producing.await.expect("producer task");
    let topics = settings.topics.clone();
    let url_after = url.clone();
    let (restarted, fresh) = tokio::task::spawn_blocking(move || {
        let server = Server::start(&topics, &group, &url_after);
        let restarted = server.snapshot_at(total, Duration::from_secs(90));
        // A clean restart too: SIGTERM writes a final checkpoint, the next start resumes it.
        assert!(server.terminate(), "SIGTERM exits 0");
        let server = Server::start(&topics, &group, &url_after);
        let resumed = server.snapshot_at(total, Duration::from_secs(60));
        assert_eq!(resumed, restarted, "a clean restart changes nothing");
        drop(server);
        // An uninterrupted run over the same records, from no checkpoint.
        let fresh = Server::start(&topics, &helpers::unique("crash-fresh"), &url_after)
            .snapshot_at(total, Duration::from_secs(90));
        (restarted, fresh)
    })
    .await
    .expect("server thread");
    assert_eq!(position_total(&restarted), total);
    assert_eq!(restarted, fresh, "crashes left no trace in the numbers");
}

fn stack(args: &[&str], dir: &std::path::Path, port: u16) -> std::process::Output {
    Command::new("bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stack"))
        .args(args)
        .env("STOREPULSE_STACK_DIR", dir)
        .env("STOREPULSE_PG_PORT", port.to_string())
        .output()
        .expect("scripts/stack runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_going_away_delays_checkpoints_but_never_processing() {
    // A PostgreSQL of this test's own, so stopping it disturbs no other test.
    let dir = std::env::temp_dir().join(helpers::unique("pg"));
    let port: u16 = 20_000 + (rand::random::<u16>() % 9_000);
    let _cleanup = PrivateStack {
        dir: dir.clone(),
        port,
    };
    let up = stack(&["up", "postgres"], &dir, port);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let url = format!("postgres://postgres@127.0.0.1:{port}/storepulse");

    let settings = fresh_topics("pgdown");
    create_topics(&settings, 3).await;
    let first = produce_flash_sale(&settings, 31, 3_000, None).await;
    let group = helpers::unique("pgdown-group");
    let server = Server::start(&settings.topics, &group, &url);
    let metric = |server: &Server, name: &str| -> i64 {
        let (_, text) = server.get("/metrics");
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let server = tokio::task::spawn_blocking(move || {
        server.snapshot_at(first, Duration::from_secs(60));
        server
    })
    .await
    .expect("thread");
    wait_for(
        || metric(&server, "storepulse_checkpoints_total") >= 1,
        "a first checkpoint",
    )
    .await;

    let down = stack(&["down", "postgres"], &dir, port);
    assert!(down.status.success());
    let more = produce_flash_sale(&settings, 32, 2_000, None).await;
    let (server, during) = tokio::task::spawn_blocking(move || {
        let s = server.snapshot_at(first + more, Duration::from_secs(60));
        (server, s)
    })
    .await
    .expect("thread");
    assert_eq!(
        position_total(&during),
        first + more,
        "processing went on without postgres"
    );
    wait_for(
        || metric(&server, "storepulse_checkpoint_failures_total") >= 1,
        "a failed checkpoint",
    )
    .await;
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 503, "{body}");
    let readiness: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(readiness["checkpoint_store"]["ready"], false);
    assert_eq!(readiness["consumer"]["ready"], true);

    // Read before the database returns: no checkpoint can be written until it does.
    let written = metric(&server, "storepulse_checkpoints_total");
    let up = stack(&["up", "postgres"], &dir, port);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    wait_for(
        || metric(&server, "storepulse_checkpoints_total") > written,
        "checkpoints to resume",
    )
    .await;
    wait_for(|| server.get("/readyz").0 == 200, "ready again").await;
    // The checkpoint written after the outage restores the same numbers on a restart.
    let (restored, position) = tokio::task::spawn_blocking(move || {
        server.kill();
        let server = Server::start(&settings.topics, &group, &url);
        let (_, metrics) = server.get("/metrics");
        let s = server.snapshot_at(first + more, Duration::from_secs(60));
        (s, metrics)
    })
    .await
    .expect("thread");
    assert_eq!(restored, during, "exact across the outage and a restart");
    assert!(
        position.contains("storepulse_events_applied_total"),
        "{position}"
    );
}

/// Stops and deletes a test's own PostgreSQL, also when the test fails.
struct PrivateStack {
    dir: PathBuf,
    port: u16,
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = stack(&["clean"], &self.dir, self.port);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_of_another_format_is_ignored_and_the_state_rebuilt_from_kafka() {
    use sqlx::Connection;
    let settings = fresh_topics("format");
    create_topics(&settings, 3).await;
    let total = produce_flash_sale(&settings, 41, 1_500, None).await;
    let group = helpers::unique("format-group");
    let url = database_url();
    let topics = settings.topics.clone();
    let (group_used, expected) = {
        let (g, u) = (group.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let server = Server::start(&topics, &g, &u);
            let snapshot = server.snapshot_at(total, Duration::from_secs(60));
            assert!(server.terminate(), "a final checkpoint on SIGTERM");
            (g, snapshot)
        })
        .await
        .expect("thread")
    };
    // Make every checkpoint of the group look like an older format with unreadable state.
    let mut db = sqlx::PgConnection::connect(&url).await.expect("postgres");
    let changed = sqlx::query(
        "UPDATE checkpoints SET format_version = 0, state = '\\x00ff' WHERE group_name = $1",
    )
    .bind(&group_used)
    .execute(&mut db)
    .await
    .expect("update")
    .rows_affected();
    assert!(changed >= 1, "serve wrote checkpoints");
    let topics = settings.topics.clone();
    let rebuilt = tokio::task::spawn_blocking(move || {
        Server::start(&topics, &group, &url).snapshot_at(total, Duration::from_secs(60))
    })
    .await
    .expect("thread");
    assert_eq!(rebuilt, expected, "rebuilt from kafka, not misread");
}

/// `serve` stopped while its checkpoint store is away exits non-zero and says why: a
/// supervisor must not take a lost final checkpoint for a clean stop.
#[tokio::test(flavor = "multi_thread")]
async fn serve_exits_non_zero_when_its_final_checkpoint_fails() {
    let settings = crate::helpers::fresh_topics("final-checkpoint");
    crate::helpers::create_topics(&settings, 1).await;
    let log_path = std::env::temp_dir().join(format!(
        "{}.log",
        crate::helpers::unique("final-checkpoint")
    ));
    let log = std::fs::File::create(&log_path).expect("log file");
    // Nothing listens on port 1: every checkpoint fails.
    let server = Server::start_logging(
        &settings.topics,
        &crate::helpers::unique("final-checkpoint"),
        "postgres://postgres@127.0.0.1:1/none",
        &[],
        log.into(),
    );
    crate::helpers::wait_for(|| server.get("/healthz").0 == 200, "serve answers").await;
    let clean = tokio::task::block_in_place(|| server.terminate());
    assert!(!clean, "exit status is non-zero");
    let text = std::fs::read_to_string(&log_path).expect("log");
    assert!(text.contains("final checkpoint failed"), "{text}");
    let _ = std::fs::remove_file(&log_path);
}

/// `serve` without access control refuses a non-loopback address (anyone who reaches it
/// would read every store) and says what to set; a misspelt variable stops it too.
#[test]
fn serve_refuses_to_serve_everyone_on_a_non_loopback_address_and_a_misspelt_variable() {
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_storepulse"));
        command.arg("serve").env("RUST_BACKTRACE", "0");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("serve runs")
    };
    let open = run(&[("STOREPULSE_HTTP_ADDR", "0.0.0.0:0")]);
    assert!(!open.status.success());
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("auth.allow_anonymous"), "{stderr}");
    let typo = run(&[("STOREPULSE_HTTP_ADR", "0.0.0.0:0")]);
    assert!(!typo.status.success());
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        stderr.contains("did you mean STOREPULSE_HTTP_ADDR?"),
        "{stderr}"
    );
}

/// Key rotation: a key dropped from the JWKS file stops verifying once serve gets SIGHUP,
/// and a broken file on SIGHUP keeps the keys in use.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_jwks_file() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let settings = crate::helpers::fresh_topics("sighup");
    crate::helpers::create_topics(&settings, 1).await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
    let rsa = EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{fixtures}/rsa-private.pem")).expect("fixture"),
    )
    .expect("rsa key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some("rsa-1".into());
    let jwks = std::env::temp_dir().join(format!("{}.json", crate::helpers::unique("jwks")));
    let set = |keys: Vec<jsonwebtoken::jwk::Jwk>| {
        serde_json::to_vec(&jsonwebtoken::jwk::JwkSet { keys }).expect("json")
    };
    std::fs::write(&jwks, set(vec![jwk])).expect("write");
    let jwks_path = jwks.display().to_string();
    let server = Server::start_with(
        &settings.topics,
        &crate::helpers::unique("sighup"),
        &crate::helpers::database_url(),
        &[
            ("STOREPULSE_AUTH_MODE", "jwt"),
            ("STOREPULSE_AUTH_JWKS_FILE", jwks_path.as_str()),
        ],
    );
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let token = storepulse::auth::sign(
        &header,
        &rsa,
        &storepulse::auth::Grant {
            subject: "rotated".into(),
            stores: None,
            role: storepulse::auth::Role::Viewer,
            expires_at_s: now_s + 600,
        },
    )
    .expect("signs");
    let bearer = format!("Bearer {token}");
    let session = || {
        crate::helpers::try_http_get(
            &server.address,
            "/api/session",
            &[("Authorization", &bearer)],
        )
        .expect("answers")
        .0
    };
    assert_eq!(session(), 200, "the JWKS key verifies");
    let hangup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    // A broken file: the keys in use stay.
    std::fs::write(&jwks, b"{ not json").expect("write");
    hangup(server.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(session(), 200, "a broken file keeps the keys in use");
    // The key rotated out: refused after the reload.
    std::fs::write(&jwks, set(vec![])).expect("write");
    hangup(server.pid());
    crate::helpers::wait_for(|| session() == 401, "the rotated-out key is refused").await;
    let _ = std::fs::remove_file(&jwks);
}

/// A partition whose records were all deleted by retention (a topic quiet for longer than
/// its retention), read with no checkpoint: nothing is left to read, so serve is caught up
/// and ready, not lagging by the deleted records forever.
#[tokio::test(flavor = "multi_thread")]
async fn records_deleted_by_retention_are_not_lag() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let settings = helpers::fresh_topics("retention");
    helpers::create_topics(&settings, 1).await;
    let records: Vec<(&str, String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                settings.topics.activity.as_str(),
                format!("k{i}"),
                b"gone".to_vec(),
            )
        })
        .collect();
    helpers::produce_raw(&records);
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", helpers::brokers())
        .set("broker.address.family", "v4")
        .create()
        .expect("admin client");
    let mut before = rdkafka::TopicPartitionList::new();
    before
        .add_partition_offset(&settings.topics.activity, 0, rdkafka::Offset::Offset(20))
        .expect("offset");
    admin
        .delete_records(&before, &AdminOptions::new())
        .await
        .expect("records deleted");
    let server = helpers::Server::start_with(
        &settings.topics,
        &helpers::unique("retention"),
        &helpers::database_url(),
        &[("STOREPULSE_READY_MAX_LAG", "5")],
    );
    helpers::wait_for(
        || server.get("/readyz").0 == 200,
        "ready: the deleted records are not lag",
    )
    .await;
    assert_eq!(server.metric("storepulse_consumer_lag_records"), 0);
    assert!(server.terminate());
}
