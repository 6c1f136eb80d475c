//! Example events, one per kind, with fixed values: the content of the encoded fixtures in
//! `schemas/`, and the input of the codec's tests and benchmarks.
//!
//! Pure data; changing a value here breaks the fixtures on purpose.

use super::{
    Channel, Event, OrderCancelled, OrderLine, OrderPlaced, SessionSeen, StockChangeReason,
    StockChanged,
};

/// 2026-11-27T10:00:00Z, the event time of the samples.
pub const SAMPLE_TIME: i64 = 1_795_773_600_000;

/// A three-line order in euros.
pub fn order_placed() -> OrderPlaced {
    OrderPlaced {
        event_id: "6f1c2a9e-0b7d-4c51-9a43-1d2e3f405061".into(),
        store_id: "store-berlin".into(),
        occurred_at: SAMPLE_TIME,
        order_id: "ord-berlin-000001".into(),
        customer_id: "cust-4711".into(),
        customer_name: "Ada Lovelace".into(),
        lines: vec![
            OrderLine {
                sku: "BER-0001".into(),
                name: "Merino Hoodie".into(),
                quantity: 2,
                unit_price_minor: 5_999,
            },
            OrderLine {
                sku: "BER-0017".into(),
                name: "Canvas Tote".into(),
                quantity: 1,
                unit_price_minor: 1_499,
            },
            OrderLine {
                sku: "BER-0042".into(),
                name: "Wool Socks".into(),
                quantity: 3,
                unit_price_minor: 899,
            },
        ],
        total_minor: 16_194,
        currency: "EUR".into(),
        channel: Channel::App,
    }
}

/// The cancellation of [`order_placed`].
pub fn order_cancelled() -> OrderCancelled {
    OrderCancelled {
        event_id: "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d".into(),
        store_id: "store-berlin".into(),
        occurred_at: SAMPLE_TIME + 60_000,
        order_id: "ord-berlin-000001".into(),
        order_placed_at: SAMPLE_TIME,
        total_minor: 16_194,
        currency: "EUR".into(),
        reason: "customer request".into(),
    }
}

/// A sale that leaves a SKU at 7 units.
pub fn stock_changed() -> StockChanged {
    StockChanged {
        event_id: "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a".into(),
        store_id: "store-berlin".into(),
        occurred_at: SAMPLE_TIME + 5,
        sku: "BER-0001".into(),
        name: "Merino Hoodie".into(),
        new_level: 7,
        delta: -2,
        reason: StockChangeReason::Sale,
    }
}

/// A signed-in session.
pub fn session_seen() -> SessionSeen {
    SessionSeen {
        event_id: "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b".into(),
        store_id: "store-berlin".into(),
        occurred_at: SAMPLE_TIME - 1_000,
        session_id: "sess-8c1f".into(),
        user_id: Some("cust-4711".into()),
    }
}

/// One sample of every kind, in [`super::EventKind::ALL`] order.
pub fn all() -> Vec<Event> {
    vec![
        Event::OrderPlaced(order_placed()),
        Event::OrderCancelled(order_cancelled()),
        Event::StockChanged(stock_changed()),
        Event::SessionSeen(session_seen()),
    ]
}
