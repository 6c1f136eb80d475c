//! `storepulse serve`: wires the pieces and owns start-up and shutdown order.
//!
//! Start: HTTP first (health answers while the rest starts), migrations, the dead-letter
//! topic, the partition layout (waiting for the topics to exist), the newest checkpoint,
//! then the ingest thread, the checkpoint writer and the lag monitor. A dependency that is
//! down delays, and shows in `/readyz`; it never crashes the process.
//!
//! Every task is spawned on one [`TaskTracker`] and stopped through one tree of
//! [`CancellationToken`]s, each stage's token a child of the next one's, so cancelling a
//! stage also stops every stage before it. Stop (SIGINT/SIGTERM, or the ingest loop
//! ending), in this order, each joined before the next:
//! 1. HTTP: stop accepting, end the open streams (clients resume by id elsewhere or later);
//! 2. ingest: stop consuming, freeze the final checkpoint;
//! 3. checkpoint writer: write it (bounded by [`FINAL_CHECKPOINT_WAIT`]);
//! 4. lag monitor;
//!
//! then exit 0 (non-zero if ingest failed or the final checkpoint was not written).

use crate::aggregate::{AggregateConfig, Layout, PartitionKey, State};
use crate::checkpoint::{CheckpointError, CheckpointStore, Frozen};
use crate::config::Settings;
use crate::events::{Codec, TopicRole};
use crate::fanout::{Hub, Status};
use crate::http::access::AccessControl;
use crate::http::listener::StreamListener;
use crate::http::{self, AppState};
use crate::ingest::{Engine, EngineSettings, Ingest, Outputs};
use crate::kafka::{self, KafkaSettings};
use crate::live::LogLimits;
use crate::metrics::Metrics;
use anyhow::Context;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest the final checkpoint may take at shutdown.
pub const FINAL_CHECKPOINT_WAIT: Duration = Duration::from_secs(15);

/// The shutdown stages, in order. Each token is a child of the next stage's.
struct Stages {
    http: CancellationToken,
    ingest: CancellationToken,
    writer: CancellationToken,
    monitor: CancellationToken,
}

impl Stages {
    fn new() -> Stages {
        let monitor = CancellationToken::new();
        let writer = monitor.child_token();
        let ingest = writer.child_token();
        let http = ingest.child_token();
        Stages {
            http,
            ingest,
            writer,
            monitor,
        }
    }
}

/// What start-up builds before the ingest thread: shared by the HTTP side and the engine.
struct Wiring {
    codec: Codec,
    aggregate: Arc<AggregateConfig>,
    metrics: Arc<Metrics>,
    store: CheckpointStore,
    requests: mpsc::Receiver<crate::fanout::Request>,
    status: watch::Sender<Status>,
    /// Where the hub goes once the layout is known (HTTP reads it from there).
    hub: Arc<OnceLock<Arc<Hub>>>,
}

/// The running pipeline's tasks.
struct Pipeline {
    ingest: JoinHandle<Result<Arc<Frozen>, kafka::KafkaError>>,
    writer: JoinHandle<bool>,
    monitor: JoinHandle<()>,
}

/// Runs `serve` until `stop` is cancelled (or the ingest loop fails).
pub async fn serve(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let stages = Stages::new();
    crate::telemetry::follow_producer_context(settings.telemetry.producer_context);
    let (wiring, http_app) = wire(&settings, &stages)?;
    raise_open_files_limit();
    let server = tasks.spawn(run_http(
        start_http(&settings, wiring.metrics.accept_errors.clone())?,
        http_app,
        settings.http.header_timeout,
        settings.http.max_connections,
    ));
    let migrated = migrate_early(&settings, &wiring.store).await;
    let kafka_settings = settings.kafka();
    ensure_dead_letter_topic(&kafka_settings, &settings.kafka.dead_letter_topic).await;
    let Some(layout) = wait_for_layout(&kafka_settings, &stop).await else {
        return stop_early(stages, tasks, server).await;
    };
    let state = restore(&wiring.store, &layout, &wiring.aggregate).await;
    let mut pipeline = start_pipeline(&settings, &tasks, &stages, wiring, layout, state, migrated);
    tasks.close();
    let ended = tokio::select! {
        () = stop.cancelled() => {
            tracing::info!("stopping: http, then ingest and the final checkpoint");
            None
        }
        result = &mut pipeline.ingest => {
            tracing::error!("the ingest loop ended");
            Some(result)
        }
    };
    shut_down(stages, tasks, server, pipeline, ended).await
}

