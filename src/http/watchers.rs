//! Who is watching: the live streams open on each scope (one store, or every store), and
//! the `progress` event each scope's streams share.
//!
//! A stream counts itself in when it is served and out when it ends (a [`Watching`]
//! guard): O(1) each, under one lock. The `progress` event of a scope says its newest event
//! time, the consumer lag and how many streams watch that scope (`watching`); it is
//! encoded once when one of the three changes and shared by every stream of the scope, so
//! a heartbeat costs a stream a lookup, never a serialisation. Scopes nobody watches hold
//! nothing, so the table is bounded by the open streams (`stream.max_subscribers`). The
//! counts are this process's: behind a load balancer each edge counts its own streams.

use crate::events::StoreId;
use crate::live::{self, Encoded};
use crate::metrics::Metrics;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// A stream's scope: one store, or every store and the rollup (`None`).
pub type Scope = Option<StoreId>;

/// What a `progress` event says: the newest event time, the consumer lag, the watchers.
type ProgressKey = (i64, i64, u32);

/// One watched scope.
#[derive(Default)]
struct Watched {
    streams: u32,
    /// The scope's newest `progress` event and what it was built from.
    progress: Option<(ProgressKey, Arc<Encoded>)>,
}

#[derive(Default)]
struct Table {
    scopes: HashMap<Scope, Watched>,
    /// How many stores have each (non-zero) number of streams: the most watched store's
    /// count is the last key, kept in O(log n) per change.
    stores_by_count: BTreeMap<u32, u32>,
}

impl Table {
    fn move_store(&mut self, from: u32, to: u32) {
        if from > 0
            && let Some(n) = self.stores_by_count.get_mut(&from)
        {
            *n -= 1;
            if *n == 0 {
                self.stores_by_count.remove(&from);
            }
        }
        if to > 0 {
            *self.stores_by_count.entry(to).or_default() += 1;
        }
    }
}

/// The open live streams per scope, and their shared `progress` events.
pub struct Watchers {
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
}

/// One stream's place in the count; it leaves the count when dropped.
pub struct Watching {
    watchers: Arc<Watchers>,
    scope: Scope,
}

impl Watching {
    /// Its scope's `progress` event ([`Watchers::progress`]).
    pub fn progress(&self, as_of_ms: i64, lag: i64) -> Arc<Encoded> {
        self.watchers.progress(&self.scope, as_of_ms, lag)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.watchers.leave(&self.scope);
    }
}

