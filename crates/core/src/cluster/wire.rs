//! The records aggregators publish to storepulse's own topics (ADR 0007, decision 7), and
//! their bytes. A frames-topic record is one [`SliceFrame`]; a slices-topic (changelog)
//! record is a slice's [`SliceHead`] (key [`HEAD_KEY`]) or one store's whole view (key
//! [`store_key`], JSON as `/api/snapshot` shows it).
//!
//! Each value starts with a format byte ([`FORMAT`]); a reader refuses any other, so a
//! cluster upgraded one role at a time fails loudly instead of misreading. The body is
//! postcard (compact, not self-describing: every field is written, in order). Views and
//! deltas travel as the field-by-field records below rather than as their API JSON, whose
//! flattened parts serde cannot read back with 128-bit money.

use super::SlicePosition;
use crate::aggregate::Part;
use crate::aggregate::view::{
    AlertView, DayCounters, LowStockView, MinuteView, OrderView, SkuLists, StockView, StoreView,
    TopProduct,
};
use crate::live::{SkuListsDelta, StoreDelta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// The format byte of every value this module writes.
pub const FORMAT: u8 = 1;

/// The changelog key of a slice's head.
pub const HEAD_KEY: &str = "head";

/// The changelog key of a store's view.
pub fn store_key(store: &str) -> String {
    format!("store/{store}")
}

/// The store a changelog key names, if it names one.
pub fn store_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("store/")
}

/// Why a record could not be read.
#[derive(Debug, Error)]
pub enum WireError {
    /// Empty, or written by another format.
    #[error("format byte {0:?}, expected {FORMAT} (a storepulse of another version wrote it)")]
    Format(Option<u8>),
    /// The body does not decode.
    #[error("undecodable body: {0}")]
    Body(String),
}

/// One frame of one slice: what changed between two of its positions.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceFrame {
    /// The slice (partition number).
    pub slice: i32,
    /// The slice's position before this frame; `None` for a whole frame (the slice's first
    /// ever: every store whole, to a reader that holds nothing of it).
    pub from: Option<SlicePosition>,
    /// The slice's position after it.
    pub to: SlicePosition,
    /// The slice's head after it (its part of the rollup, its stores, its newest time).
    pub head: SliceHead,
    /// The delta of each store that changed (whole in a whole frame).
    pub stores: BTreeMap<String, StoreDelta>,
}

/// A slice's contribution to everything: where it stands, how many stores it holds, its
/// newest event time and its part of the rollup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceHead {
    /// The slice.
    pub slice: i32,
    /// Its position.
    pub position: SlicePosition,
    /// Stores it holds.
    pub store_count: u64,
    /// Its newest event time (epoch ms; 0 before any).
    pub newest_event_time: i64,
    /// Its part of the all-stores rollup.
    pub part: Part,
}

#[derive(Serialize, Deserialize)]
struct FrameBody {
    from: Option<SlicePosition>,
    to: SlicePosition,
    head: SliceHead,
    stores: Vec<(String, DeltaRecord)>,
}

/// A [`StoreView`], field by field.
#[derive(Serialize, Deserialize)]
struct ViewRecord {
    counters: DayCounters,
    per_minute: Vec<MinuteView>,
    recent_orders: Vec<OrderView>,
    lists: SkuLists,
}

/// [`ViewRecord`] borrowed from a view, to encode it without a copy (the same bytes:
/// postcard writes a reference as its value).
#[derive(Serialize)]
struct ViewRecordRef<'a> {
    counters: &'a DayCounters,
    per_minute: &'a Vec<MinuteView>,
    recent_orders: &'a Vec<OrderView>,
    lists: &'a SkuLists,
}

/// [`FrameBody`] with its head borrowed.
#[derive(Serialize)]
struct FrameBodyRef<'a> {
    from: Option<SlicePosition>,
    to: SlicePosition,
    head: &'a SliceHead,
    stores: Vec<(&'a str, DeltaRecord)>,
}

/// A [`StoreDelta`], field by field.
#[derive(Serialize, Deserialize)]
struct DeltaRecord {
    counters: DayCounters,
    per_minute: Option<Vec<MinuteView>>,
    recent_orders: Option<Vec<OrderView>>,
    recent_orders_complete: bool,
    low_stock: Option<Vec<LowStockView>>,
    oversold: Option<Vec<StockView>>,
    top_products: Option<Vec<TopProduct>>,
    alerts: Option<Vec<AlertView>>,
}

