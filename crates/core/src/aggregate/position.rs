//! Positions: where in Kafka the state stands, and their compact text encoding.
//!
//! A position maps every assigned (topic, partition) to the *next* offset to read
//! (exclusive: offset `n` means records `0..n` of that partition have been applied). The
//! text form, used for snapshot positions and SSE event ids, is tagged with the partition
//! layout so a position from another layout (other topics, other partition counts) is
//! recognised and never misread:
//!
//! `<layout tag, 8 hex>:<next offset of each partition, comma-separated, in layout order>`
//!
//! e.g. `3f2a9c01:120,98,0,77,5012,4988,5101,4899,230,241,228,236`.
//!
//! Pure: no I/O.

use crate::events::TopicRole;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// One partition of one of the three topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionKey {
    /// Which topic, by role.
    pub role: TopicRole,
    /// Partition number.
    pub partition: i32,
}

/// One record: its partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordRef {
    /// Where.
    pub partition: PartitionKey,
    /// The record's own offset (inclusive).
    pub offset: i64,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = self.partition.role.name();
        write!(f, "{role}-{}@{}", self.partition.partition, self.offset)
    }
}

/// The partitions storepulse reads: topic names and partition counts, in a fixed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// `(role, topic name, partition count)` for the three roles, in [`TopicRole::ALL`] order.
    topics: Vec<(TopicRole, String, i32)>,
    tag: String,
}

impl Layout {
    /// A layout from the topic names and partition counts.
    pub fn new(topics: Vec<(TopicRole, String, i32)>) -> Self {
        let mut topics = topics;
        topics.sort_by_key(|(role, _, _)| *role);
        let description: Vec<String> = topics
            .iter()
            .map(|(role, name, count)| format!("{role:?}={name}:{count}"))
            .collect();
        let hash = xxhash_rust::xxh3::xxh3_64(description.join(";").as_bytes());
        Layout {
            topics,
            tag: format!("{:08x}", hash >> 32),
        }
    }

    /// The 8-hex-digit tag that names this layout in encoded positions.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Every partition, in layout order.
    pub fn partitions(&self) -> impl Iterator<Item = PartitionKey> + '_ {
        self.topics.iter().flat_map(|(role, _, count)| {
            (0..*count).map(|partition| PartitionKey {
                role: *role,
                partition,
            })
        })
    }

    /// `(role, topic name, partition count)` for each topic.
    pub fn topics(&self) -> &[(TopicRole, String, i32)] {
        &self.topics
    }

    /// Encodes a position in this layout (partitions it lacks are at offset 0).
    pub fn encode(&self, position: &Position) -> String {
        let offsets: Vec<String> = self
            .partitions()
            .map(|p| position.next_offset(p).to_string())
            .collect();
        format!("{}:{}", self.tag, offsets.join(","))
    }

    /// Decodes a position encoded in this layout.
    pub fn decode(&self, text: &str) -> Result<Position, PositionError> {
        if text.len() > 16 + 21 * 4096 {
            return Err(PositionError::Malformed("too long".into()));
        }
        let (tag, offsets) = text
            .split_once(':')
            .ok_or_else(|| PositionError::Malformed("missing ':'".into()))?;
        if tag != self.tag {
            return Err(PositionError::OtherLayout {
                tag: tag.chars().take(16).collect(),
            });
        }
        let partitions: Vec<PartitionKey> = self.partitions().collect();
        let values: Vec<&str> = if offsets.is_empty() {
            Vec::new()
        } else {
            offsets.split(',').collect()
        };
        if values.len() != partitions.len() {
            return Err(PositionError::Malformed(format!(
                "{} offsets for {} partitions",
                values.len(),
                partitions.len()
            )));
        }
        let mut position = Position::default();
        for (partition, value) in partitions.into_iter().zip(values) {
            let offset: i64 = value
                .parse()
                .map_err(|_| PositionError::Malformed(format!("{value:?} is not an offset")))?;
            if offset < 0 {
                return Err(PositionError::Malformed(format!(
                    "negative offset {offset}"
                )));
            }
            position.advance_to(partition, offset);
        }
        Ok(position)
    }
}

/// Why a text is not a position of this layout.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PositionError {
    /// Not of the `tag:offsets` form.
    #[error("malformed position: {0}")]
    Malformed(String),
    /// Well-formed, but of another partition layout.
    #[error("position of another partition layout ({tag})")]
    OtherLayout {
        /// The tag it carried.
        tag: String,
    },
}

