//! The materialized view: exact rolling aggregates per store, built by applying decoded
//! events with their Kafka positions.
//!
//! Pure core: no I/O, no clock, no randomness. Time comes from the events (`occurred_at`);
//! "now" for every window is the newest event time seen for that store.
//!
//! # The determinism rule
//!
//! The state is a function of the *set* of records applied: any interleaving of the same
//! records that keeps each partition's order ends in the same `State` (a property test
//! checks it). What makes that hold:
//! - Windows (per-minute buckets, 15-minute SKU sales, 5-minute active users, held days)
//!   are cut relative to the newest event time, which only grows, and are pruned
//!   eagerly whenever it moves: an entry exists iff its time is inside the window of the
//!   final newest time. A record too old for a window is not added to it (it would be
//!   pruned anyway); it still counts where its day is held.
//! - Everything else is a commutative merge (counters, sums, HyperLogLog sketches, top-k
//!   by a total order) or follows one partition's order (a SKU's stock: `inventory` is
//!   keyed by SKU).
//! - Duplicate `event_id`s are recognised per partition: a redelivery carries the same
//!   key, so it lands in the same partition, whose order is fixed. Each partition keeps
//!   the ids of its last `dedup_window` of event time (relative to that partition's
//!   newest event, never to other partitions', which a catch-up reads at other speeds),
//!   at most `dedup_capacity` of them, evicted in arrival order. The windows are part of
//!   the state and checkpointed.
//!
//! "Late" (older than `allowed_lateness` behind the newest event) is reported in the
//! outcome for a metric only; it never changes how a record is applied, or the rule above
//! would break.

mod arrivals;
mod hll;
pub mod position;
pub mod rollup;
mod rules;
mod store;
pub mod view;
mod views;

use arrivals::Arrivals;
pub use hll::HyperLogLog;
pub use position::{Layout, PartitionKey, Position, PositionError, RecordRef};
pub use rollup::{Part, rollup_of};
use store::StoreApplied;
pub use store::{RECENT_ORDERS, StoreState};
pub use views::{Views, ViewsSnapshot};

use crate::events::{Event, Sku, StoreId};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Business settings of the aggregates. Changing them changes results, not the state's
/// format.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateConfig {
    /// Time zone per store id for "today"; stores not listed use `default_time_zone`.
    pub time_zones: BTreeMap<String, Tz>,
    /// Time zone of stores not in `time_zones`.
    pub default_time_zone: Tz,
    /// A SKU below this level is low on stock.
    pub low_stock_threshold: i64,
    /// Per-SKU thresholds, by SKU id.
    pub low_stock_overrides: BTreeMap<String, i64>,
    /// A SKU projected to sell out within this many minutes raises an alert...
    pub sell_out_alert_minutes: i64,
    /// ...when its level is at most this.
    pub sell_out_alert_level: i64,
    /// Calendar days held per store (today and the days before it).
    pub days_held: i32,
    /// Event-time span, per partition, over which duplicate event ids are recognised.
    pub dedup_window_ms: i64,
    /// Most event ids remembered per partition (a bound on memory).
    pub dedup_capacity: usize,
    /// Records older than this behind the newest event time are reported as late.
    pub allowed_lateness_ms: i64,
    /// An event dated more than this after its Kafka record's timestamp is dead-lettered
    /// (`event_time_in_future`); see [`crate::events::check_event_time`].
    pub max_future_skew_ms: i64,
    /// Most stores held: an event of a new store beyond it is dead-lettered
    /// (`store_limit`).
    pub max_stores: usize,
    /// Most SKUs held per store (stock entries, and SKUs sold in the sales window): an
    /// event naming a new SKU beyond it is dead-lettered (`sku_limit`).
    pub max_skus_per_store: usize,
    /// Most entries of a view's `low_stock`, `oversold` and `alerts` lists (the most
    /// urgent; the view counts the rest).
    pub list_limit: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            time_zones: BTreeMap::new(),
            default_time_zone: Tz::UTC,
            low_stock_threshold: 10,
            low_stock_overrides: BTreeMap::new(),
            sell_out_alert_minutes: 10,
            sell_out_alert_level: 25,
            days_held: 2,
            dedup_window_ms: 2 * 60_000,
            dedup_capacity: 100_000,
            allowed_lateness_ms: 5 * 60_000,
            max_future_skew_ms: 5 * 60_000,
            max_stores: 10_000,
            max_skus_per_store: 100_000,
            list_limit: 50,
        }
    }
}

