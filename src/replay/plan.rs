//! A replay's plan: the range resolved to offsets (by record time with the broker's
//! offsets-for-times, or by position), checked (retention, an empty range, an end before
//! the start), its steps, the warm-up checkpoint, and the plan printed by `--dry-run`.
//! The checks and the steps' times are pure functions, unit-tested here.

use super::{End, ReplayError, ReplayOptions, rfc3339, rows};
use crate::aggregate::{Layout, PartitionKey, State};
use crate::config::Settings;
use crate::events::TopicRole;
use crate::kafka::{self, KafkaError};
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::io::Write;
use std::time::{Duration, Instant};

/// How long one request to the broker may take.
pub(super) const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a replay waits for the next record of a partition it still needs.
pub(super) const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One step: its time (`None` for a position), and each partition's end offset
/// (exclusive), in layout order.
#[derive(Clone, Debug)]
pub(super) struct Step {
    pub(super) time_ms: Option<i64>,
    pub(super) ends: Vec<i64>,
}

/// The resolved range.
pub(super) struct Plan {
    pub(super) layout: Layout,
    pub(super) names: Vec<(String, i32)>,
    pub(super) low: Vec<i64>,
    pub(super) high: Vec<i64>,
    pub(super) from: Vec<i64>,
    pub(super) steps: Vec<Step>,
}

