//! One store's aggregates and the business rules that update them.
//!
//! Pure: see the determinism rule in the parent module. Every window is relative to the
//! newest event time of this store and pruned as soon as that moves.

use super::{AggregateConfig, HyperLogLog, RecordRef, StoreChanges};
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

/// Money per currency: ISO-4217 code → minor units.
pub type Amounts = BTreeMap<String, i64>;

/// Totals of one calendar day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotals {
    /// Orders placed that day.
    pub orders: u64,
    /// Orders placed that day, per currency (for the average order value).
    pub orders_by_currency: BTreeMap<String, u64>,
    /// Sum of the totals of orders placed that day.
    pub gross_revenue: Amounts,
    /// Gross revenue less the totals of that day's orders cancelled since.
    pub net_revenue: Amounts,
    /// Cancellations that happened that day.
    pub cancelled: u64,
    /// Distinct visitors (user id when signed in, else session id).
    pub visitors: HyperLogLog,
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
    /// Stock per SKU.
    pub stock: HashMap<Sku, StockEntry>,
    /// Sales per SKU in the last [`SALES_WINDOW_MINUTES`].
    pub sales: HashMap<Sku, SkuSales>,
    /// Visitors per minute in the last [`ACTIVE_WINDOW_MINUTES`].
    pub active: BTreeMap<i64, HyperLogLog>,
    #[serde(skip)]
    day_cache: DayCache,
}

impl StoreState {
    /// The newest minute index of this store.
    pub fn newest_minute(&self) -> i64 {
        minute_of(self.newest_event_time)
    }

    /// The newest local day of this store.
    pub fn today(&self, tz: Tz) -> i32 {
        local_day(tz, self.newest_event_time)
    }

    pub(super) fn apply(
        &mut self,
        event: &Event,
        at: RecordRef,
        config: &AggregateConfig,
        changes: &mut StoreChanges,
    ) {
        let tz = config.time_zone(event.store_id());
        self.advance_time(event.occurred_at(), tz, config);
        match event {
            Event::OrderPlaced(o) => self.order_placed(o, tz, config, changes),
            Event::OrderCancelled(c) => self.order_cancelled(c, tz, config, changes),
            Event::StockChanged(s) => self.stock_changed(s, at, config, changes),
            Event::SessionSeen(s) => self.session_seen(s, tz, config, changes),
        }
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
            self.days = self.days.split_off(&(day - config.days_held + 1));
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
    ) {
        if let Some(day) = self.day_mut(tz, o.occurred_at, config) {
            day.orders += 1;
            *day.orders_by_currency
                .entry(o.currency.clone())
                .or_default() += 1;
            *day.gross_revenue.entry(o.currency.clone()).or_default() += o.total_minor;
            *day.net_revenue.entry(o.currency.clone()).or_default() += o.total_minor;
            changes.totals = true;
        }
        let minute = minute_of(o.occurred_at);
        if self.in_window(o.occurred_at, MINUTES_KEPT) {
            let bucket = self.minutes.entry(minute).or_default();
            bucket.orders += 1;
            add(&mut bucket.revenue, &o.currency, o.total_minor);
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
                if !changes.skus.contains(&line.sku) {
                    changes.skus.insert(line.sku.clone());
                }
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
            cancelled: false,
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
    }

    fn order_cancelled(
        &mut self,
        c: &OrderCancelled,
        tz: Tz,
        config: &AggregateConfig,
        changes: &mut StoreChanges,
    ) {
        if let Some(day) = self.day_mut(tz, c.occurred_at, config) {
            day.cancelled += 1;
            changes.totals = true;
        }
        if let Some(day) = self.day_mut(tz, c.order_placed_at, config) {
            add(&mut day.net_revenue, &c.currency, -c.total_minor);
            changes.totals = true;
        }
        // The order and its cancellation share a partition (key: order id), so the order
        // is applied first; if it is still listed, it is listed as cancelled.
        if let Some(order) = self
            .recent_orders
            .iter_mut()
            .find(|r| r.order_id == c.order_id)
        {
            order.cancelled = true;
            changes.recent_orders = true;
        }
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
                if s.new_level > previous {
                    entry.run_since = trigger;
                }
            }
        }
        if !changes.skus.contains(&s.sku) {
            changes.skus.insert(s.sku.clone());
        }
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
