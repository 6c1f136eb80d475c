//! What a replay prints, built from the same views as `/api/snapshot`: the steps of a
//! timeline, one row per step and scope (and currency, in CSV), and the formats. Pure: no
//! I/O, no clock; the reader in `replay/mod.rs` hands it snapshots.

use crate::aggregate::view::{Money, Snapshot, StoreView};
use std::collections::BTreeMap;

/// The times of a timeline's rows: `from`, then every `every_ms` while before `to`, then
/// `to` itself (a range that is not a whole number of steps ends with a shorter one).
pub fn steps(from_ms: i64, to_ms: i64, every_ms: i64) -> Vec<i64> {
    let mut steps = Vec::new();
    let mut at = from_ms;
    while at < to_ms {
        steps.push(at);
        at = at.saturating_add(every_ms.max(1));
    }
    steps.push(to_ms);
    steps
}

/// Digits after the decimal point of a currency's minor unit (ISO 4217; 2 unless listed).
pub fn minor_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// Minor units as a decimal amount in the currency's unit, e.g. `1234.50` (EUR), `980`
/// (JPY). Exact: integer arithmetic only.
pub fn format_minor(minor: i128, currency: &str) -> String {
    let digits = minor_digits(currency);
    if digits == 0 {
        return minor.to_string();
    }
    let scale = 10_i128.pow(digits);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}

/// One timeline row: a scope (a store, or `all`) at a step.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The step, RFC 3339 (UTC).
    pub time: String,
    /// A store id, or `all`.
    pub scope: String,
    /// Orders placed today (the store's day; each store's own day in `all`).
    pub orders: u64,
    /// Net revenue of today's orders, per currency.
    pub revenue: Vec<Amount>,
    /// Cancellations today.
    pub cancelled: u64,
    /// Gross revenue / orders today, per currency, rounded down to a minor unit.
    pub average_order: Vec<Amount>,
    /// Distinct visitors in the last 5 minutes of event time (HyperLogLog estimate).
    pub active_users_5m: u64,
    /// Distinct visitors today (estimate).
    pub active_users_today: u64,
    /// SKUs on the low-stock list.
    pub low_stock: usize,
    /// SKUs below zero.
    pub oversold: usize,
    /// Active alerts.
    pub alerts: usize,
    /// The SKU with the most units ordered in the last 15 minutes (`store/sku`), if any.
    pub top_sku: Option<String>,
}

/// An amount in one currency.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Amount {
    /// ISO 4217 code.
    pub currency: String,
    /// Integer minor units (exact).
    pub minor: i128,
    /// The same in the currency's unit, e.g. `1234.50`.
    pub formatted: String,
}

fn amounts(money: &[Money]) -> Vec<Amount> {
    money
        .iter()
        .map(|m| Amount {
            currency: m.currency.clone(),
            minor: m.minor,
            formatted: format_minor(m.minor, &m.currency),
        })
        .collect()
}

fn row(time: &str, scope: &str, view: &StoreView) -> Row {
    let c = &view.counters;
    Row {
        time: time.to_owned(),
        scope: scope.to_owned(),
        orders: c.orders_today,
        revenue: amounts(&c.revenue_today),
        cancelled: c.cancelled_today,
        average_order: amounts(&c.average_order_value),
        active_users_5m: c.active_users.last_5_minutes,
        active_users_today: c.active_users.today,
        low_stock: count(view.counters.counts.low_stock),
        oversold: count(view.counters.counts.oversold),
        alerts: count(
            view.counters.counts.alerts.oversold
                + view.counters.counts.alerts.sold_out
                + view.counters.counts.alerts.sell_out_imminent
                + view.counters.counts.alerts.low_stock,
        ),
        top_sku: view
            .lists
            .top_products
            .first()
            .map(|t| format!("{}/{}", t.store_id, t.sku)),
    }
}

