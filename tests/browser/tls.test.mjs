// HTTPS and HTTP/2 served by storepulse itself, with a test CA this file makes (openssl):
// three dashboard tabs on three stores and their API calls share one HTTP/2 connection in
// a real headless Chromium, each tab exact; and on one HTTP/2 connection a stream whose
// reader stops does not stall the others, nor gets the connection closed under them.
//
// Run by scripts/test: STOREPULSE_BIN=target/debug/storepulse node --test tests/browser/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http2 from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import {
  bin, environment, simulate, simulateInBackground, freePort, startServe, killServe, waitFor,
  total, launch,
} from './support.mjs';

const stores = ['--stores', '3', '--skus', '12'];

/// A CA, and a certificate for 127.0.0.1 and localhost signed by it.
function testCertificates() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'storepulse-tls-'));
  const file = (name) => path.join(dir, name);
  const openssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=storepulse test CA', '-keyout', file('ca.key'), '-out', file('ca.pem'));
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-subj', '/CN=127.0.0.1', '-keyout', file('server.key'), '-out', file('server.csr'));
  fs.writeFileSync(file('ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  openssl('x509', '-req', '-in', file('server.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
    '-CAcreateserial', '-days', '2', '-extfile', file('ext'), '-out', file('server.pem'));
  return { dir, ca: fs.readFileSync(file('ca.pem')), cert: file('server.pem'), key: file('server.key') };
}

/// An HTTP/2 session to `base` with the test CA (the chain is verified), once serve answers.
async function connect(base, ca, settings = {}) {
  let session = null;
  await waitFor('serve ready over TLS', async () => {
    session?.destroy();
    session = http2.connect(base, { ca, settings });
    session.on('error', () => {});
    return (await get(session, '/readyz')).status === 200;
  });
  return session;
}

/// GET over HTTP/2 on `session`: status and body.
function get(session, pathname) {
  return new Promise((resolve, reject) => {
    const request = session.request({ ':path': pathname });
    let status = 0;
    let body = '';
    request.on('response', (headers) => { status = headers[':status']; });
    request.setEncoding('utf8');
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => resolve({ status, body }));
    request.on('error', reject);
  });
}

test('three tabs on three stores and their API calls share one HTTP/2 connection, each exact', async () => {
  assert.ok(bin, 'STOREPULSE_BIN names the storepulse binary');
  const certs = testCertificates();
  const env = { ...environment('tls'), STOREPULSE_TLS_CERT_FILE: certs.cert, STOREPULSE_TLS_KEY_FILE: certs.key };
  simulate(env, ['--count', '1500', '--rate', '0', '--seed', '91', ...stores,
    '--start', new Date(Date.now() - 600_000).toISOString()]);
  const port = await freePort();
  const serve = startServe(env, port);
  const base = `https://127.0.0.1:${port}`;
  const browser = await launch();
  try {
    (await connect(base, certs.ca)).close(); // its own connection is not the browser's
    const context = await browser.newContext({ ignoreHTTPSErrors: true }); // the test CA is not the system's
    const ids = ['store-berlin', 'store-nyc', 'store-tokyo'];
    const pages = [];
    for (const id of ids) {
      const page = await context.newPage();
      await page.goto(`${base}/`);
      await page.selectOption('#store', id);
      pages.push(page);
    }
    const sale = simulateInBackground(env, ['--count', '2000', '--rate', '400', '--seed', '92', ...stores,
      '--start', new Date().toISOString()]);
    for (const [i, page] of pages.entries()) {
      await waitFor(`tab ${i} Live`, async () => (await page.textContent('#connection')) === 'Live');
    }
    await sale;
    // Each tab's view is its store's snapshot, fetched by the page itself (the same
    // connection) and compared as JSON text made in the page.
    for (const [i, page] of pages.entries()) {
      await waitFor(`tab ${i} exact`, async () => page.evaluate(async (id) => {
        const snapshot = await (await fetch(`/api/snapshot?store=${id}`)).json();
        const view = window.storepulse.view();
        // A store's stream carries the frames that change its store: its position is its
        // last such frame's, so the store's numbers are compared, not the positions.
        return view && JSON.stringify(view.stores[id]) === JSON.stringify(snapshot.stores[id]);
      }, ids[i]), 30_000);
    }
    const protocols = await Promise.all(pages.map((page) => page.evaluate(() =>
      [...new Set(performance.getEntriesByType('resource').map((e) => e.nextHopProtocol))])));
    for (const [i, used] of protocols.entries()) assert.deepEqual(used, ['h2'], `tab ${i}: ${used}`);
    const metrics = await pages[0].evaluate(async () => (await fetch('/metrics')).text());
    const gauge = (pattern) => Number(metrics.match(pattern)?.[1]);
    assert.equal(gauge(/^storepulse_subscribers (\d+)$/m), 3, 'three streams');
    assert.equal(gauge(/^storepulse_http_connections\{protocol="h2"\} (\d+)$/m), 1, 'on one HTTP/2 connection');
    assert.equal(gauge(/^storepulse_http_connections\{protocol="http\/1.1"\} (\d+)$/m), 0, 'and no other');
  } finally {
    await browser.close();
    await killServe(serve);
    fs.rmSync(certs.dir, { recursive: true, force: true });
  }
});

test('on one HTTP/2 connection a stream nobody reads stalls only itself', async () => {
  assert.ok(bin, 'STOREPULSE_BIN names the storepulse binary');
  const certs = testCertificates();
  const env = {
    ...environment('tls-slow'),
    STOREPULSE_TLS_CERT_FILE: certs.cert,
    STOREPULSE_TLS_KEY_FILE: certs.key,
    STOREPULSE_STALL_TIMEOUT: '2s',
  };
  simulate(env, ['--count', '500', '--rate', '0', '--seed', '93', ...stores]);
  const port = await freePort();
  const serve = startServe(env, port);
  const base = `https://127.0.0.1:${port}`;
  let session = null;
  try {
    // A small window per stream: the stream nobody reads fills its window quickly.
    session = await connect(base, certs.ca, { initialWindowSize: 16_384 });
    const stalled = session.request({ ':path': '/api/stream' });
    stalled.pause(); // never read: its window fills, the server cannot send it more
    const live = session.request({ ':path': '/api/stream' });
    let last = '';
    live.setEncoding('utf8');
    live.on('data', (chunk) => {
      for (const match of chunk.matchAll(/^id: (.+)$/gm)) last = match[1];
    });
    const sale = simulateInBackground(env, ['--count', '6000', '--rate', '1000', '--seed', '94', ...stores,
      '--start', new Date().toISOString()]);
    await sale;
    // Well past the stall timeout: the read stream has every record, on the same connection.
    const { body } = await get(session, '/api/snapshot');
    const snapshot = JSON.parse(body);
    await waitFor('the read stream to reach the snapshot', async () => total(last) >= total(snapshot.position), 30_000);
    await new Promise((r) => setTimeout(r, 3_000));
    assert.equal(session.closed || session.destroyed, false, 'the connection stays open');
    const metrics = (await get(session, '/metrics')).body;
    assert.match(metrics, /^storepulse_subscribers 2$/m, 'both streams are still open');
    assert.match(metrics, /^storepulse_disconnects_total\{reason="stalled"\} 0$/m, 'nothing was cut');
    stalled.close();
    live.close();
  } finally {
    session?.destroy();
    await killServe(serve);
    fs.rmSync(certs.dir, { recursive: true, force: true });
  }
});
