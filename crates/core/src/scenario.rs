//! The flash-sale scenario: a deterministic stream of realistic commerce events.
//!
//! The generator plays every upstream system at once: the storefront (sessions), checkout
//! (orders, cancellations) and the inventory service (stock levels). Stock changes are
//! consistent with the orders: every sold line is followed by a `StockChanged` for its
//! SKU, every cancellation returns its units, restocks refill what runs low, and a SKU is
//! only oversold when the scenario asks for it.
//!
//! Pure core: the stream is a function of `(ScenarioConfig, seed)` alone. Event time is
//! synthetic: the k-th event occurs at `start_ms + k / events_per_second`, so the same
//! seed gives the same events (ids, times, values) on every machine, however fast the
//! producer runs. No I/O, no clock; randomness only from the seeded ChaCha generator.

use crate::events::{
    Channel, Event, OrderCancelled, OrderLine, OrderPlaced, SessionSeen, Sku, StockChangeReason,
    StockChanged, StoreId,
};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

/// The stores a scenario can run, in the order they are added.
/// `(store id, SKU prefix, currency, (min, max) unit price in minor units)`
const STORES: &[(&str, &str, &str, (i64, i64))] = &[
    ("store-berlin", "BER", "EUR", (499, 14_999)),
    ("store-nyc", "NYC", "USD", (599, 17_999)),
    ("store-tokyo", "TYO", "JPY", (800, 25_000)),
    ("store-london", "LON", "GBP", (399, 12_999)),
    ("store-paris", "PAR", "EUR", (499, 14_999)),
    ("store-sydney", "SYD", "AUD", (899, 24_999)),
    ("store-toronto", "TOR", "CAD", (699, 19_999)),
    ("store-zurich", "ZRH", "CHF", (599, 19_999)),
];

/// The most stores a scenario can have.
/// The most stores a scenario has: the named ones first, then `store-00009`, … with the
/// currencies of the named ones in turn (a marketplace's size).
pub const MAX_STORES: usize = 10_000;

/// Store `index` (from 0): id, SKU code, currency, price range in minor units.
fn store_profile(index: usize) -> (String, String, &'static str, (i64, i64)) {
    match STORES.get(index) {
        Some(&(id, code, currency, prices)) => (id.to_owned(), code.to_owned(), currency, prices),
        None => {
            let (_, _, currency, prices) = STORES[index % STORES.len()];
            (
                format!("store-{:05}", index + 1),
                format!("S{:05}", index + 1),
                currency,
                prices,
            )
        }
    }
}

/// How orders pick their SKUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Popularity {
    /// Every SKU alike.
    #[default]
    Uniform,
    /// A few SKUs sell most, as in a real catalog: SKU `⌊n·u³⌋` for a uniform `u`, so the
    /// first 1 % of the catalog takes about a fifth of the picks and half the catalog 79 %.
    Skewed,
}

const ADJECTIVES: &[&str] = &[
    "Merino",
    "Canvas",
    "Linen",
    "Recycled",
    "Organic",
    "Waxed",
    "Quilted",
    "Ribbed",
    "Alpine",
    "Coastal",
    "Vintage",
    "Everyday",
    "Trail",
    "Studio",
    "Classic",
    "Heritage",
    "Featherweight",
];
const PRODUCTS: &[&str] = &[
    "Hoodie",
    "Tote",
    "Socks",
    "Beanie",
    "Sneakers",
    "Parka",
    "T-Shirt",
    "Backpack",
    "Scarf",
    "Jeans",
    "Cap",
    "Mug",
    "Water Bottle",
    "Rain Jacket",
    "Gloves",
    "Sweater",
    "Shorts",
    "Bandana",
    "Notebook",
];
const FIRST_NAMES: &[&str] = &[
    "Ada", "Grace", "Alan", "Noor", "Linus", "Margaret", "Yuki", "Amara", "Mateo", "Priya",
    "Jonas", "Chen", "Fatima", "Olu", "Sofia", "Ravi", "Elena", "Kwame", "Ingrid", "Tomás",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Haddad", "Torvalds", "Hamilton", "Tanaka", "Okafor", "García",
    "Sharma", "Berg", "Wei", "Khan", "Adeyemi", "Rossi", "Iyer", "Petrova", "Mensah", "Lund",
];
const CANCEL_REASONS: &[&str] = &[
    "customer request",
    "payment failed",
    "fraud check",
    "address invalid",
];

