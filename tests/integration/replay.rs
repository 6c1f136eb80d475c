//! `storepulse replay` against the real broker: a snapshot replayed at the position of a
//! live snapshot taken mid-sale equals it field by field; a timeline's steps equal
//! `--as-of` at those steps, and its last row equals what `serve` shows at the end; bad
//! ranges, positions and stores are clear errors.

use crate::helpers::{self, Server, database_url, fresh_topics};
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use storepulse::kafka::Topics;

fn replay(topics: &Topics, args: &[&str]) -> Output {
    replay_for_group(topics, "storepulse-replay-test-no-checkpoints", args)
}

/// A replay that may warm up from the checkpoints of serve's group `group`.
fn replay_for_group(topics: &Topics, group: &str, args: &[&str]) -> Output {
    crate::helpers::storepulse(topics)
        .arg("replay")
        .args(args)
        .env("STOREPULSE_GROUP_ID", group)
        .env("STOREPULSE_DATABASE_URL", database_url())
        .output()
        .expect("replay runs")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// `(orders, cancelled)` of a scope in a snapshot (`all` is the rollup).
fn counters(snapshot: &Value, scope: &str) -> (u64, u64) {
    let view = if scope == "all" {
        &snapshot["all_stores"]
    } else {
        &snapshot["stores"][scope]
    };
    (
        view["orders_today"].as_u64().unwrap_or(0),
        view["cancelled_today"].as_u64().unwrap_or(0),
    )
}

/// The rows of a JSON Lines timeline.
fn jsonl_rows(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

/// Every row of step `time` has the `(orders, cancelled)` of its scope in `snapshot`.
fn assert_step_equals(rows: &[Value], time: &Value, snapshot: &Value, what: &str) {
    let step: Vec<&Value> = rows.iter().filter(|r| r["time"] == *time).collect();
    assert!(!step.is_empty(), "{what}: no row at {time}");
    for row in step {
        let scope = row["scope"].as_str().expect("scope");
        assert_eq!(
            (
                row["orders"].as_u64().unwrap_or(0),
                row["cancelled"].as_u64().unwrap_or(0)
            ),
            counters(snapshot, scope),
            "{what}: {time} {scope}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_equals_what_serve_showed_at_the_same_position_and_its_timeline_equals_as_of() {
    let settings = fresh_topics("replay");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let from_ms = now_ms - now_ms % 60_000 - 60_000;
    let server = Server::start(
        &settings.topics,
        &helpers::unique("replay"),
        &database_url(),
    );
    // A sale at 500 records/s, event time now: a live snapshot is taken in the middle.
    let topics = settings.topics.clone();
    let sale = std::thread::spawn(move || {
        crate::helpers::storepulse(&topics)
            .args(["simulate", "--quiet", "--count", "3000", "--rate", "500"])
            .args([
                "--partitions",
                "2",
                "--stores",
                "3",
                "--skus",
                "6",
                "--seed",
                "11",
            ])
            .args(["--flash-sale-at", "1s"])
            .status()
            .expect("simulate runs")
    });
    let live = tokio::task::block_in_place(|| server.rollup_at(1000, Duration::from_secs(60)));
    let position = live["position"].as_str().expect("a position").to_owned();
    assert!(
        helpers::position_total(&live) < 3000,
        "taken mid-sale: {position}"
    );
    let at_live: Value = serde_json::from_str(&stdout_of(&replay(
        &settings.topics,
        &[
            "--from",
            &rfc3339(from_ms),
            "--to-position",
            &position,
            "--quiet",
        ],
    )))
    .expect("a snapshot");
    assert_eq!(
        (&at_live["position"], &at_live["all_stores"]),
        (&live["position"], &live["all_stores"]),
        "replay at {position} equals the live rollup"
    );
    // And one store's own snapshot, taken mid-sale too, equals the replay at its position.
    let (status, body) = server.get("/api/snapshot?store=store-berlin");
    assert_eq!(status, 200, "{body}");
    let berlin: Value = serde_json::from_str(&body).expect("json");
    let berlin_position = berlin["position"].as_str().expect("a position").to_owned();
    let replayed: Value = serde_json::from_str(&stdout_of(&replay(
        &settings.topics,
        &[
            "--from",
            &rfc3339(from_ms),
            "--to-position",
            &berlin_position,
            "--quiet",
        ],
    )))
    .expect("a snapshot");
    assert_eq!(
        replayed["stores"]["store-berlin"], berlin["stores"]["store-berlin"],
        "replay at {berlin_position} equals the live store"
    );

    assert!(sale.join().expect("sale").success());
    let end = tokio::task::block_in_place(|| server.snapshot_at(3000, Duration::from_secs(60)));
    let to_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 60_000;
    // The timeline by minute, as JSON Lines.
    let timeline = stdout_of(&replay(
        &settings.topics,
        &[
            "--from",
            &rfc3339(from_ms),
            "--to",
            &rfc3339(to_ms),
            "--every",
            "20s",
            "--format",
            "jsonl",
            "--quiet",
        ],
    ));
    let rows = jsonl_rows(&timeline);
    let times: Vec<String> = rows
        .iter()
        .map(|r| r["time"].as_str().unwrap_or_default().to_owned())
        .fold(Vec::new(), |mut acc, t| {
            if acc.last() != Some(&t) {
                acc.push(t);
            }
            acc
        });
    assert!(times.len() >= 4, "steps: {times:?}");
    // The last step is after every record: serve's final view.
    let last = Value::from(times.last().expect("a last step").as_str());
    assert_step_equals(&rows, &last, &end, "the last step is serve's view");
    // A timeline from the live snapshot's position: its first row is that snapshot exactly,
    // its last serve's final view.
    let from_position = stdout_of(&replay(
        &settings.topics,
        &[
            "--from-position",
            &position,
            "--to",
            &rfc3339(to_ms),
            "--every",
            "20s",
            "--format",
            "jsonl",
            "--quiet",
        ],
    ));
    let position_rows = jsonl_rows(&from_position);
    let first_time = position_rows[0]["time"].clone();
    // (every store at the live rollup's position: the replay there, checked equal above)
    assert_step_equals(
        &position_rows,
        &first_time,
        &at_live,
        "from the position: the live snapshot",
    );
    let last_time = position_rows.last().expect("rows")["time"].clone();
    assert_step_equals(
        &position_rows,
        &last_time,
        &end,
        "from the position: serve's view",
    );
    // Every step equals --as-of at that step.
    for time in &times {
        let as_of: Value = serde_json::from_str(&stdout_of(&replay(
            &settings.topics,
            &["--from", &rfc3339(from_ms), "--as-of", time, "--quiet"],
        )))
        .expect("a snapshot");
        assert_step_equals(&rows, &Value::from(time.as_str()), &as_of, "--as-of");
        for row in rows.iter().filter(|r| r["time"] == time.as_str()) {
            let scope = row["scope"].as_str().expect("scope");
            let revenue = if scope == "all" {
                &as_of["all_stores"]["revenue_today"]
            } else {
                &as_of["stores"][scope]["revenue_today"]
            };
            let minors: Vec<i64> = row["revenue"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["minor"].as_i64())
                .collect();
            let expected: Vec<i64> = revenue
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["minor"].as_i64())
                .collect();
            assert_eq!(minors, expected, "{time} {scope} revenue");
        }
    }
    // Alerts: raised and cleared between steps; folded up, the alerts active at the end are
    // exactly serve's final ones.
    let changes = stdout_of(&replay(
        &settings.topics,
        &[
            "--from",
            &rfc3339(from_ms),
            "--to",
            &rfc3339(to_ms),
            "--every",
            "20s",
            "--alerts",
            "--format",
            "jsonl",
            "--quiet",
        ],
    ));
    let mut active = std::collections::BTreeSet::new();
    for line in changes.lines() {
        let change: Value = serde_json::from_str(line).expect("a JSON change");
        let id = change["id"].as_str().expect("an id").to_owned();
        match change["change"].as_str() {
            Some("raised") => assert!(active.insert(id), "raised twice: {line}"),
            Some("cleared") => assert!(active.remove(&id), "cleared but not raised: {line}"),
            other => panic!("{other:?}"),
        }
    }
    let live_alerts: std::collections::BTreeSet<String> = end["stores"]
        .as_object()
        .expect("stores")
        .values()
        .flat_map(|v| v["alerts"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect();
    assert!(!changes.is_empty(), "the sale raises alerts");
    assert_eq!(active, live_alerts, "alerts at the end");
    // What-if: the configured threshold again changes nothing; a threshold above every
    // level puts every SKU on the low-stock list.
    let what_if = |set: &str| {
        stdout_of(&replay(
            &settings.topics,
            &[
                "--from",
                &rfc3339(from_ms),
                "--to",
                &rfc3339(to_ms),
                "--every",
                "30s",
                "--set",
                set,
                "--quiet",
            ],
        ))
    };
    assert_eq!(
        what_if("aggregate.low_stock_threshold=10"),
        "time,scope,field,configured,what_if\n",
        "the default threshold, set again: no difference"
    );
    let changed = what_if("aggregate.low_stock_threshold=1000000");
    assert!(
        changed.lines().any(|l| l.contains(",all,low_stock,")),
        "{changed}"
    );
    assert!(
        !changed
            .lines()
            .any(|l| l.contains(",orders,") || l.contains(",revenue,")),
        "a stock threshold moves no order numbers: {changed}"
    );
    // What-if over alerts: unchanged, nothing; a higher threshold raises low-stock alerts the
    // configured run never raised, and removes none of its oversold/sold-out ones.
    let alerts_what_if = |set: &str| {
        stdout_of(&replay(
            &settings.topics,
            &[
                "--from",
                &rfc3339(from_ms),
                "--to",
                &rfc3339(to_ms),
                "--every",
                "20s",
                "--alerts",
                "--set",
                set,
                "--quiet",
            ],
        ))
    };
    assert_eq!(
        alerts_what_if("aggregate.low_stock_threshold=10"),
        "run,time,change,id,kind,store_id,sku,level,since\n"
    );
    let changed = alerts_what_if("aggregate.low_stock_threshold=1000000");
    assert!(
        changed
            .lines()
            .any(|l| l.starts_with("what_if_only,") && l.contains(",raised,low_stock:")),
        "{changed}"
    );
    assert!(
        !changed
            .lines()
            .any(|l| l.starts_with("configured_only,") && l.contains(",oversold,")),
        "a low-stock threshold does not clear an oversold alert: {changed}"
    );
    // Warm-up from serve's final checkpoint (at the end position): nothing left to read,
    // and the restored state shows what serve showed.
    let group = server.group.clone();
    assert!(
        server.terminate(),
        "serve exits 0 (final checkpoint written)"
    );
    let end_position = end["position"].as_str().expect("position").to_owned();
    let plan = stdout_of(&replay_for_group(
        &settings.topics,
        &group,
        &[
            "--from",
            &rfc3339(from_ms),
            "--to-position",
            &end_position,
            "--dry-run",
        ],
    ));
    assert!(plan.contains("warm-up: from checkpoint"), "{plan}");
    let warmed: Value = serde_json::from_str(&stdout_of(&replay_for_group(
        &settings.topics,
        &group,
        &[
            "--from",
            &rfc3339(from_ms),
            "--to-position",
            &end_position,
            "--quiet",
        ],
    )))
    .expect("a snapshot");
    assert_eq!(warmed, end, "from the checkpoint: serve's final view");
    // A range before the final checkpoint warms up from an older one that fits (or from
    // the earliest offsets) and still shows exactly what live showed there.
    let warmed: Value = serde_json::from_str(&stdout_of(&replay_for_group(
        &settings.topics,
        &group,
        &[
            "--from",
            &rfc3339(from_ms),
            "--to-position",
            &position,
            "--quiet",
        ],
    )))
    .expect("a snapshot");
    assert_eq!(warmed, at_live, "warmed up before {position}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ranges_positions_and_stores_are_clear_errors() {
    let settings = fresh_topics("replay-errors");
    helpers::create_topics(&settings, 2).await;
    let status = crate::helpers::storepulse(&settings.topics)
        .args([
            "simulate",
            "--quiet",
            "--count",
            "200",
            "--rate",
            "0",
            "--no-create-topics",
        ])
        .args([
            "--stores",
            "2",
            "--start",
            "2026-12-01T10:00:00Z",
            "--event-rate",
            "10",
        ])
        .status()
        .expect("simulate runs");
    assert!(status.success());
    let error = |args: &[&str]| {
        let out = replay(&settings.topics, args);
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = error(&[
        "--from",
        "2026-12-01T10:10:00Z",
        "--to",
        "2026-12-01T10:00:00Z",
    ]);
    assert!(e.contains("ends") && e.contains("before it starts"), "{e}");
    let e = error(&[
        "--from",
        "2026-12-01T10:00:00Z",
        "--to-position",
        "0badc0de:1,2,3",
    ]);
    assert!(e.contains("not a position of these topics"), "{e}");
    let e = error(&[
        "--from",
        "2026-12-01T10:00:00Z",
        "--to",
        "2026-12-01T10:01:00Z",
        "--store",
        "store-atlantis",
    ]);
    assert!(
        e.contains("unknown store \"store-atlantis\"") && e.contains("store-berlin"),
        "{e}"
    );
    let e = error(&[
        "--from",
        "2030-01-01T00:00:00Z",
        "--to",
        "2030-01-01T01:00:00Z",
        "--every",
        "1m",
    ]);
    assert!(
        e.contains("no record at or after 2030-01-01T00:00:00Z"),
        "{e}"
    );
    let e = error(&["--to", "now"]);
    assert!(e.contains("--from"), "--from is required: {e}");
    // A dry run says what it would read.
    let plan = stdout_of(&replay(
        &settings.topics,
        &[
            "--from",
            "2026-12-01T10:00:10Z",
            "--to",
            "2026-12-01T10:00:20Z",
            "--dry-run",
        ],
    ));
    assert!(
        plan.contains("warm-up:") && plan.contains(&format!("{}/0", settings.topics.orders)),
        "{plan}"
    );
    // Records deleted by retention: a range from before what is retained is refused, and
    // the error says what is retained.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", helpers::brokers())
            .create()
            .expect("an admin client");
    let mut deleted = rdkafka::TopicPartitionList::new();
    deleted
        .add_partition_offset(&settings.topics.orders, 0, rdkafka::Offset::Offset(5))
        .expect("a partition");
    admin
        .delete_records(&deleted, &rdkafka::admin::AdminOptions::new())
        .await
        .expect("records deleted");
    let e = error(&[
        "--from",
        "2026-12-01T09:00:00Z",
        "--to",
        "2026-12-01T10:00:20Z",
    ]);
    assert!(
        e.contains("before the retained records")
            && e.contains(&format!(
                "{}/0 holds records from offset 5",
                settings.topics.orders
            )),
        "{e}"
    );
}

/// One SSE event: name, id, data.
type Event = (String, Option<String>, Vec<u8>);

/// GET over HTTP/1.0 (the body ends with the connection, no chunking) with headers; the
/// status and the events of the body, in order.
fn sse_get(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<Event>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\n{extra}\r\n"
    )
    .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut events = Vec::new();
    storepulse::live::client::SseParser::new().push(&response[split + 4..], |e| {
        events.push((e.event.to_owned(), e.id.map(str::to_owned), e.data.to_vec()));
    });
    (status, events)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_stream_rebuilds_the_as_of_view_resumes_by_its_own_ids_and_is_bounded() {
    let settings = fresh_topics("replay-stream");
    let status = crate::helpers::storepulse(&settings.topics)
        .args([
            "simulate",
            "--quiet",
            "--count",
            "1200",
            "--rate",
            "0",
            "--event-rate",
            "20",
        ])
        .args([
            "--start",
            "2026-12-02T05:00:00Z",
            "--stores",
            "2",
            "--skus",
            "5",
            "--partitions",
            "2",
        ])
        .status()
        .expect("simulate runs");
    assert!(status.success());
    let server = Server::start_with(
        &settings.topics,
        &helpers::unique("replay-stream"),
        &database_url(),
        &[("STOREPULSE_REPLAY_MAX_CONCURRENT", "1")],
    );
    tokio::task::block_in_place(|| server.snapshot_at(1200, Duration::from_secs(60)));
    let (from, to) = ("2026-12-02T05:00:10Z", "2026-12-02T05:00:50Z");
    let path = format!("/api/replay/stream?from={from}&to={to}&speed=200");
    let (code, events) = tokio::task::block_in_place(|| sse_get(&server.address, &path, &[]));
    assert_eq!(code, 200);
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"snapshot"), "{names:?}");
    assert_eq!(names.last(), Some(&"end"), "{names:?}");
    assert!(
        names.iter().filter(|n| **n == "delta").count() >= 3,
        "{names:?}"
    );
    assert!(
        events
            .iter()
            .all(|(_, id, _)| id.as_deref().is_none_or(|i| i.starts_with("R1."))),
        "replay ids have their own namespace"
    );
    // Applied as the page applies them: the view at `to`.
    let apply = |view: &mut storepulse::live::client::ClientView, events: &[Event]| {
        for (event, id, data) in events {
            view.apply(storepulse::live::client::SseRef {
                event,
                id: id.as_deref(),
                data,
            })
            .expect("applies");
        }
    };
    let mut view = storepulse::live::client::ClientView::default();
    apply(&mut view, &events);
    let as_of: Value = serde_json::from_str(&stdout_of(&replay(
        &settings.topics,
        &["--from", from, "--as-of", to, "--quiet"],
    )))
    .expect("a snapshot");
    let rebuilt = view.view.clone().expect("a view");
    assert!(
        rebuilt.get("stores").is_none(),
        "the all-stores scope streams the rollup"
    );
    assert_eq!(
        rebuilt["all_stores"], as_of["all_stores"],
        "the streamed rollup at its end is --as-of to"
    );
    // One store's replay stream ends at that store's view of --as-of to.
    let store = as_of["stores"]
        .as_object()
        .and_then(|stores| stores.keys().next().cloned())
        .expect("a store");
    let (_, one) = tokio::task::block_in_place(|| {
        sse_get(&server.address, &format!("{path}&store={store}"), &[])
    });
    let mut one_view = storepulse::live::client::ClientView::default();
    apply(&mut one_view, &one);
    assert_eq!(
        one_view.view.expect("a view")["stores"][&store],
        as_of["stores"][&store],
        "the streamed store at its end is --as-of to"
    );

    // Resume mid-replay with its own id: no snapshot, the deltas after it, the same end.
    let middle = events.len() / 2;
    let (_, middle_id, _) = &events[middle];
    let middle_id = middle_id.clone().expect("a delta id");
    let (_, rest) = tokio::task::block_in_place(|| {
        sse_get(&server.address, &path, &[("Last-Event-ID", &middle_id)])
    });
    assert_ne!(
        rest.first().map(|e| e.0.as_str()),
        Some("snapshot"),
        "resumed, not restarted"
    );
    let mut resumed = storepulse::live::client::ClientView::default();
    apply(&mut resumed, &events[..=middle]);
    apply(&mut resumed, &rest);
    assert_eq!(
        resumed.view.expect("a view")["all_stores"],
        as_of["all_stores"],
        "resumed exactly"
    );
    // A live id sent to the replay restarts it from its snapshot; a replay id sent to the
    // live stream is not an id there (a resync).
    let live_position = as_of["position"].as_str().expect("position").to_owned();
    let (_, restarted) = tokio::task::block_in_place(|| {
        sse_get(&server.address, &path, &[("Last-Event-ID", &live_position)])
    });
    assert_eq!(restarted.first().map(|e| e.0.as_str()), Some("snapshot"));
    let live_first = tokio::task::block_in_place(|| {
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(&server.address).expect("connects");
        write!(
            stream,
            "GET /api/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {middle_id}\r\n\r\n"
        )
        .expect("request");
        let reader = std::io::BufReader::new(stream);
        reader
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("event: "))
            .unwrap_or_default()
    });
    assert_eq!(live_first, "event: resync");
    // One slot: while a slow replay runs, another gets 503 with Retry-After.
    let slow = format!("/api/replay/stream?from={from}&to={to}&speed=1");
    let address = server.address.clone();
    let holder = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).expect("connects");
        write!(stream, "GET {slow} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
        let mut first = [0u8; 64];
        let _ = stream.read(&mut first);
        std::thread::sleep(Duration::from_secs(2));
        drop(stream); // nobody reads: the replay stops and frees its slot
    });
    std::thread::sleep(Duration::from_millis(700));
    let (busy, body) = tokio::task::block_in_place(|| helpers::http_get(&server.address, &path));
    assert_eq!(busy, 503, "{body}");
    assert!(body.contains("replay slot"), "{body}");
    holder.join().expect("holder");
    helpers::wait_for(
        || {
            helpers::http_get(
                &server.address,
                "/api/replay/stream?from=2026-12-02T05:00:10Z&to=2026-12-02T05:00:11Z&speed=1000",
            )
            .0 == 200
        },
        "the slot freed once its reader left",
    )
    .await;
    let (bad, reason) = helpers::http_get(
        &server.address,
        "/api/replay/stream?from=2026-12-02T05:00:10Z&to=2026-12-02T05:00:00Z",
    );
    assert_eq!(bad, 400, "{reason}");
    assert!(server.terminate());

    // With access control: a replay stream ends at its token's expiry, with the same
    // `session-expired` event as a live stream; a viewer may not replay at all.
    const SECRET: &str = "replay-expiry-secret-of-at-least-32-bytes";
    let guarded = Server::start_with(
        &settings.topics,
        &helpers::unique("replay-expiry"),
        &database_url(),
        &[
            ("STOREPULSE_AUTH_MODE", "jwt"),
            ("STOREPULSE_AUTH_HS256_SECRET", SECRET),
        ],
    );
    let token = |role, ttl_s: i64| {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64;
        format!(
            "Bearer {}",
            storepulse::auth::sign_hs256(
                &secrecy::SecretString::from(SECRET),
                &storepulse::auth::Grant {
                    subject: "analyst".into(),
                    stores: None,
                    role,
                    expires_at_s: now_s + ttl_s,
                },
            )
            .expect("signs")
        )
    };
    let slow = format!("/api/replay/stream?from={from}&to={to}&speed=1");
    let viewer = token(storepulse::auth::Role::Viewer, 60);
    let (refused, _) = tokio::task::block_in_place(|| {
        sse_get(
            &guarded.address,
            &slow,
            &[("Authorization", viewer.as_str())],
        )
    });
    assert_eq!(refused, 403, "a viewer may not replay");
    let analyst = token(storepulse::auth::Role::Analyst, 3);
    let started = std::time::Instant::now();
    let (code, events) = tokio::task::block_in_place(|| {
        sse_get(
            &guarded.address,
            &slow,
            &[("Authorization", analyst.as_str())],
        )
    });
    assert_eq!(code, 200);
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"snapshot"), "{names:?}");
    assert_eq!(
        names.last(),
        Some(&"session-expired"),
        "after {:?}: {names:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ended at the expiry, not at the end of the 40 s range"
    );
}