impl From<&StoreDelta> for DeltaRecord {
    fn from(delta: &StoreDelta) -> DeltaRecord {
        DeltaRecord {
            counters: delta.counters.clone(),
            per_minute: delta.per_minute.clone(),
            recent_orders: delta.recent_orders.clone(),
            recent_orders_complete: delta.recent_orders_complete,
            low_stock: delta.lists.low_stock.clone(),
            oversold: delta.lists.oversold.clone(),
            top_products: delta.lists.top_products.clone(),
            alerts: delta.lists.alerts.clone(),
        }
    }
}

impl From<DeltaRecord> for StoreDelta {
    fn from(record: DeltaRecord) -> StoreDelta {
        StoreDelta {
            counters: record.counters,
            per_minute: record.per_minute,
            recent_orders: record.recent_orders,
            recent_orders_complete: record.recent_orders_complete,
            lists: SkuListsDelta {
                low_stock: record.low_stock,
                oversold: record.oversold,
                top_products: record.top_products,
                alerts: record.alerts,
            },
        }
    }
}

/// Writes the format byte and `value` into `out`, replacing what it held and keeping its
/// capacity: a caller that encodes record after record into one buffer allocates (and
/// faults in) its pages once, not per record (a frame of a catch-up is hundreds of KB).
fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT);
    let buffer = std::mem::take(out);
    *out = postcard::to_extend(value, buffer)
        .unwrap_or_else(|e| panic!("a cluster record always encodes: {e}"));
}

fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

fn body(bytes: &[u8]) -> Result<&[u8], WireError> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => Ok(body),
        other => Err(WireError::Format(other.map(|(b, _)| *b))),
    }
}

impl SliceFrame {
    /// The frames-topic value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The frames-topic value, written into `out` (see [`encode_into`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let stores = self
            .stores
            .iter()
            .map(|(id, delta)| (id.as_str(), DeltaRecord::from(delta)))
            .collect();
        encode_into(
            &FrameBodyRef {
                from: self.from,
                to: self.to,
                head: &self.head,
                stores,
            },
            out,
        );
    }

    /// Reads a frames-topic value.
    pub fn decode(bytes: &[u8]) -> Result<SliceFrame, WireError> {
        let body: FrameBody =
            postcard::from_bytes(body(bytes)?).map_err(|e| WireError::Body(e.to_string()))?;
        let stores = body
            .stores
            .into_iter()
            .map(|(id, record)| (id, StoreDelta::from(record)))
            .collect();
        Ok(SliceFrame {
            slice: body.head.slice,
            from: body.from,
            to: body.to,
            head: body.head,
            stores,
        })
    }
}

impl SliceHead {
    /// The changelog value of the head.
    pub fn encode(&self) -> Vec<u8> {
        encoded(self)
    }

    /// The changelog value of the head, written into `out` (see [`encode_into`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_into(self, out);
    }

    /// Reads a head's changelog value.
    pub fn decode(bytes: &[u8]) -> Result<SliceHead, WireError> {
        postcard::from_bytes(body(bytes)?).map_err(|e| WireError::Body(e.to_string()))
    }
}

/// The changelog value of a store's view.
pub fn encode_view(view: &StoreView) -> Vec<u8> {
    let mut out = Vec::new();
    encode_view_into(view, &mut out);
    out
}

/// The changelog value of a store's view, written into `out` (see [`encode_into`]).
pub fn encode_view_into(view: &StoreView, out: &mut Vec<u8>) {
    encode_into(
        &ViewRecordRef {
            counters: &view.counters,
            per_minute: &view.per_minute,
            recent_orders: &view.recent_orders,
            lists: &view.lists,
        },
        out,
    );
}

/// Reads a store view's changelog value.
pub fn decode_view(bytes: &[u8]) -> Result<StoreView, WireError> {
    let record: ViewRecord =
        postcard::from_bytes(body(bytes)?).map_err(|e| WireError::Body(e.to_string()))?;
    Ok(StoreView {
        counters: record.counters,
        per_minute: record.per_minute,
        recent_orders: record.recent_orders,
        lists: record.lists,
    })
}
