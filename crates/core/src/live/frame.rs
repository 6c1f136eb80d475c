//! Frames and the frame log: a delta serialised once per scope ([`FrameBuilder`]), the
//! bounded in-memory log that lets a reconnecting client resume where it left off, and
//! the conflation of a slow client's pending frames.
//!
//! Every frame is serialised once and shared by every subscriber (`Bytes`); the ingest
//! thread builds them, the HTTP layer writes them.

use super::delta::{Delta, SentLists};
use super::sse::sse_event;
use crate::aggregate::{Changes, Layout, State};
use crate::events::StoreId;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

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

/// Builds the frames of one process: numbers them and remembers what each scope was last
/// sent, so a frame carries only the lists that changed. Every frame must be built here,
/// in order, for that memory to be what clients hold.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    seq: u64,
    sent: SentLists,
}

impl FrameBuilder {
    /// A builder whose first frame is number 1 and whose scopes have been sent nothing.
    pub fn new() -> Self {
        FrameBuilder::default()
    }

    /// The frame of `changes` (not empty) in `state`: the delta serialised once for all
    /// stores and once per changed store. `built_ms` is the caller's monotonic clock (the
    /// log's age bound).
    pub fn build(
        &mut self,
        state: &State,
        layout: &Layout,
        changes: &Changes,
        built_ms: u64,
    ) -> Frame {
        self.seq += 1;
        let mut delta = Delta::of(state, layout, changes);
        delta.omit_unchanged_lists(&mut self.sent);
        let all = encode_delta(&delta);
        let per_store: HashMap<StoreId, Bytes> = delta
            .stores
            .iter()
            .map(|(id, view)| {
                let scoped = Delta {
                    position: delta.position.clone(),
                    as_of: delta.as_of.clone(),
                    as_of_ms: delta.as_of_ms,
                    stores: BTreeMap::from([(id.clone(), view.clone())]),
                    all_stores: None,
                };
                (StoreId(id.clone()), encode_delta(&scoped))
            })
            .collect();
        let size = all.len() + per_store.values().map(Bytes::len).sum::<usize>();
        Frame {
            seq: self.seq,
            id: delta.position.clone(),
            all,
            per_store,
            size,
            built_ms,
            delta: Arc::new(delta),
        }
    }
}

/// The `event: delta` of `delta`, id = its position.
fn encode_delta(delta: &Delta) -> Bytes {
    let json =
        serde_json::to_vec(delta).unwrap_or_else(|e| panic!("a delta always serialises: {e}"));
    Bytes::from(sse_event("delta", Some(&delta.position), &json))
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
            // One copy, of the first frame's part: the later ones fold in by reference.
            let mut merged = match scope {
                None => first.delta.as_ref().clone(),
                Some(store) => first.delta.scoped(store)?,
            };
            for frame in rest {
                match scope {
                    None => merged.absorb(&frame.delta),
                    Some(store) => merged.absorb_scoped(&frame.delta, store),
                }
            }
            Some(encode_delta(&merged))
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

    /// Applying one conflated delta equals applying the frames it replaces, for an
    /// all-stores and a one-store client (the client's merge rules, `live::client`).
    #[test]
    fn a_conflated_delta_applied_once_equals_its_frames_applied_in_order() {
        use crate::aggregate::{AggregateConfig, PartitionKey, RecordRef};
        use crate::events::TopicRole;
        use crate::live::client::{SseParser, apply_delta};
        use crate::scenario::{FlashSale, Scenario, ScenarioConfig};
        let layout = Layout::new(
            TopicRole::ALL
                .iter()
                .map(|r| (*r, r.name().to_owned(), 1))
                .collect(),
        );
        let mut state = State::new(Arc::new(AggregateConfig::default()));
        let scenario = Scenario::new(ScenarioConfig {
            seed: 11,
            start_ms: 1_767_225_000_000,
            events_per_second: 40.0,
            stores: 3,
            skus_per_store: 30,
            flash_sale: Some(FlashSale {
                starts_after_ms: 20_000,
                duration_ms: 60_000,
                skus_per_store: 3,
                oversell: true,
                discount_percent: 30,
            }),
        });
        let mut builder = FrameBuilder::new();
        let mut changes = Changes::default();
        let mut next = std::collections::HashMap::new();
        let mut frames = Vec::new();
        // The snapshots at each frame's position (all stores, one store).
        let mut held: Vec<serde_json::Value> = Vec::new();
        let store = StoreId::from("store-berlin");
        let mut held_store: Vec<serde_json::Value> = Vec::new();
        for (i, event) in scenario.take(6_000).enumerate() {
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
            if (i + 1) % 97 == 0 && !changes.is_empty() {
                held.push(serde_json::to_value(state.snapshot(&layout, None)).expect("json"));
                held_store.push(
                    serde_json::to_value(state.snapshot(&layout, Some(&store))).expect("json"),
                );
                frames.push(Arc::new(builder.build(
                    &state,
                    &layout,
                    &std::mem::take(&mut changes),
                    0,
                )));
            }
        }
        let data = |bytes: &Bytes| {
            let mut parsed = Vec::new();
            SseParser::new().push(bytes, |e| {
                parsed.push(serde_json::from_slice::<serde_json::Value>(e.data).expect("json"))
            });
            parsed
        };
        let sorted = |mut v: serde_json::Value| {
            let sort = |scope: &mut serde_json::Value| {
                if let Some(stock) = scope["stock"].as_array_mut() {
                    stock.sort_by_key(|s| format!("{}/{}", s["store_id"], s["sku"]));
                }
            };
            if let Some(stores) = v["stores"].as_object_mut() {
                stores.values_mut().for_each(sort);
            }
            if let Some(all) = v.get_mut("all_stores") {
                sort(all);
            }
            v
        };
        for (start, span) in [(1, 2), (3, 17), (10, 40)] {
            let pending = &frames[start..start + span];
            for (scope, base) in [(None, &held), (Some(&store), &held_store)] {
                // What a client holds after frame `start - 1` (the snapshot at its position).
                let mut one_by_one = base[start - 1].clone();
                let mut conflated = base[start - 1].clone();
                for frame in pending {
                    if let Some(bytes) = frame.bytes_for(scope) {
                        for delta in data(bytes) {
                            apply_delta(&mut one_by_one, &delta);
                        }
                    }
                }
                let bytes = pending_bytes(pending, scope).expect("the frames concern the scope");
                let deltas = data(&bytes);
                assert_eq!(deltas.len(), 1, "one conflated delta");
                apply_delta(&mut conflated, &deltas[0]);
                assert_eq!(
                    sorted(conflated),
                    sorted(one_by_one),
                    "frames {start}..+{span}, scope {scope:?}"
                );
            }
        }
    }
}
