//! Avro wire formats for [`Event`]s: bytes in a Kafka record value to a typed, validated
//! event, and back.
//!
//! Two framings are accepted, told apart by the first byte:
//!
//! | framing | bytes | schema chosen by |
//! |---|---|---|
//! | Avro single-object encoding (default) | `C3 01`, 8-byte CRC-64-AVRO (Rabin) fingerprint, little-endian, of the writer schema's canonical form, then the datum | the fingerprint, among every version of every schema in `schemas/` |
//! | Confluent Schema Registry | `00`, 4-byte big-endian schema id, then the datum | [`ConfluentIds`]: a configured map from registry id to one of our schema versions; else the writer schema the registry gave for that id ([`Codec::learn`], `super::registry`) |
//!
//! The datum is decoded with the *writer's* schema version into the current Rust type:
//! fields match by name, so a field added in a later version must carry a serde default
//! (and an Avro default). Every schema version ever released stays in `schemas/` with an
//! encoded fixture, and a unit test decodes each fixture, so a breaking change fails loudly.
//!
//! Decoding is the hot path: it uses `serde_avro_fast` (see `docs/benchmarks.md` for why);
//! `apache-avro` is kept for cross-checks in tests and for the benchmark baseline.
//! Pure: no I/O, no clock. Never panics on any input (a property test holds it to that).

use super::registry::{Refusal, RegisteredIds, RegisteredSchema};
use super::{
    Event, EventKind, InvalidEvent, OrderCancelled, OrderPlaced, SessionSeen, StockChanged,
};
use serde_avro_fast::Schema;
use serde_avro_fast::de::{DeserializerConfig, DeserializerState};
use serde_avro_fast::ser::SerializerConfig;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Single-object encoding marker (Avro spec, "Single-object encoding").
const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// Marker + fingerprint.
const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// Confluent wire format: magic byte 0, then a 4-byte big-endian schema id.
const CONFLUENT_MAGIC: u8 = 0;
const CONFLUENT_HEADER_LEN: usize = 5;
/// Upper bound on any array in a record (order lines). Arbitrary bytes can claim a length
/// of billions; the decoder refuses before allocating.
const MAX_SEQUENCE_LEN: usize = 10_000;

/// Every schema file in `schemas/`, oldest version first per kind. A new version is appended
/// here and never replaces an old one: old records in Kafka still name the old fingerprint.
const SCHEMA_FILES: &[(EventKind, u32, &str)] = &[
    (
        EventKind::OrderPlaced,
        1,
        include_str!("../../../../schemas/order_placed/v1.avsc"),
    ),
    (
        EventKind::OrderCancelled,
        1,
        include_str!("../../../../schemas/order_cancelled/v1.avsc"),
    ),
    (
        EventKind::StockChanged,
        1,
        include_str!("../../../../schemas/stock_changed/v1.avsc"),
    ),
    (
        EventKind::SessionSeen,
        1,
        include_str!("../../../../schemas/session_seen/v1.avsc"),
    ),
];

/// The text of the newest schema version of a kind.
pub fn current_text(kind: EventKind) -> &'static str {
    SCHEMA_FILES
        .iter()
        .rev()
        .find(|(k, _, _)| *k == kind)
        .map_or("", |(_, _, text)| text)
}

/// Registry ids a codec remembers (schemas and refusals together) unless told otherwise.
pub const DEFAULT_REGISTRY_CAPACITY: usize = 1_000;

/// Names one version of one schema: `order_placed.v1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SchemaId {
    /// Which record.
    pub kind: EventKind,
    /// Its version, from 1.
    pub version: u32,
}

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.v{}", self.kind.schema_name(), self.version)
    }
}

impl FromStr for SchemaId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, version) = s
            .rsplit_once(".v")
            .ok_or_else(|| format!("{s:?} is not of the form <schema>.v<version>"))?;
        let kind = EventKind::ALL
            .into_iter()
            .find(|k| k.schema_name() == name)
            .ok_or_else(|| format!("unknown schema {name:?}"))?;
        let version = version
            .parse()
            .map_err(|_| format!("{version:?} is not a version number"))?;
        Ok(SchemaId { kind, version })
    }
}

