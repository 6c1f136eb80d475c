//! The frame log: the newest frames, bounded by count, bytes and age, and the aligned spans
//! over them (`span.rs`), so a reconnecting or lagging client catches up where it left off
//! with shared pieces (rule 2 of the resume contract).

use super::frame::Frame;
use super::span::{FAN_OUT, Piece, SPAN_LEVELS, Span};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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

/// The newest frames, by sequence, and the spans over them; a client whose last id is
/// here resumes without a snapshot (rule 2 of the resume contract), and a client behind
/// catches up from here with shared pieces ([`FrameLog::catch_up`]).
#[derive(Debug)]
pub struct FrameLog {
    frames: VecDeque<Arc<Frame>>,
    /// Per level of [`SPAN_LEVELS`], the spans whose frames are all held, oldest first.
    spans: [VecDeque<Arc<Span>>; SPAN_LEVELS.len()],
    by_id: HashMap<String, u64>,
    newest_seq: u64,
    bytes: usize,
    limits: LogLimits,
}

impl FrameLog {
    /// An empty log.
    pub fn new(limits: LogLimits) -> Self {
        FrameLog {
            frames: VecDeque::new(),
            spans: Default::default(),
            by_id: HashMap::new(),
            newest_seq: 0,
            bytes: 0,
            limits,
        }
    }

    /// Appends a frame (the next in sequence), opens the spans it closes, and drops the
    /// oldest frames beyond the limits with the spans that start at them.
    pub fn push(&mut self, frame: Arc<Frame>) {
        let newest_ms = frame.built_ms;
        let seq = frame.seq;
        self.newest_seq = seq;
        self.bytes += frame.size;
        self.by_id.insert(frame.id.clone(), seq);
        self.frames.push_back(frame);
        self.close_spans(seq);
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
        let oldest = self.frames.front().map_or(seq, |f| f.seq);
        for level in &mut self.spans {
            while level.front().is_some_and(|s| s.first_seq < oldest) {
                level.pop_front();
            }
        }
    }

    /// Opens every span whose last frame is `seq`, from its eight parts below.
    fn close_spans(&mut self, seq: u64) {
        for (level, &frames) in SPAN_LEVELS.iter().enumerate() {
            if !seq.is_multiple_of(frames) {
                return; // each level's boundaries are also the one below's
            }
            let first = seq + 1 - frames;
            let parts: Vec<Piece> = if level == 0 {
                let held = self.frames.len();
                if held < FAN_OUT || self.frames[held - FAN_OUT].seq != first {
                    return;
                }
                self.frames
                    .range(held - FAN_OUT..)
                    .cloned()
                    .map(Piece::Frame)
                    .collect()
            } else {
                let below = &self.spans[level - 1];
                let held = below.len();
                if held < FAN_OUT || below[held - FAN_OUT].first_seq != first {
                    return;
                }
                below
                    .range(held - FAN_OUT..)
                    .cloned()
                    .map(Piece::Span)
                    .collect()
            };
            self.spans[level].push_back(Arc::new(Span::new(parts)));
        }
    }

