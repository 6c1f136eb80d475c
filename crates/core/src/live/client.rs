//! A client's side of the stream, for the integration tests and the benchmarks: an SSE
//! parser that borrows from its buffer, and the merge rules a dashboard applies to deltas
//! (docs/api.md, "Deltas"). The page has its own copy in JavaScript
//! (`src/http/dashboard/merge.js`), which its tests import; both are checked against
//! `/api/snapshot` by the tests, so each checks the server independently.

use serde_json::Value;

/// One event, borrowed from the parser's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseRef<'a> {
    /// `event:` (`message` when absent).
    pub event: &'a str,
    /// `id:`, if any.
    pub id: Option<&'a str>,
    /// `data:` lines joined by `\n`'s absence: storepulse sends one data line per event.
    pub data: &'a [u8],
}

/// One event, owned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `id:`, if any.
    pub id: Option<String>,
    /// The data, as text.
    pub data: String,
}

impl SseRef<'_> {
    /// An owned copy.
    pub fn to_owned(self) -> SseEvent {
        SseEvent {
            event: self.event.to_owned(),
            id: self.id.map(str::to_owned),
            data: String::from_utf8_lossy(self.data).into_owned(),
        }
    }
}

/// Splits a byte stream into events. Comments, `retry:` and events without data are
/// skipped, as an EventSource does. Each byte is scanned once (a thousand bench clients
/// share the server's cores).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for an event's end.
    scanned: usize,
}

impl SseParser {
    /// An empty parser.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Adds `bytes` and calls `each` for every event completed by them, in order.
    pub fn push(&mut self, bytes: &[u8], mut each: impl FnMut(SseRef<'_>)) {
        self.buffer.extend_from_slice(bytes);
        let mut consumed = 0;
        // An event's end may straddle the previous push: look one byte back.
        let mut from = self.scanned.saturating_sub(1);
        while let Some(at) = memchr::memmem::find(&self.buffer[from..], b"\n\n") {
            let end = from + at;
            if let Some(event) = parse_block(&self.buffer[consumed..end]) {
                each(event);
            }
            consumed = end + 2;
            from = consumed;
        }
        self.buffer.drain(..consumed);
        self.scanned = self.buffer.len();
    }
}

fn parse_block(block: &[u8]) -> Option<SseRef<'_>> {
    let mut event = "message";
    let mut id = None;
    let mut data: Option<&[u8]> = None;
    for line in block.split(|b| *b == b'\n') {
        if let Some(value) = line.strip_prefix(b"event: ") {
            event = std::str::from_utf8(value).ok()?;
        } else if let Some(value) = line.strip_prefix(b"id: ") {
            id = Some(std::str::from_utf8(value).ok()?);
        } else if let Some(value) = line.strip_prefix(b"data: ") {
            data = Some(value);
        }
    }
    Some(SseRef {
        event,
        id,
        data: data?,
    })
}

/// What a dashboard holds: the newest snapshot with every delta after it applied.
#[derive(Clone, Debug, Default)]
pub struct ClientView {
    /// The view (`None` before the first snapshot).
    pub view: Option<Value>,
    /// The id of the newest event applied: what a reconnect sends as `Last-Event-ID`.
    pub last_id: Option<String>,
}

impl ClientView {
    /// Applies one event: `snapshot` and `resync` replace the view, `delta` merges into it
    /// (an error if no snapshot came first, or the data is not JSON); others are ignored.
    pub fn apply(&mut self, event: SseRef<'_>) -> Result<(), String> {
        let parse = || -> Result<Value, String> {
            serde_json::from_slice(event.data).map_err(|e| format!("{} data: {e}", event.event))
        };
        match event.event {
            "snapshot" | "resync" => self.view = Some(parse()?),
            "delta" => {
                let view = self
                    .view
                    .as_mut()
                    .ok_or_else(|| "a delta before any snapshot".to_owned())?;
                apply_delta(view, &parse()?);
            }
            _ => return Ok(()),
        }
        if let Some(id) = event.id {
            self.last_id = Some(id.to_owned());
        }
        Ok(())
    }
}

/// The merge rules: fields present replace; `per_minute` merges by minute and drops minutes
/// before `per_minute_from`; `recent_orders` upserts by event id, ranks newest first (ties
/// by event id) and keeps 20, or replaces the list when `recent_orders_complete` is true.
/// The same rules for each store's part and for the rollup's (`all_stores`).
pub fn apply_delta(view: &mut Value, delta: &Value) {
    if let Some(stores) = delta["stores"].as_object() {
        for (store, part) in stores {
            match view["stores"].get_mut(store) {
                Some(existing) => merge_scope(existing, part),
                None => {
                    let mut fresh = Value::Object(serde_json::Map::new());
                    merge_scope(&mut fresh, part);
                    view["stores"][store] = fresh;
                }
            }
        }
    }
    if let Some(all) = delta.get("all_stores") {
        merge_scope(&mut view["all_stores"], all);
    }
    for field in ["position", "as_of", "as_of_ms"] {
        view[field] = delta[field].clone();
    }
    if let Some(count) = delta.get("store_count") {
        view["store_count"] = count.clone();
    }
}

