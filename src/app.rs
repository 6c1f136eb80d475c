//! `storepulse serve`: wires the pieces and owns start-up and shutdown order, and nothing
//! else (each piece lives next to what it owns: the checkpoint writer and restore in
//! `checkpoint/writer.rs`, the lag monitor in `ingest/lag.rs`, the topics' layout in
//! `kafka.rs`, access control in `http/access.rs`).
//!
//! Start: HTTP first (health answers while the rest starts), migrations, the dead-letter
//! topic, the partition layout (waiting for the topics to exist), the newest checkpoint,
//! then the ingest thread, the checkpoint writer and the lag monitor. A dependency that is
//! down delays, and shows in `/readyz`; it never crashes the process.
//!
//! Every task and thread is spawned on one [`TaskTracker`] (`tasks.rs`) and stopped through one tree of
//! [`CancellationToken`]s, each stage's token a child of the next one's, so cancelling a
//! stage also stops every stage before it. Stop (SIGINT/SIGTERM, or the ingest loop
//! ending), in this order, each joined before the next:
//! 1. HTTP: stop accepting, end the open streams (clients resume by id elsewhere or later);
//! 2. ingest: stop consuming, freeze the final checkpoint;
//! 3. checkpoint writer: write it (bounded by [`FINAL_CHECKPOINT_WAIT`]);
//! 4. lag monitor;
//!
//! then exit 0 (non-zero if ingest failed or the final checkpoint was not written).

use crate::aggregate::{AggregateConfig, Layout, State};
use crate::checkpoint::{self, CheckpointStore, Frozen, Writer};
use crate::config::Settings;
use crate::events::Codec;
use crate::fanout::{Hub, Status};
use crate::http::access::AccessControl;
use crate::http::listener::StreamListener;
use crate::http::{self, AppState};
use crate::ingest::{Engine, EngineSettings, Ingest, Outputs};
use crate::kafka;
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

/// The shutdown stages, in order. Each token is a child of the next stage's; the drain
/// (`http.drain`) comes before them all.
pub(crate) struct Stages {
    pub(crate) drain: Arc<crate::http::drain::Drain>,
    pub(crate) http: CancellationToken,
    pub(crate) ingest: CancellationToken,
    pub(crate) writer: CancellationToken,
    pub(crate) monitor: CancellationToken,
}

impl Stages {
    pub(crate) fn new(drain: Duration) -> Stages {
        let monitor = CancellationToken::new();
        let writer = monitor.child_token();
        let ingest = writer.child_token();
        let http = ingest.child_token();
        Stages {
            drain: Arc::new(crate::http::drain::Drain::new(drain)),
            http,
            ingest,
            writer,
            monitor,
        }
    }

    /// Stops HTTP: first the drain (readiness false, streams ending one by one over its
    /// window), then the server and whatever streams are left.
    pub(crate) async fn stop_http(&self) {
        let window = self.drain.window();
        if !window.is_zero() {
            tracing::info!(window = ?window, "draining: not ready, streams end one by one");
            self.drain.start();
            tokio::time::sleep(window).await;
        }
        self.http.cancel();
    }
}

/// What start-up builds before the ingest thread: shared by the HTTP side and the engine.
pub(crate) struct Wiring {
    pub(crate) codec: Codec,
    pub(crate) aggregate: Arc<AggregateConfig>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: CheckpointStore,
    pub(crate) requests: mpsc::Receiver<crate::fanout::Request>,
    pub(crate) status: watch::Sender<Status>,
    /// Where the hub goes once the layout is known (HTTP reads it from there).
    pub(crate) hub: Arc<OnceLock<Arc<Hub>>>,
    /// The schema registry's fetcher (`schema_registry.url`), if one is configured.
    pub(crate) schemas: Option<crate::ingest::schemas::SchemaWait>,
}

/// How the ingest thread ended: its result, or its panic.
type IngestEnd = std::thread::Result<Result<Arc<Frozen>, kafka::KafkaError>>;

/// The running pipeline's tasks.
struct Pipeline {
    ingest: tokio::sync::oneshot::Receiver<IngestEnd>,
    writer: JoinHandle<bool>,
    monitor: JoinHandle<()>,
}