/// Who may read what: refuses `auth.mode = "none"` on a non-loopback address unless
/// `auth.allow_anonymous`, reads the key files, and reloads them on SIGHUP.
fn access_control(settings: &Settings) -> anyhow::Result<AccessControl> {
    let auth = &settings.auth;
    if auth.mode == "none" && !settings.http.addr.ip().is_loopback() && !auth.allow_anonymous {
        anyhow::bail!(
            "http.addr {} is not a loopback address and auth.mode is \"none\": anyone who can reach it would read every store. Set auth.mode = \"jwt\" with a key (README, Security), or auth.allow_anonymous = true (STOREPULSE_AUTH_ALLOW_ANONYMOUS=true) if a proxy in front authenticates",
            settings.http.addr
        );
    }
    let verifier = crate::auth::Verifier::new(auth)
        .context("auth key files")?
        .map(Arc::new);
    if let Some(verifier) = &verifier {
        let verifier = Arc::clone(verifier);
        tokio::spawn(async move {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hangups.recv().await.is_some() {
                match verifier.reload() {
                    Ok(keys) => tracing::info!(keys, "SIGHUP: auth keys reloaded"),
                    Err(error) => {
                        tracing::error!(error = %error, "SIGHUP: auth keys not reloaded; the keys in use stay");
                    }
                }
            }
        });
    }
    Ok(AccessControl {
        verifier,
        protect_metrics: auth.protect_metrics,
        cors_origins: settings.http.cors_origins.clone(),
    })
}

/// The channels, counters and checkpoint store, and the HTTP side's share of them.
fn wire(settings: &Settings, stages: &Stages) -> anyhow::Result<(Wiring, AppState)> {
    let metrics = Arc::new(Metrics::new(&settings.kafka().topics));
    let auth = &settings.auth;
    metrics.name_stores(auth.mode == "none" || auth.protect_metrics || auth.metrics_name_stores);
    let store =
        CheckpointStore::connect_lazy(&settings.checkpoint.database_url, &settings.kafka.group_id)
            .context("checkpoint store settings")?;
    let access = Arc::new(access_control(settings)?);
    let (request_tx, requests) = mpsc::channel(1024);
    let (status, status_rx) = watch::channel(Status::default());
    // Set when the partition layout is known; streams wait for assignment before that.
    let hub = Arc::new(OnceLock::new());
    let http_app = AppState {
        hub: Arc::clone(&hub),
        requests: request_tx,
        status: status_rx,
        checkpoints: store.clone(),
        metrics: Arc::clone(&metrics),
        max_lag: settings.ready.max_lag,
        stream: Arc::new(settings.stream.clone()),
        stop: stages.http.clone(),
        progress: Default::default(),
        replays: Arc::new(crate::replay::stream::ReplayService::new(
            Arc::new(settings.clone()),
            settings.replay.max_concurrent,
        )),
        access: Arc::clone(&access),
        limits: Arc::new(crate::http::limits::ClientLimits::new(
            settings.limit_settings(),
        )),
    };
    let wiring = Wiring {
        codec: Codec::new(&settings.confluent_ids()?).context("schemas")?,
        aggregate: Arc::new(settings.aggregate_config()?),
        metrics,
        store,
        requests,
        status,
        hub,
    };
    Ok((wiring, http_app))
}

