//! storepulse: an event-sourced stream processor for live e-commerce operations.
//!
//! Order, inventory and activity events (Avro) flow from Kafka into exact rolling
//! aggregates; dashboards follow them live. `docs/ARCHITECTURE.md` is the map.
//!
//! # Layout
//!
//! Functional core (no I/O, no clock, no randomness of its own):
//! - [`events`]: the event types, Avro schemas (`schemas/`) and the codec.
//! - [`aggregate`]: the materialized view: `State::apply`, positions, JSON views.
//! - [`simulate::scenario`]: the deterministic flash-sale generator.
//!
//! Imperative shell (one external system per module):
//! - [`kafka`]: the only place typed settings become rdkafka configuration.
//! - [`simulate`]: produces a scenario to the real broker.
//! - [`cli`]: the `storepulse` command line.

pub mod aggregate;
pub mod cli;
pub mod events;
pub mod kafka;
pub mod simulate;
