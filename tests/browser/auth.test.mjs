// Access control in real headless Chromium and Firefox ESR: with auth.mode = "jwt" the page asks for a
// token, signs in (POST /api/session sets the HttpOnly cookie its EventSource sends), and
// sees only its token's store; when the server ends the stream at the token's expiry the
// page asks again and, signed in with a new token, resumes from its last id: its view is
// exactly the server's snapshot, with no gap and no duplicate, through a flash sale.
//
// Run by scripts/test: STOREPULSE_BIN=target/debug/storepulse node --test tests/browser/
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import {
  bin, environment, simulate, simulateInBackground, freePort, startServe, killServe, waitFor,
  total,
} from './support.mjs';
import { inEveryBrowser, countEventSources } from './browsers.mjs';

const secret = 'browser-test-secret-of-at-least-32-bytes';
// Topics of their own for each browser's run.
const freshEnv = () => ({
  ...environment('auth'),
  STOREPULSE_AUTH_MODE: 'jwt',
  STOREPULSE_AUTH_HS256_SECRET: secret,
});
let env = freshEnv();
const stores = ['--stores', '3', '--skus', '12'];

/// A token from `storepulse token`, as an operator would make one.
function token(storesClaim, ttl) {
  return execFileSync(bin, ['token', '--stores', storesClaim, '--ttl', ttl, '--subject', 'browser'], { env })
    .toString().trim();
}

async function signIn(page, value) {
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#login-token', value);
  await page.click('#login button[type=submit]');
  await page.waitForSelector('#login', { state: 'hidden' });
}

