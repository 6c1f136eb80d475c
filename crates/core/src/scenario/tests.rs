//! Scenario tests: determinism, and stock that is consistent with the orders.

use super::*;
use crate::events::{Codec, ConfluentIds, EventKind};
use std::collections::HashMap;

const START: i64 = 1_795_773_600_000;

fn config(seed: u64, oversell: bool) -> ScenarioConfig {
    ScenarioConfig {
        popularity: Default::default(),
        seed,
        start_ms: START,
        events_per_second: 1_000.0,
        stores: 3,
        skus_per_store: 20,
        flash_sale: Some(FlashSale {
            starts_after_ms: 5_000,
            duration_ms: 60_000,
            skus_per_store: 2,
            oversell,
            discount_percent: 30,
        }),
    }
}

fn events(seed: u64, oversell: bool, n: usize) -> Vec<Event> {
    Scenario::new(config(seed, oversell)).take(n).collect()
}

#[test]
fn the_same_seed_gives_the_same_stream_and_another_seed_another() {
    assert_eq!(events(7, false, 5_000), events(7, false, 5_000));
    assert_ne!(events(7, false, 5_000), events(8, false, 5_000));
}

#[test]
fn the_stream_opens_with_the_initial_level_of_every_sku() {
    let evs = events(1, false, 60);
    let mut skus = std::collections::HashSet::new();
    for e in &evs {
        let Event::StockChanged(s) = e else {
            panic!("expected an initial level, got {e:?}")
        };
        assert_eq!(s.reason, StockChangeReason::Correction);
        assert_eq!(s.delta, s.new_level);
        skus.insert(s.sku.clone());
    }
    assert_eq!(skus.len(), 60);
}

#[test]
fn event_times_follow_the_configured_rate() {
    let evs = events(3, false, 2_001);
    assert_eq!(evs[0].occurred_at(), START);
    assert_eq!(evs[2_000].occurred_at(), START + 2_000);
    assert!(
        evs.windows(2)
            .all(|w| w[0].occurred_at() <= w[1].occurred_at())
    );
}

#[test]
fn every_event_is_valid_and_survives_the_codec() {
    let codec = Codec::new(&ConfluentIds::default()).expect("schemas load");
    for event in events(4, true, 20_000) {
        event.validate().expect("generated events are valid");
        let bytes = codec.encode(&event).expect("encodes");
        assert_eq!(codec.decode(&bytes).expect("decodes"), event);
    }
}

/// Replays the inventory stream: each `new_level` is the previous level plus `delta`; sold
/// units equal ordered units and returned units equal cancelled units, per SKU.
fn check_stock_consistency(evs: &[Event], oversell_allowed: bool) -> HashMap<Sku, i64> {
    let mut level: HashMap<Sku, i64> = HashMap::new();
    let mut ordered: HashMap<Sku, i64> = HashMap::new();
    let mut sold: HashMap<Sku, i64> = HashMap::new();
    let mut orders: HashMap<String, &OrderPlaced> = HashMap::new();
    let mut cancelled_units: HashMap<Sku, i64> = HashMap::new();
    let mut returned: HashMap<Sku, i64> = HashMap::new();
    for e in evs {
        match e {
            Event::StockChanged(s) => {
                let before = level.get(&s.sku).copied().unwrap_or(0);
                assert_eq!(s.new_level, before + s.delta, "{s:?}");
                if !oversell_allowed {
                    assert!(s.new_level >= 0, "oversold without --oversell: {s:?}");
                }
                level.insert(s.sku.clone(), s.new_level);
                match s.reason {
                    StockChangeReason::Sale => *sold.entry(s.sku.clone()).or_default() -= s.delta,
                    StockChangeReason::Return => {
                        *returned.entry(s.sku.clone()).or_default() += s.delta
                    }
                    _ => {}
                }
            }
            Event::OrderPlaced(o) => {
                assert_eq!(
                    o.total_minor,
                    o.lines
                        .iter()
                        .map(|l| i64::from(l.quantity) * l.unit_price_minor)
                        .sum::<i64>()
                );
                for l in &o.lines {
                    *ordered.entry(l.sku.clone()).or_default() += i64::from(l.quantity);
                }
                orders.insert(o.order_id.0.clone(), o);
            }
            Event::OrderCancelled(c) => {
                let o = orders
                    .get(c.order_id.as_str())
                    .expect("a cancellation follows its order");
                assert_eq!(
                    (c.total_minor, c.order_placed_at, &c.currency),
                    (o.total_minor, o.occurred_at, &o.currency)
                );
                for l in &o.lines {
                    *cancelled_units.entry(l.sku.clone()).or_default() += i64::from(l.quantity);
                }
            }
            Event::SessionSeen(_) => {}
        }
    }
    // The last order's stock events may be cut off by `take`; compare all but trailing SKUs.
    for (sku, units) in &ordered {
        let sold = sold.get(sku).copied().unwrap_or(0);
        assert!(
            sold <= *units && *units - sold <= 3,
            "{sku}: ordered {units}, sold {sold}"
        );
    }
    for (sku, units) in &cancelled_units {
        let returned = returned.get(sku).copied().unwrap_or(0);
        assert!(returned <= *units && *units - returned <= 3, "{sku}");
    }
    level
}

