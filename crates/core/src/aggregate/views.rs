//! Views kept current: each store's view is rebuilt only when that store changed, and the
//! all-stores rollup is maintained from the stores' views, never by scanning every store.
//!
//! What one update costs is bounded by what changed: per changed store, its view (a scan of
//! that store's SKUs) and its contribution to the rollup's sums (currencies, minutes, the
//! heads of its lists); then the rollup's lists by a k-way merge of the stores' lists,
//! which takes `O(limit × log limit)` whatever the number of stores, because each store
//! contributes only the head of each list to a shared ordered set. The rollup's visitors
//! today are a union of sketches, which cannot forget a store's old day: they are merged
//! in as stores change and rebuilt only when some store's day turns (once per store and
//! day).
//!
//! The result equals [`State::all_stores_view`] (the one-scan reference) after every
//! update; a property test checks it. Views are shared (`Arc`): a snapshot takes one (a
//! store's, or the rollup) without copying it, and the views an update replaced stay for
//! one frame as what clients held before it (the baseline of a delta).
//!
//! Pure: no I/O, no clock.

use super::rollup::{
    AlertKey, LowKey, OrderKey, OversoldKey, Part, TopKey, alert_key, low_key, order_key,
    oversold_key, rollup_of, top_key,
};
use super::store::{ACTIVE_WINDOW_MINUTES, Amounts, MINUTES_KEPT};
use super::view::{self, ListCounts, SkuLists, StoreView, TOP_PRODUCTS, rfc3339};
use super::{AggregateConfig, HyperLogLog, State};
use crate::events::StoreId;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

/// Each store's view and the rollup, kept current by [`Views::update`].
#[derive(Debug)]
pub struct Views {
    config: Arc<AggregateConfig>,
    stores: BTreeMap<StoreId, Arc<StoreView>>,
    parts: HashMap<StoreId, StorePart>,
    sums: Sums,
    newest_minute: i64,
    visitors_today: HyperLogLog,
    active: BTreeMap<i64, HyperLogLog>,
    heads: Heads,
    /// The part of every store held, as of the last update.
    part: Part,
    rollup: Arc<StoreView>,
    /// The views the last update replaced (changed stores only), and the rollup before it:
    /// what a client that applied every frame held, so a delta sends only what differs.
    previous: HashMap<StoreId, Arc<StoreView>>,
    previous_rollup: Option<Arc<StoreView>>,
}

/// One store's contribution to the rollup's sums, as last added (to take it away again).
#[derive(Debug, Default)]
struct StorePart {
    day: i32,
    orders: u64,
    orders_by_currency: BTreeMap<String, u64>,
    gross: Amounts,
    net: Amounts,
    cancelled: u64,
    minutes: Vec<(i64, u64, Amounts)>,
    counts: ListCounts,
}

/// The sums of every store's part. Each keyed sum counts the parts that hold its key, so a
/// key stays while any store has it (a net revenue of 0 is shown, as the one scan shows it)
/// and leaves with the last.
#[derive(Debug, Default)]
struct Sums {
    orders: u64,
    orders_by_currency: Counted<String, u64>,
    gross: Counted<String, i128>,
    net: Counted<String, i128>,
    cancelled: u64,
    minutes: Counted<i64, u64>,
    minute_revenue: BTreeMap<i64, Counted<String, i128>>,
    counts: ListCounts,
}

/// Sums by key, with how many parts hold each key.
type Counted<K, V> = BTreeMap<K, (V, u64)>;

fn add_keyed<
    K: Ord + Clone,
    V: Copy + Default + std::ops::Add<Output = V> + std::ops::Sub<Output = V>,
>(
    into: &mut Counted<K, V>,
    from: impl IntoIterator<Item = (K, V)>,
    sign: i8,
) {
    for (key, value) in from {
        let entry = into.entry(key.clone()).or_insert((V::default(), 0));
        if sign < 0 {
            entry.0 = entry.0 - value;
            entry.1 -= 1;
            if entry.1 == 0 {
                into.remove(&key);
            }
        } else {
            entry.0 = entry.0 + value;
            entry.1 += 1;
        }
    }
}

