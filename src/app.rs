//! `storepulse serve`: wires the pieces and owns start-up and shutdown order.
//!
//! Start: HTTP first (health answers while the rest starts), migrations, the dead-letter
//! topic, the partition layout (waiting for the topics to exist), the newest checkpoint,
//! then the ingest thread and the checkpoint writer. A dependency that is down delays,
//! and shows in `/readyz`; it never crashes the process.
//!
//! Stop (SIGINT/SIGTERM): stop consuming, freeze a final checkpoint and write it, stop
//! HTTP, exit 0.

use crate::aggregate::{Layout, State};
use crate::checkpoint::{CheckpointStore, Frozen};
use crate::config::Settings;
use crate::events::{Codec, TopicRole};
use crate::http::listener::{Connection, StreamListener};
use crate::http::{self, AppState};
use crate::ingest::{Ingest, Status};
use crate::kafka::{self, KafkaSettings};
use crate::metrics::Metrics;
use crate::stream::LogLimits;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Runs `serve` until `stop` is cancelled (or the ingest loop fails).
pub async fn serve(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let kafka_settings = settings.kafka();
    let codec = Codec::new(&settings.confluent_ids()?).context("schemas")?;
    let aggregate = Arc::new(settings.aggregate_config()?);
    let metrics = Arc::new(Metrics::default());
    metrics.consumer_lag.store(-1, Ordering::Relaxed);
    let store =
        CheckpointStore::connect_lazy(&settings.checkpoint.database_url, &settings.kafka.group_id)
            .context("checkpoint store settings")?;

    let (request_tx, request_rx) = mpsc::channel(1024);
    let (status_tx, status_rx) = watch::channel(Status::default());
    let status_watch = status_rx.clone();
    let listener = http::listener::bind(settings.http.addr)
        .with_context(|| format!("cannot listen on {}", settings.http.addr))?;
    let address = listener.local_addr()?;
    let send_buffer = Some(settings.stream.socket_send_buffer).filter(|b| *b > 0);
    let listener = StreamListener::new(listener, send_buffer);
    println!("storepulse serving on http://{address}");
    tracing::info!(%address, "http listening");
    // Subscribers get receivers from the ingest thread; this sender lives there.
    let (frames_tx, _) = broadcast::channel(settings.stream.queue_frames);
    let router = http::app(AppState {
        requests: request_tx,
        status: status_rx,
        checkpoints: store.clone(),
        metrics: Arc::clone(&metrics),
        max_lag: settings.ready.max_lag,
        stream: http::StreamSettings {
            heartbeat: settings.stream.heartbeat,
            resume_wait: settings.stream.resume_wait,
            max_subscribers: settings.stream.max_subscribers,
            stall_timeout: settings.stream.stall_timeout,
            batch_bytes: settings.stream.batch_bytes,
        },
        stop: stop.clone(),
    });
    let http_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<Connection>(),
        )
        .with_graceful_shutdown(async move { http_stop.cancelled().await })
        .await
    });

    let mut migrated = !settings.checkpoint.migrate_on_start;
    if !migrated {
        match store.migrate().await {
            Ok(()) => migrated = true,
            Err(error) => {
                tracing::warn!(error = %error, "migrations failed; retried before the first checkpoint")
            }
        }
    }
    let dead_letter = settings.kafka.dead_letter_topic.clone();
    if let Err(error) =
        kafka::ensure_topics(&kafka_settings, &[&dead_letter], 1, Duration::from_secs(10)).await
    {
        tracing::warn!(error = %error, topic = %dead_letter, "could not create the dead-letter topic");
    }
    let Some(layout) = wait_for_layout(&kafka_settings, &stop).await else {
        return finish_http(server).await;
    };
    let state = match store.load_newest(&layout, Arc::clone(&aggregate)).await {
        Ok(Some((id, state))) => {
            tracing::info!(checkpoint = id, position = %layout.encode(state.position()), "restored checkpoint");
            state
        }
        Ok(None) => {
            tracing::info!("no checkpoint: reading every partition from the beginning");
            State::new(Arc::clone(&aggregate))
        }
        Err(error) => {
            tracing::warn!(error = %error, "checkpoint store unavailable at start: rebuilding from kafka");
            State::new(Arc::clone(&aggregate))
        }
    };

    let (checkpoint_tx, checkpoint_rx) = watch::channel(None);
    let (written_tx, written_rx) = mpsc::unbounded_channel();
    let ingest_stop = CancellationToken::new();
    let ingest_done = CancellationToken::new();
    let ingest = Ingest {
        kafka: kafka_settings,
        group_id: settings.kafka.group_id.clone(),
        dead_letter_topic: dead_letter,
        codec,
        layout: layout.clone(),
        state,
        checkpoint_interval: settings.checkpoint.interval,
        checkpoints: checkpoint_tx,
        written: written_rx,
        requests: request_rx,
        status: status_tx,
        metrics: Arc::clone(&metrics),
        stop: ingest_stop.clone(),
        frame_interval: settings.stream.frame_interval,
        log_limits: LogLimits {
            frames: settings.stream.log_max_frames,
            bytes: settings.stream.log_max_bytes,
            age_ms: u64::try_from(settings.stream.log_max_age.as_millis()).unwrap_or(u64::MAX),
        },
        started: std::time::Instant::now(),
        frames: frames_tx,
    };
    let done = ingest_done.clone();
    let ingest_thread = std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            let result = ingest.run();
            done.cancel();
            result
        })
        .context("cannot start the ingest thread")?;
    tokio::spawn(monitor_lag(
        settings.kafka(),
        layout.clone(),
        status_watch,
        Arc::clone(&metrics),
        ingest_done.clone(),
    ));
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(checkpoint_writer(Writer {
        store,
        layout,
        keep: settings.checkpoint.keep,
        frozen: checkpoint_rx,
        written: written_tx,
        metrics,
        migrated,
        stop: writer_stop.clone(),
    }));

    tokio::select! {
        () = stop.cancelled() => tracing::info!("stopping: final checkpoint"),
        () = ingest_done.cancelled() => tracing::error!("the ingest loop ended"),
    }
    ingest_stop.cancel();
    let ingest_result = tokio::task::spawn_blocking(move || ingest_thread.join())
        .await
        .context("joining the ingest thread")?;
    writer_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(15), writer)
        .await
        .is_err()
    {
        tracing::error!("the final checkpoint did not finish in 15 s");
    }
    stop.cancel();
    finish_http(server).await?;
    match ingest_result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error).context("ingest failed"),
        Err(_) => anyhow::bail!("the ingest thread panicked"),
    }
}

