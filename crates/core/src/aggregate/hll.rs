//! A HyperLogLog distinct-count sketch, for active users.
//!
//! 2^12 one-byte registers (4 KiB once more than 256 are set; sparse before, a few bytes
//! per set register): standard error 1.04 / sqrt(4096) ≈ 1.6%, so about 95%
//! of estimates fall within ±3.3% of the true count. Small counts use linear counting and
//! are within a unit or two below a few hundred. Inserting and merging are commutative and
//! idempotent, which keeps the state independent of record order and of duplicates.
//!
//! Pure: a fixed hash (xxh3, no per-process seed), so sketches compare equal across runs
//! and survive checkpoints.

use serde::{Deserialize, Serialize};

const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;

/// Most set registers kept sparse (index, rank: 4 bytes each in memory, 1 KiB at most);
/// a sketch with more is dense (4 KiB). A store's day or minute with a few visitors, the
/// common case with many stores, then costs bytes, not 4 KiB.
const SPARSE_MAX: usize = 256;

/// The standard error of an estimate, as a fraction.
pub const STANDARD_ERROR: f64 = 0.0163;

/// A distinct-count sketch.
///
/// Its form is a function of its registers alone (sparse exactly while at most
/// [`SPARSE_MAX`] are set; registers never decrease), so equal sketches are equal values
/// whatever the order of inserts and merges.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HyperLogLog {
    registers: Registers,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Registers {
    /// The set registers, `(index, rank)` by index ascending.
    Sparse(Vec<(u16, u8)>),
    /// Every register.
    Dense(#[serde(with = "serde_bytes_compat")] Vec<u8>),
}

impl std::fmt::Debug for HyperLogLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HyperLogLog(~{})", self.estimate())
    }
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog {
            registers: Registers::Sparse(Vec::new()),
        }
    }
}

impl HyperLogLog {
    /// The hash [`HyperLogLog::insert`] uses, to add one item to several sketches.
    pub fn hash(item: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(item.as_bytes())
    }

    /// Adds an item.
    pub fn insert(&mut self, item: &str) {
        self.insert_hash(Self::hash(item));
    }

    /// Adds an item by its [`HyperLogLog::hash`].
    pub fn insert_hash(&mut self, hash: u64) {
        let index = (hash >> (64 - PRECISION)) as usize;
        // Rank of the first set bit in the remaining 52 bits (1-based), capped.
        let rest = hash << PRECISION;
        let rank = (rest.leading_zeros() + 1).min(64 - PRECISION + 1) as u8;
        self.raise(index, rank);
    }

    /// Sets register `index` to at least `rank`.
    fn raise(&mut self, index: usize, rank: u8) {
        match &mut self.registers {
            Registers::Dense(registers) => {
                if registers[index] < rank {
                    registers[index] = rank;
                }
            }
            Registers::Sparse(set) => {
                match set.binary_search_by_key(&(index as u16), |&(i, _)| i) {
                    Ok(at) => set[at].1 = set[at].1.max(rank),
                    Err(at) => set.insert(at, (index as u16, rank)),
                }
                if set.len() > SPARSE_MAX {
                    self.densify();
                }
            }
        }
    }

    fn densify(&mut self) {
        if let Registers::Sparse(set) = &self.registers {
            let mut dense = vec![0u8; REGISTERS];
            for &(index, rank) in set {
                dense[usize::from(index)] = rank;
            }
            self.registers = Registers::Dense(dense);
        }
    }

    /// Adds everything `other` has seen.
    pub fn merge(&mut self, other: &HyperLogLog) {
        match &other.registers {
            Registers::Sparse(set) => {
                for &(index, rank) in set {
                    self.raise(usize::from(index), rank);
                }
            }
            Registers::Dense(theirs) => {
                self.densify();
                if let Registers::Dense(mine) = &mut self.registers {
                    for (mine, theirs) in mine.iter_mut().zip(theirs) {
                        *mine = (*mine).max(*theirs);
                    }
                }
            }
        }
    }

    /// How many registers are set.
    #[cfg(test)]
    fn set_registers(&self) -> usize {
        match &self.registers {
            Registers::Sparse(set) => set.len(),
            Registers::Dense(registers) => registers.iter().filter(|&&r| r > 0).count(),
        }
    }

    /// The estimated number of distinct items.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let (sum, zeros) = match &self.registers {
            Registers::Dense(registers) => {
                registers.iter().fold((0.0f64, 0usize), |(sum, zeros), &r| {
                    (sum + 2f64.powi(-i32::from(r)), zeros + usize::from(r == 0))
                })
            }
            Registers::Sparse(set) => {
                let zeros = REGISTERS - set.len();
                let sum = set
                    .iter()
                    .fold(zeros as f64, |sum, &(_, r)| sum + 2f64.powi(-i32::from(r)));
                (sum, zeros)
            }
        };
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }
}

/// Registers as one byte string (postcard writes a `Vec<u8>` as length + bytes anyway;
/// this keeps JSON debugging output compact too).
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(d)?;
        if bytes.len() != super::REGISTERS {
            return Err(serde::de::Error::custom("wrong register count"));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_counts_are_near_exact_and_duplicates_do_not_count() {
        let mut h = HyperLogLog::default();
        for i in 0..100 {
            h.insert(&format!("user-{i}"));
            h.insert(&format!("user-{i}"));
        }
        assert!((98..=102).contains(&h.estimate()), "{}", h.estimate());
        assert_eq!(HyperLogLog::default().estimate(), 0);
    }

    #[test]
    fn large_counts_are_within_the_documented_error() {
        let mut h = HyperLogLog::default();
        let n = 200_000u64;
        for i in 0..n {
            h.insert(&format!("session-{i}"));
        }
        let error = (h.estimate() as f64 - n as f64).abs() / n as f64;
        assert!(error < 3.0 * STANDARD_ERROR, "error {error}");
    }

    #[test]
    fn merging_equals_inserting_everything_in_one() {
        let (mut a, mut b, mut all) = Default::default();
        for i in 0..5_000 {
            let item = format!("u{i}");
            if i % 3 == 0 {
                HyperLogLog::insert(&mut a, &item);
            } else {
                HyperLogLog::insert(&mut b, &item);
            }
            HyperLogLog::insert(&mut all, &item);
        }
        HyperLogLog::merge(&mut a, &b);
        assert_eq!(a, all);
    }

    #[test]
    fn sparse_and_dense_give_the_same_estimates_and_equal_values_in_any_order() {
        // The same items in two orders, one by inserts and one by merging small sketches:
        // equal values at every size (sparse, at the switch, dense).
        for n in [0, 1, 10, 200, 256, 257, 300, 1_000, 20_000] {
            let items: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
            let mut forward = HyperLogLog::default();
            items.iter().for_each(|i| forward.insert(i));
            let mut merged = HyperLogLog::default();
            for chunk in items.rchunks(7) {
                let mut part = HyperLogLog::default();
                chunk.iter().for_each(|i| part.insert(i));
                merged.merge(&part);
            }
            assert_eq!(forward, merged, "{n}");
            // The dense form of the same registers estimates the same.
            let mut dense = forward.clone();
            dense.densify();
            assert_eq!(dense.estimate(), forward.estimate(), "{n}");
            let sparse = matches!(forward.registers, Registers::Sparse(_));
            assert_eq!(sparse, forward.set_registers() <= SPARSE_MAX, "{n}");
        }
        assert!(
            matches!(HyperLogLog::default().registers, Registers::Sparse(ref s) if s.capacity() == 0),
            "an empty sketch allocates nothing"
        );
    }
}
