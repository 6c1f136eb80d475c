//! Aggregate tests: business rules on hand-made events, and the determinism properties on
//! simulated streams.

use super::*;
use crate::events::samples::{self, SAMPLE_TIME};
use crate::events::{
    Channel, OrderCancelled, OrderLine, OrderPlaced, SessionSeen, StockChangeReason, StockChanged,
    TopicRole,
};
use crate::scenario::{FlashSale, Scenario, ScenarioConfig};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const MINUTE: i64 = 60_000;

fn layout() -> Layout {
    Layout::new(vec![
        (TopicRole::Orders, "orders".into(), 3),
        (TopicRole::Inventory, "inventory".into(), 3),
        (TopicRole::Activity, "activity".into(), 2),
    ])
}

fn config() -> Arc<AggregateConfig> {
    let mut c = AggregateConfig::default();
    c.time_zones
        .insert("store-tokyo".into(), chrono_tz::Asia::Tokyo);
    c.low_stock_overrides.insert("BER-0042".into(), 3);
    Arc::new(c)
}

/// Feeds events with consecutive offsets on one partition per role.
struct Feed {
    state: State,
    changes: Changes,
    next: BTreeMap<TopicRole, i64>,
}

impl Feed {
    fn new() -> Self {
        Feed {
            state: State::new(config()),
            changes: Changes::default(),
            next: BTreeMap::new(),
        }
    }

    fn apply(&mut self, event: Event) -> Outcome {
        let role = event.kind().topic_role();
        let offset = self.next.entry(role).or_insert(0);
        let at = RecordRef {
            partition: PartitionKey { role, partition: 0 },
            offset: *offset,
        };
        *offset += 1;
        self.state.apply(&event, at, &mut self.changes)
    }

    fn view(&self, store: &str) -> view::StoreView {
        self.state
            .store_view(&store.into())
            .expect("store is known")
    }
}

fn order(id: &str, store: &str, at: i64, total: i64, currency: &str) -> Event {
    let mut o: OrderPlaced = samples::order_placed();
    o.event_id = format!("ev-{id}");
    o.order_id = id.into();
    o.store_id = store.into();
    o.occurred_at = at;
    o.total_minor = total;
    o.currency = currency.into();
    o.lines = vec![OrderLine {
        sku: "BER-0001".into(),
        name: "Merino Hoodie".into(),
        quantity: 2,
        unit_price_minor: total / 2,
    }];
    Event::OrderPlaced(o)
}

fn cancel(id: &str, store: &str, at: i64, placed_at: i64, total: i64) -> Event {
    Event::OrderCancelled(OrderCancelled {
        event_id: format!("cancel-{id}"),
        store_id: store.into(),
        occurred_at: at,
        order_id: id.into(),
        order_placed_at: placed_at,
        total_minor: total,
        currency: "EUR".into(),
        reason: "customer request".into(),
    })
}

fn stock(id: &str, sku: &str, at: i64, level: i64, delta: i64) -> Event {
    Event::StockChanged(StockChanged {
        event_id: id.into(),
        store_id: "store-berlin".into(),
        occurred_at: at,
        sku: sku.into(),
        name: format!("Product {sku}"),
        new_level: level,
        delta,
        reason: StockChangeReason::Sale,
    })
}

fn session(id: &str, at: i64, user: Option<&str>) -> Event {
    Event::SessionSeen(SessionSeen {
        event_id: format!("s-{id}-{at}"),
        store_id: "store-berlin".into(),
        occurred_at: at,
        session_id: id.into(),
        user_id: user.map(str::to_owned),
    })
}

#[test]
fn orders_revenue_cancellations_and_average_order_value_count_today() {
    let mut feed = Feed::new();
    feed.apply(order("o1", "store-berlin", SAMPLE_TIME, 10_000, "EUR"));
    feed.apply(order(
        "o2",
        "store-berlin",
        SAMPLE_TIME + MINUTE,
        5_001,
        "EUR",
    ));
    feed.apply(order(
        "o3",
        "store-berlin",
        SAMPLE_TIME + 2 * MINUTE,
        700,
        "USD",
    ));
    feed.apply(cancel(
        "o1",
        "store-berlin",
        SAMPLE_TIME + 3 * MINUTE,
        SAMPLE_TIME,
        10_000,
    ));
    let v = feed.view("store-berlin");
    assert_eq!(v.counters.day.as_deref(), Some("2026-11-27"));
    assert_eq!(v.counters.orders_today, 3);
    assert_eq!(v.counters.cancelled_today, 1);
    let amount =
        |list: &[view::Money], c: &str| list.iter().find(|m| m.currency == c).map(|m| m.minor);
    assert_eq!(
        amount(&v.counters.revenue_today, "EUR"),
        Some(5_001),
        "net of the cancellation"
    );
    assert_eq!(amount(&v.counters.revenue_today, "USD"), Some(700));
    assert_eq!(
        amount(&v.counters.average_order_value, "EUR"),
        Some(7_500),
        "gross / orders, floored"
    );
    assert_eq!(v.recent_orders[0].order_id, "o3");
    assert!(
        v.recent_orders
            .iter()
            .find(|o| o.order_id == "o1")
            .expect("listed")
            .cancelled
    );
}

/// Revenue, orders and cancellations of store-berlin today, and o1's `cancelled` flag if
/// it is listed.
fn day_numbers(state: &State) -> (u64, Option<i128>, u64, Option<bool>) {
    let Some(v) = state.store_view(&"store-berlin".into()) else {
        return (0, None, 0, None);
    };
    let eur = v
        .counters
        .revenue_today
        .iter()
        .find(|m| m.currency == "EUR")
        .map(|m| m.minor);
    let listed = v
        .recent_orders
        .iter()
        .find(|o| o.order_id == "o1")
        .map(|o| o.cancelled);
    (
        v.counters.orders_today,
        eur,
        v.counters.cancelled_today,
        listed,
    )
}

