//! What the serving side asks of the state's owner and what the owner reports: the
//! requests HTTP sends (snapshots, pages, the subscriptions the hub cannot open alone),
//! their answers, and the owner's status. The ingest engine answers them today; the owner
//! of another role's state (an edge's views) answers the same requests.

use super::hub::Subscription;
use crate::events::StoreId;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A request to the state's owner.
#[derive(Debug)]
pub enum Request {
    /// The JSON snapshot of all stores (`None`) or one; replies `None` for an unknown store.
    Snapshot {
        /// Scope.
        store: Option<StoreId>,
        /// Where the snapshot goes: shared views, serialised by whoever needs the bytes
        /// first (cached per position and scope).
        reply: oneshot::Sender<Option<Arc<SnapshotJson>>>,
    },
    /// A page of one store's stock levels (`GET /api/stock`); replies `None` for an
    /// unknown store.
    Stock {
        /// The store.
        store: StoreId,
        /// The page starts after this SKU (byte order).
        after: Option<String>,
        /// Most levels in the page.
        limit: usize,
        /// Where the page goes.
        reply: oneshot::Sender<Option<crate::aggregate::view::StockPage>>,
    },
    /// A page of the stores seen (`GET /api/stores`).
    Stores {
        /// The page starts after this store id (byte order).
        after: Option<String>,
        /// Most ids in the page.
        limit: usize,
        /// Where the page goes.
        reply: oneshot::Sender<crate::aggregate::view::StorePage>,
    },
    /// A live subscription: what to send first, and the frames after it.
    Subscribe {
        /// Scope.
        store: Option<StoreId>,
        /// The client's last event id, if any.
        since: Option<String>,
        /// Where the answer goes: at once, or after a bounded wait (resume rule 4).
        reply: oneshot::Sender<Subscribed>,
    },
}

/// The answer to [`Request::Subscribe`].
#[derive(Debug)]
pub enum Subscribed {
    /// The stream starts.
    Started(Subscription),
    /// No event of that store yet.
    UnknownStore,
}

/// What the ingest loop reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Partitions assigned and reading.
    pub assigned: bool,
    /// The position of the state.
    pub position: crate::aggregate::Position,
    /// Newest event time applied.
    pub newest_event_time: i64,
}

/// A snapshot of shared views and its JSON, made on first use: taking it costs the ingest
/// thread a few pointer copies; the bytes are made once, by whoever asks first (an HTTP
/// worker for `/api/snapshot`), and shared by every later reader.
#[derive(Debug)]
pub struct SnapshotJson {
    snapshot: crate::aggregate::ViewsSnapshot,
    json: std::sync::OnceLock<Bytes>,
}

impl SnapshotJson {
    /// A snapshot whose JSON is made on first use.
    pub fn new(snapshot: crate::aggregate::ViewsSnapshot) -> SnapshotJson {
        SnapshotJson {
            snapshot,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The JSON, serialised on the first call.
    pub fn bytes(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                Bytes::from(
                    serde_json::to_vec(&self.snapshot)
                        .unwrap_or_else(|e| panic!("a snapshot always serialises: {e}")),
                )
            })
            .clone()
    }
}
