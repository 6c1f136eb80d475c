//! An edge's side: what it holds of the whole shop (each slice's head, each store's view,
//! the rollup of the slices' parts) and how a slice frame read from the frames topic
//! becomes a frame of its own log. Every edge reads the same frames in the same order
//! from the same changelog state, so every edge makes the same frames with the same ids:
//! the global position, encoded as `serve` encodes it (ADR 0007, decision 11).
//!
//! The chain rule (decision 9): a slice frame applies when it starts where the slice
//! stands here; one this edge already holds is a duplicate; any other is a gap, and the
//! caller reloads that slice from the changelog ([`Edge::reload`]).

use super::SlicePosition;
use super::wire::{SliceFrame, SliceHead};
use crate::aggregate::view::{StorePage, StoreView};
use crate::aggregate::{AggregateConfig, Layout, Part, Position, ViewsSnapshot, rollup_of};
use crate::events::StoreId;
use crate::live::{Delta, Frame, StoreDelta};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What an edge holds.
#[derive(Debug)]
pub struct Edge {
    layout: Layout,
    config: Arc<AggregateConfig>,
    slices: BTreeMap<i32, SliceHead>,
    stores: BTreeMap<StoreId, Arc<StoreView>>,
    rollup: Arc<StoreView>,
    /// The rollup as the last frame (or load) left it: what its clients hold.
    previous_rollup: Option<Arc<StoreView>>,
    position: Position,
    seq: u64,
}

/// What became of a slice frame.
#[derive(Debug)]
pub enum Applied {
    /// It applied: the edge's frame of it, the next in its log.
    Frame(Frame),
    /// This edge already holds it (a frame republished by a restarted owner).
    Duplicate,
    /// It does not continue what this edge holds of its slice: reload the slice.
    Gap {
        /// Where the slice stands here (`None`: nothing held).
        held: Option<SlicePosition>,
        /// Where the frame starts.
        from: Option<SlicePosition>,
    },
}

impl Edge {
    /// An edge that holds nothing yet, for topics of `layout`; `config` gives the rollup's
    /// list lengths and the time zones its snapshot lists.
    pub fn new(layout: Layout, config: Arc<AggregateConfig>) -> Edge {
        let rollup = Arc::new(rollup_of(&[], config.list_limit));
        Edge {
            layout,
            config,
            slices: BTreeMap::new(),
            stores: BTreeMap::new(),
            previous_rollup: Some(Arc::clone(&rollup)),
            rollup,
            position: Position::default(),
            seq: 0,
        }
    }

    /// Takes a slice as the changelog holds it (its head and its stores' views), replacing
    /// whatever was held of it, without a frame: at start, before any client.
    pub fn load(&mut self, head: SliceHead, views: impl IntoIterator<Item = (StoreId, StoreView)>) {
        self.replace(head, views);
        self.previous_rollup = Some(Arc::clone(&self.rollup));
    }

    /// Takes a slice again from the changelog while serving (after a gap): the frame that
    /// brings clients to it carries each of the slice's stores whole.
    pub fn reload(
        &mut self,
        head: SliceHead,
        views: impl IntoIterator<Item = (StoreId, StoreView)>,
        built_ms: u64,
    ) -> Frame {
        let stores = self.replace(head, views);
        let deltas = stores
            .iter()
            .filter_map(|id| {
                Some((
                    id.to_string(),
                    StoreDelta::between(None, self.stores.get(id)?),
                ))
            })
            .collect();
        self.frame(deltas, built_ms)
    }

    /// The ids of the stores taken.
    fn replace(
        &mut self,
        head: SliceHead,
        views: impl IntoIterator<Item = (StoreId, StoreView)>,
    ) -> Vec<StoreId> {
        let mut taken = Vec::new();
        for (id, view) in views {
            self.stores.insert(id.clone(), Arc::new(view));
            taken.push(id);
        }
        head.position.set_in(&mut self.position, head.slice);
        self.slices.insert(head.slice, head);
        self.roll_up();
        taken
    }

