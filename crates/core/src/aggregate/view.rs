//! Views: the JSON shape of the aggregates, as `/api/snapshot` serves them, per store and
//! rolled up over all stores. Computed from a [`State`] on demand; nothing here is state.
//! Which SKU is low, oversold or about to sell out is decided by `rules.rs`; the deltas of
//! these views are the live stream's (`crate::live`).
//!
//! Money is `{"currency": "EUR", "minor": 1234}` (integer minor units); times are RFC 3339
//! UTC strings plus `_ms` epoch milliseconds where a client computes with them.
//!
//! Pure: "now" is the newest event time of the state, never the clock.

use super::rules::{self, StockStatus};
use super::store::{ACTIVE_WINDOW_MINUTES, Amounts, MINUTES_KEPT, StockEntry, local_day};
use super::{AggregateConfig, HyperLogLog, Layout, State, StoreState, hll};
use crate::events::{Channel, Sku, StoreId};
use chrono::{DateTime, NaiveDate, SecondsFormat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An amount of money.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// ISO-4217 code.
    pub currency: String,
    /// Integer minor units (128-bit: sums of many orders; one order is at most 10^12).
    pub minor: i128,
}

/// One minute of the last hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MinuteFields")]
pub struct MinuteView {
    /// Start of the minute, RFC 3339.
    pub minute: String,
    /// The same minute as an index since the epoch (not serialised: what deltas select by).
    #[serde(skip)]
    pub index: i64,
    /// Orders placed in it.
    pub orders: u64,
    /// Their totals.
    pub revenue: Vec<Money>,
}

/// A recent order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// Store of the order.
    pub store_id: String,
    /// The order.
    pub order_id: String,
    /// The `OrderPlaced` event: the entry's identity, and the tie-break of its rank
    /// (newest `occurred_at` first, then `event_id` ascending).
    pub event_id: String,
    /// Customer display name.
    pub customer_name: String,
    /// Total.
    pub total: Money,
    /// Units over all lines.
    pub items: i64,
    /// Where it was placed.
    pub channel: Channel,
    /// Event time, RFC 3339.
    pub occurred_at: String,
    /// Cancelled since.
    pub cancelled: bool,
}

/// Distinct visitors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveUsers {
    /// In the last 5 minutes of event time.
    pub last_5_minutes: u64,
    /// Today (store's calendar day).
    pub today: u64,
    /// HyperLogLog estimate: standard error as a fraction.
    pub standard_error: f64,
}

/// A SKU's stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockView {
    /// Store of the SKU.
    pub store_id: String,
    /// SKU id.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Level; negative is oversold.
    pub level: i64,
}

/// A SKU low on stock, with its sales velocity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockView {
    /// Store of the SKU.
    pub store_id: String,
    /// SKU id.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Level.
    pub level: i64,
    /// Its threshold.
    pub threshold: i64,
    /// Units ordered in the last 15 minutes of event time.
    pub sold_last_15m: i64,
    /// Minutes until sold out at that velocity; `null` when nothing sells.
    pub minutes_to_sell_out: Option<i64>,
    /// When it sells out at that velocity (to the minute), RFC 3339; `null` when nothing
    /// sells.
    pub projected_sell_out_at: Option<String>,
    /// The SKU's active alert (`sold_out`, `sell_out_imminent` or `low_stock`), if any.
    pub alert: Option<AlertKind>,
}

/// A top seller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopProduct {
    /// Store of the SKU.
    pub store_id: String,
    /// SKU id.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Units ordered in the last 15 minutes.
    pub units: i64,
}

pub use super::rules::AlertKind;

/// An active alert. Its id is derived from the SKU and the record that started the
/// condition, so a replay or a restart shows the same alert with the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertView {
    /// Stable id.
    pub id: String,
    /// What it is about.
    pub kind: AlertKind,
    /// Store of the SKU.
    pub store_id: String,
    /// SKU id.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Level now.
    pub level: i64,
    /// Event time of the record that started the condition, RFC 3339.
    pub since: String,
}

