//! The lag monitor: every second, how far the ingest position is behind the partitions'
//! ends (Kafka's high watermarks), published as `storepulse_consumer_lag_records` and the
//! per-partition gauges, which `/readyz` and the stream's `progress` events read.

use crate::aggregate::{Layout, PartitionKey};
use crate::fanout::Status;
use crate::kafka::{self, KafkaSettings};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Every second, compares the ingest position with the partitions' ends and publishes the
/// lag (the `consumer_lag_records` metric, which `/readyz` reads). Unknown is -1.
pub async fn monitor_lag(
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
                .sum::<i64>()
                .into(),
            Err(error) => {
                tracing::debug!(error = %error, "watermarks unavailable");
                None
            }
        };
        metrics.control.set_consumer_lag(lag);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => {}
        }
    }
}