/// One parsed schema version with its fingerprint.
#[derive(Debug)]
pub struct SchemaVersion {
    /// Which schema and version.
    pub id: SchemaId,
    /// CRC-64-AVRO fingerprint of the parsing canonical form, as it appears on the wire.
    pub fingerprint: [u8; 8],
    /// The schema text as stored in `schemas/`.
    pub text: &'static str,
    schema: Schema,
}

/// Maps Confluent Schema Registry ids to our schema versions.
///
/// Written as `ID=SCHEMA.vN` pairs separated by commas, e.g.
/// `17=order_placed.v1,18=order_cancelled.v1`; the empty string maps nothing (records in
/// the Confluent framing are then rejected as unknown ids).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfluentIds(Vec<(u32, SchemaId)>);

impl ConfluentIds {
    /// The mapping as pairs.
    pub fn pairs(&self) -> &[(u32, SchemaId)] {
        &self.0
    }
}

impl FromStr for ConfluentIds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pairs = Vec::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, schema) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not of the form ID=SCHEMA.vN"))?;
            let id: u32 = id
                .trim()
                .parse()
                .map_err(|_| format!("{id:?} is not a registry id"))?;
            if pairs.iter().any(|(known, _)| *known == id) {
                return Err(format!("registry id {id} is mapped twice"));
            }
            pairs.push((id, schema.trim().parse()?));
        }
        Ok(ConfluentIds(pairs))
    }
}

/// Why a record's bytes are not an event. Every variant is a poison record: the caller
/// dead-letters it and moves on; none is worth a retry.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A record without a value (a tombstone): no event to decode.
    #[error("tombstone: the record has no value")]
    Tombstone,
    /// Shorter than the framing's header.
    #[error("record of {len} bytes is shorter than its {framing} header")]
    TooShort {
        /// Bytes present.
        len: usize,
        /// Which framing the first byte announced.
        framing: &'static str,
    },
    /// Neither framing's marker.
    #[error(
        "unknown framing: first bytes {first:02x?} are neither C3 01 (single-object) nor 00 (Confluent)"
    )]
    UnknownFraming {
        /// Up to two leading bytes.
        first: Vec<u8>,
    },
    /// A single-object record whose fingerprint is none of our schema versions.
    #[error("unknown schema fingerprint {fingerprint:016x}")]
    UnknownFingerprint {
        /// The fingerprint as a little-endian u64.
        fingerprint: u64,
    },
    /// A Confluent record whose registry id is not configured (and, with a schema
    /// registry, that the registry does not have).
    #[error("confluent schema id {id} is not mapped to a storepulse schema")]
    UnknownConfluentId {
        /// The registry id.
        id: u32,
    },
    /// A Confluent record whose registry schema our reader schemas cannot read.
    #[error("registry schema {id} is incompatible with storepulse's: {reason}")]
    IncompatibleSchema {
        /// The registry id.
        id: u32,
        /// What Avro's resolution rules refuse.
        reason: String,
    },
    /// The datum does not decode with the schema the header named.
    #[error("malformed {schema} datum: {reason}")]
    Malformed {
        /// The writer schema.
        schema: SchemaId,
        /// The decoder's message.
        reason: String,
    },
    /// Decodes, but breaks a rule the schema cannot express.
    #[error("invalid {schema} event: {cause}")]
    Invalid {
        /// The writer schema.
        schema: SchemaId,
        /// Which rule.
        cause: InvalidEvent,
    },
    /// Dated later than its Kafka record's timestamp allows (a fast clock, a test event,
    /// a hostile producer): applying it would move the store's "now" and wipe its day.
    #[error(
        "event time {event_time_ms} ms is {ahead_ms} ms after its record's timestamp {record_time_ms} ms (at most {max_skew_ms} ms allowed)"
    )]
    EventTimeInFuture {
        /// The event's `occurred_at` (or a cancellation's `order_placed_at`, if later).
        event_time_ms: i64,
        /// The Kafka record timestamp.
        record_time_ms: i64,
        /// How far ahead.
        ahead_ms: i64,
        /// `aggregate.max_future_skew`.
        max_skew_ms: i64,
    },
    /// No usable Kafka timestamp, and no earlier record of its partition had one: nothing
    /// to judge its event time by.
    #[error(
        "the record has no timestamp and no earlier record of its partition had one, so its event time cannot be checked"
    )]
    NoTimestamp,
    /// A new store beyond `aggregate.max_stores`.
    #[error("store {store:?} would be store {count}, over aggregate.max_stores = {max}")]
    StoreLimit {
        /// The store id (a new one).
        store: String,
        /// How many stores that would make.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A new SKU of a store beyond `aggregate.max_skus_per_store`.
    #[error("sku {sku:?} of store {store:?} is over aggregate.max_skus_per_store = {max}")]
    SkuLimit {
        /// The store.
        store: String,
        /// The SKU (a new one of that store).
        sku: String,
        /// The limit.
        max: usize,
    },
    /// Read by a cluster's aggregator from a partition that is not its store's slice: its
    /// producer did not key it by store id (docs/api.md, "Producing for a cluster").
    #[error(
        "store {store:?} belongs to partition {slice} (murmur2 of its id), but the record is in partition {partition}: key records by store id"
    )]
    WrongPartition {
        /// The store.
        store: String,
        /// The partition the record was read from.
        partition: i32,
        /// The partition the store's records belong to.
        slice: i32,
    },
}