    /// The sequence number of the frame whose id is `id`, if that frame is still held.
    pub fn seq_of(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// Sequence number of the newest frame (0 before the first).
    pub fn newest_seq(&self) -> u64 {
        self.newest_seq
    }

    /// The pieces that take a client holding everything up to frame `after` to the newest
    /// frame: the largest held aligned span wherever one starts, else one frame. `None` if
    /// frames after `after` are no longer held (the client needs a snapshot).
    pub fn catch_up(&self, after: u64) -> Option<Vec<Piece>> {
        let upto = self.newest_seq;
        if after >= upto {
            return Some(Vec::new());
        }
        let oldest = self.frames.front()?.seq;
        if after + 1 < oldest {
            return None;
        }
        let mut pieces = Vec::new();
        let mut at = after;
        while at < upto {
            let span = SPAN_LEVELS
                .iter()
                .enumerate()
                .rev()
                .filter(|&(_, &frames)| at.is_multiple_of(frames) && at + frames <= upto)
                .find_map(|(level, _)| self.span_from(level, at + 1));
            let piece = match span {
                Some(span) => Piece::Span(span),
                None => Piece::Frame(Arc::clone(
                    self.frames.get(usize::try_from(at + 1 - oldest).ok()?)?,
                )),
            };
            at = piece.last_seq();
            pieces.push(piece);
        }
        Some(pieces)
    }

    /// The held span of `level` whose first frame is `first`.
    fn span_from(&self, level: usize, first: u64) -> Option<Arc<Span>> {
        let spans = &self.spans[level];
        let offset = first.checked_sub(spans.front()?.first_seq)?;
        let index = usize::try_from(offset / SPAN_LEVELS[level]).ok()?;
        spans
            .get(index)
            .filter(|s| s.first_seq == first)
            .map(Arc::clone)
    }

    /// Bytes of frames held (spans not counted: they hold the frames' deltas and build
    /// their bytes only when a client needs them).
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
    use crate::aggregate::{Changes, Layout, State};
    use crate::events::StoreId;
    use crate::live::delta::Delta;
    use crate::live::frame::{FrameBuilder, encode_delta, to_json};
    use crate::live::sse::{Encoded, Encoding, GZIP_HEADER};
    use bytes::Bytes;

    fn frame(seq: u64, size: usize) -> Arc<Frame> {
        Arc::new(Frame {
            seq,
            id: format!("t:{seq}"),
            all: Encoded::new(Bytes::new()),
            per_store: HashMap::new(),
            size,
            built_ms: seq * 1_000,
            delta: Arc::new(Delta {
                position: format!("t:{seq}"),
                as_of: None,
                as_of_ms: 0,
                stores: Default::default(),
                store_count: None,
                all_stores: None,
            }),
        })
    }

    fn log_of(frames: u64, limits: LogLimits) -> FrameLog {
        let mut log = FrameLog::new(limits);
        for seq in 1..=frames {
            log.push(frame(seq, 10));
        }
        log
    }

    fn covered(log: &FrameLog, after: u64) -> Option<Vec<(u64, u64)>> {
        let pieces = log.catch_up(after)?;
        Some(
            pieces
                .iter()
                .map(|p| (p.last_seq() + 1 - p.frames(), p.last_seq()))
                .collect(),
        )
    }

    #[test]
    fn the_log_finds_held_ids_and_forgets_beyond_its_bounds() {
        let log = log_of(
            5,
            LogLimits {
                frames: 3,
                bytes: 1_000,
                age_ms: 60_000,
            },
        );
        assert_eq!(log.len(), 3);
        assert_eq!(log.seq_of("t:3"), Some(3));
        assert_eq!(covered(&log, 3), Some(vec![(4, 4), (5, 5)]));
        assert_eq!(covered(&log, 5), Some(vec![]));
        assert_eq!(
            covered(&log, 2),
            Some(vec![(3, 3), (4, 4), (5, 5)]),
            "frame 3 is held"
        );
        assert_eq!(log.seq_of("t:2"), None, "evicted");
        assert_eq!(covered(&log, 1), None, "frame 2 is gone");
        assert_eq!(log.seq_of("garbage"), None);
        let small = log_of(
            5,
            LogLimits {
                frames: 100,
                bytes: 25,
                age_ms: 60_000,
            },
        );
        assert_eq!((small.len(), small.bytes()), (2, 20));
        // Frames one second apart; a log of 2.5 s holds the newest three.
        let young = log_of(
            5,
            LogLimits {
                frames: 100,
                bytes: 1_000,
                age_ms: 2_500,
            },
        );
        assert_eq!(young.len(), 3);
        assert_eq!(young.seq_of("t:2"), None, "too old");
        assert_eq!(young.seq_of("t:3"), Some(3));
        assert_eq!(
            FrameLog::new(young.limits).catch_up(0).map(|p| p.len()),
            Some(0)
        );
    }

    #[test]
    fn a_gap_is_covered_by_the_largest_aligned_spans_held() {
        let unbounded = LogLimits {
            frames: usize::MAX,
            bytes: usize::MAX,
            age_ms: u64::MAX,
        };
        let log = log_of(10_037, unbounded);
        let pieces = covered(&log, 37).expect("held");
        assert_eq!(
            pieces,
            [
                vec![(38, 38), (39, 39), (40, 40)],
                (0..3).map(|i| (41 + 8 * i, 48 + 8 * i)).collect(),
                (0..7).map(|i| (65 + 64 * i, 128 + 64 * i)).collect(),
                (0..7).map(|i| (513 + 512 * i, 1024 + 512 * i)).collect(),
                vec![(4097, 8192)],
                (0..3).map(|i| (8193 + 512 * i, 8704 + 512 * i)).collect(),
                (0..4).map(|i| (9729 + 64 * i, 9792 + 64 * i)).collect(),
                (0..6).map(|i| (9985 + 8 * i, 9992 + 8 * i)).collect(),
                (10_033..=10_037).map(|s| (s, s)).collect(),
            ]
            .concat()[..]
        );
        // Whatever the gap, the pieces are contiguous, end at the newest frame, and are few.
        for after in [0, 1, 7, 8, 9, 63, 64, 100, 511, 4095, 4096, 10_036] {
            let pieces = covered(&log, after).expect("held");
            let mut at = after;
            for (first, last) in &pieces {
                assert_eq!(*first, at + 1, "after {after}");
                at = *last;
            }
            assert_eq!(at, 10_037);
            assert!(
                pieces.len() <= 2 * 7 * 4 + 3,
                "after {after}: {}",
                pieces.len()
            );
        }
        // Spans that start at an evicted frame are gone with it.
        let short = log_of(
            100,
            LogLimits {
                frames: 30,
                ..unbounded
            },
        );
        assert_eq!(
            covered(&short, 70),
            Some(
                [
                    vec![(71, 71), (72, 72)],
                    vec![(73, 80), (81, 88), (89, 96)],
                    (97..=100).map(|s| (s, s)).collect(),
                ]
                .concat()
            )
        );
        assert_eq!(covered(&short, 69), None, "frame 70 is gone");
    }

    /// A client behind by 1, 8, 100 and 10 000 frames, caught up from shared pieces, ends
    /// exactly where one that applied every frame in order ends, for an all-stores and a
    /// one-store client, plain and through one gzip stream (the client's merge rules,
    /// `live::client`).
    #[test]
    fn a_client_caught_up_by_shared_spans_equals_one_that_applied_every_frame() {
        use crate::aggregate::{AggregateConfig, PartitionKey, RecordRef};
        use crate::events::TopicRole;
        use crate::live::client::{SseParser, apply_delta};
        use crate::scenario::{FlashSale, Scenario, ScenarioConfig};
        const FRAMES: usize = 10_037;
        let lags = [1, 8, 100, 10_000];
        let layout = Layout::new(
            TopicRole::ALL
                .iter()
                .map(|r| (*r, r.name().to_owned(), 1))
                .collect(),
        );
        let mut state = State::new(Arc::new(AggregateConfig::default()));
        let scenario = Scenario::new(ScenarioConfig {
            popularity: Default::default(),
            seed: 11,
            start_ms: 1_767_225_000_000,
            events_per_second: 40.0,
            stores: 3,
            skus_per_store: 30,
            flash_sale: Some(FlashSale {
                starts_after_ms: 20_000,
                duration_ms: 600_000,
                skus_per_store: 3,
                oversell: true,
                discount_percent: 30,
            }),
        });
        let store = StoreId::from("store-berlin");
        let scopes = [None, Some(&store)];
        let mut builder = FrameBuilder::new();
        let mut log = FrameLog::new(LogLimits {
            frames: usize::MAX,
            bytes: usize::MAX,
            age_ms: u64::MAX,
        });
        let mut changes = Changes::default();
        let mut next = std::collections::HashMap::new();
        let mut frames = Vec::new();
        // The snapshots (all stores, one store) where each lagging client stopped.
        let mut held: HashMap<u64, [serde_json::Value; 2]> = HashMap::new();
        let snapshot = |state: &State, scope: Option<&StoreId>| match scope {
            None => serde_json::to_value(state.rollup_snapshot(&layout)).expect("json"),
            Some(_) => serde_json::to_value(state.snapshot(&layout, scope)).expect("json"),
        };
        for event in scenario {
            if frames.len() == FRAMES {
                break;
            }
            let seq = frames.len() as u64;
            if lags.contains(&(FRAMES as u64 - seq)) {
                held.insert(seq, scopes.map(|scope| snapshot(&state, scope)));
            }
            let role = event.kind().topic_role();
            let offset = next.entry(role).or_insert(0_i64);
            state.apply(
                &event,
                RecordRef {
                    partition: PartitionKey { role, partition: 0 },
                    offset: *offset,
                },
                &mut changes,
            );
            *offset += 1;
            if !changes.is_empty() {
                let frame =
                    Arc::new(builder.build(&state, &layout, &std::mem::take(&mut changes), 0));
                // The spliced bytes are serde's for the rollup's part and for each store's.
                assert_eq!(frame.all.plain(), &encode_delta(&frame.delta.rollup()));
                for (id, bytes) in &frame.per_store {
                    let scoped = frame.delta.scoped(id).expect("a changed store");
                    assert_eq!(bytes.plain(), &encode_delta(&scoped));
                }
                // Its size for the log's bound: the events it carries and its typed delta
                // (as the JSON of its parts).
                let encoded: usize =
                    frame.all.len() + frame.per_store.values().map(Encoded::len).sum::<usize>();
                let typed: usize = frame
                    .delta
                    .stores
                    .values()
                    .map(|part| to_json(part).len())
                    .sum::<usize>()
                    + frame
                        .delta
                        .all_stores
                        .as_ref()
                        .map_or(0, |r| to_json(r).len());
                assert_eq!(frame.size, encoded + typed);
                log.push(Arc::clone(&frame));
                frames.push(frame);
            }
        }
        let deltas = |bytes: &[u8]| {
            let mut parsed = Vec::new();
            SseParser::new().push(bytes, |e| {
                parsed.push(serde_json::from_slice::<serde_json::Value>(e.data).expect("json"))
            });
            parsed
        };
        for lag in lags {
            let after = FRAMES as u64 - lag;
            let pieces = log.catch_up(after).expect("held");
            assert!(
                pieces.len() <= 2 * 7 * 4 + 3,
                "lag {lag}: {} pieces",
                pieces.len()
            );
            for (i, scope) in scopes.into_iter().enumerate() {
                let base = &held[&after][i];
                // Applying every frame in order (the newest snapshot stands in for the
                // longest lag: the two were checked equal, and parsing 10 000 frames here
                // would take seconds).
                let one_by_one = if lag <= 100 {
                    let mut view = base.clone();
                    for frame in &frames[after as usize..] {
                        if let Some(bytes) = frame.bytes_for(scope) {
                            for delta in deltas(bytes.plain()) {
                                apply_delta(&mut view, &delta);
                            }
                        }
                    }
                    view
                } else {
                    snapshot(&state, scope)
                };
                let (mut plain, mut gzip) = (Vec::new(), GZIP_HEADER.to_vec());
                for piece in &pieces {
                    plain.extend(
                        piece
                            .bytes_for(scope, Encoding::Identity)
                            .unwrap_or_default(),
                    );
                    gzip.extend(piece.bytes_for(scope, Encoding::Gzip).unwrap_or_default());
                }
                let mut unzipped = Vec::new();
                let _ = std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(gzip.as_slice()),
                    &mut unzipped,
                );
                assert_eq!(
                    unzipped, plain,
                    "lag {lag}, scope {scope:?}: gzip decodes to plain"
                );
                let mut caught_up = base.clone();
                for delta in deltas(&plain) {
                    apply_delta(&mut caught_up, &delta);
                }
                assert_eq!(
                    (caught_up.clone()),
                    (snapshot(&state, scope)),
                    "lag {lag}, scope {scope:?}: the newest snapshot"
                );
                assert_eq!(
                    (caught_up),
                    (one_by_one.clone()),
                    "lag {lag}, scope {scope:?}"
                );
            }
        }
    }
}