fn values<K: Ord + Clone, V: Copy>(counted: &Counted<K, V>) -> BTreeMap<K, V> {
    counted.iter().map(|(k, (v, _))| (k.clone(), *v)).collect()
}

/// The head (first item's key) of one list of every store, ordered: the start of a k-way
/// merge.
#[derive(Debug)]
struct HeadSet<K: Ord> {
    ordered: BTreeSet<(K, StoreId)>,
    of_store: HashMap<StoreId, K>,
}

impl<K: Ord + Clone> HeadSet<K> {
    fn new() -> Self {
        HeadSet {
            ordered: BTreeSet::new(),
            of_store: HashMap::new(),
        }
    }

    fn set(&mut self, store: &StoreId, head: Option<K>) {
        if let Some(old) = self.of_store.remove(store) {
            self.ordered.remove(&(old, store.clone()));
        }
        if let Some(head) = head {
            self.ordered.insert((head.clone(), store.clone()));
            self.of_store.insert(store.clone(), head);
        }
    }

    /// The first `n` items of all stores' lists merged in key order (ties by store id: the
    /// order a stable sort of the stores' lists concatenated by store id gives).
    fn first<T: Clone>(
        &self,
        n: usize,
        stores: &BTreeMap<StoreId, Arc<StoreView>>,
        list: fn(&StoreView) -> &[T],
        key: fn(&T) -> K,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(n);
        let mut heads = self.ordered.iter().peekable();
        // Items after a store's head, once its head is taken: (key, store, index).
        let mut next: BinaryHeap<Reverse<(K, &StoreId, usize)>> = BinaryHeap::new();
        while out.len() < n {
            let from_heads = match (heads.peek(), next.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((k, s)), Some(Reverse((nk, ns, _)))) => (k, s) < (nk, *ns),
            };
            let (store, index) = if from_heads {
                let (_, store) = heads.next().expect("peeked");
                (store, 0)
            } else {
                let Reverse((_, store, index)) = next.pop().expect("peeked");
                (store, index)
            };
            let Some(items) = stores.get(store).map(|v| list(v)) else {
                continue;
            };
            if let Some(item) = items.get(index) {
                out.push(item.clone());
            }
            if let Some(after) = items.get(index + 1) {
                next.push(Reverse((key(after), store, index + 1)));
            }
        }
        out
    }
}

#[derive(Debug)]
struct Heads {
    low_stock: HeadSet<LowKey>,
    oversold: HeadSet<OversoldKey>,
    top: HeadSet<TopKey>,
    alerts: HeadSet<AlertKey>,
    orders: HeadSet<OrderKey>,
}

impl Heads {
    fn set(&mut self, store: &StoreId, view: &StoreView) {
        let lists = &view.lists;
        self.low_stock
            .set(store, lists.low_stock.first().map(low_key));
        self.oversold
            .set(store, lists.oversold.first().map(oversold_key));
        self.top.set(store, lists.top_products.first().map(top_key));
        self.alerts.set(store, lists.alerts.first().map(alert_key));
        self.orders
            .set(store, view.recent_orders.first().map(order_key));
    }
}

fn amounts_of(money: &[view::Money]) -> Amounts {
    money
        .iter()
        .map(|m| (m.currency.clone(), m.minor))
        .collect()
}

