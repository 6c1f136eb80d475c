// The operations dashboard (`/`) in real headless Chromium and Firefox ESR against `storepulse serve`
// on the real stack: it shows what /api/snapshot says, moves while the simulator runs,
// comes through a SIGKILL of serve without stepping back or repeating an alert, and a
// store's view shows only that store. Saves a screenshot mid flash sale.
//
// Run by scripts/test: STOREPULSE_BIN=target/debug/storepulse node --test tests/browser/
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  bin, environment, simulate, simulateInBackground, freePort, startServe, killServe, waitFor,
  total, crashNoise,
} from './support.mjs';
import { inEveryBrowser } from './browsers.mjs';

// Lists cut at 3 entries, so the page's "…and N more" and whole counts are exercised.
// (Topics of their own for each browser's run.)
const freshEnv = () => ({ ...environment('dashboard'), STOREPULSE_LIST_LIMIT: '3' });
let env;
const screenshotOf = (browser) => process.env.STOREPULSE_SCREENSHOT
  ?? path.join(import.meta.dirname, 'output', `dashboard-${browser}.png`);
// History over the last hour of event time, then a flash sale from two minutes ago on.
const catalog = ['--stores', '3', '--skus', '16', '--flash-skus', '4', '--oversell'];
const history = [...catalog, '--start', new Date(Date.now() - 3_600_000).toISOString(),
  '--flash-sale-at', '50m', '--flash-sale-for', '2m'];
const scenario = [...catalog, '--start', new Date(Date.now() - 120_000).toISOString(),
  '--flash-sale-at', '1s', '--flash-sale-for', '10m'];


/// The page's applied view equals the server's snapshot.
async function assertPageEqualsSnapshot(page, base, store) {
  const snapshot = await (await fetch(`${base}/api/snapshot${store ? `?store=${store}` : ''}`)).json();
  await waitFor('the page to reach the snapshot', async () =>
    total(await page.evaluate(() => window.storepulse.view()?.position)) >= total(snapshot.position));
  const view = await page.evaluate(() => window.storepulse.view());
  assert.equal(view.position, snapshot.position);
  for (const id of Object.keys(snapshot.stores ?? {})) {
    assert.deepEqual(view.stores[id], snapshot.stores[id], id);
  }
  if (!store) {
    // All stores: the rollup, and how many stores it sums; no store's view.
    assert.equal(view.stores, undefined, 'the all-stores view holds no store');
    assert.equal(view.store_count, snapshot.store_count);
    assert.deepEqual(view.all_stores, snapshot.all_stores);
  }
  const expected = store ? snapshot.stores[store] : snapshot.all_stores;
  // What the cards show is what the snapshot says.
  await waitFor('the cards to render', async () =>
    JSON.parse(await page.getAttribute('#orders-today', 'data-value')) === expected.orders_today);
  assert.deepEqual(JSON.parse(await page.getAttribute('#revenue-today', 'data-value')), expected.revenue_today);
  assert.deepEqual(JSON.parse(await page.getAttribute('#aov', 'data-value')), expected.average_order_value);
  assert.deepEqual(JSON.parse(await page.getAttribute('#active-users', 'data-value')), expected.active_users);
  assert.equal(JSON.parse(await page.getAttribute('#cancelled-today', 'data-value')), expected.cancelled_today);
  const shownAlerts = await page.evaluate(() => window.storepulse.alertsShown());
  assert.deepEqual([...shownAlerts].sort(), expected.alerts.map((a) => a.id).sort(), 'the active alerts, each once');
  // The counts are the whole lists' (the lists themselves hold the first 3).
  const kinds = ['oversold', 'sold_out', 'sell_out_imminent', 'low_stock'];
  const counts = await page.evaluate((kinds) => kinds.map((kind) =>
    Number(document.getElementById(`count-${kind}`).textContent.replace(/\D/g, ''))), kinds);
  assert.deepEqual(counts, kinds.map((kind) => expected.counts.alerts[kind]), 'the alert counts are the whole lists');
  assert.ok(expected.alerts.length <= 3 && expected.low_stock.length <= 3 && expected.oversold.length <= 3);
  const whole = expected.counts.oversold + expected.counts.low_stock;
  const listed = expected.oversold.length + expected.low_stock.length;
  const more = await page.evaluate(() => {
    const note = document.getElementById('low-stock-empty');
    return note.hidden ? null : note.textContent;
  });
  if (whole > listed) assert.equal(more, `…and ${whole - listed} more (GET /api/stock lists every level).`);
  else if (listed > 0) assert.equal(more, null, 'no note when every entry is listed');
  return expected;
}

