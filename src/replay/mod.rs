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

pub mod rows;
pub mod stream;

use crate::aggregate::{Changes, Layout, PartitionKey, PositionError, RecordRef, State};
use crate::config::Settings;
use crate::events::{Codec, StoreId, TopicRole};
use crate::kafka::{self, KafkaError};
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};
use storepulse_core::record::{self, Record};
use thiserror::Error;

/// How long one request to the broker may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a replay waits for the next record of a partition it still needs.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("{position:?} is not a position of these topics (layout {layout}): {source}")]
    Position {
        /// What was given.
        position: String,
        /// This layout's tag.
        layout: String,
        /// Why.
        source: PositionError,
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
    Output(#[from] std::io::Error),
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

/// One step: its time (`None` for a position), and each partition's end offset
/// (exclusive), in layout order.
#[derive(Clone, Debug)]
struct Step {
    time_ms: Option<i64>,
    ends: Vec<i64>,
}

/// The resolved range.
struct Plan {
    layout: Layout,
    names: Vec<(String, i32)>,
    low: Vec<i64>,
    high: Vec<i64>,
    from: Vec<i64>,
    steps: Vec<Step>,
}

fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
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

/// A bar of the records to read (from the warm-up's start to the range's end in every
/// partition); drawn on stderr only when it is a terminal.
fn progress_bar(plan: &Plan, state: &State) -> indicatif::ProgressBar {
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

/// The newest checkpoint of `serve`'s group (`kafka.group_id`, read only) from which the
/// first step is reachable: at or before the first step in every partition and not older
/// than what is retained. `None` (read from the earliest offsets) when there is none, or the
/// checkpoint store does not answer (logged).
fn warm_up(
    settings: &Settings,
    plan: &Plan,
    config: &std::sync::Arc<crate::aggregate::AggregateConfig>,
) -> Option<(i64, State)> {
    let first = plan.steps.first()?;
    let store = crate::checkpoint::CheckpointStore::connect_lazy(
        &settings.checkpoint.database_url,
        &settings.kafka.group_id,
    )
    .ok()?;
    let keys: Vec<PartitionKey> = plan.layout.partitions().collect();
    let fits = |position: &crate::aggregate::Position| {
        keys.iter().enumerate().all(|(i, key)| {
            let next = position.next_offset(*key);
            next <= first.ends[i] && (next >= plan.low[i] || plan.low[i] == 0)
        })
    };
    let loaded = tokio::runtime::Handle::try_current()
        .ok()?
        .block_on(store.load_newest_fitting(&plan.layout, std::sync::Arc::clone(config), fits));
    match loaded {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(error = %error, "replay: no checkpoint for the warm-up; reading from the earliest offsets");
            None
        }
    }
}

/// The topics' partitions, in layout order, with their retained offsets.
struct Topology {
    layout: Layout,
    names: Vec<(String, i32)>,
    low: Vec<i64>,
    high: Vec<i64>,
}

fn topology(
    settings: &kafka::KafkaSettings,
    consumer: &kafka::Consumer,
) -> Result<Topology, ReplayError> {
    let topics = settings.topics.all();
    let counts = kafka::partition_counts(settings, &topics, BROKER_TIMEOUT)?;
    let mut layout_topics = Vec::new();
    for (role, (name, count)) in TopicRole::ALL.iter().zip(topics.iter().zip(counts)) {
        let count = count.ok_or_else(|| ReplayError::MissingTopic((*name).to_owned()))?;
        layout_topics.push((*role, (*name).to_owned(), count));
    }
    let layout = Layout::new(layout_topics);
    let names: Vec<(String, i32)> = layout
        .topics()
        .iter()
        .flat_map(|(_, name, count)| (0..*count).map(move |p| (name.clone(), p)))
        .collect();
    let mut low = Vec::new();
    let mut high = Vec::new();
    for (name, partition) in &names {
        let (l, h) = consumer
            .fetch_watermarks(name, *partition, BROKER_TIMEOUT)
            .map_err(KafkaError::Request)?;
        low.push(l);
        high.push(h);
    }
    Ok(Topology {
        layout,
        names,
        low,
        high,
    })
}

/// Each partition's next offset at `text` (an SSE id or a snapshot's `position`), checked
/// against this layout and the partitions' ends.
fn position_ends(topology: &Topology, text: &str) -> Result<Vec<i64>, ReplayError> {
    let position = topology
        .layout
        .decode(text)
        .map_err(|source| ReplayError::Position {
            position: text.chars().take(200).collect(),
            layout: topology.layout.tag().to_owned(),
            source,
        })?;
    let ends: Vec<i64> = topology
        .layout
        .partitions()
        .map(|p| position.next_offset(p))
        .collect();
    if let Some(((name, partition), high)) = topology
        .names
        .iter()
        .zip(&topology.high)
        .zip(&ends)
        .find(|((_, high), end)| **end > **high)
        .map(|(name_high, _)| name_high)
    {
        return Err(ReplayError::PositionAhead {
            position: text.to_owned(),
            partition: format!("{name}/{partition}"),
            end: *high,
        });
    }
    Ok(ends)
}

/// The record time at which a position was current: one ms after the newest timestamp of
/// the records just before it (`--from-position` starts its timeline there).
pub fn position_time(settings: &Settings, text: &str) -> Result<i64, ReplayError> {
    let kafka_settings = settings.kafka();
    let consumer: kafka::Consumer = kafka::quiet(&kafka::consumer_config(
        &kafka_settings,
        "storepulse-replay",
    ))?;
    let topology = topology(&kafka_settings, &consumer)?;
    let ends = position_ends(&topology, text)?;
    let mut newest = None;
    for (i, (name, partition)) in topology.names.iter().enumerate() {
        if ends[i] <= topology.low[i] {
            continue; // nothing retained before the position in this partition
        }
        let timestamp = timestamp_at(&consumer, name, *partition, ends[i] - 1)?;
        newest = newest.max(timestamp);
    }
    newest.map(|t| t + 1).ok_or(ReplayError::PositionAtStart(
        text.chars().take(200).collect(),
    ))
}

/// The timestamp of the record at `offset` (which must be retained).
fn timestamp_at(
    consumer: &kafka::Consumer,
    name: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, ReplayError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(name, partition, Offset::Offset(offset))
        .map_err(KafkaError::Request)?;
    consumer.assign(&list).map_err(KafkaError::Request)?;
    let waiting = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => return Ok(message.timestamp().to_millis()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None
                if waiting.elapsed() > STALL_TIMEOUT =>
            {
                return Err(ReplayError::Stalled {
                    partition: format!("{name}/{partition}"),
                    seconds: STALL_TIMEOUT.as_secs(),
                    end: offset + 1,
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error)) => tracing::warn!(error = %error, "replay: consumer error"),
        }
    }
}

/// Resolves times and positions to offsets.
fn resolve(
    settings: &kafka::KafkaSettings,
    consumer: &kafka::Consumer,
    options: &ReplayOptions,
) -> Result<Plan, ReplayError> {
    let topology = topology(settings, consumer)?;
    let (names, low, high) = (&topology.names, &topology.low, &topology.high);
    let offsets_at = |time_ms: i64| -> Result<Vec<i64>, ReplayError> {
        let mut list = TopicPartitionList::new();
        for (name, partition) in names {
            list.add_partition_offset(name, *partition, Offset::Offset(time_ms))
                .map_err(KafkaError::Request)?;
        }
        let found = consumer
            .offsets_for_times(list, BROKER_TIMEOUT)
            .map_err(KafkaError::Request)?;
        Ok(names
            .iter()
            .zip(high)
            .map(|((name, partition), high)| {
                match found.find_partition(name, *partition).map(|e| e.offset()) {
                    Some(Offset::Offset(n)) => n.min(*high),
                    _ => *high, // no record at or after the time: everything is before it
                }
            })
            .collect())
    };
    let from = match &options.from_position {
        Some(text) => position_ends(&topology, text)?,
        None => offsets_at(options.from_ms)?,
    };
    // Records were deleted (retention) from a partition and --from is older than its
    // earliest retained record: the rows would be missing those records.
    if options.from_position.is_none() {
        for (i, (name, partition)) in names.iter().enumerate() {
            if low[i] > 0 && from[i] == low[i] && high[i] > low[i] {
                let earliest = timestamp_at(consumer, name, *partition, low[i])?;
                if let Some(earliest) = earliest.filter(|t| *t > options.from_ms) {
                    return Err(ReplayError::BeforeRetention {
                        from: rfc3339(options.from_ms),
                        partition: format!("{name}/{partition}"),
                        earliest: rfc3339(earliest),
                        offset: low[i],
                    });
                }
            }
        }
    }
    if from == *high && high.iter().zip(low).any(|(h, l)| h > l) && options.every_ms.is_some() {
        return Err(ReplayError::NothingInRange {
            from: rfc3339(options.from_ms),
            held: high.iter().zip(low).map(|(h, l)| h - l).sum(),
        });
    }
    let steps = match (&options.end, options.every_ms) {
        (End::Position(text), None) => {
            let ends = position_ends(&topology, text)?;
            vec![Step {
                time_ms: None,
                ends,
            }]
        }
        (End::Position(_), Some(_)) => return Err(ReplayError::EveryNeedsTime),
        (End::Time(to_ms), every) => {
            if *to_ms < options.from_ms {
                return Err(ReplayError::EndBeforeStart {
                    from: rfc3339(options.from_ms),
                    to: rfc3339(*to_ms),
                });
            }
            let times = match every {
                Some(every) => rows::steps(options.from_ms, *to_ms, every),
                None => vec![*to_ms],
            };
            times
                .into_iter()
                .map(|t| {
                    Ok(Step {
                        time_ms: Some(t),
                        ends: offsets_at(t)?,
                    })
                })
                .collect::<Result<_, ReplayError>>()?
        }
    };
    let mut steps = steps;
    let several = steps.len() > 1;
    if options.from_position.is_some()
        && several
        && let Some(first) = steps.first_mut()
        && first.time_ms == Some(options.from_ms)
    {
        first.ends.clone_from(&from); // the first row exactly at the position
    }
    let Topology {
        layout,
        names,
        low,
        high,
    } = topology;
    Ok(Plan {
        layout,
        names,
        low,
        high,
        from,
        steps,
    })
}

fn print_plan(
    plan: &Plan,
    options: &ReplayOptions,
    checkpoint: Option<i64>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let ends = &plan
        .steps
        .last()
        .map(|s| s.ends.clone())
        .unwrap_or_default();
    writeln!(
        out,
        "layout {} ({} partitions)",
        plan.layout.tag(),
        plan.names.len()
    )?;
    writeln!(
        out,
        "{:<40} {:>10} {:>10} {:>10} {:>10}",
        "partition", "earliest", "from", "end", "to read"
    )?;
    let mut warm_up = 0;
    let mut in_range = 0;
    for (i, (name, partition)) in plan.names.iter().enumerate() {
        let from = plan.from[i].min(ends[i]).max(plan.low[i]);
        warm_up += from - plan.low[i];
        in_range += ends[i].max(from) - from;
        writeln!(
            out,
            "{:<40} {:>10} {:>10} {:>10} {:>10}",
            format!("{name}/{partition}"),
            plan.low[i],
            from,
            ends[i],
            (ends[i] - plan.low[i]).max(0)
        )?;
    }
    let source = match checkpoint {
        Some(id) => format!(
            "from checkpoint {id} (of serve's kafka.group_id), then the records after its position"
        ),
        None => format!("{warm_up} records from each partition's earliest offset to --from"),
    };
    writeln!(
        out,
        "warm-up: {source} (the state needs the day's history and stock); range: {in_range} records; {} {}",
        plan.steps.len(),
        if options.every_ms.is_some() {
            "timeline steps"
        } else {
            "snapshot"
        }
    )
}

/// The state being rebuilt.
struct Reader {
    state: State,
    codec: Codec,
    changes: Changes,
    summary: Summary,
    /// The alerts active at the last step (`--alerts`).
    alerts: std::collections::BTreeMap<String, rows::AlertChange>,
    /// Keep every change for frames (the replay stream); else they are dropped now and then.
    keep_changes: bool,
    /// The progress bar, if one is drawn.
    progress: Option<indicatif::ProgressBar>,
}

/// A record fetched past the current step's boundary, waiting for its step.
struct Held {
    offset: i64,
    timestamp: Option<i64>,
    payload: Option<Vec<u8>>,
}

impl Reader {
    /// Exactly what `serve` does with a record: decode, check its event time, apply; a
    /// poison record moves the position and changes nothing.
    fn apply(&mut self, at: RecordRef, payload: Option<&[u8]>, timestamp: Option<i64>) {
        self.summary.records += 1;
        if let Some(bar) = &self.progress
            && self.summary.records.is_multiple_of(1024)
        {
            bar.inc(1024); // the bar takes a lock: once per 1024 records
        }
        let record = Record {
            at,
            payload,
            timestamp_ms: timestamp,
        };
        match record::process(&mut self.state, &self.codec, record, &mut self.changes) {
            Ok(_) => {
                if !self.keep_changes && self.summary.records.is_multiple_of(4096) {
                    self.changes = Changes::default(); // only serve's frames read them
                }
            }
            Err(poison) => {
                self.summary.dead_letters += 1;
                *self
                    .summary
                    .dead_letters_by_reason
                    .entry(poison.label())
                    .or_default() += 1;
                self.state.skip(at);
            }
        }
    }

    fn read(
        &mut self,
        consumer: &kafka::Consumer,
        plan: &Plan,
        options: &ReplayOptions,
        out: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        if options.format == Format::Csv && options.every_ms.is_some() {
            let header = if options.alerts {
                rows::ALERTS_HEADER
            } else {
                rows::CSV_HEADER
            };
            writeln!(out, "{header}")?;
        }
        let mut store_seen = false;
        self.read_steps(
            consumer,
            plan,
            |reader, step| {
                store_seen |= reader.write_step(step, plan, options, out)?;
                Ok(())
            },
            |_, _| Ok(()),
        )?;
        if let Some(store) = &options.store
            && !store_seen
        {
            return Err(ReplayError::UnknownStore {
                store: store.0.clone(),
                known: self
                    .state
                    .stores()
                    .keys()
                    .map(|s| s.0.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        out.flush()?;
        Ok(())
    }

    /// Applies, step after step, exactly the records before each step's offsets, calling
    /// `on_step` once a step is complete and `on_record` after each record applied (with its
    /// timestamp).
    fn read_steps(
        &mut self,
        consumer: &kafka::Consumer,
        plan: &Plan,
        mut on_step: impl FnMut(&mut Reader, &Step) -> Result<(), ReplayError>,
        mut on_record: impl FnMut(&mut Reader, Option<i64>) -> Result<(), ReplayError>,
    ) -> Result<(), ReplayError> {
        let keys: Vec<PartitionKey> = plan.layout.partitions().collect();
        let last = plan
            .steps
            .last()
            .map(|s| s.ends.clone())
            .unwrap_or_default();
        let mut assignment = TopicPartitionList::new();
        // From the warm-up checkpoint's position, or the earliest retained offset.
        let start: Vec<i64> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| self.state.position().next_offset(*key).max(plan.low[i]))
            .collect();
        for (i, (name, partition)) in plan.names.iter().enumerate() {
            if last[i] > start[i] {
                assignment
                    .add_partition_offset(name, *partition, Offset::Offset(start[i]))
                    .map_err(KafkaError::Request)?;
            }
        }
        consumer.assign(&assignment).map_err(KafkaError::Request)?;
        let n = plan.names.len();
        let mut held: Vec<VecDeque<Held>> = (0..n).map(|_| VecDeque::new()).collect();
        let mut paused = vec![false; n];
        // A partition whose records up to the range's end are all fetched.
        let mut exhausted: Vec<bool> = (0..n).map(|i| last[i] <= start[i]).collect();
        let index = |topic: &str, partition: i32| {
            plan.names
                .iter()
                .position(|(t, p)| t == topic && *p == partition)
        };
        let one = |i: usize| {
            let mut list = TopicPartitionList::new();
            let _ = list.add_partition(&plan.names[i].0, plan.names[i].1);
            list
        };
        for step in &plan.steps {
            // Records held from before: those of this step first, in offset order.
            for i in 0..n {
                while held[i].front().is_some_and(|h| h.offset < step.ends[i]) {
                    let Some(h) = held[i].pop_front() else { break };
                    self.apply(
                        RecordRef {
                            partition: keys[i],
                            offset: h.offset,
                        },
                        h.payload.as_deref(),
                        h.timestamp,
                    );
                    on_record(self, h.timestamp)?;
                }
                if paused[i] && held[i].is_empty() && !exhausted[i] {
                    consumer.resume(&one(i)).map_err(KafkaError::Request)?;
                    paused[i] = false;
                }
            }
            let mut waiting_since = Instant::now();
            loop {
                let complete = (0..n).all(|i| {
                    exhausted[i]
                        || !held[i].is_empty()
                        || self.state.position().next_offset(keys[i]) >= step.ends[i]
                        || step.ends[i] <= plan.low[i]
                });
                if complete {
                    break;
                }
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => {
                        waiting_since = Instant::now();
                        let Some(i) = index(message.topic(), message.partition()) else {
                            continue;
                        };
                        let offset = message.offset();
                        let timestamp = message.timestamp().to_millis();
                        if offset >= last[i] {
                            exhausted[i] = true; // past the range: the rest is never needed
                        } else if offset < step.ends[i] && held[i].is_empty() {
                            self.apply(
                                RecordRef {
                                    partition: keys[i],
                                    offset,
                                },
                                message.payload(),
                                timestamp,
                            );
                            on_record(self, timestamp)?;
                            continue;
                        } else {
                            held[i].push_back(Held {
                                offset,
                                timestamp,
                                payload: message.payload().map(<[u8]>::to_vec),
                            });
                        }
                        if !paused[i] {
                            consumer.pause(&one(i)).map_err(KafkaError::Request)?;
                            paused[i] = true;
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                        // Everything the partition held when it was read is in; its end
                        // was resolved before, so nothing it still needs comes later.
                        for (i, (_, p)) in plan.names.iter().enumerate() {
                            if *p == partition
                                && self.state.position().next_offset(keys[i])
                                    >= plan.high[i].min(last[i])
                            {
                                exhausted[i] = true;
                            }
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "replay: consumer error");
                    }
                    None => {}
                }
                if waiting_since.elapsed() > STALL_TIMEOUT {
                    let i = (0..n)
                        .find(|i| {
                            !exhausted[*i]
                                && held[*i].is_empty()
                                && self.state.position().next_offset(keys[*i]) < step.ends[*i]
                        })
                        .unwrap_or(0);
                    return Err(ReplayError::Stalled {
                        partition: format!("{}/{}", plan.names[i].0, plan.names[i].1),
                        seconds: STALL_TIMEOUT.as_secs(),
                        end: step.ends[i],
                    });
                }
            }
            on_step(self, step)?;
        }
        Ok(())
    }

    /// The output of one step; false if the store asked for is not (yet) in the state.
    fn write_step(
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
