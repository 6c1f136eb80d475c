//! The standard `process_*` metrics (CPU, resident memory, open and maximum file
//! descriptors, threads, start time), read from `/proc/self` at each scrape. Linux only;
//! elsewhere (or if `/proc` cannot be read) they are absent rather than wrong.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// `/proc` reports CPU times in USER_HZ, which the kernel ABI fixes at 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/self` when scraped.
#[derive(Debug)]
pub struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    threads: Option<i64>,
    resident_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

impl Sample {
    fn read() -> Sample {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| field_after(&s, "btime"));
        let (cpu_seconds, start_time_seconds, threads) =
            stat.as_deref().map(parse_stat).unwrap_or_default();
        Sample {
            cpu_seconds,
            start_time_seconds: start_time_seconds
                .zip(boot_time)
                .map(|(since_boot, boot)| boot + since_boot),
            threads,
            resident_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| field_after(&s, "VmRSS:"))
                .map(|kib| (kib * 1024.0) as i64),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as i64),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|s| parse_max_open_files(&s)),
        }
    }
}

/// CPU seconds (user + system), start time after boot in seconds, and threads, from
/// `/proc/self/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields count from the last `)`.
fn parse_stat(stat: &str) -> (Option<f64>, Option<f64>, Option<i64>) {
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return (None, None, None);
    };
    // After ")": field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |field: usize| fields.get(field - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = number(14)
        .zip(number(15))
        .map(|(user, system)| (user + system) / TICKS_PER_SECOND);
    let start = number(22).map(|ticks| ticks / TICKS_PER_SECOND);
    let threads = number(20).map(|n| n as i64);
    (cpu, start, threads)
}

/// The number after `key` on the line that starts with it.
fn field_after(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn parse_max_open_files(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = Sample::read();
        if let Some(cpu) = sample.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges: [(&str, &str, Option<&Unit>, Option<f64>); 5] = [
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(&Unit::Seconds),
                sample.start_time_seconds,
            ),
            (
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                sample.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                sample.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "The soft limit of open file descriptors",
                None,
                sample.max_fds.map(|v| v as f64),
            ),
            (
                "process_threads",
                "OS threads",
                None,
                sample.threads.map(|v| v as f64),
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        // A command name with spaces and a parenthesis of its own.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 7 0 123400 1000000 500";
        assert_eq!(parse_stat(stat), (Some(3.0), Some(1234.0), Some(7)));
        assert_eq!(parse_stat("garbage"), (None, None, None));
    }

    #[test]
    fn limits_and_status_fields_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            field_after("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048.0)
        );
    }

    #[test]
    fn this_process_is_read() {
        let sample = Sample::read();
        assert!(sample.resident_bytes.is_some_and(|b| b > 0), "{sample:?}");
        assert!(sample.open_fds.is_some_and(|n| n >= 3), "{sample:?}");
        assert!(sample.threads.is_some_and(|n| n >= 1), "{sample:?}");
    }
}
