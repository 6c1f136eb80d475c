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
    /// The span of each recent frame that carried sampled records (newest last, at most
    /// [`TRACED_FRAMES`]): traced connections parent their `write` spans on it. Untraced
    /// connections never look.
    traces: std::sync::Mutex<std::collections::VecDeque<(u64, opentelemetry::trace::SpanContext)>>,
}

/// How many traced frames the hub remembers for `write` spans.
const TRACED_FRAMES: usize = 64;

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
            traces: Default::default(),
        }
    }

    /// Remembers the span of frame `seq` (before it is published).
    pub fn note_trace(&self, seq: u64, span: opentelemetry::trace::SpanContext) {
        let mut traces = self
            .traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if traces.len() == TRACED_FRAMES {
            traces.pop_front();
        }
        traces.push_back((seq, span));
    }

    /// The span of frame `seq`, if it carried sampled records and is recent.
    pub fn trace_of(&self, seq: u64) -> Option<opentelemetry::trace::SpanContext> {
        self.traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map(|(_, span)| span.clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TopicRole;
    use crate::live::Delta;

    fn layout() -> Layout {
        Layout::new(vec![
            (TopicRole::Orders, "orders".into(), 1),
            (TopicRole::Inventory, "inventory".into(), 1),
            (TopicRole::Activity, "activity".into(), 1),
        ])
    }

    /// The id of a position whose next orders offset is `k`.
    fn id(k: u64) -> String {
        format!("{}:{k},0,0", layout().tag())
    }

    fn frame(seq: u64) -> Arc<Frame> {
        Arc::new(Frame {
            seq,
            id: id(seq),
            all: Encoded::new(format!("frame {seq}").into_bytes()),
            per_store: HashMap::new(),
            size: 1,
            built_ms: seq,
            delta: Arc::new(Delta {
                position: id(seq),
                as_of: None,
                as_of_ms: 0,
                stores: Default::default(),
                store_count: None,
                all_stores: None,
            }),
        })
    }

    fn shared(seq: u64, built: Instant) -> SharedSnapshot {
        SharedSnapshot {
            seq,
            position: layout().decode(&id(seq)).expect("an id of the layout"),
            built,
            event: Arc::new(Encoded::new(format!("snapshot {seq}").into_bytes())),
        }
    }

    fn seqs(subscription: &Subscription) -> Vec<u64> {
        subscription.pieces.iter().map(Piece::last_seq).collect()
    }

    #[test]
    fn openings_come_from_the_hub_only_when_the_resume_rules_allow_it() {
        let hub = Hub::new(
            layout(),
            LogLimits {
                frames: 100,
                bytes: usize::MAX,
                age_ms: u64::MAX,
            },
            16,
        );
        let start = Instant::now();
        for seq in 1..=5 {
            hub.publish(frame(seq));
        }
        // Rule 2: the frames after the client's id, no snapshot.
        let resumed = hub.try_open(None, Some(&id(3)), start).expect("rule 2");
        assert!(resumed.snapshot.is_none());
        assert_eq!((seqs(&resumed), resumed.last_seq), (vec![4, 5], 5));
        // No shared snapshot yet: the engine builds one.
        assert!(hub.try_open(None, None, start).is_none());
        hub.share_snapshot(None, shared(5, start));
        let fresh = hub.try_open(None, None, start).expect("a fresh snapshot");
        assert!(fresh.snapshot.is_some());
        assert_eq!((seqs(&fresh), fresh.last_seq), (vec![], 5));
        // Another scope has its own snapshot.
        assert!(
            hub.try_open(Some(&StoreId::from("store-berlin")), None, start)
                .is_none()
        );
        // A frame after it: shared for 250 ms (with the catch-up), then the engine again.
        hub.publish(frame(6));
        let young = start + Duration::from_millis(200);
        let with_frames = hub
            .try_open(None, None, young)
            .expect("younger than 250 ms");
        assert_eq!((seqs(&with_frames), with_frames.last_seq), (vec![6], 6));
        assert!(
            hub.try_open(None, None, start + Duration::from_millis(300))
                .is_none()
        );
        // With no frame after it, a snapshot stays current however old it is.
        hub.share_snapshot(None, shared(6, start));
        let later = start + Duration::from_secs(60);
        assert!(hub.try_open(None, None, later).is_some());
        // Rule 3 from the hub only for an id at or before the snapshot; ahead (rule 4) or
        // malformed (rule 5): the engine.
        let behind = format!("{}:0,0,0", layout().tag());
        assert!(hub.try_open(None, Some(&behind), later).is_some());
        assert!(hub.try_open(None, Some(&id(9)), later).is_none(), "ahead");
        assert!(
            hub.try_open(None, Some("garbage"), later).is_none(),
            "malformed"
        );
        // The receiver yields the frames after the opening, none before.
        let mut opened = hub.try_open(None, Some(&id(6)), later).expect("rule 2");
        assert!(opened.live.try_recv().is_err());
        hub.publish(frame(7));
        assert_eq!(opened.live.try_recv().map(|f| f.seq).ok(), Some(7));
        // A catch-up after an evicted frame is refused: the writer then takes a snapshot.
        let small = Hub::new(
            layout(),
            LogLimits {
                frames: 2,
                bytes: usize::MAX,
                age_ms: u64::MAX,
            },
            16,
        );
        for seq in 1..=5 {
            small.publish(frame(seq));
        }
        assert!(small.catch_up(1).is_none());
        assert_eq!(
            small.catch_up(3).map(|(p, newest)| (p.len(), newest)),
            Some((2, 5))
        );
    }
}
