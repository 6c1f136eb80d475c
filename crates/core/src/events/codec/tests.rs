//! Codec tests: round trips, the fixtures of every schema version, cross-checks against
//! apache-avro, and the property that no input makes the decoder panic.

use super::*;
use crate::events::samples;
use proptest::prelude::*;
use std::path::PathBuf;

fn codec() -> Codec {
    Codec::new(
        &"17=order_placed.v1,18=order_cancelled.v1,19=stock_changed.v1,20=session_seen.v1"
            .parse()
            .expect("mapping parses"),
    )
    .expect("schemas load")
}

#[test]
fn every_event_kind_round_trips_in_single_object_encoding() {
    let codec = codec();
    for event in samples::all() {
        let bytes = codec.encode(&event).expect("encodes");
        assert_eq!(bytes[..2], SINGLE_OBJECT_MARKER);
        assert_eq!(
            bytes[2..10],
            codec.current(event.kind()).fingerprint,
            "header names the writer schema"
        );
        assert_eq!(codec.decode(&bytes), Ok(event));
    }
}

#[test]
fn every_event_kind_round_trips_in_confluent_framing() {
    let codec = codec();
    for (event, registry_id) in samples::all().into_iter().zip(17..) {
        let bytes = codec
            .encode_confluent(registry_id, &event)
            .expect("encodes");
        assert_eq!(bytes[0], 0);
        assert_eq!(bytes[1..5], registry_id.to_be_bytes());
        assert_eq!(codec.decode(&bytes), Ok(event));
    }
}

/// CRC-64-AVRO exactly as the Avro specification writes it ("Schema Fingerprints").
fn spec_rabin_fingerprint(bytes: &[u8]) -> [u8; 8] {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: Vec<u64> = (0..256u64)
        .map(|i| (0..8).fold(i, |fp, _| (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg())))
        .collect();
    let fp = bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize]
    });
    fp.to_le_bytes()
}

/// Our fingerprints equal the specification's algorithm over the parsing canonical form.
/// apache-avro builds that form for us, but keeps `{"type":"long"}` where a logical type
/// was stripped (AVRO-4004); the spec's [PRIMITIVES] rule makes it `"long"`, as Java does.
/// Its own `fingerprint()` is therefore wrong for our schemas, and we do not use it.
#[test]
fn fingerprints_follow_the_avro_specification() {
    assert_eq!(
        spec_rabin_fingerprint(br#""int""#),
        [143, 92, 57, 63, 26, 213, 117, 114],
        "the reference implementation's fingerprint of \"int\""
    );
    for version in codec().versions() {
        let schema = apache_avro::Schema::parse_str(version.text).expect("apache-avro parses it");
        let canonical = schema
            .canonical_form()
            .replace(r#"{"type":"long"}"#, r#""long""#)
            .replace(r#"{"type":"int"}"#, r#""int""#);
        assert_eq!(
            spec_rabin_fingerprint(canonical.as_bytes()),
            version.fingerprint,
            "{}: {canonical}",
            version.id
        );
    }
}

#[test]
fn the_current_schema_of_each_kind_reads_every_older_version() {
    let codec = codec();
    for version in codec.versions() {
        let current = codec.current(version.id.kind);
        let writer = apache_avro::Schema::parse_str(version.text).expect("parses");
        let reader = apache_avro::Schema::parse_str(current.text).expect("parses");
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&writer, &reader)
            .unwrap_or_else(|e| panic!("{} cannot read {}: {e}", current.id, version.id));
    }
}

fn fixture_path(id: SchemaId) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas")
        .join(id.kind.schema_name())
        .join(format!("v{}.bin", id.version))
}

/// Each schema version has a fixture: the sample event encoded when that version was
/// current. Decoding it with today's code must give today's sample (new fields at their
/// defaults). `STOREPULSE_BLESS=1` writes fixtures that do not exist yet, never overwrites.
#[test]
fn the_fixture_of_every_schema_version_decodes_to_its_sample() {
    let codec = codec();
    for version in codec.versions() {
        let path = fixture_path(version.id);
        let sample = samples::all()
            .into_iter()
            .find(|e| e.kind() == version.id.kind)
            .expect("a sample per kind");
        if !path.exists() && std::env::var_os("STOREPULSE_BLESS").is_some() {
            assert_eq!(
                codec.current(version.id.kind).id,
                version.id,
                "only the current version's fixture can be written"
            );
            std::fs::write(&path, codec.encode(&sample).expect("encodes")).expect("writes fixture");
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} is missing ({e}); STOREPULSE_BLESS=1 writes it",
                path.display()
            )
        });
        assert_eq!(codec.decode(&bytes), Ok(sample), "{}", version.id);
    }
}

