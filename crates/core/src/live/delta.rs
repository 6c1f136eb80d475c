//! Deltas: what changed since a scope's previous frame, as absolute values, and how later
//! deltas fold into earlier ones (conflation). Built from the typed [`Changes`] of
//! `State::apply` and the views; each scope's view before the frame (kept by [`Views`]) is
//! what its clients hold, so bounded lists travel only when they change.
//!
//! The client's merge rules (docs/api.md, "Deltas") are the inverse of this file: a client
//! that applies every delta, one by one or conflated, holds exactly the state's views.

use crate::aggregate::view::{
    AlertView, DayCounters, LowStockView, MinuteView, OrderView, SkuLists, StockView, StoreView,
    TopProduct, rfc3339,
};
use crate::aggregate::{Changes, Layout, RECENT_ORDERS, State, Views};
use crate::events::StoreId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The bounded SKU lists in a delta: each whole, and only when it differs from the one
/// last sent for the same scope (see [`Delta::omit_unchanged_lists`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SkuListsDelta {
    /// See [`SkuLists::low_stock`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_stock: Option<Vec<LowStockView>>,
    /// See [`SkuLists::oversold`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oversold: Option<Vec<StockView>>,
    /// See [`SkuLists::top_products`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_products: Option<Vec<TopProduct>>,
    /// See [`SkuLists::alerts`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<AlertView>>,
}

impl SkuListsDelta {
    fn all(lists: SkuLists) -> Self {
        SkuListsDelta {
            low_stock: Some(lists.low_stock),
            oversold: Some(lists.oversold),
            top_products: Some(lists.top_products),
            alerts: Some(lists.alerts),
        }
    }

    /// Keeps only the lists that differ from `before` (what the client holds).
    fn omit_unchanged(&mut self, before: &SkuLists) {
        fn one<T: PartialEq>(list: &mut Option<Vec<T>>, before: &[T]) {
            if list.as_deref() == Some(before) {
                *list = None;
            }
        }
        one(&mut self.low_stock, &before.low_stock);
        one(&mut self.oversold, &before.oversold);
        one(&mut self.top_products, &before.top_products);
        one(&mut self.alerts, &before.alerts);
    }

    fn absorb(&mut self, later: SkuListsDelta) {
        fn one<T>(mine: &mut Option<Vec<T>>, later: Option<Vec<T>>) {
            if later.is_some() {
                *mine = later;
            }
        }
        one(&mut self.low_stock, later.low_stock);
        one(&mut self.oversold, later.oversold);
        one(&mut self.top_products, later.top_products);
        one(&mut self.alerts, later.alerts);
    }
}

/// What changed in one store (or the rollup), as absolute values. Counters are always
/// present; each bounded list (`low_stock`, `oversold`, `top_products`, `alerts`) comes
/// whole when it differs from the last one sent; `per_minute` lists the changed minutes
/// (merged by minute; a client drops minutes before `per_minute_from`), `recent_orders` the orders new or changed since the last
/// delta of the scope (upserted by event id, see [`upsert_orders`]). Stock levels are not
/// in views or deltas (`GET /api/stock` pages through them). Applying a
/// delta twice is harmless.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreDelta {
    /// Always (flattened into the delta's JSON).
    #[serde(flatten)]
    pub counters: DayCounters,
    /// The minutes that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<Vec<MinuteView>>,
    /// The orders new or changed since the scope's previous delta (upserted by event id),
    /// or with `recent_orders_complete` the whole list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_orders: Option<Vec<OrderView>>,
    /// `recent_orders` is the whole list and replaces what the client holds: orders left
    /// the list other than by being outranked (their day is no longer held), which an
    /// upsert cannot say. Sent only then (at most once per scope and day change).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recent_orders_complete: bool,
    /// The lists that changed, each whole (flattened into the delta's JSON).
    #[serde(flatten)]
    pub lists: SkuListsDelta,
}

/// A live update: the position after it (the SSE id) and, per changed store and for the
/// rollup (absent in a store-scoped delta), what changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delta {
    /// The position after this delta.
    pub position: String,
    /// Newest event time applied, RFC 3339.
    pub as_of: Option<String>,
    /// The same, epoch milliseconds.
    pub as_of_ms: i64,
    /// Per changed store (absent from the all-stores scope's events, see [`Delta::rollup`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, StoreDelta>,
    /// Stores the rollup sums (all-stores scope only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_count: Option<usize>,
    /// The rollup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_stores: Option<StoreDelta>,
}

