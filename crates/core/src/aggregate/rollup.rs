//! The all-stores rollup as a combination of parts. A [`Part`] is what a set of stores
//! (every store of one process, or one slice of a cluster) contributes to the rollup: its
//! sums, its sketches and the first items of its bounded lists. [`rollup_of`] combines any
//! number of parts into the rollup's view, and is the one place the rollup's numbers are
//! computed: [`super::Views`] keeps the part of the stores it holds and rolls it up alone;
//! an edge of a cluster rolls up the part of every slice (ADR 0007, decision 10).
//!
//! Why combining is exact: sums add; a keyed sum holds a key while any store holds it; a
//! HyperLogLog union is exact and idempotent; each part's per-minute and active windows
//! end at its own newest minute, which is at most the combined one, so they hold every
//! minute the combined windows need; and every one of the combined first `n` items of a
//! list is among its own part's first `n` (lists are ordered by a key, ties by store id,
//! and a store lives in one part).
//!
//! Pure: no I/O, no clock.

use super::HyperLogLog;
use super::hll;
use super::store::{ACTIVE_WINDOW_MINUTES, Amounts, MINUTES_KEPT};
use super::view::{
    self, AlertView, DayCounters, ListCounts, LowStockView, MinuteView, OrderView, SkuLists,
    StockView, StoreView, TopProduct, rfc3339,
};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// What a set of stores contributes to the all-stores rollup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Orders today (each store's own today).
    pub orders: u64,
    /// Of them, per currency (a currency is present while a store has it).
    pub orders_by_currency: BTreeMap<String, u64>,
    /// Gross revenue today per currency.
    pub gross: Amounts,
    /// Net revenue today per currency.
    pub net: Amounts,
    /// Cancellations today.
    pub cancelled: u64,
    /// Orders and revenue per minute (index since the epoch), the minutes of the window
    /// ending at `newest_minute` only.
    pub minutes: BTreeMap<i64, (u64, Amounts)>,
    /// The whole lengths of the stores' lists, summed.
    pub counts: ListCounts,
    /// The newest minute of any of the stores' events (0 before any).
    pub newest_minute: i64,
    /// The union of the stores' sketches of today's visitors.
    pub visitors_today: HyperLogLog,
    /// The union of the stores' sketches of active users per minute, the minutes of the
    /// active window ending at `newest_minute` only.
    pub active: BTreeMap<i64, HyperLogLog>,
    /// The first items of each list over these stores, in each list's order: as many as
    /// the combined rollup shows (`aggregate.list_limit`; top products: 10; recent orders:
    /// 20).
    pub lists: SkuLists,
    /// The newest orders over these stores.
    pub recent_orders: Vec<OrderView>,
}

/// Keys of the rank of each list; with the store id as the last tie-break they are a total
/// order (the order a stable sort of the stores' lists concatenated by store id gives).
pub(super) type LowKey = (u8, i64, i64, String, String);
pub(super) type OversoldKey = (i64, String, String);
pub(super) type TopKey = (Reverse<i64>, String, String);
pub(super) type AlertKey = (view::AlertKind, String);
pub(super) type OrderKey = (Reverse<String>, String);

pub(super) fn low_key(l: &LowStockView) -> LowKey {
    (
        l.alert.map_or(u8::MAX, |k| k as u8),
        l.minutes_to_sell_out.unwrap_or(i64::MAX),
        l.level,
        l.store_id.clone(),
        l.sku.clone(),
    )
}
pub(super) fn oversold_key(s: &StockView) -> OversoldKey {
    (s.level, s.store_id.clone(), s.sku.clone())
}
pub(super) fn top_key(t: &TopProduct) -> TopKey {
    (Reverse(t.units), t.store_id.clone(), t.sku.clone())
}
pub(super) fn alert_key(a: &AlertView) -> AlertKey {
    (a.kind, a.id.clone())
}
pub(super) fn order_key(o: &OrderView) -> OrderKey {
    (Reverse(o.occurred_at.clone()), o.event_id.clone())
}

