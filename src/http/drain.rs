//! The drain before a stop (`http.drain`): readiness turns false at once, and the open
//! streams end one after another over the drain's window instead of all together, so a
//! load balancer's reconnections (each EventSource resuming by its last id elsewhere)
//! arrive spread out rather than as one storm. Each stream gets a turn, a share of the
//! window taken from an evenly spreading sequence, when it opens.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The fractional part of the golden ratio: consecutive turns land far apart in the window.
const SPREAD: f64 = 0.618_033_988_749_895;

/// A stop's drain, shared by the HTTP layer and the shutdown sequence.
#[derive(Debug)]
pub struct Drain {
    window: Duration,
    started: CancellationToken,
    at: OnceLock<Instant>,
    opened: AtomicU64,
}

impl Drain {
    /// A drain over `window` (zero: no drain, streams end together at the stop).
    pub fn new(window: Duration) -> Drain {
        Drain {
            window,
            started: CancellationToken::new(),
            at: OnceLock::new(),
            opened: AtomicU64::new(0),
        }
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Begins the drain (readiness false from now on, streams end at their turns).
    pub fn start(&self) {
        let _ = self.at.set(Instant::now());
        self.started.cancel();
    }

    /// True once the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// A new stream's turn: its share of the window, in `[0, 1)`.
    pub fn next_turn(&self) -> f64 {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        (n as f64 * SPREAD).fract()
    }

    /// Resolves when the stream with `turn` should end: `turn` of the window after the
    /// drain began; never while there is no drain.
    pub async fn ended(&self, turn: f64) {
        self.started.cancelled().await;
        let began = self.at.get().copied().unwrap_or_else(Instant::now);
        tokio::time::sleep_until(began + self.window.mul_f64(turn.clamp(0.0, 1.0))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_spread_over_the_whole_window() {
        let drain = Drain::new(Duration::from_secs(10));
        let mut turns: Vec<f64> = (0..100).map(|_| drain.next_turn()).collect();
        turns.sort_by(f64::total_cmp);
        assert!(turns.iter().all(|t| (0.0..1.0).contains(t)));
        // No gap between neighbouring turns wider than 3 % of the window.
        let widest = turns.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        assert!(widest < 0.03, "widest gap {widest}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_at_its_turn_after_the_drain_begins_and_never_before() {
        let drain = std::sync::Arc::new(Drain::new(Duration::from_secs(10)));
        let waiting = {
            let drain = std::sync::Arc::clone(&drain);
            tokio::spawn(async move { drain.ended(0.5).await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "no drain, no end");
        let began = Instant::now();
        drain.start();
        assert!(drain.is_draining());
        waiting.await.expect("ends");
        assert_eq!(began.elapsed(), Duration::from_secs(5));
    }
}
