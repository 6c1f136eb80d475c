//! The router in process (`tower::ServiceExt::oneshot`, no socket, no Kafka): the
//! snapshot API, errors, headers, and the resume rules, against an engine fed by the test.

use super::{AppState, app};
use crate::aggregate::{AggregateConfig, Layout, PartitionKey, RecordRef, State};
use crate::checkpoint::CheckpointStore;
use crate::config::Settings;
use crate::events::{Codec, TopicRole};
use crate::fanout::{Hub, Request, Status};
use crate::ingest::{Engine, EngineSettings, Outputs};
use crate::live::LogLimits;
use crate::metrics::Metrics;
use crate::simulate::scenario::{Scenario, ScenarioConfig};
use axum::Router;
use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storepulse_core::live::client::{ClientView, SseEvent, SseParser};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

type Job = Box<dyn FnOnce(&mut Engine) + Send>;

/// An engine on its own thread (as in `serve`), answering the router's requests; the test
/// feeds it records through `run`.
struct TestServer {
    router: Router,
    jobs: std::sync::mpsc::Sender<Job>,
    layout: Layout,
    codec: Codec,
    scenario: Scenario,
    offsets: std::collections::HashMap<PartitionKey, i64>,
}

fn layout() -> Layout {
    Layout::new(vec![
        (TopicRole::Orders, "orders".into(), 2),
        (TopicRole::Inventory, "inventory".into(), 2),
        (TopicRole::Activity, "activity".into(), 1),
    ])
}

impl TestServer {
    fn start(resume_wait: Duration) -> TestServer {
        TestServer::start_with(resume_wait, super::access::AccessControl::open())
    }

    fn start_with(resume_wait: Duration, access: super::access::AccessControl) -> TestServer {
        TestServer::start_configured(resume_wait, access, None)
    }

    /// With `pace`, streams are paced as an edge's: at most one write of frames per `pace`
    /// (the engine itself frames every batch).
    fn start_configured(
        resume_wait: Duration,
        access: super::access::AccessControl,
        pace: Option<Duration>,
    ) -> TestServer {
        TestServer::start_tuned(resume_wait, access, pace, |_| {})
    }

