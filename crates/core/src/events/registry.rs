//! Writer schemas that a Confluent-compatible schema registry assigned ids to, resolved
//! against storepulse's reader schemas, and the bounded table of them a [`Codec`] keeps.
//!
//! A registry schema is one record, or a union of records (one subject per topic holding
//! every event type of that topic, as `storepulse schemas register` writes the orders
//! topic's). Each record is matched to one of our event kinds by its full name and checked
//! with Avro's schema-resolution rules (apache-avro's `SchemaCompatibility`) against our
//! newest schema of that kind: fields added with defaults, fields removed that we read with
//! a default, promotions (`int` to `long`, `float` to `double`, …), enum symbols we do not
//! know when our enum has a default. Anything else is incompatible, with the reason, and
//! the records written with it are dead-lettered (`incompatible_schema`). Data is then
//! decoded with the writer's schema into our types, which read fields by name: a field we
//! do not know is skipped, a field we have that the writer lacks takes its default.
//!
//! Pure: the registry's answers are handed in as text by the ingest side, which fetches
//! them (`src/ingest/schemas.rs`).
//!
//! [`Codec`]: super::Codec

use super::EventKind;
use apache_avro::schema_compatibility::SchemaCompatibility;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};

/// One record of a writer schema: the event kind it is read as, and how to read it.
#[derive(Debug)]
pub(super) struct Branch {
    pub(super) kind: EventKind,
    pub(super) schema: serde_avro_fast::Schema,
}

/// A writer schema from the registry that our reader schemas can read.
#[derive(Debug)]
pub struct RegisteredSchema {
    /// The union's branches in order, or the one record.
    pub(super) branches: Vec<Branch>,
    /// Whether the datum starts with a union branch index.
    pub(super) union: bool,
}

/// Why the records of a registry id are not decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The registry has no schema of that id (it answered 404).
    NotFound,
    /// The schema cannot be read as any storepulse event: the reason.
    Incompatible(String),
}

/// Our newest reader schema of each kind, parsed by apache-avro for the resolution check,
/// with its full name.
static READERS: LazyLock<Vec<(EventKind, String, apache_avro::Schema)>> = LazyLock::new(|| {
    EventKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let text = super::codec::current_text(kind);
            let schema = apache_avro::Schema::parse_str(text).ok()?;
            let name = schema.name()?.fullname(None);
            Some((kind, name, schema))
        })
        .collect()
});

impl RegisteredSchema {
    /// Resolves a registry's schema text (Avro JSON) against our reader schemas.
    pub fn resolve(text: &str) -> Result<RegisteredSchema, Refusal> {
        let incompatible = |why: String| Refusal::Incompatible(why);
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| incompatible(format!("not JSON: {e}")))?;
        let (records, union) = match json {
            serde_json::Value::Array(records) => (records, true),
            record => (vec![record], false),
        };
        if records.is_empty() {
            return Err(incompatible("an empty union".into()));
        }
        let mut branches = Vec::with_capacity(records.len());
        for record in &records {
            let writer = apache_avro::Schema::parse(record)
                .map_err(|e| incompatible(format!("does not parse: {e}")))?;
            let name = writer.name().map(|n| n.fullname(None)).ok_or_else(|| {
                incompatible(format!("a {} where a record was expected", kind_of(record)))
            })?;
            let (kind, _, reader) = READERS
                .iter()
                .find(|(_, reader_name, _)| *reader_name == name)
                .ok_or_else(|| {
                    incompatible(format!(
                        "record {name} is none of storepulse's ({})",
                        READERS
                            .iter()
                            .map(|(_, n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            SchemaCompatibility::can_read(&writer, reader)
                .map_err(|e| incompatible(format!("{name} cannot be read as ours: {e}")))?;
            let schema: serde_avro_fast::Schema = record
                .to_string()
                .parse()
                .map_err(|e| incompatible(format!("{name} does not parse: {e}")))?;
            branches.push(Branch {
                kind: *kind,
                schema,
            });
        }
        Ok(RegisteredSchema { branches, union })
    }

    /// The event kinds it carries, in branch order.
    pub fn kinds(&self) -> Vec<EventKind> {
        self.branches.iter().map(|b| b.kind).collect()
    }
}

fn kind_of(json: &serde_json::Value) -> String {
    json.get("type")
        .and_then(|t| t.as_str())
        .map_or_else(|| json.to_string(), str::to_owned)
}

/// What the codec knows of registry ids: schemas it can read and ids it refuses, at most
/// `capacity` of them together; the oldest learned is forgotten first (and fetched again
/// if it comes back).
#[derive(Debug)]
pub(super) struct RegisteredIds {
    known: HashMap<u32, Result<Arc<RegisteredSchema>, Refusal>>,
    order: VecDeque<u32>,
    capacity: usize,
}

impl RegisteredIds {
    pub(super) fn new(capacity: usize) -> RegisteredIds {
        RegisteredIds {
            known: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn get(&self, id: u32) -> Option<&Result<Arc<RegisteredSchema>, Refusal>> {
        self.known.get(&id)
    }

    pub(super) fn insert(&mut self, id: u32, outcome: Result<RegisteredSchema, Refusal>) {
        if self.known.insert(id, outcome.map(Arc::new)).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.known.remove(&oldest);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.known.len()
    }

    pub(super) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.known.remove(&oldest);
            }
        }
    }
}