/// Which parts of a view a delta carries.
#[derive(Clone, Copy, Debug, Default)]
struct Touched {
    minutes: bool,
    recent_orders: bool,
}

/// The client's rule for `recent_orders` in a delta: upsert by `event_id`, rank newest
/// first (ties by `event_id`), keep 20.
pub fn upsert_orders(
    held: Option<Vec<OrderView>>,
    changed: Option<Vec<OrderView>>,
) -> Option<Vec<OrderView>> {
    let Some(changed) = changed else {
        return held;
    };
    let mut list = held.unwrap_or_default();
    for order in changed {
        match list.iter_mut().find(|o| o.event_id == order.event_id) {
            Some(existing) => *existing = order,
            None => list.push(order),
        }
    }
    list.sort_by(|a, b| {
        b.occurred_at
            .cmp(&a.occurred_at)
            .then_with(|| a.event_id.cmp(&b.event_id))
    });
    list.truncate(RECENT_ORDERS);
    Some(list)
}

impl StoreDelta {
    /// Keeps only the recent orders that are new or changed against what the client holds
    /// (`held`, a whole list), and makes `held` the new whole list. The whole list goes
    /// instead, marked complete (the client replaces its list), when nothing was held
    /// (`None`: what the client holds is not known here) or when an order left the list
    /// without being outranked (its day is no longer held), which upserts cannot say.
    fn keep_new_orders(&mut self, held: Option<&[OrderView]>) {
        let Some(whole) = self.recent_orders.take() else {
            return;
        };
        let Some(before) = held else {
            self.recent_orders = Some(whole);
            self.recent_orders_complete = true;
            return;
        };
        let new: Vec<OrderView> = whole
            .iter()
            .filter(|o| !before.contains(o))
            .cloned()
            .collect();
        let upserted = upsert_orders(Some(before.to_vec()), Some(new.clone()));
        if upserted.as_ref() == Some(&whole) {
            self.recent_orders = (!new.is_empty()).then_some(new);
        } else {
            self.recent_orders = Some(whole);
            self.recent_orders_complete = true;
        }
    }

    /// The delta of `view` that carries the `touched` parts: the minutes in `minutes` (by
    /// index since the epoch), and every list whole.
    fn of(view: &StoreView, touched: Touched, minutes: &BTreeSet<i64>) -> StoreDelta {
        StoreDelta {
            counters: view.counters.clone(),
            per_minute: touched.minutes.then(|| {
                view.per_minute
                    .iter()
                    .filter(|m| minutes.contains(&m.index))
                    .cloned()
                    .collect()
            }),
            recent_orders: touched.recent_orders.then(|| view.recent_orders.clone()),
            recent_orders_complete: false,
            lists: SkuListsDelta::all(view.lists.clone()),
        }
    }

    /// The view a client holds after applying this delta to `held` (what it held before;
    /// `None` for a scope it has nothing of): the merge rules of docs/api.md, "Deltas".
    /// Applied to the view a scope's previous frame left, it gives the view of this frame.
    pub fn apply_to(&self, held: Option<&StoreView>) -> StoreView {
        fn pick<T: Clone>(delta: &Option<Vec<T>>, held: Option<&Vec<T>>) -> Vec<T> {
            delta.clone().or_else(|| held.cloned()).unwrap_or_default()
        }
        let lists = |held: Option<&SkuLists>| SkuLists {
            low_stock: pick(&self.lists.low_stock, held.map(|l| &l.low_stock)),
            oversold: pick(&self.lists.oversold, held.map(|l| &l.oversold)),
            top_products: pick(&self.lists.top_products, held.map(|l| &l.top_products)),
            alerts: pick(&self.lists.alerts, held.map(|l| &l.alerts)),
        };
        let recent_orders = if self.recent_orders_complete {
            self.recent_orders.clone().unwrap_or_default()
        } else {
            upsert_orders(
                held.map(|h| h.recent_orders.clone()),
                self.recent_orders.clone(),
            )
            .unwrap_or_default()
        };
        StoreView {
            counters: self.counters.clone(),
            per_minute: merge_minutes(
                Some(held.map(|h| h.per_minute.clone()).unwrap_or_default()),
                self.per_minute.as_deref(),
                &self.counters.per_minute_from,
            )
            .unwrap_or_default(),
            recent_orders,
            lists: lists(held.map(|h| &h.lists)),
        }
    }

