//! What the ingest engine publishes for the live stream, read by HTTP without a round trip
//! through the ingest thread: the frame log (frames and their shared spans), the broadcast
//! of each new frame, and the newest snapshot event of each scope.
//!
//! The engine is the only writer. A frame is logged and broadcast under the write lock, and
//! a subscription reads the log and subscribes under the read lock, so what a subscriber
//! is given first and what its receiver then yields meet exactly: no gap, no frame twice.
//! Readers hold the lock only to clone `Arc`s; bytes are built (once) after it is released.

use crate::aggregate::{Layout, Position};
use crate::events::StoreId;
use crate::live::{Encoded, Frame, FrameLog, LogLimits, Piece};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How long a scope's snapshot is given to new subscribers, with the catch-up after it,
/// before one is built again (unless no frame came since: then it is current): a burst of
/// clients shares one snapshot.
pub const SNAPSHOT_REUSE: Duration = Duration::from_millis(250);

/// A scope's snapshot event, where it was taken.
#[derive(Clone, Debug)]
pub struct SharedSnapshot {
    /// The newest frame it contains (the frames after it are new to its receiver).
    pub seq: u64,
    /// The state's position it shows (its SSE id).
    pub position: Position,
    /// When it was built.
    pub built: Instant,
    /// The encoded `event: snapshot`.
    pub event: Arc<Encoded>,
}

/// A stream's start: what to write first, and the frames that follow.
#[derive(Debug)]
pub struct Subscription {
    /// A snapshot event to write first, if the stream starts with one.
    pub snapshot: Option<Arc<Encoded>>,
    /// Then these shared pieces (frames and spans of every scope: the writer takes its
    /// scope's bytes of each).
    pub pieces: Vec<Piece>,
    /// The newest frame the opening covers; the receiver yields the ones after it.
    pub last_seq: u64,
    /// The frames after the opening.
    pub live: broadcast::Receiver<Arc<Frame>>,
}

#[derive(Debug)]
struct Published {
    log: FrameLog,
    snapshots: HashMap<Option<StoreId>, SharedSnapshot>,
}

/// The live stream's shared side.
#[derive(Debug)]
pub struct Hub {
    published: RwLock<Published>,
    frames: broadcast::Sender<Arc<Frame>>,
    layout: Layout,
}

impl Hub {
    /// An empty hub; each subscriber's receiver holds up to `queue_frames` frames before it
    /// lags (and then catches up from the log).
    pub fn new(layout: Layout, limits: LogLimits, queue_frames: usize) -> Hub {
        let (frames, _) = broadcast::channel(queue_frames.max(1));
        Hub {
            published: RwLock::new(Published {
                log: FrameLog::new(limits),
                snapshots: HashMap::new(),
            }),
            frames,
            layout,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Published> {
        self.published
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Logs and broadcasts a frame (the engine's). Returns the bytes the log holds.
    pub fn publish(&self, frame: Arc<Frame>) -> usize {
        let mut published = self
            .published
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        published.log.push(Arc::clone(&frame));
        // Never waits: a receiver that falls behind lags, then catches up from the log.
        let _ = self.frames.send(frame);
        published.log.bytes()
    }

    /// Runs `read` on the frame log (the engine's resume decision).
    pub fn with_log<R>(&self, read: impl FnOnce(&FrameLog) -> R) -> R {
        read(&self.read().log)
    }

    /// Remembers a scope's newest snapshot event, for [`Hub::try_open`].
    pub fn share_snapshot(&self, scope: Option<StoreId>, snapshot: SharedSnapshot) {
        self.published
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .snapshots
            .insert(scope, snapshot);
    }

    /// A subscription that starts with `snapshot` (if any) and the log's catch-up after
    /// frame `after`; `None` if the log no longer holds the frames after it.
    pub fn open_after(&self, snapshot: Option<Arc<Encoded>>, after: u64) -> Option<Subscription> {
        let published = self.read();
        Self::open(&published, &self.frames, snapshot, after)
    }

    fn open(
        published: &Published,
        frames: &broadcast::Sender<Arc<Frame>>,
        snapshot: Option<Arc<Encoded>>,
        after: u64,
    ) -> Option<Subscription> {
        let pieces = published.log.catch_up(after)?;
        Some(Subscription {
            snapshot,
            pieces,
            last_seq: published.log.newest_seq(),
            live: frames.subscribe(),
        })
    }

    /// Opens a stream from what is shared, when the resume rules allow it without the
    /// engine: rule 2 (the client's id is a logged frame), or a snapshot start (rule 1, or
    /// rule 3 with an id at or before the shared snapshot) while the scope's shared
    /// snapshot is younger than [`SNAPSHOT_REUSE`] or no frame came after it. `None`: ask
    /// the engine.
    pub fn try_open(
        &self,
        scope: Option<&StoreId>,
        since: Option<&str>,
        now: Instant,
    ) -> Option<Subscription> {
        let published = self.read();
        if let Some(seq) = since.and_then(|id| published.log.seq_of(id)) {
            return Self::open(&published, &self.frames, None, seq);
        }
        let newest = published.log.newest_seq();
        let shared = published.snapshots.get(&scope.cloned()).filter(|s| {
            s.seq == newest || now.saturating_duration_since(s.built) <= SNAPSHOT_REUSE
        })?;
        if let Some(id) = since {
            // Malformed or another layout (rule 5), or ahead of the snapshot: the engine.
            let wanted = self.layout.decode(id).ok()?;
            if !matches!(
                wanted.compare(&shared.position),
                Some(Ordering::Less | Ordering::Equal)
            ) {
                return None;
            }
        }
        Self::open(
            &published,
            &self.frames,
            Some(Arc::clone(&shared.event)),
            shared.seq,
        )
    }

    /// The pieces after frame `after` up to the newest, and the newest's number; `None` if
    /// the log no longer holds them.
    pub fn catch_up(&self, after: u64) -> Option<(Vec<Piece>, u64)> {
        let published = self.read();
        let pieces = published.log.catch_up(after)?;
        Some((pieces, published.log.newest_seq()))
    }
}
