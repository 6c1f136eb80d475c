//! The fan-out: what the HTTP side reads to serve live streams, fed through one narrow
//! interface. [`Hub::publish_frame`] and [`Hub::publish_snapshot`] are how frames and
//! shared snapshot events come in (the ingest engine calls them today; a reader of a frames
//! topic can tomorrow); streams open from the hub when the resume rules
//! (`live::start`) allow it without the state, and otherwise ask the state's owner with a
//! [`Request`] (`owner.rs`).

mod hub;
mod owner;
mod serving;

pub use hub::{Hub, SharedSnapshot, Subscription};
pub use owner::{Request, SnapshotJson, Status, Subscribed};
pub use serving::{Held, Parked, Serving};