    /// What a client that holds `before` (`None`: nothing of this scope) needs to hold
    /// `after`: the counters, the minutes that differ, the lists that differ and the recent
    /// orders new to it (whole and complete when nothing was held, or when an order left
    /// without being outranked). A cluster's edge makes the rollup's delta this way.
    pub fn between(before: Option<&StoreView>, after: &StoreView) -> StoreDelta {
        let held: BTreeMap<i64, &MinuteView> = before
            .map(|b| b.per_minute.iter().map(|m| (m.index, m)).collect())
            .unwrap_or_default();
        let minutes: Vec<MinuteView> = after
            .per_minute
            .iter()
            .filter(|m| held.get(&m.index) != Some(m))
            .cloned()
            .collect();
        let mut delta = StoreDelta {
            counters: after.counters.clone(),
            per_minute: (!minutes.is_empty()).then_some(minutes),
            recent_orders: Some(after.recent_orders.clone()),
            recent_orders_complete: false,
            lists: SkuListsDelta::all(after.lists.clone()),
        };
        match before {
            Some(before) => {
                delta.lists.omit_unchanged(&before.lists);
                delta.keep_new_orders(Some(&before.recent_orders));
            }
            None => delta.keep_new_orders(None),
        }
        delta
    }

    /// Folds a later delta of the same scope into this one.
    pub fn absorb(&mut self, later: &StoreDelta) {
        self.counters.clone_from(&later.counters);
        self.per_minute = merge_minutes(
            self.per_minute.take(),
            later.per_minute.as_deref(),
            &self.counters.per_minute_from,
        );
        if later.recent_orders_complete {
            // A replacement replaces whatever came before it.
            self.recent_orders.clone_from(&later.recent_orders);
            self.recent_orders_complete = true;
        } else {
            self.recent_orders =
                upsert_orders(self.recent_orders.take(), later.recent_orders.clone());
        }
        self.lists.absorb(later.lists.clone());
    }
}

/// The minutes of two deltas, the later's winning: by minute index, in time order, none
/// before `from`. Without earlier minutes the later's list stands as it is.
fn merge_minutes(
    earlier: Option<Vec<MinuteView>>,
    later: Option<&[MinuteView]>,
    from: &str,
) -> Option<Vec<MinuteView>> {
    let Some(earlier) = earlier else {
        return later.map(<[MinuteView]>::to_vec);
    };
    let mut by_minute: BTreeMap<i64, MinuteView> =
        earlier.into_iter().map(|m| (m.index, m)).collect();
    for minute in later.unwrap_or_default() {
        by_minute.insert(minute.index, minute.clone());
    }
    Some(
        by_minute
            .into_values()
            .filter(|m| m.minute.as_str() >= from)
            .collect(),
    )
}

impl Delta {
    /// The delta of `changes` (which must not be empty) in `state`, positioned at the
    /// state's position, from `views` already updated with those changes. Whole lists;
    /// [`Delta::omit_unchanged_lists`] trims them.
    pub fn of(views: &Views, state: &State, layout: &Layout, changes: &Changes) -> Delta {
        let mut all_touched = Touched::default();
        let mut all_minutes = BTreeSet::new();
        for change in changes.stores.values() {
            all_touched.minutes |= !change.minutes.is_empty();
            all_touched.recent_orders |= change.recent_orders;
            all_minutes.extend(change.minutes.iter().copied());
        }
        let stores = changes
            .stores
            .iter()
            .filter_map(|(id, change)| {
                let touched = Touched {
                    minutes: !change.minutes.is_empty(),
                    recent_orders: change.recent_orders,
                };
                let view = views.store(id)?;
                Some((
                    id.to_string(),
                    StoreDelta::of(view, touched, &change.minutes),
                ))
            })
            .collect();
        let all_stores = StoreDelta::of(views.rollup(), all_touched, &all_minutes);
        let newest = state.newest_event_time();
        Delta {
            position: layout.encode(state.position()),
            as_of: (newest > 0).then(|| rfc3339(newest)),
            as_of_ms: newest,
            stores,
            store_count: Some(state.stores().len()),
            all_stores: Some(all_stores),
        }
    }