/// Starts the ingest thread (with its engine), the checkpoint writer and the lag monitor.
fn start_pipeline(
    settings: &Settings,
    tasks: &TaskTracker,
    stages: &Stages,
    wiring: Wiring,
    layout: Layout,
    state: State,
    migrated: bool,
) -> Pipeline {
    let (checkpoint_tx, checkpoint_rx) = watch::channel(None);
    let (written_tx, written_rx) = mpsc::unbounded_channel();
    let status_rx = wiring.status.subscribe();
    let stream = &settings.stream;
    let hub = Arc::new(Hub::new(
        layout.clone(),
        LogLimits {
            frames: stream.log_max_frames,
            bytes: stream.log_max_bytes,
            age_ms: u64::try_from(stream.log_max_age.as_millis()).unwrap_or(u64::MAX),
        },
        stream.queue_frames,
    ));
    let _ = wiring.hub.set(Arc::clone(&hub));
    let engine = Engine::new(
        state,
        layout.clone(),
        wiring.codec,
        engine_settings(settings),
        Outputs {
            hub,
            checkpoints: checkpoint_tx,
            status: wiring.status,
            metrics: Arc::clone(&wiring.metrics),
        },
    );
    let ingest = Ingest {
        kafka: settings.kafka(),
        group_id: settings.kafka.group_id.clone(),
        dead_letter_topic: settings.kafka.dead_letter_topic.clone(),
        engine,
        written: written_rx,
        requests: wiring.requests,
        stop: stages.ingest.clone(),
        consumer_errors_log: crate::log_every::LogEvery::new(Duration::from_secs(10)),
    };
    // Its own named OS thread (`top -H` shows `ingest`), joined through the tracker.
    let thread = std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || ingest.run())
        .unwrap_or_else(|e| panic!("cannot start the ingest thread: {e}"));
    Pipeline {
        ingest: tasks.spawn_blocking(move || {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }),
        writer: tasks.spawn(checkpoint_writer(Writer {
            store: wiring.store,
            layout: layout.clone(),
            keep: crate::checkpoint::Keep {
                newest: settings.checkpoint.keep,
                hourly: settings.checkpoint.keep_hourly,
            },
            frozen: checkpoint_rx,
            written: written_tx,
            metrics: Arc::clone(&wiring.metrics),
            migrated,
            stop: stages.writer.clone(),
            base: None,
        })),
        monitor: tasks.spawn(monitor_lag(
            settings.kafka(),
            layout,
            status_rx,
            wiring.metrics,
            stages.monitor.clone(),
        )),
    }
}

/// The documented order: HTTP, ingest (final checkpoint frozen), the writer (it written,
/// bounded), the lag monitor; each joined before the next. `ended` is the ingest result if
/// it ended by itself.
async fn shut_down(
    stages: Stages,
    tasks: TaskTracker,
    server: JoinHandle<std::io::Result<()>>,
    pipeline: Pipeline,
    ended: Option<Result<Result<Arc<Frozen>, kafka::KafkaError>, tokio::task::JoinError>>,
) -> anyhow::Result<()> {
    stages.http.cancel();
    let http_result = server.await.context("http task")?;
    stages.ingest.cancel();
    let ingest_result = match ended {
        Some(result) => result,
        None => pipeline.ingest.await,
    };
    stages.writer.cancel();
    let final_checkpoint = match tokio::time::timeout(FINAL_CHECKPOINT_WAIT, pipeline.writer).await
    {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(anyhow::anyhow!(
            "the final checkpoint failed; the next start resumes from the previous one"
        )),
        Ok(Err(_)) => Err(anyhow::anyhow!("the checkpoint writer panicked")),
        Err(_) => {
            tracing::error!(wait = ?FINAL_CHECKPOINT_WAIT, "the final checkpoint did not finish in time");
            Err(anyhow::anyhow!(
                "the final checkpoint did not finish within {FINAL_CHECKPOINT_WAIT:?}"
            ))
        }
    };
    stages.monitor.cancel();
    let _ = pipeline.monitor.await;
    tasks.wait().await;
    http_result.context("http server")?;
    match ingest_result {
        Ok(Ok(_)) => final_checkpoint,
        Ok(Err(error)) => Err(error).context("ingest failed"),
        Err(_) => anyhow::bail!("the ingest thread panicked"),
    }
}

/// Binds the HTTP listener (printing its address: scripts and tests read that line).
/// Raises the soft limit of open files to the hard one: every client is a descriptor, and
/// a common default soft limit of 1024 runs out long before memory does.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit (RLIMIT_NOFILE soft = hard)"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
}

