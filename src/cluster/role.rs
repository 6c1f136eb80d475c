//! `storepulse aggregator` and `storepulse edge`: each wires HTTP (health, readiness,
//! metrics; on an edge the whole API), its thread and its shutdown, reusing `serve`'s
//! pieces (`app.rs`). Shutdown order, each joined before the next: HTTP (open streams
//! end, clients resume elsewhere), the role's thread (an aggregator gives up its slices:
//! last frames and final checkpoints), the checkpoint writers (bounded), the rest.

use super::aggregator::Aggregator;
use super::edge::EdgeRun;
use super::slice::SliceContext;
use crate::app::{self, Stages};
use crate::config::Settings;
use crate::kafka::{self, KafkaSettings};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest the final checkpoints of an aggregator's slices may take at shutdown.
const FINAL_CHECKPOINTS_WAIT: Duration = Duration::from_secs(15);

/// Partitions of the three input topics, which must be equal (a slice is one partition
/// number of each).
fn slices_of(layout: &crate::aggregate::Layout) -> anyhow::Result<i32> {
    let counts: Vec<i32> = layout.topics().iter().map(|(_, _, n)| *n).collect();
    anyhow::ensure!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "a cluster needs the three topics to have the same number of partitions (a store's slice is one partition number of each); they have {counts:?}"
    );
    Ok(counts.first().copied().unwrap_or(0))
}

async fn cluster_topics(settings: &Settings, kafka: &KafkaSettings, slices: i32) {
    let cluster = &settings.cluster;
    if let Err(error) =
        super::topics::ensure(kafka, &cluster.frames_topic, &cluster.slices_topic, slices).await
    {
        tracing::warn!(error = %error, "cannot create the cluster's topics (they may exist already)");
    }
}

/// Runs an aggregator until `stop` is cancelled (or its thread ends).
pub async fn run_aggregator(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let stages = Stages::new(settings.http.drain);
    let (wiring, http_app) = app::wire(&settings, &stages, &tasks)?;
    let server = tasks.spawn(app::run_http(
        app::start_http(&settings, &tasks, wiring.metrics.accept_errors.clone())?,
        http_app,
        settings.http.header_timeout,
        settings.http.max_connections,
    ));
    crate::checkpoint::migrate_early(&settings, &wiring.store).await;
    let kafka_settings = settings.kafka();
    kafka::ensure_dead_letter_topic(&kafka_settings, &settings.kafka.dead_letter_topic).await;
    let Some(layout) = kafka::wait_for_layout(&kafka_settings, &stop).await else {
        return app::stop_early(stages, tasks, server).await;
    };
    let slices = slices_of(&layout)?;
    cluster_topics(&settings, &kafka_settings, slices).await;
    let context = SliceContext {
        kafka: kafka_settings,
        layout,
        codec: Arc::new(wiring.codec),
        aggregate: wiring.aggregate,
        cluster: settings.cluster.clone(),
        dead_letter_topic: settings.kafka.dead_letter_topic.clone(),
        store: wiring.store,
        keep: crate::checkpoint::Keep {
            newest: settings.checkpoint.keep,
            hourly: settings.checkpoint.keep_hourly,
        },
        checkpoint_interval: settings.checkpoint.interval,
        metrics: wiring.metrics,
        tasks: tasks.clone(),
        runtime: tokio::runtime::Handle::current(),
        writers_stop: stages.writer.clone(),
    };
    let aggregator = Aggregator {
        context,
        partitions: slices,
        frame_interval: settings.stream.frame_interval,
        status: wiring.status,
        stop: stages.ingest.clone(),
    };
    let thread = crate::tasks::spawn_thread(&tasks, "aggregator", move || aggregator.run())
        .context("cannot start the aggregator thread")?;
    finish(stages, tasks, server, thread, stop, "aggregator").await
}

/// Runs an edge until `stop` is cancelled (or its thread ends).
pub async fn run_edge(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let stages = Stages::new(settings.http.drain);
    let (wiring, mut http_app) = app::wire(&settings, &stages, &tasks)?;
    // An edge keeps nothing: readiness does not ask the checkpoint store.
    http_app.checkpoints = None;
    http_app.pace_frames = true;
    crate::http::listener::raise_open_files_limit();
    let server = tasks.spawn(app::run_http(
        app::start_http(&settings, &tasks, wiring.metrics.accept_errors.clone())?,
        http_app,
        settings.http.header_timeout,
        settings.http.max_connections,
    ));
    let kafka_settings = settings.kafka();
    let Some(layout) = kafka::wait_for_layout(&kafka_settings, &stop).await else {
        return app::stop_early(stages, tasks, server).await;
    };
    let slices = slices_of(&layout)?;
    cluster_topics(&settings, &kafka_settings, slices).await;
    let hub = app::hub_for(&settings, &layout);
    let _ = wiring.hub.set(Arc::clone(&hub));
    let edge = EdgeRun {
        kafka: kafka_settings,
        cluster: settings.cluster.clone(),
        layout,
        aggregate: wiring.aggregate,
        hub,
        metrics: wiring.metrics,
        status: wiring.status,
        requests: wiring.requests,
        resume_wait: settings.stream.resume_wait,
        stop: stages.ingest.clone(),
    };
    let thread = crate::tasks::spawn_thread(&tasks, "edge", move || edge.run())
        .context("cannot start the edge thread")?;
    finish(stages, tasks, server, thread, stop, "edge").await
}

/// Waits for `stop` or the thread's end, then stops in order: HTTP, the thread, the
/// checkpoint writers (bounded), the rest.
async fn finish(
    stages: Stages,
    tasks: TaskTracker,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    thread: tokio::sync::oneshot::Receiver<std::thread::Result<Result<(), kafka::KafkaError>>>,
    stop: CancellationToken,
    role: &str,
) -> anyhow::Result<()> {
    tasks.close();
    let mut thread = thread;
    let ended = tokio::select! {
        () = stop.cancelled() => {
            tracing::info!(role, "stopping: http, then the {role}");
            None
        }
        result = &mut thread => {
            tracing::error!(role, "the {role} thread ended");
            Some(result)
        }
    };
    stages.stop_http().await;
    let http_result = server.await.context("http task")?;
    stages.ingest.cancel();
    let result = match ended {
        Some(result) => result,
        None => thread.await,
    };
    stages.writer.cancel();
    if tokio::time::timeout(FINAL_CHECKPOINTS_WAIT, async {
        stages.monitor.cancel();
        tasks.wait().await;
    })
    .await
    .is_err()
    {
        tracing::error!("the final checkpoints did not finish in time");
    }
    http_result.context("http server")?;
    match result {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => Err(error).context(format!("the {role} failed")),
        Ok(Err(_)) | Err(_) => anyhow::bail!("the {role} thread panicked"),
    }
}