/// Runs `serve` until `stop` is cancelled (or the ingest loop fails).
pub async fn serve(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let stages = Stages::new(settings.http.drain);
    crate::telemetry::follow_producer_context(settings.telemetry.producer_context);
    let (wiring, http_app) = wire(&settings, &stages, &tasks)?;
    http::listener::raise_open_files_limit();
    let server = tasks.spawn(run_http(
        start_http(&settings, &tasks, wiring.metrics.accept_errors.clone())?,
        http_app,
        settings.http.header_timeout,
        settings.http.max_connections,
    ));
    let migrated = checkpoint::migrate_early(&settings, &wiring.store).await;
    let kafka_settings = settings.kafka();
    kafka::ensure_dead_letter_topic(&kafka_settings, &settings.kafka.dead_letter_topic).await;
    let Some(layout) = kafka::wait_for_layout(&kafka_settings, &stop).await else {
        return stop_early(stages, tasks, server).await;
    };
    let state = checkpoint::restore(&wiring.store, &layout, &wiring.aggregate).await;
    let mut pipeline = start_pipeline(&settings, &tasks, &stages, wiring, layout, state, migrated);
    tasks.close();
    let ended = tokio::select! {
        () = stop.cancelled() => {
            tracing::info!("stopping: http, then ingest and the final checkpoint");
            None
        }
        result = &mut pipeline.ingest => {
            tracing::error!("the ingest loop ended");
            Some(result.unwrap_or_else(|_| Err(Box::new("no result"))))
        }
    };
    shut_down(stages, tasks, server, pipeline, ended).await
}