    /// Like [`TestServer::start_configured`]; `tune` changes the other stream settings.
    fn start_tuned(
        resume_wait: Duration,
        access: super::access::AccessControl,
        pace: Option<Duration>,
        tune: impl FnOnce(&mut crate::config::StreamSection),
    ) -> TestServer {
        let settings = Settings::load(None, &Default::default()).expect("default settings");
        let metrics = Arc::new(Metrics::default());
        let (requests_tx, mut requests) = mpsc::channel::<Request>(64);
        let (status_tx, status) = watch::channel(Status::default());
        let (checkpoints, _) = watch::channel(None);
        let hub = Arc::new(Hub::new(
            layout(),
            LogLimits {
                frames: 1_000,
                bytes: 64 << 20,
                age_ms: 600_000,
            },
            64,
        ));
        let mut engine = Engine::new(
            State::new(Arc::new(AggregateConfig::default())),
            layout(),
            Codec::new(&Default::default()).expect("schemas"),
            EngineSettings {
                frame_interval: Duration::ZERO,
                resume_wait,
                checkpoint_interval: Duration::from_secs(3_600),
            },
            Outputs {
                hub: Arc::clone(&hub),
                checkpoints,
                status: status_tx,
                metrics: Arc::clone(&metrics),
            },
        );
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            loop {
                match job_rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(job) => job(&mut engine),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                }
                let now = Instant::now();
                engine.end_batch(now);
                while let Ok(request) = requests.try_recv() {
                    engine.handle_request(request, now);
                }
                if let Some(frozen) = engine.tick(now) {
                    engine.publish_checkpoint(frozen);
                }
            }
        });
        while !status.borrow().assigned {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut stream = settings.stream.clone();
        stream.resume_wait = resume_wait;
        if let Some(pace) = pace {
            stream.frame_interval = pace;
        }
        tune(&mut stream);
        let router = app(AppState {
            hub: Arc::new(std::sync::OnceLock::from(hub)),
            requests: requests_tx,
            status,
            // Nothing listens there: readiness reports the store as down.
            checkpoints: Some(
                CheckpointStore::connect_lazy("postgres://postgres@127.0.0.1:1/none", "g")
                    .expect("a lazy pool"),
            ),
            watchers: super::watchers::Watchers::new(Arc::clone(&metrics)),
            metrics,
            max_lag: 1_000,
            stream: Arc::new(stream),
            stop: CancellationToken::new(),
            drain: Arc::new(crate::http::drain::Drain::new(Duration::ZERO)),
            retry: super::stream::retry_line(settings.stream.retry),
            replays: Arc::new(crate::replay::stream::ReplayService::new(
                Arc::new(crate::config::defaults().clone()),
                1,
                tokio_util::task::TaskTracker::new(),
            )),
            tasks: tokio_util::task::TaskTracker::new(),
            pace_frames: pace.is_some(),
            access: Arc::new(access),
            limits: Arc::new(super::limits::ClientLimits::new(
                crate::http::limits::LimitSettings::of(crate::config::defaults()),
            )),
        });
        TestServer {
            router,
            jobs,
            layout: layout(),
            codec: Codec::new(&Default::default()).expect("schemas"),
            scenario: Scenario::new(ScenarioConfig {
                popularity: Default::default(),
                seed: 3,
                start_ms: 1_767_225_000_000,
                events_per_second: 50.0,
                stores: 2,
                skus_per_store: 5,
                flash_sale: None,
            }),
            offsets: Default::default(),
        }
    }

    /// Feeds the next `n` events of the scenario (and one poison record) as records, and
    /// waits until the engine has applied them and built their frame.
    fn feed(&mut self, n: usize) {
        let mut records = Vec::new();
        for event in self.scenario.by_ref().take(n) {
            let role = event.kind().topic_role();
            let partition = PartitionKey { role, partition: 0 };
            let offset = self.offsets.entry(partition).or_insert(0);
            records.push((
                RecordRef {
                    partition,
                    offset: *offset,
                },
                self.codec.encode(&event).expect("encodes"),
                event.occurred_at(),
            ));
            *offset += 1;
        }
        let (done, wait) = std::sync::mpsc::channel();
        self.jobs
            .send(Box::new(move |engine: &mut Engine| {
                // The producer stamps each record with its event's time.
                for (at, bytes, time) in records {
                    if engine.process_record(at, Some(&bytes), Some(time)).is_err() {
                        engine.skip(at);
                    }
                }
                engine.end_batch(Instant::now());
                let _ = done.send(());
            }))
            .expect("engine running");
        wait.recv_timeout(Duration::from_secs(10)).expect("fed");
    }

    /// The encoded position after `extra` more records in the first orders partition.
    fn id_ahead(&self, extra: i64) -> String {
        let mut position = crate::aggregate::Position::default();
        for (partition, next) in &self.offsets {
            position.advance_to(*partition, *next);
        }
        let orders = PartitionKey {
            role: TopicRole::Orders,
            partition: 0,
        };
        position.advance_to(
            orders,
            self.offsets.get(&orders).copied().unwrap_or(0) + extra,
        );
        self.layout.encode(&position)
    }

    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> axum::response::Response {
        self.send(axum::http::Method::GET, uri, headers).await
    }

    async fn send(
        &self,
        method: axum::http::Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> axum::response::Response {
        let mut request = HttpRequest::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    async fn json(&self, uri: &str) -> (StatusCode, serde_json::Value) {
        let response = self.get(uri, &[]).await;
        let status = response.status();
        let body = body(response).await;
        (status, serde_json::from_slice(&body).expect("a JSON body"))
    }

    /// The first event of `GET uri` with `Last-Event-ID: last_id` (raw bytes: an id need
    /// not be text).
    async fn first_event(&self, uri: &str, last_id: Option<&[u8]>) -> SseEvent {
        let mut request = HttpRequest::get(uri);
        if let Some(id) = last_id {
            let value = axum::http::HeaderValue::from_bytes(id).expect("a header value");
            request = request.header("last-event-id", value);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        events(response, 1).await.remove(0)
    }
}

/// A whole response body.
async fn body(response: axum::response::Response) -> axum::body::Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// Reads a stream's body until `count` events with data have arrived.
async fn events(response: axum::response::Response, count: usize) -> Vec<SseEvent> {
    let mut body = response.into_body();
    let mut parser = SseParser::new();
    let mut seen = Vec::new();
    while seen.len() < count {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            parser.push(&data, |e| seen.push(e.to_owned()));
        }
    }
    seen
}

fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

#[tokio::test]
async fn the_snapshot_api_answers_with_the_engines_views_and_json_errors() {
    let mut server = TestServer::start(Duration::from_secs(1));
    server.feed(300);
    let (status, all) = server.json("/api/snapshot").await;
    assert_eq!(status, StatusCode::OK);
    // The all-stores scope is the rollup: no store's view, however many there are.
    assert!(all.get("stores").is_none(), "{all}");
    assert_eq!(all["store_count"], 2);
    assert!(
        all["all_stores"]["orders_today"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    let response = server.get("/api/snapshot", &[]).await;
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    // The stores, a page at a time, then each one's own view: they sum to the rollup.
    let (status, first) = server.json("/api/stores?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["store_count"], 2);
    let after = first["next"].as_str().expect("a second page").to_owned();
    let (_, second) = server
        .json(&format!("/api/stores?limit=1&after={after}"))
        .await;
    assert!(second["next"].is_null());
    let stores: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| page["items"].as_array().expect("items").clone())
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(stores.len(), 2, "{stores:?}");
    assert!(stores[0] < stores[1], "byte order");
    let mut orders = 0;
    for store in &stores {
        let (status, one) = server.json(&format!("/api/snapshot?store={store}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(one.get("all_stores").is_none());
        assert_eq!(
            one["position"], all["position"],
            "one position, same numbers"
        );
        orders += one["stores"][store]["orders_today"]
            .as_u64()
            .expect("orders");
    }
    assert_eq!(all["all_stores"]["orders_today"].as_u64(), Some(orders));
    for (uri, expected) in [
        ("/api/stores?limit=0", StatusCode::BAD_REQUEST),
        ("/api/stores?limit=1001", StatusCode::BAD_REQUEST),
        ("/api/stores?unknown=1", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = server.json(uri).await;
        assert_eq!(status, expected, "{uri}: {body}");
    }
    for (uri, expected) in [
        ("/api/snapshot?store=store-nowhere", StatusCode::NOT_FOUND),
        ("/api/snapshot?store=", StatusCode::BAD_REQUEST),
        ("/api/snapshot?unknown=1", StatusCode::BAD_REQUEST),
        ("/api/stream?store=store-nowhere", StatusCode::NOT_FOUND),
        ("/api/stream?unknown=1", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = server.json(uri).await;
        assert_eq!(status, expected, "{uri}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{uri}: a reason"
        );
    }
    let long = "x".repeat(129);
    assert_eq!(
        server.json(&format!("/api/snapshot?store={long}")).await.0,
        StatusCode::BAD_REQUEST
    );
}

/// Every 4xx is JSON with a reason, and a bad `store` is the same 400 on every endpoint.
#[tokio::test]
async fn every_error_is_json_and_a_bad_store_is_the_same_400_everywhere() {
    let mut server = TestServer::start(Duration::from_secs(1));
    server.feed(50);
    let long_store = "x".repeat(129);
    let long_uri = format!("/api/snapshot?store={}", "y".repeat(9_000));
    let mut cases = vec![
        ("/nowhere".to_owned(), StatusCode::NOT_FOUND),
        ("/api/snapshots".to_owned(), StatusCode::NOT_FOUND),
        (long_uri, StatusCode::URI_TOO_LONG),
    ];
    for endpoint in [
        "/api/snapshot?",
        "/api/stream?",
        "/api/replay/stream?from=2026-12-02T05:00:00Z&to=2026-12-02T05:01:00Z&",
    ] {
        // Empty, too long, reserved, and an invisible character (U+200B) in the id.
        for bad in [
            "",
            long_store.as_str(),
            "all",
            "OTHER",
            "store-berl%E2%80%8Bin",
        ] {
            cases.push((format!("{endpoint}store={bad}"), StatusCode::BAD_REQUEST));
        }
    }
    let mut reasons =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (uri, expected) in &cases {
        let (status, answer) = server.json(uri).await;
        assert_eq!(status, *expected, "{}", &uri[..uri.len().min(80)]);
        let reason = answer["error"].as_str().unwrap_or_default().to_owned();
        assert!(!reason.is_empty(), "{uri}: a reason");
        if *expected == StatusCode::BAD_REQUEST {
            let value = uri.rsplit_once("store=").map_or("", |(_, v)| v).to_owned();
            reasons.entry(value).or_default().insert(reason);
        }
    }
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    for (value, answers) in &reasons {
        assert_eq!(
            answers.len(),
            1,
            "one answer for store={value} on every endpoint: {answers:?}"
        );
    }
    // A method no endpoint answers: 405, JSON, and what is allowed.
    let response = server
        .router
        .clone()
        .oneshot(
            HttpRequest::post("/api/snapshot")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let reason: serde_json::Value = serde_json::from_slice(&body(response).await).expect("JSON");
    assert!(reason["error"].as_str().is_some_and(|e| e.contains("POST")));
    // Headers over the limit: 431 with a reason.
    let big = "z".repeat(super::MAX_HEADER_BYTES);
    let response = server.get("/healthz", &[("x-padding", &big)]).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let reason: serde_json::Value = serde_json::from_slice(&body(response).await).expect("JSON");
    assert!(
        reason["error"]
            .as_str()
            .is_some_and(|e| e.contains("headers"))
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_without_kafka_or_postgres() {
    let mut server = TestServer::start(Duration::from_secs(1));
    server.feed(10);
    let (status, health) = server.json("/healthz").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("alive"))
    );
    let (status, ready) = server.json("/readyz").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no lag known, no database: {ready}"
    );
    assert_eq!(ready["checkpoint_store"]["ready"], false);
    assert_eq!(ready["consumer"]["assigned"], true);
    let response = server.get("/metrics", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(body(response).await.to_vec()).expect("text");
    for label in crate::events::DecodeError::LABELS {
        assert!(
            text.contains(&format!(
                "storepulse_poison_records_total{{reason=\"{label}\"}} 0"
            )),
            "{label}"
        );
    }
    assert!(text.contains("storepulse_records_total{topic=\"orders\"}"));
    assert!(
        text.contains("storepulse_events_applied_total 10"),
        "{text}"
    );
}

#[tokio::test]
async fn a_new_stream_gets_headers_a_snapshot_then_deltas_that_rebuild_the_view() {
    let mut server = TestServer::start(Duration::from_secs(1));
    server.feed(200);
    let response = server.get("/api/stream", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        response.headers()["cache-control"],
        "no-cache, no-transform"
    );
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut body = response.into_body();
    let mut parser = SseParser::new();
    let mut client = ClientView::default();
    let mut seen = Vec::new();
    let mut bytes = Vec::new();
    server.feed(100);
    server.feed(100);
    let (_, expected) = server.json("/api/snapshot").await;
    while client.last_id.as_deref() != expected["position"].as_str() {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("frames keep coming")
            .expect("open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            parser.push(&data, |e| {
                seen.push(e.event.to_owned());
                client.apply(e).expect("applies");
            });
        }
    }
    // `stream.retry` (1 s by default) comes first.
    assert!(bytes.starts_with(b"retry: 1000\n\n"), "{:?}", &bytes[..20]);
    assert_eq!(
        &super::stream::retry_line(Duration::from_millis(250)).plain()[..],
        b"retry: 250\n\n"
    );
    assert_eq!(seen[0], "snapshot");
    assert!(seen[1..].iter().all(|e| e == "delta"), "{seen:?}");
    assert_eq!(
        client.view.expect("a view"),
        expected,
        "deltas rebuild the snapshot exactly"
    );
}

/// An edge makes a frame of every slice frame (several per interval); each of its streams
/// writes at most once per `stream.frame_interval`, the frames meanwhile caught up with
/// in shared pieces, and the view stays exact.
#[tokio::test]
async fn a_paced_stream_writes_a_burst_of_frames_as_one_catch_up() {
    let mut server = TestServer::start_configured(
        Duration::from_secs(1),
        super::access::AccessControl::open(),
        Some(Duration::from_millis(300)),
    );
    server.feed(50);
    let response = server.get("/api/stream", &[]).await;
    let mut body = response.into_body();
    let mut parser = SseParser::new();
    let mut client = ClientView::default();
    let mut seen: Vec<(String, Instant)> = Vec::new();
    /// The next data of the stream (empty for another kind of frame).
    async fn read(body: &mut axum::body::Body) -> axum::body::Bytes {
        tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("frames keep coming")
            .expect("open")
            .expect("a frame")
            .into_data()
            .unwrap_or_default()
    }
    // The snapshot, then one frame: the stream writes it at once and is paced from there.
    server.feed(5);
    while seen.iter().filter(|(e, _)| e == "delta").count() < 1 {
        let data = read(&mut body).await;
        parser.push(&data, |e| {
            seen.push((e.event.to_owned(), Instant::now()));
            client.apply(e).expect("applies");
        });
    }
    let first_delta = seen.last().expect("a delta").1;
    // Twenty frames within the pace.
    for _ in 0..20 {
        server.feed(5);
    }
    let (_, expected) = server.json("/api/snapshot").await;
    while client.last_id.as_deref() != expected["position"].as_str() {
        let data = read(&mut body).await;
        parser.push(&data, |e| {
            seen.push((e.event.to_owned(), Instant::now()));
            client.apply(e).expect("applies");
        });
    }
    let after: Vec<&(String, Instant)> = seen
        .iter()
        .skip_while(|(_, at)| *at <= first_delta)
        .filter(|(e, _)| e != "progress")
        .collect();
    assert!(
        !after.is_empty() && after.len() < 20,
        "twenty frames came as a few catch-up events, not one write each: {after:?}"
    );
    assert!(
        after[0].1 >= first_delta + Duration::from_millis(250),
        "nothing was written before the pace allowed"
    );
    // The frames the catch-up covered are passed over at once: the next frame is written
    // within a pace or two, not after one pace per covered frame (20 × 300 ms).
    server.feed(5);
    let fed = Instant::now();
    let (_, expected) = server.json("/api/snapshot").await;
    while client.last_id.as_deref() != expected["position"].as_str() {
        let data = read(&mut body).await;
        parser.push(&data, |e| {
            client.apply(e).expect("applies");
        });
    }
    assert!(
        fed.elapsed() < Duration::from_secs(3),
        "the next frame came {:?} after it was made",
        fed.elapsed()
    );
    assert_eq!(client.view.expect("a view"), expected, "the view is exact");
}

#[tokio::test]
async fn the_five_resume_rules_through_the_router() {
    let mut server = TestServer::start(Duration::from_millis(300));
    server.feed(100);
    let (_, first) = server.json("/api/snapshot").await;
    let first_id = first["position"].as_str().expect("position").to_owned();
    // Rule 1: no id.
    let opening = server.first_event("/api/stream", None).await;
    assert_eq!(opening.event, "snapshot");
    assert_eq!(opening.id.as_deref(), Some(first_id.as_str()));
    // Rule 2: an id in the log gets the frames after it, no snapshot.
    server.feed(50);
    let (_, second) = server.json("/api/snapshot").await;
    let replay = server
        .first_event("/api/stream", Some(first_id.as_bytes()))
        .await;
    assert_eq!(replay.event, "delta");
    assert_eq!(replay.id.as_deref(), second["position"].as_str());
    // ...also by ?since= for clients without headers.
    let since = format!("/api/stream?since={first_id}");
    assert_eq!(server.first_event(&since, None).await.event, "delta");
    // Rule 3: behind and not in the log (a position no frame had).
    let behind = server.layout.encode(&crate::aggregate::Position::default());
    let snapshot = server
        .first_event("/api/stream", Some(behind.as_bytes()))
        .await;
    assert_eq!(snapshot.event, "snapshot");
    // Rule 5: garbage, another layout, and bytes that are not text.
    for id in [&b"garbage"[..], b"00000000:1,2,3,4,5", b"\xff\xfe:1"] {
        let resync = server.first_event("/api/stream", Some(id)).await;
        assert_eq!(resync.event, "resync", "{id:?}");
        assert_eq!(resync.id.as_deref(), second["position"].as_str());
    }
    // Rule 4: ahead; the wait times out (300 ms) into a resync...
    let ahead = server.id_ahead(5);
    let timed_out = server
        .first_event("/api/stream", Some(ahead.as_bytes()))
        .await;
    assert_eq!(timed_out.event, "resync");
    // ...or ends in a snapshot at or past the id once the state catches up.
    let ahead = server.id_ahead(1);
    let router = server.router.clone();
    let waiting = tokio::spawn(async move {
        let request = HttpRequest::get("/api/stream")
            .header("last-event-id", ahead)
            .body(Body::empty())
            .expect("request");
        events(router.oneshot(request).await.expect("infallible"), 1).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.feed(40);
    let caught_up = waiting.await.expect("no panic");
    assert_eq!(names(&caught_up), ["snapshot"]);
    let (_, now) = server.json("/api/snapshot").await;
    assert_eq!(caught_up[0].id.as_deref(), now["position"].as_str());
}

/// The sum of `storepulse_snapshots_built_total` and `_cached_total`: snapshots handed out.
async fn snapshots_handed_out(server: &TestServer) -> u64 {
    let metrics = body(server.get("/metrics", &[]).await).await;
    String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|l| l.starts_with("storepulse_snapshots_"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_client_that_leaves_during_a_rule_4_wait_costs_no_snapshot() {
    let mut server = TestServer::start(Duration::from_millis(300));
    server.feed(50);
    let before = snapshots_handed_out(&server).await;
    let ahead = server.id_ahead(3);
    let headers = [("last-event-id", ahead.as_str())];
    let waiting = server.get("/api/stream", &headers);
    // The client gives up after 50 ms: its request is dropped while the engine holds it.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), waiting)
            .await
            .is_err(),
        "a rule-4 start waits"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        snapshots_handed_out(&server).await,
        before,
        "nothing was built for it"
    );
    // The engine still answers others.
    assert_eq!(
        server.first_event("/api/stream", None).await.event,
        "snapshot"
    );
}

// ---- access control -------------------------------------------------------------------

const SECRET: &str = "router-test-secret-of-at-least-32-bytes";

fn jwt_access(protect_metrics: bool) -> super::access::AccessControl {
    let mut settings = crate::config::defaults().auth.clone();
    settings.mode = "jwt".into();
    settings.hs256_secret = secrecy::SecretString::from(SECRET);
    settings.protect_metrics = protect_metrics;
    super::access::AccessControl {
        verifier: crate::auth::Verifier::new(&settings)
            .expect("keys")
            .map(Arc::new),
        protect_metrics,
        cors_origins: vec!["https://ops.example".into()],
        renew_url: Some("https://shop.example/storepulse-token".into()),
        renew_origin: "https://shop.example".into(),
        sessions: Arc::default(),
    }
}

fn signed(secret: &str, stores: Option<&[&str]>, role: crate::auth::Role, ttl_s: i64) -> String {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    crate::auth::sign_hs256(
        &secrecy::SecretString::from(secret),
        &crate::auth::Grant {
            subject: "test".into(),
            stores: stores.map(|s| s.iter().map(|s| (*s).to_owned()).collect()),
            role,
            expires_at_s: now_s + ttl_s,
        },
    )
    .expect("signs")
}

/// Every endpoint against every kind of credential: the status each must answer, and a
/// store out of scope answered exactly like a store with no events.
#[tokio::test]
async fn every_endpoint_enforces_tokens_roles_and_store_scopes() {
    use crate::auth::Role::{Analyst, Operator, Viewer};
    let mut server = TestServer::start_with(Duration::from_secs(1), jwt_access(true));
    server.feed(300);
    let berlin_viewer = signed(SECRET, Some(&["store-berlin"]), Viewer, 300);
    let berlin_analyst = signed(SECRET, Some(&["store-berlin"]), Analyst, 300);
    let all_viewer = signed(SECRET, None, Viewer, 300);
    let all_operator = signed(SECRET, None, Operator, 300);
    let expired = signed(SECRET, None, Operator, -5);
    let forged = signed(
        "some-other-secret-that-is-32-bytes-long",
        None,
        Operator,
        300,
    );
    let tokens: [(&str, Option<&str>); 7] = [
        ("none", None),
        ("expired", Some(&expired)),
        ("wrong signature", Some(&forged)),
        ("berlin viewer", Some(&berlin_viewer)),
        ("berlin analyst", Some(&berlin_analyst)),
        ("* viewer", Some(&all_viewer)),
        ("* operator", Some(&all_operator)),
    ];
    let replay = "/api/replay/stream?from=2026-01-01T00:00:00Z&to=2026-01-01T00:01:00Z";
    let replay_berlin = format!("{replay}&store=store-berlin");
    let replay_nyc = format!("{replay}&store=store-nyc");
    // Expected status per token, in the order of `tokens`.
    let matrix: Vec<(&str, [u16; 7])> = vec![
        ("/api/snapshot", [401, 401, 401, 403, 403, 200, 200]),
        ("/api/stores", [401, 401, 401, 403, 403, 200, 200]),
        (
            "/api/snapshot?store=store-berlin",
            [401, 401, 401, 200, 200, 200, 200],
        ),
        (
            "/api/snapshot?store=store-nyc",
            [401, 401, 401, 404, 404, 200, 200],
        ),
        (
            "/api/snapshot?store=store-nowhere",
            [401, 401, 401, 404, 404, 404, 404],
        ),
        (
            "/api/stream?store=store-berlin",
            [401, 401, 401, 200, 200, 200, 200],
        ),
        (
            "/api/stream?store=store-nyc",
            [401, 401, 401, 404, 404, 200, 200],
        ),
        ("/api/stream", [401, 401, 401, 403, 403, 200, 200]),
        (&replay_berlin, [401, 401, 401, 403, 200, 403, 200]),
        (&replay_nyc, [401, 401, 401, 403, 404, 403, 200]),
        (replay, [401, 401, 401, 403, 403, 403, 200]),
        ("/metrics", [401, 401, 401, 403, 403, 403, 200]),
        ("/api/session", [401, 401, 401, 200, 200, 200, 200]),
        ("/healthz", [200, 200, 200, 200, 200, 200, 200]),
        ("/", [200, 200, 200, 200, 200, 200, 200]),
        // An API path that does not exist is not told apart without a token.
        ("/api/nope", [401, 401, 401, 404, 404, 404, 404]),
    ];
    let mut failures = Vec::new();
    for (uri, expected) in &matrix {
        for ((name, token), want) in tokens.iter().zip(expected) {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|b| vec![("authorization", b)])
                .unwrap_or_default();
            let response = server.get(uri, &headers).await;
            let status = response.status().as_u16();
            // Past access control a replay may find its one slot taken: 503, not a refusal.
            let slot_busy = uri.starts_with("/api/replay") && *want == 200 && status == 503;
            if status != *want && !slot_busy {
                failures.push(format!("{uri} with {name}: {status}, expected {want}"));
                continue;
            }
            if status >= 400 && !slot_busy {
                let body = body(response).await;
                let json: serde_json::Value =
                    serde_json::from_slice(&body).expect("every error is JSON");
                assert!(json["error"].is_string(), "{uri} {name}: {json}");
                if status == 401 {
                    assert!(
                        !String::from_utf8_lossy(&body).contains("eyJ"),
                        "never echoes a token"
                    );
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Out of scope and unknown: the same answer but for the id asked about.
    let reason = |uri: &'static str| {
        let server = &server;
        let bearer = format!("Bearer {berlin_viewer}");
        async move {
            let response = server.get(uri, &[("authorization", &bearer)]).await;
            let json: serde_json::Value =
                serde_json::from_slice(&body(response).await).expect("json");
            json["error"].as_str().expect("reason").to_owned()
        }
    };
    let unknown = reason("/api/snapshot?store=store-gone")
        .await
        .replace("store-gone", "X");
    for out_of_scope in [
        "/api/snapshot?store=store-nyc",
        "/api/stream?store=store-nyc",
    ] {
        assert_eq!(
            reason(out_of_scope).await.replace("store-nyc", "X"),
            unknown,
            "{out_of_scope}"
        );
    }
    // A 401 says how to authenticate.
    let response = server.get("/api/snapshot", &[]).await;
    assert!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer"))
    );
}

/// Tokens in the URL are refused with a reason, even with auth off; the session cookie
/// works where a header would, and only a bearer header can create one.
#[tokio::test]
async fn url_tokens_are_refused_and_the_session_cookie_stands_in_for_the_header() {
    let open = TestServer::start(Duration::from_secs(1));
    for uri in [
        "/api/snapshot?access_token=abc",
        "/api/stream?store=store-berlin&token=abc",
        "/metrics?JWT=abc",
    ] {
        let response = open.get(uri, &[]).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
        let json: serde_json::Value = serde_json::from_slice(&body(response).await).expect("json");
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.contains("not accepted in the URL")),
            "{json}"
        );
    }
    let mut server = TestServer::start_with(Duration::from_secs(1), jwt_access(false));
    server.feed(100);
    let token = signed(
        SECRET,
        Some(&["store-berlin"]),
        crate::auth::Role::Viewer,
        300,
    );
    let bearer = format!("Bearer {token}");
    let created = server
        .send(
            axum::http::Method::POST,
            "/api/session",
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(created.status(), StatusCode::OK);
    let cookie = created
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    for attribute in [
        "__Host-storepulse-session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let session: serde_json::Value = serde_json::from_slice(&body(created).await).expect("json");
    assert_eq!(session["stores"], serde_json::json!(["store-berlin"]));
    assert_eq!(session["role"], "viewer");
    let pair = cookie.split(';').next().expect("name=value");
    assert_eq!(
        server
            .get("/api/snapshot?store=store-berlin", &[("cookie", pair)])
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        server
            .get("/api/snapshot?store=store-nyc", &[("cookie", pair)])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // A cookie cannot mint a session (only a bearer header, which a cross-site form
    // cannot send); logging out clears it.
    let from_cookie = server
        .send(
            axum::http::Method::POST,
            "/api/session",
            &[("cookie", pair)],
        )
        .await;
    assert_eq!(from_cookie.status(), StatusCode::UNAUTHORIZED);
    let ended = server
        .send(axum::http::Method::DELETE, "/api/session", &[])
        .await;
    assert!(
        ended
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    // Metrics stay open unless protected.
    assert_eq!(server.get("/metrics", &[]).await.status(), StatusCode::OK);
}

/// CORS answers only the allow-listed origin, by name and with credentials; never `*`.
/// The page may not be framed.
#[tokio::test]
async fn cors_answers_only_allowed_origins_and_the_page_cannot_be_framed() {
    let server = TestServer::start_with(Duration::from_secs(1), jwt_access(false));
    let preflight = |origin: &'static str| {
        let server = &server;
        async move {
            server
                .send(
                    axum::http::Method::OPTIONS,
                    "/api/snapshot",
                    &[
                        ("origin", origin),
                        ("access-control-request-method", "GET"),
                        ("access-control-request-headers", "authorization"),
                    ],
                )
                .await
        }
    };
    let allowed = preflight("https://ops.example").await;
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    let header = |r: &axum::response::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://ops.example")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let refused = preflight("https://evil.example").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&refused, "access-control-allow-origin"), None);
    let simple = server
        .get("/healthz", &[("origin", "https://ops.example")])
        .await;
    assert_eq!(
        header(&simple, "access-control-allow-origin").as_deref(),
        Some("https://ops.example")
    );
    let other = server
        .get("/healthz", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    let page = server.get("/", &[]).await;
    assert!(
        header(&page, "content-security-policy")
            .is_some_and(|p| p.contains("frame-ancestors 'none'"))
    );
}

/// A stream ends at its token's expiry with a `session-expired` event after the frames.
#[tokio::test]
async fn a_stream_ends_at_its_tokens_expiry_with_a_session_expired_event() {
    let mut server = TestServer::start_with(Duration::from_secs(1), jwt_access(false));
    server.feed(100);
    let token = signed(
        SECRET,
        Some(&["store-berlin"]),
        crate::auth::Role::Viewer,
        2,
    );
    let bearer = format!("Bearer {token}");
    let response = server
        .get(
            "/api/stream?store=store-berlin",
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    let mut parser = SseParser::new();
    let mut seen = Vec::new();
    let started = Instant::now();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.frame())
            .await
            .expect("the stream ends within 10 s");
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.expect("a frame").into_data() {
            parser.push(&data, |e| seen.push(e.to_owned()));
        }
    }
    let names = names(&seen);
    assert_eq!(names.first(), Some(&"snapshot"), "{names:?}");
    assert_eq!(names.last(), Some(&"session-expired"), "{names:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before its expiry"
    );
}

/// The heartbeat's `progress` event says how many streams watch its scope, and the gauges
/// count them; a stream that ends leaves the count.
#[tokio::test]
async fn progress_events_say_how_many_streams_watch_their_scope() {
    let mut server = TestServer::start_tuned(
        Duration::from_secs(1),
        super::access::AccessControl::open(),
        None,
        |stream| stream.heartbeat = Duration::from_millis(100),
    );
    server.feed(100);
    let berlin = "/api/stream?store=store-berlin";
    let first = server.get(berlin, &[]).await;
    let second = server.get(berlin, &[]).await;
    let everything = server.get("/api/stream", &[]).await;
    let mut first = first.into_body();
    let mut second = second.into_body();
    let mut everything = everything.into_body();
    assert_eq!(watching(&mut first).await, 2);
    assert_eq!(watching(&mut second).await, 2);
    assert_eq!(
        watching(&mut everything).await,
        1,
        "the rollup is its own scope"
    );
    let metrics =
        String::from_utf8(body(server.get("/metrics", &[]).await).await.to_vec()).expect("text");
    for line in [
        "storepulse_watched_stores 1",
        "storepulse_watchers_most 2",
        "storepulse_watchers_rollup 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    drop(second);
    // The dropped stream's body ends its writer, which leaves the count.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = watching(&mut first).await;
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "still {n} watching");
    }
}

/// The `watching` of a stream's next progress event.
async fn watching(body: &mut axum::body::Body) -> u64 {
    let mut parser = SseParser::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a progress event within 10 s")
            .expect("open")
            .expect("a frame");
        let mut found = None;
        if let Ok(data) = frame.into_data() {
            parser.push(&data, |e| {
                if e.event == "progress" {
                    let progress: serde_json::Value = serde_json::from_slice(e.data).expect("JSON");
                    found = progress["watching"].as_u64();
                }
            });
        }
        if let Some(n) = found {
            return n;
        }
    }
}

/// The `name=value` of each `Set-Cookie` of a response, as a `Cookie` header sends them.
fn cookies_of(response: &axum::response::Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a stream is still open after `wait` (no frame: nothing was fed) or has ended,
/// with the names of the events it sent until then.
async fn open_after(body: &mut axum::body::Body, wait: Duration) -> (bool, Vec<String>) {
    let mut parser = SseParser::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return (true, seen),
            Ok(None) => return (false, seen),
            Ok(Some(frame)) => {
                if let Ok(data) = frame.expect("a frame").into_data() {
                    parser.push(&data, |e| seen.push(e.event.to_owned()));
                }
            }
        }
    }
}

/// A stream opened with the session cookies follows the session: a renewal with a token of
/// the same grant carries it past its first token's expiry, without a reconnect; signing
/// out ends it at once with `session-expired`; a token of another grant is a new session.
#[tokio::test]
async fn a_renewed_session_keeps_its_streams_open_and_signing_out_ends_them() {
    use crate::auth::Role::Viewer;
    let mut server = TestServer::start_with(Duration::from_secs(1), jwt_access(false));
    server.feed(100);
    let post = |cookies: String, token: String| {
        let router = server.router.clone();
        async move {
            let mut request = HttpRequest::post("/api/session")
                .header("authorization", format!("Bearer {token}"));
            if !cookies.is_empty() {
                request = request.header("cookie", cookies);
            }
            router
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("infallible")
        }
    };
    let first = post(
        String::new(),
        signed(SECRET, Some(&["store-berlin"]), Viewer, 2),
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    let cookies = cookies_of(&first);
    assert!(cookies.contains("__Host-storepulse-sid="), "{cookies}");
    let stream = server
        .get("/api/stream?store=store-berlin", &[("cookie", &cookies)])
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.into_body();
    // Renewed with a token of the same grant before the first one expires.
    let renewed = post(
        cookies.clone(),
        signed(SECRET, Some(&["store-berlin"]), Viewer, 60),
    )
    .await;
    let answer: serde_json::Value = serde_json::from_slice(&body(renewed).await).expect("JSON");
    assert_eq!(answer["renewed"], true, "{answer}");
    assert_eq!(answer["renew_url"], "https://shop.example/storepulse-token");
    let (open, events) = open_after(&mut stream, Duration::from_secs(4)).await;
    assert!(open, "past the first token's expiry: {events:?}");
    // A token for other stores renews nothing: it is a new session with a new id.
    let other = post(
        cookies.clone(),
        signed(SECRET, Some(&["store-nyc"]), Viewer, 60),
    )
    .await;
    let other_cookies = cookies_of(&other);
    let answer: serde_json::Value = serde_json::from_slice(&body(other).await).expect("JSON");
    assert_eq!(answer["renewed"], false);
    let sid = |c: &str| {
        c.split("; ")
            .find(|p| p.starts_with("__Host-storepulse-sid="))
            .map(str::to_owned)
    };
    assert_ne!(sid(&other_cookies), sid(&cookies), "a new session id");
    // Signing out ends the session's streams now.
    let started = Instant::now();
    let signed_out = server
        .send(
            axum::http::Method::DELETE,
            "/api/session",
            &[("cookie", &cookies)],
        )
        .await;
    assert_eq!(signed_out.status(), StatusCode::NO_CONTENT);
    let (open, events) = open_after(&mut stream, Duration::from_secs(5)).await;
    assert!(!open, "signed out: the stream ended");
    assert_eq!(
        events.last().map(String::as_str),
        Some("session-expired"),
        "{events:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once, not at an expiry"
    );
}