/// The first `n` items of the parts' lists, merged in `(key, store id)` order; a store's
/// own items keep their order.
fn merged<'a, T: Clone + 'a, K: Ord>(
    lists: impl Iterator<Item = &'a [T]>,
    n: usize,
    key: fn(&T) -> K,
    store: fn(&T) -> &str,
) -> Vec<T> {
    let mut all: Vec<(K, &str, usize, usize, &T)> = lists
        .enumerate()
        .flat_map(|(part, list)| {
            list.iter()
                .enumerate()
                .map(move |(i, item)| (key(item), store(item), part, i, item))
        })
        .collect();
    all.sort_by(|a, b| (&a.0, a.1, a.2, a.3).cmp(&(&b.0, b.1, b.2, b.3)));
    all.into_iter()
        .take(n)
        .map(|(_, _, _, _, item)| item.clone())
        .collect()
}

fn add_amounts(into: &mut Amounts, from: &Amounts) {
    for (currency, minor) in from {
        *into.entry(currency.clone()).or_default() += minor;
    }
}

/// The all-stores view of `parts` combined, with lists of `list_limit` items (top
/// products: [`view::TOP_PRODUCTS`]; recent orders: [`super::RECENT_ORDERS`]).
pub fn rollup_of(parts: &[&Part], list_limit: usize) -> StoreView {
    let newest_minute = parts.iter().map(|p| p.newest_minute).max().unwrap_or(0);
    let from = newest_minute - MINUTES_KEPT + 1;
    let first_active = newest_minute - ACTIVE_WINDOW_MINUTES + 1;
    let mut orders = 0;
    let mut cancelled = 0;
    let mut orders_by_currency: BTreeMap<String, u64> = BTreeMap::new();
    let mut gross = Amounts::new();
    let mut net = Amounts::new();
    let mut minutes: BTreeMap<i64, (u64, Amounts)> = BTreeMap::new();
    let mut counts = ListCounts::default();
    let mut visitors_today = HyperLogLog::default();
    let mut active: BTreeMap<i64, HyperLogLog> = BTreeMap::new();
    for part in parts {
        orders += part.orders;
        cancelled += part.cancelled;
        for (currency, n) in &part.orders_by_currency {
            *orders_by_currency.entry(currency.clone()).or_default() += n;
        }
        add_amounts(&mut gross, &part.gross);
        add_amounts(&mut net, &part.net);
        for (minute, (n, revenue)) in part.minutes.range(from..) {
            let sum = minutes.entry(*minute).or_default();
            sum.0 += n;
            add_amounts(&mut sum.1, revenue);
        }
        counts.add(&part.counts, 1);
        visitors_today.merge(&part.visitors_today);
        for (minute, sketch) in part.active.range(first_active..) {
            active.entry(*minute).or_default().merge(sketch);
        }
    }
    let lists = |of: fn(&Part) -> &SkuLists| parts.iter().map(move |p| of(p));
    StoreView {
        counters: DayCounters {
            day: None,
            time_zone: None,
            orders_today: orders,
            revenue_today: view::money(&net),
            cancelled_today: cancelled,
            average_order_value: view::average_order_value(&gross, &orders_by_currency),
            active_users: view::ActiveUsers {
                last_5_minutes: view::active_now(&active, newest_minute).estimate(),
                today: visitors_today.estimate(),
                standard_error: hll::STANDARD_ERROR,
            },
            per_minute_from: rfc3339(from * 60_000),
            counts,
        },
        per_minute: minutes
            .iter()
            .map(|(minute, (n, revenue))| MinuteView::new(*minute, *n, revenue))
            .collect(),
        recent_orders: merged(
            parts.iter().map(|p| p.recent_orders.as_slice()),
            super::RECENT_ORDERS,
            order_key,
            |o| &o.store_id,
        ),
        lists: SkuLists {
            low_stock: merged(
                lists(|p| &p.lists).map(|l| l.low_stock.as_slice()),
                list_limit,
                low_key,
                |l| &l.store_id,
            ),
            oversold: merged(
                lists(|p| &p.lists).map(|l| l.oversold.as_slice()),
                list_limit,
                oversold_key,
                |s| &s.store_id,
            ),
            top_products: merged(
                lists(|p| &p.lists).map(|l| l.top_products.as_slice()),
                view::TOP_PRODUCTS,
                top_key,
                |t| &t.store_id,
            ),
            alerts: merged(
                lists(|p| &p.lists).map(|l| l.alerts.as_slice()),
                list_limit,
                alert_key,
                |a| &a.store_id,
            ),
        },
    }
}