/// The aggregates of one store, or of all stores rolled up. (Not `Deserialize`: its
/// flattened parts would go through serde's buffer, which cannot hold an `i128`; the
/// cluster's records carry it field by field, see `cluster::wire`.)
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreView {
    /// Today's counters (flattened into the view's JSON).
    #[serde(flatten)]
    pub counters: DayCounters,
    /// Minutes of the window that have orders, oldest first (a minute absent had none).
    pub per_minute: Vec<MinuteView>,
    /// The 20 newest orders, newest first.
    pub recent_orders: Vec<OrderView>,
    /// The stock lists (flattened into the view's JSON).
    #[serde(flatten)]
    pub lists: SkuLists,
}

/// The counters of "today", shared by a view and a delta (a delta always carries them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayCounters {
    /// The store's local date that "today" means; `null` in the all-stores rollup (each
    /// store counts its own today).
    pub day: Option<String>,
    /// Time zone of "today"; `null` in the rollup.
    pub time_zone: Option<String>,
    /// Orders placed today.
    pub orders_today: u64,
    /// Revenue of today's orders net of their cancellations, per currency.
    pub revenue_today: Vec<Money>,
    /// Cancellations today.
    pub cancelled_today: u64,
    /// Gross revenue / orders today, per currency, rounded down to a minor unit.
    pub average_order_value: Vec<Money>,
    /// Distinct visitors.
    pub active_users: ActiveUsers,
    /// Start of the per-minute window: the 60 minutes ending at the newest event's minute.
    pub per_minute_from: String,
    /// How many items each SKU list has in whole (its view carries the first
    /// `aggregate.list_limit`), and how many SKUs are stocked.
    pub counts: ListCounts,
}

/// The whole lengths behind a view's bounded lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCounts {
    /// SKUs with a stock level (`GET /api/stock` pages through them).
    pub skus: u64,
    /// Entries of the whole `low_stock` list.
    pub low_stock: u64,
    /// Entries of the whole `oversold` list.
    pub oversold: u64,
    /// Active alerts by kind (their sum is the whole `alerts` list).
    pub alerts: AlertCounts,
}

/// Active alerts by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertCounts {
    /// Level below zero.
    pub oversold: u64,
    /// Level zero.
    pub sold_out: u64,
    /// Projected to sell out soon.
    pub sell_out_imminent: u64,
    /// Under the threshold.
    pub low_stock: u64,
}

impl AlertCounts {
    fn add(&mut self, kind: AlertKind, n: u64) {
        match kind {
            AlertKind::Oversold => self.oversold += n,
            AlertKind::SoldOut => self.sold_out += n,
            AlertKind::SellOutImminent => self.sell_out_imminent += n,
            AlertKind::LowStock => self.low_stock += n,
        }
    }
}

/// Adds `n` to `into`, or with `sign` −1 takes it away (never below zero).
pub(crate) fn add_signed(into: &mut u64, n: u64, sign: i8) {
    *into = if sign < 0 {
        into.saturating_sub(n)
    } else {
        *into + n
    };
}

impl ListCounts {
    /// Adds (or with `sign` −1 takes away) another view's counts: the rollup's are the
    /// sums of its stores'.
    pub fn add(&mut self, other: &ListCounts, sign: i8) {
        let apply = |into: &mut u64, n: u64| add_signed(into, n, sign);
        apply(&mut self.skus, other.skus);
        apply(&mut self.low_stock, other.low_stock);
        apply(&mut self.oversold, other.oversold);
        apply(&mut self.alerts.oversold, other.alerts.oversold);
        apply(&mut self.alerts.sold_out, other.alerts.sold_out);
        apply(
            &mut self.alerts.sell_out_imminent,
            other.alerts.sell_out_imminent,
        );
        apply(&mut self.alerts.low_stock, other.alerts.low_stock);
    }
}