/// The channels, counters and checkpoint store, and the HTTP side's share of them.
pub(crate) fn wire(
    settings: &Settings,
    stages: &Stages,
    tasks: &TaskTracker,
) -> anyhow::Result<(Wiring, AppState)> {
    let metrics = Arc::new(Metrics::new(&settings.kafka().topics));
    let auth = &settings.auth;
    metrics.name_stores(auth.mode == "none" || auth.protect_metrics || auth.metrics_name_stores);
    let store =
        CheckpointStore::connect_lazy(&settings.checkpoint.database_url, &settings.kafka.group_id)
            .context("checkpoint store settings")?;
    let access = Arc::new(AccessControl::from_settings(
        settings,
        tasks,
        stages.monitor.clone(),
    )?);
    let (request_tx, requests) = mpsc::channel(1024);
    let (status, status_rx) = watch::channel(Status::default());
    // Set when the partition layout is known; streams wait for assignment before that.
    let hub = Arc::new(OnceLock::new());
    let http_app = AppState {
        hub: Arc::clone(&hub),
        requests: request_tx,
        status: status_rx,
        checkpoints: Some(store.clone()),
        metrics: Arc::clone(&metrics),
        max_lag: settings.ready.max_lag,
        stream: Arc::new(settings.stream.clone()),
        stop: stages.http.clone(),
        drain: Arc::clone(&stages.drain),
        watchers: crate::http::watchers::Watchers::new(Arc::clone(&metrics)),
        retry: crate::http::retry_line(settings.stream.retry),
        replays: Arc::new(crate::replay::stream::ReplayService::new(
            Arc::new(settings.clone()),
            settings.replay.max_concurrent,
            tasks.clone(),
        )),
        tasks: tasks.clone(),
        access: Arc::clone(&access),
        limits: Arc::new(crate::http::limits::ClientLimits::new(
            crate::http::limits::LimitSettings::of(settings),
        )),
        pace_frames: false,
    };
    let mut codec = Codec::new(&settings.confluent_ids()?).context("schemas")?;
    codec.set_registry_capacity(settings.schema_registry.max_schemas);
    let wiring = Wiring {
        schemas: crate::ingest::schemas::SchemaWait::start(&settings.schema_registry, &metrics)
            .context("schema registry")?,
        codec,
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
    let hub = hub_for(settings, &layout);
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
        tasks: tasks.clone(),
        kafka: settings.kafka(),
        group_id: settings.kafka.group_id.clone(),
        dead_letter_topic: settings.kafka.dead_letter_topic.clone(),
        engine,
        written: written_rx,
        requests: wiring.requests,
        stop: stages.ingest.clone(),
        consumer_errors_log: crate::log_every::LogEvery::new(Duration::from_secs(10)),
        schemas: wiring.schemas,
    };
    // Its own named OS thread (`top -H` shows `ingest`), tracked like every task.
    let ingest = crate::tasks::spawn_thread(tasks, "ingest", move || ingest.run())
        .unwrap_or_else(|e| panic!("cannot start the ingest thread: {e}"));
    Pipeline {
        ingest,
        writer: tasks.spawn(checkpoint::checkpoint_writer(Writer {
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
        monitor: tasks.spawn(crate::ingest::monitor_lag(
            settings.kafka(),
            layout,
            status_rx,
            wiring.metrics,
            stages.monitor.clone(),
        )),
    }
}

/// The fan-out's hub for `layout`, bounded by `[stream]`.
pub(crate) fn hub_for(settings: &Settings, layout: &Layout) -> Arc<Hub> {
    let stream = &settings.stream;
    Arc::new(Hub::new(
        layout.clone(),
        LogLimits {
            frames: stream.log_max_frames,
            bytes: stream.log_max_bytes,
            age_ms: u64::try_from(stream.log_max_age.as_millis()).unwrap_or(u64::MAX),
        },
        stream.queue_frames,
    ))
}

/// The documented order: HTTP, ingest (final checkpoint frozen), the writer (it written,
/// bounded), the lag monitor; each joined before the next. `ended` is the ingest result if
/// it ended by itself.
async fn shut_down(
    stages: Stages,
    tasks: TaskTracker,
    server: JoinHandle<std::io::Result<()>>,
    pipeline: Pipeline,
    ended: Option<IngestEnd>,
) -> anyhow::Result<()> {
    stages.stop_http().await;
    let http_result = server.await.context("http task")?;
    stages.ingest.cancel();
    let ingest_result = match ended {
        Some(result) => result,
        None => pipeline
            .ingest
            .await
            .unwrap_or_else(|_| Err(Box::new("no result"))),
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
pub(crate) fn start_http(
    settings: &Settings,
    tasks: &TaskTracker,
    accept_errors: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<StreamListener> {
    let listener = http::listener::bind(settings.http.addr)
        .with_context(|| format!("cannot listen on {}", settings.http.addr))?;
    let address = listener.local_addr()?;
    let send_buffer = Some(settings.stream.socket_send_buffer).filter(|b| *b > 0);
    let tls = if settings.http.tls_cert_file.is_empty() {
        None
    } else {
        Some(http::tls::Tls::load(
            &settings.http.tls_cert_file,
            &settings.http.tls_key_file,
        )?)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("storepulse serving on {scheme}://{address}");
    tracing::info!(%address, scheme, "http listening");
    Ok(StreamListener::new(listener, send_buffer, accept_errors, tasks)?.with_tls(tls))
}

/// Serves until the HTTP stage is cancelled; the open streams end on the same token.
pub(crate) async fn run_http(
    listener: StreamListener,
    app: AppState,
    header_timeout: Duration,
    max_connections: usize,
) -> std::io::Result<()> {
    let stop = app.stop.clone();
    let tasks = app.tasks.clone();
    let tls = listener.tls();
    if let Some(tls) = &tls {
        tls.reload_on_hangup(&tasks, stop.clone());
    }
    let metrics = Arc::clone(&app.metrics);
    http::server::serve(
        listener,
        http::app(app),
        &tasks,
        header_timeout,
        max_connections,
        tls,
        metrics,
        stop,
    )
    .await
}

/// Stopped before ingest started: only HTTP runs.
pub(crate) async fn stop_early(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_a_stage_stops_every_stage_before_it_and_none_after() {
        let stages = Stages::new(Duration::ZERO);
        stages.ingest.cancel();
        assert!(stages.http.is_cancelled() && stages.ingest.is_cancelled());
        assert!(!stages.writer.is_cancelled() && !stages.monitor.is_cancelled());
        stages.monitor.cancel();
        assert!(stages.writer.is_cancelled());
    }
}