/// Number of customers per store that orders are drawn from.
const CUSTOMERS_PER_STORE: u64 = 20_000;
/// Orders that can still be cancelled (the newest ones).
const CANCELLABLE_ORDERS: usize = 512;
/// A non-flash SKU below this level is a restock candidate.
const RESTOCK_BELOW: i64 = 25;

/// A flash sale: a burst of orders on a few discounted SKUs with little stock.
#[derive(Clone, Debug, PartialEq)]
pub struct FlashSale {
    /// Event time from the scenario start to the sale's start, in milliseconds.
    pub starts_after_ms: i64,
    /// How long the sale lasts, in milliseconds of event time.
    pub duration_ms: i64,
    /// Discounted SKUs per store (the first SKUs of each store's catalog).
    pub skus_per_store: usize,
    /// Sell flash SKUs past zero (the inventory service lets oversold orders through).
    pub oversell: bool,
    /// Price reduction on flash SKUs, in percent.
    pub discount_percent: i64,
}

/// Everything that shapes a scenario. With the seed, it determines every event.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioConfig {
    /// Random seed.
    pub seed: u64,
    /// Event time of the first event, milliseconds since the epoch.
    pub start_ms: i64,
    /// Events per second of event time (spacing of `occurred_at`).
    pub events_per_second: f64,
    /// Number of stores, 1..=[`MAX_STORES`].
    pub stores: usize,
    /// Catalog size per store, >= 1 and >= the flash SKUs.
    pub skus_per_store: usize,
    /// The flash sale, if any.
    pub flash_sale: Option<FlashSale>,
    /// How orders pick their SKUs.
    pub popularity: Popularity,
}

impl ScenarioConfig {
    /// Checks the ranges; the error says which setting is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_STORES).contains(&self.stores) {
            return Err(format!(
                "stores must be between 1 and {MAX_STORES}, got {}",
                self.stores
            ));
        }
        if self.skus_per_store == 0 || self.skus_per_store > 100_000 {
            return Err(format!(
                "skus per store must be between 1 and 100000, got {}",
                self.skus_per_store
            ));
        }
        if !(self.events_per_second.is_finite() && self.events_per_second > 0.0) {
            return Err("events per second must be positive".into());
        }
        if self.start_ms <= 0 {
            return Err("the start time must be after the Unix epoch".into());
        }
        if let Some(sale) = &self.flash_sale {
            if sale.skus_per_store > self.skus_per_store {
                return Err(format!(
                    "{} flash SKUs per store, but only {} SKUs per store",
                    sale.skus_per_store, self.skus_per_store
                ));
            }
            if sale.starts_after_ms < 0 || sale.duration_ms <= 0 {
                return Err("the flash sale needs a start >= 0 and a positive duration".into());
            }
            if !(0..100).contains(&sale.discount_percent) {
                return Err("the flash discount must be between 0 and 99 percent".into());
            }
        }
        Ok(())
    }

    /// The store ids this scenario produces, in order.
    pub fn store_ids(&self) -> Vec<StoreId> {
        (0..self.stores.min(MAX_STORES))
            .map(|i| StoreId(store_profile(i).0))
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Product {
    sku: Sku,
    name: String,
    price_minor: i64,
    level: i64,
    flash: bool,
}

#[derive(Clone, Debug)]
struct StoreSim {
    id: StoreId,
    code: String,
    currency: &'static str,
    catalog: Vec<Product>,
    sessions_started: u64,
    orders_placed: u64,
}

#[derive(Clone, Debug)]
struct PlacedOrder {
    store: usize,
    order_id: String,
    placed_at: i64,
    total_minor: i64,
    lines: Vec<(usize, i64)>,
}

/// Where the scenario is in its timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Steady traffic before the sale (or with no sale configured).
    Baseline,
    /// The flash sale is on.
    FlashSale,
    /// After the sale.
    AfterSale,
}

