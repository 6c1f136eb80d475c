//! The wall clock, read in one place: Unix time in milliseconds, and a time parsed from
//! text in those units. The core reads no clock; the shell stamps frames, tokens,
//! checkpoints and replays with these.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch of `time` (0 before it, `i64::MAX` past the range).
pub fn unix_ms_of(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now, in milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    unix_ms_of(SystemTime::now())
}

/// The time `ms` milliseconds after the epoch (negative: the epoch).
pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_and_clamp_before_the_epoch() {
        assert_eq!(
            unix_ms_of(from_unix_ms(1_764_651_600_123)),
            1_764_651_600_123
        );
        assert_eq!(
            unix_ms_of(UNIX_EPOCH - std::time::Duration::from_secs(1)),
            0
        );
        assert_eq!(from_unix_ms(-5), UNIX_EPOCH);
        assert!(unix_ms() > 1_764_651_600_000);
    }
}
