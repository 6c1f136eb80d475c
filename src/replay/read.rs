//! Reading a replay: the state being rebuilt ([`Reader`]) takes each record through the
//! core's record path, step after step: exactly the records before each step's offsets,
//! a partition paused at its boundary (records fetched past it wait in memory) until every
//! partition has reached its own.

use super::plan::{Plan, STALL_TIMEOUT, Step};
use super::{Format, ReplayError, ReplayOptions, Summary, rows};
use crate::aggregate::{Changes, PartitionKey, RecordRef, State};
use crate::events::Codec;
use crate::kafka::{self, KafkaError};
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};
use storepulse_core::record::{self, Record};

/// The state being rebuilt.
pub(super) struct Reader {
    pub(super) state: State,
    pub(super) codec: Codec,
    pub(super) changes: Changes,
    pub(super) summary: Summary,
    /// The alerts active at the last step (`--alerts`).
    pub(super) alerts: std::collections::BTreeMap<String, rows::AlertChange>,
    /// Keep every change for frames (the replay stream); else they are dropped now and then.
    pub(super) keep_changes: bool,
    /// The progress bar, if one is drawn.
    pub(super) progress: Option<indicatif::ProgressBar>,
}

/// A record fetched past the current step's boundary, waiting for its step.
pub(super) struct Held {
    pub(super) offset: i64,
    pub(super) timestamp: Option<i64>,
    pub(super) payload: Option<Vec<u8>>,
}

impl Reader {
    /// Exactly what `serve` does with a record: decode, check its event time, apply; a
    /// poison record moves the position and changes nothing.
    pub(super) fn apply(&mut self, at: RecordRef, payload: Option<&[u8]>, timestamp: Option<i64>) {
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

    pub(super) fn read(
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
    pub(super) fn read_steps(
        &mut self,
        consumer: &kafka::Consumer,
        plan: &Plan,
        mut on_step: impl FnMut(&mut Reader, &Step) -> Result<(), ReplayError>,
        mut on_record: impl FnMut(&mut Reader, Option<i64>) -> Result<(), ReplayError>,
    ) -> Result<(), ReplayError> {
        let mut fetch = Fetch::assign(consumer, plan, self.state.position())?;
        for step in &plan.steps {
            // Records held from before: those of this step first, in offset order.
            for i in 0..fetch.keys.len() {
                while let Some(h) = fetch.next_held(i, step) {
                    self.apply(fetch.at(i, h.offset), h.payload.as_deref(), h.timestamp);
                    on_record(self, h.timestamp)?;
                }
                fetch.resume_if_drained(consumer, plan, i)?;
            }
            let mut waiting_since = Instant::now();
            while !fetch.step_complete(step, plan, self.state.position()) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => {
                        waiting_since = Instant::now();
                        let timestamp = message.timestamp().to_millis();
                        if let Some(at) = fetch.take(consumer, plan, step, &message)? {
                            self.apply(at, message.payload(), timestamp);
                            on_record(self, timestamp)?;
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                        fetch.reached_end(plan, partition, self.state.position());
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "replay: consumer error");
                    }
                    None => {}
                }
                if waiting_since.elapsed() > STALL_TIMEOUT {
                    return Err(fetch.stalled(plan, step, self.state.position()));
                }
            }
            on_step(self, step)?;
        }
        Ok(())
    }
}

/// What a replay's consumer has fetched, per partition in layout order: the records held
/// past the current step's boundary, whether the partition is paused, and whether every
/// record of the range up to its end has been fetched.
struct Fetch {
    keys: Vec<PartitionKey>,
    /// The range's end in each partition (the last step's offsets).
    last: Vec<i64>,
    held: Vec<VecDeque<Held>>,
    paused: Vec<bool>,
    exhausted: Vec<bool>,
}

