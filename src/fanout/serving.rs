//! The state owner's half of serving: the requests the hub cannot answer alone (a
//! subscription without a reusable shared snapshot, resume rules 4 and 5) and the
//! snapshots, cached per position and scope. Whoever owns the views runs it: `serve`'s
//! ingest engine (the views of its state) and a cluster's edge (the views of its slices),
//! each through [`Held`], so both decide with the same `live::start` and share snapshots
//! through the hub the same way.

use super::{Hub, SharedSnapshot, SnapshotJson, Subscribed};
use crate::aggregate::{Layout, Position, ViewsSnapshot};
use crate::events::StoreId;
use crate::live::{self, Encoded, Opening, Owner, SnapshotEvent, Start};
use crate::metrics::{Metrics, OpeningPath};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the owner of the views tells the serving half.
pub trait Held {
    /// The partition layout of positions.
    fn layout(&self) -> &Layout;
    /// The position of the views (the last frame's id: nothing may be pending when asked).
    fn position(&self) -> &Position;
    /// True if a store's view exists.
    fn store_known(&self, store: &StoreId) -> bool;
    /// Number of the last frame published.
    fn last_seq(&self) -> u64;
    /// A snapshot of shared views at [`Held::position`]; `None` for an unknown store.
    fn snapshot(&mut self, store: Option<&StoreId>) -> Option<ViewsSnapshot>;
}

/// A subscription parked by resume rule 4 until the views reach what its client showed.
#[derive(Debug)]
pub struct Parked {
    wanted: Position,
    deadline: Instant,
    store: Option<StoreId>,
    reply: oneshot::Sender<Subscribed>,
}

/// Snapshots of the current position: taken once per scope, shared by every request and
/// subscriber until the views move.
#[derive(Debug, Default)]
struct SnapshotCache {
    json: HashMap<Option<StoreId>, Arc<SnapshotJson>>,
    events: HashMap<(Option<StoreId>, SnapshotEvent), Arc<Encoded>>,
}

/// The serving half of a state's owner.
#[derive(Debug)]
pub struct Serving {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    resume_wait: Duration,
    snapshots: SnapshotCache,
    parked: Vec<Parked>,
}

