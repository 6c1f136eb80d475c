// The live operations dashboard: one EventSource carries every widget. It applies the
// stream exactly as docs/api.md says (snapshot/resync replace, deltas merge by merge.js),
// lets the browser reconnect with Last-Event-ID, and renders at most five times a second,
// only the parts whose data changed.

import { applyDelta } from './merge.js';

const STALE_AFTER_MS = 40_000; // two heartbeats and a margin without any event
const STALE_LAG = 1_000; // records behind the partition ends
const RENDER_EVERY_MS = 200; // enough for people; frames arrive up to 40 times a second
const $ = (id) => document.getElementById(id);

const state = {
  store: localStorage.getItem('storepulse.store') ?? '',
  source: null,
  view: null, // the snapshot with every delta applied
  lastId: null,
  status: 'connecting',
  resyncedAt: 0,
  receivedAt: 0,
  asOfMs: null,
  lag: null,
  frames: 0,
  seenAlerts: new Set(JSON.parse(sessionStorage.getItem('storepulse.alerts') ?? '[]')),
  firstSeen: new Map(), // alert id -> order first seen on this page
  notify: false,
  primed: false, // alerts of the first snapshot are history, not news
};

// ---- the stream contract: merge.js (shared with the browser tests) ----------------------

function connect(since) {
  state.source?.close();
  const params = new URLSearchParams();
  if (state.store) params.set('store', state.store);
  // A new EventSource cannot set Last-Event-ID; `since` carries it.
  if (since) params.set('since', since);
  const query = params.toString();
  const source = new EventSource(`/api/stream${query ? `?${query}` : ''}`);
  state.source = source;
  const received = (e) => {
    state.receivedAt = Date.now();
    if (e.lastEventId) state.lastId = e.lastEventId;
  };
  const snapshot = (kind) => (e) => {
    received(e);
    state.view = JSON.parse(e.data);
    state.asOfMs = state.view.as_of_ms;
    if (kind === 'resync') state.resyncedAt = Date.now();
    setStatus(kind === 'resync' ? 'resynced' : 'live');
    rememberStores();
    schedule();
  };
  source.addEventListener('snapshot', snapshot('snapshot'));
  source.addEventListener('resync', snapshot('resync'));
  source.addEventListener('delta', (e) => {
    received(e);
    if (!state.view) return;
    applyDelta(state.view, JSON.parse(e.data));
    state.asOfMs = state.view.as_of_ms;
    state.frames += 1;
    if (state.status !== 'resynced' || Date.now() - state.resyncedAt > 10_000) setStatus('live');
    schedule();
  });
  source.addEventListener('progress', (e) => {
    received(e);
    const progress = JSON.parse(e.data);
    if (progress.as_of_ms) state.asOfMs = progress.as_of_ms;
    state.lag = progress.lag >= 0 ? progress.lag : null;
    schedule();
  });
  source.onerror = () => {
    setStatus('reconnecting');
    // The browser retries by itself after a dropped stream; after an HTTP error (503 while
    // a restarted server assigns its partitions) it gives up, so retry with the last id.
    if (source.readyState === EventSource.CLOSED && state.source === source) {
      setTimeout(() => { if (state.source === source) connect(state.lastId); }, 1_000);
    }
  };
}

// ---- rendering -----------------------------------------------------------------------

let pending = false;
let renderedAt = 0;
function schedule() {
  if (pending) return;
  pending = true;
  const wait = Math.max(0, renderedAt + RENDER_EVERY_MS - performance.now());
  setTimeout(() => requestAnimationFrame(() => {
    pending = false;
    renderedAt = performance.now();
    render();
  }), wait);
}

// The data each widget last rendered: a widget whose inputs are the same objects is skipped
// (a delta replaces what changed and leaves the rest as it was).
const rendered = new Map();
function changed(widget, ...inputs) {
  const before = rendered.get(widget);
  if (before && before.length === inputs.length && before.every((x, i) => x === inputs[i])) return false;
  rendered.set(widget, inputs);
  return true;
}