inEveryBrowser('a signed-in page sees only its store, and resumes gapless after its token expires', async (launch) => {
  env = freshEnv();
  assert.ok(bin, 'STOREPULSE_BIN names the storepulse binary');
  simulate(env, ['--count', '1500', '--rate', '0', '--seed', '51', ...stores,
    '--start', new Date(Date.now() - 600_000).toISOString()]);
  const port = await freePort();
  const serve = startServe(env, port);
  const base = `http://127.0.0.1:${port}`;
  await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);
  const berlin = token('store-berlin', '1h');
  const snapshot = async () => (await fetch(`${base}/api/snapshot?store=store-berlin`, {
    headers: { Authorization: `Bearer ${berlin}` },
  })).json();
  // Without a token the API says so; a token in the URL is refused.
  assert.equal((await fetch(`${base}/api/snapshot?store=store-berlin`)).status, 401);
  assert.equal((await fetch(`${base}/api/snapshot?store=store-berlin&access_token=${berlin}`)).status, 400);
  const browser = await launch();
  try {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${base}/`);
    // A short-lived token first: the stream is closed when it expires.
    await signIn(page, token('store-berlin', '6s'));
    await waitFor('Live', async () => (await page.textContent('#connection')) === 'Live');
    const options = await page.$$eval('#store option', (o) => o.map((x) => x.value));
    assert.deepEqual(options, ['store-berlin'], 'only its store is offered, no rollup');
    const view = await page.evaluate(() => window.storepulse.view());
    assert.deepEqual(Object.keys(view.stores), ['store-berlin'], 'the view holds its store only');
    assert.ok(!view.all_stores, 'no rollup');
    // Asking for another store or the rollup with the same session is refused.
    const probes = await page.evaluate(async () => Promise.all(
      ['/api/snapshot?store=store-nyc', '/api/snapshot'].map(async (u) => (await fetch(u)).status)));
    assert.deepEqual(probes, [404, 403]);

    // A flash sale runs while the token expires and the user signs in again.
    const sale = simulateInBackground(env, ['--count', '4000', '--rate', '400', '--seed', '52', ...stores,
      '--start', new Date().toISOString(), '--flash-sale-at', '1s', '--flash-sale-for', '10m']);
    await waitFor('the expiry prompt', async () =>
      (await page.isVisible('#login')) && (await page.textContent('#login-why')).includes('expired'), 30_000);
    const before = await page.evaluate(() => window.storepulse.view().position);
    await signIn(page, berlin);
    await waitFor('Live again', async () => (await page.textContent('#connection')) === 'Live');
    await sale;
    // A store's stream carries the frames that change its store, so its position is that
    // of the last such frame; its numbers are the snapshot's, to the cent.
    const final = await snapshot();
    const berlinOf = (v) => v.stores['store-berlin'];
    await waitFor('the page to show the snapshot\'s numbers', async () =>
      JSON.stringify(berlinOf(await page.evaluate(() => window.storepulse.view()))) === JSON.stringify(berlinOf(final)));
    const resumed = await page.evaluate(() => window.storepulse.view());
    assert.ok(total(resumed.position) > total(before), 'records after the expiry arrived');
    assert.ok(total(resumed.position) <= total(final.position));
    assert.deepEqual(berlinOf(resumed), berlinOf(final), 'exact after the resume: no gap, no duplicate');
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /storepulse_disconnects_total\{reason="session_expired"\} [1-9]/);
  } finally {
    await browser.close();
    await killServe(serve);
  }
});

inEveryBrowser('a session renewed every 10 s with 20 s tokens keeps one stream open for a minute', async (launch) => {
  assert.ok(bin, 'STOREPULSE_BIN names the storepulse binary');
  // The shop's sign-in, which hands the signed-in page a fresh token (CORS, with cookies).
  const tokens = [];
  const shop = http.createServer((request, response) => {
    const fresh = token('store-berlin', '20s');
    tokens.push(Date.now());
    response.writeHead(200, {
      'content-type': 'application/json',
      'access-control-allow-origin': request.headers.origin ?? '*',
      'access-control-allow-credentials': 'true',
      'cache-control': 'no-store',
    });
    response.end(JSON.stringify({ token: fresh }));
  });
  await new Promise((r) => shop.listen(0, '127.0.0.1', r));
  const renewEnv = {
    ...environment('renew'),
    STOREPULSE_AUTH_MODE: 'jwt',
    STOREPULSE_AUTH_HS256_SECRET: secret,
    STOREPULSE_AUTH_RENEW_URL: `http://127.0.0.1:${shop.address().port}/storepulse-token`,
  };
  simulate(renewEnv, ['--count', '500', '--rate', '0', '--seed', '53', ...stores,
    '--start', new Date(Date.now() - 600_000).toISOString()]);
  const port = await freePort();
  const serve = startServe(renewEnv, port);
  const base = `http://127.0.0.1:${port}`;
  await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);
  const counter = async (pattern) => {
    const text = await (await fetch(`${base}/metrics`, { headers: { Authorization: `Bearer ${token('*', '1m')}` } })).text();
    return Number(text.match(pattern)?.[1] ?? 0);
  };
  const browser = await launch();
  try {
    const page = await (await browser.newContext()).newPage();
    await countEventSources(page);
    await page.goto(`${base}/`);
    await signIn(page, token('store-berlin', '20s'));
    await waitFor('Live', async () => (await page.textContent('#connection')) === 'Live');
    // Events keep coming for the whole minute.
    const trickle = simulateInBackground(renewEnv, ['--count', '650', '--rate', '10', '--seed', '54', ...stores,
      '--start', new Date().toISOString()]);
    const statuses = new Set();
    const until = Date.now() + 60_000;
    while (Date.now() < until) {
      statuses.add(await page.textContent('#connection'));
      assert.equal(await page.isVisible('#login'), false, 'never asked to sign in again');
      await new Promise((r) => setTimeout(r, 1_000));
    }
    await trickle;
    const renewals = await page.evaluate(() => window.storepulse.renewals());
    assert.ok(renewals >= 5, `${renewals} renewals in a minute of 20 s tokens`);
    assert.ok(tokens.length >= 5, `${tokens.length} tokens fetched`);
    assert.deepEqual([...statuses], ['Live'], 'Live throughout');
    assert.equal(await page.evaluate(() => window.__eventSources), 1, 'one EventSource opened');
    assert.equal(await counter(/storepulse_disconnects_total\{reason="session_expired"\} (\d+)/), 0, 'no session ended');
    const opened = await counter(/storepulse_stream_openings_total\{path="shared"\} (\d+)/)
      + await counter(/storepulse_stream_openings_total\{path="engine"\} (\d+)/);
    assert.equal(opened, 1, 'the server opened one stream in that minute: no reconnect');
    // And its numbers are the server's, to the cent.
    const berlin = token('store-berlin', '1m');
    const final = await (await fetch(`${base}/api/snapshot?store=store-berlin`, { headers: { Authorization: `Bearer ${berlin}` } })).json();
    await waitFor('the page to show the snapshot\'s numbers', async () =>
      await page.evaluate(() => JSON.stringify(window.storepulse.view().stores['store-berlin']))
        === JSON.stringify(final.stores['store-berlin']), 10_000);
  } finally {
    await browser.close();
    await killServe(serve);
    shop.close();
  }
});