#[test]
fn a_cancellation_re_emitted_or_of_an_order_never_seen_subtracts_once_or_not_at_all() {
    let mut feed = Feed::new();
    feed.apply(order("o1", "store-berlin", SAMPLE_TIME, 10_000, "EUR"));
    feed.apply(order("o2", "store-berlin", SAMPLE_TIME, 3_000, "EUR"));
    for n in 0..3 {
        // Upstream re-emits the cancellation under new event ids.
        let mut c = cancel(
            "o1",
            "store-berlin",
            SAMPLE_TIME + MINUTE,
            SAMPLE_TIME,
            10_000,
        );
        if let Event::OrderCancelled(c) = &mut c {
            c.event_id = format!("cancel-o1-{n}");
        }
        let outcome = feed.apply(c);
        let expected = if n == 0 {
            Applied::Applied
        } else {
            Applied::Repeated
        };
        assert_eq!(outcome.applied, expected);
    }
    // An order never seen: counted as a cancelled order of its day, subtracts nothing.
    feed.apply(cancel(
        "ghost",
        "store-berlin",
        SAMPLE_TIME + MINUTE,
        SAMPLE_TIME,
        99_999,
    ));
    // The same order placed again under a new event id counts once.
    let mut again = order("o2", "store-berlin", SAMPLE_TIME, 3_000, "EUR");
    if let Event::OrderPlaced(o) = &mut again {
        o.event_id = "ev-o2-again".into();
    }
    assert_eq!(feed.apply(again).applied, Applied::Repeated);
    assert_eq!(day_numbers(&feed.state), (2, Some(3_000), 2, Some(true)));
}

#[test]
fn a_cancellation_before_its_late_order_agrees_with_the_order_when_it_comes() {
    let mut feed = Feed::new();
    feed.apply(order("o0", "store-berlin", SAMPLE_TIME, 500, "EUR"));
    feed.apply(cancel(
        "o1",
        "store-berlin",
        SAMPLE_TIME + MINUTE,
        SAMPLE_TIME,
        10_000,
    ));
    assert_eq!(day_numbers(&feed.state), (1, Some(500), 1, None));
    feed.apply(order("o1", "store-berlin", SAMPLE_TIME, 10_000, "EUR"));
    assert_eq!(
        day_numbers(&feed.state),
        (2, Some(500), 1, Some(true)),
        "counted, and listed as cancelled, net of its own total once"
    );
}

#[test]
fn events_of_a_day_no_longer_held_change_nothing() {
    let mut feed = Feed::new();
    feed.apply(order("o1", "store-berlin", SAMPLE_TIME, 10_000, "EUR"));
    let before = serde_json::to_value(feed.view("store-berlin")).expect("json");
    let three_days = 3 * 24 * 60 * MINUTE;
    assert_eq!(
        feed.apply(order(
            "old",
            "store-berlin",
            SAMPLE_TIME - three_days,
            7,
            "EUR"
        ))
        .applied,
        Applied::Expired
    );
    assert_eq!(
        feed.apply(cancel(
            "o1",
            "store-berlin",
            SAMPLE_TIME,
            SAMPLE_TIME - three_days,
            7
        ))
        .applied,
        Applied::Expired
    );
    assert_eq!(
        feed.apply(session("old", SAMPLE_TIME - three_days, None))
            .applied,
        Applied::Expired
    );
    assert_eq!(
        serde_json::to_value(feed.view("store-berlin")).expect("json"),
        before
    );
}

/// Applies `event` if the event-time guard admits it against `record_time`.
fn admit_and_apply(feed: &mut Feed, event: Event, record_time: i64) -> bool {
    let admitted = crate::events::check_event_time(
        &event,
        Some(record_time),
        None,
        config().max_future_skew_ms,
    )
    .is_ok();
    if admitted {
        feed.apply(event);
    }
    admitted
}

