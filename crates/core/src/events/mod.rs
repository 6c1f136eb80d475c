//! The event model: typed domain events as upstream commerce systems produce them, and the
//! Avro codec that turns Kafka record bytes into them (see [`codec`]).
//!
//! Pure core: no I/O, no clock, no randomness. Times arrive inside the events as event time
//! (`occurred_at`, milliseconds since the Unix epoch). Money is always integer minor units
//! with an ISO-4217 currency, never a float.
//!
//! The Rust types mirror the Avro schemas in `schemas/` field for field; the schema files
//! are the contract, these types are how we read it.

pub mod codec;
pub mod registry;
pub mod samples;
pub mod validate;

pub use codec::{Codec, ConfluentIds, DecodeError, EncodeError, SchemaId, SchemaVersion};
pub use registry::{Refusal, RegisteredSchema};
pub use validate::{
    InvalidEvent, check_event_time, id_problem, store_id_problem, usable_timestamp,
};

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        // Hash, Eq and Ord are the inner string's, so sets of ids can be searched by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A store (shop front) id, e.g. `store-berlin`.
    StoreId
);
string_newtype!(
    /// A stock-keeping unit: one sellable product variant of one store.
    Sku
);
string_newtype!(
    /// An order id, the key of the `orders` topic.
    OrderId
);

/// Event time: milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type EventTimeMillis = i64;

/// The three topics storepulse reads, by role. Their names are configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TopicRole {
    /// `OrderPlaced`, `OrderCancelled`; key: order id.
    Orders,
    /// `StockChanged`; key: SKU.
    Inventory,
    /// `SessionSeen`; key: session id.
    Activity,
}

impl TopicRole {
    /// Every role, in a fixed order.
    pub const ALL: [TopicRole; 3] = [TopicRole::Orders, TopicRole::Inventory, TopicRole::Activity];

    /// The role's place in [`TopicRole::ALL`].
    pub fn index(self) -> usize {
        match self {
            TopicRole::Orders => 0,
            TopicRole::Inventory => 1,
            TopicRole::Activity => 2,
        }
    }

    /// The role's name (`orders`, `inventory`, `activity`): metric labels, record refs.
    pub fn name(self) -> &'static str {
        match self {
            TopicRole::Orders => "orders",
            TopicRole::Inventory => "inventory",
            TopicRole::Activity => "activity",
        }
    }
}

/// Where an order was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    /// The web storefront.
    Web,
    /// The mobile app.
    App,
    /// A point of sale in a physical shop.
    Pos,
    /// A third-party marketplace.
    Marketplace,
    /// Anything else (also the schema's default for symbols added later: a writer's symbol
    /// we do not know is read as this, as Avro's resolution rules say).
    #[serde(other)]
    Other,
}

/// Why a SKU's stock level changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StockChangeReason {
    /// Units sold.
    Sale,
    /// Units received.
    Restock,
    /// Units returned or released by a cancellation.
    Return,
    /// A count correction (also used for the initial level of a SKU, and the schema's
    /// default: a writer's symbol we do not know is read as this).
    #[serde(other)]
    Correction,
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The SKU ordered.
    pub sku: Sku,
    /// Product name at the time of the order.
    pub name: String,
    /// Units, > 0.
    pub quantity: i32,
    /// Price of one unit in minor units, >= 0.
    pub unit_price_minor: i64,
}

/// A customer placed an order. Topic: orders; key: `order_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Unique id of this event; a repeated id is a repeated delivery.
    pub event_id: String,
    /// The store the order belongs to.
    pub store_id: StoreId,
    /// Event time.
    pub occurred_at: EventTimeMillis,
    /// The order.
    pub order_id: OrderId,
    /// Customer id.
    pub customer_id: String,
    /// Customer display name.
    pub customer_name: String,
    /// At least one line.
    pub lines: Vec<OrderLine>,
    /// What the customer pays, minor units of `currency` (after discounts and shipping).
    pub total_minor: i64,
    /// ISO-4217 code.
    pub currency: String,
    /// Where it was placed.
    pub channel: Channel,
}

/// An order was cancelled. Topic: orders; key: `order_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Unique id of this event.
    pub event_id: String,
    /// The store the order belongs to.
    pub store_id: StoreId,
    /// Event time of the cancellation.
    pub occurred_at: EventTimeMillis,
    /// The cancelled order.
    pub order_id: OrderId,
    /// Event time of the original `OrderPlaced`, so the right day is corrected.
    pub order_placed_at: EventTimeMillis,
    /// Total of the cancelled order, minor units.
    pub total_minor: i64,
    /// ISO-4217 code.
    pub currency: String,
    /// Free text.
    pub reason: String,
}