    /// Each changed store's delta, its lists trimmed to what the store's clients hold
    /// (`views` just updated with `changes`): the stores' part of [`Delta::of`] after
    /// [`Delta::omit_unchanged_lists`], which a cluster's aggregator publishes.
    pub fn store_deltas(views: &Views, changes: &Changes) -> BTreeMap<String, StoreDelta> {
        let mut delta = Delta {
            position: String::new(),
            as_of: None,
            as_of_ms: 0,
            stores: BTreeMap::new(),
            store_count: None,
            all_stores: None,
        };
        for (id, change) in &changes.stores {
            let touched = Touched {
                minutes: !change.minutes.is_empty(),
                recent_orders: change.recent_orders,
            };
            if let Some(view) = views.store(id) {
                let part = StoreDelta::of(view, touched, &change.minutes);
                delta.stores.insert(id.to_string(), part);
            }
        }
        delta.omit_unchanged_lists(views);
        delta.stores
    }

    /// Folds a later delta into this one: the result applied alone equals applying both in
    /// order (the conflation of a slow client's pending frames).
    pub fn absorb(&mut self, later: &Delta) {
        for (store, view) in &later.stores {
            match self.stores.get_mut(store) {
                Some(existing) => existing.absorb(view),
                None => {
                    self.stores.insert(store.clone(), view.clone());
                }
            }
        }
        match (&mut self.all_stores, &later.all_stores) {
            (Some(mine), Some(theirs)) => mine.absorb(theirs),
            (mine @ None, Some(theirs)) => *mine = Some(theirs.clone()),
            _ => {}
        }
        self.position.clone_from(&later.position);
        self.as_of.clone_from(&later.as_of);
        self.as_of_ms = later.as_of_ms;
        if later.store_count.is_some() {
            self.store_count = later.store_count;
        }
    }

    /// Folds the part of `later` that concerns `store` into this delta of that store alone:
    /// what `absorb(&later.scoped(store))` does, without copying the part first.
    pub fn absorb_scoped(&mut self, later: &Delta, store: &StoreId) {
        let Some(part) = later.stores.get(store.as_str()) else {
            return;
        };
        match self.stores.get_mut(store.as_str()) {
            Some(existing) => existing.absorb(part),
            None => {
                self.stores.insert(store.to_string(), part.clone());
            }
        }
        self.position.clone_from(&later.position);
        self.as_of.clone_from(&later.as_of);
        self.as_of_ms = later.as_of_ms;
        if later.store_count.is_some() {
            self.store_count = later.store_count;
        }
    }

    /// Drops every list that equals the one the scope's clients hold, and sends only the
    /// recent orders that are new to them: what they hold is the view before this frame
    /// (`views` just updated: [`Views::previous`]). The views must be updated once per
    /// frame, in order, for that to be what a client that applied every frame holds.
    pub fn omit_unchanged_lists(&mut self, views: &Views) {
        // Nothing to compare with (a store new in this frame, or the first frame since the
        // views were built): the lists whole and the recent orders whole and complete.
        let omit = |before: Option<&Arc<StoreView>>, delta: &mut StoreDelta| match before {
            Some(before) => {
                delta.lists.omit_unchanged(&before.lists);
                delta.keep_new_orders(Some(&before.recent_orders));
            }
            None => delta.keep_new_orders(None),
        };
        for (store, delta) in &mut self.stores {
            omit(views.previous(store), delta);
        }
        if let Some(all) = &mut self.all_stores {
            omit(views.previous_rollup(), all);
        }
    }

    /// The part of this delta the all-stores scope receives: the rollup's, never a
    /// store's (bounded whatever the number of stores that changed).
    pub fn rollup(&self) -> Delta {
        Delta {
            position: self.position.clone(),
            as_of: self.as_of.clone(),
            as_of_ms: self.as_of_ms,
            stores: BTreeMap::new(),
            store_count: self.store_count,
            all_stores: self.all_stores.clone(),
        }
    }

    /// The part of this delta a subscriber of one store receives, if it concerns it.
    pub fn scoped(&self, store: &StoreId) -> Option<Delta> {
        let view = self.stores.get(store.as_str())?;
        Some(Delta {
            position: self.position.clone(),
            as_of: self.as_of.clone(),
            as_of_ms: self.as_of_ms,
            stores: BTreeMap::from([(store.to_string(), view.clone())]),
            store_count: None,
            all_stores: None,
        })
    }
}
