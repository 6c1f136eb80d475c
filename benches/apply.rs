//! The pure core's cost per event, without Kafka: decode + `State::apply` over a simulated
//! flash-sale stream already encoded in memory (8 stores × 500 SKUs, partitioned by key).
//! Then the live stream's catch-up cost for a client 64 frames behind (frames every 100
//! records): building the shared 64-frame span once per scope (`live::Span`, on first
//! use), and what every later client behind by the same frames pays (choosing the shared
//! pieces). Median of several runs; prints Markdown for
//! `docs/benchmarks.md`.
//!
//! Run: `cargo bench --bench apply`. Not a test: nothing here asserts a speed.

mod common;

use std::sync::Arc;
use std::time::Instant;
use storepulse::aggregate::{AggregateConfig, Changes, PartitionKey, RecordRef, State};
use storepulse::events::{Codec, Event, StoreId};
use storepulse::live::{Encoding, Frame, FrameBuilder, FrameLog, LogLimits};
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

    // Frames every 100 records of the flash sale, as the ingest engine builds them; the
    // last 64 (one aligned span) are measured.
    const PENDING: usize = 64;
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
        }
    }
    bytes_by_field(&frames[frames.len().saturating_sub(400)..]);
    let first = frames.len() - frames.len() % PENDING - PENDING;
    let frames = &frames[first..first + PENDING];
    let after = frames[0].seq - 1;
    let store = StoreId(state.stores().keys().next().expect("a store").to_string());
    let unbounded = LogLimits {
        frames: usize::MAX,
        bytes: usize::MAX,
        age_ms: u64::MAX,
    };
    let (mut built_all, mut built_one, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    let mut span_bytes = 0;
    for _ in 0..runs.max(5) * 4 {
        // A fresh log, so its spans are built again.
        let mut log = FrameLog::new(unbounded);
        for frame in frames {
            log.push(Arc::clone(frame));
        }
        let catch_up = |scope: Option<&StoreId>| {
            let pieces = log.catch_up(after).expect("held");
            let bytes: Vec<_> = pieces
                .iter()
                .filter_map(|p| p.bytes_for(scope, Encoding::Identity))
                .collect();
            bytes.iter().map(|b| b.len()).sum::<usize>()
        };
        let started = Instant::now();
        span_bytes = std::hint::black_box(catch_up(None));
        built_all.push(started.elapsed().as_nanos() as f64 / 1e3);
        let started = Instant::now();
        std::hint::black_box(catch_up(Some(&store)));
        built_one.push(started.elapsed().as_nanos() as f64 / 1e3);
        let started = Instant::now();
        std::hint::black_box(catch_up(None));
        shared.push(started.elapsed().as_nanos() as f64 / 1e3);
    }
    let bytes: usize = frames.iter().map(|f| f.all.len()).sum();
    println!();
    println!(
        "| a client {PENDING} frames behind ({:.0} KB of frames; the shared span is {:.0} KB) | µs (median) |",
        bytes as f64 / 1e3,
        span_bytes as f64 / 1e3
    );
    println!("|---|---:|");
    println!(
        "| first all-stores client: builds the span (once) | {:.0} |",
        median(built_all)
    );
    println!(
        "| first one-store client: encodes the span for its store (once) | {:.0} |",
        median(built_one)
    );
    println!(
        "| every later client: chooses the shared span | {:.1} |",
        median(shared)
    );
}

/// What an all-stores frame's bytes are made of: each field's JSON of the rollup's part, as
/// a share of the frames' bytes; and the frames deflated (as a gzip
/// stream sends them).
fn bytes_by_field(frames: &[Arc<Frame>]) {
    let mut by_field: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut plain, mut deflated) = (0, 0);
    for frame in frames {
        plain += frame.all.len();
        deflated += frame.all.deflated().len();
        // What the all-stores scope receives: the rollup's part.
        let value = serde_json::to_value(frame.delta.rollup()).expect("json");
        let views = value["stores"]
            .as_object()
            .into_iter()
            .flat_map(|stores| stores.values().map(|v| ("stores", v)))
            .chain(value.get("all_stores").map(|v| ("all_stores", v)));
        for (scope, view) in views {
            for (field, part) in view.as_object().into_iter().flatten() {
                let len = serde_json::to_vec(part).map_or(0, |v| v.len()) + field.len() + 4;
                *by_field.entry(format!("{scope}.{field}")).or_default() += len;
            }
        }
    }
    let mut rows: Vec<(String, usize)> = by_field.into_iter().collect();
    rows.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    println!();
    println!(
        "| field of an all-stores frame ({} frames every 100 records; {:.1} KB each, {:.1} KB deflated) | share of bytes |",
        frames.len(),
        plain as f64 / frames.len() as f64 / 1e3,
        deflated as f64 / frames.len() as f64 / 1e3
    );
    println!("|---|---:|");
    for (field, bytes) in rows.iter().take(12) {
        println!(
            "| `{field}` | {:.1} % |",
            *bytes as f64 * 100.0 / plain as f64
        );
    }
}
