//! One store's aggregates and the business rules that update them.
//!
//! Pure: see the determinism rule in the parent module. Every window is relative to the
//! newest event time of this store and pruned as soon as that moves.

use super::{AggregateConfig, HyperLogLog, PrehashedMap, RecordRef, StoreChanges};
use crate::events::{
    Channel, Event, OrderCancelled, OrderId, OrderPlaced, SessionSeen, Sku, StockChanged,
};
use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Per-minute buckets kept (the last hour).
pub const MINUTES_KEPT: i64 = 60;
/// Window of SKU sales for velocity and top products.
pub const SALES_WINDOW_MINUTES: i64 = 15;
/// Window of "active now".
pub const ACTIVE_WINDOW_MINUTES: i64 = 5;
/// Length of the recent-orders list.
pub const RECENT_ORDERS: usize = 20;

/// Minute index since the epoch of an event time.
pub fn minute_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(60_000)
}

/// The local calendar day of an event time in `tz`, as days since 1970-01-01.
pub fn local_day(tz: Tz, time_ms: i64) -> i32 {
    let date = tz
        .timestamp_millis_opt(time_ms)
        .single()
        .map(|t| t.date_naive())
        .unwrap_or_default();
    (date - NaiveDate::default()).num_days() as i32
}

/// Money per currency: ISO-4217 code → minor units. 128-bit: one order is at most
/// [`crate::events::validate::MAX_AMOUNT_MINOR`], so no count of orders overflows a sum.
pub type Amounts = BTreeMap<String, i128>;

/// What is known of one order id of a day: whether it was placed (and its total), whether
/// it was cancelled. Keyed by the xxh3 of the order id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMark {
    /// The placed order's total and currency, once its `OrderPlaced` is applied.
    pub placed: Option<(i64, [u8; 3])>,
    /// At least one `OrderCancelled` of it is applied.
    pub cancelled: bool,
}

/// Totals of one calendar day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotals {
    /// Orders placed that day (distinct order ids).
    pub orders: u64,
    /// Orders placed that day, per currency (for the average order value).
    pub orders_by_currency: BTreeMap<String, u64>,
    /// Sum of the totals of orders placed that day.
    pub gross_revenue: Amounts,
    /// Gross revenue less the totals of that day's placed orders that are cancelled.
    pub net_revenue: Amounts,
    /// Orders of that day (by the day they were placed) cancelled at least once.
    pub cancelled: u64,
    /// Distinct visitors (user id when signed in, else session id).
    pub visitors: HyperLogLog,
    /// Every order id of that day seen placed or cancelled: what makes a re-emitted order
    /// count once and a cancellation subtract once, in whichever order they arrive.
    pub(super) ledger: PrehashedMap<OrderMark>,
}

/// The ledger key of an order id.
fn order_key(order: &OrderId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(order.as_str().as_bytes())
}

/// A three-letter currency code as stored in a ledger (validated upstream).
fn currency_code(currency: &str) -> [u8; 3] {
    let mut code = [0u8; 3];
    for (slot, byte) in code.iter_mut().zip(currency.bytes()) {
        *slot = byte;
    }
    code
}

/// The currency of a ledger entry.
fn currency_str(code: &[u8; 3]) -> &str {
    std::str::from_utf8(code).unwrap_or("XXX")
}

/// Orders and revenue of one minute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteTotals {
    /// Orders placed.
    pub orders: u64,
    /// Their totals per currency.
    pub revenue: Amounts,
}

/// A recent order, as the dashboard lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentOrder {
    /// The order.
    pub order_id: OrderId,
    /// Event id (ties in time are broken by it).
    pub event_id: String,
    /// Event time.
    pub occurred_at: i64,
    /// Customer display name.
    pub customer_name: String,
    /// Total, minor units.
    pub total_minor: i64,
    /// ISO-4217.
    pub currency: String,
    /// Units over all lines.
    pub items: i64,
    /// Where it was placed.
    pub channel: Channel,
    /// Cancelled since.
    pub cancelled: bool,
}

