//! Shared catch-up: aligned spans of the frame log, each conflated and encoded at most once
//! per scope, so a client behind by any number of frames catches up with a few writes of
//! shared bytes, never a delta built for it alone.
//!
//! A span of level `L` (8, 64, 512, 4096 frames) covers the frames `(k·L, (k+1)·L]` by
//! sequence number and is made of the eight pieces of the level below (frames for level 8).
//! It is created, empty, when its last frame is logged; its delta (`Delta::absorb` of its
//! parts, which are built first) and the bytes of each scope are built on first use and
//! kept. [`FrameLog::catch_up`](super::FrameLog::catch_up) covers a client's gap greedily
//! with the largest aligned pieces: at most seven of each level, plus the 4096-spans.

use super::delta::Delta;
use super::frame::{Frame, encode_delta};
use super::sse::{Encoded, Encoding};
use crate::events::StoreId;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Frames per span, by level.
pub const SPAN_LEVELS: [u64; 4] = [8, 64, 512, 4096];

/// Pieces of the level below in one span.
pub(super) const FAN_OUT: usize = 8;

/// What one catch-up write carries: one frame, or one span of frames.
#[derive(Clone, Debug)]
pub enum Piece {
    /// A frame's own bytes.
    Frame(Arc<Frame>),
    /// A span's conflated bytes.
    Span(Arc<Span>),
}

impl Piece {
    /// Sequence number of the last frame it covers.
    pub fn last_seq(&self) -> u64 {
        match self {
            Piece::Frame(frame) => frame.seq,
            Piece::Span(span) => span.last_seq,
        }
    }

    /// Frames it covers.
    pub fn frames(&self) -> u64 {
        match self {
            Piece::Frame(_) => 1,
            Piece::Span(span) => span.last_seq - span.first_seq + 1,
        }
    }

    /// The delta it carries (all scopes).
    pub fn delta(&self) -> Arc<Delta> {
        match self {
            Piece::Frame(frame) => Arc::clone(&frame.delta),
            Piece::Span(span) => Arc::clone(span.delta()),
        }
    }

    /// The bytes a subscriber of `scope` is written, in `encoding`; `None` if nothing in
    /// it concerns the scope. Shared: built at most once per piece and scope.
    pub fn bytes_for(&self, scope: Option<&StoreId>, encoding: Encoding) -> Option<Bytes> {
        match self {
            Piece::Frame(frame) => frame.bytes_for(scope).map(|e| e.for_encoding(encoding)),
            Piece::Span(span) => span.bytes_for(scope).map(|e| e.for_encoding(encoding)),
        }
    }
}

/// Frames `first_seq..=last_seq` conflated into one delta, encoded once per scope.
#[derive(Debug)]
pub struct Span {
    /// Sequence number of its first frame.
    pub first_seq: u64,
    /// Sequence number of its last frame.
    pub last_seq: u64,
    parts: Vec<Piece>,
    delta: OnceLock<Arc<Delta>>,
    all: OnceLock<Arc<Encoded>>,
    per_store: Mutex<HashMap<StoreId, Option<Arc<Encoded>>>>,
}

impl Span {
    /// The span of `parts` (consecutive, oldest first, not empty). Builds nothing yet.
    pub(super) fn new(parts: Vec<Piece>) -> Span {
        let first_seq = match parts.first() {
            Some(Piece::Frame(frame)) => frame.seq,
            Some(Piece::Span(span)) => span.first_seq,
            None => panic!("a span has parts"),
        };
        let last_seq = parts.last().map_or(first_seq, Piece::last_seq);
        Span {
            first_seq,
            last_seq,
            parts,
            delta: OnceLock::new(),
            all: OnceLock::new(),
            per_store: Mutex::new(HashMap::new()),
        }
    }

    /// Its parts conflated (latest value of every field, stock merged by SKU), once.
    pub fn delta(&self) -> &Arc<Delta> {
        self.delta.get_or_init(|| {
            let mut parts = self.parts.iter();
            let mut merged = parts
                .next()
                .map(|p| p.delta().as_ref().clone())
                .unwrap_or_else(|| panic!("a span has parts"));
            for part in parts {
                merged.absorb(&part.delta());
            }
            Arc::new(merged)
        })
    }

    /// The encoded delta for `scope`, once per scope; `None` if it does not concern it.
    fn bytes_for(&self, scope: Option<&StoreId>) -> Option<Arc<Encoded>> {
        match scope {
            None => Some(Arc::clone(self.all.get_or_init(|| {
                Arc::new(Encoded::new(encode_delta(&self.delta().rollup())))
            }))),
            Some(store) => {
                // Held while building, so concurrent clients of one store build it once.
                let mut built = self
                    .per_store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                built
                    .entry(store.clone())
                    .or_insert_with(|| {
                        self.delta()
                            .scoped(store)
                            .map(|scoped| Arc::new(Encoded::new(encode_delta(&scoped))))
                    })
                    .clone()
            }
        }
    }
}