async fn finish_http(server: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    server.await.context("http task")?.context("http server")
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
    done: CancellationToken,
) {
    let partitions: Vec<(String, i32, crate::aggregate::PartitionKey)> = layout
        .topics()
        .iter()
        .flat_map(|(role, name, count)| {
            (0..*count).map(move |partition| {
                (
                    name.clone(),
                    partition,
                    crate::aggregate::PartitionKey {
                        role: *role,
                        partition,
                    },
                )
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
    while !done.is_cancelled() {
        let position = status.borrow().position.clone();
        let probe_now = Arc::clone(&probe);
        let names_now = names.clone();
        let highs = tokio::task::spawn_blocking(move || {
            probe_now.highs(&names_now, Duration::from_secs(2))
        })
        .await
        .unwrap_or_else(|e| panic!("watermark thread panicked: {e}"));
        let lag = match highs {
            Ok(highs) => partitions
                .iter()
                .zip(highs)
                .map(|((_, _, key), high)| (high - position.next_offset(*key)).max(0))
                .sum(),
            Err(error) => {
                tracing::debug!(error = %error, "watermarks unavailable");
                -1
            }
        };
        metrics.consumer_lag.store(lag, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = done.cancelled() => {}
        }
    }
}

struct Writer {
    store: CheckpointStore,
    layout: Layout,
    keep: i64,
    frozen: watch::Receiver<Option<Arc<Frozen>>>,
    written: mpsc::UnboundedSender<Arc<Frozen>>,
    metrics: Arc<Metrics>,
    migrated: bool,
    stop: CancellationToken,
}

/// Longest wait between checkpoint attempts while the store is down: a returning database
/// is noticed within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Writes the newest frozen checkpoint whenever it changes; on failure retries with
/// exponential backoff (0.5 s to [`MAX_BACKOFF`]), always with the newest one. On stop,
/// writes what is newest once more and returns.
async fn checkpoint_writer(mut w: Writer) {
    let mut backoff = Duration::from_millis(500);
    let mut last_position: Option<String> = None;
    loop {
        let finishing = w.stop.is_cancelled();
        let frozen = w.frozen.borrow_and_update().clone();
        if let Some(frozen) =
            frozen.filter(|f| last_position.as_deref() != Some(f.position.as_str()))
        {
            let result = async {
                if !w.migrated {
                    w.store.migrate().await?;
                    w.migrated = true;
                }
                w.store.write(&frozen, &w.layout, w.keep).await
            }
            .await;
            match result {
                Ok(written) => {
                    Metrics::inc(&w.metrics.checkpoints);
                    w.metrics
                        .checkpoint_last_micros
                        .store(written.duration.as_micros() as u64, Ordering::Relaxed);
                    w.metrics
                        .checkpoint_last_bytes
                        .store(written.bytes as u64, Ordering::Relaxed);
                    tracing::debug!(id = written.id, bytes = written.bytes, duration = ?written.duration, "checkpoint written");
                    last_position = Some(frozen.position.clone());
                    backoff = Duration::from_millis(500);
                    let _ = w.written.send(frozen);
                }
                Err(error) => {
                    Metrics::inc(&w.metrics.checkpoint_failures);
                    if finishing {
                        tracing::error!(error = %error, "final checkpoint failed; the next start resumes from the previous one");
                        return;
                    }
                    tracing::warn!(error = %error, retry_in = ?backoff, "checkpoint failed; processing continues");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = w.stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        if finishing {
            return;
        }
        tokio::select! {
            changed = w.frozen.changed() => if changed.is_err() && !w.stop.is_cancelled() { return },
            () = w.stop.cancelled() => {}
        }
    }
}