/// The bounded SKU lists of a view: each the first `aggregate.list_limit` of its whole
/// list (top products: 10), in its documented order; [`ListCounts`] says how long the
/// whole lists are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SkuLists {
    /// SKUs at or above zero that are under their threshold or raise an alert, most
    /// urgent first.
    pub low_stock: Vec<LowStockView>,
    /// SKUs below zero, most oversold first.
    pub oversold: Vec<StockView>,
    /// The 10 SKUs with most units ordered in the last 15 minutes.
    pub top_products: Vec<TopProduct>,
    /// Active alerts, one per SKU, most urgent kind first.
    pub alerts: Vec<AlertView>,
}

/// The rank of `low_stock`: most urgent alert first (none last), then soonest sell-out
/// (none last), lowest level, then store and SKU.
pub fn low_stock_order(a: &LowStockView, b: &LowStockView) -> std::cmp::Ordering {
    let key = |l: &LowStockView| {
        (
            l.alert.map_or(u8::MAX, |k| k as u8),
            l.minutes_to_sell_out.unwrap_or(i64::MAX),
            l.level,
        )
    };
    key(a)
        .cmp(&key(b))
        .then_with(|| (&a.store_id, &a.sku).cmp(&(&b.store_id, &b.sku)))
}

/// The rank of `oversold`: most oversold first, then store and SKU.
pub fn oversold_order(a: &StockView, b: &StockView) -> std::cmp::Ordering {
    a.level
        .cmp(&b.level)
        .then_with(|| (&a.store_id, &a.sku).cmp(&(&b.store_id, &b.sku)))
}

/// The rank of `top_products`: most units first, then store and SKU.
pub fn top_order(a: &TopProduct, b: &TopProduct) -> std::cmp::Ordering {
    b.units
        .cmp(&a.units)
        .then_with(|| (&a.store_id, &a.sku).cmp(&(&b.store_id, &b.sku)))
}

/// The rank of `alerts`: kind, then id.
pub fn alert_order(a: &AlertView, b: &AlertView) -> std::cmp::Ordering {
    (a.kind, &a.id).cmp(&(b.kind, &b.id))
}

/// How many top products a view lists.
pub const TOP_PRODUCTS: usize = 10;

/// One SKU's level in a page of `GET /api/stock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StockItem {
    /// SKU id.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Level; negative is oversold.
    pub level: i64,
}

/// One page of the stores seen, by id in byte order (`GET /api/stores`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StorePage {
    /// Encoded position of the page.
    pub position: String,
    /// Stores seen (every page).
    pub store_count: usize,
    /// At most the page's limit, ids after `after`.
    pub items: Vec<String>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<String>,
}

impl StorePage {
    /// The page of `stores` (by id, byte order) after `after`, at most `limit` ids, at
    /// `position` (encoded).
    pub fn of<V>(
        stores: &BTreeMap<StoreId, V>,
        position: String,
        after: Option<&str>,
        limit: usize,
    ) -> StorePage {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut items: Vec<String> = stores
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(id, _)| id.to_string())
            .collect();
        let next = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().cloned().unwrap_or_default()
        });
        StorePage {
            position,
            store_count: stores.len(),
            items,
            next,
        }
    }
}

/// One page of a store's stock levels, by SKU in byte order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StockPage {
    /// Encoded position of the levels.
    pub position: String,
    /// Newest event time applied, RFC 3339.
    pub as_of: Option<String>,
    /// The store.
    pub store_id: String,
    /// SKUs stocked in the store (every page).
    pub skus: u64,
    /// At most the page's limit, SKUs after `after`.
    pub items: Vec<StockItem>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// The all-stores scope's snapshot (`/api/snapshot` without `store`, and the opening of an
/// all-stores stream): the rollup, how many stores it sums, and the time zone rule that
/// places each store's times. Bounded whatever the number of stores: a store's own view is
/// its own scope's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RollupSnapshot {
    /// Encoded position (the same form as SSE event ids).
    pub position: String,
    /// Newest event time applied, RFC 3339 (`null` before any event).
    pub as_of: Option<String>,
    /// The same, epoch milliseconds (0 before any event).
    pub as_of_ms: i64,
    /// Stores the rollup sums (every store seen).
    pub store_count: usize,
    /// The configured time zone of each store listed in `aggregate.time_zones`.
    pub time_zones: BTreeMap<String, String>,
    /// The time zone of every other store.
    pub default_time_zone: String,
    /// All stores rolled up.
    pub all_stores: StoreView,
}