function setStatus(status) {
  state.status = status;
  const badge = $('connection');
  badge.className = `badge ${status}`;
  badge.textContent = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', resynced: 'Resynced' }[status];
}

function selected() {
  if (!state.view) return null;
  return state.store ? state.view.stores[state.store] ?? null : state.view.all_stores ?? null;
}

function timeZoneOf(storeId) {
  return state.view?.stores[storeId]?.time_zone ?? selected()?.time_zone ?? 'UTC';
}

const fractionDigits = new Map();
function money({ currency, minor }) {
  let formatter = fractionDigits.get(currency);
  if (!formatter) {
    formatter = new Intl.NumberFormat(undefined, { style: 'currency', currency });
    fractionDigits.set(currency, formatter);
  }
  const digits = formatter.resolvedOptions().maximumFractionDigits;
  return formatter.format(minor / 10 ** digits);
}

const clocks = new Map(); // one formatter per time zone: building one is costly
function time(iso, storeId) {
  const zone = timeZoneOf(storeId);
  let clock = clocks.get(zone);
  if (!clock) {
    clock = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium', timeZone: zone });
    clocks.set(zone, clock);
  }
  return clock.format(new Date(iso));
}

const number = new Intl.NumberFormat();
function setOutput(id, text, value) {
  const out = $(id);
  const lines = Array.isArray(text) ? text : [text];
  out.replaceChildren(...lines.map((line) => el('span', { class: 'line' }, line)));
  out.classList.toggle('many', lines.length > 1);
  out.dataset.value = JSON.stringify(value);
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) {
    if (k === 'class') node.className = v; else if (k.startsWith('data-')) node.setAttribute(k, v); else node[k] = v;
  }
  node.append(...children);
  return node;
}

function render() {
  const v = selected();
  renderFreshness();
  if (!v) return;
  setOutput('orders-today', number.format(v.orders_today), v.orders_today);
  // One line per currency: minor units of different currencies never add up.
  setOutput('revenue-today', v.revenue_today.length ? v.revenue_today.map(money) : '–', v.revenue_today);
  setOutput('aov', v.average_order_value.length ? v.average_order_value.map(money) : '–', v.average_order_value);
  setOutput('active-users', `${number.format(v.active_users.last_5_minutes)} / ${number.format(v.active_users.today)}`, v.active_users);
  setOutput('cancelled-today', number.format(v.cancelled_today), v.cancelled_today);
  if (changed('charts', v.per_minute, v.per_minute_from, v.revenue_today[0]?.currency)) renderCharts(v);
  if (changed('stock', v.stock, v.low_stock, v.oversold, v.alerts)) renderStock(v);
  if (changed('lists', v.top_products, v.recent_orders)) renderLists(v);
  if (changed('alerts', v.alerts)) renderAlerts(v);
}

function bars(svg, from, points, label) {
  const start = Date.parse(from);
  const max = Math.max(1, ...points.map((p) => p.value));
  const width = 600 / 60;
  const rects = points.map((p) => {
    const slot = Math.round((Date.parse(p.minute) - start) / 60_000);
    const h = (p.value / max) * 140;
    return `<rect x="${(slot * width + 1).toFixed(1)}" y="${(150 - h).toFixed(1)}" width="${(width - 2).toFixed(1)}" height="${h.toFixed(1)}"><title>${p.title}</title></rect>`;
  });
  svg.innerHTML = `${rects.join('')}<text x="2" y="10">max ${label(max)}</text>`;
  svg.setAttribute('aria-label', `${svg.getAttribute('aria-label').split(':')[0]}: ${points.length} minutes with orders, peak ${label(max)}`);
  svg.dataset.points = JSON.stringify(points.map((p) => [p.minute, p.value]));
}