/// What applying an event did to its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreApplied {
    /// It counted.
    Applied,
    /// An order id placed before, or cancelled before (a re-emit under a new event id).
    Repeated,
    /// Its day is older than every held day: nothing moved.
    Expired,
}

/// A record that changed a SKU, with its event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Where the record is.
    pub record: RecordRef,
    /// Its event time.
    pub at: i64,
}

/// The stock of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockEntry {
    /// Product name.
    pub name: String,
    /// Current level; negative is oversold.
    pub level: i64,
    /// The record that set `level`.
    pub set_by: Trigger,
    /// The record that took the level under the low-stock threshold (while it stays under).
    pub low_since: Option<Trigger>,
    /// The record that took the level below zero (while it stays below).
    pub oversold_since: Option<Trigger>,
    /// The record that took the level to exactly zero (while it stays zero).
    pub sold_out_since: Option<Trigger>,
    /// The record that last raised the level (or the first one): the current depletion
    /// run, which can raise at most one sell-out alert.
    pub run_since: Trigger,
}

/// Units of one SKU sold per minute, within the sales window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuSales {
    /// Product name from the order lines.
    pub name: String,
    /// Minute index → units.
    pub minutes: BTreeMap<i64, i64>,
}

impl SkuSales {
    /// Units in the window.
    pub fn units(&self) -> i64 {
        self.minutes.values().sum()
    }
}

/// The UTC bounds of the last local day computed, so most events skip the time zone
/// lookup. A cache, not state: never serialised, always equal.
#[derive(Clone, Debug, Default)]
pub struct DayCache {
    start: i64,
    end: i64,
    day: i32,
}

impl PartialEq for DayCache {
    fn eq(&self, _: &DayCache) -> bool {
        true
    }
}

impl DayCache {
    fn day(&mut self, tz: Tz, time: i64) -> i32 {
        if self.start <= time && time < self.end {
            return self.day;
        }
        let day = local_day(tz, time);
        let midnight = |d: i32| {
            let date = NaiveDate::default() + chrono::Days::new(u64::try_from(d).ok()?);
            tz.from_local_datetime(&date.and_hms_opt(0, 0, 0)?)
                .earliest()
                .map(|t| t.timestamp_millis())
        };
        if let (Some(start), Some(end)) = (midnight(day), midnight(day + 1))
            && start <= time
            && time < end
        {
            *self = DayCache { start, end, day };
        }
        day
    }
}

/// One store's aggregates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreState {
    /// Newest event time of this store: "now" for its windows and "today".
    pub newest_event_time: i64,
    /// Held calendar days (local), days since the epoch → totals.
    pub days: BTreeMap<i32, DayTotals>,
    /// The last hour, minute index → totals.
    pub minutes: BTreeMap<i64, MinuteTotals>,
    /// Newest first, at most [`RECENT_ORDERS`].
    pub recent_orders: Vec<RecentOrder>,
    /// Stock per SKU, by SKU (`GET /api/stock` pages through it in this order).
    pub stock: BTreeMap<Sku, StockEntry>,
    /// Sales per SKU in the last [`SALES_WINDOW_MINUTES`].
    pub sales: HashMap<Sku, SkuSales>,
    /// Visitors per minute in the last [`ACTIVE_WINDOW_MINUTES`].
    pub active: BTreeMap<i64, HyperLogLog>,
    #[serde(skip)]
    day_cache: DayCache,
    /// The stocked SKUs that a list can hold without selling: under their threshold, at or
    /// below zero, or in a low-stock run. With the SKUs sold in the sales window, the only
    /// SKUs a view looks at (a well-stocked SKU that is not selling is in no list). Derived
    /// from `stock` and the settings, so not serialised: rebuilt on restore.
    #[serde(skip)]
    pub(super) watched: std::collections::BTreeSet<Sku>,
}

/// Whether a SKU's stock entry can put it in a list without sales (see `watched`).
fn is_watched(entry: &StockEntry, threshold: i64) -> bool {
    entry.level < threshold || entry.level <= 0 || entry.low_since.is_some()
}

