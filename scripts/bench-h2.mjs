// `scripts/bench h2`: serve over HTTPS with 1 000 live streams, as HTTP/2 (streams shared
// on a few connections) and as HTTP/1.1 (one TLS connection each), during the same paced
// sale: serve's CPU per delivery (µs of user + system CPU per delta event a client got),
// HTTP/2 over HTTP/1.1 in the same run, median of BENCH_RUNS. Node's built-in http2 and
// https are the clients; a test certificate is made with openssl.
//
// Usage: node scripts/bench-h2.mjs SERVE_BIN   (the stack up; BENCH_CLIENTS=1000
// BENCH_CONNECTIONS=4 BENCH_SECONDS=15 BENCH_RATE=2000 BENCH_RUNS=3)
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const bin = process.argv[2];
const clients = Number(process.env.BENCH_CLIENTS ?? 1000);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 4);
const seconds = Number(process.env.BENCH_SECONDS ?? 15);
const rate = Number(process.env.BENCH_RATE ?? 2000);
const runs = Number(process.env.BENCH_RUNS ?? 3);
const tick = 100; // USER_HZ on Linux

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'storepulse-h2-'));
const file = (name) => path.join(dir, name);
execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
  '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
  '-keyout', file('key.pem'), '-out', file('cert.pem')], { stdio: 'ignore' });
const ca = fs.readFileSync(file('cert.pem'));
const suffix = Math.random().toString(16).slice(2, 10);
const env = {
  ...process.env,
  STOREPULSE_TOPIC_ORDERS: `bench-h2-${suffix}-orders`,
  STOREPULSE_TOPIC_INVENTORY: `bench-h2-${suffix}-inventory`,
  STOREPULSE_TOPIC_ACTIVITY: `bench-h2-${suffix}-activity`,
  STOREPULSE_GROUP_ID: `bench-h2-${suffix}`,
  STOREPULSE_TLS_CERT_FILE: file('cert.pem'),
  STOREPULSE_TLS_KEY_FILE: file('key.pem'),
  STOREPULSE_MAX_SUBSCRIBERS: String(clients * 2),
  STOREPULSE_LIMIT_STREAMS_PER_CLIENT: '0',
  STOREPULSE_LIMIT_REQUESTS_PER_SECOND: '0',
  RUST_LOG: 'warn',
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const simulate = (args) => execFileSync(bin, ['simulate', '--quiet', '--stores', '100', '--skus', '100', ...args],
  { env, stdio: 'ignore' });

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => { const { port } = server.address(); server.close(() => resolve(port)); });
  });
}

function cpuSeconds(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / tick;
}

/// Counts `event: delta` in a stream's text, across chunk boundaries.
function counter(total) {
  let carry = '';
  return (chunk) => {
    const text = carry + chunk;
    let at = 0;
    for (;;) {
      at = text.indexOf('event: delta', at);
      if (at < 0) break;
      total.n += 1;
      at += 12;
    }
    carry = text.slice(-12);
  };
}

/// `clients` streams over `connections` HTTP/2 sessions.
async function openH2(base, total) {
  const sessions = [];
  const streams = [];
  for (let c = 0; c < connections; c += 1) {
    const session = http2.connect(base, { ca });
    session.on('error', () => {});
    sessions.push(session);
  }
  for (let i = 0; i < clients; i += 1) {
    const stream = sessions[i % connections].request({ ':path': '/api/stream' });
    stream.setEncoding('utf8');
    stream.on('data', counter(total));
    stream.on('error', () => {});
    streams.push(stream);
  }
  return () => { for (const s of sessions) s.destroy(); };
}

/// `clients` streams, one HTTPS/1.1 connection each.
async function openH1(base, total) {
  const agent = new https.Agent({ ca, keepAlive: true, maxSockets: Infinity, ALPNProtocols: ['http/1.1'] });
  const requests = [];
  for (let i = 0; i < clients; i += 1) {
    const request = https.get(`${base}/api/stream`, { agent }, (response) => {
      response.setEncoding('utf8');
      response.on('data', counter(total));
      response.on('error', () => {});
    });
    request.on('error', () => {});
    requests.push(request);
  }
  return () => { for (const r of requests) r.destroy(); agent.destroy(); };
}