impl DecodeError {
    /// Every label, indexed by [`DecodeError::index`] (metrics keep one counter each).
    pub const LABELS: [&'static str; 13] = [
        "tombstone",
        "too_short",
        "unknown_framing",
        "unknown_fingerprint",
        "unknown_confluent_id",
        "malformed",
        "invalid",
        "event_time_in_future",
        "no_timestamp",
        "store_limit",
        "sku_limit",
        "wrong_partition",
        "incompatible_schema",
    ];

    /// The position of this error's label in [`DecodeError::LABELS`]. The match is
    /// exhaustive, so a new variant cannot go uncounted.
    pub fn index(&self) -> usize {
        match self {
            DecodeError::Tombstone => 0,
            DecodeError::TooShort { .. } => 1,
            DecodeError::UnknownFraming { .. } => 2,
            DecodeError::UnknownFingerprint { .. } => 3,
            DecodeError::UnknownConfluentId { .. } => 4,
            DecodeError::Malformed { .. } => 5,
            DecodeError::Invalid { .. } => 6,
            DecodeError::EventTimeInFuture { .. } => 7,
            DecodeError::NoTimestamp => 8,
            DecodeError::StoreLimit { .. } => 9,
            DecodeError::SkuLimit { .. } => 10,
            DecodeError::WrongPartition { .. } => 11,
            DecodeError::IncompatibleSchema { .. } => 12,
        }
    }

    /// A short, stable label for metrics and dead-letter headers.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// Why an event could not be encoded (only a schema/type mismatch, i.e. a bug).
#[derive(Debug, Error)]
#[error("cannot encode {schema}: {reason}")]
pub struct EncodeError {
    schema: SchemaId,
    reason: String,
}

/// Why the schemas could not be loaded or a configuration is inconsistent.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// A schema file does not parse.
    #[error("schema {schema} does not parse: {reason}")]
    Parse {
        /// Which file.
        schema: SchemaId,
        /// The parser's message.
        reason: String,
    },
    /// A Confluent id maps to a schema version we do not have.
    #[error("confluent id {id} maps to {schema}, which is not in schemas/")]
    UnknownMappedSchema {
        /// The registry id.
        id: u32,
        /// The missing version.
        schema: SchemaId,
    },
}

