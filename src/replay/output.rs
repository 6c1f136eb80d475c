//! A replay's output: the rows, alert changes or snapshot written at each step, and the
//! progress bar on a terminal.

use super::plan::{Plan, Step};
use super::read::Reader;
use super::{Format, ReplayError, ReplayOptions, rfc3339, rows};
use crate::aggregate::State;
use std::io::Write;

impl Reader {
    /// The output of one step; false if the store asked for is not (yet) in the state.
    pub(super) fn write_step(
        &mut self,
        step: &Step,
        plan: &Plan,
        options: &ReplayOptions,
        out: &mut dyn Write,
    ) -> Result<bool, ReplayError> {
        let Some(snapshot) = self.state.snapshot(&plan.layout, options.store.as_ref()) else {
            return Ok(false);
        };
        self.summary.outputs += 1;
        match (options.every_ms, step.time_ms) {
            (Some(_), Some(time_ms)) if options.alerts => {
                let now = rows::active_alerts(&snapshot);
                for change in rows::alert_changes(&self.alerts, &now, &rfc3339(time_ms)) {
                    match options.format {
                        Format::Csv => writeln!(out, "{}", rows::alert_csv(&change))?,
                        Format::Jsonl => {
                            serde_json::to_writer(&mut *out, &change)
                                .map_err(std::io::Error::from)?;
                            writeln!(out)?;
                        }
                    }
                }
                self.alerts = now;
            }
            (Some(_), Some(time_ms)) => {
                for row in rows::rows(&rfc3339(time_ms), &snapshot) {
                    match options.format {
                        Format::Csv => {
                            for line in rows::csv_lines(&row) {
                                writeln!(out, "{line}")?;
                            }
                        }
                        Format::Jsonl => {
                            serde_json::to_writer(&mut *out, &row).map_err(std::io::Error::from)?;
                            writeln!(out)?;
                        }
                    }
                }
            }
            _ => {
                serde_json::to_writer(&mut *out, &snapshot).map_err(std::io::Error::from)?;
                writeln!(out)?;
            }
        }
        Ok(true)
    }
}

/// A bar of the records to read (from the warm-up's start to the range's end in every
/// partition); drawn on stderr only when it is a terminal.
pub(super) fn progress_bar(plan: &Plan, state: &State) -> indicatif::ProgressBar {
    let last = plan
        .steps
        .last()
        .map(|s| s.ends.clone())
        .unwrap_or_default();
    let total: i64 = plan
        .layout
        .partitions()
        .enumerate()
        .map(|(i, key)| (last[i] - state.position().next_offset(key).max(plan.low[i])).max(0))
        .sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(u64::try_from(total).unwrap_or(0)),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "[replay] {bar:30} {pos}/{len} records, {per_sec}, ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}
