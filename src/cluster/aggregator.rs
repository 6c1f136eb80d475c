//! The aggregator's thread (ADR 0007, decision 4): membership of the consumer group on the
//! orders topic says which slices it owns (the group's consumer never reads data: its
//! partitions are paused as soon as they are assigned); one assigned data consumer reads
//! the three partitions of every owned slice; each slice publishes its own frames.

use super::slice::{Lost, Slice, SliceContext, role_of};
use crate::fanout::Status;
use crate::kafka::{self, KafkaError};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Most records handled between two looks at membership and frames.
const BATCH: usize = 2_000;

/// Longest a poll blocks when nothing is queued.
const POLL_WAIT: Duration = Duration::from_millis(5);

/// Wait before taking a slice again after a failed start.
const RETRY_START: Duration = Duration::from_secs(2);

/// Longest a slice whose producer was fenced is left alone while the group still lists it
/// here. Fenced, this process is most likely a zombie that has not heard from the group
/// yet (it will on its next heartbeat, well within this); taking the slice again at once
/// would fence the owner the group chose. The wait ends as soon as the group revokes it.
const FENCED_HOLD: Duration = Duration::from_secs(5);

/// The group consumer's context: which orders partitions (slices) are assigned, each
/// paused as it arrives (membership only, never data).
struct Membership {
    quiet: kafka::QuietLogs,
    owned: Mutex<BTreeSet<i32>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl ClientContext for Membership {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.quiet.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ConsumerContext for Membership {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut owned = self
            .owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(list) => {
                if let Err(error) = consumer.pause(list) {
                    tracing::warn!(error = %error, "pausing the membership consumer's partitions");
                }
                owned.extend(list.elements().iter().map(|e| e.partition()));
                tracing::info!(assigned = ?slice_numbers(list), owned = ?*owned, "the group assigned slices here");
            }
            Rebalance::Revoke(list) => {
                for element in list.elements() {
                    owned.remove(&element.partition());
                }
                self.metrics.slices_revoked.inc_by(list.count() as u64);
                tracing::info!(revoked = ?slice_numbers(list), owned = ?*owned, "the group revoked slices here");
            }
            Rebalance::Error(error) => tracing::warn!(error = %error, "rebalance error"),
        }
    }
}

