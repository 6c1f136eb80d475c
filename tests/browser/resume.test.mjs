// A real browser's EventSource against `storepulse serve` (gzip, as browsers ask for it),
// through a SIGKILL and restart:
// the browser reconnects by itself with Last-Event-ID, its view never steps back, and it
// ends equal to /api/snapshot. In Chromium and Firefox ESR (browsers.mjs).
//
// Run by scripts/test after the Rust tests (it needs the stack up and the binary built):
//   STOREPULSE_BIN=target/debug/storepulse node --test tests/browser/
import assert from 'node:assert/strict';
import {
  bin, environment, simulate as run, freePort, startServe, killServe, waitFor, total, crashNoise,
} from './support.mjs';
import { inEveryBrowser } from './browsers.mjs';

// Topics of their own for each browser's run.
let env;
const simulate = (count, seed, start) => run(env, ['--count', String(count), '--rate', '0',
  '--seed', String(seed), '--start', start, '--stores', '2', '--skus', '10']);

inEveryBrowser('a browser EventSource resumes through a serve crash without stepping back', async (launch) => {
  env = environment('browser');
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
    // Browsers ask for gzip: every stream comes compressed (shared deflated frames), and
    // the EventSource decodes it as it arrives (the live deltas below come before any end).
    const streamEncodings = [];
    page.on('response', (r) => {
      if (r.url().includes('/api/stream')) streamEncodings.push(r.headers()['content-encoding']);
    });
    await page.goto(`${base}/healthz`);
    await page.evaluate(async () => {
      window.__events = [];
      window.__errors = 0;
      window.__view = null;
      // The page's own merge module, as the dashboard imports it.
      const { applyDelta } = await import('/merge.js');
      const source = new EventSource('/api/stream');
      const take = (kind) => (e) => {
        const data = JSON.parse(e.data);
        window.__events.push({ kind, id: e.lastEventId });
        if (kind === 'delta') applyDelta(window.__view, data); else window.__view = data;
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

    assert.ok(streamEncodings.length >= 2, `the stream and its resume: ${streamEncodings}`);
    assert.deepEqual(new Set(streamEncodings), new Set(['gzip']), 'compressed streams');
    const events = await page.evaluate(() => window.__events);
    const totals = events.map((e) => total(e.id));
    for (let i = 1; i < totals.length; i += 1) {
      assert.ok(totals[i] >= totals[i - 1], `event ${i} steps back: ${totals[i - 1]} -> ${totals[i]}`);
    }
    assert.ok(!events.some((e) => e.kind === 'resync'), 'the browser sent an id this server understood');
    const view = await page.evaluate(() => window.__view);
    const snapshot = await (await fetch(`${base}/api/snapshot`)).json();
    assert.equal(total(view.position), total(snapshot.position));
    // The whole view, every store and the rollup.
    assert.deepEqual(view, snapshot);
    // The stream cut by the SIGKILL, and reconnects refused while serve was down, are the
    // crash this test causes; anything else logged as an error is a defect.
    assert.deepEqual(consoleErrors.filter((t) => !crashNoise.some((e) => t.includes(e))), []);
  } finally {
    await browser.close();
    await killServe(serve);
  }
});
