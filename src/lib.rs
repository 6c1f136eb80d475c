//! storepulse: an event-sourced stream processor for live e-commerce operations.
//!
//! Order, inventory and activity events (Avro) flow from Kafka into exact rolling
//! aggregates; dashboards follow them live. `docs/ARCHITECTURE.md` is the map.
//!
//! # Layout
//!
//! The functional core is the `storepulse-core` crate (`crates/core`; its dependency list
//! holds no I/O or async crate, which `tests/integration/architecture.rs` checks),
//! re-exported here:
//! - [`events`]: the event types, Avro schemas (`schemas/`) and the codec.
//! - [`aggregate`]: the materialized view: `State::apply`, positions, JSON views.
//! - [`live`]: the live stream's logic: deltas, frames, the frame log, resume rules, SSE.
//! - [`simulate::scenario`]: the deterministic flash-sale generator.
//! - `storepulse_core::checkpoint`: the checkpoint format (re-exported by [`checkpoint`]).
//!
//! Imperative shell (one external system per module):
//! - [`kafka`]: the only place typed settings become rdkafka configuration.
//! - [`ingest`]: the consumer thread and the engine that owns the state; dead letters; the
//!   lag monitor.
//! - [`fanout`]: what the HTTP side reads to serve streams (the hub) and asks of the
//!   state's owner; fed by the engine through two calls.
//! - [`checkpoint`]: the PostgreSQL checkpoint store (the only SQL) and its writer task.
//! - [`http`]: the axum API (the only axum code).
//! - [`auth`]: bearer tokens: verification, keys (HS256, public keys, JWKS), sessions.
//! - [`replay`]: `storepulse replay` and the replay stream: a past range rebuilt from Kafka.
//! - [`telemetry`]: traces (OTLP), W3C context in Kafka headers, spans.
//! - [`simulate`]: produces a scenario to the real broker.
//! - [`cluster`]: `storepulse aggregator` and `storepulse edge` (ADR 0007);
//!   [`route`]: `storepulse route`, the cluster's exactly-once re-keying stage.
//! - [`config`], [`metrics`]: settings and counters.
//! - [`tasks`]: `serve`'s task tracker, for tasks and OS threads.
//! - [`app`]: wires `serve` together, owns start-up and shutdown order.
//! - [`cli`]: the `storepulse` command line.

pub use storepulse_core::{aggregate, events, live};

pub mod app;
pub mod auth;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod log_every;
pub mod metrics;
pub mod registry;
pub mod replay;
pub mod route;
pub mod simulate;
pub mod tasks;
pub mod telemetry;
pub mod wall_clock;

#[cfg(test)]
mod tests {
    /// An error's message says its cause, and the chain of causes (what `main` prints) does
    /// not say it again.
    #[test]
    fn an_error_says_its_cause_once() {
        let cases: Vec<(anyhow::Error, &str)> = vec![
            (
                crate::replay::ReplayError::from(std::io::Error::other("disk full")).into(),
                "disk full",
            ),
            (
                crate::checkpoint::CheckpointError::from(sqlx::Error::PoolTimedOut).into(),
                "pool timed out",
            ),
            (
                crate::kafka::KafkaError::Request(rdkafka::error::KafkaError::Canceled).into(),
                "client dropped",
            ),
            (
                crate::simulate::SimulateError::from(crate::events::codec::SchemaError::Parse {
                    schema: crate::events::codec::SchemaId {
                        kind: crate::events::EventKind::OrderPlaced,
                        version: 1,
                    },
                    reason: "unexpected token".into(),
                })
                .into(),
                "unexpected token",
            ),
        ];
        for (error, cause) in cases {
            let printed = format!("{error:#}").to_lowercase();
            assert_eq!(printed.matches(cause).count(), 1, "{printed}");
        }
    }
}
