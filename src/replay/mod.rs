//! `storepulse replay`: the topics read again, read-only, through the same decode, event
//! time check and apply as `serve`, to answer "what did the dashboard show at 14:07:30" and
//! "how did the numbers move minute by minute" exactly as live computed them.
//!
//! Read-only and isolated: every partition is assigned explicitly (no group membership,
//! no offset commits, no checkpoint written), so it may run beside `serve`. A range is
//! resolved to offsets by record time with the broker's offsets-for-times: the state "at
//! T" is, in every partition, every record before the first one whose timestamp is at or
//! after T. State needs history (today's totals, stock levels), so reading starts from the
//! newest checkpoint of serve's group at or before the first step (read only), or else at
//! each partition's earliest retained offset (the warm-up); the rows start at `--from`.
//!
//! A timeline applies, step by step, exactly the records before each step's offsets: a
//! partition that reaches its boundary is paused (records already fetched past it wait in
//! memory) until every partition has, then the step's rows are written.

mod output;
mod plan;
mod read;
pub mod rows;
pub mod stream;

use output::progress_bar;
pub use plan::position_time;
use plan::{Plan, Step, print_plan, resolve, warm_up};
use read::Reader;

use crate::aggregate::{Changes, PositionError, State};
use crate::config::Settings;
use crate::events::{Codec, StoreId};
use crate::kafka::{self, KafkaError};
use std::io::Write;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Where the range ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Records with a timestamp before this (Unix ms).
    Time(i64),
    /// Records before this position (an SSE id or a snapshot's `position`).
    Position(String),
}

/// What is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Timeline as CSV (one line per step, scope and currency).
    Csv,
    /// Timeline as JSON Lines (one object per step and scope).
    Jsonl,
}

/// A replay's request.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Start of the rows (Unix ms, record time).
    pub from_ms: i64,
    /// The first step exactly at this position (an SSE id or a snapshot's `position`;
    /// `from_ms` is then [`position_time`] of it).
    pub from_position: Option<String>,
    /// End of the range.
    pub end: End,
    /// A timeline with a row per this many ms; `None`: one snapshot at the end.
    pub every_ms: Option<i64>,
    /// Only this store (and no rollup).
    pub store: Option<StoreId>,
    /// Timeline format.
    pub format: Format,
    /// Print the alerts raised and cleared between steps instead of rows.
    pub alerts: bool,
    /// A progress bar on stderr (records read of the total, rate, ETA) when it is a terminal.
    pub progress: bool,
    /// Print the plan and stop.
    pub dry_run: bool,
}

/// A replay that cannot run, and why.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The end is before the start.
    #[error("the range ends ({to}) before it starts ({from})")]
    EndBeforeStart {
        /// `--from`.
        from: String,
        /// `--to`.
        to: String,
    },
    /// A timeline needs times.
    #[error("--every needs --to as a time (a position has no time to step to)")]
    EveryNeedsTime,
    /// A position of another layout, or not a position.
    #[error("{position:?} is not a position of these topics (layout {layout}): {cause}")]
    Position {
        /// What was given.
        position: String,
        /// This layout's tag.
        layout: String,
        /// Why.
        cause: PositionError,
    },
    /// `--from` is older than what a partition still holds.
    #[error(
        "{from} is before the retained records: {partition} holds records from offset {offset}, dated {earliest} (older ones were deleted by the topic's retention.ms / retention.bytes); use --from {earliest} or later"
    )]
    BeforeRetention {
        /// `--from`.
        from: String,
        /// The partition.
        partition: String,
        /// Its earliest retained record's time.
        earliest: String,
        /// Its earliest retained offset.
        offset: i64,
    },
    /// A start position before every retained record: it has no time.
    #[error(
        "position {0:?} is at the start of every partition (no record before it): use --from with a time"
    )]
    PositionAtStart(String),
    /// A position past the partitions' ends.
    #[error(
        "position {position:?} is ahead of the topics (partition {partition} ends at offset {end})"
    )]
    PositionAhead {
        /// What was given.
        position: String,
        /// The partition.
        partition: String,
        /// Its end.
        end: i64,
    },
    /// Nothing retained in the range.
    #[error(
        "no record at or after {from} is retained (the topics hold {held} records, all dated before it)"
    )]
    NothingInRange {
        /// `--from`.
        from: String,
        /// Records retained.
        held: i64,
    },
    /// A topic is missing.
    #[error("topic {0:?} does not exist")]
    MissingTopic(String),
    /// The store never appears in the range.
    #[error("unknown store {store:?}: the stores in the range are {known}")]
    UnknownStore {
        /// What was asked.
        store: String,
        /// What there is.
        known: String,
    },
    /// The broker stopped delivering a partition the replay still needs.
    #[error(
        "no record of {partition} for {seconds} s although the range needs offsets up to {end}"
    )]
    Stalled {
        /// The partition.
        partition: String,
        /// How long.
        seconds: u64,
        /// Its end.
        end: i64,
    },
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Settings.
    #[error("settings: {0}")]
    Settings(String),
    /// Writing the output.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