fn start_http(
    settings: &Settings,
    accept_errors: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<StreamListener> {
    let listener = http::listener::bind(settings.http.addr)
        .with_context(|| format!("cannot listen on {}", settings.http.addr))?;
    let address = listener.local_addr()?;
    let send_buffer = Some(settings.stream.socket_send_buffer).filter(|b| *b > 0);
    println!("storepulse serving on http://{address}");
    tracing::info!(%address, "http listening");
    Ok(StreamListener::new(listener, send_buffer, accept_errors)?)
}

/// Serves until the HTTP stage is cancelled; the open streams end on the same token.
async fn run_http(
    listener: StreamListener,
    app: AppState,
    header_timeout: Duration,
    max_connections: usize,
) -> std::io::Result<()> {
    let stop = app.stop.clone();
    http::server::serve(
        listener,
        http::app(app),
        header_timeout,
        max_connections,
        stop,
    )
    .await
}

/// Stopped before ingest started: only HTTP runs.
async fn stop_early(
    stages: Stages,
    tasks: TaskTracker,
    server: JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    stages.monitor.cancel();
    tasks.close();
    let result = server.await.context("http task")?;
    tasks.wait().await;
    result.context("http server")
}

fn engine_settings(settings: &Settings) -> EngineSettings {
    let stream = &settings.stream;
    EngineSettings {
        frame_interval: stream.frame_interval,
        resume_wait: stream.resume_wait,
        checkpoint_interval: settings.checkpoint.interval,
    }
}

/// Applies the migrations at start if configured; `false` if they still have to run
/// (the writer retries them before its first checkpoint).
async fn migrate_early(settings: &Settings, store: &CheckpointStore) -> bool {
    if !settings.checkpoint.migrate_on_start {
        return true;
    }
    match store.migrate().await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = %error, "migrations failed; retried before the first checkpoint");
            false
        }
    }
}

async fn ensure_dead_letter_topic(settings: &KafkaSettings, topic: &str) {
    if let Err(error) = kafka::ensure_topics(settings, &[topic], 1, Duration::from_secs(10)).await {
        tracing::warn!(error = %error, topic, "could not create the dead-letter topic");
    }
}

/// The newest checkpoint's state, or an empty one (rebuilt from Kafka) when there is
/// none, the store is down, or the checkpoint cannot be restored.
async fn restore(
    store: &CheckpointStore,
    layout: &Layout,
    aggregate: &Arc<AggregateConfig>,
) -> State {
    match store.load_newest(layout, Arc::clone(aggregate)).await {
        Ok(Some((id, state))) => {
            tracing::info!(checkpoint = id, position = %layout.encode(state.position()), "restored checkpoint");
            return state;
        }
        Ok(None) => tracing::info!("no checkpoint: reading every partition from the beginning"),
        Err(error @ CheckpointError::Corrupt { .. }) => {
            tracing::error!(error = %error, "the newest checkpoint cannot be restored (a defect): rebuilding from kafka")
        }
        Err(error) => {
            tracing::warn!(error = %error, "checkpoint store unavailable at start: rebuilding from kafka")
        }
    }
    State::new(Arc::clone(aggregate))
}

