// The page's merge module (src/http/dashboard/merge.js, served as /merge.js) in Node: each
// rule of docs/api.md "Deltas" on a small view. The browser tests run the same module in
// Chromium against a real server and compare whole views with /api/snapshot.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyDelta, positionAfter, RECENT_ORDERS } from '../../src/http/dashboard/merge.js';

const order = (id, at) => ({ event_id: id, occurred_at: at });
const view = () => ({
  position: 't:1',
  stores: {
    s: {
      orders_today: 1,
      per_minute_from: '10:00',
      per_minute: [{ minute: '09:59', orders: 1 }, { minute: '10:00', orders: 1 }],
      recent_orders: [order('e1', '10:00')],
      low_stock: [{ sku: 'a' }],
    },
  },
  all_stores: { orders_today: 1, recent_orders: [order('e1', '10:00')] },
});

test('fields replace, minutes merge, old minutes go, orders upsert newest first', () => {
  const v = applyDelta(view(), {
    position: 't:2', as_of: 'x', as_of_ms: 2,
    stores: {
      s: {
        orders_today: 2, per_minute_from: '10:01', per_minute: [{ minute: '10:01', orders: 3 }],
        recent_orders: [order('e2', '10:01'), order('e1', '10:00')],
      },
    },
    all_stores: { orders_today: 2, recent_orders: [order('e2', '10:01')] },
  });
  const s = v.stores.s;
  assert.equal(s.orders_today, 2);
  assert.deepEqual(s.per_minute, [{ minute: '10:01', orders: 3 }]);
  assert.deepEqual(s.recent_orders.map((o) => o.event_id), ['e2', 'e1']);
  assert.deepEqual(s.low_stock, [{ sku: 'a' }], 'a list absent from the delta is kept');
  assert.deepEqual(v.all_stores.recent_orders, s.recent_orders);
  assert.equal(v.all_stores.orders_today, 2);
  assert.equal(v.position, 't:2');
});

test('orders rank by time then event id and keep the newest twenty; a delta twice is harmless', () => {
  const many = Array.from({ length: 30 }, (_, i) => order(`e${String(i).padStart(2, '0')}`, i < 10 ? '10:05' : '10:02'));
  const delta = { position: 't:3', stores: { s: { recent_orders: many } } };
  const once = applyDelta(view(), delta);
  const twice = applyDelta(applyDelta(view(), delta), delta);
  assert.equal(once.stores.s.recent_orders.length, RECENT_ORDERS);
  assert.deepEqual(once.stores.s.recent_orders.slice(0, 3).map((o) => o.event_id), ['e00', 'e01', 'e02']);
  assert.deepEqual(twice, once);
});

test('a complete recent_orders replaces the list, in a store and in the rollup alike', () => {
  const v = view();
  v.all_stores.recent_orders = [order('e1', '10:00'), order('p1', '09:00')];
  // e1's day is no longer held: the store's whole list comes, marked complete.
  applyDelta(v, { position: 't:5', stores: { s: { recent_orders: [order('e3', '11:00')], recent_orders_complete: true } } });
  assert.deepEqual(v.stores.s.recent_orders.map((o) => o.event_id), ['e3']);
  assert.equal(v.stores.s.recent_orders_complete, undefined, 'a flag, not a field of the view');
  assert.deepEqual(v.all_stores.recent_orders.map((o) => o.event_id), ['e1', 'p1'], 'the rollup moves by its own part only');
  // An all-stores event: the rollup's part, its list whole and complete.
  applyDelta(v, { position: 't:6', store_count: 2, all_stores: { recent_orders: [order('e3', '11:00'), order('p1', '09:00')], recent_orders_complete: true } });
  assert.deepEqual(v.all_stores.recent_orders.map((o) => o.event_id), ['e3', 'p1']);
  assert.equal(v.store_count, 2);
});

test('an all-stores view holds no stores, and takes rollup parts only', () => {
  const v = { position: 't:1', store_count: 1, all_stores: { orders_today: 1, recent_orders: [order('e1', '10:00')] } };
  applyDelta(v, { position: 't:2', all_stores: { orders_today: 2, recent_orders: [order('e2', '10:01')] } });
  assert.equal(v.stores, undefined);
  assert.equal(v.all_stores.orders_today, 2);
  assert.deepEqual(v.all_stores.recent_orders.map((o) => o.event_id), ['e2', 'e1']);
  assert.equal(v.store_count, 1, 'kept until a delta says otherwise');
});

test('a store first seen in a delta is added whole', () => {
  const v = applyDelta(view(), { position: 't:4', stores: { n: { orders_today: 7, recent_orders: [] } } });
  assert.equal(v.stores.n.orders_today, 7);
});

test('a position is after another only if no partition is behind and one is ahead', () => {
  assert.equal(positionAfter('t:1,5', 't:1,4'), true);
  assert.equal(positionAfter('t:1,4', 't:1,4'), false, 'the same position is old news');
  assert.equal(positionAfter('t:0,9', 't:1,4'), false, 'a partition behind: relayed twice, or stale');
  assert.equal(positionAfter('t:1,4', null), true, 'anything is after nothing');
  assert.equal(positionAfter(null, 't:1,4'), false);
  assert.equal(positionAfter('u:0,0', 't:1,4'), true, 'another layout (a resync) is not compared');
});