#[test]
fn a_future_dated_order_is_refused_and_moves_nothing() {
    let mut feed = Feed::new();
    for i in 0..50 {
        let at = SAMPLE_TIME + i * 1_000;
        assert!(admit_and_apply(
            &mut feed,
            order(&format!("o{i}"), "store-berlin", at, 1_234, "EUR"),
            at
        ));
    }
    let before = serde_json::to_value(feed.view("store-berlin")).expect("json");
    // The 2030 order of the report, and a producer whose clock is 10 minutes fast.
    let in_2030 = 1_900_000_000_000;
    assert!(!admit_and_apply(
        &mut feed,
        order("x2030", "store-berlin", in_2030, 1_234, "EUR"),
        SAMPLE_TIME
    ));
    let fast = SAMPLE_TIME + 50_000 + 10 * MINUTE;
    assert!(!admit_and_apply(
        &mut feed,
        order("fast", "store-berlin", fast, 1, "EUR"),
        SAMPLE_TIME + 50_000
    ));
    // A cancellation claiming a future placement is held to the same bound.
    assert!(!admit_and_apply(
        &mut feed,
        cancel("o1", "store-berlin", SAMPLE_TIME, in_2030, 1_234),
        SAMPLE_TIME + 50_000
    ));
    assert_eq!(
        serde_json::to_value(feed.view("store-berlin")).expect("json"),
        before
    );
    // Within the skew (a clock 4 minutes fast) an event is applied as it is.
    let ahead = SAMPLE_TIME + 50_000 + 4 * MINUTE;
    assert!(admit_and_apply(
        &mut feed,
        order("ahead", "store-berlin", ahead, 1, "EUR"),
        SAMPLE_TIME + 50_000
    ));
    assert_eq!(feed.view("store-berlin").counters.orders_today, 51);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a single record says its time is, it changes `orders_today` by at most its
    /// own contribution (one order): it cannot move the store to another day.
    #[test]
    fn no_single_record_changes_orders_today_by_more_than_its_own_order(
        occurred_at in 1i64..4_000_000_000_000,
        placed_at in 1i64..4_000_000_000_000,
        kind in 0u8..3,
        position in 0usize..40,
    ) {
        let mut feed = Feed::new();
        for i in 0..40i64 {
            let at = SAMPLE_TIME + i * 1_000;
            if i as usize == position {
                let before = feed.state.store_view(&"store-berlin".into()).map_or(0, |v| v.counters.orders_today);
                let hostile = match kind {
                    0 => order("hostile", "store-berlin", occurred_at, 5, "EUR"),
                    1 => cancel("o0", "store-berlin", occurred_at, placed_at, 5),
                    _ => session("hostile", occurred_at, None),
                };
                let own = u64::from(kind == 0);
                admit_and_apply(&mut feed, hostile, at);
                let after = feed.state.store_view(&"store-berlin".into()).map_or(0, |v| v.counters.orders_today);
                prop_assert!(after >= before && after <= before + own, "{before} -> {after}");
            }
            admit_and_apply(&mut feed, order(&format!("o{i}"), "store-berlin", at, 1_234, "EUR"), at);
        }
        prop_assert!(feed.view("store-berlin").counters.orders_today >= 40);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any multiset of cancellations of an order (re-emitted under new event ids), in any
    /// order relative to the order within its partition, subtracts its total exactly once
    /// and agrees with the listed order.
    #[test]
    fn any_cancellations_of_an_order_in_any_order_subtract_its_total_once(
        cancellations in 0usize..5,
        order_at in 0usize..6,
        total in 1i64..100_000,
    ) {
        let mut feed = Feed::new();
        let mut events: Vec<Event> = (0..cancellations)
            .map(|n| {
                let mut c = cancel("o1", "store-berlin", SAMPLE_TIME + MINUTE, SAMPLE_TIME, total + n as i64);
                if let Event::OrderCancelled(c) = &mut c {
                    c.event_id = format!("cancel-o1-{n}");
                }
                c
            })
            .collect();
        events.insert(order_at.min(events.len()), order("o1", "store-berlin", SAMPLE_TIME, total, "EUR"));
        feed.apply(order("o0", "store-berlin", SAMPLE_TIME, 1_000, "EUR"));
        for event in events {
            feed.apply(event);
        }
        let cancelled = cancellations > 0;
        let net = i128::from(if cancelled { 1_000 } else { 1_000 + total });
        prop_assert_eq!(
            day_numbers(&feed.state),
            (2, Some(net), u64::from(cancelled), Some(cancelled))
        );
    }
}

#[test]
fn the_day_rolls_over_by_event_time_in_the_store_time_zone() {
    let mut feed = Feed::new();
    // 2026-11-27T14:59:00Z is 23:59 in Tokyo; a minute later it is the 28th there.
    let before_midnight = SAMPLE_TIME + 4 * 60 * MINUTE + 59 * MINUTE;
    feed.apply(order("t1", "store-tokyo", before_midnight, 1_500, "JPY"));
    assert_eq!(
        feed.view("store-tokyo").counters.day.as_deref(),
        Some("2026-11-27")
    );
    feed.apply(order(
        "t2",
        "store-tokyo",
        before_midnight + MINUTE,
        2_500,
        "JPY",
    ));
    let v = feed.view("store-tokyo");
    assert_eq!(v.counters.day.as_deref(), Some("2026-11-28"));
    assert_eq!(v.counters.time_zone.as_deref(), Some("Asia/Tokyo"));
    assert_eq!(v.counters.orders_today, 1);
    // A late order for the 27th still counts in the 27th, which is held, not today.
    feed.apply(order(
        "t0",
        "store-tokyo",
        before_midnight - 10 * MINUTE,
        900,
        "JPY",
    ));
    let state_day_27 = &feed.state.stores()["store-tokyo"].days;
    assert_eq!(state_day_27.values().map(|d| d.orders).sum::<u64>(), 3);
    assert_eq!(feed.view("store-tokyo").counters.orders_today, 1);
}

#[test]
fn the_per_minute_window_keeps_the_last_hour_and_ignores_older_records() {
    let mut feed = Feed::new();
    feed.apply(order("a", "store-berlin", SAMPLE_TIME, 100, "EUR"));
    feed.apply(order(
        "b",
        "store-berlin",
        SAMPLE_TIME + 59 * MINUTE,
        100,
        "EUR",
    ));
    let v = feed.view("store-berlin");
    assert_eq!(v.per_minute.len(), 2, "minutes with orders only");
    assert_eq!(
        v.counters.per_minute_from, v.per_minute[0].minute,
        "a is in the oldest kept minute"
    );
    assert_eq!(v.per_minute[1].orders, 1);
    feed.apply(order(
        "c",
        "store-berlin",
        SAMPLE_TIME + 60 * MINUTE,
        100,
        "EUR",
    ));
    feed.apply(order("d", "store-berlin", SAMPLE_TIME - MINUTE, 100, "EUR"));
    let v = feed.view("store-berlin");
    assert_eq!(
        v.per_minute.iter().map(|m| m.orders).sum::<u64>(),
        2,
        "a and d fell out"
    );
    assert_eq!(
        v.counters.orders_today, 4,
        "but all four are today's orders"
    );
}

#[test]
fn each_sku_raises_its_most_urgent_alert_once_with_a_stable_id() {
    let mut feed = Feed::new();
    feed.apply(stock("s1", "BER-0001", SAMPLE_TIME, 30, 30));
    // 30 units sold in the window: velocity 2/minute.
    for i in 0..15 {
        feed.apply(order(
            &format!("o{i}"),
            "store-berlin",
            SAMPLE_TIME + i * MINUTE,
            200,
            "EUR",
        ));
    }
    feed.apply(stock("s2", "BER-0001", SAMPLE_TIME + 14 * MINUTE, 8, -22));
    let v = feed.view("store-berlin");
    let low = &v.lists.low_stock[0];
    assert_eq!(
        (low.sku.as_str(), low.level, low.sold_last_15m),
        ("BER-0001", 8, 30)
    );
    assert_eq!(low.minutes_to_sell_out, Some(4));
    assert_eq!(low.alert, Some(view::AlertKind::SellOutImminent));
    // Low and about to sell out: one alert, the more urgent.
    let ids: Vec<&str> = v.lists.alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["sell_out_imminent:store-berlin:BER-0001:inventory-0@0"]
    );
    // Level 0: sold out, first in the low-stock list, "sells out" now.
    feed.apply(stock("s3", "BER-0001", SAMPLE_TIME + 14 * MINUTE, 0, -8));
    let v = feed.view("store-berlin");
    assert_eq!(
        v.lists.alerts[0].id,
        "sold_out:store-berlin:BER-0001:inventory-0@2"
    );
    assert_eq!(v.lists.alerts.len(), 1);
    assert_eq!(v.lists.low_stock[0].minutes_to_sell_out, Some(0));
    assert_eq!(v.lists.low_stock[0].alert, Some(view::AlertKind::SoldOut));
    // Below zero is oversold: in the oversold list, not also low.
    feed.apply(stock("s4", "BER-0001", SAMPLE_TIME + 14 * MINUTE, -3, -3));
    let v = feed.view("store-berlin");
    assert_eq!(v.lists.oversold[0].level, -3);
    assert_eq!(
        v.lists
            .alerts
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        vec!["oversold:store-berlin:BER-0001:inventory-0@3"]
    );
    assert!(v.lists.low_stock.is_empty(), "oversold is not also low");
    // Back to 2, nothing selling any more: the low-stock run that began at 8 continues
    // (through zero and below), so its id is the record that took it under 10.
    feed.apply(stock("s5", "BER-0001", SAMPLE_TIME + 40 * MINUTE, 2, 5));
    let v = feed.view("store-berlin");
    assert_eq!(
        v.lists.alerts[0].id,
        "low_stock:store-berlin:BER-0001:inventory-0@1"
    );
    // A restock clears it.
    feed.apply(stock("s6", "BER-0001", SAMPLE_TIME + 40 * MINUTE, 100, 98));
    assert!(feed.view("store-berlin").lists.alerts.is_empty());
}