inEveryBrowser('the dashboard shows the snapshot, moves live, survives a crash and scopes to a store', async (launch, browserName) => {
  env = freshEnv();
  assert.ok(bin, 'STOREPULSE_BIN names the storepulse binary');
  // An hour of history first (3 records a second of event time), so the charts have a shape.
  simulate(env, ['--count', '9000', '--rate', '0', '--event-rate', '3', '--seed', '21', ...history]);
  const port = await freePort();
  let serve = startServe(env, port);
  const base = `http://127.0.0.1:${port}`;
  await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);

  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
    const consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));

    // 1. It loads, says Live, and shows exactly the snapshot.
    await page.goto(`${base}/`);
    await waitFor('Live', async () => (await page.textContent('#connection')) === 'Live');
    await assertPageEqualsSnapshot(page, base, null);
    assert.deepEqual(consoleErrors, [], 'no console error on load');

    // 2. While the simulator runs, cards and the chart change; the page records every value
    // the orders card shows and every alert list it renders, to check afterwards.
    await page.evaluate(() => {
      window.__orders = [];
      window.__alertRenders = [];
      new MutationObserver(() => {
        window.__orders.push(JSON.parse(document.getElementById('orders-today').dataset.value));
      }).observe(document.getElementById('orders-today'), { attributes: true });
      new MutationObserver(() => {
        window.__alertRenders.push(window.storepulse.alertsShown());
      }).observe(document.getElementById('alerts'), { childList: true });
    });
    const chartBefore = await page.getAttribute('#orders-chart', 'data-points');
    const running = simulateInBackground(env, ['--count', '4000', '--rate', '800', '--seed', '22', ...scenario]);
    await waitFor('the cards to move', async () => new Set(await page.evaluate(() => window.__orders)).size >= 3);
    await running;
    const expected = await assertPageEqualsSnapshot(page, base, null);
    assert.notEqual(await page.getAttribute('#orders-chart', 'data-points'), chartBefore, 'the chart moved');
    assert.ok(expected.alerts.length > 0, 'the flash sale raised alerts');
    assert.ok((await page.$$('#low-stock tbody tr.oversold')).length > 0, 'oversold SKUs are listed');
    assert.equal(await page.$eval('#low-stock tbody tr', (tr) => tr.className), 'oversold', 'oversold rows come first');
    // Ten minutes of flash sale in event time, eight seconds of it produced: mid sale.
    const screenshot = screenshotOf(browserName);
    fs.mkdirSync(path.dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });

    // 3. SIGKILL serve: the page says Reconnecting…, then resumes from the restarted process;
    // numbers never step back and no alert is ever listed twice.
    await killServe(serve);
    await waitFor('Reconnecting…', async () => (await page.textContent('#connection')) === 'Reconnecting…');
    serve = startServe(env, port);
    simulate(env, ['--count', '1500', '--rate', '0', '--seed', '23', ...scenario]);
    await waitFor('Live again', async () => (await page.textContent('#connection')) === 'Live');
    await assertPageEqualsSnapshot(page, base, null);
    const orders = await page.evaluate(() => window.__orders);
    for (let i = 1; i < orders.length; i += 1) {
      assert.ok(orders[i] >= orders[i - 1], `orders today stepped back: ${orders[i - 1]} -> ${orders[i]}`);
    }
    for (const shown of await page.evaluate(() => window.__alertRenders)) {
      assert.equal(new Set(shown).size, shown.length, `an alert listed twice: ${shown}`);
    }

    // 4. One store: only its orders; the choice survives a reload.
    const ids = (await (await fetch(`${base}/api/stores`)).json()).items;
    await waitFor('the selector to offer the rollup and every store of /api/stores', async () =>
      JSON.stringify(await page.$$eval('#store option', (o) => o.map((x) => x.value))) === JSON.stringify(['', ...ids]));
    const store = ids[1];
    await page.selectOption('#store', store);
    await waitFor('the store view', async () => (await page.evaluate(() => window.storepulse.view()?.all_stores)) === undefined);
    await assertPageEqualsSnapshot(page, base, store);
    const storesShown = await page.$$eval('#recent-orders li', (items) => items.map((li) => li.dataset.store));
    assert.ok(storesShown.length > 0);
    assert.deepEqual([...new Set(storesShown)], [store], 'a store view shows only its orders');
    await page.reload();
    assert.equal(await page.$eval('#store', (s) => s.value), store, 'the store is remembered');
    await assertPageEqualsSnapshot(page, base, store);

    assert.deepEqual(consoleErrors.filter((t) => !crashNoise.some((e) => t.includes(e))), []);
  } finally {
    await browser.close();
    await killServe(serve);
  }
});