impl RollupSnapshot {
    /// The configuration's time zone rule, as the snapshot names it.
    pub fn time_zones_of(config: &AggregateConfig) -> (BTreeMap<String, String>, String) {
        (
            config
                .time_zones
                .iter()
                .map(|(id, tz)| (id.clone(), tz.name().to_owned()))
                .collect(),
            config.default_time_zone.name().to_owned(),
        )
    }
}

/// A whole snapshot: the position it reflects and the views.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Encoded position (the same form as SSE event ids).
    pub position: String,
    /// Newest event time applied, RFC 3339 (`null` before any event).
    pub as_of: Option<String>,
    /// The same, epoch milliseconds (0 before any event).
    pub as_of_ms: i64,
    /// Per store, by store id.
    pub stores: BTreeMap<String, StoreView>,
    /// All stores rolled up; absent in a single-store snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_stores: Option<StoreView>,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn money(amounts: &Amounts) -> Vec<Money> {
    amounts
        .iter()
        .map(|(currency, minor)| Money {
            currency: currency.clone(),
            minor: *minor,
        })
        .collect()
}

/// Gross revenue per currency / orders in it, rounded down to a minor unit.
pub(crate) fn average_order_value(
    gross: &Amounts,
    orders_by_currency: &BTreeMap<String, u64>,
) -> Vec<Money> {
    gross
        .iter()
        .filter_map(|(currency, gross)| {
            let orders = *orders_by_currency.get(currency)?;
            (orders > 0).then(|| Money {
                currency: currency.clone(),
                minor: gross.div_euclid(i128::from(orders)),
            })
        })
        .collect()
}

/// A [`MinuteView`] as serialised (without its index, which is its `minute`).
#[derive(Deserialize)]
struct MinuteFields {
    minute: String,
    orders: u64,
    revenue: Vec<Money>,
}

impl From<MinuteFields> for MinuteView {
    fn from(fields: MinuteFields) -> MinuteView {
        let ms = chrono::DateTime::parse_from_rfc3339(&fields.minute)
            .map_or(0, |t| t.timestamp_millis());
        MinuteView {
            minute: fields.minute,
            index: ms.div_euclid(60_000),
            orders: fields.orders,
            revenue: fields.revenue,
        }
    }
}

impl MinuteView {
    /// The minute `index` (since the epoch) with its orders and revenue.
    pub(crate) fn new(index: i64, orders: u64, revenue: &Amounts) -> MinuteView {
        MinuteView {
            minute: rfc3339(index * 60_000),
            index,
            orders,
            revenue: money(revenue),
        }
    }
}

fn add_amounts(into: &mut Amounts, from: &Amounts) {
    for (currency, minor) in from {
        *into.entry(currency.clone()).or_default() += minor;
    }
}

/// Accumulates one or more stores into a view.
#[derive(Default)]
struct Rollup {
    orders: u64,
    orders_by_currency: BTreeMap<String, u64>,
    gross: Amounts,
    net: Amounts,
    cancelled: u64,
    visitors_today: HyperLogLog,
    /// Visitors per minute, over the stores added (their active windows).
    active: BTreeMap<i64, HyperLogLog>,
    minutes: BTreeMap<i64, (u64, Amounts)>,
    newest_minute: i64,
    orders_list: Vec<(i64, String, OrderView)>,
    skus: u64,
    low_stock: Vec<LowStockView>,
    oversold: Vec<StockView>,
    top: Vec<TopProduct>,
    alerts: Vec<AlertView>,
    /// Look at every stocked SKU, not only the listable ones (the tests' reference).
    scan_every_sku: bool,
}