function renderCharts(v) {
  bars($('orders-chart'), v.per_minute_from, v.per_minute.map((m) => ({ minute: m.minute, value: m.orders, title: `${m.orders} orders` })), (n) => number.format(n));
  const currency = v.revenue_today[0]?.currency;
  $('revenue-caption').textContent = `Revenue per minute, last hour${currency ? ` (${currency})` : ''}`;
  bars($('revenue-chart'), v.per_minute_from, v.per_minute.map((m) => {
    const minor = m.revenue.find((r) => r.currency === currency)?.minor ?? 0;
    return { minute: m.minute, value: minor, title: currency ? money({ currency, minor }) : '' };
  }), (n) => (currency ? money({ currency, minor: n }) : String(n)));
}

function renderStock(v) {
  const closest = [...v.stock].sort((a, b) => a.level - b.level || a.sku.localeCompare(b.sku)).slice(0, 12);
  const low = new Map(v.low_stock.map((s) => [`${s.store_id}/${s.sku}`, s]));
  const max = Math.max(1, ...closest.map((s) => Math.abs(s.level)));
  $('stock-bars').replaceChildren(...closest.map((s) => {
    const kind = s.level < 0 ? 'oversold' : low.has(`${s.store_id}/${s.sku}`) ? 'low' : '';
    const bar = el('span', { class: 'bar' });
    bar.style.width = `${(Math.abs(s.level) / max) * 100}%`; // oversold: red, by how far
    return el('li', { class: kind, title: `${s.store_id} ${s.sku} ${s.name}` }, el('span', {}, `${s.name} · ${s.sku}`), el('span', {}, bar), el('span', { class: 'n' }, number.format(s.level)));
  }));
  const imminent = new Set(v.alerts.filter((a) => a.kind === 'sell_out_imminent').map((a) => `${a.store_id}/${a.sku}`));
  const rows = [
    ...v.oversold.map((s) => ({ ...s, kind: 'oversold' })),
    ...v.low_stock.map((s) => ({ ...s, kind: imminent.has(`${s.store_id}/${s.sku}`) ? 'imminent' : '' })),
  ];
  $('low-stock').tBodies[0].replaceChildren(...rows.map((s) => {
    const sellOut = s.kind === 'oversold' ? `oversold by ${number.format(-s.level)}`
      : s.minutes_to_sell_out == null ? '—' : `sells out in ~${Math.max(1, Math.round(s.minutes_to_sell_out))} min`;
    return el('tr', { class: s.kind, 'data-sku': s.sku }, el('td', {}, s.sku), el('td', {}, s.name), el('td', {}, number.format(s.level)),
      el('td', {}, s.sold_last_15m == null ? '—' : number.format(s.sold_last_15m)), el('td', {}, sellOut));
  }));
  $('low-stock-empty').hidden = rows.length > 0;
}

function renderLists(v) {
  $('top-products').replaceChildren(...v.top_products.map((p) =>
    el('li', {}, el('span', { class: 'what' }, p.name), el('span', { class: 'meta' }, `${number.format(p.units)} units`))));
  $('recent-orders').replaceChildren(...v.recent_orders.map((o) =>
    el('li', { class: o.cancelled ? 'cancelled' : '', 'data-store': o.store_id, 'data-order': o.order_id },
      el('span', { class: 'what' }, `${o.customer_name} · ${money(o.total)}`),
      el('span', { class: 'meta' }, `${state.store ? '' : `${o.store_id} · `}${time(o.occurred_at, o.store_id)}`))));
}

