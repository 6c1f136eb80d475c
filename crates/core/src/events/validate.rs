//! Business validation of decoded events: what Avro's types cannot say (a currency is three
//! upper-case letters, a quantity is positive, an order has lines). A record that decodes
//! but fails here is as poisonous as one that does not decode, and is dead-lettered alike.
//!
//! Pure: no I/O. Validation never rewrites an event; it accepts or names the first problem.
//!
//! The bounds here are the contract of docs/api.md ("Bounds of a record"): ids are short
//! and visible, times are inside this century, amounts and quantities are far from
//! overflowing anything they are added to.

use super::{DecodeError, Event, OrderCancelled, OrderPlaced, SessionSeen, StockChanged};
use thiserror::Error;

/// Why a well-formed record is still not a valid event.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct InvalidEvent {
    /// The offending field (dotted path for nested fields).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidEvent {
    InvalidEvent {
        field,
        reason: reason.into(),
    }
}

/// The earliest event time accepted: 2000-01-01T00:00:00Z.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;
/// The first event time refused: 2100-01-01T00:00:00Z.
pub const MAX_EVENT_TIME_MS: i64 = 4_102_444_800_000;
/// The largest amount of one order or unit price, in minor units (10^12: ten billion of a
/// two-decimal currency). Sums are 128-bit, so no number of such orders overflows them.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// The largest stock level (either sign) and stock change.
pub const MAX_STOCK_LEVEL: i64 = 1_000_000_000_000;
/// The most units on one order line.
pub const MAX_QUANTITY: i32 = 1_000_000;
/// The most lines on one order.
pub const MAX_LINES: usize = 1_000;
/// The longest id (store, SKU, order, event, session, user), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The longest free text (product and customer names, reasons), in bytes.
pub const MAX_TEXT_BYTES: usize = 1_024;
/// Store ids that name something else where store ids are shown (the rollup `all`, the
/// metrics' `other`); refused in any letter case.
pub const RESERVED_STORE_IDS: [&str; 2] = ["all", "other"];

/// Characters that show nothing or move other text: controls, whitespace, and the Unicode
/// format, joiner, direction, variation-selector, filler and tag characters. Two ids that
/// differ only by these look the same on a page, so an id holds none of them.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(
            u32::from(c),
            0x00AD
                | 0x034F
                | 0x061C
                | 0x115F..=0x1160
                | 0x17B4..=0x17B5
                | 0x180B..=0x180F
                | 0x200B..=0x200F
                | 0x202A..=0x202E
                | 0x2060..=0x206F
                | 0x2800
                | 0x3164
                | 0xFE00..=0xFE0F
                | 0xFEFF
                | 0xFFA0
                | 0xFFF0..=0xFFFB
                | 0x1D173..=0x1D17A
                | 0xE0000..=0xE0FFF
        )
}

/// Why `id` is not an id: empty, longer than [`MAX_ID_BYTES`], or holding an invisible
/// character ([`is_invisible`]); `None` when it is one.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!("is {} bytes, longer than {MAX_ID_BYTES}", id.len()));
    }
    id.chars().find(|&c| is_invisible(c)).map(|c| {
        format!(
            "holds U+{:04X}, a control, space or invisible character",
            u32::from(c)
        )
    })
}

/// Why `id` is not a store id: an id problem, or a reserved name ([`RESERVED_STORE_IDS`]).
pub fn store_id_problem(id: &str) -> Option<String> {
    id_problem(id).or_else(|| {
        RESERVED_STORE_IDS
            .iter()
            .any(|reserved| id.eq_ignore_ascii_case(reserved))
            .then(|| "is a reserved name".to_owned())
    })
}

fn id(field: &'static str, value: &str) -> Result<(), InvalidEvent> {
    match id_problem(value) {
        Some(problem) => Err(invalid(field, problem)),
        None => Ok(()),
    }
}

fn text(field: &'static str, value: &str) -> Result<(), InvalidEvent> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes, longer than {MAX_TEXT_BYTES}", value.len()),
        ));
    }
    Ok(())
}

fn within(field: &'static str, value: i64, low: i64, high: i64) -> Result<(), InvalidEvent> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, format!("{value} is outside {low}..={high}")))
    }
}

fn time(field: &'static str, value: i64) -> Result<(), InvalidEvent> {
    if (MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{value} is outside 2000-01-01 (inclusive) to 2100-01-01 (exclusive) in ms since the epoch"
            ),
        ))
    }
}

fn currency(field: &'static str, code: &str) -> Result<(), InvalidEvent> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{code:?} is not an ISO-4217 code (three upper-case letters)"),
        ))
    }
}

fn common(event_id: &str, store_id: &str, occurred_at: i64) -> Result<(), InvalidEvent> {
    id("event_id", event_id)?;
    if let Some(problem) = store_id_problem(store_id) {
        return Err(invalid("store_id", problem));
    }
    time("occurred_at", occurred_at)
}

fn order_placed(e: &OrderPlaced) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    id("order_id", e.order_id.as_str())?;
    text("customer_id", &e.customer_id)?;
    text("customer_name", &e.customer_name)?;
    currency("currency", &e.currency)?;
    if e.lines.is_empty() {
        return Err(invalid("lines", "an order has at least one line"));
    }
    if e.lines.len() > MAX_LINES {
        return Err(invalid(
            "lines",
            format!("{} lines, more than {MAX_LINES}", e.lines.len()),
        ));
    }
    for line in &e.lines {
        id("lines.sku", line.sku.as_str())?;
        text("lines.name", &line.name)?;
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return Err(invalid(
                "lines.quantity",
                format!("{} is outside 1..={MAX_QUANTITY}", line.quantity),
            ));
        }
        within(
            "lines.unit_price_minor",
            line.unit_price_minor,
            0,
            MAX_AMOUNT_MINOR,
        )?;
    }
    within("total_minor", e.total_minor, 0, MAX_AMOUNT_MINOR)
}

