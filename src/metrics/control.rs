//! Control state: what the process knows about itself and acts on — the streams open (the
//! engine stretches its frame interval by them), the consumer's lag and the dead letters
//! waiting (`/readyz`, the streams' `progress` events), the checkpoints failing in a row
//! (`/readyz`). Plain atomics, each written in one place and read by whoever decides; the
//! metrics expose them at each scrape ([`ControlCollector`]), never the other way round.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The process's control state.
#[derive(Debug)]
pub struct Control {
    open_streams: AtomicI64,
    /// -1 while unknown.
    consumer_lag: AtomicI64,
    dead_letters_pending: AtomicI64,
    dead_letters_oldest_ms: AtomicI64,
    checkpoint_failures_in_a_row: AtomicI64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            open_streams: AtomicI64::new(0),
            consumer_lag: AtomicI64::new(-1),
            dead_letters_pending: AtomicI64::new(0),
            dead_letters_oldest_ms: AtomicI64::new(0),
            checkpoint_failures_in_a_row: AtomicI64::new(0),
        }
    }
}

impl Control {
    /// A stream opened; returns how many were open before it.
    pub fn stream_opened(&self) -> i64 {
        self.open_streams.fetch_add(1, Ordering::Relaxed)
    }

    /// A stream ended.
    pub fn stream_closed(&self) {
        self.open_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Live streams open now.
    pub fn open_streams(&self) -> i64 {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// Records between the position and the partitions' ends (`None`: unknown).
    pub fn set_consumer_lag(&self, lag: Option<i64>) {
        self.consumer_lag
            .store(lag.map_or(-1, |l| l.max(0)), Ordering::Relaxed);
    }

    /// The consumer's lag, if known.
    pub fn consumer_lag(&self) -> Option<i64> {
        Some(self.consumer_lag.load(Ordering::Relaxed)).filter(|l| *l >= 0)
    }

    /// Poison records not yet acknowledged by the dead-letter topic.
    pub fn set_dead_letters_pending(&self, pending: usize) {
        self.dead_letters_pending.store(
            i64::try_from(pending).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How long the oldest poison record not yet acknowledged has waited.
    pub fn set_dead_letters_oldest(&self, oldest: Duration) {
        self.dead_letters_oldest_ms.store(
            i64::try_from(oldest.as_millis()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Poison records not yet acknowledged by the dead-letter topic.
    pub fn dead_letters_pending(&self) -> i64 {
        self.dead_letters_pending.load(Ordering::Relaxed)
    }

    /// How long the oldest of them has waited.
    pub fn dead_letters_oldest(&self) -> Duration {
        Duration::from_millis(
            u64::try_from(self.dead_letters_oldest_ms.load(Ordering::Relaxed)).unwrap_or(0),
        )
    }

    /// A checkpoint was written (`true`) or an attempt failed.
    pub fn checkpoint_attempted(&self, written: bool) {
        if written {
            self.checkpoint_failures_in_a_row
                .store(0, Ordering::Relaxed);
        } else {
            self.checkpoint_failures_in_a_row
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checkpoint attempts that failed since the last one written.
    pub fn checkpoint_failures_in_a_row(&self) -> i64 {
        self.checkpoint_failures_in_a_row.load(Ordering::Relaxed)
    }
}

/// Exposes [`Control`] as gauges at each scrape.
#[derive(Debug)]
pub struct ControlCollector(pub Arc<Control>);

impl Collector for ControlCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let control = &self.0;
        let counts: [(&str, &str, i64); 4] = [
            (
                "checkpoint_consecutive_failures",
                "Checkpoint attempts that failed since the last one written (/readyz is not ready from 3)",
                control.checkpoint_failures_in_a_row(),
            ),
            (
                "consumer_lag_records",
                "Records between the position and the partition ends, all partitions (-1: unknown)",
                control.consumer_lag().unwrap_or(-1),
            ),
            (
                "dead_letters_pending",
                "Poison records not yet acknowledged by the dead-letter topic (no checkpoint covers them)",
                control.dead_letters_pending(),
            ),
            (
                "subscribers",
                "Live streams open now",
                control.open_streams(),
            ),
        ];
        for (name, help, value) in counts {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let oldest = ConstGauge::new(control.dead_letters_oldest().as_secs_f64());
        let metric = encoder.encode_descriptor(
            "dead_letters_oldest_wait",
            "How long the oldest poison record has waited for the dead-letter topic",
            Some(&Unit::Seconds),
            oldest.metric_type(),
        )?;
        oldest.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_what_was_written() {
        let control = Control::default();
        assert_eq!(control.consumer_lag(), None, "unknown at first");
        control.set_consumer_lag(Some(12));
        assert_eq!(control.consumer_lag(), Some(12));
        assert_eq!((control.stream_opened(), control.stream_opened()), (0, 1));
        control.stream_closed();
        assert_eq!(control.open_streams(), 1);
        control.checkpoint_attempted(false);
        control.checkpoint_attempted(false);
        assert_eq!(control.checkpoint_failures_in_a_row(), 2);
        control.checkpoint_attempted(true);
        assert_eq!(control.checkpoint_failures_in_a_row(), 0);
        control.set_dead_letters_pending(3);
        control.set_dead_letters_oldest(Duration::from_millis(1_500));
        assert_eq!(
            (
                control.dead_letters_pending(),
                control.dead_letters_oldest()
            ),
            (3, Duration::from_millis(1_500))
        );
    }
}
