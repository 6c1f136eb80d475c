//! The checkpoint format: a [`State`] and its position as versioned bytes, and back. Pure;
//! the PostgreSQL store (`storepulse::checkpoint`) only moves these bytes.
//!
//! A state is written in parts (format 5): a *head* (everything but the stores: positions,
//! dedup windows, record times; bounded by partitions and `dedup_capacity`) written whole
//! every time, and *one part per store*, written only when the store changed since the last
//! checkpoint written (the caller says which). No single value grows with the number of
//! stores, and a checkpoint writes what changed.
//!
//! The rule is "never misread": a checkpoint is restored only if its [`FORMAT_VERSION`]
//! is today's, otherwise it is rejected with [`FormatError::Version`] and the state is
//! rebuilt from Kafka. A golden fixture per version (`fixtures/checkpoint/v<N>.bin`) is
//! checked by the tests below: changing a serialised type without bumping the version
//! fails them.

use crate::aggregate::{AggregateConfig, FrozenHead, Layout, PartitionKey, State, StoreState};
use crate::events::StoreId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use thiserror::Error;

/// Version of the serialised `State`. Bump it whenever a serialised type in `aggregate`
/// changes shape (and add the new golden fixture, see the tests); older checkpoints are
/// then ignored and the state is rebuilt from Kafka.
pub const FORMAT_VERSION: i32 = 5;

/// A checkpoint that cannot be restored.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// Written by another version of the format.
    #[error("checkpoint format version {found} is not this build's {FORMAT_VERSION}")]
    Version {
        /// The version it was written with.
        found: i32,
    },
    /// The bytes do not decode although the version matches (a defect, never guessed at).
    #[error("checkpoint state does not decode: {0}")]
    Corrupt(String),
}

/// A state frozen for a checkpoint: taken by the state's owner on its own thread in time
/// proportional to the number of stores written (pointer copies of shared stores, a memory
/// copy of the head), serialised by the writer with [`Frozen::encode`] off that thread.
/// Encoding lets go of the shared stores (the state's owner then changes them without
/// copying) and keeps the bytes for another attempt.
#[derive(Debug)]
pub struct Frozen {
    parts: Mutex<Parts>,
    /// How many stores this checkpoint writes.
    store_count: usize,
    /// Every store is in `stores`: the checkpoint does not build on earlier ones.
    pub full: bool,
    /// The freeze's number in its process: a write acknowledges the stores changed before
    /// it (the state's owner keeps the others for the next).
    pub generation: u64,
    /// Encoded position.
    pub position: String,
    /// Per-partition positions: `(topic, partition, next offset)`.
    pub partitions: Vec<(String, i32, i64)>,
    /// Newest event time.
    pub newest_event_time: i64,
}

/// A frozen checkpoint's state: shared until encoded, then its bytes.
#[derive(Debug)]
enum Parts {
    /// The head, and the stores written with this checkpoint (those changed since the last
    /// checkpoint written, or every store when `full`).
    Shared {
        head: FrozenHead,
        stores: Vec<(StoreId, Arc<StoreState>)>,
    },
    Encoded(Arc<Encoded>),
}

/// A frozen checkpoint's bytes, in format [`FORMAT_VERSION`].
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Everything but the stores.
    pub head: Vec<u8>,
    /// Each store written, on its own.
    pub stores: Vec<(String, Vec<u8>)>,
}

impl Encoded {
    /// Bytes of state (head and stores).
    pub fn bytes(&self) -> usize {
        self.head.len() + self.stores.iter().map(|(_, b)| b.len()).sum::<usize>()
    }
}