#[test]
fn a_projected_sell_out_alerts_only_at_or_under_the_level_floor() {
    let mut feed = Feed::new();
    for (sku, units) in [
        ("BER-0001", 300),
        ("BER-0002", 100),
        ("BER-0003", 60),
        ("BER-0004", 1),
    ] {
        feed.apply(stock(&format!("s-{sku}"), sku, SAMPLE_TIME, 1_000, 1_000));
        let mut event = order(&format!("o-{sku}"), "store-berlin", SAMPLE_TIME, 100, "EUR");
        if let Event::OrderPlaced(o) = &mut event {
            o.lines[0].sku = sku.into();
            o.lines[0].quantity = units;
        }
        feed.apply(event);
    }
    // BER-0001: 26 left, 300 sold: 1 minute, but above the floor (25): restocked, not an
    // alert. BER-0002: 25 left, 100 sold: 3 minutes, at the floor: alert. BER-0003: 20 left,
    // 60 sold: 5 minutes: alert. BER-0004: 20 left, 1 sold: 300 minutes: no alert, not low.
    for (sku, level) in [
        ("BER-0001", 26),
        ("BER-0002", 25),
        ("BER-0003", 20),
        ("BER-0004", 20),
    ] {
        feed.apply(stock(
            &format!("t-{sku}"),
            sku,
            SAMPLE_TIME,
            level,
            level - 1_000,
        ));
    }
    let v = feed.view("store-berlin");
    let alerted: Vec<&str> = v.lists.alerts.iter().map(|a| a.sku.as_str()).collect();
    assert_eq!(alerted, vec!["BER-0002", "BER-0003"]);
    // Everything with an alert is in the low-stock list, though above the threshold.
    let low: Vec<(&str, Option<i64>)> = v
        .lists
        .low_stock
        .iter()
        .map(|l| (l.sku.as_str(), l.minutes_to_sell_out))
        .collect();
    assert_eq!(
        low,
        vec![("BER-0002", Some(3)), ("BER-0003", Some(5))],
        "soonest first"
    );
}

#[test]
fn per_sku_threshold_overrides_apply() {
    let mut feed = Feed::new();
    feed.apply(stock("s1", "BER-0042", SAMPLE_TIME, 5, 5));
    feed.apply(stock("s2", "BER-0043", SAMPLE_TIME, 5, 5));
    let v = feed.view("store-berlin");
    let low: Vec<&str> = v.lists.low_stock.iter().map(|l| l.sku.as_str()).collect();
    assert_eq!(low, vec!["BER-0043"], "BER-0042's threshold is 3");
}

#[test]
fn a_duplicate_event_id_is_applied_once_and_a_replayed_record_not_at_all() {
    let mut feed = Feed::new();
    let o = order("o1", "store-berlin", SAMPLE_TIME, 1_000, "EUR");
    assert_eq!(feed.apply(o.clone()).applied, Applied::Applied);
    assert_eq!(feed.apply(o.clone()).applied, Applied::Duplicate);
    let at = RecordRef {
        partition: PartitionKey {
            role: TopicRole::Orders,
            partition: 0,
        },
        offset: 0,
    };
    let outcome = feed.state.apply(&o, at, &mut Changes::default());
    assert_eq!(outcome.applied, Applied::AlreadyApplied);
    assert_eq!(feed.view("store-berlin").counters.orders_today, 1);
}

#[test]
fn a_duplicated_stock_change_keeps_the_original_as_the_setter() {
    let mut feed = Feed::new();
    feed.apply(stock("s1", "BER-0001", SAMPLE_TIME, 5, 5));
    assert_eq!(
        feed.apply(stock("s1", "BER-0001", SAMPLE_TIME, 5, 5))
            .applied,
        Applied::Duplicate
    );
    let v = feed.view("store-berlin");
    assert_eq!(
        v.lists.alerts[0].id,
        "low_stock:store-berlin:BER-0001:inventory-0@0"
    );
}

#[test]
fn active_users_count_signed_in_users_once_across_sessions() {
    let mut feed = Feed::new();
    feed.apply(session("sess-1", SAMPLE_TIME, Some("cust-1")));
    feed.apply(session("sess-2", SAMPLE_TIME + 1, Some("cust-1")));
    feed.apply(session("sess-3", SAMPLE_TIME + 2, None));
    feed.apply(session("sess-4", SAMPLE_TIME - 10 * MINUTE, None));
    let v = feed.view("store-berlin");
    assert_eq!(v.counters.active_users.today, 3);
    assert_eq!(v.counters.active_users.last_5_minutes, 2);
}

#[test]
fn late_records_are_reported_but_applied_like_any_other() {
    let mut feed = Feed::new();
    feed.apply(order(
        "new",
        "store-berlin",
        SAMPLE_TIME + 30 * MINUTE,
        100,
        "EUR",
    ));
    let outcome = feed.apply(order("old", "store-berlin", SAMPLE_TIME, 100, "EUR"));
    assert!(outcome.late);
    assert_eq!(outcome.applied, Applied::Applied);
    assert_eq!(feed.view("store-berlin").counters.orders_today, 2);
}