/// The inventory service changed a SKU's stock. Topic: inventory; key: `sku`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockChanged {
    /// Unique id of this event.
    pub event_id: String,
    /// The store whose stock changed.
    pub store_id: StoreId,
    /// Event time.
    pub occurred_at: EventTimeMillis,
    /// The SKU.
    pub sku: Sku,
    /// Product name.
    pub name: String,
    /// The level after the change; authoritative; negative means oversold.
    pub new_level: i64,
    /// The change that led to `new_level`.
    pub delta: i64,
    /// Why.
    pub reason: StockChangeReason,
}

/// A storefront session was active. Topic: activity; key: `session_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSeen {
    /// Unique id of this event.
    pub event_id: String,
    /// The store visited.
    pub store_id: StoreId,
    /// Event time.
    pub occurred_at: EventTimeMillis,
    /// The session.
    pub session_id: String,
    /// The signed-in user, if any.
    pub user_id: Option<String>,
}

/// Any event storepulse understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// See [`OrderPlaced`].
    OrderPlaced(OrderPlaced),
    /// See [`OrderCancelled`].
    OrderCancelled(OrderCancelled),
    /// See [`StockChanged`].
    StockChanged(StockChanged),
    /// See [`SessionSeen`].
    SessionSeen(SessionSeen),
}

/// The kinds of [`Event`], one per Avro record schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `storepulse.events.OrderPlaced`
    OrderPlaced,
    /// `storepulse.events.OrderCancelled`
    OrderCancelled,
    /// `storepulse.events.StockChanged`
    StockChanged,
    /// `storepulse.events.SessionSeen`
    SessionSeen,
}

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; 4] = [
        EventKind::OrderPlaced,
        EventKind::OrderCancelled,
        EventKind::StockChanged,
        EventKind::SessionSeen,
    ];

    /// The folder name under `schemas/` and the name used in configuration.
    pub fn schema_name(self) -> &'static str {
        match self {
            EventKind::OrderPlaced => "order_placed",
            EventKind::OrderCancelled => "order_cancelled",
            EventKind::StockChanged => "stock_changed",
            EventKind::SessionSeen => "session_seen",
        }
    }

    /// The topic this kind is produced to.
    pub fn topic_role(self) -> TopicRole {
        match self {
            EventKind::OrderPlaced | EventKind::OrderCancelled => TopicRole::Orders,
            EventKind::StockChanged => TopicRole::Inventory,
            EventKind::SessionSeen => TopicRole::Activity,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.schema_name())
    }
}

impl Event {
    /// The kind of this event.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::OrderPlaced(_) => EventKind::OrderPlaced,
            Event::OrderCancelled(_) => EventKind::OrderCancelled,
            Event::StockChanged(_) => EventKind::StockChanged,
            Event::SessionSeen(_) => EventKind::SessionSeen,
        }
    }

    /// The unique id of this event.
    pub fn event_id(&self) -> &str {
        match self {
            Event::OrderPlaced(e) => &e.event_id,
            Event::OrderCancelled(e) => &e.event_id,
            Event::StockChanged(e) => &e.event_id,
            Event::SessionSeen(e) => &e.event_id,
        }
    }

    /// The store the event belongs to.
    pub fn store_id(&self) -> &StoreId {
        match self {
            Event::OrderPlaced(e) => &e.store_id,
            Event::OrderCancelled(e) => &e.store_id,
            Event::StockChanged(e) => &e.store_id,
            Event::SessionSeen(e) => &e.store_id,
        }
    }

    /// Event time.
    pub fn occurred_at(&self) -> EventTimeMillis {
        match self {
            Event::OrderPlaced(e) => e.occurred_at,
            Event::OrderCancelled(e) => e.occurred_at,
            Event::StockChanged(e) => e.occurred_at,
            Event::SessionSeen(e) => e.occurred_at,
        }
    }

    /// The Kafka record key: order id, SKU or session id. Keys keep each order's, each
    /// SKU's and each session's events in one partition, in order.
    pub fn key(&self) -> &str {
        match self {
            Event::OrderPlaced(e) => e.order_id.as_str(),
            Event::OrderCancelled(e) => e.order_id.as_str(),
            Event::StockChanged(e) => e.sku.as_str(),
            Event::SessionSeen(e) => &e.session_id,
        }
    }
}