/// The newest checkpoint of `serve`'s group (`kafka.group_id`, read only) from which the
/// first step is reachable: at or before the first step in every partition and not older
/// than what is retained. `None` (read from the earliest offsets) when there is none, or the
/// checkpoint store does not answer (logged).
pub(super) fn warm_up(
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
pub(super) struct Topology {
    pub(super) layout: Layout,
    pub(super) names: Vec<(String, i32)>,
    pub(super) low: Vec<i64>,
    pub(super) high: Vec<i64>,
}

pub(super) fn topology(
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
pub(super) fn position_ends(topology: &Topology, text: &str) -> Result<Vec<i64>, ReplayError> {
    let position = topology
        .layout
        .decode(text)
        .map_err(|cause| ReplayError::Position {
            position: text.chars().take(200).collect(),
            layout: topology.layout.tag().to_owned(),
            cause,
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
pub(super) fn timestamp_at(
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

/// Each partition's first offset at or after `time_ms` (its end when no record is).
fn offsets_at(
    consumer: &kafka::Consumer,
    topology: &Topology,
    time_ms: i64,
) -> Result<Vec<i64>, ReplayError> {
    let mut list = TopicPartitionList::new();
    for (name, partition) in &topology.names {
        list.add_partition_offset(name, *partition, Offset::Offset(time_ms))
            .map_err(KafkaError::Request)?;
    }
    let found = consumer
        .offsets_for_times(list, BROKER_TIMEOUT)
        .map_err(KafkaError::Request)?;
    Ok(topology
        .names
        .iter()
        .zip(&topology.high)
        .map(|((name, partition), high)| {
            match found.find_partition(name, *partition).map(|e| e.offset()) {
                Some(Offset::Offset(n)) => n.min(*high),
                _ => *high, // no record at or after the time: everything is before it
            }
        })
        .collect())
}

/// Where a range's steps are.
#[derive(Debug, PartialEq)]
pub(super) enum StepTimes<'a> {
    /// One snapshot at this position.
    AtPosition(&'a str),
    /// At these record times.
    Times(Vec<i64>),
}

/// The steps of `options`: every `--every` from `--from` and at `--to` (a timeline), `--to`
/// alone, or one snapshot at an end position; a timeline needs an end time, and the end is
/// not before the start.
pub(super) fn step_times(options: &ReplayOptions) -> Result<StepTimes<'_>, ReplayError> {
    match (&options.end, options.every_ms) {
        (End::Position(text), None) => Ok(StepTimes::AtPosition(text)),
        (End::Position(_), Some(_)) => Err(ReplayError::EveryNeedsTime),
        (End::Time(to_ms), _) if *to_ms < options.from_ms => Err(ReplayError::EndBeforeStart {
            from: rfc3339(options.from_ms),
            to: rfc3339(*to_ms),
        }),
        (End::Time(to_ms), Some(every)) => Ok(StepTimes::Times(rows::steps(
            options.from_ms,
            *to_ms,
            every,
        ))),
        (End::Time(to_ms), None) => Ok(StepTimes::Times(vec![*to_ms])),
    }
}

/// True when the range starts at every partition's end while some partition holds records:
/// a timeline there would have no row to show.
pub(super) fn starts_past_everything(from: &[i64], low: &[i64], high: &[i64]) -> bool {
    from == high && high.iter().zip(low).any(|(h, l)| h > l)
}

/// Refuses a `--from` older than a partition's earliest retained record (retention deleted
/// records the rows would need).
fn check_retention(
    consumer: &kafka::Consumer,
    topology: &Topology,
    from_ms: i64,
    from: &[i64],
) -> Result<(), ReplayError> {
    let (low, high) = (&topology.low, &topology.high);
    for (i, (name, partition)) in topology.names.iter().enumerate() {
        if low[i] > 0 && from[i] == low[i] && high[i] > low[i] {
            let earliest = timestamp_at(consumer, name, *partition, low[i])?;
            if let Some(earliest) = earliest.filter(|t| *t > from_ms) {
                return Err(ReplayError::BeforeRetention {
                    from: rfc3339(from_ms),
                    partition: format!("{name}/{partition}"),
                    earliest: rfc3339(earliest),
                    offset: low[i],
                });
            }
        }
    }
    Ok(())
}

/// Resolves times and positions to offsets.
pub(super) fn resolve(
    settings: &kafka::KafkaSettings,
    consumer: &kafka::Consumer,
    options: &ReplayOptions,
) -> Result<Plan, ReplayError> {
    let topology = topology(settings, consumer)?;
    let from = match &options.from_position {
        Some(text) => position_ends(&topology, text)?,
        None => {
            let from = offsets_at(consumer, &topology, options.from_ms)?;
            check_retention(consumer, &topology, options.from_ms, &from)?;
            from
        }
    };
    if options.every_ms.is_some() && starts_past_everything(&from, &topology.low, &topology.high) {
        return Err(ReplayError::NothingInRange {
            from: rfc3339(options.from_ms),
            held: topology
                .high
                .iter()
                .zip(&topology.low)
                .map(|(h, l)| h - l)
                .sum(),
        });
    }
    let mut steps = match step_times(options)? {
        StepTimes::AtPosition(text) => vec![Step {
            time_ms: None,
            ends: position_ends(&topology, text)?,
        }],
        StepTimes::Times(times) => times
            .into_iter()
            .map(|t| {
                Ok(Step {
                    time_ms: Some(t),
                    ends: offsets_at(consumer, &topology, t)?,
                })
            })
            .collect::<Result<_, ReplayError>>()?,
    };
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

pub(super) fn print_plan(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::Format;

    const T: i64 = 1_764_651_600_000; // 2025-12-02T05:00:00Z

    fn options(end: End, every_ms: Option<i64>) -> ReplayOptions {
        ReplayOptions {
            from_ms: T,
            from_position: None,
            end,
            every_ms,
            store: None,
            format: Format::Csv,
            alerts: false,
            progress: false,
            dry_run: false,
        }
    }

    #[test]
    fn a_range_has_the_steps_its_options_ask_for_and_no_impossible_one() {
        let minute = 60_000;
        assert_eq!(
            step_times(&options(End::Time(T + 3 * minute), Some(minute))).ok(),
            Some(StepTimes::Times(vec![
                T,
                T + minute,
                T + 2 * minute,
                T + 3 * minute
            ]))
        );
        assert_eq!(
            step_times(&options(End::Time(T + 90_000), None)).ok(),
            Some(StepTimes::Times(vec![T + 90_000]))
        );
        assert_eq!(
            step_times(&options(End::Position("p".into()), None)).ok(),
            Some(StepTimes::AtPosition("p"))
        );
        assert!(matches!(
            step_times(&options(End::Position("p".into()), Some(minute))),
            Err(ReplayError::EveryNeedsTime)
        ));
        assert!(matches!(
            step_times(&options(End::Time(T - 1), None)),
            Err(ReplayError::EndBeforeStart { .. })
        ));
    }

    #[test]
    fn a_range_that_starts_past_every_record_is_told_apart_from_an_empty_topic() {
        assert!(starts_past_everything(&[5, 9], &[0, 2], &[5, 9]));
        assert!(
            !starts_past_everything(&[4, 9], &[0, 2], &[5, 9]),
            "one record left"
        );
        assert!(
            !starts_past_everything(&[0, 0], &[0, 0], &[0, 0]),
            "nothing held at all"
        );
    }
}