/// The rows of one step: every store of the snapshot in id order, then `all` (a
/// one-store snapshot has no `all`).
pub fn rows(time: &str, snapshot: &Snapshot) -> Vec<Row> {
    let mut out: Vec<Row> = snapshot
        .stores
        .iter()
        .map(|(id, view)| row(time, id, view))
        .collect();
    if let Some(all) = &snapshot.all_stores {
        out.push(row(time, "all", all));
    }
    out
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The CSV header.
pub const CSV_HEADER: &str = "time,scope,orders,cancelled,active_users_5m,active_users_today,low_stock,oversold,alerts,top_sku,currency,revenue_minor,revenue,average_order_minor,average_order";

/// A row as CSV lines: one per currency of its revenue (a scope without orders has one
/// line with the currency columns empty). Fields never hold commas or quotes (ids are
/// validated on decode), but are quoted when they would.
pub fn csv_lines(row: &Row) -> Vec<String> {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let common = format!(
        "{},{},{},{},{},{},{},{},{},{}",
        quote(&row.time),
        quote(&row.scope),
        row.orders,
        row.cancelled,
        row.active_users_5m,
        row.active_users_today,
        row.low_stock,
        row.oversold,
        row.alerts,
        quote(row.top_sku.as_deref().unwrap_or("")),
    );
    if row.revenue.is_empty() {
        return vec![format!("{common},,,,,")];
    }
    row.revenue
        .iter()
        .map(|revenue| {
            let average = row
                .average_order
                .iter()
                .find(|a| a.currency == revenue.currency);
            format!(
                "{common},{},{},{},{},{}",
                quote(&revenue.currency),
                revenue.minor,
                revenue.formatted,
                average.map_or(String::new(), |a| a.minor.to_string()),
                average.map_or(String::new(), |a| a.formatted.clone()),
            )
        })
        .collect()
}

/// An alert raised or cleared between two steps.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AlertChange {
    /// The first step at which it was active (raised) or no longer was (cleared).
    pub time: String,
    /// `raised` or `cleared`.
    pub change: &'static str,
    /// The alert's stable id.
    pub id: String,
    /// `oversold`, `sold_out`, `sell_out_imminent` or `low_stock`.
    pub kind: String,
    /// Store of the SKU.
    pub store_id: String,
    /// The SKU.
    pub sku: String,
    /// Its level at `time` (for a cleared alert: the level when last active).
    pub level: i64,
    /// Event time of the record that started the condition (exact), RFC 3339.
    pub since: String,
}

