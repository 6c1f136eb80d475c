//! The cluster's data path without Kafka: slices built by their aggregators, frames and
//! changelog records through their bytes, edges started at different times. What must hold
//! (ADR 0007): an edge ends equal to one process over the same records; a client applying
//! an edge's frames ends equal to its snapshot; two edges make the same frames with the
//! same ids from the point the later one loaded the changelog; a republished frame is a
//! duplicate and moves nothing.

use super::edge::{Applied, Edge};
use super::slice::SliceBuilder;
use super::slice_of;
use super::wire::{self, SliceFrame, SliceHead};
use crate::aggregate::view::StoreView;
use crate::aggregate::{AggregateConfig, Changes, Layout, PartitionKey, RecordRef, State};
use crate::events::samples::SAMPLE_TIME;
use crate::events::{StoreId, TopicRole};
use crate::live::Frame;
use crate::scenario::{FlashSale, Scenario, ScenarioConfig};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const MINUTE: i64 = 60_000;

fn layout(slices: i32) -> Layout {
    Layout::new(vec![
        (TopicRole::Orders, "orders".into(), slices),
        (TopicRole::Inventory, "inventory".into(), slices),
        (TopicRole::Activity, "activity".into(), slices),
    ])
}

/// One aggregator's slice: its state, the changes since its last frame, its builder.
struct Slice {
    state: State,
    changes: Changes,
    builder: Option<SliceBuilder>,
}

/// The compacted changelog: the newest value of each key, per slice.
type Changelog = BTreeMap<i32, BTreeMap<String, Vec<u8>>>;

fn load_from(changelog: &Changelog, edge: &mut Edge) {
    for records in changelog.values() {
        let head = SliceHead::decode(&records[wire::HEAD_KEY]).expect("head");
        let views = records.iter().filter_map(|(key, value)| {
            let store = wire::store_of_key(key)?;
            Some((
                StoreId(store.into()),
                wire::decode_view(value).expect("view"),
            ))
        });
        edge.load(head, views.collect::<Vec<_>>());
    }
}

/// What a client holds: the rollup and the stores' views, applied delta by delta.
#[derive(Default)]
struct Client {
    rollup: Option<StoreView>,
    stores: BTreeMap<String, StoreView>,
}

impl Client {
    fn apply(&mut self, frame: &Frame) {
        for (id, delta) in &frame.delta.stores {
            let view = delta.apply_to(self.stores.get(id));
            self.stores.insert(id.clone(), view);
        }
        if let Some(all) = &frame.delta.all_stores {
            self.rollup = Some(all.apply_to(self.rollup.as_ref()));
        }
    }
}

