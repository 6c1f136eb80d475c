//! Which stores the next checkpoint must carry: those changed since the last checkpoint
//! *written* (acknowledged by the writer), so a failed or skipped write loses nothing, and
//! every store until this process has written a whole checkpoint (its chain's base, ADR
//! 0006 decision 9). `serve`'s engine keeps one; a cluster's aggregator one per slice.

use crate::aggregate::{Layout, State};
use crate::checkpoint::Frozen;
use crate::events::StoreId;
use std::collections::HashMap;

/// The stores owed to the next checkpoint.
#[derive(Debug, Default)]
pub struct Chain {
    /// Stores changed since the last checkpoint written, with the number of freezes before
    /// their last change (a written freeze acknowledges the changes before it).
    unwritten: HashMap<StoreId, u64>,
    /// Freezes so far.
    freezes: u64,
    /// A whole checkpoint (every store) has been written: later ones carry only changes.
    whole_written: bool,
}

impl Chain {
    /// These stores changed (since the previous call).
    pub fn note<'a>(&mut self, changed: impl IntoIterator<Item = &'a StoreId>) {
        for id in changed {
            match self.unwritten.get_mut(id) {
                Some(freezes) => *freezes = self.freezes,
                None => {
                    self.unwritten.insert(id.clone(), self.freezes);
                }
            }
        }
    }

    /// The checkpoint of `state` (every change noted): its head and the stores owed.
    pub fn freeze(&mut self, state: &State, layout: &Layout) -> Frozen {
        self.freezes += 1;
        Frozen::of(
            state,
            layout,
            self.unwritten.keys(),
            !self.whole_written,
            self.freezes,
        )
    }

    /// A checkpoint was written: the stores it carried that have not changed since are
    /// no longer owed.
    pub fn written(&mut self, written: &Frozen) {
        self.whole_written |= written.full;
        self.unwritten
            .retain(|_, freezes| *freezes >= written.generation);
    }
}