/// The event stream. An endless iterator: take as many events as you need.
#[derive(Debug)]
pub struct Scenario {
    config: ScenarioConfig,
    rng: ChaCha8Rng,
    stores: Vec<StoreSim>,
    queue: VecDeque<Event>,
    /// Events generated so far (queued or emitted); the next one's index.
    generated: u64,
    cancellable: VecDeque<PlacedOrder>,
    /// Part of every order id: which run made it.
    run: String,
}

impl Scenario {
    /// A scenario at its start. Its first events set the initial stock level of every SKU.
    ///
    /// # Panics
    /// If the configuration does not [`validate`](ScenarioConfig::validate).
    pub fn new(config: ScenarioConfig) -> Self {
        if let Err(problem) = config.validate() {
            panic!("invalid scenario configuration: {problem}");
        }
        // The start time is part of the seed: two runs with the same seed but another start
        // produce other event ids, which dedup would otherwise drop as redeliveries.
        let run_key = config.seed ^ (config.start_ms as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = ChaCha8Rng::seed_from_u64(run_key);
        // Order ids carry the run too: an order id names one order, so two runs must not
        // reuse one (a repeated order id counts once, see the aggregates).
        let run = format!(
            "{:08x}",
            (run_key.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 32) as u32
        );
        let flash_skus = config.flash_sale.as_ref().map_or(0, |s| s.skus_per_store);
        let stores = (0..config.stores)
            .map(store_profile)
            .map(|(id, code, currency, (min_price, max_price))| StoreSim {
                id: StoreId(id),
                currency,
                catalog: (0..config.skus_per_store)
                    .map(|i| {
                        let flash = i < flash_skus;
                        Product {
                            sku: Sku(format!("{code}-{:04}", i + 1)),
                            name: format!(
                                "{} {}",
                                ADJECTIVES[(i * 7 + code.len()) % ADJECTIVES.len()],
                                PRODUCTS[i % PRODUCTS.len()]
                            ),
                            price_minor: rng.random_range(min_price..=max_price),
                            // Flash SKUs start with little stock so the sale drains them.
                            level: if flash {
                                rng.random_range(60..=120)
                            } else {
                                rng.random_range(150..=600)
                            },
                            flash,
                        }
                    })
                    .collect(),
                sessions_started: 0,
                orders_placed: 0,
                code,
            })
            .collect();
        let mut scenario = Scenario {
            config,
            rng,
            stores,
            queue: VecDeque::new(),
            generated: 0,
            cancellable: VecDeque::new(),
            run,
        };
        for store in 0..scenario.stores.len() {
            for product in 0..scenario.stores[store].catalog.len() {
                // The initial level, as a correction from nothing.
                let level = scenario.stores[store].catalog[product].level;
                scenario.emit_stock_level(store, product, level, StockChangeReason::Correction);
            }
        }
        scenario
    }

    /// The configuration this scenario runs.
    pub fn config(&self) -> &ScenarioConfig {
        &self.config
    }

    /// The phase at the event time of the next event.
    pub fn phase(&self) -> Phase {
        self.phase_at(self.time_of(self.generated))
    }

    fn phase_at(&self, time: i64) -> Phase {
        match &self.config.flash_sale {
            None => Phase::Baseline,
            Some(sale) => {
                let start = self.config.start_ms + sale.starts_after_ms;
                if time < start {
                    Phase::Baseline
                } else if time < start + sale.duration_ms {
                    Phase::FlashSale
                } else {
                    Phase::AfterSale
                }
            }
        }
    }

    fn time_of(&self, index: u64) -> i64 {
        self.config.start_ms + (index as f64 * 1000.0 / self.config.events_per_second) as i64
    }

    /// Event time and id for the next generated event.
    fn stamp(&mut self) -> (i64, String) {
        let time = self.time_of(self.generated);
        self.generated += 1;
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        (time, id.to_string())
    }

    /// Moves a SKU's level by `delta` and emits the change.
    fn push_stock_event(
        &mut self,
        store: usize,
        product: usize,
        delta: i64,
        reason: StockChangeReason,
    ) {
        self.stores[store].catalog[product].level += delta;
        self.emit_stock_level(store, product, delta, reason);
    }

    /// Emits a SKU's current level with the change that led to it.
    fn emit_stock_level(
        &mut self,
        store: usize,
        product: usize,
        delta: i64,
        reason: StockChangeReason,
    ) {
        let (occurred_at, event_id) = self.stamp();
        let s = &self.stores[store];
        let p = &s.catalog[product];
        self.queue.push_back(Event::StockChanged(StockChanged {
            event_id,
            store_id: s.id.clone(),
            occurred_at,
            sku: p.sku.clone(),
            name: p.name.clone(),
            new_level: p.level,
            delta,
            reason,
        }));
    }

    /// Generates at least one event into the queue.
    fn step(&mut self) {
        let phase = self.phase();
        let roll: f64 = self.rng.random();
        let (session_share, order_share) = match phase {
            Phase::FlashSale => (0.30, 0.62),
            _ => (0.50, 0.40),
        };
        if roll < session_share {
            self.session();
        } else if roll < session_share + order_share {
            if !self.order(phase) {
                self.session();
            }
        } else if roll < session_share + order_share + 0.03 {
            if !self.cancel() {
                self.session();
            }
        } else if roll < session_share + order_share + 0.07 {
            self.restock(phase);
        } else {
            self.correction();
        }
    }

    fn session(&mut self) {
        let store = self.rng.random_range(0..self.stores.len());
        let (occurred_at, event_id) = self.stamp();
        let s = &mut self.stores[store];
        // Mostly returning sessions, sometimes a new one.
        let session = if s.sessions_started == 0 || self.rng.random_bool(0.1) {
            s.sessions_started += 1;
            s.sessions_started
        } else {
            self.rng.random_range(1..=s.sessions_started)
        };
        let user_id = self
            .rng
            .random_bool(0.4)
            .then(|| format!("cust-{}-{}", s.code, session % CUSTOMERS_PER_STORE));
        self.queue.push_back(Event::SessionSeen(SessionSeen {
            event_id,
            store_id: s.id.clone(),
            occurred_at,
            session_id: format!("sess-{}-{session}", s.code),
            user_id,
        }));
    }

    /// The lines of an order in `store`: one to three distinct products (in a flash sale the
    /// first is a sale product 4 times in 5), each with its quantity and price; a product
    /// out of stock is left out unless the sale oversells.
    fn draw_lines(&mut self, store: usize, phase: Phase) -> Vec<(usize, i64, i64)> {
        let sale = self.config.flash_sale.clone();
        let flash_skus = sale.as_ref().map_or(0, |s| s.skus_per_store);
        let line_count = self.rng.random_range(1..=3usize);
        let mut lines: Vec<(usize, i64, i64)> = Vec::with_capacity(line_count);
        for n in 0..line_count {
            let catalog_len = self.stores[store].catalog.len();
            let product = if phase == Phase::FlashSale && n == 0 && self.rng.random_bool(0.8) {
                self.rng.random_range(0..flash_skus)
            } else {
                match self.config.popularity {
                    Popularity::Uniform => self.rng.random_range(0..catalog_len),
                    Popularity::Skewed => {
                        let u: f64 = self.rng.random();
                        ((catalog_len as f64 * u * u * u) as usize).min(catalog_len - 1)
                    }
                }
            };
            if lines.iter().any(|l| l.0 == product) {
                continue;
            }
            let p = &self.stores[store].catalog[product];
            let quantity = if p.flash && phase == Phase::FlashSale {
                self.rng.random_range(1..=3)
            } else {
                self.rng.random_range(1..=2)
            };
            let oversell = p.flash && sale.as_ref().is_some_and(|s| s.oversell);
            if p.level < quantity && !oversell {
                continue; // out of stock: the storefront does not sell it
            }
            let price = match (&sale, p.flash && phase == Phase::FlashSale) {
                (Some(s), true) => p.price_minor * (100 - s.discount_percent) / 100,
                _ => p.price_minor,
            };
            lines.push((product, quantity, price));
        }
        lines
    }

    /// Places an order if any of the drawn lines can be served; false if none could.
    fn order(&mut self, phase: Phase) -> bool {
        let store = self.rng.random_range(0..self.stores.len());
        let lines = self.draw_lines(store, phase);
        if lines.is_empty() {
            return false;
        }
        let (occurred_at, event_id) = self.stamp();
        let channel = match self.rng.random_range(0..100) {
            0..50 => Channel::Web,
            50..85 => Channel::App,
            85..90 => Channel::Pos,
            _ => Channel::Marketplace,
        };
        let customer = self.rng.random_range(0..CUSTOMERS_PER_STORE);
        let first = FIRST_NAMES[self.rng.random_range(0..FIRST_NAMES.len())];
        let last = LAST_NAMES[self.rng.random_range(0..LAST_NAMES.len())];
        let s = &mut self.stores[store];
        s.orders_placed += 1;
        let order_id = format!("ord-{}-{}-{:07}", s.code, self.run, s.orders_placed);
        let order_lines: Vec<OrderLine> = lines
            .iter()
            .map(|&(product, quantity, price)| OrderLine {
                sku: s.catalog[product].sku.clone(),
                name: s.catalog[product].name.clone(),
                quantity: quantity as i32,
                unit_price_minor: price,
            })
            .collect();
        let total_minor = lines.iter().map(|&(_, q, price)| q * price).sum();
        self.queue.push_back(Event::OrderPlaced(OrderPlaced {
            event_id,
            store_id: s.id.clone(),
            occurred_at,
            order_id: order_id.clone().into(),
            customer_id: format!("cust-{}-{customer}", s.code),
            customer_name: format!("{first} {last}"),
            lines: order_lines,
            total_minor,
            currency: s.currency.into(),
            channel,
        }));
        for &(product, quantity, _) in &lines {
            self.push_stock_event(store, product, -quantity, StockChangeReason::Sale);
        }
        if self.cancellable.len() == CANCELLABLE_ORDERS {
            self.cancellable.pop_front();
        }
        self.cancellable.push_back(PlacedOrder {
            store,
            order_id,
            placed_at: occurred_at,
            total_minor,
            lines: lines.iter().map(|&(p, q, _)| (p, q)).collect(),
        });
        true
    }

    /// Cancels one of the recent orders and returns its units; false if there is none.
    fn cancel(&mut self) -> bool {
        if self.cancellable.is_empty() {
            return false;
        }
        let index = self.rng.random_range(0..self.cancellable.len());
        let Some(order) = self.cancellable.remove(index) else {
            return false;
        };
        let (occurred_at, event_id) = self.stamp();
        let reason = CANCEL_REASONS[self.rng.random_range(0..CANCEL_REASONS.len())];
        let s = &self.stores[order.store];
        self.queue.push_back(Event::OrderCancelled(OrderCancelled {
            event_id,
            store_id: s.id.clone(),
            occurred_at,
            order_id: order.order_id.into(),
            order_placed_at: order.placed_at,
            total_minor: order.total_minor,
            currency: s.currency.into(),
            reason: reason.into(),
        }));
        for (product, quantity) in order.lines {
            self.push_stock_event(order.store, product, quantity, StockChangeReason::Return);
        }
        true
    }

    /// Refills the emptiest of a few sampled SKUs. Flash SKUs are not refilled during the
    /// sale (that is what makes it a sale).
    fn restock(&mut self, phase: Phase) {
        let store = self.rng.random_range(0..self.stores.len());
        let len = self.stores[store].catalog.len();
        let mut best: Option<usize> = None;
        for _ in 0..6 {
            let candidate = self.rng.random_range(0..len);
            let p = &self.stores[store].catalog[candidate];
            if p.flash && phase == Phase::FlashSale {
                continue;
            }
            if best.is_none_or(|b| p.level < self.stores[store].catalog[b].level) {
                best = Some(candidate);
            }
        }
        match best {
            Some(product) if self.stores[store].catalog[product].level < RESTOCK_BELOW => {
                let amount = self.rng.random_range(50..=250);
                self.push_stock_event(store, product, amount, StockChangeReason::Restock);
            }
            _ => self.session(),
        }
    }

    /// A stock count correction of a few units, never below zero.
    fn correction(&mut self) {
        let store = self.rng.random_range(0..self.stores.len());
        let product = self.rng.random_range(0..self.stores[store].catalog.len());
        let level = self.stores[store].catalog[product].level;
        let delta = self.rng.random_range(-3..=3i64).max(-level.max(0));
        if delta == 0 {
            self.session();
        } else {
            self.push_stock_event(store, product, delta, StockChangeReason::Correction);
        }
    }
}

impl Iterator for Scenario {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        while self.queue.is_empty() {
            self.step();
        }
        self.queue.pop_front()
    }
}

