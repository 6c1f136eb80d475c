//! storepulse's functional core: everything that decides a number or a byte a client
//! receives, with no I/O, no clock and no randomness of its own. The shell (the
//! `storepulse` crate: Kafka, PostgreSQL, HTTP) feeds it records, times and requests.
//!
//! This crate's `Cargo.toml` is the purity rule: it has no async runtime, no Kafka, SQL or
//! HTTP dependency, so the compiler refuses any I/O here.
//!
//! # Layout
//!
//! - [`events`]: the event types, Avro schemas (`schemas/`) and the codec.
//! - [`aggregate`]: the materialized view: `State::apply`, positions, JSON views, deltas.
//! - [`checkpoint`]: the checkpoint format: a state and its position as versioned bytes.
//! - [`live`]: the live stream: frames, the frame log, SSE encoding, the resume rules.
//! - [`record`]: the record path every reader shares: decode, guard, limits, apply.
//! - [`scenario`]: the deterministic flash-sale generator.

pub mod aggregate;
pub mod checkpoint;
pub mod cluster;
pub mod events;
pub mod live;
pub mod record;
pub mod scenario;
