//! The record path: what happens to one Kafka record, in one place, for every reader
//! (`serve`'s ingest, `storepulse replay` and a cluster's aggregators). Decode, then (unless the position already
//! covers it) the event-time guard, the cardinality limits and `State::apply`.
//!
//! Pure: the record's bytes, position and Kafka timestamp come in as arguments; the caller
//! dead-letters a refused record and then moves the position past it with `State::skip`.

use crate::aggregate::{Changes, Outcome, RecordRef, State};
use crate::events::{Codec, DecodeError, Event, check_event_time, usable_timestamp};

/// One Kafka record as the core sees it.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Where it is.
    pub at: RecordRef,
    /// Its value; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// Its Kafka timestamp (CreateTime or LogAppendTime), if it has one.
    pub timestamp_ms: Option<i64>,
}

/// A record that became an event and was applied (or recognised as a duplicate, repeat,
/// expired or already applied).
#[derive(Clone, Debug)]
pub struct Processed {
    /// The decoded event.
    pub event: Event,
    /// What applying it did.
    pub outcome: Outcome,
}

/// Processes one record: `Err` is a poison record (its reason), which changed nothing but
/// its partition's timestamp reference; the caller dead-letters it and calls
/// [`State::skip`].
pub fn process(
    state: &mut State,
    codec: &Codec,
    record: Record<'_>,
    changes: &mut Changes,
) -> Result<Processed, DecodeError> {
    process_checked(state, codec, record, changes, None)
}

/// [`process`] for a state that holds one slice of a cluster (ADR 0007): the record must
/// also be in its store's slice among `partitions` (`wrong_partition` otherwise), so a
/// producer that does not key by store id moves no number of another slice's stores.
pub fn process_in_slice(
    state: &mut State,
    codec: &Codec,
    record: Record<'_>,
    changes: &mut Changes,
    partitions: i32,
) -> Result<Processed, DecodeError> {
    process_checked(state, codec, record, changes, Some(partitions))
}