impl AggregateConfig {
    /// The time zone of a store.
    pub fn time_zone(&self, store: &StoreId) -> Tz {
        self.time_zones
            .get(store.as_str())
            .copied()
            .unwrap_or(self.default_time_zone)
    }

    /// When a projected sell-out raises an alert.
    pub fn sell_out_rule(&self) -> rules::SellOutRule {
        rules::SellOutRule {
            minutes: self.sell_out_alert_minutes,
            level: self.sell_out_alert_level,
        }
    }

    /// The low-stock threshold of a SKU.
    pub fn threshold(&self, sku: &Sku) -> i64 {
        self.low_stock_overrides
            .get(sku.as_str())
            .copied()
            .unwrap_or(self.low_stock_threshold)
    }
}

/// What applying one record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event changed the state.
    Applied,
    /// Its `event_id` was already applied within the dedup window: nothing changed.
    Duplicate,
    /// The position already covers this record (a replay): nothing changed.
    AlreadyApplied,
    /// An order id already placed, or already cancelled, that day (re-emitted upstream
    /// under a new event id): nothing changed.
    Repeated,
    /// An order, cancellation or session of a day older than every held day: nothing
    /// changed.
    Expired,
}

/// The outcome of [`State::apply`], for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Applied, duplicate or replay.
    pub applied: Applied,
    /// Older than the allowed lateness behind the newest event time (metric only).
    pub late: bool,
}

/// What changed per store since the accumulator was last cleared: the input of a delta
/// frame. Accumulated across many `apply` calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Per store.
    pub stores: BTreeMap<StoreId, StoreChanges>,
    /// Stores copied on a change because something else still shared them: a frozen
    /// checkpoint not yet serialised (or a clone of the state). The copy-on-write cost of
    /// checkpoints, paid by a store's first change after a freeze; see [`State`].
    pub store_copies: u64,
}

/// What changed in one store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreChanges {
    /// Day totals (orders, revenue, cancellations, average order value, active users).
    pub totals: bool,
    /// Per-minute buckets touched (minute index since the epoch).
    pub minutes: BTreeSet<i64>,
    /// The recent-orders list.
    pub recent_orders: bool,
    /// Some SKU's stock, sales or alerts may have changed (the store's view is rebuilt from
    /// its listable SKUs; no delta names SKUs, so which ones is not kept).
    pub skus: bool,
}

impl Changes {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    fn store(&mut self, store: &StoreId) -> &mut StoreChanges {
        get_or_insert(&mut self.stores, store)
    }
}

/// Hashes a key that is already a uniform 64-bit hash (xxh3 of an event id) by taking it as
/// it is.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PrehashedSet = HashSet<u64, std::hash::BuildHasherDefault<PrehashedHasher>>;

/// A map keyed by a uniform 64-bit hash, hashed as it is.
pub(crate) type PrehashedMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PrehashedHasher>>;

/// The entry of `key`, inserted with its default first if missing: one lookup when present,
/// and the key is cloned only when it is inserted.
fn get_or_insert<'m, V: Default>(map: &'m mut BTreeMap<StoreId, V>, key: &StoreId) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.clone(), V::default());
    }
    map.get_mut(key)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

/// Event ids applied within one partition's dedup window, oldest first in arrival order.
/// Eviction is by arrival order: deterministic, because one partition's order is fixed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DedupWire", into = "DedupWire")]
struct Dedup {
    /// Newest event time in this partition.
    newest: i64,
    /// `(event time, xxh3 of the event id)`, in arrival order (in shared chunks: a
    /// checkpoint copies pointers, see `arrivals.rs`).
    order: Arrivals,
    /// The hashes in `order`, for lookup.
    seen: PrehashedSet,
}

/// What a checkpoint stores of a [`Dedup`]: the lookup set is rebuilt on load.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DedupWire {
    newest: i64,
    order: Arrivals,
}

impl From<DedupWire> for Dedup {
    fn from(wire: DedupWire) -> Self {
        let seen = wire.order.iter().map(|(_, hash)| *hash).collect();
        Dedup {
            newest: wire.newest,
            order: wire.order,
            seen,
        }
    }
}

