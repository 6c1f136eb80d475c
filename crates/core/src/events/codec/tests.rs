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
