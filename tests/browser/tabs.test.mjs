// Eight dashboard tabs of one origin in real headless Chromium and Firefox ESR, mid flash sale with
// --oversell: they share one stream (a leader tab holds the EventSource and relays it), all
// show the same exact view, and when the leader closes another takes over and resumes by
// id without a gap. The first screen at laptop (1440×900) and phone (390×844) size shows
// what is oversold or sold out, with no horizontal overflow, every element inside its panel
// (nothing cut or scrolling sideways, no text drawn stretched) and no text spilling out of
// its card; both are saved as screenshots.
//
// Run by scripts/test: STOREPULSE_BIN=target/debug/storepulse node --test tests/browser/
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  bin, environment, simulate, simulateInBackground, freePort, startServe, killServe, waitFor,
  total,
} from './support.mjs';
import { inEveryBrowser, countEventSources } from './browsers.mjs';

// Topics of their own for each browser's run.
let env;
const output = path.join(import.meta.dirname, 'output');
const stores = ['--stores', '3', '--skus', '16'];
const catalog = [...stores, '--flash-skus', '4', '--oversell'];

async function subscribers(base) {
  const metrics = await (await fetch(`${base}/metrics`)).text();
  return Number(metrics.match(/^storepulse_subscribers (\d+)$/m)[1]);
}

/// Every page's applied view equals /api/snapshot.
async function assertAllExact(pages, base) {
  const snapshot = await (await fetch(`${base}/api/snapshot`)).json();
  for (const [i, page] of pages.entries()) {
    await waitFor(`tab ${i} to reach the snapshot`, async () =>
      total(await page.evaluate(() => window.storepulse.view()?.position)) >= total(snapshot.position));
    const view = await page.evaluate(() => window.storepulse.view());
    assert.equal(view.position, snapshot.position, `tab ${i}`);
    assert.deepEqual(view, snapshot, `tab ${i} is exact`);
  }
}

