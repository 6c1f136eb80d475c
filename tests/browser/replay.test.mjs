// Watching a past sale again on the dashboard, in a real headless Chromium: a replay
// link opens under a banner that says it is not live, reaches exactly the view that
// `storepulse replay --as-of` computes for the end of the range, pauses and resumes by its
// id, never notifies, and "Back to live" rejoins the live stream.
//
// Run by scripts/test: STOREPULSE_BIN=target/debug/storepulse node --test tests/browser/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { bin, environment, simulate, freePort, startServe, killServe, waitFor, launch } from './support.mjs';

test('a replay link shows the banner, ends at the as-of view, pauses, resumes and goes back to live', async () => {
  const env = environment('replay');
  // Two minutes of a sale, dated in the past (record timestamps are event times).
  simulate(env, ['--count', '2400', '--rate', '0', '--event-rate', '20', '--start', '2026-12-02T05:00:00Z',
    '--stores', '2', '--skus', '6', '--flash-sale-at', '10s']);
  const port = await freePort();
  const serve = startServe(env, port);
  const base = `http://127.0.0.1:${port}`;
  await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);
  const [from, to] = ['2026-12-02T05:00:00Z', '2026-12-02T05:01:30Z'];
  const expected = JSON.parse(execFileSync(bin, ['replay', '--from', from, '--as-of', to, '--quiet'], { env }).toString());
  const browser = await launch();
  try {
    const page = await browser.newPage();
    // 90 s of event time at 30×: three seconds of watching.
    await page.goto(`${base}/?replay_from=${from}&replay_to=${to}&replay_speed=30`);
    await waitFor('the banner', async () => page.isVisible('#replay-banner'));
    const label = await page.textContent('#replay-label');
    assert.match(label, /^REPLAY .+ all stores at 30× — not live$/, label);
    assert.equal(await page.textContent('#connection'), 'Replay');
    assert.equal(await page.isHidden('#replay-form'), true, 'no second replay form while one runs');
    // Pause mid-way, and resume from the id it stopped at.
    await waitFor('the replay under way', async () => (await page.evaluate(() => window.storepulse.frames())) >= 2, 20_000);
    await page.click('#replay-pause');
    await waitFor('paused', async () => (await page.textContent('#replay-state')) === 'paused', 2_000);
    const paused = await page.evaluate(() => window.storepulse.view().position);
    await new Promise((r) => setTimeout(r, 1_000));
    assert.equal(await page.evaluate(() => window.storepulse.view().position), paused, 'nothing moves while paused');
    await page.click('#replay-pause');
    await waitFor('the end of the replay', async () => (await page.textContent('#replay-state')) === 'ended', 60_000);
    const view = await page.evaluate(() => window.storepulse.view());
    // All stores: the rollup (no store's view), exactly --as-of's.
    assert.equal(view.stores, undefined, 'an all-stores replay holds no store');
    assert.deepEqual(view.all_stores, expected.all_stores, 'the replay ends at --as-of to, exactly');
    assert.equal(view.position, expected.position);
    assert.equal(Number(await page.$eval('#replay-progress', (p) => p.value)) > 0.9, true, 'the progress bar is full');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('storepulse.alerts')), null, 'a replay marks no alert as seen (and notifies none)');
    // Back to live: the live stream, its own view, no banner.
    await page.click('#replay-live');
    await waitFor('live again', async () => (await page.textContent('#connection')) === 'Live', 30_000);
    assert.equal(await page.isHidden('#replay-banner'), true);
    const live = await (await fetch(`${base}/api/snapshot`)).json();
    await waitFor('the live view', async () => (await page.evaluate(() => window.storepulse.view()?.position)) === live.position);
  } finally {
    await browser.close();
    await killServe(serve);
  }
});
