//! Frames: a delta serialised once per scope ([`FrameBuilder`]); the bounded log that
//! holds them is `log.rs`.
//!
//! Every frame is serialised once and shared by every subscriber; the ingest thread builds
//! them, the HTTP layer writes them.

use super::delta::Delta;
use super::sse::{Encoded, sse_event};
use crate::aggregate::{Changes, Layout, State, Views};
use crate::events::StoreId;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// One delta, encoded once per scope.
#[derive(Debug)]
pub struct Frame {
    /// Sequence number in this process (increasing by one, the first is 1).
    pub seq: u64,
    /// The encoded position after the frame: its SSE id.
    pub id: String,
    /// The whole `event: delta` for all-stores subscribers.
    pub all: Encoded,
    /// The `event: delta` of each store that changed, for store-scoped subscribers.
    pub per_store: HashMap<StoreId, Encoded>,
    /// Bytes held, for the log's bound: the encoded events plus the typed delta, which is
    /// counted as the length of its JSON (each store's part and the rollup's, as serialised
    /// here once), so the bound covers what a frame keeps alive, not its wire bytes only.
    pub size: usize,
    /// When it was built, in milliseconds of the builder's monotonic clock (for the log's
    /// age bound; this module reads no clock).
    pub built_ms: u64,
    /// The delta itself, for the spans that conflate it.
    pub delta: Arc<Delta>,
}

impl Frame {
    /// The bytes a subscriber of `scope` receives, if the frame concerns it.
    pub fn bytes_for(&self, scope: Option<&StoreId>) -> Option<&Encoded> {
        match scope {
            None => Some(&self.all),
            Some(store) => self.per_store.get(store),
        }
    }
}

/// Builds the frames of one process: numbers them and keeps the views current, so a frame
/// carries only the lists that changed since the views before it. Every frame must be built
/// here, in order, for those to be what clients hold.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    seq: u64,
    views: Option<Views>,
}

impl FrameBuilder {
    /// A builder whose first frame is number 1 and whose scopes have been sent nothing.
    pub fn new() -> Self {
        FrameBuilder::default()
    }

    /// The views of `state` as of the last frame built: `state` must be what every frame so
    /// far was built from, with no change since the last (a snapshot's views, so its
    /// position is the last frame's id). Built by one scan on first use.
    pub fn views(&mut self, state: &State) -> &Views {
        self.views.get_or_insert_with(|| Views::new(state))
    }

    /// Sequence number of the last frame built (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The frame of `changes` (not empty) in `state`: the delta serialised once for all
    /// stores and once per changed store. `built_ms` is the caller's monotonic clock (the
    /// log's age bound).
    pub fn build(
        &mut self,
        state: &State,
        layout: &Layout,
        changes: &Changes,
        built_ms: u64,
    ) -> Frame {
        self.seq += 1;
        let views = match &mut self.views {
            Some(views) => {
                views.update(state, changes.stores.keys());
                views
            }
            None => self.views.insert(Views::new(state)),
        };
        let mut delta = Delta::of(views, state, layout, changes);
        delta.omit_unchanged_lists(views);
        Frame::of_delta(self.seq, delta, built_ms)
    }
}

impl Frame {
    /// Frame number `seq` of `delta` (its lists already trimmed to what clients lack): the
    /// delta serialised once for all stores and once per changed store. `built_ms` is the
    /// builder's monotonic clock (the log's age bound).
    pub fn of_delta(seq: u64, delta: Delta, built_ms: u64) -> Frame {
        // Each store's part is serialised once and spliced into both its own event and the
        // all-stores one (the same bytes serde would write for the whole delta).
        let parts: Vec<(&String, Vec<u8>)> = delta
            .stores
            .iter()
            .map(|(id, part)| (id, to_json(part)))
            .collect();
        let rollup = delta.all_stores.as_ref().map(to_json);
        // The all-stores scope gets the rollup only: its bytes do not grow with the stores
        // that changed.
        let all = Encoded::new(splice_delta(&delta, [], rollup.as_deref()));
        let per_store: HashMap<StoreId, Encoded> = parts
            .iter()
            .map(|(id, json)| {
                let one = splice_delta(&delta, [(id.as_str(), json.as_slice())], None);
                (StoreId((*id).clone()), Encoded::new(one))
            })
            .collect();
        let typed = parts.iter().map(|(_, json)| json.len()).sum::<usize>()
            + rollup.as_ref().map_or(0, Vec::len);
        let size = all.len() + per_store.values().map(Encoded::len).sum::<usize>() + typed;
        Frame {
            seq,
            id: delta.position.clone(),
            all,
            per_store,
            size,
            built_ms,
            delta: Arc::new(delta),
        }
    }
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| panic!("a delta always serialises: {e}"))
}

/// The `event: delta` of `delta`'s position and time with these stores' parts (already
/// JSON) and rollup: byte for byte what [`encode_delta`] writes for the same delta.
fn splice_delta<'a>(
    delta: &Delta,
    stores: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    rollup: Option<&[u8]>,
) -> Bytes {
    let mut json = Vec::with_capacity(256);
    json.extend_from_slice(b"{\"position\":");
    json.extend(to_json(&delta.position));
    json.extend_from_slice(b",\"as_of\":");
    json.extend(to_json(&delta.as_of));
    json.extend_from_slice(b",\"as_of_ms\":");
    json.extend(to_json(&delta.as_of_ms));
    if let (Some(count), Some(_)) = (delta.store_count, rollup) {
        json.extend_from_slice(b",\"store_count\":");
        json.extend(to_json(&count));
    }
    // `stores` is left out when empty, as serde leaves it out of a `Delta`.
    let mut any = false;
    for (id, part) in stores {
        json.extend_from_slice(if any { b"," } else { b",\"stores\":{" });
        any = true;
        json.extend(to_json(&id));
        json.push(b':');
        json.extend_from_slice(part);
    }
    if any {
        json.push(b'}');
    }
    if let Some(rollup) = rollup {
        json.extend_from_slice(b",\"all_stores\":");
        json.extend_from_slice(rollup);
    }
    json.push(b'}');
    Bytes::from(sse_event("delta", Some(&delta.position), &json))
}

/// The `event: delta` of `delta`, id = its position.
pub(super) fn encode_delta(delta: &Delta) -> Bytes {
    let json =
        serde_json::to_vec(delta).unwrap_or_else(|e| panic!("a delta always serialises: {e}"));
    Bytes::from(sse_event("delta", Some(&delta.position), &json))
}