fn slice_numbers(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// The aggregator's inputs.
pub struct Aggregator {
    /// What every slice shares.
    pub context: SliceContext,
    /// Partitions per input topic (= slices).
    pub partitions: i32,
    /// Shortest time between a slice's frames.
    pub frame_interval: Duration,
    /// Readiness and position.
    pub status: watch::Sender<Status>,
    /// Stop: give every slice up (final frames and checkpoints) and leave the group.
    pub stop: CancellationToken,
}

impl Aggregator {
    /// Runs until stopped.
    pub fn run(self) -> Result<(), KafkaError> {
        let context = &self.context;
        let mut group_config = kafka::consumer_config(&context.kafka, &context.cluster.group_id);
        group_config.set("group.protocol", "consumer");
        let group: BaseConsumer<Membership> = group_config
            .create_with_context(Membership {
                quiet: kafka::QuietLogs::default(),
                owned: Mutex::default(),
                metrics: std::sync::Arc::clone(&context.metrics),
            })
            .map_err(KafkaError::Config)?;
        group
            .subscribe(&[context.kafka.topics.orders.as_str()])
            .map_err(KafkaError::Request)?;
        let data: kafka::Consumer = kafka::quiet(&kafka::consumer_config(
            &context.kafka,
            &format!("{}-data", context.cluster.group_id),
        ))?;
        let mut slices: BTreeMap<i32, Slice> = BTreeMap::new();
        let mut retry_at: BTreeMap<i32, Instant> = BTreeMap::new();
        let mut fenced_hold: BTreeMap<i32, Instant> = BTreeMap::new();
        let mut next_status = Instant::now();
        while !self.stop.is_cancelled() {
            let _ = group.poll(Duration::ZERO);
            let owned = group
                .context()
                .owned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            // A fenced slice is held back until the wait ends, or until the group revokes
            // it (assigned here again later, it is taken at once).
            let now = Instant::now();
            fenced_hold.retain(|number, until| {
                let holding = owned.contains(number) && now < *until;
                if !holding {
                    retry_at.remove(number);
                }
                holding
            });
            self.take_and_give(&owned, &mut slices, &mut retry_at, &data);
            self.read_batch(&data, &mut slices);
            let now = Instant::now();
            for (number, fenced) in self.publish_due(&mut slices, now) {
                if let Some(slice) = slices.remove(&number) {
                    unassign(&data, &slice, context);
                }
                // Fenced: held back (see FENCED_HOLD). Failed otherwise: taken again at
                // once, with a new producer, from the last frame it published.
                if fenced {
                    fenced_hold.insert(number, now + FENCED_HOLD);
                    retry_at.insert(number, now + FENCED_HOLD);
                }
            }
            if now >= next_status {
                next_status = now + Duration::from_millis(200);
                self.publish_status(&slices, &owned);
            }
        }
        for (_, slice) in std::mem::take(&mut slices) {
            unassign(&data, &slice, context);
            slice.give_up(context);
        }
        group.unsubscribe();
        let _ = group.poll(Duration::from_millis(100));
        Ok(())
    }

    /// Starts the slices newly owned and gives up those no longer owned.
    fn take_and_give(
        &self,
        owned: &BTreeSet<i32>,
        slices: &mut BTreeMap<i32, Slice>,
        retry_at: &mut BTreeMap<i32, Instant>,
        data: &kafka::Consumer,
    ) {
        let context = &self.context;
        let gone: Vec<i32> = slices
            .keys()
            .filter(|n| !owned.contains(n))
            .copied()
            .collect();
        for number in gone {
            if let Some(slice) = slices.remove(&number) {
                unassign(data, &slice, context);
                slice.give_up(context);
            }
        }
        let wanted: Vec<i32> = owned
            .iter()
            .filter(|n| !slices.contains_key(n))
            .filter(|n| retry_at.get(n).is_none_or(|at| Instant::now() >= *at))
            .copied()
            .collect();
        // Taken side by side: each waits on Kafka (fencing the previous owner, reading the
        // changelog) and PostgreSQL (the checkpoint); one after another, a failover's slices
        // would wait for each other.
        let started: Vec<(i32, Result<Slice, KafkaError>)> = std::thread::scope(|scope| {
            let starting: Vec<_> = wanted
                .into_iter()
                .map(|number| {
                    scope.spawn(move || (number, Slice::start(number, self.partitions, context)))
                })
                .collect();
            starting
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for (number, result) in started {
            match result {
                Ok(slice) => {
                    retry_at.remove(&number);
                    if let Err(error) = assign(data, &slice, context) {
                        tracing::error!(slice = number, error = %error, "cannot read the slice's partitions");
                        retry_at.insert(number, Instant::now() + RETRY_START);
                        continue;
                    }
                    slices.insert(number, slice);
                    context.metrics.slices_taken.inc();
                }
                Err(error) => {
                    tracing::warn!(slice = number, error = %error, "cannot take the slice yet; retrying");
                    retry_at.insert(number, Instant::now() + RETRY_START);
                }
            }
        }
    }

    /// Publishes the frames due, each slice's transaction on a thread of its own (a commit
    /// waits on the broker for a round of its protocol: one slice's must not hold back the
    /// others'). Returns the slices whose producer can publish no more, each with whether
    /// Kafka fenced it.
    fn publish_due(&self, slices: &mut BTreeMap<i32, Slice>, now: Instant) -> Vec<(i32, bool)> {
        let context = &self.context;
        let due: Vec<(i32, &mut Slice, _)> = slices
            .iter_mut()
            .filter_map(|(number, slice)| {
                let frame = slice.frame_due(now, self.frame_interval)?;
                Some((*number, slice, frame))
            })
            .collect();
        let results: Vec<(i32, Result<(), Lost>)> = std::thread::scope(|scope| {
            let running: Vec<_> = due
                .into_iter()
                .map(|(number, slice, frame)| {
                    scope.spawn(move || (number, slice.publish(&frame, now, context)))
                })
                .collect();
            running
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut lost = Vec::new();
        for (number, result) in results {
            match result {
                Ok(()) => {}
                Err(Lost {
                    fenced: true,
                    reason,
                }) => {
                    tracing::warn!(slice = number, %reason, "fenced: another aggregator owns this slice now; dropping it");
                    context.metrics.slices_fenced.inc();
                    lost.push((number, true));
                }
                Err(Lost {
                    fenced: false,
                    reason,
                }) => {
                    tracing::warn!(slice = number, %reason, "the slice's producer failed for good; taking the slice again with a new one");
                    lost.push((number, false));
                }
            }
        }
        lost
    }

    /// Reads up to [`BATCH`] records of the owned slices.
    fn read_batch(&self, data: &kafka::Consumer, slices: &mut BTreeMap<i32, Slice>) {
        let context = &self.context;
        let mut wait = POLL_WAIT;
        for _ in 0..BATCH {
            let Some(result) = data.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    self.context.metrics.consumer_errors.inc();
                    tracing::debug!(error = %error, "aggregator consumer error");
                    continue;
                }
            };
            let Some(role) = role_of(&context.layout, message.topic()) else {
                continue;
            };
            let Some(slice) = slices.get_mut(&message.partition()) else {
                continue;
            };
            context.metrics.record_read(role);
            let was_live = slice.is_live();
            if slice.on_record(role, &message, context) {
                let mut list = TopicPartitionList::new();
                list.add_partition(message.topic(), message.partition());
                let _ = data.pause(&list);
            }
            if !was_live && slice.is_live() {
                let mut list = TopicPartitionList::new();
                for (topic, partition) in slice.partitions(&context.layout) {
                    list.add_partition(&topic, partition);
                }
                let _ = data.resume(&list);
            }
        }
    }

    fn publish_status(&self, slices: &BTreeMap<i32, Slice>, owned: &BTreeSet<i32>) {
        let mut position = crate::aggregate::Position::default();
        for (number, slice) in slices {
            slice.position().set_in(&mut position, *number);
        }
        let newest = slices
            .values()
            .map(|s| s.state().newest_event_time())
            .max()
            .unwrap_or(0);
        let live = slices.len() == owned.len() && slices.values().all(Slice::is_live);
        self.context.metrics.slices_owned.set(slices.len() as i64);
        self.context
            .metrics
            .control
            .set_consumer_lag(live.then_some(0));
        self.status.send_replace(Status {
            assigned: live,
            position,
            newest_event_time: newest,
        });
    }
}

/// Reads the slice's three partitions from its position, unpaused (one paused while an
/// earlier ownership of the slice caught up would otherwise stay paused for good).
fn assign(data: &kafka::Consumer, slice: &Slice, context: &SliceContext) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    let position = slice.position();
    for (role, name, _) in context.layout.topics() {
        let next = position.0[role.index()];
        let offset = if next > 0 {
            Offset::Offset(next)
        } else {
            Offset::Beginning
        };
        list.add_partition_offset(name, slice_number(slice, context), offset)
            .map_err(KafkaError::Request)?;
    }
    kafka::assign_unpaused(data, &list).map_err(KafkaError::Request)
}

fn slice_number(slice: &Slice, context: &SliceContext) -> i32 {
    slice.partitions(&context.layout)[0].1
}

/// Stops reading the slice's partitions.
fn unassign(data: &kafka::Consumer, slice: &Slice, context: &SliceContext) {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in slice.partitions(&context.layout) {
        list.add_partition(&topic, partition);
    }
    if let Err(error) = data.incremental_unassign(&list) {
        tracing::warn!(error = %error, "unassigning a slice's partitions");
    }
}
