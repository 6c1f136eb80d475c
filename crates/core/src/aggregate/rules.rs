//! The business rules of stock, in one place: when a SKU is low or oversold, how soon it
//! sells out, and which one alert it raises. The views (`view.rs`) only present what these
//! decide; docs/api.md states the same rules for clients.

use super::store::{SALES_WINDOW_MINUTES, StockEntry, Trigger};
use serde::{Deserialize, Serialize};

/// Kinds of alert, most urgent first (the order of the alerts list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Stock below zero.
    Oversold,
    /// Stock at zero.
    SoldOut,
    /// Projected to sell out within the configured minutes (see [`alert`]).
    SellOutImminent,
    /// Stock under the threshold.
    LowStock,
}

/// Where a SKU's level stands against its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockStatus {
    /// Below zero.
    Oversold,
    /// At or above zero and under the threshold.
    Low,
    /// At or above the threshold.
    Normal,
}

/// The status of `level` under `threshold`.
pub fn stock_status(level: i64, threshold: i64) -> StockStatus {
    if level < 0 {
        StockStatus::Oversold
    } else if level < threshold {
        StockStatus::Low
    } else {
        StockStatus::Normal
    }
}

/// Whole minutes until `level` units sell out at the velocity of the sales window
/// (`sold` units in the last [`SALES_WINDOW_MINUTES`]), rounded down: `0` when nothing is
/// left (sold out now), `None` when some is left and nothing sold, or when oversold.
pub fn minutes_to_sell_out(level: i64, sold: i64) -> Option<i64> {
    match level {
        0 => Some(0),
        level if level > 0 && sold > 0 => Some(level * SALES_WINDOW_MINUTES / sold),
        _ => None,
    }
}

/// When it sells out, epoch milliseconds: the start of the minute of the store's newest
/// event plus `minutes`. To the minute, like the velocity it comes from, so the list does
/// not change with every event of the store and deltas can leave it out.
pub fn projected_sell_out_at(newest_event_time: i64, minutes: i64) -> i64 {
    newest_event_time.div_euclid(60_000) * 60_000 + minutes * 60_000
}

/// An alert a SKU raises: its kind and the record that started the condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raised {
    /// What it is.
    pub kind: AlertKind,
    /// The record that started it (its id's last part, and its `since`).
    pub since: Trigger,
}

impl Raised {
    /// The alert's stable id: `<kind>:<store>:<sku>:<record>`, so a replay or a restart
    /// shows the same alert with the same id.
    pub fn id(&self, store: &str, sku: &str) -> String {
        let kind = match self.kind {
            AlertKind::Oversold => "oversold",
            AlertKind::SoldOut => "sold_out",
            AlertKind::SellOutImminent => "sell_out_imminent",
            AlertKind::LowStock => "low_stock",
        };
        format!("{kind}:{store}:{sku}:{}", self.since.record)
    }
}

/// When a projected sell-out is worth an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SellOutRule {
    /// Projected within fewer than this many minutes...
    pub minutes: i64,
    /// ...and the level at most this.
    pub level: i64,
}

/// The one active alert of a SKU, the most urgent that holds: `oversold` (level < 0),
/// `sold_out` (level 0), `sell_out_imminent` (projected to sell out within fewer than
/// `rule.minutes`, with at most `rule.level` left), `low_stock` (under the threshold).
pub fn alert(entry: &StockEntry, sold: i64, rule: SellOutRule) -> Option<Raised> {
    let raised = |kind, since| Some(Raised { kind, since });
    if let Some(since) = entry.oversold_since {
        return raised(AlertKind::Oversold, since);
    }
    if let Some(since) = entry.sold_out_since {
        return raised(AlertKind::SoldOut, since);
    }
    let imminent = minutes_to_sell_out(entry.level, sold).is_some_and(|m| m < rule.minutes)
        && entry.level <= rule.level;
    if imminent {
        return raised(AlertKind::SellOutImminent, entry.run_since);
    }
    entry
        .low_since
        .and_then(|since| raised(AlertKind::LowStock, since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_thresholds_and_sell_out_minutes() {
        assert_eq!(stock_status(-1, 10), StockStatus::Oversold);
        assert_eq!(stock_status(0, 10), StockStatus::Low);
        assert_eq!(stock_status(9, 10), StockStatus::Low);
        assert_eq!(stock_status(10, 10), StockStatus::Normal);
        // 30 sold in 15 minutes: 2 a minute; 9 left lasts 4 whole minutes.
        assert_eq!(minutes_to_sell_out(9, 30), Some(4));
        assert_eq!(minutes_to_sell_out(0, 30), Some(0));
        assert_eq!(minutes_to_sell_out(0, 0), Some(0));
        assert_eq!(minutes_to_sell_out(5, 0), None);
        assert_eq!(minutes_to_sell_out(-2, 30), None);
        assert_eq!(projected_sell_out_at(125_000, 4), 120_000 + 240_000);
    }
}