impl StoreState {
    /// Rebuilds the watched SKUs from the stock and `config` (after a restore, or when the
    /// settings change).
    pub(super) fn rebuild_watched(&mut self, config: &AggregateConfig) {
        self.watched = self
            .stock
            .iter()
            .filter(|(sku, entry)| is_watched(entry, config.threshold(sku)))
            .map(|(sku, _)| sku.clone())
            .collect();
    }

    /// The SKUs a view looks at: the watched ones, then the SKUs sold in the sales window
    /// that are not watched. Every other stocked SKU is in no list.
    pub(super) fn listable_skus(&self) -> impl Iterator<Item = &Sku> {
        self.watched
            .iter()
            .chain(self.sales.keys().filter(|sku| !self.watched.contains(*sku)))
    }

    /// The newest minute index of this store.
    pub fn newest_minute(&self) -> i64 {
        minute_of(self.newest_event_time)
    }

    /// The newest local day of this store.
    pub fn today(&self, tz: Tz) -> i32 {
        local_day(tz, self.newest_event_time)
    }

    /// Applies one event. An order, cancellation or session whose day is not held (older
    /// than every window) changes nothing, and neither does a re-emitted order id or a
    /// cancellation of an order already cancelled.
    pub(super) fn apply(
        &mut self,
        event: &Event,
        at: RecordRef,
        config: &AggregateConfig,
        changes: &mut StoreChanges,
    ) -> StoreApplied {
        let tz = config.time_zone(event.store_id());
        let held = |store: &mut StoreState, time: i64| store.day_held(tz, time, config);
        let verdict = match event {
            Event::OrderPlaced(o) if !held(self, o.occurred_at) => StoreApplied::Expired,
            Event::OrderCancelled(c) if !held(self, c.order_placed_at) => StoreApplied::Expired,
            Event::SessionSeen(s) if !held(self, s.occurred_at) => StoreApplied::Expired,
            _ => StoreApplied::Applied,
        };
        if verdict == StoreApplied::Expired {
            return verdict;
        }
        let recent = self.recent_orders.len();
        self.advance_time(event.occurred_at(), tz, config);
        if self.recent_orders.len() != recent {
            changes.recent_orders = true; // orders of a day no longer held left the list
        }
        match event {
            Event::OrderPlaced(o) => self.order_placed(o, tz, config, changes),
            Event::OrderCancelled(c) => self.order_cancelled(c, tz, config, changes),
            Event::StockChanged(s) => {
                self.stock_changed(s, at, config, changes);
                StoreApplied::Applied
            }
            Event::SessionSeen(s) => {
                self.session_seen(s, tz, config, changes);
                StoreApplied::Applied
            }
        }
    }

    /// Whether the local day of `time` is one of the held days (relative to this store's
    /// newest event, or to `time` itself when it is newer).
    fn day_held(&mut self, tz: Tz, time: i64, config: &AggregateConfig) -> bool {
        let day = self.day_cache.day(tz, time);
        let today = self.day_cache.day(tz, self.newest_event_time.max(time));
        day > today - config.days_held
    }

    /// Moves "now" forward and prunes every window that it leaves behind.
    fn advance_time(&mut self, time: i64, tz: Tz, config: &AggregateConfig) {
        if time <= self.newest_event_time {
            return;
        }
        let old_minute = self.newest_minute();
        let old_day = self.day_cache.day(tz, self.newest_event_time);
        self.newest_event_time = time;
        let minute = self.newest_minute();
        if minute != old_minute {
            self.minutes = self.minutes.split_off(&(minute - MINUTES_KEPT + 1));
            self.active = self.active.split_off(&(minute - ACTIVE_WINDOW_MINUTES + 1));
            let sales_cutoff = minute - SALES_WINDOW_MINUTES + 1;
            self.sales.retain(|_, sales| {
                sales.minutes = sales.minutes.split_off(&sales_cutoff);
                !sales.minutes.is_empty()
            });
        }
        let day = self.day_cache.day(tz, time);
        if day != old_day {
            let first_held = day - config.days_held + 1;
            self.days = self.days.split_off(&first_held);
            // An order whose day is no longer held leaves the list too: the list holds the
            // newest orders of the held days, whatever the arrival order.
            let cache = &mut self.day_cache;
            self.recent_orders
                .retain(|r| cache.day(tz, r.occurred_at) >= first_held);
        }
    }

