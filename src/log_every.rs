//! Rate-limited logging: a condition that repeats (a broker that is away, a topic that does
//! not take records) is logged once per interval with how many times it happened since,
//! instead of once per occurrence. Counting stays exact in the metrics.

use std::time::{Duration, Instant};

/// Lets one log line through per `every`, counting the ones held back.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogEvery {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        LogEvery {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held back since the
    /// last one; `None` to stay quiet (and count this one).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let start = Instant::now();
        let mut log = LogEvery::new(Duration::from_secs(10));
        assert_eq!(log.allow(start), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(log.allow(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.allow(start + Duration::from_secs(10)), Some(3));
        assert_eq!(log.allow(start + Duration::from_secs(11)), None);
        assert_eq!(log.allow(start + Duration::from_secs(25)), Some(1));
    }
}