impl Rollup {
    /// Adds one store's aggregates.
    fn add(&mut self, store_id: &StoreId, store: &StoreState, state: &State) {
        let config = state.config();
        self.add_day(store, store.today(config.time_zone(store_id)));
        self.add_minutes(store);
        self.add_orders(store_id, store);
        self.skus += store.stock.len() as u64;
        // Only the SKUs a list can hold: a catalog of well-stocked SKUs that are not
        // selling costs nothing here.
        if self.scan_every_sku {
            for (sku, entry) in &store.stock {
                self.add_sku(store_id, store, sku, entry, config);
            }
        } else {
            for sku in store.listable_skus() {
                if let Some(entry) = store.stock.get(sku) {
                    self.add_sku(store_id, store, sku, entry, config);
                }
            }
        }
        self.add_sales(store_id, store);
    }

    /// Today's counters and visitors, and the visitors of the active window.
    fn add_day(&mut self, store: &StoreState, today: i32) {
        if let Some(day) = store.days.get(&today) {
            self.orders += day.orders;
            for (currency, n) in &day.orders_by_currency {
                *self.orders_by_currency.entry(currency.clone()).or_default() += n;
            }
            add_amounts(&mut self.gross, &day.gross_revenue);
            add_amounts(&mut self.net, &day.net_revenue);
            self.cancelled += day.cancelled;
            self.visitors_today.merge(&day.visitors);
        }
        let newest_minute = store.newest_minute();
        for (minute, sketch) in &store.active {
            if *minute > newest_minute - ACTIVE_WINDOW_MINUTES {
                self.active.entry(*minute).or_default().merge(sketch);
            }
        }
    }

    /// The per-minute buckets, summed by minute.
    fn add_minutes(&mut self, store: &StoreState) {
        self.newest_minute = self.newest_minute.max(store.newest_minute());
        for (minute, totals) in &store.minutes {
            let entry = self.minutes.entry(*minute).or_default();
            entry.0 += totals.orders;
            add_amounts(&mut entry.1, &totals.revenue);
        }
    }

    /// The store's recent orders, with their rank key (newest first, then event id).
    fn add_orders(&mut self, store_id: &StoreId, store: &StoreState) {
        for order in &store.recent_orders {
            let view = OrderView {
                store_id: store_id.to_string(),
                order_id: order.order_id.to_string(),
                event_id: order.event_id.clone(),
                customer_name: order.customer_name.clone(),
                total: Money {
                    currency: order.currency.clone(),
                    minor: i128::from(order.total_minor),
                },
                items: order.items,
                channel: order.channel,
                occurred_at: rfc3339(order.occurred_at),
                cancelled: order.cancelled,
            };
            self.orders_list
                .push((order.occurred_at, order.event_id.clone(), view));
        }
    }

    /// One SKU: the lists and alerts the rules put it in. Strings are made only for what
    /// is listed.
    fn add_sku(
        &mut self,
        store_id: &StoreId,
        store: &StoreState,
        sku: &Sku,
        entry: &StockEntry,
        config: &AggregateConfig,
    ) {
        let threshold = config.threshold(sku);
        let sold = store.sales.get(sku).map_or(0, |s| s.units());
        let sell_out = rules::minutes_to_sell_out(entry.level, sold);
        let raised = rules::alert(entry, sold, config.sell_out_rule());
        let kind = raised.map(|r| r.kind);
        let status = rules::stock_status(entry.level, threshold);
        let stock = || StockView {
            store_id: store_id.to_string(),
            sku: sku.to_string(),
            name: entry.name.clone(),
            level: entry.level,
        };
        if status == StockStatus::Oversold {
            self.oversold.push(stock());
        } else if status == StockStatus::Low || kind.is_some() {
            self.low_stock.push(LowStockView {
                store_id: store_id.to_string(),
                sku: sku.to_string(),
                name: entry.name.clone(),
                level: entry.level,
                threshold,
                sold_last_15m: sold,
                minutes_to_sell_out: sell_out,
                projected_sell_out_at: sell_out
                    .map(|m| rfc3339(rules::projected_sell_out_at(store.newest_event_time, m))),
                alert: kind,
            });
        }
        if let Some(raised) = raised {
            self.alerts.push(AlertView {
                id: raised.id(store_id.as_str(), sku.as_str()),
                kind: raised.kind,
                store_id: store_id.to_string(),
                sku: sku.to_string(),
                name: entry.name.clone(),
                level: entry.level,
                since: rfc3339(raised.since.at),
            });
        }
    }

