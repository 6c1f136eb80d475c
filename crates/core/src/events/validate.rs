//! Business validation of decoded events: what Avro's types cannot say (a currency is three
//! upper-case letters, a quantity is positive, an order has lines). A record that decodes
//! but fails here is as poisonous as one that does not decode, and is dead-lettered alike.
//!
//! Pure: no I/O. Validation never rewrites an event; it accepts or names the first problem.

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

fn non_empty(field: &'static str, value: &str) -> Result<(), InvalidEvent> {
    if value.is_empty() {
        Err(invalid(field, "must not be empty"))
    } else {
        Ok(())
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
    non_empty("event_id", event_id)?;
    non_empty("store_id", store_id)?;
    if occurred_at <= 0 {
        return Err(invalid(
            "occurred_at",
            format!("{occurred_at} is not after the Unix epoch"),
        ));
    }
    Ok(())
}

fn order_placed(e: &OrderPlaced) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    non_empty("order_id", e.order_id.as_str())?;
    currency("currency", &e.currency)?;
    if e.lines.is_empty() {
        return Err(invalid("lines", "an order has at least one line"));
    }
    for line in &e.lines {
        non_empty("lines.sku", line.sku.as_str())?;
        if line.quantity <= 0 {
            return Err(invalid(
                "lines.quantity",
                format!("{} is not positive", line.quantity),
            ));
        }
        if line.unit_price_minor < 0 {
            return Err(invalid(
                "lines.unit_price_minor",
                format!("{} is negative", line.unit_price_minor),
            ));
        }
    }
    if e.total_minor < 0 {
        return Err(invalid(
            "total_minor",
            format!("{} is negative", e.total_minor),
        ));
    }
    Ok(())
}

fn order_cancelled(e: &OrderCancelled) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    non_empty("order_id", e.order_id.as_str())?;
    currency("currency", &e.currency)?;
    if e.total_minor < 0 {
        return Err(invalid(
            "total_minor",
            format!("{} is negative", e.total_minor),
        ));
    }
    if e.order_placed_at <= 0 || e.order_placed_at > e.occurred_at {
        return Err(invalid(
            "order_placed_at",
            "must be after the epoch and not after the cancellation",
        ));
    }
    Ok(())
}

fn stock_changed(e: &StockChanged) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    non_empty("sku", e.sku.as_str())
}

fn session_seen(e: &SessionSeen) -> Result<(), InvalidEvent> {
    common(&e.event_id, e.store_id.as_str(), e.occurred_at)?;
    non_empty("session_id", &e.session_id)
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

/// The event-time guard: an event dated more than `max_skew_ms` after its Kafka record's
/// timestamp is refused (and dead-lettered), so it never becomes a store's "now". The
/// timestamp travels with the record, so every replica and every replay decides the same.
/// A cancellation's `order_placed_at` is held to the same bound. A record without a
/// timestamp (`None`) is not checked.
pub fn check_event_time(
    event: &Event,
    record_time_ms: Option<i64>,
    max_skew_ms: i64,
) -> Result<(), DecodeError> {
    let Some(record_time_ms) = record_time_ms else {
        return Ok(());
    };
    let event_time_ms = match event {
        Event::OrderCancelled(c) => c.occurred_at.max(c.order_placed_at),
        other => other.occurred_at(),
    };
    let ahead_ms = event_time_ms.saturating_sub(record_time_ms);
    if ahead_ms > max_skew_ms {
        return Err(DecodeError::EventTimeInFuture {
            event_time_ms,
            record_time_ms,
            ahead_ms,
            max_skew_ms,
        });
    }
    Ok(())
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