/// The alerts active in a snapshot's stores, by id.
pub fn active_alerts(snapshot: &Snapshot) -> BTreeMap<String, AlertChange> {
    snapshot
        .stores
        .values()
        .flat_map(|view| &view.lists.alerts)
        .map(|alert| {
            let kind = serde_json::to_value(alert.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            (
                alert.id.clone(),
                AlertChange {
                    time: String::new(),
                    change: "raised",
                    id: alert.id.clone(),
                    kind,
                    store_id: alert.store_id.clone(),
                    sku: alert.sku.clone(),
                    level: alert.level,
                    since: alert.since.clone(),
                },
            )
        })
        .collect()
}

/// What changed from `before` to `now` at step `time`: alerts raised (in `now` only), then
/// cleared (in `before` only), each in id order.
pub fn alert_changes(
    before: &BTreeMap<String, AlertChange>,
    now: &BTreeMap<String, AlertChange>,
    time: &str,
) -> Vec<AlertChange> {
    let raised = now
        .iter()
        .filter(|(id, _)| !before.contains_key(*id))
        .map(|(_, a)| AlertChange {
            time: time.to_owned(),
            change: "raised",
            ..a.clone()
        });
    let cleared = before
        .iter()
        .filter(|(id, _)| !now.contains_key(*id))
        .map(|(_, a)| AlertChange {
            time: time.to_owned(),
            change: "cleared",
            ..a.clone()
        });
    raised.chain(cleared).collect()
}

/// The CSV header of `--alerts`.
pub const ALERTS_HEADER: &str = "time,change,id,kind,store_id,sku,level,since";

/// An alert change as a CSV line.
pub fn alert_csv(change: &AlertChange) -> String {
    format!(
        "{},{},{},{},{},{},{},{}",
        change.time,
        change.change,
        change.id,
        change.kind,
        change.store_id,
        change.sku,
        change.level,
        change.since
    )
}

/// The header of a what-if's differences.
pub const DIFFERENCES_HEADER: &str = "time,scope,field,configured,what_if";

fn amounts_text(amounts: &[Amount]) -> String {
    amounts
        .iter()
        .map(|a| format!("{} {}", a.currency, a.formatted))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every field that differs between the rows of the same step and scope, as
/// `time,scope,field,configured,what_if` lines, in row order. A scope present in one run
/// only shows as `(none)` on the other side.
pub fn differences(configured: &[Row], what_if: &[Row]) -> Vec<String> {
    let fields = |row: &Row| -> Vec<(&'static str, String)> {
        vec![
            ("orders", row.orders.to_string()),
            ("cancelled", row.cancelled.to_string()),
            ("revenue", amounts_text(&row.revenue)),
            ("average_order", amounts_text(&row.average_order)),
            ("active_users_5m", row.active_users_5m.to_string()),
            ("active_users_today", row.active_users_today.to_string()),
            ("low_stock", row.low_stock.to_string()),
            ("oversold", row.oversold.to_string()),
            ("alerts", row.alerts.to_string()),
            ("top_sku", row.top_sku.clone().unwrap_or_default()),
        ]
    };
    let key = |row: &Row| (row.time.clone(), row.scope.clone());
    let mut keys: Vec<(String, String)> = configured.iter().map(key).collect();
    for row in what_if {
        if !keys.contains(&key(row)) {
            keys.push(key(row));
        }
    }
    let mut out = Vec::new();
    for (time, scope) in keys {
        let find = |rows: &[Row]| {
            rows.iter()
                .find(|r| r.time == time && r.scope == scope)
                .map(&fields)
        };
        let (a, b) = (find(configured), find(what_if));
        let none = || -> Vec<(&'static str, String)> {
            fields(&Row {
                time: String::new(),
                scope: String::new(),
                orders: 0,
                revenue: Vec::new(),
                cancelled: 0,
                average_order: Vec::new(),
                active_users_5m: 0,
                active_users_today: 0,
                low_stock: 0,
                oversold: 0,
                alerts: 0,
                top_sku: None,
            })
            .into_iter()
            .map(|(f, _)| (f, "(none)".to_owned()))
            .collect()
        };
        let (a, b) = (a.unwrap_or_else(none), b.unwrap_or_else(none));
        for ((field, left), (_, right)) in a.iter().zip(&b) {
            if left != right {
                out.push(format!("{time},{scope},{field},{left},{right}"));
            }
        }
    }
    out
}

/// The header of a what-if's alert differences: which run only, then the alert line.
pub const ALERT_DIFFERENCES_HEADER: &str = "run,time,change,id,kind,store_id,sku,level,since";

/// The alert lines (as [`alert_csv`]) of one run and not the other, prefixed
/// `configured_only,` or `what_if_only,`, in the order of the step they belong to (the
/// configured run's first at equal times). Lines are compared whole and counted: an alert
/// raised twice in one run and once in the other shows once.
pub fn alert_differences(configured: &[String], what_if: &[String]) -> Vec<String> {
    fn minus<'a>(a: &'a [String], b: &[String]) -> Vec<&'a String> {
        let mut left: std::collections::HashMap<&String, usize> = Default::default();
        for line in b {
            *left.entry(line).or_default() += 1;
        }
        a.iter()
            .filter(|line| match left.get_mut(line) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .collect()
    }
    let time = |line: &str| line.split(',').next().unwrap_or_default().to_owned();
    let mut out: Vec<(String, u8, String)> = minus(configured, what_if)
        .into_iter()
        .map(|l| (time(l), 0, format!("configured_only,{l}")))
        .chain(
            minus(what_if, configured)
                .into_iter()
                .map(|l| (time(l), 1, format!("what_if_only,{l}"))),
        )
        .collect();
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out.into_iter().map(|(_, _, line)| line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_differences_list_each_runs_own_lines_in_time_order() {
        let lines = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let same = lines(&["t1,raised,a", "t2,cleared,a"]);
        assert!(alert_differences(&same, &same).is_empty());
        let configured = lines(&["t1,raised,a", "t2,raised,b", "t2,raised,b"]);
        let what_if = lines(&["t1,raised,a", "t1,raised,c", "t2,raised,b"]);
        assert_eq!(
            alert_differences(&configured, &what_if),
            vec!["what_if_only,t1,raised,c", "configured_only,t2,raised,b"]
        );
    }

    #[test]
    fn steps_start_at_from_and_end_at_to() {
        assert_eq!(steps(0, 180_000, 60_000), vec![0, 60_000, 120_000, 180_000]);
        assert_eq!(steps(0, 150_000, 60_000), vec![0, 60_000, 120_000, 150_000]);
        assert_eq!(steps(5, 5, 60_000), vec![5]);
    }

    #[test]
    fn amounts_are_formatted_exactly_in_the_currencys_unit() {
        assert_eq!(format_minor(123_450, "EUR"), "1234.50");
        assert_eq!(format_minor(5, "USD"), "0.05");
        assert_eq!(format_minor(-205, "EUR"), "-2.05");
        assert_eq!(format_minor(980, "JPY"), "980");
        assert_eq!(format_minor(1_234, "KWD"), "1.234");
        assert_eq!(
            format_minor(i128::from(i64::MIN), "EUR"),
            "-92233720368547758.08"
        );
    }

    #[test]
    fn alert_changes_are_raised_then_cleared_in_id_order() {
        let alert = |id: &str| AlertChange {
            time: String::new(),
            change: "raised",
            id: id.into(),
            kind: "sold_out".into(),
            store_id: "store-berlin".into(),
            sku: "BER-0001".into(),
            level: 0,
            since: "2026-12-02T05:00:01Z".into(),
        };
        let before = BTreeMap::from([("a".to_owned(), alert("a")), ("b".to_owned(), alert("b"))]);
        let now = BTreeMap::from([("b".to_owned(), alert("b")), ("c".to_owned(), alert("c"))]);
        let changes = alert_changes(&before, &now, "t");
        let summary: Vec<(&str, &str)> =
            changes.iter().map(|c| (c.change, c.id.as_str())).collect();
        assert_eq!(summary, vec![("raised", "c"), ("cleared", "a")]);
        assert_eq!(
            alert_csv(&changes[0]),
            "t,raised,c,sold_out,store-berlin,BER-0001,0,2026-12-02T05:00:01Z"
        );
        assert!(alert_changes(&now, &now, "t").is_empty());
    }

    #[test]
    fn differences_name_each_changed_field_and_none_when_equal() {
        let row = Row {
            time: "t".into(),
            scope: "all".into(),
            orders: 3,
            revenue: Vec::new(),
            cancelled: 0,
            average_order: Vec::new(),
            active_users_5m: 1,
            active_users_today: 1,
            low_stock: 2,
            oversold: 0,
            alerts: 2,
            top_sku: None,
        };
        assert!(differences(std::slice::from_ref(&row), std::slice::from_ref(&row)).is_empty());
        let mut more = row.clone();
        more.low_stock = 5;
        more.alerts = 6;
        assert_eq!(
            differences(std::slice::from_ref(&row), &[more]),
            vec!["t,all,low_stock,2,5", "t,all,alerts,2,6"]
        );
        let mut other = row.clone();
        other.scope = "store-x".into();
        assert!(
            differences(&[row], &[other])
                .iter()
                .any(|l| l == "t,all,orders,3,(none)")
        );
    }

    #[test]
    fn a_row_is_one_csv_line_per_currency_or_one_without() {
        let mut row = Row {
            time: "2026-11-27T14:00:00Z".into(),
            scope: "store-berlin".into(),
            orders: 3,
            revenue: Vec::new(),
            cancelled: 1,
            average_order: Vec::new(),
            active_users_5m: 7,
            active_users_today: 9,
            low_stock: 2,
            oversold: 0,
            alerts: 1,
            top_sku: Some("store-berlin/BER-0001".into()),
        };
        assert_eq!(
            csv_lines(&row),
            vec!["2026-11-27T14:00:00Z,store-berlin,3,1,7,9,2,0,1,store-berlin/BER-0001,,,,,"]
        );
        row.revenue = amounts(&[
            Money {
                currency: "EUR".into(),
                minor: 1050,
            },
            Money {
                currency: "JPY".into(),
                minor: 900,
            },
        ]);
        row.average_order = amounts(&[Money {
            currency: "EUR".into(),
            minor: 350,
        }]);
        let lines = csv_lines(&row);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with(",EUR,1050,10.50,350,3.50"),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with(",JPY,900,900,,"), "{}", lines[1]);
        assert_eq!(CSV_HEADER.split(',').count(), lines[0].split(',').count());
    }
}