    /// Applies a slice frame by the chain rule.
    pub fn apply(&mut self, frame: &SliceFrame, built_ms: u64) -> Applied {
        let held = self.slices.get(&frame.slice).map(|h| h.position);
        let continues = match (frame.from, held) {
            (Some(from), Some(held)) => from == held,
            // A whole frame: to a slice held, only if it does not go back.
            (None, Some(held)) => frame.to.covers(&held) && frame.to != held,
            (None, None) => true,
            (Some(_), None) => false,
        };
        if !continues {
            return match held {
                Some(held) if held.covers(&frame.to) => Applied::Duplicate,
                _ => Applied::Gap {
                    held,
                    from: frame.from,
                },
            };
        }
        for (id, delta) in &frame.stores {
            let id = StoreId(id.clone());
            let view = delta.apply_to(self.stores.get(&id).map(|v| &**v));
            self.stores.insert(id, Arc::new(view));
        }
        frame.to.set_in(&mut self.position, frame.slice);
        self.slices.insert(frame.slice, frame.head.clone());
        self.roll_up();
        Applied::Frame(self.frame(frame.stores.clone(), built_ms))
    }

    fn roll_up(&mut self) {
        let parts: Vec<&Part> = self.slices.values().map(|h| &h.part).collect();
        self.rollup = Arc::new(rollup_of(&parts, self.config.list_limit));
    }

    /// The next frame of this edge's log: these stores' deltas and the rollup's, from the
    /// rollup the previous frame left (what its clients hold).
    fn frame(&mut self, stores: BTreeMap<String, StoreDelta>, built_ms: u64) -> Frame {
        let before = self.previous_rollup.take();
        self.seq += 1;
        let newest = self.newest_event_time();
        let delta = Delta {
            position: self.layout.encode(&self.position),
            as_of: (newest > 0).then(|| crate::aggregate::view::rfc3339(newest)),
            as_of_ms: newest,
            stores,
            store_count: Some(self.stores.len()),
            all_stores: Some(StoreDelta::between(before.as_deref(), &self.rollup)),
        };
        self.previous_rollup = Some(Arc::clone(&self.rollup));
        Frame::of_delta(self.seq, delta, built_ms)
    }

    /// The rollup as of the last frame.
    pub fn rollup(&self) -> &Arc<StoreView> {
        &self.rollup
    }

    /// A store's view as of the last frame.
    pub fn store(&self, id: &StoreId) -> Option<&Arc<StoreView>> {
        self.stores.get(id)
    }

    /// Every store's view, by id.
    pub fn stores(&self) -> impl Iterator<Item = (&StoreId, &Arc<StoreView>)> {
        self.stores.iter()
    }

    /// The global position: every slice's.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// The newest event time of any slice.
    pub fn newest_event_time(&self) -> i64 {
        self.slices
            .values()
            .map(|h| h.newest_event_time)
            .max()
            .unwrap_or(0)
    }

    /// The slices held, by number.
    pub fn slices(&self) -> &BTreeMap<i32, SliceHead> {
        &self.slices
    }

    /// True if a store's view is held.
    pub fn store_known(&self, id: &StoreId) -> bool {
        self.stores.contains_key(id)
    }

    /// Number of the last frame made (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The partition layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The snapshot of all stores (`None`) or of one (`None` if unknown), at the position
    /// of the last frame.
    pub fn snapshot(&self, store: Option<&StoreId>) -> Option<ViewsSnapshot> {
        let position = self.layout.encode(&self.position);
        let newest = self.newest_event_time();
        Some(match store {
            Some(id) => ViewsSnapshot::of_store(
                position,
                newest,
                id.clone(),
                Arc::clone(self.stores.get(id)?),
            ),
            None => ViewsSnapshot::of_rollup(
                position,
                newest,
                self.stores.len(),
                Arc::clone(&self.config),
                Arc::clone(&self.rollup),
            ),
        })
    }

    /// A page of the stores held (`GET /api/stores`).
    pub fn store_page(&self, after: Option<&str>, limit: usize) -> StorePage {
        StorePage::of(
            &self.stores,
            self.layout.encode(&self.position),
            after,
            limit,
        )
    }
}
