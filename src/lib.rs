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
//! - [`stream`]: SSE framing, frames and the frame log.
//!
//! Imperative shell (one external system per module):
//! - [`kafka`]: the only place typed settings become rdkafka configuration.
//! - [`ingest`]: the consumer thread that owns the state; dead-letters poison records.
//! - [`checkpoint`]: the PostgreSQL checkpoint store (the only SQL).
//! - [`http`]: the axum API (the only axum code).
//! - [`simulate`]: produces a scenario to the real broker.
//! - [`config`], [`metrics`]: settings and counters.
//! - [`app`]: wires `serve` together, owns start-up and shutdown order.
//! - [`cli`]: the `storepulse` command line.

pub mod aggregate;
pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod simulate;
pub mod stream;