/// The decoder/encoder: every schema version, by fingerprint and by Confluent id.
///
/// Built once at start-up ([`Codec::new`]) and shared read-only.
#[derive(Debug)]
pub struct Codec {
    versions: Vec<SchemaVersion>,
    /// `(little-endian fingerprint, index into versions)`; a linear scan over a handful of
    /// u64s beats hashing.
    by_fingerprint: Vec<(u64, usize)>,
    by_confluent_id: Vec<(u32, usize)>,
    /// Writer schemas a registry gave for other ids, and the ids it refused.
    registered: RegisteredIds,
}

/// A record's writer schema, as its header names it.
enum Framed<'c, 'b> {
    /// One of our schema versions.
    Version(&'c SchemaVersion, &'b [u8]),
    /// A registry's schema.
    Registered(&'c RegisteredSchema, u32, &'b [u8]),
}

impl Codec {
    /// Parses every schema in `schemas/` and resolves the Confluent id mapping.
    pub fn new(confluent: &ConfluentIds) -> Result<Self, SchemaError> {
        let mut versions = Vec::with_capacity(SCHEMA_FILES.len());
        for &(kind, version, text) in SCHEMA_FILES {
            let id = SchemaId { kind, version };
            let schema: Schema =
                text.parse()
                    .map_err(
                        |e: serde_avro_fast::schema::SchemaError| SchemaError::Parse {
                            schema: id,
                            reason: e.to_string(),
                        },
                    )?;
            versions.push(SchemaVersion {
                id,
                fingerprint: *schema.rabin_fingerprint(),
                text,
                schema,
            });
        }
        let by_fingerprint = versions
            .iter()
            .enumerate()
            .map(|(i, v)| (u64::from_le_bytes(v.fingerprint), i))
            .collect();
        let mut by_confluent_id = Vec::new();
        for &(registry_id, schema) in confluent.pairs() {
            let index = versions.iter().position(|v| v.id == schema).ok_or(
                SchemaError::UnknownMappedSchema {
                    id: registry_id,
                    schema,
                },
            )?;
            by_confluent_id.push((registry_id, index));
        }
        Ok(Codec {
            versions,
            by_fingerprint,
            by_confluent_id,
            registered: RegisteredIds::new(DEFAULT_REGISTRY_CAPACITY),
        })
    }

    /// Every known schema version, oldest first per kind.
    pub fn versions(&self) -> &[SchemaVersion] {
        &self.versions
    }

    /// The newest version of a kind: what [`Codec::encode`] writes.
    pub fn current(&self, kind: EventKind) -> &SchemaVersion {
        self.versions
            .iter()
            .rev()
            .find(|v| v.id.kind == kind)
            .unwrap_or_else(|| unreachable!("SCHEMA_FILES has a version of every kind"))
    }