impl From<Dedup> for DedupWire {
    fn from(dedup: Dedup) -> Self {
        DedupWire {
            newest: dedup.newest,
            order: dedup.order,
        }
    }
}

impl Dedup {
    /// Records `id`; false if it was already there.
    fn first_sighting(&mut self, id: &str, time: i64, config: &AggregateConfig) -> bool {
        let hash = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
        if self.seen.contains(&hash) {
            return false;
        }
        self.newest = self.newest.max(time);
        let cutoff = self.newest.saturating_sub(config.dedup_window_ms);
        if time >= cutoff {
            self.seen.insert(hash);
            self.order.push_back((time, hash));
        }
        while let Some(&(oldest, oldest_hash)) = self.order.front() {
            if oldest >= cutoff && self.order.len() <= config.dedup_capacity {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&oldest_hash);
        }
        true
    }
}

/// The whole materialized view: every store's aggregates, the dedup window and the
/// position they reflect. One writer (the ingest task) owns it.
///
/// Stores are shared copy-on-write: a checkpoint takes pointer copies of the stores it
/// writes and serialises them elsewhere; a store's first change after that copies it
/// (once, and only that store), so freezing costs the number of changed stores, never
/// their size. Its serialised form is [`crate::checkpoint`]'s head and store parts.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    stores: BTreeMap<StoreId, Arc<StoreState>>,
    dedup: BTreeMap<PartitionKey, Dedup>,
    /// Newest usable Kafka timestamp read per partition (every record, applied or not):
    /// what a record without a timestamp is judged by.
    record_times: BTreeMap<PartitionKey, i64>,
    position: Position,
    /// Newest event time applied, over all stores (0 before any).
    newest_event_time: i64,
    config: Arc<AggregateConfig>,
}

/// Everything of a state but its stores, copied out: what a checkpoint writes whole every
/// time (bounded by partitions and the dedup capacity, never by stores). Copying it copies
/// pointers to the dedup windows' sealed chunks and their open ones (no lookup sets, no
/// serialisation), so the owner can serialise it on another thread.
#[derive(Clone, Debug, Serialize)]
pub struct FrozenHead {
    dedup: BTreeMap<PartitionKey, DedupWire>,
    record_times: BTreeMap<PartitionKey, i64>,
    position: Position,
    newest_event_time: i64,
}

/// [`FrozenHead`] read back (the same fields in the same order).
#[derive(Deserialize)]
pub(crate) struct Head {
    dedup: BTreeMap<PartitionKey, Dedup>,
    record_times: BTreeMap<PartitionKey, i64>,
    position: Position,
    newest_event_time: i64,
}

impl State {
    /// Everything but the stores, copied for a checkpoint.
    pub fn frozen_head(&self) -> FrozenHead {
        FrozenHead {
            dedup: self
                .dedup
                .iter()
                .map(|(key, dedup)| {
                    let wire = DedupWire {
                        newest: dedup.newest,
                        order: dedup.order.clone(),
                    };
                    (*key, wire)
                })
                .collect(),
            record_times: self.record_times.clone(),
            position: self.position.clone(),
            newest_event_time: self.newest_event_time,
        }
    }

    /// A state from a checkpoint's head and its stores.
    pub(crate) fn from_parts(
        head: Head,
        stores: BTreeMap<StoreId, StoreState>,
        config: Arc<AggregateConfig>,
    ) -> State {
        let mut state = State {
            stores: stores
                .into_iter()
                .map(|(id, store)| (id, Arc::new(store)))
                .collect(),
            dedup: head.dedup,
            record_times: head.record_times,
            position: head.position,
            newest_event_time: head.newest_event_time,
            config: Arc::clone(&config),
        };
        state.set_config(config);
        state
    }
}

