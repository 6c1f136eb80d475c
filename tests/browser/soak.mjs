// Not a test: how the dashboard behaves in Chromium during a flash sale at the simulator's
// default rate (1 000 records/s). `scripts/bench dashboard` runs it (SOAK_SECONDS, 300).
// Prints a Markdown table for docs/benchmarks.md: delta frames received per second, main
// thread busy time of the tab (Chrome's TaskDuration: script, style, layout, paint), and
// its JS heap.
import { environment, simulateInBackground, freePort, startServe, killServe, waitFor, launch } from './support.mjs';

const seconds = Number(process.env.SOAK_SECONDS ?? 300);
const env = environment('soak');
const port = await freePort();
const serve = startServe(env, port);
const base = `http://127.0.0.1:${port}`;
const sale = simulateInBackground(env, ['--duration', `${seconds}s`]);
await waitFor('serve ready', async () => (await fetch(`${base}/readyz`)).status === 200);

const browser = await launch();
const rows = [];
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  await page.goto(`${base}/`);
  await waitFor('Live', async () => (await page.textContent('#connection')) === 'Live');
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const sample = async () => {
    const { metrics } = await cdp.send('Performance.getMetrics');
    const m = Object.fromEntries(metrics.map(({ name, value }) => [name, value]));
    return { at: Date.now(), frames: await page.evaluate(() => window.storepulse.frames()), busy: m.TaskDuration, script: m.ScriptDuration, heap: m.JSHeapUsedSize };
  };
  let last = await sample();
  const first = last;
  const every = Math.min(60, seconds) * 1000;
  for (let t = every; t <= seconds * 1000; t += every) {
    await new Promise((r) => setTimeout(r, every));
    const now = await sample();
    const wall = (now.at - last.at) / 1000;
    rows.push(`| ${Math.round((now.at - first.at) / 1000)} s | ${((now.frames - last.frames) / wall).toFixed(1)} | ${((100 * (now.busy - last.busy)) / wall).toFixed(1)} % | ${((100 * (now.script - last.script)) / wall).toFixed(1)} % | ${(now.heap / 1048576).toFixed(1)} MB |`);
    last = now;
  }
  const wall = (last.at - first.at) / 1000;
  rows.push(`| whole run | ${((last.frames - first.frames) / wall).toFixed(1)} | ${((100 * (last.busy - first.busy)) / wall).toFixed(1)} % | ${((100 * (last.script - first.script)) / wall).toFixed(1)} % | ${(last.heap / 1048576).toFixed(1)} MB |`);
  console.log(`Dashboard (all stores) in headless Chromium, ${seconds} s of the default flash sale (1 000 records/s):\n`);
  console.log('| until | delta frames/s | tab main thread busy | of which script | JS heap |');
  console.log('|---|---:|---:|---:|---:|');
  console.log(rows.join('\n'));
} finally {
  await browser.close();
  await sale.catch(() => {});
  await killServe(serve);
}