fn frame_of(applied: Applied) -> Frame {
    match applied {
        Applied::Frame(frame) => frame,
        other => panic!("expected a frame, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn edges_fed_by_slices_end_equal_to_one_process_and_agree_on_every_id(
        seed in 0u64..1_000,
        stores in 2usize..10,
        slices in 1i32..5,
        list_limit in 1usize..6,
        frame_every in 1usize..40,
        join_at in 0usize..1_200,
        duplicate_every in 2usize..9,
    ) {
        let mut config = AggregateConfig::default();
        config.time_zones.insert("store-tokyo".into(), chrono_tz::Asia::Tokyo);
        config.list_limit = list_limit;
        let config = Arc::new(config);
        let layout = layout(slices);
        let mut whole = State::new(Arc::clone(&config));
        let mut held: Vec<Slice> = (0..slices)
            .map(|_| Slice { state: State::new(Arc::clone(&config)), changes: Changes::default(), builder: None })
            .collect();
        let scenario = Scenario::new(ScenarioConfig {
            popularity: Default::default(),
            seed,
            start_ms: SAMPLE_TIME,
            events_per_second: 2.0,
            stores,
            skus_per_store: 12,
            flash_sale: Some(FlashSale {
                starts_after_ms: MINUTE,
                duration_ms: 30 * MINUTE,
                skus_per_store: 3,
                oversell: true,
                discount_percent: 30,
            }),
        });
        let mut changelog: Changelog = BTreeMap::new();
        let mut topic: Vec<Vec<u8>> = Vec::new();
        let mut first = Edge::new(layout.clone(), Arc::clone(&config));
        let mut client = Client::default();
        let mut fed = 0;
        let mut later: Option<(Edge, Client)> = None;
        let mut offsets: BTreeMap<(i32, TopicRole), i64> = BTreeMap::new();
        let mut ignored = Changes::default();
        let total = 1_200;
        for (i, event) in scenario.take(total).enumerate() {
            let role = event.kind().topic_role();
            let slice = slice_of(event.store_id().as_str(), slices);
            let offset = offsets.entry((slice, role)).or_insert(0);
            let at = RecordRef { partition: PartitionKey { role, partition: slice }, offset: *offset };
            *offset += 1;
            whole.apply(&event, at, &mut ignored);
            let mine = &mut held[slice as usize];
            mine.state.apply(&event, at, &mut mine.changes);
            if !((i + 1).is_multiple_of(frame_every) || i + 1 == total) {
                continue;
            }
            // Every slice with something new publishes a frame and its changelog records.
            for (number, slice) in held.iter_mut().enumerate() {
                let number = number as i32;
                let changes = std::mem::take(&mut slice.changes);
                let frame = match &mut slice.builder {
                    None if slice.state.stores().is_empty() => continue,
                    None => {
                        let (builder, frame) = SliceBuilder::whole(number, &slice.state);
                        slice.builder = Some(builder);
                        frame
                    }
                    Some(_) if changes.is_empty() => continue,
                    Some(builder) => builder.build(&slice.state, &changes),
                };
                let builder = slice.builder.as_ref().expect("built");
                let records = changelog.entry(number).or_default();
                // The aggregator encodes into one buffer per slice, record after record: a
                // buffer that held a longer record gives the same bytes as a fresh one.
                let mut reused = vec![0xAB; 1 << 16];
                frame.head.encode_into(&mut reused);
                assert_eq!(reused, frame.head.encode());
                records.insert(wire::HEAD_KEY.into(), reused.clone());
                for id in frame.stores.keys() {
                    let view = builder.view(&StoreId(id.clone())).expect("a changed store's view");
                    wire::encode_view_into(view, &mut reused);
                    assert_eq!(reused, wire::encode_view(view));
                    records.insert(wire::store_key(id), reused.clone());
                }
                frame.encode_into(&mut reused);
                assert_eq!(reused, frame.encode());
                topic.push(reused);
            }
            // The first edge (from the start) reads what was published; so does the later
            // one once it has loaded the changelog, and they make the same frames.
            while fed < topic.len() {
                let frame = SliceFrame::decode(&topic[fed]).expect("a frame decodes");
                fed += 1;
                let made = frame_of(first.apply(&frame, 0));
                client.apply(&made);
                if let Some((edge, its_client)) = &mut later {
                    let again = frame_of(edge.apply(&frame, 0));
                    prop_assert_eq!(&again.id, &made.id);
                    prop_assert_eq!(&again.delta, &made.delta);
                    its_client.apply(&again);
                }
                // A frame read again (an owner republishing it) is a duplicate.
                if fed.is_multiple_of(duplicate_every) {
                    let old = SliceFrame::decode(&topic[fed / 2]).expect("decodes");
                    prop_assert!(matches!(first.apply(&old, 0), Applied::Duplicate));
                }
            }
            if later.is_none() && i >= join_at {
                let mut edge = Edge::new(layout.clone(), Arc::clone(&config));
                load_from(&changelog, &mut edge);
                prop_assert_eq!(edge.position(), first.position());
                let its_client = Client {
                    rollup: Some((**edge.rollup()).clone()),
                    stores: edge.stores().map(|(id, v)| (id.to_string(), (**v).clone())).collect(),
                };
                later = Some((edge, its_client));
            }
        }
        prop_assert_eq!(first.position(), whole.position());
        prop_assert_eq!(&**first.rollup(), &whole.all_stores_view());
        for id in whole.stores().keys() {
            let expected = whole.store_view(id);
            prop_assert_eq!(Some(&**first.store(id).expect("held")), expected.as_ref());
            prop_assert_eq!(client.stores.get(id.as_str()), expected.as_ref());
        }
        prop_assert_eq!(client.rollup.as_ref(), Some(&**first.rollup()));
        let (edge, its_client) = later.expect("the later edge joined");
        prop_assert_eq!(edge.position(), first.position());
        prop_assert_eq!(edge.rollup(), first.rollup());
        prop_assert_eq!(its_client.rollup.as_ref(), Some(&**first.rollup()));
        prop_assert_eq!(&its_client.stores, &client.stores);
    }
}

/// A frame that skips one is a gap; the slice reloaded from the changelog gives a frame
/// that carries its stores whole, and the chain continues from there.
#[test]
fn a_frame_past_a_gap_is_refused_and_a_reload_continues_the_chain() {
    let config = Arc::new(AggregateConfig::default());
    let layout = layout(1);
    let mut state = State::new(Arc::clone(&config));
    let mut events = Scenario::new(ScenarioConfig {
        popularity: Default::default(),
        seed: 7,
        start_ms: SAMPLE_TIME,
        events_per_second: 2.0,
        stores: 2,
        skus_per_store: 5,
        flash_sale: None,
    });
    let mut offsets: BTreeMap<TopicRole, i64> = BTreeMap::new();
    let mut apply = |state: &mut State, n: usize| {
        let mut changes = Changes::default();
        for event in events.by_ref().take(n) {
            let role = event.kind().topic_role();
            let offset = offsets.entry(role).or_insert(0);
            let at = RecordRef {
                partition: PartitionKey { role, partition: 0 },
                offset: *offset,
            };
            *offset += 1;
            state.apply(&event, at, &mut changes);
        }
        changes
    };
    apply(&mut state, 50);
    let (mut builder, whole) = SliceBuilder::whole(0, &state);
    let changes = apply(&mut state, 50);
    let _skipped = builder.build(&state, &changes);
    let changes = apply(&mut state, 50);
    let next = builder.build(&state, &changes);
    let mut edge = Edge::new(layout, Arc::clone(&config));
    frame_of(edge.apply(&whole, 0));
    assert!(matches!(
        edge.apply(&next, 0),
        Applied::Gap { held: Some(h), from: Some(f) } if h == whole.to && f != h
    ));
    let views: Vec<(StoreId, StoreView)> = state
        .stores()
        .keys()
        .map(|id| (id.clone(), (**builder.view(id).expect("view")).clone()))
        .collect();
    let reloaded = edge.reload(builder.head(&state), views, 0);
    assert_eq!(reloaded.id, edge.layout().encode(state.position()));
    assert_eq!(reloaded.delta.stores.len(), state.stores().len());
    assert!(
        reloaded
            .delta
            .stores
            .values()
            .all(|d| d.recent_orders_complete)
    );
    assert_eq!(&**edge.rollup(), &state.all_stores_view());
    let changes = apply(&mut state, 50);
    frame_of(edge.apply(&builder.build(&state, &changes), 0));
    assert_eq!(edge.position(), state.position());
    assert_eq!(&**edge.rollup(), &state.all_stores_view());
}