#[test]
fn changes_name_what_moved() {
    let mut feed = Feed::new();
    feed.apply(order("o1", "store-berlin", SAMPLE_TIME, 1_000, "EUR"));
    feed.apply(stock("s1", "BER-0009", SAMPLE_TIME, 50, 50));
    let changes = &feed.changes.stores["store-berlin"];
    assert!(changes.totals && changes.recent_orders);
    assert_eq!(changes.minutes.len(), 1);
    assert!(changes.skus);
}

// ---------------------------------------------------------------- properties

/// A simulated stream split into partitions by key, as Kafka would.
fn partitioned_stream(seed: u64, count: usize) -> Vec<Vec<(Event, RecordRef)>> {
    let layout = layout();
    let partitions: Vec<PartitionKey> = layout.partitions().collect();
    let mut lists: Vec<Vec<(Event, RecordRef)>> = vec![Vec::new(); partitions.len()];
    let scenario = Scenario::new(ScenarioConfig {
        popularity: Default::default(),
        seed,
        start_ms: SAMPLE_TIME,
        // Fast event time: the stream crosses minutes, windows and a day boundary.
        events_per_second: 2.0,
        stores: 3,
        skus_per_store: 6,
        flash_sale: Some(FlashSale {
            starts_after_ms: 10 * MINUTE,
            duration_ms: 30 * MINUTE,
            skus_per_store: 2,
            oversell: true,
            discount_percent: 30,
        }),
    });
    for event in scenario.take(count) {
        let role = event.kind().topic_role();
        let role_partitions: Vec<usize> = (0..partitions.len())
            .filter(|i| partitions[*i].role == role)
            .collect();
        let slot = role_partitions[(xxhash_rust::xxh3::xxh3_64(event.key().as_bytes())
            % role_partitions.len() as u64) as usize];
        let at = RecordRef {
            partition: partitions[slot],
            offset: lists[slot].len() as i64,
        };
        lists[slot].push((event, at));
    }
    lists
}