impl Serving {
    /// Serving through `hub`; a client ahead of the views waits at most `resume_wait`.
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, resume_wait: Duration) -> Serving {
        Serving {
            hub,
            metrics,
            resume_wait,
            snapshots: SnapshotCache::default(),
            parked: Vec::new(),
        }
    }

    /// The hub it serves through.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The views moved: cached snapshots are stale.
    pub fn moved(&mut self) {
        self.snapshots = SnapshotCache::default();
    }

    /// Decides where a subscription starts and subscribes it to the frames that follow in
    /// the same step; rule 4 parks it until the views catch up or its wait runs out.
    /// Nothing may be pending: a snapshot's position is the last frame's id.
    pub fn subscribe(
        &mut self,
        held: &mut impl Held,
        store: Option<StoreId>,
        since: Option<&str>,
        reply: oneshot::Sender<Subscribed>,
        now: Instant,
    ) {
        match self.decide(held, store.as_ref(), since, None) {
            Start::WaitUntil(wanted) => self.parked.push(Parked {
                wanted,
                deadline: now + self.resume_wait,
                store,
                reply,
            }),
            start => {
                let _ = reply.send(self.started_at(held, start, store));
            }
        }
    }

    /// The parked subscriptions that start now (the views caught up, or their wait ran
    /// out: a resync), with their starts; the others stay parked. The caller publishes
    /// what is pending before [`Serving::start_parked`].
    pub fn ready_parked(&mut self, held: &impl Held, now: Instant) -> Vec<(Parked, Start)> {
        let mut ready = Vec::new();
        for parked in std::mem::take(&mut self.parked) {
            if parked.reply.is_closed() {
                continue; // the client went away while it waited
            }
            let ran_out = now >= parked.deadline;
            let waited = Some((&parked.wanted, ran_out));
            match self.decide(held, parked.store.as_ref(), None, waited) {
                Start::WaitUntil(_) => self.parked.push(parked),
                start => ready.push((parked, start)),
            }
        }
        ready
    }

    /// Starts the subscriptions [`Serving::ready_parked`] returned.
    pub fn start_parked(&mut self, held: &mut impl Held, ready: Vec<(Parked, Start)>) {
        for (parked, start) in ready {
            let _ = parked
                .reply
                .send(self.started_at(held, start, parked.store));
        }
    }

    /// The start of a subscription (`live::start` with the views' position).
    fn decide(
        &self,
        held: &impl Held,
        store: Option<&StoreId>,
        since: Option<&str>,
        waited: Option<(&Position, bool)>,
    ) -> Start {
        let owner = Owner {
            position: held.position(),
            store_known: store.is_none_or(|id| held.store_known(id)),
            waited,
        };
        self.hub.with_log(|log| {
            live::start(&Opening {
                since,
                log,
                layout: held.layout(),
                shared: None, // the owner's own snapshots are always current
                owner: Some(owner),
            })
        })
    }

    /// The subscription of a decided start. Nothing is pending, so a snapshot contains
    /// exactly the frames up to the newest.
    fn started_at(
        &mut self,
        held: &mut impl Held,
        start: Start,
        store: Option<StoreId>,
    ) -> Subscribed {
        self.metrics.opened(OpeningPath::Engine);
        let hub = Arc::clone(&self.hub);
        let newest = held.last_seq();
        let kind = match start {
            Start::FramesAfter(after) => {
                if let Some(subscription) = hub.open_after(None, after) {
                    return Subscribed::Started(subscription);
                }
                SnapshotEvent::Snapshot // unreachable: the log does not change meanwhile
            }
            Start::Snapshot | Start::SharedSnapshot => SnapshotEvent::Snapshot,
            Start::Resync => {
                self.metrics.resyncs.inc();
                SnapshotEvent::Resync
            }
            Start::UnknownStore | Start::WaitUntil(_) | Start::AskOwner => {
                return Subscribed::UnknownStore;
            }
        };
        let Some(event) = self.snapshot_event(held, store, kind) else {
            return Subscribed::UnknownStore;
        };
        match hub.open_after(Some(event), newest) {
            Some(subscription) => Subscribed::Started(subscription),
            None => Subscribed::UnknownStore,
        }
    }

    /// The snapshot of a scope at the views' position: shared views, serialised on first
    /// use, cached until the views move.
    pub fn snapshot_json(
        &mut self,
        held: &mut impl Held,
        store: Option<StoreId>,
    ) -> Option<Arc<SnapshotJson>> {
        if let Some(json) = self.snapshots.json.get(&store) {
            self.metrics.snapshots_cached.inc();
            return Some(Arc::clone(json));
        }
        let snapshot = held.snapshot(store.as_ref())?;
        self.metrics.snapshots_built.inc();
        let json = Arc::new(SnapshotJson::new(snapshot));
        self.snapshots.json.insert(store, Arc::clone(&json));
        Some(json)
    }

    /// The SSE event of a scope's snapshot at the current position, encoded once; a
    /// `snapshot` is also shared through the hub, for the subscribers of the next
    /// [`SNAPSHOT_REUSE_MS`](live::SNAPSHOT_REUSE_MS).
    fn snapshot_event(
        &mut self,
        held: &mut impl Held,
        store: Option<StoreId>,
        kind: SnapshotEvent,
    ) -> Option<Arc<Encoded>> {
        let key = (store, kind);
        if let Some(event) = self.snapshots.events.get(&key) {
            self.metrics.snapshots_cached.inc();
            return Some(Arc::clone(event));
        }
        let snapshot = self.snapshot_json(held, key.0.clone())?;
        let id = held.layout().encode(held.position());
        // Serialised by the first stream that writes it, off the owner's thread.
        let event = Arc::new(Encoded::deferred(move || {
            bytes::Bytes::from(live::sse_event(kind.name(), Some(&id), &snapshot.bytes()))
        }));
        if kind == SnapshotEvent::Snapshot {
            self.hub.publish_snapshot(
                key.0.clone(),
                SharedSnapshot {
                    seq: held.last_seq(),
                    position: held.position().clone(),
                    built: Instant::now(),
                    event: Arc::clone(&event),
                },
            );
        }
        self.snapshots.events.insert(key, Arc::clone(&event));
        Some(event)
    }
}