/// Waits until the three topics exist, then returns their layout; `None` if stopped first.
async fn wait_for_layout(settings: &KafkaSettings, stop: &CancellationToken) -> Option<Layout> {
    let mut warned = false;
    loop {
        let probe = settings.clone();
        let counts = tokio::task::spawn_blocking(move || {
            kafka::partition_counts(&probe, &probe.topics.all(), Duration::from_secs(5))
        })
        .await
        .unwrap_or_else(|e| panic!("metadata thread panicked: {e}"));
        match counts {
            Ok(counts) if counts.iter().all(Option::is_some) => {
                let topics = TopicRole::ALL
                    .into_iter()
                    .zip(counts)
                    .map(|(role, count)| {
                        (
                            role,
                            settings.topics.name(role).to_owned(),
                            count.unwrap_or(0),
                        )
                    })
                    .collect();
                return Some(Layout::new(topics));
            }
            Ok(counts) if !warned => {
                let missing: Vec<&str> = settings
                    .topics
                    .all()
                    .into_iter()
                    .zip(counts)
                    .filter(|(_, c)| c.is_none())
                    .map(|(name, _)| name)
                    .collect();
                tracing::warn!(
                    ?missing,
                    "waiting for topics to exist (e.g. storepulse simulate creates them)"
                );
                warned = true;
            }
            Err(error) if !warned => {
                tracing::warn!(error = %error, "waiting for kafka");
                warned = true;
            }
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// Every second, compares the ingest position with the partitions' ends and publishes the
/// lag (the `consumer_lag_records` metric, which `/readyz` reads). Unknown is -1.
async fn monitor_lag(
    settings: KafkaSettings,
    layout: Layout,
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let partitions: Vec<(String, i32, PartitionKey)> = layout
        .topics()
        .iter()
        .flat_map(|(role, name, count)| {
            (0..*count).map(move |partition| {
                let key = PartitionKey {
                    role: *role,
                    partition,
                };
                (name.clone(), partition, key)
            })
        })
        .collect();
    let probe = match kafka::WatermarkProbe::new(&settings) {
        Ok(probe) => Arc::new(probe),
        Err(error) => {
            tracing::error!(error = %error, "cannot create the watermark probe; lag stays unknown");
            return;
        }
    };
    let names: Vec<(String, i32)> = partitions.iter().map(|(n, p, _)| (n.clone(), *p)).collect();
    while !stop.is_cancelled() {
        let position = status.borrow().position.clone();
        let probe_now = Arc::clone(&probe);
        let names_now = names.clone();
        let watermarks = tokio::task::spawn_blocking(move || {
            probe_now.watermarks(&names_now, Duration::from_secs(2))
        })
        .await
        .unwrap_or_else(|e| panic!("watermark thread panicked: {e}"));
        let lag = match watermarks {
            Ok(watermarks) => partitions
                .iter()
                .zip(watermarks)
                .map(|((topic, partition, key), (low, high))| {
                    // Records before the first retained one were deleted by retention:
                    // there is nothing to read there, so a position behind it (a partition
                    // that was quiet longer than its retention) is not behind.
                    let next = position.next_offset(*key).max(low);
                    metrics.partition(topic, *partition, next, high);
                    (high - next).max(0)
                })
                .sum(),
            Err(error) => {
                tracing::debug!(error = %error, "watermarks unavailable");
                -1
            }
        };
        metrics.consumer_lag.set(lag);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => {}
        }
    }
}

struct Writer {
    store: CheckpointStore,
    layout: Layout,
    keep: crate::checkpoint::Keep,
    frozen: watch::Receiver<Option<Arc<Frozen>>>,
    written: mpsc::UnboundedSender<Arc<Frozen>>,
    metrics: Arc<Metrics>,
    migrated: bool,
    stop: CancellationToken,
    /// The chain this process's checkpoints build on (its first, whole, checkpoint).
    base: Option<i64>,
}

/// First wait after a failed checkpoint.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between checkpoint attempts while the store is down: a returning database
/// is noticed within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The wait after `current` failed too: doubling, capped at [`MAX_BACKOFF`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Writes the newest frozen checkpoint whenever it changes; on failure retries with
/// exponential backoff ([`FIRST_BACKOFF`] to [`MAX_BACKOFF`]), always with the newest one.
/// On stop, writes what is newest once more and returns whether that final write
/// succeeded (or had nothing new to write).
async fn checkpoint_writer(mut w: Writer) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let mut last_position: Option<String> = None;
    loop {
        let finishing = w.stop.is_cancelled();
        let frozen = w.frozen.borrow_and_update().clone();
        if let Some(frozen) =
            frozen.filter(|f| last_position.as_deref() != Some(f.position.as_str()))
        {
            match w.write(Arc::clone(&frozen)).await {
                Ok(()) => {
                    last_position = Some(frozen.position.clone());
                    backoff = FIRST_BACKOFF;
                    w.metrics.checkpoint_consecutive_failures.set(0);
                    let _ = w.written.send(frozen);
                }
                Err(error) => {
                    w.metrics.checkpoint_failures.inc();
                    w.metrics.checkpoint_consecutive_failures.inc();
                    if finishing {
                        tracing::error!(error = %error, "final checkpoint failed; the next start resumes from the previous one");
                        return false;
                    }
                    tracing::warn!(error = %error, retry_in = ?backoff, "checkpoint failed; processing continues");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = w.stop.cancelled() => {}
                    }
                    backoff = next_backoff(backoff);
                    continue;
                }
            }
        }
        if finishing {
            return true;
        }
        tokio::select! {
            changed = w.frozen.changed() => if changed.is_err() && !w.stop.is_cancelled() { return true },
            () = w.stop.cancelled() => {}
        }
    }
}

