//! A dedup window's arrival order: a first-in first-out queue of `(event time, id hash)`
//! kept in sealed, shared chunks, so a checkpoint copies it in time proportional to its
//! chunks (pointer copies) plus one open chunk, never to its entries. Serialised exactly as
//! a sequence of its entries (the same bytes as a `VecDeque` of them).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::sync::Arc;

/// Entries per sealed chunk.
const CHUNK: usize = 4_096;

/// One arrival: the event time and the hash of the event id.
pub(crate) type Arrival = (i64, u64);

/// A FIFO of arrivals in shared sealed chunks and one open chunk.
#[derive(Clone, Debug, Default)]
pub(crate) struct Arrivals {
    /// Full chunks, oldest first; never changed once sealed (shared with frozen copies).
    sealed: VecDeque<Arc<[Arrival]>>,
    /// Entries of the oldest sealed chunk already popped.
    skip: usize,
    /// The newest entries, not yet a full chunk.
    open: Vec<Arrival>,
    len: usize,
}

impl Arrivals {
    /// How many arrivals are held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends the newest arrival.
    pub(crate) fn push_back(&mut self, arrival: Arrival) {
        self.open.push(arrival);
        self.len += 1;
        if self.open.len() == CHUNK {
            let full = std::mem::replace(&mut self.open, Vec::with_capacity(CHUNK));
            self.sealed.push_back(full.into());
        }
    }

    /// The oldest arrival.
    pub(crate) fn front(&self) -> Option<&Arrival> {
        match self.sealed.front() {
            Some(chunk) => chunk.get(self.skip),
            None => self.open.first(),
        }
    }

    /// Removes the oldest arrival.
    pub(crate) fn pop_front(&mut self) -> Option<Arrival> {
        let arrival = match self.sealed.front() {
            Some(chunk) => {
                let arrival = chunk[self.skip];
                self.skip += 1;
                if self.skip == chunk.len() {
                    self.sealed.pop_front();
                    self.skip = 0;
                }
                arrival
            }
            None if self.open.is_empty() => return None,
            // Rare: only while fewer than a chunk are held (a whole chunk is popped above).
            None => self.open.remove(0),
        };
        self.len -= 1;
        Some(arrival)
    }

    /// Every arrival, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arrival> {
        let mut sealed = self.sealed.iter();
        let first = sealed.next().map(|chunk| &chunk[self.skip..]);
        first
            .into_iter()
            .chain(sealed.map(|chunk| &chunk[..]))
            .flatten()
            .chain(self.open.iter())
    }
}

impl PartialEq for Arrivals {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Arrivals {}

impl FromIterator<Arrival> for Arrivals {
    fn from_iter<I: IntoIterator<Item = Arrival>>(iter: I) -> Self {
        let mut arrivals = Arrivals::default();
        for arrival in iter {
            arrivals.push_back(arrival);
        }
        arrivals
    }
}

impl Serialize for Arrivals {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for arrival in self.iter() {
            seq.serialize_element(arrival)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Arrivals {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries: Vec<Arrival> = Vec::deserialize(deserializer)?;
        Ok(entries.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Pushes and pops behave as a `VecDeque`'s, a copy taken midway keeps its entries
        /// whatever the original does next, and both serialise as a `VecDeque` does.
        #[test]
        fn arrivals_behave_as_a_fifo_and_serialise_as_a_deque(
            ops in proptest::collection::vec((any::<bool>(), 0u16..3_000), 1..40),
        ) {
            let mut arrivals = Arrivals::default();
            let mut reference: VecDeque<Arrival> = VecDeque::new();
            let mut next = 0i64;
            let mut copies = Vec::new();
            for (push, count) in ops {
                for _ in 0..count {
                    if push {
                        arrivals.push_back((next, next as u64 * 7));
                        reference.push_back((next, next as u64 * 7));
                        next += 1;
                    } else {
                        prop_assert_eq!(arrivals.pop_front(), reference.pop_front());
                    }
                    prop_assert_eq!(arrivals.front(), reference.front());
                    prop_assert_eq!(arrivals.len(), reference.len());
                }
                copies.push((arrivals.clone(), reference.clone()));
            }
            for (copy, expected) in copies {
                prop_assert!(copy.iter().eq(expected.iter()));
                prop_assert_eq!(
                    postcard::to_stdvec(&copy).expect("serialises"),
                    postcard::to_stdvec(&expected).expect("serialises")
                );
                let back: Arrivals =
                    postcard::from_bytes(&postcard::to_stdvec(&expected).expect("serialises"))
                        .expect("deserialises");
                prop_assert_eq!(back, copy);
            }
        }
    }
}