/// What the first screen of `page` shows: the first urgent alert is on it, nothing is
/// wider than the screen, no card's text spills out.
async function assertFirstScreen(page, name) {
  // (name: the browser and the screen, e.g. firefox-laptop)
  await waitFor(`${name}: alerts rendered`, async () =>
    (await page.$$('#alerts [data-kind="oversold"], #alerts [data-kind="sold_out"]')).length > 0);
  const layout = await page.evaluate(() => {
    const urgent = document.querySelector('#alerts [data-kind="oversold"], #alerts [data-kind="sold_out"]');
    const box = (el) => el.getBoundingClientRect();
    const name = (el) => `${el.tagName}#${el.id}.${el.getAttribute('class') ?? ''}`;
    const spilling = [...document.querySelectorAll('.card, .card *, header *, .counts li, .panel h2')]
      // An inline box has no client width (0 by definition; Firefox still gives it a scroll
      // width): its text is its block's, which is checked.
      .filter((el) => getComputedStyle(el).display !== 'inline')
      .filter((el) => el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX === 'visible')
      .map((el) => `${name(el)}: ${el.scrollWidth} > ${el.clientWidth}`);
    // Every element inside its panel's box (a table wider than its panel hides its last
    // columns, even behind a scroll box), nothing in a panel scrolling sideways, and no
    // text drawn stretched (an SVG scaled to the chart's shape squashes its text).
    const outside = [];
    for (const panel of document.querySelectorAll('.panel, .card')) {
      const p = box(panel);
      for (const el of panel.querySelectorAll('*')) {
        const r = box(el);
        if (r.width === 0 && r.height === 0) continue;
        if (r.left < p.left - 1 || r.right > p.right + 1) outside.push(`${name(el)}: ${Math.round(r.left)}..${Math.round(r.right)} outside ${Math.round(p.left)}..${Math.round(p.right)}`);
      }
    }
    // (A name cut with an ellipsis on purpose says so: not counted.)
    const sideways = [...document.querySelectorAll('.panel, .panel *')]
      .filter((el) => el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'visible'
        && getComputedStyle(el).textOverflow !== 'ellipsis')
      .map((el) => `${name(el)}: ${el.scrollWidth} > ${el.clientWidth}`);
    const stretched = [...document.querySelectorAll('svg text')]
      .filter((t) => {
        const drawn = t.getBoundingClientRect();
        const own = t.getBBox();
        if (own.width === 0 || own.height === 0) return false;
        const ratio = (drawn.width / own.width) / (drawn.height / own.height);
        return Math.abs(ratio - 1) > 0.1;
      })
      .map((t) => `svg text "${t.textContent}"`);
    return {
      height: window.innerHeight,
      width: document.documentElement.clientWidth,
      scrollWidth: document.documentElement.scrollWidth,
      urgentBottom: box(urgent).bottom,
      countsBottom: box(document.getElementById('alert-counts')).bottom,
      actionTop: box(document.getElementById('action')).top,
      cardsTop: box(document.querySelector('.cards')).top,
      spilling,
      outside,
      sideways,
      stretched,
    };
  });
  assert.ok(layout.urgentBottom <= layout.height, `${name}: an oversold/sold-out alert is above the fold (${layout.urgentBottom} > ${layout.height})`);
  assert.ok(layout.countsBottom <= layout.height, `${name}: the counts are above the fold`);
  assert.ok(layout.actionTop < layout.cardsTop, `${name}: what needs action comes before the cards`);
  assert.ok(layout.scrollWidth <= layout.width, `${name}: no horizontal overflow (${layout.scrollWidth} > ${layout.width})`);
  assert.deepEqual(layout.spilling, [], `${name}: no text overflows its box`);
  assert.deepEqual(layout.outside, [], `${name}: every element inside its panel`);
  assert.deepEqual(layout.sideways, [], `${name}: nothing in a panel scrolls sideways`);
  assert.deepEqual(layout.stretched, [], `${name}: no text drawn stretched`);
  const urgent = await page.evaluate(() => ['oversold', 'sold_out']
    .map((kind) => Number(document.getElementById(`count-${kind}`).textContent.replace(/\D/g, '')))
    .reduce((a, b) => a + b, 0));
  assert.ok(urgent > 0, `${name}: the oversold and sold-out counts show them`);
  fs.mkdirSync(output, { recursive: true });
  await page.screenshot({ path: path.join(output, `${name}.png`) });
}

inEveryBrowser('eight tabs share one stream, stay exact when the leader closes, and the first screen shows what is oversold', async (launch, browserName) => {
  env = environment('tabs');
  assert.ok(bin, 'STOREPULSE_BIN names the storepulse binary');
  simulate(env, ['--count', '3000', '--rate', '0', '--event-rate', '5', '--seed', '31', ...stores,
    '--start', new Date(Date.now() - 900_000).toISOString(), '--flash-skus', '0']);
  const port = await freePort();
  const serve = startServe(env, port);
  const base = `http://127.0.0.1:${port}`;
  await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);
  const browser = await launch();
  try {
    // One context: the tabs of one browser profile, which share locks and channels.
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const pages = [];
    for (let i = 0; i < 8; i += 1) {
      const page = await context.newPage();
      await page.goto(`${base}/`);
      pages.push(page);
    }
    for (const [i, page] of pages.entries()) {
      await waitFor(`tab ${i} Live`, async () => (await page.textContent('#connection')) === 'Live');
    }
    const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.storepulse.role())));
    assert.equal(roles.filter((r) => r === 'leader').length, 1, `one leader: ${roles}`);
    await waitFor('one stream on the server', async () => (await subscribers(base)) === 1);
    await assertAllExact(pages, base);

    // A flash sale; mid-sale the leader closes and another tab takes over.
    const sale = simulateInBackground(env, ['--count', '6000', '--rate', '600', '--seed', '32', ...catalog,
      '--start', new Date().toISOString(), '--flash-sale-at', '1s', '--flash-sale-for', '10m']);
    await waitFor('the sale to reach the tabs', async () => (await pages[7].evaluate(() => window.storepulse.frames())) > 20);
    assert.equal(await subscribers(base), 1, 'still one stream mid-sale');
    const leader = pages[roles.indexOf('leader')];
    await leader.close();
    const rest = pages.filter((p) => p !== leader);
    await waitFor('another tab to lead', async () =>
      (await Promise.all(rest.map((p) => p.evaluate(() => window.storepulse.role())))).includes('leader'));
    await waitFor('the new leader streaming', async () => (await subscribers(base)) === 1);
    // Mid-sale, with oversold SKUs: the first screen at laptop and phone size.
    await waitFor('oversold SKUs', async () =>
      (await rest[0].evaluate(() => window.storepulse.selected()?.oversold.length ?? 0)) > 0);
    await assertFirstScreen(rest[0], `${browserName}-laptop`);
    const phone = await (await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 })).newPage();
    await phone.goto(`${base}/`);
    await waitFor('phone Live', async () => (await phone.textContent('#connection')) === 'Live');
    await assertFirstScreen(phone, `${browserName}-phone`);
    await phone.close();
    await sale;
    await assertAllExact(rest, base);
    const streamsLeft = await subscribers(base);
    assert.equal(streamsLeft, 1, 'seven tabs, one stream');
  } finally {
    await browser.close();
    await killServe(serve);
  }
});

