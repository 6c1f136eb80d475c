//! Where the memory of a store goes, without Kafka: bytes held on the heap (a counting
//! allocator) by the state, by the frame builder's views, and by the frame
//! log, per store. The shop is a buggy producer's flood: `BENCH_STORES` (10 000) junk store
//! ids with `BENCH_EVENTS_PER_STORE` (1) events each, after 8 real stores; frames every
//! 100 records as the ingest engine builds them, logged with serve's default limits.
//!
//! Run: `scripts/bench footprint` (`cargo bench --bench footprint`). Not a test: nothing
//! here asserts a size.

mod common;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;
use storepulse::aggregate::{AggregateConfig, Changes, Layout, PartitionKey, RecordRef, State};
use storepulse::events::{Event, StoreId, TopicRole};
use storepulse::live::{FrameBuilder, FrameLog, LogLimits};
use storepulse::simulate::scenario::Scenario;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes currently allocated through the global allocator.
fn held() -> isize {
    let stats = INSTRUMENTED_SYSTEM.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The records of the real shop, then of the junk stores, with their positions (4
/// partitions per topic, keyed like the simulator's producer).
fn records(junk_stores: usize, per_store: usize) -> Vec<(RecordRef, Event)> {
    let start = 1_795_773_600_000;
    let mut next = [[0i64; 4]; 3];
    let mut at = |event: &Event| {
        let role = event.kind().topic_role();
        let partition = (xxhash_rust::xxh3::xxh3_64(event.key().as_bytes()) % 4) as usize;
        let offset = &mut next[role as usize][partition];
        *offset += 1;
        RecordRef {
            partition: PartitionKey {
                role,
                partition: partition as i32,
            },
            offset: *offset - 1,
        }
    };
    let mut out: Vec<(RecordRef, Event)> = Scenario::new(common::catalog(7, start))
        .take(20_000)
        .map(|event| (at(&event), event))
        .collect();
    // The same kinds of events as the shop's, each under a junk store id.
    let mut shop = Scenario::new(common::catalog(8, start + 10_000));
    for store in 0..junk_stores {
        for _ in 0..per_store {
            let mut event = shop.next().expect("endless");
            set_store(&mut event, StoreId(format!("junk-{store:016x}")));
            out.push((at(&event), event));
        }
    }
    out
}

fn set_store(event: &mut Event, store: StoreId) {
    match event {
        Event::OrderPlaced(e) => e.store_id = store,
        Event::OrderCancelled(e) => e.store_id = store,
        Event::StockChanged(e) => e.store_id = store,
        Event::SessionSeen(e) => e.store_id = store,
    }
}

fn main() {
    let junk = setting("BENCH_STORES", 10_000);
    let per_store = setting("BENCH_EVENTS_PER_STORE", 1);
    let records = records(junk, per_store);
    let (real, flood) = records.split_at(20_000);
    let config = Arc::new(AggregateConfig {
        max_stores: junk + 8,
        ..AggregateConfig::default()
    });
    let layout = Layout::new(
        TopicRole::ALL
            .iter()
            .map(|role| (*role, format!("{role:?}"), 4))
            .collect(),
    );
    let limits = LogLimits {
        frames: 10_000,
        bytes: 16 * 1024 * 1024,
        age_ms: u64::MAX,
    };
    let mut state = State::new(config);
    let mut builder = FrameBuilder::new();
    let mut log = FrameLog::new(limits);
    let mut changes = Changes::default();
    // Applies `records`; with a builder, builds a frame every 100 records (and one at the
    // end), pushed into the log if there is one.
    let mut feed = |records: &[(RecordRef, Event)],
                    state: &mut State,
                    mut builder: Option<&mut FrameBuilder>,
                    mut log: Option<&mut FrameLog>| {
        for (i, (at, event)) in records.iter().enumerate() {
            state.apply(event, *at, &mut changes);
            let last = i + 1 == records.len();
            if let Some(builder) = builder.as_deref_mut()
                && ((i + 1) % 100 == 0 || last)
            {
                let frame = builder.build(state, &layout, &std::mem::take(&mut changes), 0);
                if let Some(log) = log.as_deref_mut() {
                    log.push(Arc::new(frame));
                }
            }
        }
    };
    feed(real, &mut state, Some(&mut builder), Some(&mut log));
    // The state alone: the flood applied to a copy with no frames (the stores are shared,
    // and the flood changes none of the real ones).
    let mut alone = state.clone();
    let before = held();
    feed(flood, &mut alone, None, None);
    let state_bytes = held() - before;
    drop(alone);
    // With frames built but not logged: the state, and the builder's views.
    let mut alone = state.clone();
    let mut fresh = FrameBuilder::new();
    fresh.views(&alone);
    let before = held();
    feed(flood, &mut alone, Some(&mut fresh), None);
    let builder_bytes = held() - before - state_bytes;
    drop((alone, fresh));
    // Everything: state, views, sent lists and the log (as serve holds them).
    let before = held();
    feed(flood, &mut state, Some(&mut builder), Some(&mut log));
    let everything = held() - before;
    let stores = junk as f64;
    println!(
        "{} junk stores × {per_store} event, after 8 real stores (frames every 100 records, serve's default log limits)\n",
        junk
    );
    println!("| held on the heap | total | per junk store |");
    println!("|---|---:|---:|");
    let row = |name: &str, bytes: isize| {
        println!(
            "| {name} | {:.1} MB | {:.0} B |",
            bytes as f64 / 1e6,
            bytes as f64 / stores
        );
    };
    row("state (`State::apply` alone)", state_bytes);
    row("the frame builder's views", builder_bytes);
    row(
        "the frame log (frames, their typed deltas and spans)",
        everything - state_bytes - builder_bytes,
    );
    println!(
        "| (the log's own count for its bound: encoded events and typed deltas, all frames) | {:.1} MB | |",
        log.bytes() as f64 / 1e6
    );
    row("everything", everything);
}
