//! The business rules of stock, in one place: when a SKU is low or oversold, how soon it
//! sells out, and which alerts it raises. The views (`view.rs`) only present what these
//! decide; docs/api.md states the same rules for clients.

use super::store::{SALES_WINDOW_MINUTES, StockEntry, Trigger};
use super::view::AlertKind;

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
/// (`sold` units in the last [`SALES_WINDOW_MINUTES`]), rounded down; `None` when nothing
/// sold or nothing is left.
pub fn minutes_to_sell_out(level: i64, sold: i64) -> Option<i64> {
    (sold > 0 && level > 0).then(|| level * SALES_WINDOW_MINUTES / sold)
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
        let prefix = match self.kind {
            AlertKind::Oversold => "oversold",
            AlertKind::LowStock => "low_stock",
            AlertKind::SellOutImminent => "sell_out",
        };
        format!("{prefix}:{store}:{sku}:{}", self.since.record)
    }
}

/// The alerts of a SKU: oversold (or else low stock) while the condition lasts, and sell
/// out imminent when it sells out in fewer than `alert_minutes`.
pub fn alerts(
    entry: &StockEntry,
    sell_out_minutes: Option<i64>,
    alert_minutes: i64,
) -> Vec<Raised> {
    let mut raised = Vec::new();
    if let Some(since) = entry.oversold_since {
        raised.push(Raised {
            kind: AlertKind::Oversold,
            since,
        });
    } else if let Some(since) = entry.low_since {
        raised.push(Raised {
            kind: AlertKind::LowStock,
            since,
        });
    }
    if sell_out_minutes.is_some_and(|m| m < alert_minutes) {
        raised.push(Raised {
            kind: AlertKind::SellOutImminent,
            since: entry.run_since,
        });
    }
    raised
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
        assert_eq!(minutes_to_sell_out(0, 30), None);
        assert_eq!(minutes_to_sell_out(5, 0), None);
        assert_eq!(projected_sell_out_at(125_000, 4), 120_000 + 240_000);
    }
}