impl Sums {
    fn add(&mut self, part: &StorePart, sign: i8) {
        let apply = |into: &mut u64, n: u64| view::add_signed(into, n, sign);
        apply(&mut self.orders, part.orders);
        apply(&mut self.cancelled, part.cancelled);
        add_keyed(
            &mut self.orders_by_currency,
            part.orders_by_currency.iter().map(|(c, n)| (c.clone(), *n)),
            sign,
        );
        let amounts = |a: &Amounts| a.iter().map(|(c, m)| (c.clone(), *m)).collect::<Vec<_>>();
        add_keyed(&mut self.gross, amounts(&part.gross), sign);
        add_keyed(&mut self.net, amounts(&part.net), sign);
        for (minute, orders, revenue) in &part.minutes {
            add_keyed(&mut self.minutes, [(*minute, *orders)], sign);
            let by_currency = self.minute_revenue.entry(*minute).or_default();
            add_keyed(by_currency, amounts(revenue), sign);
            if by_currency.is_empty() {
                self.minute_revenue.remove(minute);
            }
        }
        self.counts.add(&part.counts, sign);
    }
}

impl Views {
    /// The views of every store of `state` and their rollup (one scan of everything: at
    /// start, after a restore, or when the configuration changes).
    pub fn new(state: &State) -> Views {
        let mut views = Views {
            config: Arc::clone(state.config()),
            stores: BTreeMap::new(),
            previous: HashMap::new(),
            previous_rollup: None,
            parts: HashMap::new(),
            sums: Sums::default(),
            newest_minute: 0,
            visitors_today: HyperLogLog::default(),
            active: BTreeMap::new(),
            heads: Heads {
                low_stock: HeadSet::new(),
                oversold: HeadSet::new(),
                top: HeadSet::new(),
                alerts: HeadSet::new(),
                orders: HeadSet::new(),
            },
            part: Part::default(),
            rollup: Arc::new(State::new(Arc::clone(state.config())).all_stores_view()),
        };
        let all: Vec<StoreId> = state.stores().keys().cloned().collect();
        views.update(state, all.iter());
        views
    }

