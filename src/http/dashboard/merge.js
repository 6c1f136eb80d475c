// The stream contract on the client (docs/api.md, "Deltas"): how a delta merges into the
// view a dashboard holds. One module, imported by the page (dashboard.js) and by the
// browser tests, so the tests check the page's own code. No DOM: it runs in Node too.
//
// Rules: fields present replace; `per_minute` merges by minute and drops minutes before
// `per_minute_from`; `recent_orders` upserts by event id, ranks newest first (ties by event
// id) and keeps 20, or replaces the list when the part says `recent_orders_complete: true`
// (orders left it: their day is no longer held). The same rules for a store's part and the
// rollup's (an all-stores event carries the rollup only). Applying a delta twice is
// harmless.

export const RECENT_ORDERS = 20; // the length of a view's recent_orders

const byRank = (a, b) => (a.occurred_at === b.occurred_at
  ? (a.event_id < b.event_id ? -1 : a.event_id > b.event_id ? 1 : 0)
  : (a.occurred_at < b.occurred_at ? 1 : -1));

// Upserts `items` into a copy of `list` (a new array: widgets see that it changed).
function upsert(list, items, same) {
  const out = [...(list ?? [])];
  for (const item of items) {
    const i = out.findIndex((held) => same(held, item));
    if (i >= 0) out[i] = item; else out.push(item);
  }
  return out;
}

// Merges one scope's part of a delta (a store's, or the rollup's) into its view.
export function mergeScope(target, part) {
  for (const [field, value] of Object.entries(part)) {
    if (field === 'per_minute') {
      target.per_minute = upsert(target.per_minute, value, (a, b) => a.minute === b.minute)
        .sort((a, b) => a.minute.localeCompare(b.minute));
    } else if (field === 'recent_orders') {
      const held = part.recent_orders_complete === true ? [] : target.recent_orders;
      target.recent_orders = upsert(held, value, (a, b) => a.event_id === b.event_id)
        .sort(byRank).slice(0, RECENT_ORDERS);
    } else if (field === 'recent_orders_complete') {
      // a flag of recent_orders, not a field of the view
    } else {
      target[field] = value;
    }
  }
  if (target.per_minute) {
    target.per_minute = target.per_minute.filter((m) => m.minute >= target.per_minute_from);
  }
}

// Applies a delta to a whole view (a snapshot's shape), in place; returns the view.
export function applyDelta(view, delta) {
  for (const [store, part] of Object.entries(delta.stores ?? {})) {
    view.stores ??= {};
    if (!view.stores[store]) view.stores[store] = {};
    mergeScope(view.stores[store], part);
  }
  if (delta.all_stores && view.all_stores) mergeScope(view.all_stores, delta.all_stores);
  view.position = delta.position;
  view.as_of = delta.as_of;
  view.as_of_ms = delta.as_of_ms;
  if (delta.store_count !== undefined) view.store_count = delta.store_count;
  return view;
}

// Whether position `a` is after `b` (both `<tag>:<offset>,<offset>,…`, docs/api.md): the same
// layout, no partition behind, and not equal. A delta always moves the position forward, so
// one that is not after the view's position is old news (e.g. relayed twice between tabs).
export function positionAfter(a, b) {
  if (!b) return true;
  if (!a) return false;
  const [tagA, offsetsA] = a.split(':');
  const [tagB, offsetsB] = b.split(':');
  if (tagA !== tagB || offsetsA === undefined || offsetsB === undefined) return true;
  const x = offsetsA.split(',').map(Number);
  const y = offsetsB.split(',').map(Number);
  if (x.length !== y.length) return true;
  return x.every((n, i) => n >= y[i]) && x.some((n, i) => n > y[i]);
}