fn process_checked(
    state: &mut State,
    codec: &Codec,
    record: Record<'_>,
    changes: &mut Changes,
    slices: Option<i32>,
) -> Result<Processed, DecodeError> {
    let partition = record.at.partition;
    let reference = state.partition_record_time(partition);
    if let Some(time) = usable_timestamp(record.timestamp_ms) {
        state.note_record_time(partition, time);
    }
    let event = codec.decode(record.payload.ok_or(DecodeError::Tombstone)?)?;
    if !state.position().covers(record.at) {
        if let Some(partitions) = slices {
            let store = event.store_id().as_str();
            let slice = crate::cluster::slice_of(store, partitions);
            if slice != partition.partition {
                return Err(DecodeError::WrongPartition {
                    store: store.to_owned(),
                    partition: partition.partition,
                    slice,
                });
            }
        }
        check_event_time(
            &event,
            record.timestamp_ms,
            reference,
            state.config().max_future_skew_ms,
        )?;
        state.admits(&event)?;
    }
    let outcome = state.apply(&event, record.at, changes);
    Ok(Processed { event, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateConfig, Applied, PartitionKey};
    use crate::events::samples;
    use crate::events::{ConfluentIds, SessionSeen, TopicRole};
    use std::sync::Arc;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn codec() -> Codec {
        Codec::new(&ConfluentIds::default()).expect("schemas load")
    }

    fn at(partition: i32, offset: i64) -> RecordRef {
        RecordRef {
            partition: PartitionKey {
                role: TopicRole::Activity,
                partition,
            },
            offset,
        }
    }

    fn session(store: &str, id: &str, time: i64) -> Vec<u8> {
        let event = Event::SessionSeen(SessionSeen {
            event_id: id.into(),
            store_id: store.into(),
            occurred_at: time,
            session_id: format!("s-{id}"),
            user_id: None,
        });
        codec().encode(&event).expect("encodes")
    }

    fn run(
        state: &mut State,
        at: RecordRef,
        payload: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<Applied, &'static str> {
        let record = Record {
            at,
            payload: Some(payload),
            timestamp_ms,
        };
        let result = process(state, &codec(), record, &mut Changes::default());
        match result {
            Ok(done) => Ok(done.outcome.applied),
            Err(error) => {
                state.skip(at);
                Err(error.label())
            }
        }
    }

    #[test]
    fn a_record_without_a_timestamp_is_judged_by_its_partitions_newest_timestamp() {
        let mut state = State::new(Arc::new(AggregateConfig::default()));
        // First record of the partition without a timestamp: nothing to judge it by.
        assert_eq!(
            run(&mut state, at(0, 0), &session("store-a", "e0", T0), None),
            Err("no_timestamp")
        );
        // CreateTime -1 and a 1970 clock are no timestamp either.
        assert_eq!(
            run(
                &mut state,
                at(0, 1),
                &session("store-a", "e1", T0),
                Some(-1)
            ),
            Err("no_timestamp")
        );
        assert_eq!(
            run(&mut state, at(0, 2), &session("store-a", "e2", T0), Some(5)),
            Err("no_timestamp")
        );
        assert_eq!(
            run(
                &mut state,
                at(0, 3),
                &session("store-a", "e3", T0),
                Some(T0)
            ),
            Ok(Applied::Applied)
        );
        // Ten years ahead without a timestamp: refused against T0; the store's day stays.
        let ten_years = 10 * 365 * 86_400_000;
        assert_eq!(
            run(
                &mut state,
                at(0, 4),
                &session("store-a", "e4", T0 + ten_years),
                None
            ),
            Err("event_time_in_future")
        );
        assert_eq!(state.newest_event_time(), T0);
        // Within the skew of the reference: applied.
        assert_eq!(
            run(
                &mut state,
                at(0, 5),
                &session("store-a", "e5", T0 + 60_000),
                None
            ),
            Ok(Applied::Applied)
        );
        // Another partition has its own reference: none yet.
        assert_eq!(
            run(&mut state, at(1, 0), &session("store-a", "e6", T0), None),
            Err("no_timestamp")
        );
        // A chain of timestamp-less records cannot walk the reference forward.
        assert_eq!(
            run(
                &mut state,
                at(0, 6),
                &session("store-a", "e7", T0 + 4 * 60_000),
                None
            ),
            Ok(Applied::Applied)
        );
        assert_eq!(
            run(
                &mut state,
                at(0, 7),
                &session("store-a", "e8", T0 + 8 * 60_000),
                None
            ),
            Err("event_time_in_future")
        );
    }

    #[test]
    fn out_of_range_times_are_poison() {
        let mut state = State::new(Arc::new(AggregateConfig::default()));
        for (offset, time) in [i64::MAX, 0, 4_102_444_800_000, 946_684_799_999]
            .into_iter()
            .enumerate()
        {
            let payload = session("store-a", &format!("x{offset}"), time);
            assert_eq!(
                run(&mut state, at(0, offset as i64), &payload, Some(i64::MAX)),
                Err("invalid"),
                "{time}"
            );
        }
        assert_eq!(state.newest_event_time(), 0);
        assert!(state.stores().is_empty());
    }

    #[test]
    fn new_stores_and_skus_beyond_the_limits_are_poison_and_old_ones_keep_flowing() {
        let config = AggregateConfig {
            max_stores: 2,
            max_skus_per_store: 3,
            ..AggregateConfig::default()
        };
        let mut state = State::new(Arc::new(config));
        let mut offset = 0;
        let mut next = |state: &mut State, store: &str| {
            offset += 1;
            let payload = session(store, &format!("e{offset}"), T0 + offset);
            run(state, at(0, offset), &payload, Some(T0 + offset))
        };
        assert_eq!(next(&mut state, "a"), Ok(Applied::Applied));
        assert_eq!(next(&mut state, "b"), Ok(Applied::Applied));
        assert_eq!(next(&mut state, "c"), Err("store_limit"));
        assert_eq!(next(&mut state, "a"), Ok(Applied::Applied));
        assert_eq!(state.stores().len(), 2);

        let codec = codec();
        let stock = |state: &mut State, offset: i64, sku: &str| {
            let mut change = samples::stock_changed();
            change.store_id = "a".into();
            change.sku = sku.into();
            change.event_id = format!("s{offset}");
            change.occurred_at = T0 + 100 + offset;
            let payload = codec.encode(&Event::StockChanged(change)).expect("encodes");
            let at = RecordRef {
                partition: PartitionKey {
                    role: TopicRole::Inventory,
                    partition: 0,
                },
                offset,
            };
            run(state, at, &payload, Some(T0 + 100 + offset))
        };
        for (offset, sku) in ["k1", "k2", "k3"].into_iter().enumerate() {
            assert_eq!(stock(&mut state, offset as i64, sku), Ok(Applied::Applied));
        }
        assert_eq!(stock(&mut state, 3, "k4"), Err("sku_limit"));
        assert_eq!(stock(&mut state, 4, "k1"), Ok(Applied::Applied));
        assert_eq!(state.stores()["a"].stock.len(), 3);
        // Sold SKUs count too: three new ones fit, a fourth new one does not.
        let order = |state: &mut State, offset: i64, skus: &[&str]| {
            let mut order = samples::order_placed();
            order.store_id = "a".into();
            order.order_id = format!("o{offset}").into();
            order.event_id = format!("oe{offset}");
            order.occurred_at = T0 + 200 + offset;
            order.lines = skus
                .iter()
                .map(|sku| crate::events::OrderLine {
                    sku: (*sku).into(),
                    ..order.lines[0].clone()
                })
                .collect();
            let payload = codec.encode(&Event::OrderPlaced(order)).expect("encodes");
            let at = RecordRef {
                partition: PartitionKey {
                    role: TopicRole::Orders,
                    partition: 0,
                },
                offset,
            };
            run(state, at, &payload, Some(T0 + 200 + offset))
        };
        assert_eq!(order(&mut state, 0, &["k1", "k2"]), Ok(Applied::Applied));
        assert_eq!(order(&mut state, 1, &["k2", "k3"]), Ok(Applied::Applied));
        assert_eq!(order(&mut state, 2, &["k1", "k9"]), Err("sku_limit"));
        assert_eq!(order(&mut state, 3, &["k3"]), Ok(Applied::Applied));
        assert_eq!(state.stores()["a"].sales.len(), 3);
    }

    #[test]
    fn amounts_beyond_the_bound_are_poison_and_sums_never_wrap() {
        use crate::events::validate::MAX_AMOUNT_MINOR;
        let mut state = State::new(Arc::new(AggregateConfig::default()));
        let order = |id: &str, total: i64| {
            let mut order = samples::order_placed();
            order.order_id = id.into();
            order.event_id = format!("ev-{id}");
            order.occurred_at = T0;
            order.total_minor = total;
            codec().encode(&Event::OrderPlaced(order)).expect("encodes")
        };
        let orders = |offset: i64| RecordRef {
            partition: PartitionKey {
                role: TopicRole::Orders,
                partition: 0,
            },
            offset,
        };
        // The report's two orders of 2^63 - 1: refused, nothing counted.
        assert_eq!(
            run(&mut state, orders(0), &order("big1", i64::MAX), Some(T0)),
            Err("invalid")
        );
        assert_eq!(
            run(&mut state, orders(1), &order("big2", i64::MAX), Some(T0)),
            Err("invalid")
        );
        assert!(state.stores().is_empty());
        for n in 0..3 {
            assert_eq!(
                run(
                    &mut state,
                    orders(2 + n),
                    &order(&format!("max{n}"), MAX_AMOUNT_MINOR),
                    Some(T0)
                ),
                Ok(Applied::Applied)
            );
        }
        let snapshot = state
            .snapshot(&crate::aggregate::Layout::new(Vec::new()), None)
            .expect("a snapshot");
        let store = snapshot.stores.values().next().expect("one store");
        let revenue = &store.counters.revenue_today;
        assert_eq!(revenue.len(), 1);
        assert_eq!(revenue[0].minor, 3 * i128::from(MAX_AMOUNT_MINOR));
    }

    /// A slice's state takes only its own stores' records: one in another store's
    /// partition is poison and moves nothing.
    #[test]
    fn a_slice_refuses_a_record_of_a_store_of_another_partition() {
        let mut state = State::new(Arc::new(AggregateConfig::default()));
        // murmur2("foobar") puts it in partition 16 of 50.
        let payload = session("foobar", "e1", T0);
        let record = |partition| Record {
            at: at(partition, 0),
            payload: Some(&payload),
            timestamp_ms: Some(T0),
        };
        let mut changes = Changes::default();
        let refused = process_in_slice(&mut state, &codec(), record(3), &mut changes, 50);
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.label()),
            Err("wrong_partition")
        );
        assert!(changes.is_empty() && state.stores().is_empty());
        let taken = process_in_slice(&mut state, &codec(), record(16), &mut changes, 50);
        assert!(taken.is_ok());
        assert_eq!(state.stores().len(), 1);
    }
}