    /// Brings the views of `changed` stores (and the rollup) up to `state`. Every store
    /// whose aggregates changed since the last update must be in `changed`.
    pub fn update<'a>(&mut self, state: &State, changed: impl IntoIterator<Item = &'a StoreId>) {
        if !Arc::ptr_eq(&self.config, state.config()) && **state.config() != *self.config {
            *self = Views::new(state);
            return;
        }
        self.previous.clear();
        self.previous_rollup = Some(Arc::clone(&self.rollup));
        let mut day_turned = false;
        let mut any = false;
        for id in changed {
            let (Some(store), Some(view)) = (state.stores().get(id), state.store_view(id)) else {
                continue;
            };
            any = true;
            let today = store.today(state.config().time_zone(id));
            let day = store.days.get(&today);
            let part = StorePart {
                day: today,
                orders: day.map_or(0, |d| d.orders),
                orders_by_currency: day
                    .map(|d| d.orders_by_currency.clone())
                    .unwrap_or_default(),
                gross: day.map(|d| d.gross_revenue.clone()).unwrap_or_default(),
                net: day.map(|d| d.net_revenue.clone()).unwrap_or_default(),
                cancelled: day.map_or(0, |d| d.cancelled),
                minutes: view
                    .per_minute
                    .iter()
                    .map(|m| (m.index, m.orders, amounts_of(&m.revenue)))
                    .collect(),
                counts: view.counters.counts.clone(),
            };
            if let Some(old) = self.parts.insert(id.clone(), part) {
                day_turned |= old.day != today;
                self.sums.add(&old, -1);
            }
            self.sums.add(&self.parts[id], 1);
            if let Some(d) = day {
                self.visitors_today.merge(&d.visitors);
            }
            let newest_minute = store.newest_minute();
            self.newest_minute = self.newest_minute.max(newest_minute);
            for (minute, sketch) in &store.active {
                if *minute > newest_minute - ACTIVE_WINDOW_MINUTES {
                    self.active.entry(*minute).or_default().merge(sketch);
                }
            }
            self.heads.set(id, &view);
            if let Some(old) = self.stores.insert(id.clone(), Arc::new(view)) {
                self.previous.insert(id.clone(), old);
            }
        }
        if !any {
            return;
        }
        if day_turned {
            self.visitors_today = HyperLogLog::default();
            for (id, store) in state.stores() {
                let today = store.today(state.config().time_zone(id));
                if let Some(d) = store.days.get(&today) {
                    self.visitors_today.merge(&d.visitors);
                }
            }
        }
        let first_active = self.newest_minute - ACTIVE_WINDOW_MINUTES + 1;
        self.active = self.active.split_off(&first_active);
        self.part = self.part_of_stores();
        self.rollup = Arc::new(rollup_of(&[&self.part], self.config.list_limit));
    }

    /// The part of the stores held: their sums, sketches and the first items of their
    /// lists (the k-way merge of their heads), with the windows ending at their newest
    /// minute.
    fn part_of_stores(&self) -> Part {
        let from = self.newest_minute - MINUTES_KEPT + 1;
        let limit = self.config.list_limit;
        let sums = &self.sums;
        let stores = &self.stores;
        Part {
            orders: sums.orders,
            orders_by_currency: values(&sums.orders_by_currency),
            gross: values(&sums.gross),
            net: values(&sums.net),
            cancelled: sums.cancelled,
            minutes: sums
                .minutes
                .range(from..)
                .map(|(minute, (orders, _))| {
                    let revenue = sums.minute_revenue.get(minute).map(values);
                    (*minute, (*orders, revenue.unwrap_or_default()))
                })
                .collect(),
            counts: sums.counts.clone(),
            newest_minute: self.newest_minute,
            visitors_today: self.visitors_today.clone(),
            active: self.active.clone(),
            recent_orders: self.heads.orders.first(
                super::RECENT_ORDERS,
                stores,
                |v| &v.recent_orders,
                order_key,
            ),
            lists: SkuLists {
                low_stock: self.heads.low_stock.first(
                    limit,
                    stores,
                    |v| &v.lists.low_stock,
                    low_key,
                ),
                oversold: self.heads.oversold.first(
                    limit,
                    stores,
                    |v| &v.lists.oversold,
                    oversold_key,
                ),
                top_products: self.heads.top.first(
                    TOP_PRODUCTS,
                    stores,
                    |v| &v.lists.top_products,
                    top_key,
                ),
                alerts: self
                    .heads
                    .alerts
                    .first(limit, stores, |v| &v.lists.alerts, alert_key),
            },
        }
    }

    /// What the stores held contribute to an all-stores rollup (their own rollup is
    /// [`rollup_of`] this part alone): what an aggregator of a cluster publishes for its
    /// slice.
    pub fn part(&self) -> &Part {
        &self.part
    }

    /// Every store's view, by id.
    pub fn stores(&self) -> impl Iterator<Item = (&StoreId, &Arc<StoreView>)> {
        self.stores.iter()
    }

    /// The view of one store, shared.
    pub fn store(&self, id: &StoreId) -> Option<&Arc<StoreView>> {
        self.stores.get(id)
    }

    /// The rollup, shared.
    pub fn rollup(&self) -> &Arc<StoreView> {
        &self.rollup
    }

    /// A changed store's view before the last update (`None` for a store new in it, or
    /// before any update: nothing to compare with).
    pub fn previous(&self, store: &str) -> Option<&Arc<StoreView>> {
        self.previous.get(store)
    }

    /// The rollup before the last update (`None` before any).
    pub fn previous_rollup(&self) -> Option<&Arc<StoreView>> {
        self.previous_rollup.as_ref()
    }
}

/// A snapshot made of shared views: taking one copies pointers, not views, so the ingest
/// thread can hand it to whoever serialises it. Serialises exactly as the one-scan
/// reference: [`super::view::RollupSnapshot`] for all stores, [`super::view::Snapshot`] for
/// one.
#[derive(Clone, Debug)]
pub struct ViewsSnapshot {
    position: String,
    as_of: Option<String>,
    as_of_ms: i64,
    scope: ScopeViews,
}