    /// The totals of the day of `time`, if that day is held.
    fn day_mut(&mut self, tz: Tz, time: i64, config: &AggregateConfig) -> Option<&mut DayTotals> {
        let day = self.day_cache.day(tz, time);
        let today = self.day_cache.day(tz, self.newest_event_time);
        (day > today - config.days_held).then(|| self.days.entry(day).or_default())
    }

    fn in_window(&self, time: i64, minutes: i64) -> bool {
        minute_of(time) > self.newest_minute() - minutes
    }

    fn order_placed(
        &mut self,
        o: &OrderPlaced,
        tz: Tz,
        config: &AggregateConfig,
        changes: &mut StoreChanges,
    ) -> StoreApplied {
        let Some(day) = self.day_mut(tz, o.occurred_at, config) else {
            return StoreApplied::Expired;
        };
        let mark = day.ledger.entry(order_key(&o.order_id)).or_default();
        if mark.placed.is_some() {
            return StoreApplied::Repeated; // the same order id under a new event id
        }
        mark.placed = Some((o.total_minor, currency_code(&o.currency)));
        let cancelled = mark.cancelled;
        day.orders += 1;
        add(&mut day.orders_by_currency, &o.currency, 1);
        add(
            &mut day.gross_revenue,
            &o.currency,
            i128::from(o.total_minor),
        );
        if !cancelled {
            // A cancellation that came first already counted it out of the net.
            add(&mut day.net_revenue, &o.currency, i128::from(o.total_minor));
        } else {
            day.net_revenue.entry(o.currency.clone()).or_default();
        }
        changes.totals = true;
        let minute = minute_of(o.occurred_at);
        if self.in_window(o.occurred_at, MINUTES_KEPT) {
            let bucket = self.minutes.entry(minute).or_default();
            bucket.orders += 1;
            add(&mut bucket.revenue, &o.currency, i128::from(o.total_minor));
            changes.minutes.insert(minute);
        }
        if self.in_window(o.occurred_at, SALES_WINDOW_MINUTES) {
            for line in &o.lines {
                if !self.sales.contains_key(&line.sku) {
                    self.sales.insert(line.sku.clone(), SkuSales::default());
                }
                let sales = self
                    .sales
                    .get_mut(&line.sku)
                    .unwrap_or_else(|| unreachable!("inserted above"));
                if sales.name.is_empty() {
                    sales.name.clone_from(&line.name);
                }
                *sales.minutes.entry(minute).or_default() += i64::from(line.quantity);
                changes.skus = true;
            }
        }
        let recent = RecentOrder {
            order_id: o.order_id.clone(),
            event_id: o.event_id.clone(),
            occurred_at: o.occurred_at,
            customer_name: o.customer_name.clone(),
            total_minor: o.total_minor,
            currency: o.currency.clone(),
            items: o.lines.iter().map(|l| i64::from(l.quantity)).sum(),
            channel: o.channel,
            cancelled,
        };
        // Newest first by (time, event id): a total order, so the list is the top 20 of
        // every order applied, whatever the arrival order.
        let new_rank = (
            std::cmp::Reverse(recent.occurred_at),
            recent.event_id.as_str(),
        );
        let index = self.recent_orders.partition_point(|r| {
            (std::cmp::Reverse(r.occurred_at), r.event_id.as_str()) < new_rank
        });
        if index < RECENT_ORDERS {
            self.recent_orders.insert(index, recent);
            self.recent_orders.truncate(RECENT_ORDERS);
            changes.recent_orders = true;
        }
        StoreApplied::Applied
    }

