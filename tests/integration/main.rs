//! Integration tests against the real local stack (`scripts/stack up`): a real Kafka broker
//! and a real PostgreSQL. One test binary; every test uses its own topics.
//!
//! Connection settings come from `STOREPULSE_KAFKA_BROKERS` and `STOREPULSE_DATABASE_URL`,
//! defaulting to the local stack's addresses. `scripts/test` starts the stack first.

mod architecture;
mod cli;
mod cluster;
mod dead_letters;
mod helpers;
mod limits;
mod postgres;
mod prometheus;
mod registry;
mod replay;
mod route;
mod serve;
mod simulate;
mod sse;
mod stack;
mod stream;
mod traces;