    /// Units sold per SKU in the sales window (top products).
    fn add_sales(&mut self, store_id: &StoreId, store: &StoreState) {
        for (sku, sales) in &store.sales {
            self.top.push(TopProduct {
                store_id: store_id.to_string(),
                sku: sku.to_string(),
                name: store
                    .stock
                    .get(sku)
                    .map_or_else(|| sales.name.clone(), |s| s.name.clone()),
                units: sales.units(),
            });
        }
    }

    fn finish(mut self, day: Option<String>, time_zone: Option<String>, limit: usize) -> StoreView {
        let from = self.newest_minute - MINUTES_KEPT + 1;
        let per_minute = self
            .minutes
            .range(from..)
            .map(|(minute, (orders, revenue))| MinuteView::new(*minute, *orders, revenue))
            .collect();
        self.orders_list
            .sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        self.orders_list.truncate(super::store::RECENT_ORDERS);
        let mut counts = ListCounts {
            skus: self.skus,
            low_stock: self.low_stock.len() as u64,
            oversold: self.oversold.len() as u64,
            alerts: AlertCounts::default(),
        };
        for alert in &self.alerts {
            counts.alerts.add(alert.kind, 1);
        }
        first_in_order(&mut self.low_stock, limit, low_stock_order);
        first_in_order(&mut self.oversold, limit, oversold_order);
        first_in_order(&mut self.top, TOP_PRODUCTS, top_order);
        first_in_order(&mut self.alerts, limit, alert_order);
        let average_order_value = average_order_value(&self.gross, &self.orders_by_currency);
        StoreView {
            counters: DayCounters {
                day,
                time_zone,
                orders_today: self.orders,
                revenue_today: money(&self.net),
                cancelled_today: self.cancelled,
                average_order_value,
                active_users: ActiveUsers {
                    last_5_minutes: active_now(&self.active, self.newest_minute).estimate(),
                    today: self.visitors_today.estimate(),
                    standard_error: hll::STANDARD_ERROR,
                },
                per_minute_from: rfc3339(from * 60_000),
                counts,
            },
            per_minute,
            recent_orders: self.orders_list.into_iter().map(|(_, _, o)| o).collect(),
            lists: SkuLists {
                low_stock: self.low_stock,
                oversold: self.oversold,
                top_products: self.top,
                alerts: self.alerts,
            },
        }
    }
}

/// The visitors of the 5 minutes ending at `newest_minute`, from visitors per minute.
pub(crate) fn active_now(active: &BTreeMap<i64, HyperLogLog>, newest_minute: i64) -> HyperLogLog {
    let mut now = HyperLogLog::default();
    for sketch in active
        .range(newest_minute - ACTIVE_WINDOW_MINUTES + 1..)
        .map(|(_, s)| s)
    {
        now.merge(sketch);
    }
    now
}

/// Keeps the first `n` of `list` in `order`: a selection, then a sort of those `n` only,
/// so a list of a million candidates costs linear time, not a sort of a million.
fn first_in_order<T>(list: &mut Vec<T>, n: usize, order: fn(&T, &T) -> std::cmp::Ordering) {
    if list.len() > n && n > 0 {
        list.select_nth_unstable_by(n - 1, order);
    }
    list.truncate(n);
    list.sort_by(order);
}

fn day_string(day: i32) -> String {
    (NaiveDate::default() + chrono::Days::new(u64::try_from(day).unwrap_or(0))).to_string()
}

impl State {
    /// The view of one store, if it has been seen.
    pub fn store_view(&self, store_id: &StoreId) -> Option<StoreView> {
        self.store_view_scanning(store_id, false)
    }