impl Writer {
    /// One checkpoint transaction (migrating first if that is still owed), with metrics.
    async fn write(&mut self, frozen: Arc<Frozen>) -> Result<(), CheckpointError> {
        if !self.migrated {
            self.store.migrate().await?;
            self.migrated = true;
        }
        let written = self
            .store
            .write(frozen, &self.layout, self.keep, self.base)
            .await?;
        self.base = Some(written.base_id);
        self.metrics.checkpoints.inc();
        self.metrics
            .checkpoint_duration
            .observe(written.duration.as_secs_f64());
        self.metrics.checkpoint_size.observe(written.bytes as f64);
        self.metrics.checkpoint_last_success.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        self.metrics
            .checkpoint_stores
            .observe(written.stores as f64);
        tracing::debug!(id = written.id, bytes = written.bytes, stores = written.stores, duration = ?written.duration, "checkpoint written");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TopicRole;

    #[test]
    fn backoff_doubles_from_half_a_second_to_eight() {
        let mut waits = vec![FIRST_BACKOFF];
        for _ in 0..6 {
            waits.push(next_backoff(*waits.last().expect("one")));
        }
        let secs: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
    }

    #[test]
    fn cancelling_a_stage_stops_every_stage_before_it_and_none_after() {
        let stages = Stages::new();
        stages.ingest.cancel();
        assert!(stages.http.is_cancelled() && stages.ingest.is_cancelled());
        assert!(!stages.writer.is_cancelled() && !stages.monitor.is_cancelled());
        stages.monitor.cancel();
        assert!(stages.writer.is_cancelled());
    }

    /// With the database down, a checkpoint fails and counts; stopped while backing off, the
    /// writer tries once more and returns (paused time: no backoff is slept for real).
    #[tokio::test(start_paused = true)]
    async fn a_dead_database_is_retried_with_backoff_and_the_writer_still_stops() {
        let layout = Layout::new(vec![
            (TopicRole::Orders, "o".into(), 1),
            (TopicRole::Inventory, "i".into(), 1),
            (TopicRole::Activity, "a".into(), 1),
        ]);
        // Nothing listens on port 1: every attempt fails at once.
        let store = CheckpointStore::connect_lazy("postgres://postgres@127.0.0.1:1/none", "g")
            .expect("a lazy pool");
        let state = State::new(Arc::new(AggregateConfig::default()));
        let (frozen_tx, frozen) = watch::channel(Some(Arc::new(Frozen::whole(&state, &layout))));
        let (written, mut written_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let writer = tokio::spawn(checkpoint_writer(Writer {
            store,
            layout,
            keep: crate::checkpoint::Keep {
                newest: 3,
                hourly: 0,
            },
            frozen,
            written,
            metrics: Arc::clone(&metrics),
            migrated: true,
            stop: stop.clone(),
            base: None,
        }));
        let failures = || metrics.checkpoint_failures.get();
        for _ in 0..600 {
            if failures() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(failures() >= 1, "the first attempt failed");
        // Stopped while backing off: one last attempt, then it returns (no endless retry).
        stop.cancel();
        drop(frozen_tx);
        let final_written = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer stops")
            .expect("no panic");
        assert!(!final_written, "the failed final checkpoint is reported");
        assert!(written_rx.try_recv().is_err(), "nothing was written");
    }
}