#[derive(Clone, Debug)]
enum ScopeViews {
    All {
        store_count: usize,
        config: Arc<AggregateConfig>,
        rollup: Arc<StoreView>,
    },
    One {
        id: StoreId,
        view: Arc<StoreView>,
    },
}

impl Views {
    /// The snapshot of the rollup (all stores), or of one store (`None` if unknown), at
    /// `state`'s position: the views must be current with `state`.
    pub fn snapshot(
        &self,
        state: &State,
        layout: &super::Layout,
        store: Option<&StoreId>,
    ) -> Option<ViewsSnapshot> {
        let position = layout.encode(state.position());
        let newest = state.newest_event_time();
        Some(match store {
            Some(id) => ViewsSnapshot::of_store(
                position,
                newest,
                id.clone(),
                Arc::clone(self.stores.get(id)?),
            ),
            None => ViewsSnapshot::of_rollup(
                position,
                newest,
                self.stores.len(),
                Arc::clone(&self.config),
                Arc::clone(&self.rollup),
            ),
        })
    }
}

impl ViewsSnapshot {
    fn new(position: String, newest_ms: i64, scope: ScopeViews) -> ViewsSnapshot {
        ViewsSnapshot {
            position,
            as_of: (newest_ms > 0).then(|| rfc3339(newest_ms)),
            as_of_ms: newest_ms,
            scope,
        }
    }

    /// The all-stores snapshot of a rollup at `position` (encoded), whose newest event time
    /// is `newest_ms`.
    pub fn of_rollup(
        position: String,
        newest_ms: i64,
        store_count: usize,
        config: Arc<AggregateConfig>,
        rollup: Arc<StoreView>,
    ) -> ViewsSnapshot {
        let scope = ScopeViews::All {
            store_count,
            config,
            rollup,
        };
        ViewsSnapshot::new(position, newest_ms, scope)
    }

    /// The snapshot of one store's view at `position` (encoded).
    pub fn of_store(
        position: String,
        newest_ms: i64,
        id: StoreId,
        view: Arc<StoreView>,
    ) -> ViewsSnapshot {
        ViewsSnapshot::new(position, newest_ms, ScopeViews::One { id, view })
    }
}

impl serde::Serialize for ViewsSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        match &self.scope {
            ScopeViews::All {
                store_count,
                config,
                rollup,
            } => {
                let (time_zones, default_time_zone) =
                    super::view::RollupSnapshot::time_zones_of(config);
                let mut out = serializer.serialize_struct("RollupSnapshot", 7)?;
                out.serialize_field("position", &self.position)?;
                out.serialize_field("as_of", &self.as_of)?;
                out.serialize_field("as_of_ms", &self.as_of_ms)?;
                out.serialize_field("store_count", store_count)?;
                out.serialize_field("time_zones", &time_zones)?;
                out.serialize_field("default_time_zone", &default_time_zone)?;
                out.serialize_field("all_stores", &**rollup)?;
                out.end()
            }
            ScopeViews::One { id, view } => {
                struct One<'a>(&'a StoreId, &'a StoreView);
                impl serde::Serialize for One<'_> {
                    fn serialize<S: serde::Serializer>(
                        &self,
                        serializer: S,
                    ) -> Result<S::Ok, S::Error> {
                        let mut map = serializer.serialize_map(Some(1))?;
                        map.serialize_entry(self.0.as_str(), self.1)?;
                        map.end()
                    }
                }
                let mut out = serializer.serialize_struct("Snapshot", 4)?;
                out.serialize_field("position", &self.position)?;
                out.serialize_field("as_of", &self.as_of)?;
                out.serialize_field("as_of_ms", &self.as_of_ms)?;
                out.serialize_field("stores", &One(id, view))?;
                out.end()
            }
        }
    }
}