function renderAlerts(v) {
  // Each active alert once, newest first; a notification at most once per alert id, even
  // across reconnects, restarts and reloads (ids are stable, docs/api.md).
  let notified = false;
  for (const alert of v.alerts) {
    if (!state.firstSeen.has(alert.id)) state.firstSeen.set(alert.id, state.firstSeen.size);
    if (state.seenAlerts.has(alert.id)) continue;
    state.seenAlerts.add(alert.id);
    notified = true;
    if (state.primed && state.notify) {
      new Notification(`storepulse: ${alert.kind.replaceAll('_', ' ')}`, { body: `${alert.name} (${alert.sku}) at ${alert.store_id}: level ${alert.level}`, tag: alert.id });
    }
  }
  state.primed = true;
  if (notified) sessionStorage.setItem('storepulse.alerts', JSON.stringify([...state.seenAlerts].slice(-500)));
  const shown = [...v.alerts].sort((a, b) => state.firstSeen.get(b.id) - state.firstSeen.get(a.id));
  $('alerts').replaceChildren(...shown.map((a) =>
    el('li', { class: `alert ${a.kind}`, 'data-alert-id': a.id },
      el('span', { class: 'what' }, `${a.kind.replaceAll('_', ' ')}: ${a.name} (${a.sku})`),
      el('span', { class: 'meta' }, `${state.store ? '' : `${a.store_id} · `}level ${number.format(a.level)} · since ${time(a.since, a.store_id)}`))));
  $('alerts-empty').hidden = shown.length > 0;
}

function renderFreshness() {
  const now = Date.now();
  const parts = [];
  if (state.asOfMs) parts.push(`newest event ${ago(now - state.asOfMs)}`);
  if (state.receivedAt) parts.push(`updated ${ago(now - state.receivedAt)}`);
  if (state.lag != null) parts.push(`lag ${number.format(state.lag)}`);
  $('freshness').textContent = parts.join(' · ') || 'waiting for data';
  const silent = state.receivedAt && now - state.receivedAt > STALE_AFTER_MS;
  const behind = state.lag != null && state.lag > STALE_LAG;
  const banner = $('stale');
  banner.hidden = !(silent || behind);
  if (!banner.hidden) {
    banner.textContent = silent ? `Stale: nothing received for ${ago(now - state.receivedAt, false)}.`
      : `Stale: the processor is ${number.format(state.lag)} records behind.`;
  }
}

function ago(ms, suffix = true) {
  const s = Math.max(0, Math.round(ms / 1000));
  const text = s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
  return suffix ? `${text} ago` : text;
}

// ---- the store selector and notifications ---------------------------------------------

function rememberStores() {
  const known = new Set(JSON.parse(localStorage.getItem('storepulse.stores') ?? '[]'));
  for (const id of Object.keys(state.view.stores)) known.add(id);
  localStorage.setItem('storepulse.stores', JSON.stringify([...known].sort()));
  fillStores();
}

function fillStores() {
  const select = $('store');
  const known = JSON.parse(localStorage.getItem('storepulse.stores') ?? '[]');
  if (state.store && !known.includes(state.store)) known.push(state.store);
  const current = [...select.options].slice(1).map((o) => o.value).join();
  if (current !== known.join()) {
    select.replaceChildren(el('option', { value: '' }, 'All stores'), ...known.map((id) => el('option', { value: id }, id)));
  }
  select.value = state.store;
}

$('store').addEventListener('change', (e) => {
  state.store = e.target.value;
  localStorage.setItem('storepulse.store', state.store);
  state.view = null;
  state.lastId = null;
  setStatus('connecting');
  connect(null);
});

if ('Notification' in window) {
  const button = $('notify');
  button.hidden = Notification.permission === 'denied';
  state.notify = Notification.permission === 'granted';
  button.textContent = state.notify ? 'Alert notifications on' : 'Notify me of alerts';
  button.addEventListener('click', async () => {
    state.notify = (await Notification.requestPermission()) === 'granted';
    button.textContent = state.notify ? 'Alert notifications on' : 'Notify me of alerts';
  });
}

setInterval(renderFreshness, 1_000);
fillStores();
connect(null);

// For tests and the curious: the applied view and the connection state.
window.storepulse = {
  view: () => state.view,
  selected,
  status: () => state.status,
  frames: () => state.frames,
  alertsShown: () => [...document.querySelectorAll('#alerts [data-alert-id]')].map((li) => li.dataset.alertId),
};