#[test]
fn stock_levels_follow_orders_cancellations_and_restocks() {
    let evs = events(5, false, 50_000);
    check_stock_consistency(&evs, false);
    let kinds: std::collections::HashSet<EventKind> = evs.iter().map(Event::kind).collect();
    assert_eq!(kinds.len(), 4, "every kind of event occurs");
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::StockChanged(s) if s.reason == StockChangeReason::Restock))
    );
}

#[test]
fn the_flash_sale_drives_its_skus_to_low_stock() {
    // 65 s of event time at 1000 events/s covers the whole sale.
    let evs = events(6, false, 65_000);
    let levels = check_stock_consistency(&evs, false);
    let flash_lows = levels
        .iter()
        .filter(|(sku, level)| sku.as_str().ends_with("-0001") && **level < 10)
        .count();
    assert!(flash_lows >= 2, "flash SKUs end low: {levels:?}");
}

#[test]
fn with_oversell_a_flash_sku_goes_below_zero() {
    let evs = events(6, true, 65_000);
    check_stock_consistency(&evs, true);
    let oversold: Vec<&StockChanged> = evs
        .iter()
        .filter_map(|e| match e {
            Event::StockChanged(s) if s.new_level < 0 => Some(s),
            _ => None,
        })
        .collect();
    assert!(!oversold.is_empty(), "some SKU is oversold");
    assert!(
        oversold.iter().all(|s| {
            let n: usize = s.sku.as_str()[4..].parse().expect("numbered sku");
            n <= 2
        }),
        "only flash SKUs are oversold"
    );
}

#[test]
fn an_invalid_configuration_names_the_setting() {
    let mut c = config(1, false);
    c.stores = 0;
    assert!(c.validate().expect_err("rejected").contains("stores"));
    let mut c = config(1, false);
    c.skus_per_store = 1;
    assert!(c.validate().expect_err("rejected").contains("flash SKUs"));
}

#[test]
fn a_marketplace_has_thousands_of_stores_with_their_own_ids_and_skus() {
    let config = ScenarioConfig {
        stores: 2_000,
        skus_per_store: 5,
        flash_sale: None,
        ..config(3, false)
    };
    let ids = config.store_ids();
    assert_eq!(ids.len(), 2_000);
    assert_eq!(ids[0].as_str(), "store-berlin");
    assert_eq!(ids[8].as_str(), "store-00009");
    assert_eq!(ids[1_999].as_str(), "store-02000");
    let opening: Vec<Event> = Scenario::new(config).take(10_000).collect();
    let skus: std::collections::HashSet<&str> = opening
        .iter()
        .filter_map(|e| match e {
            Event::StockChanged(s) => Some(s.sku.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        skus.len(),
        10_000,
        "every SKU of every store opens with its level"
    );
    assert!(skus.contains("S02000-0005"));
    for event in &opening {
        assert_eq!(event.validate(), Ok(()), "{event:?}");
    }
}

#[test]
fn skewed_popularity_sells_the_head_of_the_catalog_most() {
    let sold = |popularity| {
        let config = ScenarioConfig {
            popularity,
            stores: 1,
            skus_per_store: 1_000,
            flash_sale: None,
            ..config(5, false)
        };
        let mut head = 0;
        let mut all = 0;
        for event in Scenario::new(config).take(60_000) {
            if let Event::OrderPlaced(order) = event {
                for line in order.lines {
                    all += 1;
                    let index: usize = line.sku.as_str()[4..].parse().expect("an index");
                    head += usize::from(index <= 10);
                }
            }
        }
        head as f64 / all as f64
    };
    let uniform = sold(Popularity::Uniform);
    let skewed = sold(Popularity::Skewed);
    assert!(uniform < 0.03, "uniform: the first 1 % takes {uniform}");
    assert!(skewed > 0.15, "skewed: the first 1 % takes {skewed}");
}

#[test]
fn a_buggy_producer_corrupts_its_share_with_each_kind_of_junk() {
    let mut buggy = BuggyProducer::new(9, 100);
    let mut kinds: HashMap<Junk, usize> = HashMap::new();
    let mut corrupted = 0;
    let total = 20_000;
    for mut event in events(9, false, total) {
        let before = event.clone();
        match buggy.corrupt(&mut event) {
            None => assert_eq!(event, before),
            Some(junk) => {
                corrupted += 1;
                *kinds.entry(junk).or_default() += 1;
                assert_ne!(event, before);
                match junk {
                    Junk::StoreId => assert!(event.store_id().as_str().starts_with("junk-")),
                    Junk::Amount => assert!(
                        matches!(&event, Event::OrderPlaced(o) if o.total_minor == i64::MAX)
                    ),
                    Junk::NoTimestamp => {
                        assert!(event.occurred_at() > before.occurred_at() + 3_000 * 86_400_000)
                    }
                }
            }
        }
    }
    assert!(
        (1_700..2_300).contains(&corrupted),
        "about 10 %: {corrupted}"
    );
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(
        BuggyProducer::new(9, 0)
            .corrupt(&mut events(9, false, 1)[0])
            .is_none()
    );
}