    /// Decodes and validates one record value.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let (event, schema) = match self.frame(bytes)? {
            Framed::Version(version, datum) => (
                decode_datum(&version.schema, version.id, datum)?,
                version.id,
            ),
            Framed::Registered(registered, id, datum) => decode_registered(registered, id, datum)?,
        };
        event
            .validate()
            .map_err(|cause| DecodeError::Invalid { schema, cause })?;
        Ok(event)
    }

    /// The registry id a record's writer schema must be fetched by: a Confluent record whose
    /// id is neither configured nor learned (schema or refusal). `None` for anything else.
    pub fn wants_schema(&self, bytes: &[u8]) -> Option<u32> {
        let [CONFLUENT_MAGIC, a, b, c, d, ..] = *bytes else {
            return None;
        };
        let id = u32::from_be_bytes([a, b, c, d]);
        let configured = self.by_confluent_id.iter().any(|(known, _)| *known == id);
        (!configured && self.registered.get(id).is_none()).then_some(id)
    }

    /// What the registry said of `id`: a schema ([`RegisteredSchema::resolve`]) or why its
    /// records are refused. Kept among the newest [`Codec::set_registry_capacity`] ids.
    pub fn learn(&mut self, id: u32, outcome: Result<RegisteredSchema, Refusal>) {
        self.registered.insert(id, outcome);
    }

    /// How many registry ids it remembers at most (schemas and refusals together).
    pub fn set_registry_capacity(&mut self, capacity: usize) {
        self.registered.set_capacity(capacity);
    }

    /// How many registry ids it remembers now.
    pub fn registry_ids_held(&self) -> usize {
        self.registered.len()
    }

    /// Reads the framing header and finds the writer schema.
    fn frame<'c, 'b>(&'c self, bytes: &'b [u8]) -> Result<Framed<'c, 'b>, DecodeError> {
        match bytes {
            [0xC3, 0x01, ..] => {
                let header =
                    bytes
                        .get(..SINGLE_OBJECT_HEADER_LEN)
                        .ok_or(DecodeError::TooShort {
                            len: bytes.len(),
                            framing: "single-object",
                        })?;
                let mut fingerprint = [0u8; 8];
                fingerprint.copy_from_slice(&header[SINGLE_OBJECT_MARKER.len()..]);
                let fingerprint = u64::from_le_bytes(fingerprint);
                let index = self
                    .by_fingerprint
                    .iter()
                    .find(|(f, _)| *f == fingerprint)
                    .map(|&(_, i)| i)
                    .ok_or(DecodeError::UnknownFingerprint { fingerprint })?;
                Ok(Framed::Version(
                    &self.versions[index],
                    &bytes[SINGLE_OBJECT_HEADER_LEN..],
                ))
            }
            [CONFLUENT_MAGIC, ..] => {
                let header = bytes
                    .get(..CONFLUENT_HEADER_LEN)
                    .ok_or(DecodeError::TooShort {
                        len: bytes.len(),
                        framing: "confluent",
                    })?;
                let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                let datum = &bytes[CONFLUENT_HEADER_LEN..];
                if let Some(&(_, index)) =
                    self.by_confluent_id.iter().find(|(known, _)| *known == id)
                {
                    return Ok(Framed::Version(&self.versions[index], datum));
                }
                match self.registered.get(id) {
                    Some(Ok(schema)) => Ok(Framed::Registered(schema, id, datum)),
                    Some(Err(Refusal::Incompatible(reason))) => {
                        Err(DecodeError::IncompatibleSchema {
                            id,
                            reason: reason.clone(),
                        })
                    }
                    Some(Err(Refusal::NotFound)) | None => {
                        Err(DecodeError::UnknownConfluentId { id })
                    }
                }
            }
            _ => Err(DecodeError::UnknownFraming {
                first: bytes.iter().take(2).copied().collect(),
            }),
        }
    }

    /// Encodes in single-object encoding with the current schema of the event's kind.
    pub fn encode(&self, event: &Event) -> Result<Vec<u8>, EncodeError> {
        let version = self.current(event.kind());
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&SINGLE_OBJECT_MARKER);
        out.extend_from_slice(&version.fingerprint);
        encode_datum(version, event, out)
    }

    /// Encodes in the Confluent framing under `registry_id` whose schema is a union of
    /// records, the event's being branch `branch` (what a producer of a topic-name subject
    /// holding several event types writes).
    pub fn encode_confluent_union(
        &self,
        registry_id: u32,
        branch: usize,
        event: &Event,
    ) -> Result<Vec<u8>, EncodeError> {
        let version = self.current(event.kind());
        let mut out = confluent_header(registry_id);
        // The branch index: a zig-zag varint long.
        let mut zigzag = (branch as u64) << 1;
        loop {
            let byte = (zigzag & 0x7f) as u8;
            zigzag >>= 7;
            if zigzag == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        encode_datum(version, event, out)
    }

    /// Encodes in the Confluent framing under `registry_id` (for tests and interop tools);
    /// the datum is written with the current schema of the event's kind.
    pub fn encode_confluent(
        &self,
        registry_id: u32,
        event: &Event,
    ) -> Result<Vec<u8>, EncodeError> {
        encode_datum(
            self.current(event.kind()),
            event,
            confluent_header(registry_id),
        )
    }
}

