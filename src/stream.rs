//! The live stream's pure parts: Server-Sent Events framing, frames, and the bounded
//! in-memory frame log that lets a reconnecting client resume where it left off.
//!
//! No I/O: the ingest thread builds frames and pushes them here; the HTTP layer writes the
//! bytes. Every frame is serialised once and shared by every subscriber (`Arc` bytes).

use crate::aggregate::view::Delta;
use crate::events::StoreId;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Encodes one SSE event. `data` must be one line (JSON without raw newlines).
pub fn sse_event(event: &str, id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// One delta, encoded once per scope.
#[derive(Debug)]
pub struct Frame {
    /// Sequence number in this process (increasing by one).
    pub seq: u64,
    /// The encoded position after the frame: its SSE id.
    pub id: String,
    /// The whole `event: delta` for all-stores subscribers.
    pub all: Bytes,
    /// The `event: delta` of each store that changed, for store-scoped subscribers.
    pub per_store: HashMap<StoreId, Bytes>,
    /// Bytes held (for the log's bound).
    pub size: usize,
    /// When it was built, in milliseconds of the builder's monotonic clock (for the log's
    /// age bound; this module reads no clock).
    pub built_ms: u64,
    /// The delta itself, for conflating a slow subscriber's pending frames.
    pub delta: Arc<Delta>,
}

impl Frame {
    /// The bytes a subscriber of `scope` receives, if the frame concerns it.
    pub fn bytes_for(&self, scope: Option<&StoreId>) -> Option<&Bytes> {
        match scope {
            None => Some(&self.all),
            Some(store) => self.per_store.get(store),
        }
    }
}

/// The bytes for a subscriber of `scope` that has `frames` pending (oldest first): the
/// frame's shared bytes when it is one, else one conflated delta (latest value of every
/// field, stock merged by SKU) with the newest frame's id. `None` if none concerns it.
pub fn pending_bytes(frames: &[Arc<Frame>], scope: Option<&StoreId>) -> Option<Bytes> {
    let relevant: Vec<&Arc<Frame>> = frames
        .iter()
        .filter(|f| f.bytes_for(scope).is_some())
        .collect();
    match relevant.as_slice() {
        [] => None,
        [one] => one.bytes_for(scope).cloned(),
        [first, rest @ ..] => {
            let pick = |f: &Frame| match scope {
                None => Some(f.delta.as_ref().clone()),
                Some(store) => f.delta.scoped(store),
            };
            let mut merged = pick(first)?;
            for frame in rest {
                if let Some(later) = pick(frame) {
                    merged.absorb(&later);
                }
            }
            let json = serde_json::to_vec(&merged)
                .unwrap_or_else(|e| panic!("a delta always serialises: {e}"));
            Some(Bytes::from(sse_event(
                "delta",
                Some(&merged.position),
                &json,
            )))
        }
    }
}

/// Bounds of the frame log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// Most frames held.
    pub frames: usize,
    /// Most bytes held.
    pub bytes: usize,
    /// Oldest frame held, in milliseconds before the newest.
    pub age_ms: u64,
}

/// The newest frames, by sequence; a client whose last id is here resumes without a
/// snapshot (rule 2 of the resume contract).
#[derive(Debug)]
pub struct FrameLog {
    frames: VecDeque<Arc<Frame>>,
    by_id: HashMap<String, u64>,
    bytes: usize,
    limits: LogLimits,
}

impl FrameLog {
    /// An empty log.
    pub fn new(limits: LogLimits) -> Self {
        FrameLog {
            frames: VecDeque::new(),
            by_id: HashMap::new(),
            bytes: 0,
            limits,
        }
    }

    /// Appends a frame, dropping the oldest beyond the limits.
    pub fn push(&mut self, frame: Arc<Frame>) {
        let newest_ms = frame.built_ms;
        self.bytes += frame.size;
        self.by_id.insert(frame.id.clone(), frame.seq);
        self.frames.push_back(frame);
        let too_old = |f: &Frame| newest_ms.saturating_sub(f.built_ms) > self.limits.age_ms;
        while self.frames.len() > self.limits.frames.max(1)
            || self.bytes > self.limits.bytes
            || self.frames.front().is_some_and(|f| too_old(f))
        {
            let Some(old) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= old.size;
            if self.by_id.get(&old.id) == Some(&old.seq) {
                self.by_id.remove(&old.id);
            }
        }
    }

    /// The frames after the one whose id is `id`, if that frame is still held.
    pub fn after(&self, id: &str) -> Option<Vec<Arc<Frame>>> {
        let seq = *self.by_id.get(id)?;
        let first = self.frames.front()?.seq;
        let start = usize::try_from(seq - first + 1).ok()?;
        Some(self.frames.iter().skip(start).cloned().collect())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True if no frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, size: usize) -> Arc<Frame> {
        Arc::new(Frame {
            seq,
            id: format!("t:{seq}"),
            all: Bytes::new(),
            per_store: HashMap::new(),
            size,
            built_ms: seq * 1_000,
            delta: Arc::new(Delta {
                position: format!("t:{seq}"),
                as_of: None,
                as_of_ms: 0,
                stores: Default::default(),
                all_stores: None,
            }),
        })
    }

    #[test]
    fn an_event_is_framed_with_its_id_and_a_blank_line() {
        assert_eq!(
            sse_event("delta", Some("t:1"), b"{}"),
            b"event: delta\nid: t:1\ndata: {}\n\n"
        );
        assert_eq!(
            sse_event("progress", None, b"1"),
            b"event: progress\ndata: 1\n\n"
        );
    }

    #[test]
    fn the_log_returns_the_frames_after_a_held_id_and_forgets_beyond_its_bounds() {
        let mut log = FrameLog::new(LogLimits {
            frames: 3,
            bytes: 1_000,
            age_ms: 60_000,
        });
        for seq in 1..=5 {
            log.push(frame(seq, 10));
        }
        assert_eq!(log.len(), 3);
        let after: Vec<u64> = log
            .after("t:3")
            .expect("held")
            .iter()
            .map(|f| f.seq)
            .collect();
        assert_eq!(after, vec![4, 5]);
        assert_eq!(log.after("t:5").expect("held").len(), 0);
        assert!(log.after("t:2").is_none(), "evicted");
        assert!(log.after("garbage").is_none());
        let mut small = FrameLog::new(LogLimits {
            frames: 100,
            bytes: 25,
            age_ms: 60_000,
        });
        for seq in 1..=5 {
            small.push(frame(seq, 10));
        }
        assert_eq!((small.len(), small.bytes()), (2, 20));
        // Frames one second apart; a log of 2.5 s holds the newest three.
        let mut young = FrameLog::new(LogLimits {
            frames: 100,
            bytes: 1_000,
            age_ms: 2_500,
        });
        for seq in 1..=5 {
            young.push(frame(seq, 10));
        }
        assert_eq!(young.len(), 3);
        assert!(young.after("t:2").is_none(), "too old");
        assert!(young.after("t:3").is_some());
    }
}