// Display says the cause; `source()` does not repeat it.
impl From<std::io::Error> for ReplayError {
    fn from(error: std::io::Error) -> Self {
        ReplayError::Output(error)
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Records read and applied (or skipped as poison).
    pub records: u64,
    /// Poison records skipped (serve dead-letters them).
    pub dead_letters: u64,
    /// Those by reason (the labels of `storepulse_poison_records_total` and of the
    /// dead-letter header `storepulse-error`).
    pub dead_letters_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// Rows or snapshots written.
    pub outputs: u64,
    /// Wall time.
    pub elapsed: Duration,
}

fn rfc3339(ms: i64) -> String {
    let time = crate::wall_clock::from_unix_ms(ms);
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(time).to_string()
    } else {
        humantime::format_rfc3339_millis(time).to_string()
    }
}

/// A replay ready to read: its consumer, its resolved range and the state warmed up to the
/// first step. The one way a replay starts, for the CLI and the replay stream alike.
struct Opened {
    consumer: kafka::Consumer,
    plan: Plan,
    reader: Reader,
    /// The checkpoint the warm-up started from, if any.
    checkpoint: Option<i64>,
    /// The client's position when the first step starts there instead of at `from`.
    resumed: Option<crate::aggregate::Position>,
}

/// Opens a replay of `options`: resolves the range (starting the first step at `resume`, a
/// position of this layout, when given), warms the state up from the newest fitting
/// checkpoint, and makes the reader. `keep_changes`: every change is kept for frames.
fn open(
    settings: &Settings,
    options: &ReplayOptions,
    resume: Option<&str>,
    keep_changes: bool,
) -> Result<Opened, ReplayError> {
    let settings_error = |e: &dyn std::fmt::Display| ReplayError::Settings(e.to_string());
    let kafka_settings = settings.kafka();
    let consumer: kafka::Consumer = kafka::quiet(
        kafka::consumer_config(&kafka_settings, "storepulse-replay")
            .set("enable.partition.eof", "true"),
    )?;
    let mut plan = resolve(&kafka_settings, &consumer, options)?;
    let resumed = resume.and_then(|text| plan.layout.decode(text).ok());
    if let Some(position) = &resumed {
        let ends: Vec<i64> = plan
            .layout
            .partitions()
            .map(|p| position.next_offset(p))
            .collect();
        plan.steps[0] = Step {
            time_ms: None,
            ends,
        };
    }
    let config = std::sync::Arc::new(
        settings
            .aggregate_config()
            .map_err(|e| settings_error(&e))?,
    );
    let codec = Codec::new(&settings.confluent_ids().map_err(|e| settings_error(&e))?)
        .map_err(|e| settings_error(&e))?;
    let warm = warm_up(settings, &plan, &config);
    let checkpoint = warm.as_ref().map(|(id, _)| *id);
    let reader = Reader {
        state: warm.map_or_else(|| State::new(config), |(_, state)| state),
        codec,
        changes: Changes::default(),
        summary: Summary::default(),
        alerts: Default::default(),
        keep_changes,
        progress: None,
    };
    Ok(Opened {
        consumer,
        plan,
        reader,
        checkpoint,
        resumed,
    })
}

/// Runs a replay to `out` (blocking: call from a blocking thread).
pub fn run(
    settings: &Settings,
    options: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let Opened {
        consumer,
        plan,
        mut reader,
        checkpoint,
        ..
    } = open(settings, options, None, false)?;
    if options.dry_run {
        print_plan(&plan, options, checkpoint, out)?;
        return Ok(Summary::default());
    }
    if options.progress {
        reader.progress = Some(progress_bar(&plan, &reader.state));
    }
    reader.read(&consumer, &plan, options, out)?;
    if let Some(bar) = reader.progress.take() {
        bar.finish_and_clear();
    }
    reader.summary.elapsed = started.elapsed();
    Ok(reader.summary)
}

/// The timeline rows of a replay, in memory (for a what-if's comparison).
pub fn collect_rows(
    settings: &Settings,
    options: &ReplayOptions,
) -> Result<(Vec<rows::Row>, Summary), ReplayError> {
    let mut options = options.clone();
    options.format = Format::Jsonl;
    let mut buffer = Vec::new();
    let summary = run(settings, &options, &mut buffer)?;
    let rows = buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<Vec<rows::Row>, _>>()
        .map_err(std::io::Error::from)?;
    Ok((rows, summary))
}

/// The alert lines (CSV, no header) of an `--alerts` replay, in memory (for a what-if).
pub fn collect_alert_lines(
    settings: &Settings,
    options: &ReplayOptions,
) -> Result<(Vec<String>, Summary), ReplayError> {
    let mut options = options.clone();
    options.format = Format::Csv;
    options.alerts = true;
    let mut buffer = Vec::new();
    let summary = run(settings, &options, &mut buffer)?;
    let text = String::from_utf8_lossy(&buffer);
    let lines = text
        .lines()
        .filter(|line| !line.is_empty() && *line != rows::ALERTS_HEADER)
        .map(str::to_owned)
        .collect();
    Ok((lines, summary))
}