/// Applies the partitions in an interleaving chosen by `order_seed`, keeping each
/// partition's order.
fn apply_interleaved(lists: &[Vec<(Event, RecordRef)>], order_seed: u64) -> State {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(order_seed);
    let mut cursors = vec![0usize; lists.len()];
    let mut state = State::new(config());
    let mut changes = Changes::default();
    loop {
        let open: Vec<usize> = (0..lists.len())
            .filter(|i| cursors[*i] < lists[*i].len())
            .collect();
        if open.is_empty() {
            return state;
        }
        let pick = open[rng.random_range(0..open.len())];
        // Take a run of a few records from that partition, like a fetch.
        for _ in 0..rng.random_range(1..=8) {
            if let Some((event, at)) = lists[pick].get(cursors[pick]) {
                state.apply(event, *at, &mut changes);
                cursors[pick] += 1;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_interleaving_that_keeps_partition_order_gives_the_same_state(
        seed in 0u64..1_000,
        first in any::<u64>(),
        second in any::<u64>(),
    ) {
        let lists = partitioned_stream(seed, 3_000);
        let a = apply_interleaved(&lists, first);
        let b = apply_interleaved(&lists, second);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.snapshot(&layout(), None), b.snapshot(&layout(), None));
    }

    #[test]
    fn restoring_a_checkpoint_then_applying_the_tail_equals_applying_everything(
        seed in 0u64..1_000,
        cut in 0usize..3_000,
    ) {
        let lists = partitioned_stream(seed, 3_000);
        let everything = apply_interleaved(&lists, seed);
        // Apply in one fixed interleaving, checkpointing after `cut` records.
        let all: Vec<(Event, RecordRef)> = {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut cursors = vec![0usize; lists.len()];
            let mut out = Vec::new();
            while let Some(pick) = {
                let open: Vec<usize> = (0..lists.len()).filter(|i| cursors[*i] < lists[*i].len()).collect();
                (!open.is_empty()).then(|| open[rng.random_range(0..open.len())])
            } {
                out.push(lists[pick][cursors[pick]].clone());
                cursors[pick] += 1;
            }
            out
        };
        let mut state = State::new(config());
        let mut changes = Changes::default();
        for (event, at) in &all[..cut] {
            state.apply(event, *at, &mut changes);
        }
        let bytes = crate::checkpoint::encode(&state);
        let mut restored = crate::checkpoint::restore(crate::checkpoint::FORMAT_VERSION, &bytes, config())
            .expect("restores");
        prop_assert_eq!(&restored, &state);
        // After a restart the consumer resumes at the checkpoint's position; records
        // before it that arrive again are recognised as already applied.
        for (event, at) in &all {
            restored.apply(event, *at, &mut changes);
        }
        prop_assert_eq!(&restored, &everything);
    }

    #[test]
    fn redelivered_duplicates_change_no_view(seed in 0u64..1_000, every in 5usize..50) {
        let lists = partitioned_stream(seed, 2_000);
        let clean = apply_interleaved(&lists, seed);
        // The same events produced again right after themselves (a producer retry):
        // new offsets, same event ids. Orders and sessions only: a duplicate in the
        // inventory topic would shift the offsets that alert ids name (see the unit test
        // of a duplicated stock change).
        let with_duplicates: Vec<Vec<(Event, RecordRef)>> = lists
            .iter()
            .map(|list| {
                let mut out: Vec<(Event, RecordRef)> = Vec::new();
                for (i, (event, at)) in list.iter().enumerate() {
                    let inventory = at.partition.role == TopicRole::Inventory;
                    let copies = if i % every == 0 && !inventory { 2 } else { 1 };
                    for _ in 0..copies {
                        let offset = out.len() as i64;
                        out.push((event.clone(), RecordRef { offset, ..*at }));
                    }
                }
                out
            })
            .collect();
        let duplicated = apply_interleaved(&with_duplicates, seed);
        prop_assert_eq!(clean.stores(), duplicated.stores());
    }
}

#[test]
fn a_channel_survives_into_the_view() {
    let mut feed = Feed::new();
    let Event::OrderPlaced(mut o) = order("o1", "store-berlin", SAMPLE_TIME, 100, "EUR") else {
        unreachable!()
    };
    o.channel = Channel::Pos;
    feed.apply(Event::OrderPlaced(o));
    assert_eq!(
        feed.view("store-berlin").recent_orders[0].channel,
        Channel::Pos
    );
}

#[test]
fn a_conflated_delta_holds_the_latest_values() {
    let layout = layout();
    let mut views = None;
    let mut feed = Feed::new();
    feed.apply(stock("s1", "BER-0001", SAMPLE_TIME, 50, 50));
    feed.apply(order("o1", "store-berlin", SAMPLE_TIME, 1_000, "EUR"));
    let first = delta_of(&mut views, &feed.state, &layout, &feed.changes);
    feed.changes = Changes::default();
    feed.apply(stock("s2", "BER-0002", SAMPLE_TIME + 1, 7, 7));
    feed.apply(stock("s3", "BER-0001", SAMPLE_TIME + 2, 49, -1));
    feed.apply(order("o2", "store-berlin", SAMPLE_TIME + 3, 2_000, "EUR"));
    let second = delta_of(&mut views, &feed.state, &layout, &feed.changes);
    let mut conflated = first.clone();
    conflated.absorb(&second);
    assert_eq!(conflated.position, second.position);
    let berlin = &conflated.stores["store-berlin"];
    assert_eq!(berlin.counters.orders_today, 2);
    assert_eq!(berlin.counters.counts.skus, 2);
    let low: Vec<(&str, i64)> = berlin
        .lists
        .low_stock
        .iter()
        .flatten()
        .map(|s| (s.sku.as_str(), s.level))
        .collect();
    assert_eq!(low, vec![("BER-0002", 7)]);
    assert_eq!(
        conflated
            .scoped(&"store-berlin".into())
            .map(|d| d.stores.len()),
        Some(1)
    );
    assert!(conflated.scoped(&"store-nyc".into()).is_none());
}

#[test]
fn a_delta_carries_a_list_only_when_it_differs_from_the_one_its_clients_hold() {
    let layout = layout();
    let mut views = None;
    let mut feed = Feed::new();
    feed.apply(stock("s1", "BER-0001", SAMPLE_TIME, 5, 5));
    let mut first = delta_of(&mut views, &feed.state, &layout, &feed.changes);
    first.omit_unchanged_lists(views.as_ref().expect("views"));
    let berlin = &first.stores["store-berlin"].lists;
    assert!(
        berlin.low_stock.is_some() && berlin.alerts.is_some() && berlin.top_products.is_some(),
        "a scope's first delta carries every list"
    );
    // Another SKU's stock, well stocked: no list changes, none is sent.
    feed.changes = Changes::default();
    feed.apply(stock("s1b", "BER-0002", SAMPLE_TIME + 1, 80, 80));
    let mut quiet = delta_of(&mut views, &feed.state, &layout, &feed.changes);
    quiet.omit_unchanged_lists(views.as_ref().expect("views"));
    assert_eq!(
        quiet.stores["store-berlin"].lists,
        crate::live::SkuListsDelta::default()
    );
    // An order of the low SKU: its velocity, so the low-stock list and top products move;
    // the alerts and the oversold list stay.
    feed.changes = Changes::default();
    feed.apply(order("o1", "store-berlin", SAMPLE_TIME + 2, 1_000, "EUR"));
    let mut second = delta_of(&mut views, &feed.state, &layout, &feed.changes);
    second.omit_unchanged_lists(views.as_ref().expect("views"));
    let berlin = &second.stores["store-berlin"].lists;
    assert!(berlin.low_stock.is_some());
    assert_eq!(berlin.alerts, None);
    assert_eq!(berlin.oversold, None);
    assert!(berlin.top_products.is_some());
    // Below zero: every list that moved is sent again.
    feed.changes = Changes::default();
    feed.apply(stock("s2", "BER-0001", SAMPLE_TIME + 3, -1, -6));
    let mut third = delta_of(&mut views, &feed.state, &layout, &feed.changes);
    third.omit_unchanged_lists(views.as_ref().expect("views"));
    let berlin = &third.stores["store-berlin"].lists;
    assert!(berlin.oversold.as_ref().is_some_and(|o| o.len() == 1));
    assert!(berlin.low_stock.as_ref().is_some_and(Vec::is_empty));
    assert!(berlin.alerts.is_some());
    // Conflated, the second and third hold the newest of each list, none lost.
    let mut conflated = second.clone();
    conflated.absorb(&third);
    let lists = &conflated.stores["store-berlin"].lists;
    assert_eq!(
        lists.top_products,
        second.stores["store-berlin"].lists.top_products
    );
    assert_eq!(lists.oversold, berlin.oversold);
}

/// The delta of `changes`, from views brought up to date with them (built on first use),
/// checked against the one-scan reference views of the state.
fn delta_of(
    views: &mut Option<crate::aggregate::Views>,
    state: &State,
    layout: &Layout,
    changes: &Changes,
) -> crate::live::Delta {
    // As the frame builder does: built on first use (nothing before it to compare with),
    // updated with the changes after that.
    let views = match views {
        Some(views) => {
            views.update(state, changes.stores.keys());
            views
        }
        None => views.insert(crate::aggregate::Views::new(state)),
    };
    assert_eq!(
        **views.rollup(),
        state.all_stores_view(),
        "the rollup kept current"
    );
    for id in changes.stores.keys() {
        assert_eq!(
            views.store(id).map(|v| &**v),
            state.store_view(id).as_ref(),
            "{id:?}"
        );
    }
    assert_eq!(
        serde_json::to_value(views.snapshot(state, layout, None)).expect("json"),
        serde_json::to_value(state.rollup_snapshot(layout)).expect("json"),
        "the all-stores snapshot of shared views"
    );
    if let Some(store) = changes.stores.keys().next() {
        assert_eq!(
            serde_json::to_value(views.snapshot(state, layout, Some(store))).expect("json"),
            serde_json::to_value(state.snapshot(layout, Some(store))).expect("json"),
            "a store's snapshot of shared views"
        );
    }
    crate::live::Delta::of(views, state, layout, changes)
}

/// The whole snapshot (every store and the rollup) as a client holds it after applying
/// whole deltas (which also say how many stores the rollup sums).
fn snapshot_json(state: &State, layout: &Layout) -> serde_json::Value {
    let mut json = serde_json::to_value(state.snapshot(layout, None)).expect("json");
    json["store_count"] = state.stores().len().into();
    json
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// A client (`live::client`, the merge rules of docs/api.md) that starts from the
    /// snapshot and applies every delta (lists only when they changed, recent orders as
    /// upserts), one by one or conflated, holds exactly the state's snapshot after every
    /// frame: every field of every store and of the rollup.
    #[test]
    fn deltas_of_changed_parts_rebuild_the_views_exactly(
        seed in 0u64..1_000,
        frame_every in 1usize..40,
        conflate in 1usize..4,
    ) {
        let layout = layout();
        let lists = partitioned_stream(seed, 1_000);
        let records: Vec<(Event, RecordRef)> = lists.into_iter().flatten().collect();
        let mut state = State::new(config());
        let mut views = None;
        let mut held = snapshot_json(&state, &layout);
        let mut changes = Changes::default();
        let mut pending: Option<crate::live::Delta> = None;
        let mut frames = 0usize;
        for (i, (event, at)) in records.iter().enumerate() {
            state.apply(event, *at, &mut changes);
            if !(i + 1).is_multiple_of(frame_every) || changes.is_empty() {
                continue;
            }
            let mut delta = delta_of(&mut views, &state, &layout, &changes);
            changes = Changes::default();
            delta.omit_unchanged_lists(views.as_ref().expect("views"));
            match pending.as_mut() {
                Some(earlier) => earlier.absorb(&delta),
                None => pending = Some(delta),
            }
            frames += 1;
            if !frames.is_multiple_of(conflate) {
                continue;
            }
            let Some(delta) = pending.take() else { continue };
            let json = serde_json::to_value(&delta).expect("json");
            crate::live::client::apply_delta(&mut held, &json);
            prop_assert_eq!(&held, &snapshot_json(&state, &layout));
        }
    }
}

/// The report's defect: a store with fewer than 20 orders over its held days, and days
/// that turn. The snapshot drops the orders of a day no longer held; a client that applied
/// every delta (one by one, or conflated into one) must drop them too, in the store and in
/// the rollup, while a second store's orders stay.
#[test]
fn recent_orders_of_a_day_no_longer_held_leave_a_streaming_client_too() {
    const DAY: i64 = 86_400_000;
    let layout = layout();
    for conflate in [false, true] {
        let mut feed = Feed::new();
        let mut views = None;
        let mut held = snapshot_json(&feed.state, &layout);
        let mut pending: Option<crate::live::Delta> = None;
        let mut frame = |feed: &mut Feed, held: &mut serde_json::Value, last: bool| {
            let changes = std::mem::take(&mut feed.changes);
            if !changes.is_empty() {
                let mut delta = delta_of(&mut views, &feed.state, &layout, &changes);
                delta.omit_unchanged_lists(views.as_ref().expect("views"));
                match pending.as_mut() {
                    Some(earlier) => earlier.absorb(&delta),
                    None => pending = Some(delta),
                }
            }
            if !conflate || last {
                if let Some(delta) = pending.take() {
                    let json = serde_json::to_value(&delta).expect("json");
                    crate::live::client::apply_delta(held, &json);
                }
                assert_eq!(
                    *held,
                    snapshot_json(&feed.state, &layout),
                    "conflate {conflate}"
                );
            }
        };
        for i in 0..3 {
            feed.apply(order(
                &format!("d0-{i}"),
                "store-berlin",
                SAMPLE_TIME + i * MINUTE,
                1_000,
                "EUR",
            ));
            feed.apply(order(
                &format!("p0-{i}"),
                "store-paris",
                SAMPLE_TIME + i * MINUTE,
                1_000,
                "EUR",
            ));
        }
        frame(&mut feed, &mut held, false);
        feed.apply(order("d1", "store-berlin", SAMPLE_TIME + DAY, 1_000, "EUR"));
        frame(&mut feed, &mut held, false);
        // Two days on: the first day's orders of store-berlin are no longer held.
        feed.apply(session("late", SAMPLE_TIME + 2 * DAY, None));
        frame(&mut feed, &mut held, false);
        feed.apply(order(
            "d2",
            "store-berlin",
            SAMPLE_TIME + 2 * DAY + MINUTE,
            1_000,
            "EUR",
        ));
        frame(&mut feed, &mut held, true);
        let berlin = &held["stores"]["store-berlin"]["recent_orders"];
        assert_eq!(berlin.as_array().map(Vec::len), Some(2), "{berlin}");
        let all = &held["all_stores"]["recent_orders"];
        assert_eq!(all.as_array().map(Vec::len), Some(5), "{all}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// The views kept current store by store (`Views::update`) equal the one-scan
    /// reference after every frame, with lists cut short (a small `list_limit`, many
    /// stores and SKUs): the rollup's k-way merge of the stores' heads and its sums.
    #[test]
    fn views_kept_current_equal_a_scan_of_every_store(
        seed in 0u64..1_000,
        stores in 2usize..12,
        skus in 3usize..40,
        list_limit in 1usize..6,
        frame_every in 1usize..30,
    ) {
        let mut config = (*config()).clone();
        config.list_limit = list_limit;
        let mut state = State::new(Arc::new(config));
        let scenario = Scenario::new(ScenarioConfig {
            popularity: Default::default(),
            seed,
            start_ms: SAMPLE_TIME,
            events_per_second: 2.0,
            stores,
            skus_per_store: skus,
            flash_sale: Some(FlashSale {
                starts_after_ms: MINUTE,
                duration_ms: 30 * MINUTE,
                skus_per_store: 3,
                oversell: true,
                discount_percent: 30,
            }),
        });
        let mut views = None;
        let mut changes = Changes::default();
        let mut offsets: BTreeMap<TopicRole, i64> = BTreeMap::new();
        for (i, event) in scenario.take(1_500).enumerate() {
            let role = event.kind().topic_role();
            let offset = offsets.entry(role).or_insert(0);
            let at = RecordRef { partition: PartitionKey { role, partition: 0 }, offset: *offset };
            *offset += 1;
            state.apply(&event, at, &mut changes);
            if (i + 1).is_multiple_of(frame_every) && !changes.is_empty() {
                // delta_of asserts the views equal the reference.
                let delta = delta_of(&mut views, &state, &layout(), &std::mem::take(&mut changes));
                let rollup = state.all_stores_view();
                prop_assert!(rollup.lists.low_stock.len() <= list_limit);
                prop_assert!(rollup.lists.alerts.len() <= list_limit);
                prop_assert_eq!(rollup.counters.counts.low_stock as usize >= rollup.lists.low_stock.len(), true);
                prop_assert!(delta.all_stores.is_some());
            }
        }
    }
}

#[test]
fn stock_pages_walk_every_sku_in_byte_order_once() {
    let mut feed = Feed::new();
    for (i, sku) in ["BER-0003", "BER-0001", "BER-0010", "BER-0002", "BER-0005"]
        .iter()
        .enumerate()
    {
        feed.apply(stock(
            &format!("s{i}"),
            sku,
            SAMPLE_TIME,
            i as i64,
            i as i64,
        ));
    }
    let layout = layout();
    let berlin: StoreId = "store-berlin".into();
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = feed
            .state
            .stock_page(&layout, &berlin, after.as_deref(), 2)
            .expect("known store");
        assert_eq!(page.skus, 5);
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|i| (i.sku.clone(), i.level)));
        pages += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        vec![
            ("BER-0001".to_owned(), 1),
            ("BER-0002".to_owned(), 3),
            ("BER-0003".to_owned(), 0),
            ("BER-0005".to_owned(), 4),
            ("BER-0010".to_owned(), 2),
        ]
    );
    assert!(
        feed.state
            .stock_page(&layout, &"store-nowhere".into(), None, 2)
            .is_none()
    );
    let last = feed
        .state
        .stock_page(&layout, &berlin, Some("BER-0005"), 10)
        .expect("known");
    assert_eq!((last.items.len(), last.next), (1, None));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A view looks only at the watched SKUs and those selling; it equals the view of every
    /// stocked SKU (thresholds per SKU, a sale that sells out and oversells), and the watched
    /// set kept record by record equals the one a restore rebuilds.
    #[test]
    fn views_of_the_listable_skus_equal_views_of_every_sku(
        seed in 0u64..1_000,
        threshold in 0i64..40,
        frame_every in 1usize..50,
    ) {
        let mut config = (*config()).clone();
        config.low_stock_threshold = threshold;
        config.low_stock_overrides.insert("BER-0002".into(), 60);
        let config = Arc::new(config);
        let mut state = State::new(Arc::clone(&config));
        let mut changes = Changes::default();
        for (i, (event, at)) in partitioned_stream(seed, 1_500)
            .into_iter()
            .flatten()
            .enumerate()
        {
            state.apply(&event, at, &mut changes);
            if (i + 1).is_multiple_of(frame_every) {
                for id in std::mem::take(&mut changes).stores.keys() {
                    prop_assert_eq!(state.store_view(id), state.store_view_of_every_sku(id));
                }
            }
        }
        let mut rebuilt = state.clone();
        rebuilt.set_config(Arc::clone(&config));
        prop_assert!(rebuilt == state, "the watched SKUs kept equal the rebuilt ones");
    }
}

#[test]
fn store_pages_walk_every_store_in_byte_order_once() {
    let mut feed = Feed::new();
    for (i, store) in ["store-c", "store-a", "store-e", "store-b", "store-d"]
        .iter()
        .enumerate()
    {
        feed.apply(order(
            &format!("o{i}"),
            store,
            SAMPLE_TIME + i as i64,
            100,
            "EUR",
        ));
    }
    let layout = layout();
    let (mut after, mut seen, mut pages) = (None::<String>, Vec::new(), 0);
    loop {
        let page = feed.state.store_page(&layout, after.as_deref(), 2);
        assert_eq!(page.store_count, 5);
        assert!(page.items.len() <= 2);
        seen.extend(page.items);
        pages += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        ["store-a", "store-b", "store-c", "store-d", "store-e"]
    );
    assert!(
        feed.state
            .store_page(&layout, Some("store-e"), 2)
            .items
            .is_empty()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// The stores split into slices, each with its own state and views (as the aggregators
    /// of a cluster hold them): the rollup of the slices' parts equals the one-process
    /// all-stores view after every frame, lists cut short included (ADR 0007, decision 10).
    #[test]
    fn the_rollup_of_slices_parts_equals_the_one_process_rollup(
        seed in 0u64..1_000,
        stores in 2usize..12,
        slices in 1usize..5,
        list_limit in 1usize..6,
        frame_every in 1usize..30,
    ) {
        let mut config = (*config()).clone();
        config.list_limit = list_limit;
        let config = Arc::new(config);
        let mut whole = State::new(Arc::clone(&config));
        let mut parts: Vec<(State, Changes, Option<Views>)> =
            (0..slices).map(|_| (State::new(Arc::clone(&config)), Changes::default(), None)).collect();
        let scenario = Scenario::new(ScenarioConfig {
            popularity: Default::default(),
            seed,
            start_ms: SAMPLE_TIME,
            events_per_second: 2.0,
            stores,
            skus_per_store: 12,
            flash_sale: Some(FlashSale {
                starts_after_ms: MINUTE,
                duration_ms: 30 * MINUTE,
                skus_per_store: 3,
                oversell: true,
                discount_percent: 30,
            }),
        });
        let mut offsets: BTreeMap<(usize, TopicRole), i64> = BTreeMap::new();
        let mut ignored = Changes::default();
        for (i, event) in scenario.take(1_500).enumerate() {
            let role = event.kind().topic_role();
            let slice = (xxhash_rust::xxh3::xxh3_64(event.store_id().as_str().as_bytes()) % slices as u64) as usize;
            let offset = offsets.entry((slice, role)).or_insert(0);
            let at = RecordRef { partition: PartitionKey { role, partition: slice as i32 }, offset: *offset };
            *offset += 1;
            whole.apply(&event, at, &mut ignored);
            let (state, changes, _) = &mut parts[slice];
            state.apply(&event, at, changes);
            if (i + 1).is_multiple_of(frame_every) {
                for (state, changes, views) in &mut parts {
                    let changed = std::mem::take(changes);
                    match views {
                        Some(views) => views.update(state, changed.stores.keys()),
                        None => *views = Some(Views::new(state)),
                    }
                }
                let held: Vec<&Part> = parts.iter().filter_map(|(_, _, v)| v.as_ref().map(Views::part)).collect();
                let combined = rollup_of(&held, list_limit);
                let expected = whole.all_stores_view();
                if whole.stores().is_empty() {
                    continue;
                }
                prop_assert_eq!(combined, expected);
            }
        }
    }
}
