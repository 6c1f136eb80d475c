//! The pure core's cost per event, without Kafka: decode + `State::apply` over a simulated
//! flash-sale stream already encoded in memory (8 stores × 500 SKUs, partitioned by key).
//! Then the live stream's per-client catch-up cost: conflating N pending frames (every
//! 100 records, `BENCH_PENDING` 64) into one delta, for an all-stores and a one-store
//! client (`live::pending_bytes`). Median of several runs; prints Markdown for
//! `docs/benchmarks.md`.
//!
//! Run: `cargo bench --bench apply`. Not a test: nothing here asserts a speed.

mod common;

use std::sync::Arc;
use std::time::Instant;
use storepulse::aggregate::{AggregateConfig, Changes, PartitionKey, RecordRef, State};
use storepulse::events::{Codec, Event, StoreId};
use storepulse::live::{Frame, FrameBuilder};
use storepulse::simulate::scenario::Scenario;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (events, runs) = (setting("BENCH_EVENTS", 500_000), setting("BENCH_RUNS", 5));
    let codec = Codec::new(&Default::default()).expect("schemas");
    let scenario = Scenario::new(common::catalog(7, 1_795_773_600_000));
    let mut next = [[0i64; 4]; 3];
    let records: Vec<(RecordRef, Vec<u8>)> = scenario
        .take(events)
        .map(|event: Event| {
            let role = event.kind().topic_role();
            let partition = (xxhash_rust::xxh3::xxh3_64(event.key().as_bytes()) % 4) as usize;
            let offset = &mut next[role as usize][partition];
            let at = RecordRef {
                partition: PartitionKey {
                    role,
                    partition: partition as i32,
                },
                offset: *offset,
            };
            *offset += 1;
            (at, codec.encode(&event).expect("encodes"))
        })
        .collect();
    let config = Arc::new(AggregateConfig::default());
    let mut decode_only = Vec::new();
    let mut decode_apply = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        for (_, bytes) in &records {
            std::hint::black_box(codec.decode(bytes).expect("decodes"));
        }
        decode_only.push(started.elapsed().as_nanos() as f64 / events as f64);
        let mut state = State::new(Arc::clone(&config));
        let mut changes = Changes::default();
        let started = Instant::now();
        for (i, (at, bytes)) in records.iter().enumerate() {
            let event = codec.decode(bytes).expect("decodes");
            state.apply(&event, *at, &mut changes);
            if i % 2_000 == 0 {
                changes = Changes::default(); // a frame's worth
            }
        }
        decode_apply.push(started.elapsed().as_nanos() as f64 / events as f64);
        std::hint::black_box(&state);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, da) = (median(decode_only), median(decode_apply));
    println!("| path (one thread, no Kafka) | ns/event (median of {runs} × {events}) |");
    println!("|---|---:|");
    println!("| decode | {d:.0} |");
    println!("| decode + State::apply | {da:.0} |");
    println!("| State::apply alone (difference) | {:.0} |", da - d);

    // Frames every 100 records of the flash sale, as the ingest engine builds them.
    let pending = setting("BENCH_PENDING", 64);
    let layout = storepulse::aggregate::Layout::new(
        storepulse::events::TopicRole::ALL
            .iter()
            .map(|role| (*role, format!("{role:?}"), 4))
            .collect(),
    );
    let mut state = State::new(Arc::clone(&config));
    let mut changes = Changes::default();
    let mut builder = FrameBuilder::new();
    let mut frames: Vec<Arc<Frame>> = Vec::new();
    for (i, (at, bytes)) in records.iter().enumerate() {
        let event = codec.decode(bytes).expect("decodes");
        state.apply(&event, *at, &mut changes);
        if (i + 1) % 100 == 0 {
            let frame = builder.build(&state, &layout, &std::mem::take(&mut changes), 0);
            frames.push(Arc::new(frame));
            if frames.len() > pending {
                frames.remove(0);
            }
        }
    }
    let store = StoreId(state.stores().keys().next().expect("a store").to_string());
    let mut all = Vec::new();
    let mut one = Vec::new();
    for _ in 0..runs.max(5) * 4 {
        let started = Instant::now();
        std::hint::black_box(storepulse::live::pending_bytes(&frames, None));
        all.push(started.elapsed().as_nanos() as f64 / 1e3);
        let started = Instant::now();
        std::hint::black_box(storepulse::live::pending_bytes(&frames, Some(&store)));
        one.push(started.elapsed().as_nanos() as f64 / 1e3);
    }
    let bytes: usize = frames.iter().map(|f| f.all.len()).sum();
    println!();
    println!(
        "| conflating {pending} pending frames ({:.0} KB as sent) into one delta | µs (median) |",
        bytes as f64 / 1e3
    );
    println!("|---|---:|");
    println!("| all-stores client | {:.0} |", median(all));
    println!("| one-store client | {:.0} |", median(one));
}
