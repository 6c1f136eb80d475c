//! The live stream's core: everything that decides which bytes a dashboard receives, with
//! no I/O. The ingest thread builds frames here; the HTTP layer only writes what this
//! module chose.
//!
//! | file | owns |
//! |---|---|
//! | `delta.rs` | [`Delta`]: what changed since a scope's previous frame, conflation (`absorb`), lists left out when unchanged |
//! | `frame.rs` | [`Frame`] (a delta serialised once per scope), [`FrameBuilder`] |
//! | `log.rs` | the bounded [`FrameLog`] and its shared catch-up |
//! | `span.rs` | [`Span`]: aligned spans of frames conflated once per scope, the [`Piece`]s a catch-up writes |
//! | `resume.rs` | [`start`]: where a stream opens (the five resume rules) as one pure function |
//! | `sse.rs` | the SSE wire format, shared compression ([`Encoded`]) |
//! | `client.rs` | a client's side: an SSE parser and the merge rules (tests and benches use it) |

pub mod client;
mod delta;
mod frame;
mod log;
mod resume;
mod span;
mod sse;

pub use delta::{Delta, SkuListsDelta, StoreDelta, upsert_orders};
pub use frame::{Frame, FrameBuilder};
pub use log::{FrameLog, LogLimits};
pub use resume::{Opening, Owner, SNAPSHOT_REUSE_MS, Shared, Start, start};
pub use span::{Piece, Span};
pub use sse::{Encoded, Encoding, GZIP_HEADER, SnapshotEvent, sse_event};