inEveryBrowser('at the subscriber cap the page waits as Retry-After says, shows why, and connects when a slot frees', async (launch) => {
  const capped = environment('capped');
  simulate(capped, ['--count', '500', '--rate', '0', '--seed', '41', ...stores]);
  const port = await freePort();
  const serve = startServe({ ...capped, STOREPULSE_MAX_SUBSCRIBERS: '1', STOREPULSE_HEARTBEAT: '1s' }, port);
  const base = `http://127.0.0.1:${port}`;
  await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);
  // Another client holds the only slot.
  const holder = new AbortController();
  const held = await fetch(`${base}/api/stream`, { signal: holder.signal });
  assert.equal(held.status, 200);
  await waitFor('the slot taken', async () => (await subscribers(base)) === 1);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await countEventSources(page);
    await page.goto(`${base}/?stale_after_ms=4000`);
    await waitFor('the reason shown', async () => (await page.textContent('#stale')).includes('503'));
    assert.match(await page.textContent('#stale'), /retrying in \d+ s/);
    assert.equal(await page.textContent('#low-stock-empty'), 'Waiting for data…', 'no "Nothing is low" without data');
    await new Promise((r) => setTimeout(r, 9_000));
    // Retry-After is 5 s (less 20 % jitter at most): at most three attempts in ~9 s, where
    // an EventSource left to itself retries every second.
    const attempts = await page.evaluate(() => window.__eventSources);
    assert.ok(attempts <= 3, `${attempts} attempts in 9 s`);
    holder.abort();
    await waitFor('Live once a slot is free', async () => (await page.textContent('#connection')) === 'Live', 40_000);
    await waitFor('the banner gone once connected', async () => page.isHidden('#stale'), 3_000);
    // The heartbeat says who watches this scope: this page's stream only (the holder left).
    await waitFor('"1 watching" shown', async () => (await page.textContent('#freshness')).includes('1 watching'), 5_000).catch(async (e) => { throw new Error(`${e.message}: ${await page.textContent('#freshness')}`); });
    // Nothing is produced any more: heartbeats (every second here) keep coming, but they
    // are not data, so the page turns stale after 4 s without a delta.
    await waitFor('stale without new events', async () => (await page.textContent('#stale')).includes('no new events'), 20_000);
    assert.equal(await page.evaluate(() => document.body.classList.contains('stale')), true, 'projections on hold');
    assert.equal(await page.textContent('#connection'), 'Live', 'the connection itself is fine');
  } finally {
    holder.abort();
    await browser.close();
    await killServe(serve);
  }
});