/// The Confluent framing's header for `registry_id`, in a buffer with room for a datum.
fn confluent_header(registry_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&registry_id.to_be_bytes());
    out
}

/// A datum written with a registry's schema: the union branch (if a union), then the record
/// read with that branch's writer schema into our type.
fn decode_registered(
    registered: &RegisteredSchema,
    id: u32,
    datum: &[u8],
) -> Result<(Event, SchemaId), DecodeError> {
    let (branch, datum) = if registered.union {
        let (index, rest) = read_zigzag(datum).ok_or(DecodeError::TooShort {
            len: datum.len() + CONFLUENT_HEADER_LEN,
            framing: "confluent union",
        })?;
        let branch = usize::try_from(index)
            .ok()
            .and_then(|i| registered.branches.get(i));
        let Some(branch) = branch else {
            return Err(DecodeError::IncompatibleSchema {
                id,
                reason: format!(
                    "union branch {index} of a union of {}",
                    registered.branches.len()
                ),
            });
        };
        (branch, rest)
    } else {
        (&registered.branches[0], datum)
    };
    // Errors name the reader schema the datum was read as.
    let schema = SchemaId {
        kind: branch.kind,
        version: SCHEMA_FILES
            .iter()
            .filter(|(k, _, _)| *k == branch.kind)
            .map(|(_, v, _)| *v)
            .max()
            .unwrap_or(1),
    };
    Ok((decode_datum(&branch.schema, schema, datum)?, schema))
}

/// A zig-zag varint long (at most 10 bytes) and the bytes after it.
fn read_zigzag(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((decoded, &bytes[i + 1..]));
        }
    }
    None
}

fn decode_datum(schema: &Schema, schema_id: SchemaId, datum: &[u8]) -> Result<Event, DecodeError> {
    fn typed<'a, T: serde::Deserialize<'a>>(
        schema: &Schema,
        schema_id: SchemaId,
        datum: &'a [u8],
    ) -> Result<T, DecodeError> {
        let mut config = DeserializerConfig::new(schema);
        config.max_seq_size = MAX_SEQUENCE_LEN;
        let mut state = DeserializerState::with_config(
            serde_avro_fast::de::read::SliceRead::new(datum),
            config,
        );
        T::deserialize(state.deserializer()).map_err(|e| DecodeError::Malformed {
            schema: schema_id,
            reason: e.to_string(),
        })
    }
    let (s, id) = (schema, schema_id);
    Ok(match schema_id.kind {
        EventKind::OrderPlaced => Event::OrderPlaced(typed::<OrderPlaced>(s, id, datum)?),
        EventKind::OrderCancelled => Event::OrderCancelled(typed::<OrderCancelled>(s, id, datum)?),
        EventKind::StockChanged => Event::StockChanged(typed::<StockChanged>(s, id, datum)?),
        EventKind::SessionSeen => Event::SessionSeen(typed::<SessionSeen>(s, id, datum)?),
    })
}

fn encode_datum(
    version: &SchemaVersion,
    event: &Event,
    out: Vec<u8>,
) -> Result<Vec<u8>, EncodeError> {
    let config = &mut SerializerConfig::new(&version.schema);
    let result = match event {
        Event::OrderPlaced(e) => serde_avro_fast::to_datum(e, out, config),
        Event::OrderCancelled(e) => serde_avro_fast::to_datum(e, out, config),
        Event::StockChanged(e) => serde_avro_fast::to_datum(e, out, config),
        Event::SessionSeen(e) => serde_avro_fast::to_datum(e, out, config),
    };
    result.map_err(|e| EncodeError {
        schema: version.id,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