fn order_cancelled(e: &OrderCancelled) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    id("order_id", e.order_id.as_str())?;
    text("reason", &e.reason)?;
    currency("currency", &e.currency)?;
    within("total_minor", e.total_minor, 0, MAX_AMOUNT_MINOR)?;
    time("order_placed_at", e.order_placed_at)?;
    if e.order_placed_at > e.occurred_at {
        return Err(invalid(
            "order_placed_at",
            "must not be after the cancellation",
        ));
    }
    Ok(())
}

fn stock_changed(e: &StockChanged) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    id("sku", e.sku.as_str())?;
    text("name", &e.name)?;
    within("new_level", e.new_level, -MAX_STOCK_LEVEL, MAX_STOCK_LEVEL)?;
    within("delta", e.delta, -MAX_STOCK_LEVEL, MAX_STOCK_LEVEL)
}

fn session_seen(e: &SessionSeen) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    id("session_id", &e.session_id)?;
    match &e.user_id {
        Some(user) => id("user_id", user),
        None => Ok(()),
    }
}

impl Event {
    /// Checks the rules the schema cannot express; the first broken one is returned.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        match self {
            Event::OrderPlaced(e) => order_placed(e),
            Event::OrderCancelled(e) => order_cancelled(e),
            Event::StockChanged(e) => stock_changed(e),
            Event::SessionSeen(e) => session_seen(e),
        }
    }
}

/// The event-time guard: an event dated more than `max_skew_ms` after "now" is refused
/// (and dead-lettered), so it never becomes a store's "now". "Now" is the record's Kafka
/// timestamp; a record without one (`None`, or a time before 2000 such as CreateTime −1)
/// is judged against the newest timestamp of the records before it in its partition
/// (`partition_newest_ms`), and refused as `no_timestamp` when its partition has had none.
/// Both travel with the partition, so every replica and every replay decides the same.
/// A cancellation's `order_placed_at` is held to the same bound.
pub fn check_event_time(
    event: &Event,
    record_time_ms: Option<i64>,
    partition_newest_ms: Option<i64>,
    max_skew_ms: i64,
) -> Result<(), DecodeError> {
    let Some(reference_ms) = usable_timestamp(record_time_ms).or(partition_newest_ms) else {
        return Err(DecodeError::NoTimestamp);
    };
    let event_time_ms = match event {
        Event::OrderCancelled(c) => c.occurred_at.max(c.order_placed_at),
        other => other.occurred_at(),
    };
    let ahead_ms = event_time_ms.saturating_sub(reference_ms);
    if ahead_ms > max_skew_ms {
        return Err(DecodeError::EventTimeInFuture {
            event_time_ms,
            record_time_ms: reference_ms,
            ahead_ms,
            max_skew_ms,
        });
    }
    Ok(())
}

/// A record timestamp the guard can judge by: one inside the accepted event times (a
/// missing timestamp, CreateTime −1 or a clock at 1970 is none).
pub fn usable_timestamp(record_time_ms: Option<i64>) -> Option<i64> {
    record_time_ms.filter(|t| (MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Channel, OrderLine};

    fn order() -> OrderPlaced {
        OrderPlaced {
            event_id: "e1".into(),
            store_id: "store-berlin".into(),
            occurred_at: 1_700_000_000_000,
            order_id: "o1".into(),
            customer_id: "c1".into(),
            customer_name: "Ada".into(),
            lines: vec![OrderLine {
                sku: "BER-0001".into(),
                name: "Hoodie".into(),
                quantity: 2,
                unit_price_minor: 4_999,
            }],
            total_minor: 9_998,
            currency: "EUR".into(),
            channel: Channel::Web,
        }
    }

    #[test]
    fn a_well_formed_order_is_valid() {
        assert_eq!(Event::OrderPlaced(order()).validate(), Ok(()));
    }

    #[test]
    fn lower_case_or_long_currency_codes_are_rejected() {
        for code in ["eur", "EURO", "", "E1R"] {
            let mut o = order();
            o.currency = code.into();
            let err = Event::OrderPlaced(o)
                .validate()
                .expect_err("a bad currency must be rejected");
            assert_eq!(err.field, "currency");
        }
    }

    #[test]
    fn an_order_without_lines_or_with_a_zero_quantity_is_rejected() {
        let mut o = order();
        o.lines.clear();
        assert_eq!(
            Event::OrderPlaced(o).validate().map_err(|e| e.field),
            Err("lines")
        );
        let mut o = order();
        o.lines[0].quantity = 0;
        assert_eq!(
            Event::OrderPlaced(o).validate().map_err(|e| e.field),
            Err("lines.quantity")
        );
    }

    #[test]
    fn a_cancellation_before_its_order_is_rejected() {
        let c = OrderCancelled {
            event_id: "e2".into(),
            store_id: "store-berlin".into(),
            occurred_at: 1_700_000_000_000,
            order_id: "o1".into(),
            order_placed_at: 1_700_000_000_001,
            total_minor: 100,
            currency: "EUR".into(),
            reason: "customer".into(),
        };
        assert_eq!(
            Event::OrderCancelled(c).validate().map_err(|e| e.field),
            Err("order_placed_at")
        );
    }

    #[test]
    fn an_event_before_the_epoch_is_rejected() {
        let s = SessionSeen {
            event_id: "e3".into(),
            store_id: "store-berlin".into(),
            occurred_at: 0,
            session_id: "s1".into(),
            user_id: None,
        };
        assert_eq!(
            Event::SessionSeen(s).validate().map_err(|e| e.field),
            Err("occurred_at")
        );
    }
}
