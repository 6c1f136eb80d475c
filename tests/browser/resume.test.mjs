// A real browser's EventSource against `storepulse serve`, through a SIGKILL and restart:
// the browser reconnects by itself with Last-Event-ID, its view never steps back, and it
// ends equal to /api/snapshot. Debian's Chromium, driven by playwright-core.
//
// Run by scripts/test after the Rust tests (it needs the stack up and the binary built):
//   STOREPULSE_BIN=target/debug/storepulse node --test tests/browser/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  bin, environment, simulate as run, freePort, startServe, killServe, waitFor, total, launch, crashNoise,
} from './support.mjs';

const env = environment('browser');
const simulate = (count, seed, start) => run(env, ['--count', String(count), '--rate', '0',
  '--seed', String(seed), '--start', start, '--stores', '2', '--skus', '10']);

test('a browser EventSource resumes through a serve crash without stepping back', async () => {
  assert.ok(bin, 'STOREPULSE_BIN names the storepulse binary');
  simulate(1500, 1, '2026-11-27T14:00:00Z');
  const port = await freePort();
  let serve = startServe(env, port);
  const base = `http://127.0.0.1:${port}`;
  await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);

  const browser = await launch();
  try {
    const page = await browser.newPage();
    const consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    await page.goto(`${base}/healthz`);
    await page.evaluate(() => {
      window.__events = [];
      window.__errors = 0;
      window.__view = null;
      const merge = (target, part) => {
        for (const [field, value] of Object.entries(part)) {
          if (field === 'stock') {
            for (const item of value) {
              const i = target.stock.findIndex((s) => s.store_id === item.store_id && s.sku === item.sku);
              if (i >= 0) target.stock[i] = item; else target.stock.push(item);
            }
          } else if (field === 'per_minute') {
            for (const item of value) {
              const i = target.per_minute.findIndex((m) => m.minute === item.minute);
              if (i >= 0) target.per_minute[i] = item; else target.per_minute.push(item);
            }
            target.per_minute.sort((a, b) => a.minute.localeCompare(b.minute));
          } else if (field === 'recent_orders') {
            for (const item of value) {
              const i = target.recent_orders.findIndex((o) => o.event_id === item.event_id);
              if (i >= 0) target.recent_orders[i] = item; else target.recent_orders.push(item);
            }
            target.recent_orders.sort((a, b) => (a.occurred_at === b.occurred_at
              ? (a.event_id < b.event_id ? -1 : 1) : (a.occurred_at < b.occurred_at ? 1 : -1)));
            target.recent_orders.length = Math.min(target.recent_orders.length, 20);
          } else {
            target[field] = value;
          }
        }
        target.per_minute = target.per_minute.filter((m) => m.minute >= target.per_minute_from);
      };
      const source = new EventSource('/api/stream');
      const take = (kind) => (e) => {
        const data = JSON.parse(e.data);
        window.__events.push({ kind, id: e.lastEventId });
        if (kind === 'delta') {
          for (const [store, part] of Object.entries(data.stores)) {
            if (window.__view.stores[store]) merge(window.__view.stores[store], part);
            else window.__view.stores[store] = part;
            const derived = {};
            if (part.stock) derived.stock = part.stock;
            if (part.recent_orders) derived.recent_orders = part.recent_orders;
            merge(window.__view.all_stores, derived);
          }
          merge(window.__view.all_stores, data.all_stores);
          window.__view.position = data.position;
        } else {
          window.__view = data;
        }
      };
      for (const kind of ['snapshot', 'delta', 'resync']) source.addEventListener(kind, take(kind));
      source.onerror = () => { window.__errors += 1; };
    });
    const lastTotal = async () => total(await page.evaluate(() => window.__events.at(-1)?.id));
    await waitFor('the first snapshot', async () => (await lastTotal()) >= 1500);
    simulate(1000, 2, '2026-11-27T14:05:00Z');
    await waitFor('live deltas', async () => (await lastTotal()) >= 2500);

    await killServe(serve);
    await waitFor('the browser to notice', async () => (await page.evaluate(() => window.__errors)) > 0);
    serve = startServe(env, port);
    simulate(1000, 3, '2026-11-27T14:10:00Z');
    await waitFor('the resumed stream to catch up', async () => (await lastTotal()) >= 3500);

    const events = await page.evaluate(() => window.__events);
    const totals = events.map((e) => total(e.id));
    for (let i = 1; i < totals.length; i += 1) {
      assert.ok(totals[i] >= totals[i - 1], `event ${i} steps back: ${totals[i - 1]} -> ${totals[i]}`);
    }
    assert.ok(!events.some((e) => e.kind === 'resync'), 'the browser sent an id this server understood');
    const view = await page.evaluate(() => window.__view);
    const snapshot = await (await fetch(`${base}/api/snapshot`)).json();
    assert.equal(total(view.position), total(snapshot.position));
    assert.equal(view.all_stores.orders_today, snapshot.all_stores.orders_today);
    assert.deepEqual(view.all_stores.revenue_today, snapshot.all_stores.revenue_today);
    for (const store of Object.keys(snapshot.stores)) {
      assert.equal(view.stores[store].orders_today, snapshot.stores[store].orders_today, store);
    }
    // The stream cut by the SIGKILL, and reconnects refused while serve was down, are the
    // crash this test causes; anything else logged as an error is a defect.
    assert.deepEqual(consoleErrors.filter((t) => !crashNoise.some((e) => t.includes(e))), []);
  } finally {
    await browser.close();
    await killServe(serve);
  }
});
