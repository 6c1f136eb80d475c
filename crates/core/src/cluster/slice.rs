//! An aggregator's side: how one slice's state becomes the frames and changelog records it
//! publishes. A [`SliceBuilder`] keeps the slice's views (as the one-process frame builder
//! does) and builds each frame's store deltas against the views the previous frame left,
//! which is exactly what every edge holds, because every frame of a slice continues from
//! the previous one (ADR 0007, decisions 8 and 9).

use super::SlicePosition;
use super::wire::{SliceFrame, SliceHead};
use crate::aggregate::view::StoreView;
use crate::aggregate::{Changes, State, Views};
use crate::events::StoreId;
use crate::live::{Delta, StoreDelta};
use std::sync::Arc;

/// Builds one slice's frames.
#[derive(Debug)]
pub struct SliceBuilder {
    slice: i32,
    views: Views,
    /// The slice's position after the last frame built (or continued from).
    last: SlicePosition,
}

impl SliceBuilder {
    /// A builder continuing the frames already published for `slice`: `state` must be at
    /// the last published frame's position (its frames start there).
    pub fn continuing(slice: i32, state: &State) -> SliceBuilder {
        SliceBuilder {
            slice,
            views: Views::new(state),
            last: SlicePosition::of(state.position(), slice),
        }
    }

    /// A builder for a slice nothing was ever published for, and its first frame: whole
    /// (every store of `state`, each whole), for readers that hold nothing of the slice.
    pub fn whole(slice: i32, state: &State) -> (SliceBuilder, SliceFrame) {
        let builder = SliceBuilder::continuing(slice, state);
        let stores = builder
            .views
            .stores()
            .map(|(id, view)| (id.to_string(), StoreDelta::between(None, view)))
            .collect();
        let frame = SliceFrame {
            slice,
            from: None,
            to: builder.last,
            head: builder.head(state),
            stores,
        };
        (builder, frame)
    }

    /// The frame of `changes` (applied to `state` since the last frame): each changed
    /// store's delta and the slice's new head.
    pub fn build(&mut self, state: &State, changes: &Changes) -> SliceFrame {
        self.views.update(state, changes.stores.keys());
        let stores = Delta::store_deltas(&self.views, changes);
        let from = self.last;
        self.last = SlicePosition::of(state.position(), self.slice);
        SliceFrame {
            slice: self.slice,
            from: Some(from),
            to: self.last,
            head: self.head(state),
            stores,
        }
    }

    /// The slice's head as of the last frame (`state` must not have changed since).
    pub fn head(&self, state: &State) -> SliceHead {
        SliceHead {
            slice: self.slice,
            position: self.last,
            store_count: state.stores().len() as u64,
            newest_event_time: state.newest_event_time(),
            part: self.views.part().clone(),
        }
    }

    /// A store's view as of the last frame (what the changelog holds for it).
    pub fn view(&self, store: &StoreId) -> Option<&Arc<StoreView>> {
        self.views.store(store)
    }

    /// The slice's position after the last frame.
    pub fn position(&self) -> SlicePosition {
        self.last
    }
}