/// What a buggy producer got wrong in one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Junk {
    /// A random id in the store field (a new store every time).
    StoreId,
    /// An order total of 2^63 − 1.
    Amount,
    /// Dated ten years ahead, and sent without a Kafka timestamp (CreateTime −1).
    NoTimestamp,
}

/// A producer with bugs: corrupts about `per_mille` of every thousand events, each one of
/// the [`Junk`] kinds in turn at random. Seeded, so a run is repeatable; pure like the
/// scenario (the caller sends a [`Junk::NoTimestamp`] record without a timestamp).
#[derive(Debug)]
pub struct BuggyProducer {
    per_mille: u32,
    rng: ChaCha8Rng,
}

impl BuggyProducer {
    /// Corrupts `per_mille` (0 to 1000) events in a thousand.
    pub fn new(seed: u64, per_mille: u32) -> BuggyProducer {
        BuggyProducer {
            per_mille: per_mille.min(1_000),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6275_6767_7970_726f),
        }
    }

    /// Corrupts `event` or leaves it; says what it did.
    pub fn corrupt(&mut self, event: &mut Event) -> Option<Junk> {
        if self.per_mille == 0 || self.rng.random_range(0..1_000) >= self.per_mille {
            return None;
        }
        let junk = match self.rng.random_range(0..3) {
            0 => Junk::StoreId,
            1 if matches!(event, Event::OrderPlaced(_)) => Junk::Amount,
            1 => Junk::StoreId,
            _ => Junk::NoTimestamp,
        };
        match (junk, &mut *event) {
            (Junk::Amount, Event::OrderPlaced(order)) => order.total_minor = i64::MAX,
            (Junk::NoTimestamp, _) => {
                let ahead = 10 * 365 * 86_400_000;
                match event {
                    Event::OrderPlaced(e) => e.occurred_at += ahead,
                    Event::OrderCancelled(e) => e.occurred_at += ahead,
                    Event::StockChanged(e) => e.occurred_at += ahead,
                    Event::SessionSeen(e) => e.occurred_at += ahead,
                }
            }
            _ => {
                let store = StoreId(format!("junk-{:016x}", self.rng.random::<u64>()));
                match event {
                    Event::OrderPlaced(e) => e.store_id = store,
                    Event::OrderCancelled(e) => e.store_id = store,
                    Event::StockChanged(e) => e.store_id = store,
                    Event::SessionSeen(e) => e.store_id = store,
                }
            }
        }
        Some(junk)
    }
}

#[cfg(test)]
mod tests;
