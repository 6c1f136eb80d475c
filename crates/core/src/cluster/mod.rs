//! What the roles of a cluster exchange, and the pure logic of each side (ADR 0007): a
//! store's slice (the partition number its records share on the three topics), a slice's
//! position, the records aggregators publish (`wire`), how an aggregator builds them from
//! its slice's state (`slice`), and how an edge holds what they describe (`edge`).
//!
//! Pure: no I/O, no clock.

pub mod edge;
pub mod slice;
pub mod wire;

use crate::aggregate::{PartitionKey, Position};
use crate::events::TopicRole;
use serde::{Deserialize, Serialize};

/// Where one slice stands: the next offset of its partition of each topic, in
/// [`TopicRole::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlicePosition(pub [i64; 3]);

impl SlicePosition {
    /// The slice's part of `position`.
    pub fn of(position: &Position, slice: i32) -> SlicePosition {
        SlicePosition(TopicRole::ALL.map(|role| {
            position.next_offset(PartitionKey {
                role,
                partition: slice,
            })
        }))
    }

    /// Moves `position`'s partitions of `slice` to this position.
    pub fn set_in(&self, position: &mut Position, slice: i32) {
        for (role, next) in TopicRole::ALL.into_iter().zip(self.0) {
            position.advance_to(
                PartitionKey {
                    role,
                    partition: slice,
                },
                next,
            );
        }
    }

    /// True if this position is at or past `other` in every partition.
    pub fn covers(&self, other: &SlicePosition) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .all(|(mine, theirs)| *mine >= theirs)
    }
}

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`, seed `0x9747b28c`): what its
/// default partitioner, and librdkafka's `murmur2_random`, place a keyed record by.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = 0x9747_b28c ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, byte) in rest.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The slice of a store: the partition Kafka's default partitioner gives a record keyed by
/// its id, among `partitions` (the producer contract, docs/api.md "Producing for a
/// cluster").
pub fn slice_of(store: &str, partitions: i32) -> i32 {
    let positive = murmur2(store.as_bytes()) & 0x7fff_ffff;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`): a store lands where a Java or
    /// librdkafka (`murmur2_random`) producer puts it.
    #[test]
    fn murmur2_hashes_as_the_java_client_does() {
        let vectors: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (key, hash) in vectors {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
        // toPositive(-790332482) = 1357151166, mod 50 = 16.
        assert_eq!(slice_of("foobar", 50), 16);
        assert_eq!(slice_of("foobar", 1), 0);
    }

    #[test]
    fn a_slice_position_is_the_slices_part_of_a_position() {
        let mut position = Position::default();
        SlicePosition([5, 0, 7]).set_in(&mut position, 2);
        SlicePosition([1, 1, 1]).set_in(&mut position, 0);
        assert_eq!(SlicePosition::of(&position, 2), SlicePosition([5, 0, 7]));
        assert_eq!(SlicePosition::of(&position, 1), SlicePosition([0, 0, 0]));
        assert!(SlicePosition([5, 1, 7]).covers(&SlicePosition([5, 0, 7])));
        assert!(!SlicePosition([4, 9, 9]).covers(&SlicePosition([5, 0, 7])));
    }
}

#[cfg(test)]
mod cluster_tests;
