//! The roles of a cluster (docs/adr/0007-scale-out-on-kafka.md): `storepulse aggregator`
//! (owns slices of whole stores through a consumer group and publishes their frames in
//! transactions) and `storepulse edge` (reads those frames and serves dashboards exactly
//! as `serve` does). The pure halves are `storepulse_core::cluster`; this module is their
//! Kafka and process side.
//!
//! | file | owns |
//! |---|---|
//! | `topics.rs` | the cluster's own topics (created when missing) and reading the changelog |
//! | `slice.rs` | one slice on an aggregator: its state, transactional producer, checkpoints |
//! | `aggregator.rs` | the aggregator's thread: membership, the data consumer, its slices |
//! | `edge.rs` | the edge's thread: the changelog, then the frames topic, into the hub |
//! | `role.rs` | the two commands' wiring: HTTP, the thread, shutdown |

mod aggregator;
mod edge;
mod role;
mod slice;
mod topics;

pub use role::{run_aggregator, run_edge};
