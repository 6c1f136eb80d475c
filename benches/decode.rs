//! Decode cost per record: storepulse's codec (serde_avro_fast, framing and validation
//! included) against apache-avro's `Value` path, for each event kind, measured in the same
//! run. Prints a Markdown table (median of several runs) for `docs/benchmarks.md`.
//!
//! Run: `cargo bench --bench decode` (or `scripts/bench decode`). Not a test: nothing here
//! asserts a speed.

use apache_avro::reader::datum::GenericDatumReader;
use std::hint::black_box;
use std::time::Instant;
use storepulse::events::{
    Codec, Event, EventKind, OrderCancelled, OrderPlaced, SessionSeen, StockChanged, samples,
};

const RUNS: usize = 7;
const RECORDS_PER_RUN: usize = 200_000;

/// Median nanoseconds per call of `f` over `RUNS` runs of `RECORDS_PER_RUN` calls.
fn median_ns(mut f: impl FnMut()) -> f64 {
    for _ in 0..RECORDS_PER_RUN / 10 {
        f(); // warm up
    }
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..RECORDS_PER_RUN {
                f();
            }
            start.elapsed().as_nanos() as f64 / RECORDS_PER_RUN as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

/// apache-avro: datum to `Value`, then `Value` to the typed event (what a consumer needs).
fn apache_decode(kind: EventKind, reader: &GenericDatumReader<'_>, datum: &[u8]) -> Event {
    let mut input = datum;
    let value = reader.read_value(&mut input).expect("apache-avro decodes");
    match kind {
        EventKind::OrderPlaced => {
            Event::OrderPlaced(apache_avro::from_value::<OrderPlaced>(&value).expect("typed"))
        }
        EventKind::OrderCancelled => {
            Event::OrderCancelled(apache_avro::from_value::<OrderCancelled>(&value).expect("typed"))
        }
        EventKind::StockChanged => {
            Event::StockChanged(apache_avro::from_value::<StockChanged>(&value).expect("typed"))
        }
        EventKind::SessionSeen => {
            Event::SessionSeen(apache_avro::from_value::<SessionSeen>(&value).expect("typed"))
        }
    }
}

fn main() {
    let codec = Codec::new(&Default::default()).expect("schemas load");
    println!(
        "| event | bytes | apache-avro Value only (ns) | apache-avro Value + typed (ns) | storepulse codec (ns) | speed-up vs Value + typed |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for event in samples::all() {
        let kind = event.kind();
        let bytes = codec.encode(&event).expect("encodes");
        let datum = &bytes[10..];
        let schema = apache_avro::Schema::parse_str(codec.current(kind).text).expect("parses");
        let reader = GenericDatumReader::builder(&schema)
            .build()
            .expect("reader");
        assert_eq!(
            apache_decode(kind, &reader, datum),
            event,
            "both decoders agree"
        );
        assert_eq!(codec.decode(&bytes).expect("decodes"), event);

        let value_only = median_ns(|| {
            let mut input = black_box(datum);
            black_box(reader.read_value(&mut input).expect("decodes"));
        });
        let apache = median_ns(|| {
            black_box(apache_decode(kind, &reader, black_box(datum)));
        });
        let fast_schema: serde_avro_fast::Schema =
            codec.current(kind).text.parse().expect("parses");
        let datum_only = median_ns(|| match kind {
            EventKind::OrderPlaced => {
                black_box(
                    serde_avro_fast::from_datum_slice::<OrderPlaced>(
                        black_box(datum),
                        &fast_schema,
                    )
                    .expect("decodes"),
                );
            }
            _ => {
                black_box(
                    serde_avro_fast::from_datum_slice::<SessionSeen>(
                        black_box(datum),
                        &fast_schema,
                    )
                    .ok(),
                );
            }
        });
        let ours = median_ns(|| {
            black_box(codec.decode(black_box(&bytes)).expect("decodes"));
        });
        let datum_col = if matches!(kind, EventKind::OrderPlaced | EventKind::SessionSeen) {
            format!("{datum_only:.0}")
        } else {
            "-".to_owned()
        };
        println!(
            "| {kind} | {} | {value_only:.0} | {apache:.0} | {datum_col} | {ours:.0} | {:.1}x |",
            bytes.len(),
            apache / ours
        );
    }
    println!();
    println!("median of {RUNS} runs x {RECORDS_PER_RUN} decodes each, one thread");
    registry_ids();
}

/// Decoding records framed with schema registry ids (the writer's schema fetched once and
/// resolved against ours, as `serve` does with `schema_registry.url`) against single-object
/// encoding, the same events, in the same run: a record of ours; the orders subject's union
/// (a branch index first); and its next version with a field we skip.
fn registry_ids() {
    use storepulse::events::RegisteredSchema;
    let text = |kind| storepulse::events::codec::current_text(kind);
    let mut codec = Codec::new(&Default::default()).expect("schemas load");
    let union = format!(
        "[{}, {}]",
        text(EventKind::OrderPlaced),
        text(EventKind::OrderCancelled)
    );
    let mut evolved: serde_json::Value =
        serde_json::from_str(text(EventKind::OrderPlaced)).expect("json");
    evolved["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!(
            {"name": "coupon_code", "type": ["null", "string"], "default": null}
        ));
    let evolved_union = format!("[{evolved}, {}]", text(EventKind::OrderCancelled));
    for (id, schema) in [(1, union.as_str()), (2, evolved_union.as_str())] {
        codec.learn(id, RegisteredSchema::resolve(schema));
    }
    for (n, kind) in EventKind::ALL.into_iter().enumerate() {
        codec.learn(10 + n as u32, RegisteredSchema::resolve(text(kind)));
    }
    println!();
    println!(
        "| event | single-object (ns) | registry id, our record (ns) | ratio | orders union (ns) | ratio | union, next version (ns) | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (n, event) in samples::all().into_iter().enumerate() {
        let kind = event.kind();
        let plain = codec.encode(&event).expect("encodes");
        let record = codec
            .encode_confluent(10 + n as u32, &event)
            .expect("encodes");
        let time = |bytes: &[u8]| {
            assert_eq!(codec.decode(bytes).expect("decodes"), event);
            median_ns(|| {
                black_box(codec.decode(black_box(bytes)).expect("decodes"));
            })
        };
        let (single, ours) = (time(&plain), time(&record));
        let orders = match kind {
            EventKind::OrderPlaced | EventKind::OrderCancelled => {
                let branch = usize::from(kind == EventKind::OrderCancelled);
                let in_union = codec
                    .encode_confluent_union(1, branch, &event)
                    .expect("encodes");
                let mut next = codec
                    .encode_confluent_union(2, branch, &event)
                    .expect("encodes");
                if kind == EventKind::OrderPlaced {
                    next.extend_from_slice(b"\x02\x0eFLASH10");
                }
                let (u, v) = (time(&in_union), time(&next));
                format!("{u:.0} | {:.2}x | {v:.0} | {:.2}x", u / single, v / single)
            }
            _ => "- | - | - | -".to_owned(),
        };
        println!(
            "| {kind} | {single:.0} | {ours:.0} | {:.2}x | {orders} |",
            ours / single
        );
    }
    println!();
    println!(
        "ratio: registry-framed decode time over single-object decode time of the same event (1.00x: the same cost)"
    );
}