impl Watchers {
    /// No stream yet.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Watchers> {
        Arc::new(Watchers {
            table: Mutex::default(),
            metrics,
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more stream on `scope` until the guard drops.
    pub fn join(self: &Arc<Self>, scope: Scope) -> Watching {
        let mut table = self.table();
        let entry = table.scopes.entry(scope.clone()).or_default();
        entry.streams += 1;
        let now = entry.streams;
        if scope.is_some() {
            table.move_store(now - 1, now);
        }
        self.publish(&table, &scope, now);
        Watching {
            watchers: Arc::clone(self),
            scope,
        }
    }

    fn leave(&self, scope: &Scope) {
        let mut table = self.table();
        let Some(entry) = table.scopes.get_mut(scope) else {
            return;
        };
        entry.streams -= 1;
        let now = entry.streams;
        if now == 0 {
            table.scopes.remove(scope);
        }
        if scope.is_some() {
            table.move_store(now + 1, now);
        }
        self.publish(&table, scope, now);
    }

    /// The gauges after a change of `scope` to `now` streams.
    fn publish(&self, table: &Table, scope: &Scope, now: u32) {
        if scope.is_none() {
            self.metrics.watchers_rollup.set(i64::from(now));
        }
        let stores: u32 = table.stores_by_count.values().sum();
        self.metrics.watched_stores.set(i64::from(stores));
        let most = table
            .stores_by_count
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0);
        self.metrics.watchers_most.set(i64::from(most));
    }

    /// How many streams watch `scope` now.
    pub fn watching(&self, scope: &Scope) -> u32 {
        self.table().scopes.get(scope).map_or(0, |w| w.streams)
    }

    /// The `progress` event of `scope`: `{as_of_ms, lag, watching}`, encoded once per change
    /// and shared by the scope's streams.
    pub fn progress(&self, scope: &Scope, as_of_ms: i64, lag: i64) -> Arc<Encoded> {
        let mut table = self.table();
        let watched = table.scopes.get_mut(scope);
        let streams = watched.as_ref().map_or(0, |w| w.streams);
        let key = (as_of_ms, lag, streams);
        if let Some(Watched {
            progress: Some((built_for, event)),
            ..
        }) = watched.as_deref()
            && *built_for == key
        {
            return Arc::clone(event);
        }
        let event = Arc::new(Encoded::new(live::sse_event(
            "progress",
            None,
            json!({ "as_of_ms": as_of_ms, "lag": lag, "watching": streams })
                .to_string()
                .as_bytes(),
        )));
        if let Some(watched) = table.scopes.get_mut(scope) {
            watched.progress = Some((key, Arc::clone(&event)));
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Encoding;

    fn store(id: &str) -> Scope {
        Some(StoreId(id.into()))
    }

    fn body(event: &Encoded) -> serde_json::Value {
        let bytes = event.for_encoding(Encoding::Identity);
        let text = std::str::from_utf8(&bytes).expect("UTF-8");
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("a data line");
        serde_json::from_str(data).expect("JSON")
    }

    #[test]
    fn streams_are_counted_per_scope_and_leave_when_they_end() {
        let metrics = Arc::new(Metrics::default());
        let watchers = Watchers::new(Arc::clone(&metrics));
        let a1 = watchers.join(store("a"));
        let a2 = watchers.join(store("a"));
        let b = watchers.join(store("b"));
        let all = watchers.join(None);
        assert_eq!(watchers.watching(&store("a")), 2);
        assert_eq!(watchers.watching(&store("b")), 1);
        assert_eq!(watchers.watching(&None), 1);
        assert_eq!(watchers.watching(&store("c")), 0);
        assert_eq!(
            (
                metrics.watched_stores.get(),
                metrics.watchers_most.get(),
                metrics.watchers_rollup.get()
            ),
            (2, 2, 1)
        );
        drop(a1);
        assert_eq!(watchers.watching(&store("a")), 1);
        assert_eq!(metrics.watchers_most.get(), 1);
        drop((a2, b, all));
        assert_eq!(
            (
                metrics.watched_stores.get(),
                metrics.watchers_most.get(),
                metrics.watchers_rollup.get()
            ),
            (0, 0, 0)
        );
        assert!(
            watchers.table().scopes.is_empty(),
            "nothing held for nobody"
        );
        assert!(watchers.table().stores_by_count.is_empty());
    }

    #[test]
    fn a_scope_shares_one_progress_event_until_something_in_it_changes() {
        let watchers = Watchers::new(Arc::new(Metrics::default()));
        let _a = watchers.join(store("a"));
        let first = watchers.progress(&store("a"), 1_000, 0);
        assert!(Arc::ptr_eq(
            &first,
            &watchers.progress(&store("a"), 1_000, 0)
        ));
        assert_eq!(
            body(&first),
            json!({"as_of_ms": 1_000, "lag": 0, "watching": 1})
        );
        let other = watchers.progress(&store("b"), 1_000, 0);
        assert_eq!(body(&other)["watching"], 0, "nobody on b");
        let _a2 = watchers.join(store("a"));
        let second = watchers.progress(&store("a"), 1_000, 0);
        assert!(!Arc::ptr_eq(&first, &second), "a new watcher is news");
        assert_eq!(body(&second)["watching"], 2);
        assert_eq!(body(&watchers.progress(&store("a"), 2_000, 5))["lag"], 5);
    }
}