impl State {
    /// An empty state.
    pub fn new(config: Arc<AggregateConfig>) -> Self {
        State {
            stores: BTreeMap::new(),
            dedup: BTreeMap::new(),
            record_times: BTreeMap::new(),
            position: Position::default(),
            newest_event_time: 0,
            config,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &Arc<AggregateConfig> {
        &self.config
    }

    /// Replaces the settings (after restoring a checkpoint, which does not carry them).
    pub fn set_config(&mut self, config: Arc<AggregateConfig>) {
        for store in self.stores.values_mut() {
            Arc::make_mut(store).rebuild_watched(&config);
        }
        self.config = config;
    }

    /// The position after the last applied record.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Newest event time applied (milliseconds since the epoch; 0 before any).
    pub fn newest_event_time(&self) -> i64 {
        self.newest_event_time
    }

    /// Every store seen, by id (shared: see [`State`]).
    pub fn stores(&self) -> &BTreeMap<StoreId, Arc<StoreState>> {
        &self.stores
    }

    /// The newest usable Kafka timestamp read in `partition` (see
    /// [`crate::events::check_event_time`]).
    pub fn partition_record_time(&self, partition: PartitionKey) -> Option<i64> {
        self.record_times.get(&partition).copied()
    }

    /// Notes a record's usable Kafka timestamp for its partition (every record read, poison
    /// or not, so the reference is a function of the partition's records alone).
    pub fn note_record_time(&mut self, partition: PartitionKey, time_ms: i64) {
        let newest = self.record_times.entry(partition).or_insert(time_ms);
        *newest = (*newest).max(time_ms);
    }

    /// Whether the cardinality limits let `event` in: a new store beyond
    /// `max_stores`, or a new SKU (stocked or sold) of a store beyond
    /// `max_skus_per_store`, is refused. A record the limits refuse is poison.
    pub fn admits(&self, event: &Event) -> Result<(), crate::events::DecodeError> {
        use crate::events::DecodeError;
        let store_id = event.store_id();
        let Some(store) = self.stores.get(store_id) else {
            if self.stores.len() >= self.config.max_stores {
                return Err(DecodeError::StoreLimit {
                    store: store_id.0.clone(),
                    count: self.stores.len() + 1,
                    max: self.config.max_stores,
                });
            }
            return Ok(());
        };
        let max = self.config.max_skus_per_store;
        let refuse = |sku: &Sku| DecodeError::SkuLimit {
            store: store_id.0.clone(),
            sku: sku.0.clone(),
            max,
        };
        match event {
            Event::StockChanged(s)
                if !store.stock.contains_key(&s.sku) && store.stock.len() >= max =>
            {
                Err(refuse(&s.sku))
            }
            Event::OrderPlaced(o) => {
                let mut new = o
                    .lines
                    .iter()
                    .filter(|line| !store.sales.contains_key(&line.sku));
                match new.next() {
                    Some(first) if store.sales.len() + 1 + new.count() > max => {
                        Err(refuse(&first.sku))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Moves the position past a record that carries no event (a poison record sent to
    /// the dead-letter topic), so the partition keeps moving.
    pub fn skip(&mut self, at: RecordRef) {
        self.position.advance_past(at);
    }

    /// Applies one event read at `at`, recording what changed into `changes`.
    pub fn apply(&mut self, event: &Event, at: RecordRef, changes: &mut Changes) -> Outcome {
        if self.position.covers(at) {
            return Outcome {
                applied: Applied::AlreadyApplied,
                late: false,
            };
        }
        self.position.advance_past(at);
        let time = event.occurred_at();
        let late = time
            < self
                .newest_event_time
                .saturating_sub(self.config.allowed_lateness_ms);
        if !self.dedup.entry(at.partition).or_default().first_sighting(
            event.event_id(),
            time,
            &self.config,
        ) {
            return Outcome {
                applied: Applied::Duplicate,
                late,
            };
        }
        let store_id = event.store_id();
        let shared = get_or_insert(&mut self.stores, store_id);
        if Arc::get_mut(shared).is_none() {
            changes.store_copies += 1;
        }
        let store = Arc::make_mut(shared);
        let applied = match store.apply(event, at, &self.config, changes.store(store_id)) {
            StoreApplied::Applied => Applied::Applied,
            StoreApplied::Repeated => Applied::Repeated,
            StoreApplied::Expired => Applied::Expired,
        };
        if applied != Applied::Expired {
            self.newest_event_time = self.newest_event_time.max(time);
        }
        if applied != Applied::Applied {
            // Nothing moved: no empty entry in the changes, no store seen only this way.
            // (An entry that holds a change is never empty; a store that holds an event
            // is never blank.)
            if changes.stores.get(store_id) == Some(&StoreChanges::default()) {
                changes.stores.remove(store_id);
            }
            if self
                .stores
                .get(store_id)
                .is_some_and(|store| **store == StoreState::default())
            {
                self.stores.remove(store_id);
            }
        }
        Outcome { applied, late }
    }
}

#[cfg(test)]
mod tests;