    /// The view of one store computed from every stocked SKU (the reference the listable
    /// SKUs are tested against).
    #[cfg(test)]
    pub(crate) fn store_view_of_every_sku(&self, store_id: &StoreId) -> Option<StoreView> {
        self.store_view_scanning(store_id, true)
    }

    fn store_view_scanning(&self, store_id: &StoreId, every_sku: bool) -> Option<StoreView> {
        let store = self.stores().get(store_id)?;
        let tz = self.config().time_zone(store_id);
        let mut rollup = Rollup {
            scan_every_sku: every_sku,
            ..Rollup::default()
        };
        rollup.add(store_id, store, self);
        Some(rollup.finish(
            Some(day_string(local_day(tz, store.newest_event_time))),
            Some(tz.name().to_owned()),
            self.config().list_limit,
        ))
    }

    /// All stores rolled up by one scan of every store: the reference that
    /// [`super::Views`] maintains incrementally (and the tests compare it with).
    pub fn all_stores_view(&self) -> StoreView {
        let mut rollup = Rollup::default();
        for (id, store) in self.stores() {
            rollup.add(id, store, self);
        }
        rollup.finish(None, None, self.config().list_limit)
    }

    /// Up to `limit` stock levels of a store, of the SKUs after `after` in byte order
    /// (`None` if the store is unknown). Costs the page, not the catalog.
    pub fn stock_page(
        &self,
        layout: &Layout,
        store_id: &StoreId,
        after: Option<&str>,
        limit: usize,
    ) -> Option<StockPage> {
        use std::ops::Bound;
        let store = self.stores().get(store_id)?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut items: Vec<StockItem> = store
            .stock
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(sku, entry)| StockItem {
                sku: sku.to_string(),
                name: entry.name.clone(),
                level: entry.level,
            })
            .collect();
        let next = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(|i| i.sku.clone()).unwrap_or_default()
        });
        let newest = self.newest_event_time();
        Some(StockPage {
            position: layout.encode(self.position()),
            as_of: (newest > 0).then(|| rfc3339(newest)),
            store_id: store_id.to_string(),
            skus: store.stock.len() as u64,
            items,
            next,
        })
    }

    /// A page of the stores seen: the ids after `after` (from the first without it), at most
    /// `limit`. Costs the page, whatever the number of stores.
    pub fn store_page(&self, layout: &Layout, after: Option<&str>, limit: usize) -> StorePage {
        StorePage::of(self.stores(), layout.encode(self.position()), after, limit)
    }

    /// The all-stores scope's snapshot, by one scan (the reference the kept views are
    /// checked against).
    pub fn rollup_snapshot(&self, layout: &Layout) -> RollupSnapshot {
        let (time_zones, default_time_zone) = RollupSnapshot::time_zones_of(self.config());
        let newest = self.newest_event_time();
        RollupSnapshot {
            position: layout.encode(self.position()),
            as_of: (newest > 0).then(|| rfc3339(newest)),
            as_of_ms: newest,
            store_count: self.stores().len(),
            time_zones,
            default_time_zone,
            all_stores: self.all_stores_view(),
        }
    }

    /// A snapshot of every store and the rollup (the form `storepulse replay` writes), or
    /// of one store (`None` if unknown).
    pub fn snapshot(&self, layout: &Layout, store: Option<&StoreId>) -> Option<Snapshot> {
        let (stores, all_stores) = match store {
            Some(id) => {
                let view = self.store_view(id)?;
                (BTreeMap::from([(id.to_string(), view)]), None)
            }
            None => (
                self.stores()
                    .keys()
                    .filter_map(|id| Some((id.to_string(), self.store_view(id)?)))
                    .collect(),
                Some(self.all_stores_view()),
            ),
        };
        let newest = self.newest_event_time();
        Some(Snapshot {
            position: layout.encode(self.position()),
            as_of: (newest > 0).then(|| rfc3339(newest)),
            as_of_ms: newest,
            stores,
            all_stores,
        })
    }
}