#[test]
fn an_unknown_fingerprint_is_a_typed_error() {
    let codec = codec();
    let mut bytes = codec.encode(&samples::all()[0]).expect("encodes");
    bytes[2] ^= 0xFF;
    assert!(matches!(
        codec.decode(&bytes),
        Err(DecodeError::UnknownFingerprint { .. })
    ));
}

#[test]
fn an_unmapped_confluent_id_is_a_typed_error() {
    let codec = codec();
    let bytes = codec
        .encode_confluent(99, &samples::all()[0])
        .expect("encodes");
    assert_eq!(
        codec.decode(&bytes),
        Err(DecodeError::UnknownConfluentId { id: 99 })
    );
}

#[test]
fn json_text_and_empty_records_are_unknown_framings() {
    let codec = codec();
    assert!(matches!(
        codec.decode(br#"{"order_id":1}"#),
        Err(DecodeError::UnknownFraming { .. })
    ));
    assert!(matches!(
        codec.decode(&[]),
        Err(DecodeError::UnknownFraming { .. })
    ));
    assert!(matches!(
        codec.decode(&[0xC3, 0x01, 1, 2]),
        Err(DecodeError::TooShort { .. })
    ));
}

#[test]
fn a_valid_datum_with_an_invalid_currency_is_rejected_as_invalid() {
    let codec = codec();
    let mut order = samples::order_placed();
    order.currency = "euro".into();
    let bytes = codec.encode(&Event::OrderPlaced(order)).expect("encodes");
    let err = codec.decode(&bytes).expect_err("must be rejected");
    assert_eq!(err.label(), "invalid");
    assert!(err.to_string().contains("currency"), "{err}");
}

#[test]
fn confluent_mappings_parse_and_reject_nonsense() {
    let ids: ConfluentIds = " 1=order_placed.v1 , 2=session_seen.v1 "
        .parse()
        .expect("parses");
    assert_eq!(ids.pairs().len(), 2);
    assert_eq!(ids.pairs()[1].1.to_string(), "session_seen.v1");
    assert_eq!("".parse::<ConfluentIds>(), Ok(ConfluentIds::default()));
    for bad in [
        "1",
        "x=order_placed.v1",
        "1=nope.v1",
        "1=order_placed.vX",
        "1=order_placed.v1,1=session_seen.v1",
    ] {
        assert!(
            bad.parse::<ConfluentIds>().is_err(),
            "{bad} must be rejected"
        );
    }
    let missing: ConfluentIds = "5=order_placed.v9".parse().expect("parses");
    assert!(matches!(
        Codec::new(&missing),
        Err(SchemaError::UnknownMappedSchema { id: 5, .. })
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec().decode(&bytes);
    }

    #[test]
    fn arbitrary_datums_behind_a_valid_header_never_panic(
        kind in 0usize..4,
        confluent in any::<bool>(),
        datum in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let codec = codec();
        let version = &codec.versions()[kind];
        let mut bytes = if confluent {
            let mut b = vec![0];
            b.extend_from_slice(&(17 + kind as u32).to_be_bytes());
            b
        } else {
            let mut b = SINGLE_OBJECT_MARKER.to_vec();
            b.extend_from_slice(&version.fingerprint);
            b
        };
        bytes.extend_from_slice(&datum);
        // Any outcome but a panic is fine; a success must still be a valid event.
        if let Ok(event) = codec.decode(&bytes) {
            prop_assert_eq!(event.validate(), Ok(()));
        }
    }

    #[test]
    fn every_truncation_of_a_valid_record_is_an_error(kind in 0usize..4, cut in 0usize..1000) {
        let codec = codec();
        let bytes = codec.encode(&samples::all()[kind]).expect("encodes");
        let cut = cut % bytes.len();
        prop_assert!(codec.decode(&bytes[..cut]).is_err());
    }

    #[test]
    fn every_first_byte_other_than_the_two_markers_is_an_unknown_framing(first in 1u8..=255) {
        prop_assume!(first != 0xC3);
        let codec = codec();
        let mut bytes = codec.encode(&samples::all()[0]).expect("encodes");
        bytes[0] = first;
        let is_unknown_framing = matches!(codec.decode(&bytes), Err(DecodeError::UnknownFraming { .. }));
        prop_assert!(is_unknown_framing);
    }
}

/// A schema text of ours, changed by `edit` (a registry's version of it).
fn edited(kind: EventKind, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(super::current_text(kind)).expect("our schema is JSON");
    edit(&mut json);
    json.to_string()
}

fn fields(json: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    json["fields"].as_array_mut().expect("a record's fields")
}

fn sample(kind: EventKind) -> Event {
    samples::all()
        .into_iter()
        .find(|e| e.kind() == kind)
        .expect("a sample of every kind")
}

#[test]
fn a_registry_schema_equal_to_ours_or_evolved_by_the_rules_decodes_to_the_same_event() {
    let mut codec = Codec::new(&ConfluentIds::default()).expect("schemas");
    // Ours, as a producer's serializer registered it.
    let order = sample(EventKind::OrderPlaced);
    let ours =
        RegisteredSchema::resolve(super::current_text(EventKind::OrderPlaced)).expect("ours");
    assert_eq!(
        codec.wants_schema(&codec.encode_confluent(100, &order).expect("encodes")),
        Some(100)
    );
    codec.learn(100, Ok(ours));
    let bytes = codec.encode_confluent(100, &order).expect("encodes");
    assert_eq!(codec.wants_schema(&bytes), None, "learned");
    assert_eq!(codec.decode(&bytes), Ok(order.clone()));
    // A field added with a default, last: a datum of ours with the field's bytes after it.
    let added = edited(EventKind::OrderPlaced, |s| {
        fields(s).push(
            serde_json::json!({"name": "coupon", "type": ["null", "string"], "default": null}),
        );
    });
    codec.learn(101, RegisteredSchema::resolve(&added));
    let mut bytes = codec.encode_confluent(101, &order).expect("encodes");
    bytes.extend_from_slice(&[0x02, 0x0c]); // branch 1 (string), length 6
    bytes.extend_from_slice(b"SAVE10");
    assert_eq!(codec.decode(&bytes), Ok(order), "the new field is skipped");
    // A promotion: the writer's longs were ints (same bytes on the wire).
    let stock = sample(EventKind::StockChanged);
    let promoted = edited(EventKind::StockChanged, |s| {
        for field in fields(s) {
            if field["name"] == "new_level" || field["name"] == "delta" {
                field["type"] = "int".into();
            }
        }
    });
    codec.learn(102, RegisteredSchema::resolve(&promoted));
    let bytes = codec.encode_confluent(102, &stock).expect("encodes");
    assert_eq!(codec.decode(&bytes), Ok(stock.clone()));
    // A symbol we do not know: read as our enum's default.
    let more_reasons = edited(EventKind::StockChanged, |s| {
        for field in fields(s) {
            if field["name"] == "reason" {
                field["type"]["symbols"]
                    .as_array_mut()
                    .expect("symbols")
                    .push("SHRINKAGE".into());
            }
        }
    });
    codec.learn(103, RegisteredSchema::resolve(&more_reasons));
    let mut bytes = codec.encode_confluent(103, &stock).expect("encodes");
    *bytes.last_mut().expect("the enum is last") = 0x08; // symbol 4
    let Ok(Event::StockChanged(read)) = codec.decode(&bytes) else {
        panic!("decodes");
    };
    assert_eq!(read.reason, crate::events::StockChangeReason::Correction);
    // A field removed that we read with a default (user_id: null) is fine.
    let removed = edited(EventKind::SessionSeen, |s| {
        fields(s).retain(|f| f["name"] != "user_id")
    });
    assert!(RegisteredSchema::resolve(&removed).is_ok());
}

#[test]
fn a_union_of_our_records_decodes_by_its_branch_index() {
    let mut codec = Codec::new(&ConfluentIds::default()).expect("schemas");
    let union = format!(
        "[{}, {}]",
        super::current_text(EventKind::OrderPlaced),
        super::current_text(EventKind::OrderCancelled)
    );
    let schema = RegisteredSchema::resolve(&union).expect("resolves");
    assert_eq!(
        schema.kinds(),
        [EventKind::OrderPlaced, EventKind::OrderCancelled]
    );
    codec.learn(7, Ok(schema));
    for (branch, kind) in [(0, EventKind::OrderPlaced), (1, EventKind::OrderCancelled)] {
        let event = sample(kind);
        let bytes = codec
            .encode_confluent_union(7, branch, &event)
            .expect("encodes");
        assert_eq!(codec.decode(&bytes), Ok(event));
    }
    // A branch the union does not have.
    let bytes = codec
        .encode_confluent_union(7, 5, &sample(EventKind::OrderPlaced))
        .expect("encodes");
    assert!(matches!(
        codec.decode(&bytes),
        Err(DecodeError::IncompatibleSchema { id: 7, .. })
    ));
}

#[test]
fn incompatible_and_missing_registry_schemas_are_refused_with_their_reason() {
    let no_default = edited(EventKind::SessionSeen, |s| {
        fields(s).retain(|f| f["name"] != "session_id")
    });
    let retyped = edited(EventKind::StockChanged, |s| {
        for field in fields(s) {
            if field["name"] == "delta" {
                field["type"] = "string".into();
            }
        }
    });
    let stranger = r#"{"type":"record","name":"Refund","namespace":"shop","fields":[{"name":"id","type":"string"}]}"#;
    let union_with_stranger = format!(
        "[{}, {stranger}]",
        super::current_text(EventKind::OrderPlaced)
    );
    for (text, expected) in [
        (no_default.as_str(), "SessionSeen"),
        (retyped.as_str(), "StockChanged"),
        (stranger, "shop.Refund is none of storepulse's"),
        (union_with_stranger.as_str(), "shop.Refund"),
        ("\"string\"", "record was expected"),
        ("{not json", "not JSON"),
        ("[]", "empty union"),
    ] {
        match RegisteredSchema::resolve(text) {
            Err(Refusal::Incompatible(reason)) => {
                assert!(reason.contains(expected), "{reason} for {text}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let mut codec = Codec::new(&ConfluentIds::default()).expect("schemas");
    codec.learn(9, RegisteredSchema::resolve(&retyped));
    codec.learn(10, Err(Refusal::NotFound));
    let stock = sample(EventKind::StockChanged);
    let bytes = codec.encode_confluent(9, &stock).expect("encodes");
    assert_eq!(
        codec.wants_schema(&bytes),
        None,
        "a refusal is remembered too"
    );
    assert!(
        matches!(
            codec.decode(&bytes),
            Err(DecodeError::IncompatibleSchema { id: 9, ref reason }) if reason.contains("delta")
        ),
        "{:?}",
        codec.decode(&bytes)
    );
    let bytes = codec.encode_confluent(10, &stock).expect("encodes");
    assert_eq!(
        codec.decode(&bytes),
        Err(DecodeError::UnknownConfluentId { id: 10 })
    );
}

#[test]
fn the_registry_table_is_bounded_and_forgets_the_oldest_first() {
    let mut codec = Codec::new(&ConfluentIds::default()).expect("schemas");
    codec.set_registry_capacity(3);
    for id in 0..10 {
        codec.learn(id, Err(Refusal::NotFound));
    }
    assert_eq!(codec.registry_ids_held(), 3);
    let event = sample(EventKind::SessionSeen);
    let wanted = |codec: &Codec, id| {
        codec.wants_schema(&codec.encode_confluent(id, &event).expect("encodes"))
    };
    assert_eq!(wanted(&codec, 9), None);
    assert_eq!(
        wanted(&codec, 6),
        Some(6),
        "forgotten: fetched again if it comes back"
    );
}