    fn order_cancelled(
        &mut self,
        c: &OrderCancelled,
        tz: Tz,
        config: &AggregateConfig,
        changes: &mut StoreChanges,
    ) -> StoreApplied {
        // The order's day (the cancellation says when it was placed) holds its ledger entry.
        let Some(day) = self.day_mut(tz, c.order_placed_at, config) else {
            return StoreApplied::Expired;
        };
        let mark = day.ledger.entry(order_key(&c.order_id)).or_default();
        if mark.cancelled {
            return StoreApplied::Repeated; // cancelled before, under another event id
        }
        mark.cancelled = true;
        let placed = mark.placed;
        day.cancelled += 1;
        if let Some((total, code)) = placed {
            // The order's own total, once: an order never seen subtracts nothing.
            add(
                &mut day.net_revenue,
                currency_str(&code),
                -i128::from(total),
            );
        }
        changes.totals = true;
        if let Some(order) = self
            .recent_orders
            .iter_mut()
            .find(|r| r.order_id == c.order_id)
        {
            order.cancelled = true;
            changes.recent_orders = true;
        }
        StoreApplied::Applied
    }

    fn stock_changed(
        &mut self,
        s: &StockChanged,
        at: RecordRef,
        config: &AggregateConfig,
        changes: &mut StoreChanges,
    ) {
        let trigger = Trigger {
            record: at,
            at: s.occurred_at,
        };
        let threshold = config.threshold(&s.sku);
        match self.stock.get_mut(&s.sku) {
            None => {
                self.stock.insert(
                    s.sku.clone(),
                    StockEntry {
                        name: s.name.clone(),
                        level: s.new_level,
                        set_by: trigger,
                        low_since: (s.new_level < threshold).then_some(trigger),
                        oversold_since: (s.new_level < 0).then_some(trigger),
                        sold_out_since: (s.new_level == 0).then_some(trigger),
                        run_since: trigger,
                    },
                );
            }
            Some(entry) => {
                if !supersedes(trigger, entry.set_by) {
                    return; // an older change of this SKU (only if it is mis-keyed)
                }
                let previous = entry.level;
                entry.level = s.new_level;
                entry.set_by = trigger;
                entry.name.clone_from(&s.name);
                entry.low_since = match (s.new_level < threshold, entry.low_since) {
                    (false, _) => None,
                    (true, None) => Some(trigger),
                    (true, since) => since,
                };
                entry.oversold_since = match (s.new_level < 0, entry.oversold_since) {
                    (false, _) => None,
                    (true, None) => Some(trigger),
                    (true, since) => since,
                };
                entry.sold_out_since = match (s.new_level == 0, entry.sold_out_since) {
                    (false, _) => None,
                    (true, None) => Some(trigger),
                    (true, since) => since,
                };
                if s.new_level > previous {
                    entry.run_since = trigger;
                }
            }
        }
        if self
            .stock
            .get(&s.sku)
            .is_some_and(|entry| is_watched(entry, threshold))
        {
            if !self.watched.contains(&s.sku) {
                self.watched.insert(s.sku.clone());
            }
        } else {
            self.watched.remove(&s.sku);
        }
        changes.skus = true;
    }

    fn session_seen(
        &mut self,
        s: &SessionSeen,
        tz: Tz,
        config: &AggregateConfig,
        changes: &mut StoreChanges,
    ) {
        let visitor = HyperLogLog::hash(s.user_id.as_deref().unwrap_or(&s.session_id));
        if let Some(day) = self.day_mut(tz, s.occurred_at, config) {
            day.visitors.insert_hash(visitor);
            changes.totals = true;
        }
        if self.in_window(s.occurred_at, ACTIVE_WINDOW_MINUTES) {
            self.active
                .entry(minute_of(s.occurred_at))
                .or_default()
                .insert_hash(visitor);
            changes.totals = true;
        }
    }
}

/// Adds to a per-currency entry, allocating the key only the first time.
fn add<V: Default + std::ops::AddAssign>(map: &mut BTreeMap<String, V>, key: &str, value: V) {
    match map.get_mut(key) {
        Some(entry) => *entry += value,
        None => {
            map.insert(key.to_owned(), value);
        }
    }
}

/// Whether a stock record replaces the one that set the current level: later in the same
/// partition, or (for a SKU spread over partitions) later by event time, then position.
fn supersedes(new: Trigger, old: Trigger) -> bool {
    if new.record.partition == old.record.partition {
        new.record.offset > old.record.offset
    } else {
        (new.at, new.record) > (old.at, old.record)
    }
}