/// GET over a fresh HTTP/2 session: status and body.
async function get(base, pathname) {
  const session = http2.connect(base, { ca });
  session.on('error', () => {});
  try {
    return await new Promise((resolve, reject) => {
      const request = session.request({ ':path': pathname });
      let status = 0;
      let body = '';
      request.on('response', (headers) => { status = headers[':status']; });
      request.setEncoding('utf8');
      request.on('data', (c) => { body += c; });
      request.on('end', () => resolve({ status, body }));
      request.on('error', reject);
    });
  } finally {
    session.close();
  }
}

async function metric(base, name) {
  const { body } = await get(base, '/metrics');
  return Number(body.match(new RegExp(`^${name} (\\d+)$`, 'm'))?.[1] ?? 0);
}

async function measure(open, label) {
  const port = await freePort();
  const serve = spawn(bin, ['serve'], { env: { ...env, STOREPULSE_HTTP_ADDR: `127.0.0.1:${port}` }, stdio: 'ignore' });
  const base = `https://127.0.0.1:${port}`;
  try {
    for (let i = 0; ; i += 1) {
      try { if ((await get(base, '/readyz')).status === 200) break; } catch { /* not yet */ }
      if (i > 600) throw new Error('serve did not start');
      await sleep(100);
    }
    const total = { n: 0 };
    const close = await open(base, total);
    for (let i = 0; (await metric(base, 'storepulse_subscribers')) < clients; i += 1) {
      if (i > 600) throw new Error(`${label}: the streams did not open`);
      await sleep(100);
    }
    await sleep(1000);
    const before = { cpu: cpuSeconds(serve.pid), n: total.n };
    const sale = spawn(bin, ['simulate', '--quiet', '--stores', '100', '--skus', '100', '--rate', String(rate),
      '--duration', `${seconds}s`, '--seed', String(Date.now() % 100000), '--flash-skus', '0'], { env, stdio: 'ignore' });
    await new Promise((r) => sale.once('exit', r));
    await sleep(1500);
    const after = { cpu: cpuSeconds(serve.pid), n: total.n };
    close();
    const deliveries = after.n - before.n;
    return { label, deliveries, usPerDelivery: ((after.cpu - before.cpu) * 1e6) / Math.max(1, deliveries) };
  } finally {
    serve.kill('SIGKILL');
  }
}

simulate(['--count', '50000', '--rate', '0', '--seed', '1', '--flash-skus', '0',
  '--start', new Date(Date.now() - 3_600_000).toISOString()]);
const rows = [];
for (let run = 0; run < runs; run += 1) {
  const h2 = await measure(openH2, 'h2');
  const h1 = await measure(openH1, 'http/1.1');
  rows.push({ h2, h1, ratio: h2.usPerDelivery / h1.usPerDelivery });
  console.error(`run ${run + 1}: h2 ${h2.usPerDelivery.toFixed(2)} µs (${h2.deliveries} deliveries), http/1.1 ${h1.usPerDelivery.toFixed(2)} µs (${h1.deliveries}), ratio ${(h2.usPerDelivery / h1.usPerDelivery).toFixed(2)}`);
}
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
console.log(`| streams | connections | HTTP/2 CPU-µs per delivery | HTTP/1.1 CPU-µs per delivery | HTTP/2 ÷ HTTP/1.1 (runs) |`);
console.log('|---:|---|---:|---:|---:|');
console.log(`| ${clients} | ${connections} (h2) vs ${clients} (TLS, http/1.1) | ${median(rows.map((r) => r.h2.usPerDelivery)).toFixed(2)} | ${median(rows.map((r) => r.h1.usPerDelivery)).toFixed(2)} | ${median(rows.map((r) => r.ratio)).toFixed(2)} (${rows.map((r) => r.ratio.toFixed(2)).join(', ')}) |`);
fs.rmSync(dir, { recursive: true, force: true });