impl Frozen {
    /// Freezes `state` in `layout`: its head, and the stores in `stores` (every store of the
    /// state if `full`).
    pub fn of<'a>(
        state: &State,
        layout: &Layout,
        stores: impl IntoIterator<Item = &'a StoreId>,
        full: bool,
        generation: u64,
    ) -> Frozen {
        let partitions = layout
            .topics()
            .iter()
            .flat_map(|(role, name, count)| {
                (0..*count).map(move |partition| (*role, name.clone(), partition))
            })
            .map(|(role, name, partition)| {
                let next = state
                    .position()
                    .next_offset(PartitionKey { role, partition });
                (name, partition, next)
            })
            .collect();
        let share = |(id, store): (&StoreId, &Arc<StoreState>)| (id.clone(), Arc::clone(store));
        let stores: Vec<_> = if full {
            state.stores().iter().map(share).collect()
        } else {
            stores
                .into_iter()
                .filter_map(|id| state.stores().get_key_value(id))
                .map(share)
                .collect()
        };
        Frozen {
            store_count: stores.len(),
            parts: Mutex::new(Parts::Shared {
                head: state.frozen_head(),
                stores,
            }),
            full,
            generation,
            position: layout.encode(state.position()),
            partitions,
            newest_event_time: state.newest_event_time(),
        }
    }

    /// The whole state of `state` (every store), as a first checkpoint.
    pub fn whole(state: &State, layout: &Layout) -> Frozen {
        Frozen::of(state, layout, std::iter::empty(), true, 0)
    }

    /// How many stores this checkpoint writes.
    pub fn store_count(&self) -> usize {
        self.store_count
    }

    /// Serialises the head and the stores (the costly part: run it off the state owner's
    /// thread) the first time, then lets go of the stores; later calls return those bytes.
    pub fn encode(&self) -> Arc<Encoded> {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        let encoded = match &*parts {
            Parts::Encoded(encoded) => return Arc::clone(encoded),
            Parts::Shared { head, stores } => Arc::new(Encoded {
                head: encode_frozen_head(head),
                stores: stores
                    .iter()
                    .map(|(id, store)| (id.to_string(), encode_store(store)))
                    .collect(),
            }),
        };
        *parts = Parts::Encoded(Arc::clone(&encoded));
        encoded
    }
}

fn encode_frozen_head(head: &FrozenHead) -> Vec<u8> {
    postcard::to_stdvec(head).unwrap_or_else(|e| panic!("a head always serialises: {e}"))
}

/// The head of `state` (everything but its stores) in format [`FORMAT_VERSION`].
pub fn encode_head(state: &State) -> Vec<u8> {
    encode_frozen_head(&state.frozen_head())
}

/// One store in format [`FORMAT_VERSION`].
pub fn encode_store(store: &StoreState) -> Vec<u8> {
    postcard::to_stdvec(store).unwrap_or_else(|e| panic!("a store always serialises: {e}"))
}

/// The whole of `state` as one value (head and every store): the golden fixture's form.
pub fn encode(state: &State) -> Vec<u8> {
    let stores: Vec<(String, Vec<u8>)> = state
        .stores()
        .iter()
        .map(|(id, store)| (id.to_string(), encode_store(store)))
        .collect();
    postcard::to_stdvec(&(encode_head(state), stores))
        .unwrap_or_else(|e| panic!("state always serialises: {e}"))
}

/// The state of a checkpoint written in format `version` as one value ([`encode`]), with
/// today's business settings.
pub fn restore(
    version: i32,
    bytes: &[u8],
    config: Arc<AggregateConfig>,
) -> Result<State, FormatError> {
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let (head, stores): (Vec<u8>, Vec<(String, Vec<u8>)>) =
        postcard::from_bytes(bytes).map_err(|e| FormatError::Corrupt(e.to_string()))?;
    restore_parts(version, &head, stores, config)
}