/// `storepulse simulate` into `topics` with `args`, to completion.
fn simulate_into(topics: &Topics, args: &[&str]) {
    let status = crate::helpers::storepulse(topics)
        .args(["simulate", "--quiet", "--no-create-topics"])
        .args(args)
        .status()
        .expect("simulate runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_across_a_sigkill_of_serve_warmed_up_from_its_checkpoints_gives_the_same_rows() {
    let settings = fresh_topics("replay-kill");
    helpers::create_topics(&settings, 2).await;
    let group = helpers::unique("replay-kill");
    let keep = [("STOREPULSE_CHECKPOINT_KEEP", "1000")];
    let topics = &settings.topics;
    let server = Server::start_with(topics, &group, &database_url(), &keep);
    simulate_into(
        topics,
        &[
            "--count",
            "1500",
            "--rate",
            "0",
            "--event-rate",
            "20",
            "--start",
            "2026-12-02T05:00:00Z",
            "--stores",
            "2",
        ],
    );
    tokio::task::block_in_place(|| server.snapshot_at(1500, Duration::from_secs(60)));
    // A checkpoint of all of part 1 (then SIGKILL loses nothing checkpointed).
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url())
        .await
        .expect("postgres answers");
    for attempt in 0.. {
        let (checkpointed,): (Option<i64>,) = sqlx::query_as(
            "SELECT sum(next_offset)::bigint FROM checkpoint_positions WHERE checkpoint_id =
               (SELECT max(id) FROM checkpoints WHERE group_name = $1)",
        )
        .bind(&group)
        .fetch_one(&mut db)
        .await
        .expect("a query runs");
        if checkpointed == Some(1500) {
            break;
        }
        assert!(attempt < 300, "no checkpoint of part 1: {checkpointed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill(); // SIGKILL: no final checkpoint
    let server = Server::start_with(topics, &group, &database_url(), &keep);
    // Part 2 in real time, so the restarted serve checkpoints in the middle of it.
    simulate_into(
        topics,
        &[
            "--count",
            "1500",
            "--rate",
            "500",
            "--start",
            "2026-12-02T05:01:15Z",
            "--stores",
            "2",
            "--seed",
            "2",
        ],
    );
    tokio::task::block_in_place(|| server.snapshot_at(3000, Duration::from_secs(60)));
    assert!(server.terminate());
    let args = [
        "--from",
        "2026-12-02T05:01:16Z",
        "--to",
        "2026-12-02T05:01:19Z",
        "--every",
        "1s",
        "--format",
        "jsonl",
        "--quiet",
    ];
    let plan = stdout_of(&replay_for_group(
        topics,
        &group,
        &[args[0], args[1], args[2], args[3], "--dry-run"],
    ));
    assert!(plan.contains("warm-up: from checkpoint"), "{plan}");
    let warmed = stdout_of(&replay_for_group(topics, &group, &args));
    let from_scratch = stdout_of(&replay(topics, &args));
    assert!(warmed.lines().count() >= 8, "{warmed}");
    assert_eq!(
        warmed, from_scratch,
        "rows from a checkpoint of a serve restarted after SIGKILL equal rows from the earliest offsets"
    );
}

/// SIGTERM while a replay stream is open (a 50 s range at speed 1): `serve` stops within the
/// usual bound, with its final checkpoint (exit 0), and the replay client's last event says
/// why. Before, graceful shutdown waited for the whole range.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_stream_open_at_sigterm_ends_with_a_shutdown_event_and_serve_stops() {
    let settings = fresh_topics("replay-shutdown");
    let status = crate::helpers::storepulse(&settings.topics)
        .args(["simulate", "--quiet", "--count", "1200", "--rate", "0"])
        .args(["--event-rate", "20", "--start", "2026-12-02T05:00:00Z"])
        .args(["--stores", "2", "--skus", "5", "--partitions", "2"])
        .status()
        .expect("simulate runs");
    assert!(status.success());
    let server = Server::start_with(
        &settings.topics,
        &helpers::unique("replay-shutdown"),
        &database_url(),
        &[],
    );
    tokio::task::block_in_place(|| server.snapshot_at(1200, Duration::from_secs(60)));
    let address = server.address.clone();
    let client = std::thread::spawn(move || {
        sse_get(
            &address,
            "/api/replay/stream?from=2026-12-02T05:00:05Z&to=2026-12-02T05:00:55Z&speed=1",
            &[],
        )
    });
    std::thread::sleep(Duration::from_secs(2)); // the snapshot and a few deltas are out
    let stopping = std::time::Instant::now();
    let clean = tokio::task::block_in_place(|| server.terminate());
    let took = stopping.elapsed();
    assert!(clean, "exit 0: the final checkpoint was written");
    assert!(
        took < Duration::from_secs(20),
        "stopped in {took:?}, not after the 50 s range"
    );
    let (code, events) = client.join().expect("the client ends");
    assert_eq!(code, 200);
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"snapshot"), "{names:?}");
    assert_eq!(names.last(), Some(&"shutdown"), "{names:?}");
    assert!(
        !names.contains(&"end"),
        "the range did not finish: {names:?}"
    );
}
