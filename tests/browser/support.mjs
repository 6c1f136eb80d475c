// Shared by the browser tests: the storepulse binary, unique topics, serve processes,
// the simulator, Chromium, and waiting without fixed sleeps.
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';
import { chromium } from 'playwright-core';

export const bin = process.env.STOREPULSE_BIN;

/// Topic names of one test file, so tests never see each other's records.
export function environment(name) {
  const suffix = Math.random().toString(16).slice(2, 10);
  return {
    ...process.env,
    STOREPULSE_TOPIC_ORDERS: `${name}-${suffix}-orders`,
    STOREPULSE_TOPIC_INVENTORY: `${name}-${suffix}-inventory`,
    STOREPULSE_TOPIC_ACTIVITY: `${name}-${suffix}-activity`,
    STOREPULSE_GROUP_ID: `${name}-${suffix}`,
  };
}

/// `storepulse simulate` with these arguments, to completion.
export function simulate(env, args) {
  execFileSync(bin, ['simulate', '--quiet', ...args], { env, stdio: 'ignore' });
}

/// `storepulse simulate` in the background; resolves when it exits successfully.
export function simulateInBackground(env, args) {
  const child = spawn(bin, ['simulate', '--quiet', ...args], { env, stdio: 'ignore' });
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`simulate exited ${code}`))));
  });
}

export async function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export function startServe(env, port) {
  return spawn(bin, ['serve'], {
    env: { ...env, STOREPULSE_HTTP_ADDR: `127.0.0.1:${port}`, STOREPULSE_CHECKPOINT_INTERVAL: '300ms', RUST_LOG: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

export async function killServe(serve) {
  serve.kill('SIGKILL');
  if (serve.exitCode === null && serve.signalCode === null) await new Promise((r) => serve.once('exit', r));
}

export async function waitFor(what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/// Records covered by a position (`tag:offset,offset,...`).
export const total = (id) => (id ? id.split(':')[1].split(',').reduce((s, o) => s + Number(o), 0) : 0);

/// Debian's Chromium, headless; playwright gives every launch a fresh, empty profile.
export function launch() {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/// Console errors a test caused on purpose (a killed server) are not defects.
export const crashNoise = ['ERR_INCOMPLETE_CHUNKED_ENCODING', 'ERR_CONNECTION_REFUSED', 'status of 503',
  // Firefox's words for the same
  'can’t establish a connection', 'was interrupted while the page was loading', 'NS_ERROR_NET'];