/// Newest first by `occurred_at`, ties by `event_id`; the first 20.
fn rank_orders(orders: &mut Vec<Value>) {
    let text = |v: &Value, f: &str| v[f].as_str().unwrap_or("").to_owned();
    orders.sort_by(|a, b| {
        text(b, "occurred_at")
            .cmp(&text(a, "occurred_at"))
            .then_with(|| text(a, "event_id").cmp(&text(b, "event_id")))
    });
    orders.truncate(crate::aggregate::RECENT_ORDERS);
}

/// Upserts `items` into the array `target[field]` by `same`.
fn upsert(target: &mut Value, field: &str, items: &Value, same: impl Fn(&Value, &Value) -> bool) {
    if !target[field].is_array() {
        target[field] = Value::Array(Vec::new());
    }
    let Some(list) = target[field].as_array_mut() else {
        return;
    };
    for item in items.as_array().into_iter().flatten() {
        match list.iter_mut().find(|held| same(held, item)) {
            Some(existing) => *existing = item.clone(),
            None => list.push(item.clone()),
        }
    }
}

fn merge_scope(target: &mut Value, part: &Value) {
    let text = |v: &Value, f: &str| v[f].as_str().unwrap_or("").to_owned();
    for (field, value) in part.as_object().into_iter().flatten() {
        match field.as_str() {
            "per_minute" => {
                upsert(target, field, value, |a, b| a["minute"] == b["minute"]);
                if let Some(minutes) = target[field].as_array_mut() {
                    minutes.sort_by_key(|m| text(m, "minute"));
                }
            }
            "recent_orders" => {
                if part["recent_orders_complete"] == true {
                    target[field] = Value::Array(Vec::new());
                }
                upsert(target, field, value, |a, b| a["event_id"] == b["event_id"]);
                if let Some(orders) = target[field].as_array_mut() {
                    rank_orders(orders);
                }
            }
            "recent_orders_complete" => {}
            _ => target[field] = value.clone(),
        }
    }
    // Minutes that left the window go (fields were applied in any order above).
    let from = text(target, "per_minute_from");
    if let Some(minutes) = target["per_minute"].as_array_mut() {
        minutes.retain(|m| {
            m["minute"]
                .as_str()
                .is_some_and(|minute| minute >= from.as_str())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_come_out_whole_and_comments_are_skipped() {
        let stream = b"retry: 1000\n\n: keep-alive\n\nevent: snapshot\nid: a:1\ndata: {\"x\":1}\n\nevent: progress\ndata: 2\n\n";
        for cut in 0..stream.len() {
            let mut parser = SseParser::new();
            let mut seen = Vec::new();
            parser.push(&stream[..cut], |e| seen.push(e.to_owned()));
            parser.push(&stream[cut..], |e| seen.push(e.to_owned()));
            let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
            assert_eq!(names, ["snapshot", "progress"], "cut at {cut}");
            assert_eq!(seen[0].id.as_deref(), Some("a:1"));
            assert_eq!(seen[0].data, "{\"x\":1}");
        }
    }

    #[test]
    fn a_delta_upserts_orders_into_the_store_and_the_rollup_by_their_own_parts() {
        let order = |id: &str, at: &str| serde_json::json!({"event_id": id, "occurred_at": at});
        let mut view = serde_json::json!({
            "position": "t:1",
            "stores": {"s": {"orders_today": 1, "per_minute_from": "10:00", "per_minute": [{"minute": "09:59"}, {"minute": "10:00"}],
                              "recent_orders": [order("e1", "10:00")]}},
            "all_stores": {"orders_today": 1, "recent_orders": [order("e1", "10:00")]}
        });
        let delta = serde_json::json!({
            "position": "t:2", "as_of": "x", "as_of_ms": 2,
            "stores": {"s": {"orders_today": 2, "per_minute_from": "10:01", "per_minute": [{"minute": "10:01"}],
                             "recent_orders": [order("e2", "10:01")]}},
            "all_stores": {"orders_today": 2, "recent_orders": [order("e2", "10:01")]}
        });
        apply_delta(&mut view, &delta);
        let store = &view["stores"]["s"];
        assert_eq!(store["orders_today"], 2);
        assert_eq!(
            store["per_minute"],
            serde_json::json!([{"minute": "10:01"}])
        );
        assert_eq!(store["recent_orders"][0]["event_id"], "e2");
        assert_eq!(view["all_stores"]["recent_orders"], store["recent_orders"]);
        assert_eq!(view["all_stores"]["orders_today"], 2);
        assert_eq!(view["position"], "t:2");
        // An all-stores event carries the rollup only; a view without stores takes it.
        let mut rollup = serde_json::json!({"position": "t:2", "all_stores": {"orders_today": 2}});
        apply_delta(
            &mut rollup,
            &serde_json::json!({
                "position": "t:3", "as_of": "y", "as_of_ms": 3,
                "all_stores": {"orders_today": 3, "recent_orders": [order("e3", "10:02")]}
            }),
        );
        assert!(rollup.get("stores").is_none());
        assert_eq!(rollup["all_stores"]["orders_today"], 3);
        assert_eq!(rollup["all_stores"]["recent_orders"][0]["event_id"], "e3");
    }
}