/// Next offset to read, per partition. Partitions not present are at 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    next: BTreeMap<PartitionKey, i64>,
}

impl Position {
    /// The next offset to read in `partition`.
    pub fn next_offset(&self, partition: PartitionKey) -> i64 {
        self.next.get(&partition).copied().unwrap_or(0)
    }

    /// Records that everything before `next` in `partition` has been applied. Never moves
    /// backwards.
    pub fn advance_to(&mut self, partition: PartitionKey, next: i64) {
        // Offsets at 0 are not stored: one representation per position.
        if next > self.next_offset(partition) {
            self.next.insert(partition, next);
        }
    }

    /// Records that `record` has been applied.
    pub fn advance_past(&mut self, record: RecordRef) {
        self.advance_to(record.partition, record.offset + 1);
    }

    /// True if `record` is before this position (already applied).
    pub fn covers(&self, record: RecordRef) -> bool {
        record.offset < self.next_offset(record.partition)
    }

    /// Every partition with a non-zero position.
    pub fn iter(&self) -> impl Iterator<Item = (PartitionKey, i64)> + '_ {
        self.next.iter().map(|(p, o)| (*p, *o))
    }

    /// Partial order: `Less` if self is behind or equal in every partition and behind in
    /// one, `Greater` for the reverse, `Equal`, or `None` if each is ahead somewhere.
    pub fn compare(&self, other: &Position) -> Option<Ordering> {
        let mut ordering = Ordering::Equal;
        let keys = self.next.keys().chain(other.next.keys());
        for key in keys {
            let here = self.next_offset(*key).cmp(&other.next_offset(*key));
            ordering = match (ordering, here) {
                (o, Ordering::Equal) => o,
                (Ordering::Equal, h) => h,
                (o, h) if o == h => o,
                _ => return None,
            };
        }
        Some(ordering)
    }

    /// Sum over partitions of how far `target` is ahead of this position.
    pub fn lag_behind(&self, target: &Position) -> i64 {
        target
            .iter()
            .map(|(p, next)| (next - self.next_offset(p)).max(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(vec![
            (TopicRole::Orders, "orders".into(), 2),
            (TopicRole::Inventory, "inventory".into(), 2),
            (TopicRole::Activity, "activity".into(), 1),
        ])
    }

    fn key(role: TopicRole, partition: i32) -> PartitionKey {
        PartitionKey { role, partition }
    }

    #[test]
    fn a_position_round_trips_through_its_text_form() {
        let layout = layout();
        let mut position = Position::default();
        position.advance_to(key(TopicRole::Orders, 1), 42);
        position.advance_to(key(TopicRole::Activity, 0), 7);
        let text = layout.encode(&position);
        assert_eq!(text, format!("{}:0,42,0,0,7", layout.tag()));
        assert_eq!(layout.decode(&text), Ok(position));
    }

    #[test]
    fn another_layout_or_garbage_is_refused() {
        let layout = layout();
        let other = Layout::new(vec![(TopicRole::Orders, "orders".into(), 3)]);
        let text = other.encode(&Position::default());
        assert!(matches!(
            layout.decode(&text),
            Err(PositionError::OtherLayout { .. })
        ));
        let tag = layout.tag().to_owned();
        for bad in [
            String::new(),
            "nonsense".into(),
            format!("{tag}:1,2"),
            format!("{tag}:1,2,3,4,-5"),
            format!("{tag}:1,2,3,4,x"),
            format!("{tag}:1,2,3,4,99999999999999999999999"),
        ] {
            assert!(layout.decode(&bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn positions_compare_partially() {
        let mut a = Position::default();
        let mut b = Position::default();
        assert_eq!(a.compare(&b), Some(Ordering::Equal));
        b.advance_to(key(TopicRole::Orders, 0), 5);
        assert_eq!(a.compare(&b), Some(Ordering::Less));
        assert_eq!(b.compare(&a), Some(Ordering::Greater));
        a.advance_to(key(TopicRole::Inventory, 0), 1);
        assert_eq!(a.compare(&b), None);
        assert_eq!(a.lag_behind(&b), 5);
    }

    #[test]
    fn a_position_never_moves_backwards() {
        let mut p = Position::default();
        p.advance_to(key(TopicRole::Orders, 0), 10);
        p.advance_to(key(TopicRole::Orders, 0), 3);
        assert_eq!(p.next_offset(key(TopicRole::Orders, 0)), 10);
    }
}