impl Fetch {
    /// Assigns every partition with records to read, from `position` (the warm-up
    /// checkpoint's) or the earliest retained offset.
    fn assign(
        consumer: &kafka::Consumer,
        plan: &Plan,
        position: &crate::aggregate::Position,
    ) -> Result<Fetch, ReplayError> {
        let keys: Vec<PartitionKey> = plan.layout.partitions().collect();
        let last = plan
            .steps
            .last()
            .map(|s| s.ends.clone())
            .unwrap_or_default();
        let start: Vec<i64> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| position.next_offset(*key).max(plan.low[i]))
            .collect();
        let mut assignment = TopicPartitionList::new();
        for (i, (name, partition)) in plan.names.iter().enumerate() {
            if last[i] > start[i] {
                assignment
                    .add_partition_offset(name, *partition, Offset::Offset(start[i]))
                    .map_err(KafkaError::Request)?;
            }
        }
        consumer.assign(&assignment).map_err(KafkaError::Request)?;
        let n = keys.len();
        Ok(Fetch {
            exhausted: (0..n).map(|i| last[i] <= start[i]).collect(),
            held: (0..n).map(|_| VecDeque::new()).collect(),
            paused: vec![false; n],
            keys,
            last,
        })
    }

    fn at(&self, i: usize, offset: i64) -> RecordRef {
        RecordRef {
            partition: self.keys[i],
            offset,
        }
    }

    /// The next held record of partition `i` that belongs to `step`.
    fn next_held(&mut self, i: usize, step: &Step) -> Option<Held> {
        if self.held[i].front()?.offset < step.ends[i] {
            self.held[i].pop_front()
        } else {
            None
        }
    }

    /// Resumes partition `i` once nothing it fetched is waiting.
    fn resume_if_drained(
        &mut self,
        consumer: &kafka::Consumer,
        plan: &Plan,
        i: usize,
    ) -> Result<(), ReplayError> {
        if self.paused[i] && self.held[i].is_empty() && !self.exhausted[i] {
            consumer
                .resume(&one_partition(plan, i))
                .map_err(KafkaError::Request)?;
            self.paused[i] = false;
        }
        Ok(())
    }

    /// Every partition has reached `step`'s boundary (or has nothing more to give).
    fn step_complete(
        &self,
        step: &Step,
        plan: &Plan,
        position: &crate::aggregate::Position,
    ) -> bool {
        (0..self.keys.len()).all(|i| {
            self.exhausted[i]
                || !self.held[i].is_empty()
                || position.next_offset(self.keys[i]) >= step.ends[i]
                || step.ends[i] <= plan.low[i]
        })
    }

    /// A fetched record: where to apply it now, or `None` when it is past the range (its
    /// partition is then exhausted) or past the step (held, and its partition paused).
    fn take(
        &mut self,
        consumer: &kafka::Consumer,
        plan: &Plan,
        step: &Step,
        message: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<Option<RecordRef>, ReplayError> {
        let Some(i) = plan
            .names
            .iter()
            .position(|(t, p)| t == message.topic() && *p == message.partition())
        else {
            return Ok(None);
        };
        let offset = message.offset();
        if offset >= self.last[i] {
            self.exhausted[i] = true; // past the range: the rest is never needed
        } else if offset < step.ends[i] && self.held[i].is_empty() {
            return Ok(Some(self.at(i, offset)));
        } else {
            self.held[i].push_back(Held {
                offset,
                timestamp: message.timestamp().to_millis(),
                payload: message.payload().map(<[u8]>::to_vec),
            });
        }
        if !self.paused[i] {
            consumer
                .pause(&one_partition(plan, i))
                .map_err(KafkaError::Request)?;
            self.paused[i] = true;
        }
        Ok(None)
    }

    /// Everything `partition` held when it was read is in; its end was resolved before, so
    /// nothing it still needs comes later.
    fn reached_end(&mut self, plan: &Plan, partition: i32, position: &crate::aggregate::Position) {
        for (i, (_, p)) in plan.names.iter().enumerate() {
            if *p == partition
                && position.next_offset(self.keys[i]) >= plan.high[i].min(self.last[i])
            {
                self.exhausted[i] = true;
            }
        }
    }

    /// The error for a step that waited too long: the first partition still short of it.
    fn stalled(
        &self,
        plan: &Plan,
        step: &Step,
        position: &crate::aggregate::Position,
    ) -> ReplayError {
        let i = (0..self.keys.len())
            .find(|i| {
                !self.exhausted[*i]
                    && self.held[*i].is_empty()
                    && position.next_offset(self.keys[*i]) < step.ends[*i]
            })
            .unwrap_or(0);
        ReplayError::Stalled {
            partition: format!("{}/{}", plan.names[i].0, plan.names[i].1),
            seconds: STALL_TIMEOUT.as_secs(),
            end: step.ends[i],
        }
    }
}

/// Partition `i` of the plan, alone (to pause or resume it).
fn one_partition(plan: &Plan, i: usize) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    let _ = list.add_partition(&plan.names[i].0, plan.names[i].1);
    list
}
