//! The pure core's cost per event, without Kafka: decode + `State::apply` over a simulated
//! flash-sale stream already encoded in memory (8 stores × 500 SKUs, partitioned by key).
//! Median of several runs; prints Markdown for `docs/benchmarks.md`.
//!
//! Run: `cargo bench --bench apply`. Not a test: nothing here asserts a speed.

mod common;

use std::sync::Arc;
use std::time::Instant;
use storepulse::aggregate::{AggregateConfig, Changes, PartitionKey, RecordRef, State};
use storepulse::events::{Codec, Event};
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
}