/// The state of a checkpoint written in format `version` as a head and its stores' parts.
/// Stores are decoded on up to `std::thread::available_parallelism` threads (a restart of
/// thousands of stores uses every core).
pub fn restore_parts(
    version: i32,
    head: &[u8],
    stores: Vec<(String, Vec<u8>)>,
    config: Arc<AggregateConfig>,
) -> Result<State, FormatError> {
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let head = postcard::from_bytes(head).map_err(|e| FormatError::Corrupt(e.to_string()))?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = stores.len().div_ceil(threads).max(1);
    let decoded: Vec<Result<Vec<(StoreId, StoreState)>, FormatError>> =
        std::thread::scope(|scope| {
            let workers: Vec<_> = stores
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(id, bytes)| {
                                postcard::from_bytes(bytes)
                                    .map(|store| (StoreId(id.clone()), store))
                                    .map_err(|e| FormatError::Corrupt(format!("store {id:?}: {e}")))
                            })
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(FormatError::Corrupt("a decoder panicked".into())))
                })
                .collect()
        });
    let mut all = BTreeMap::new();
    for part in decoded {
        all.extend(part?);
    }
    Ok(State::from_parts(head, all, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Changes, RecordRef};
    use crate::events::TopicRole;
    use crate::scenario::{FlashSale, Scenario, ScenarioConfig};
    use std::path::PathBuf;

    /// A state touching every serialised type: orders, cancellations, stock (oversold
    /// too), sessions, dedup windows, several stores and days.
    fn golden_state() -> (State, Layout) {
        let layout = Layout::new(vec![
            (TopicRole::Orders, "orders".into(), 2),
            (TopicRole::Inventory, "inventory".into(), 2),
            (TopicRole::Activity, "activity".into(), 1),
        ]);
        let mut state = State::new(Arc::new(AggregateConfig::default()));
        let scenario = Scenario::new(ScenarioConfig {
            popularity: Default::default(),
            seed: 7,
            start_ms: 1_767_225_000_000,
            events_per_second: 20.0,
            stores: 2,
            skus_per_store: 6,
            flash_sale: Some(FlashSale {
                starts_after_ms: 5_000,
                duration_ms: 30_000,
                skus_per_store: 2,
                oversell: true,
                discount_percent: 30,
            }),
        });
        let mut changes = Changes::default();
        let mut offsets = std::collections::HashMap::new();
        for (index, event) in scenario.take(600).enumerate() {
            let role = event.kind().topic_role();
            let partition = match role {
                TopicRole::Activity => 0,
                _ => i32::from(index % 3 == 0),
            };
            let offset = offsets.entry((role, partition)).or_insert(0_i64);
            let at = RecordRef {
                partition: PartitionKey { role, partition },
                offset: *offset,
            };
            *offset += 1;
            state.apply(&event, at, &mut changes);
        }
        (state, layout)
    }

    fn fixture(version: i32) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("fixtures/checkpoint/v{version}.bin"))
    }

    /// The fixture of today's version, written anew with `STOREPULSE_BLESS=1` (only when a
    /// bump of [`FORMAT_VERSION`] calls for a new one; older fixtures stay).
    fn golden_bytes() -> Vec<u8> {
        let path = fixture(FORMAT_VERSION);
        if std::env::var_os("STOREPULSE_BLESS").is_some() && !path.exists() {
            std::fs::write(&path, encode(&golden_state().0)).expect("fixture written");
        }
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; a new FORMAT_VERSION needs its fixture (STOREPULSE_BLESS=1 cargo test -p storepulse-core checkpoint)",
                path.display()
            )
        })
    }

    /// The encoding is not byte-stable (hash sets are written in their iteration order), so
    /// the fixture is compared by what it restores to: a serialised type that changed shape
    /// without a version bump fails to decode or decodes to another state.
    #[test]
    fn the_golden_fixture_of_todays_version_restores_to_the_same_state() {
        let (state, layout) = golden_state();
        let restored = restore(FORMAT_VERSION, &golden_bytes(), Arc::new(AggregateConfig::default()))
            .expect("today's fixture restores: if a serialised type changed, bump FORMAT_VERSION and bless a new fixture");
        assert!(
            restored == state,
            "the fixture restores to another state: a serialised type changed shape without a FORMAT_VERSION bump, so old checkpoints would be misread"
        );
        let json = |s: &State| serde_json::to_string(&s.snapshot(&layout, None)).expect("json");
        assert_eq!(json(&restored), json(&state));
        let again = restore(
            FORMAT_VERSION,
            &encode(&restored),
            Arc::new(AggregateConfig::default()),
        )
        .expect("a restored state encodes and restores");
        assert!(again == state);
    }

    /// A checkpoint written in parts: a whole one, then only the stores that changed; the
    /// newest part of each store with the newest head restores the state exactly.
    #[test]
    fn the_newest_part_of_each_store_and_the_newest_head_restore_the_state() {
        let (mut state, layout) = golden_state();
        let config = || Arc::new(AggregateConfig::default());
        let first = Frozen::whole(&state, &layout).encode();
        assert_eq!(first.stores.len(), state.stores().len());
        let mut parts: BTreeMap<String, Vec<u8>> = first.stores.iter().cloned().collect();
        // More records of one store only.
        let mut changes = Changes::default();
        let berlin = state.stores().keys().next().cloned().expect("a store");
        let mut order = crate::events::samples::order_placed();
        order.store_id = berlin.clone();
        order.occurred_at = 1_767_225_030_000;
        let event = crate::events::Event::OrderPlaced(order);
        let at = RecordRef {
            partition: PartitionKey {
                role: TopicRole::Orders,
                partition: 0,
            },
            offset: 10_000,
        };
        state.apply(&event, at, &mut changes);
        assert_eq!(changes.stores.keys().collect::<Vec<_>>(), vec![&berlin]);
        let frozen = Frozen::of(&state, &layout, changes.stores.keys(), false, 1);
        assert_eq!(frozen.store_count(), 1, "only the changed store is written");
        // Changes after the freeze are not in it (the store is shared copy-on-write).
        let mut later = crate::events::samples::order_placed();
        later.store_id = berlin.clone();
        later.event_id = "after-the-freeze".into();
        later.occurred_at = 1_767_225_031_000;
        let later_at = RecordRef {
            offset: 10_001,
            ..at
        };
        let at_freeze = state.clone();
        state.apply(
            &crate::events::Event::OrderPlaced(later),
            later_at,
            &mut changes,
        );
        assert!(state != at_freeze);
        assert_eq!(changes.store_copies, 1, "the shared store was copied, once");
        // The changed store was copied; the copy at the freeze is shared by the checkpoint
        // (and `at_freeze`) until it is encoded.
        assert_eq!(Arc::strong_count(&at_freeze.stores()[&berlin]), 2);
        let second = frozen.encode();
        assert_eq!(Arc::strong_count(&at_freeze.stores()[&berlin]), 1);
        let state = at_freeze;
        let expected = Frozen::of(&state, &layout, [&berlin], false, 1).encode();
        assert_eq!(second.stores, expected.stores);
        assert_eq!(second.head, expected.head);
        // A second attempt writes the same bytes.
        assert!(Arc::ptr_eq(&frozen.encode(), &second));
        assert!(second.bytes() < first.bytes());
        parts.extend(second.stores.iter().cloned());
        let restored = restore_parts(
            FORMAT_VERSION,
            &second.head,
            parts.into_iter().collect(),
            config(),
        )
        .expect("restores");
        assert!(restored == state);
        // An old part of the changed store with the new head is another state: the store's
        // newest part is what restores it.
        let stale = restore_parts(FORMAT_VERSION, &second.head, first.stores.clone(), config())
            .expect("decodes");
        assert!(stale != state);
    }

    #[test]
    fn a_checkpoint_of_another_version_or_garbage_is_rejected_not_misread() {
        let golden = golden_bytes();
        let config = || Arc::new(AggregateConfig::default());
        for version in (0..FORMAT_VERSION).chain([FORMAT_VERSION + 1]) {
            assert_eq!(
                restore(version, &golden, config()).err(),
                Some(FormatError::Version { found: version })
            );
        }
        let truncated = &golden[..golden.len() / 2];
        assert!(matches!(
            restore(FORMAT_VERSION, truncated, config()),
            Err(FormatError::Corrupt(_))
        ));
    }
}
