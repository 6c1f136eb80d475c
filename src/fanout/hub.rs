//! The live stream's shared side, read by HTTP without a round trip to the state's owner:
//! the frame log (frames and their shared spans), the broadcast of each new frame, and the
//! newest snapshot event of each scope.
//!
//! One writer (the ingest engine today) feeds it through [`Hub::publish_frame`] and
//! [`Hub::publish_snapshot`]. A frame is logged and broadcast under the write lock, and
//! a subscription reads the log and subscribes under the read lock, so what a subscriber
//! is given first and what its receiver then yields meet exactly: no gap, no frame twice.
//! Readers hold the lock only to clone `Arc`s; bytes are built (once) after it is released.

use crate::aggregate::{Layout, Position};
use crate::events::StoreId;
use crate::live::{self, Encoded, Frame, FrameLog, LogLimits, Opening, Piece, Shared, Start};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;
use tokio::sync::broadcast;

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

    /// Logs and broadcasts a frame, with the span of its trace when it carried sampled
    /// records (traced connections parent their `write` spans on it). Returns the bytes
    /// the log holds.
    pub fn publish_frame(
        &self,
        frame: Arc<Frame>,
        trace: Option<opentelemetry::trace::SpanContext>,
    ) -> usize {
        if let Some(span) = trace {
            let mut traces = self
                .traces
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if traces.len() == TRACED_FRAMES {
                traces.pop_front();
            }
            traces.push_back((frame.seq, span));
        }
        let mut published = self
            .published
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        published.log.push(Arc::clone(&frame));
        // Never waits: a receiver that falls behind lags, then catches up from the log.
        let _ = self.frames.send(frame);
        published.log.bytes()
    }

    /// Makes `snapshot` its scope's newest shared snapshot event.
    pub fn publish_snapshot(&self, scope: Option<StoreId>, snapshot: SharedSnapshot) {
        self.published
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .snapshots
            .insert(scope, snapshot);
    }

    /// Runs `read` on the frame log (the owner's resume decision).
    pub fn with_log<R>(&self, read: impl FnOnce(&FrameLog) -> R) -> R {
        read(&self.read().log)
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

    /// Opens a stream from what is shared when the resume rules ([`live::start`] without
    /// the state's owner) allow it: the frames after a logged id (rule 2), or the scope's
    /// shared snapshot (rules 1 and 3). `None`: ask the state's owner.
    pub fn try_open(
        &self,
        scope: Option<&StoreId>,
        since: Option<&str>,
        now: Instant,
    ) -> Option<Subscription> {
        let published = self.read();
        let snapshot = published.snapshots.get(&scope.cloned());
        let start = live::start(&Opening {
            since,
            log: &published.log,
            layout: &self.layout,
            shared: snapshot.map(|s| Shared {
                seq: s.seq,
                position: &s.position,
                age_ms: u64::try_from(now.saturating_duration_since(s.built).as_millis())
                    .unwrap_or(u64::MAX),
            }),
            owner: None,
        });
        match (start, snapshot) {
            (Start::FramesAfter(seq), _) => Self::open(&published, &self.frames, None, seq),
            (Start::SharedSnapshot, Some(shared)) => Self::open(
                &published,
                &self.frames,
                Some(Arc::clone(&shared.event)),
                shared.seq,
            ),
            _ => None,
        }
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
    use std::time::Duration;

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
            hub.publish_frame(frame(seq), None);
        }
        // Rule 2: the frames after the client's id, no snapshot.
        let resumed = hub.try_open(None, Some(&id(3)), start).expect("rule 2");
        assert!(resumed.snapshot.is_none());
        assert_eq!((seqs(&resumed), resumed.last_seq), (vec![4, 5], 5));
        // No shared snapshot yet: the engine builds one.
        assert!(hub.try_open(None, None, start).is_none());
        hub.publish_snapshot(None, shared(5, start));
        let fresh = hub.try_open(None, None, start).expect("a fresh snapshot");
        assert!(fresh.snapshot.is_some());
        assert_eq!((seqs(&fresh), fresh.last_seq), (vec![], 5));
        // Another scope has its own snapshot.
        assert!(
            hub.try_open(Some(&StoreId::from("store-berlin")), None, start)
                .is_none()
        );
        // A frame after it: shared for 250 ms (with the catch-up), then the engine again.
        hub.publish_frame(frame(6), None);
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
        hub.publish_snapshot(None, shared(6, start));
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
        hub.publish_frame(frame(7), None);
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
            small.publish_frame(frame(seq), None);
        }
        assert!(small.catch_up(1).is_none());
        assert_eq!(
            small.catch_up(3).map(|(p, newest)| (p.len(), newest)),
            Some((2, 5))
        );
    }
}
