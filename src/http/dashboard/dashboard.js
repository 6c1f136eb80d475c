// The live operations dashboard: one EventSource carries every widget, and one per
// origin and store scope carries every tab: tabs elect a leader (Web Locks) that holds the
// stream and relays its events to the others (BroadcastChannel); when it closes, another
// tab takes over and resumes by its last id. It applies the stream exactly as docs/api.md
// says (snapshot/resync replace, deltas merge by merge.js), lets the browser reconnect with
// Last-Event-ID, honours Retry-After, and renders at most five times a second, only the
// parts whose data changed. A past range can be watched again ("Replay"): the same events
// from /api/replay/stream, under a banner that says it is not live; no notification fires
// from a replay, and "Back to live" rejoins the live stream. With access control on
// (docs/api.md, Access control) it signs in with a token (POST /api/session sets an
// HttpOnly cookie the EventSource sends), offers only the token's stores, and when the
// server ends a stream at the token's expiry it asks for a new token and resumes from the
// last id it applied: no gap, no duplicate.

import { applyDelta, positionAfter } from './merge.js';

// No new data (snapshot or delta) for this long: stale (`?stale_after_ms=` overrides it).
const STALE_AFTER_MS = Number(new URLSearchParams(location.search).get('stale_after_ms')) || 30_000;
const STALE_LAG = 1_000; // records behind the partition ends
const RENDER_EVERY_MS = 200; // enough for people; frames arrive up to 40 times a second
const CHARTS_EVERY_MS = 1_000; // per-minute bars: once a second is plenty
const MAX_BACKOFF_MS = 30_000;
const ALERT_KINDS = ['oversold', 'sold_out', 'sell_out_imminent', 'low_stock'];
const $ = (id) => document.getElementById(id);

const state = {
  store: localStorage.getItem('storepulse.store') ?? '',
  source: null,
  tab: null, // this tab's membership of its scope: leader or follower
  view: null, // the snapshot with every delta applied
  lastId: null,
  status: 'connecting',
  problem: null, // why the stream is refused (subscriber cap, restart), with the retry time
  backoffMs: 1_000,
  resyncedAt: 0,
  receivedAt: 0, // any event, heartbeats too: the connection is alive
  dataAt: 0, // the last snapshot or delta: the numbers moved
  asOfMs: null,
  lag: null,
  watching: null, // streams open on this scope at the server (a browser's tabs share one)
  frames: 0,
  seenAlerts: new Set(JSON.parse(sessionStorage.getItem('storepulse.alerts') ?? '[]')),
  notify: false,
  primed: false, // alerts of the first snapshot are history, not news
  replay: null, // { from, to, speed, store, paused, ended } while watching a past range
  allowed: null, // the token's stores (null: every store and the rollup)
  signedIn: false, // a token session (not access control off)
  renewals: 0, // sessions renewed without a reconnect
};

// A replay id is `R1.<tag>.<position>`: its position orders it (docs/api.md).
const positionOf = (id) => (id && id.startsWith('R1.') ? id.slice(id.indexOf('.', 3) + 1) : id);

// ---- the stream contract: merge.js (shared with the browser tests) ----------------------

// One event, from this tab's EventSource or relayed by the leader.
function handle(type, data, id) {
  state.receivedAt = Date.now();
  if (type === 'snapshot' || type === 'resync') {
    state.view = JSON.parse(data);
    state.lastId = id || state.view.position;
    state.asOfMs = state.view.as_of_ms;
    state.dataAt = Date.now();
    if (type === 'resync') state.resyncedAt = Date.now();
    if (state.tab?.leader) setStatus(type === 'resync' ? 'resynced' : 'live');
    rememberStores();
  } else if (type === 'delta') {
    if (!state.view || !positionAfter(positionOf(id), state.view.position)) return;
    applyDelta(state.view, JSON.parse(data));
    state.lastId = id;
    state.asOfMs = state.view.as_of_ms;
    state.dataAt = Date.now();
    state.frames += 1;
    if (state.tab?.leader && (state.status !== 'resynced' || Date.now() - state.resyncedAt > 10_000)) setStatus('live');
  } else if (type === 'end' && state.replay) {
    state.replay.ended = true;
    state.source?.close(); // an EventSource would reconnect and resume at the end again
    state.source = null;
    renderReplay();
  } else if (type === 'progress') {
    const progress = JSON.parse(data);
    if (progress.as_of_ms) state.asOfMs = progress.as_of_ms;
    state.lag = progress.lag >= 0 ? progress.lag : null;
    state.watching = progress.watching ?? null;
  }
  schedule();
}

function connect(since) {
  state.source?.close();
  const params = new URLSearchParams();
  if (state.store) params.set('store', state.store);
  // A new EventSource cannot set Last-Event-ID; `since` carries it.
  if (since) params.set('since', since);
  const query = params.toString();
  const url = `/api/stream${query ? `?${query}` : ''}`;
  const source = new EventSource(url);
  state.source = source;
  const tab = state.tab;
  for (const type of ['snapshot', 'resync', 'delta', 'progress']) {
    source.addEventListener(type, (e) => {
      if (state.source !== source) return;
      handle(type, e.data, e.lastEventId);
      tab?.channel.postMessage({ kind: 'event', type, data: e.data, id: e.lastEventId });
    });
  }
  source.addEventListener('session-expired', () => {
    if (state.source !== source) return;
    source.close(); // it would reconnect with the expired cookie
    askForToken('Your session has expired: sign in again to resume where you left off.');
  });
  source.onopen = () => { state.backoffMs = 1_000; state.problem = null; };
  source.onerror = () => {
    setStatus('reconnecting');
    // The browser retries by itself after a dropped stream; after an HTTP error (503 at
    // the subscriber cap, or while a restarted server assigns its partitions) it gives up:
    // ask why, and retry after Retry-After or a growing backoff, with the last id.
    if (source.readyState === EventSource.CLOSED && state.source === source) retryLater(source, url);
  };
}

async function retryLater(source, url) {
  let waitMs = state.backoffMs;
  state.backoffMs = Math.min(MAX_BACKOFF_MS, state.backoffMs * 2);
  let reason = null;
  try {
    const abort = new AbortController();
    const response = await fetch(url, { signal: abort.signal, headers: { Accept: 'text/event-stream' } });
    if (response.status === 401 || response.status === 403) {
      askForToken(`Signed out: ${await response.json().then((b) => b.error, () => response.statusText)}`);
      return;
    }
    if (!response.ok) {
      const retryAfter = Number(response.headers.get('retry-after'));
      if (retryAfter > 0) waitMs = Math.max(waitMs, retryAfter * 1_000);
      reason = `${response.status}: ${await response.json().then((b) => b.error, () => response.statusText)}`;
    }
    abort.abort(); // a 200 opened a stream: not this one's job
  } catch {
    reason = 'server unreachable'; // keep the backoff
  }
  waitMs *= 0.8 + Math.random() * 0.4; // many dashboards must not come back in step
  state.problem = reason ? { reason, until: Date.now() + waitMs } : null;
  schedule();
  setTimeout(() => { if (state.source === source) connect(state.lastId); }, waitMs);
}

// ---- one stream for all tabs of a scope ---------------------------------------------------

function joinScope() {
  const scope = state.store;
  const channel = new BroadcastChannel(`storepulse:${scope}`);
  const release = new AbortController();
  const tab = { scope, channel, release, leader: false, unlock: null };
  state.tab = tab;
  channel.onmessage = ({ data: m }) => {
    if (state.tab !== tab) return;
    if (tab.leader) {
      // A new tab asks for the view so far; the events after it follow in order.
      if (m.kind === 'hello' && state.view) {
        channel.postMessage({ kind: 'state', data: JSON.stringify(state.view), id: state.lastId, status: state.status, lag: state.lag, watching: state.watching });
      }
      return;
    }
    if (m.kind === 'event') handle(m.type, m.data, m.id);
    else if (m.kind === 'state' && !state.view) {
      handle('snapshot', m.data, m.id);
      state.lag = m.lag;
      state.watching = m.watching ?? null;
      setStatus(m.status);
    } else if (m.kind === 'status') setStatus(m.status);
  };
  if (!navigator.locks) {
    lead(tab);
    return;
  }
  navigator.locks.request(`storepulse:${scope}`, { signal: release.signal }, () => new Promise((resolve) => {
    tab.unlock = resolve;
    if (state.tab === tab) lead(tab); else resolve();
  })).catch(() => {}); // released before it was granted: the scope changed
  channel.postMessage({ kind: 'hello' });
}

function lead(tab) {
  tab.leader = true;
  connect(state.lastId); // from the last id relayed to it: no gap, no duplicate
}

function leaveScope() {
  const tab = state.tab;
  if (!tab) return;
  state.tab = null;
  tab.release.abort();
  tab.unlock?.();
  tab.channel.close();
  state.source?.close();
  state.source = null;
}

// ---- watching a past range again ------------------------------------------------------

function openReplay(since) {
  const r = state.replay;
  state.source?.close();
  const params = new URLSearchParams({ from: r.from, to: r.to, speed: String(r.speed) });
  if (r.store) params.set('store', r.store);
  if (since) params.set('since', since); // resume exactly where the pause left it
  const source = new EventSource(`/api/replay/stream?${params}`);
  state.source = source;
  for (const type of ['snapshot', 'resync', 'delta', 'end']) {
    source.addEventListener(type, (e) => { if (state.source === source) handle(type, e.data, e.lastEventId); });
  }
  source.addEventListener('error', (e) => {
    if (state.source !== source || !e.data) return;
    state.replay.failed = JSON.parse(e.data).error; // the range cannot be replayed
    source.close();
    schedule();
  });
  source.onerror = () => {
    // 503 when every replay slot is busy: the browser gives up; say so and retry.
    if (source.readyState === EventSource.CLOSED && state.source === source && !state.replay?.ended) {
      state.replay.failed = 'busy: every replay slot is taken, retrying in 10 s';
      schedule();
      setTimeout(() => { if (state.source === source && state.replay) openReplay(state.lastId); }, 10_000);
    }
  };
}

function startReplay(from, to, speed) {
  leaveScope(); // another tab takes the live stream over for this scope
  state.replay = { from, to, speed, store: state.store, paused: false, ended: false, failed: null };
  state.view = null;
  state.lastId = null;
  state.dataAt = 0;
  state.lag = null;
  state.watching = null;
  setStatus('replay');
  openReplay(null);
  schedule();
}

function backToLive() {
  state.source?.close();
  state.source = null;
  state.replay = null;
  state.view = null;
  state.lastId = null;
  state.dataAt = 0;
  setStatus('connecting');
  joinScope();
  schedule();
}

function renderReplay() {
  const r = state.replay;
  const banner = $('replay-banner');
  banner.hidden = !r;
  $('replay-form').hidden = Boolean(r);
  if (!r) return;
  const from = Date.parse(r.from);
  const to = Date.parse(r.to);
  const at = state.asOfMs ?? from;
  const scope = r.store || 'all stores';
  const label = `REPLAY ${replayClock(from)}–${replayClock(to)} ${scope} at ${r.speed}× — not live`;
  if ($('replay-label').textContent !== label) $('replay-label').textContent = label;
  const progress = $('replay-progress');
  progress.value = Math.max(0, Math.min(1, (at - from) / (to - from)));
  const stateText = r.failed ? r.failed : r.ended ? 'ended' : r.paused ? 'paused' : `at ${replayClock(Math.max(at, from))}`;
  if ($('replay-state').textContent !== stateText) $('replay-state').textContent = stateText;
  $('replay-pause').textContent = r.paused ? 'Resume' : 'Pause';
  $('replay-pause').disabled = r.ended;
}

// Replayed times in UTC, labelled (the range was given in absolute times).
const replayClock = (ms) => clock('UTC', 'long').format(new Date(ms));

$('replay-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const from = new Date($('replay-from').value);
  const to = new Date($('replay-to').value);
  if (!(from < to)) {
    $('replay-error').textContent = 'The end must be after the start.';
    return;
  }
  $('replay-error').textContent = '';
  startReplay(from.toISOString(), to.toISOString(), Number($('replay-speed').value));
});
$('replay-pause').addEventListener('click', () => {
  const r = state.replay;
  if (!r || r.ended) return;
  r.paused = !r.paused;
  if (r.paused) {
    state.source?.close();
    state.source = null;
  } else {
    openReplay(state.lastId);
  }
  renderReplay();
  schedule();
});
$('replay-live').addEventListener('click', backToLive);

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
  if (state.tab?.leader && status !== state.status) state.tab.channel.postMessage({ kind: 'status', status });
  state.status = status;
  const badge = $('connection');
  badge.className = `badge ${status}`;
  badge.textContent = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', resynced: 'Resynced', replay: 'Replay' }[status];
  // The banner follows at once (a refusal's reason goes with the connection it explained),
  // not at the next freshness tick.
  renderFreshness();
}

function selected() {
  if (!state.view) return null;
  return state.store ? state.view.stores?.[state.store] ?? null : state.view.all_stores ?? null;
}

// A store's time zone: its view's (one store), else the all-stores snapshot's rule (the
// configured zones, then the default).
function timeZoneOf(storeId) {
  const view = state.view;
  return view?.stores?.[storeId]?.time_zone ?? view?.time_zones?.[storeId]
    ?? view?.default_time_zone ?? selected()?.time_zone ?? 'UTC';
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

const clocks = new Map(); // one formatter per time zone and style: building one is costly
function clock(zone, style) {
  const key = `${zone} ${style}`;
  let format = clocks.get(key);
  if (!format) {
    const options = style === 'short' ? { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }
      : { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23', timeZoneName: 'short' };
    format = new Intl.DateTimeFormat(undefined, { ...options, timeZone: zone });
    clocks.set(key, format);
  }
  return format;
}

// A time in the store's own zone, labelled with the zone: one instant in three stores
// reads as three clocks, each saying which.
function time(iso, storeId) {
  return clock(timeZoneOf(storeId), 'long').format(new Date(iso));
}

const number = new Intl.NumberFormat();
function setOutput(id, text, value) {
  const out = $(id);
  const json = JSON.stringify(value);
  if (out.dataset.value === json) return; // no DOM change, no layout
  out.dataset.value = json;
  const lines = Array.isArray(text) ? text : [text];
  out.replaceChildren(...lines.map((line) => el('span', { class: 'line' }, line)));
  out.classList.toggle('many', lines.length > 1);
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
  document.body.classList.toggle('store-view', Boolean(state.store));
  if (!v) return;
  setOutput('orders-today', number.format(v.orders_today), v.orders_today);
  // One line per currency: minor units of different currencies never add up.
  setOutput('revenue-today', v.revenue_today.length ? v.revenue_today.map(money) : '–', v.revenue_today);
  setOutput('aov', v.average_order_value.length ? v.average_order_value.map(money) : '–', v.average_order_value);
  setOutput('active-users', `${number.format(v.active_users.last_5_minutes)} / ${number.format(v.active_users.today)}`, v.active_users);
  setOutput('cancelled-today', number.format(v.cancelled_today), v.cancelled_today);
  const sinceCharts = performance.now() - chartsAt;
  if (sinceCharts < CHARTS_EVERY_MS) {
    if (!chartsLater) chartsLater = setTimeout(() => { chartsLater = null; schedule(); }, CHARTS_EVERY_MS - sinceCharts);
  } else if (changed('charts', v.per_minute, v.per_minute_from, state.store)) {
    chartsAt = performance.now();
    renderCharts(v);
  }
  if (changed('stock', v.low_stock, v.oversold, v.alerts, v.counts)) renderStock(v);
  if (changed('lists', v.top_products, v.recent_orders)) renderLists(v);
  if (changed('alerts', v.alerts)) renderAlerts(v);
}

let chartsAt = -Infinity;
let chartsLater = null;

function bars(svg, from, points, label) {
  const start = Date.parse(from);
  const max = Math.max(1, ...points.map((p) => p.value));
  const width = 600 / 60;
  const rects = points.map((p) => {
    const slot = Math.round((Date.parse(p.minute) - start) / 60_000);
    const h = (p.value / max) * 140;
    return `<rect x="${(slot * width + 1).toFixed(1)}" y="${(150 - h).toFixed(1)}" width="${(width - 2).toFixed(1)}" height="${h.toFixed(1)}"><title>${p.title}</title></rect>`;
  });
  svg.innerHTML = rects.join('');
  // The peak as HTML above the chart: text inside the stretched SVG (preserveAspectRatio
  // "none") was squashed or widened with the chart's shape.
  let peak = svg.parentElement.querySelector('.peak');
  if (!peak) {
    peak = el('div', { class: 'peak', 'aria-hidden': 'true' });
    svg.before(peak);
  }
  peak.textContent = `max ${label(max)}`;
  svg.setAttribute('aria-label', `${svg.getAttribute('aria-label').split(':')[0]}: ${points.length} minutes with orders, peak ${label(max)}`);
  svg.dataset.points = JSON.stringify(points.map((p) => [p.minute, p.value]));
  // The time axis: the window's start, every quarter hour, its last minute (redrawn only
  // when the window moves).
  const zone = timeZoneOf(state.store);
  const axis = svg.parentElement.querySelector('.axis');
  if (axis.dataset.from !== `${zone} ${from}`) {
    axis.dataset.from = `${zone} ${from}`;
    axis.replaceChildren(...[0, 15, 30, 45, 59].map((m) => el('span', {}, clock(zone, 'short').format(new Date(start + m * 60_000)))));
    svg.parentElement.querySelector('.zone').textContent = `(${zone})`;
  }
}

// A chart per currency, never a silent subset: minor units of two currencies never share
// an axis.
function renderCharts(v) {
  bars($('orders-chart'), v.per_minute_from, v.per_minute.map((m) => ({ minute: m.minute, value: m.orders, title: `${m.orders} orders` })), (n) => number.format(n));
  const currencies = [...new Set([...v.revenue_today.map((r) => r.currency), ...v.per_minute.flatMap((m) => m.revenue.map((r) => r.currency))])].sort();
  const charts = $('charts');
  for (const figure of [...charts.querySelectorAll('figure[data-currency]')]) {
    if (!currencies.includes(figure.dataset.currency)) figure.remove();
  }
  for (const currency of currencies) {
    let figure = charts.querySelector(`figure[data-currency="${currency}"]`);
    if (!figure) {
      figure = el('figure', { class: 'panel', 'data-currency': currency },
        el('figcaption', {}, `Revenue per minute (${currency}), last hour `, el('small', { class: 'zone' })));
      figure.insertAdjacentHTML('beforeend', `<svg class="revenue-chart" role="img" aria-label="Revenue per minute in ${currency}" viewBox="0 0 600 160" preserveAspectRatio="none"></svg><div class="axis" aria-hidden="true"></div>`);
      charts.append(figure);
    }
    bars(figure.querySelector('svg'), v.per_minute_from, v.per_minute.map((m) => {
      const minor = m.revenue.find((r) => r.currency === currency)?.minor ?? 0;
      return { minute: m.minute, value: minor, title: money({ currency, minor }) };
    }), (n) => money({ currency, minor: n }));
  }
}

// How urgent a SKU is, by its alert (docs/api.md, Stock rules).
function kindOf(s, alertBySku) {
  if (s.level < 0) return 'oversold';
  return alertBySku.get(`${s.store_id}/${s.sku}`) ?? (s.level === 0 ? 'sold_out' : '');
}

function renderStock(v) {
  const alertBySku = new Map(v.alerts.map((a) => [`${a.store_id}/${a.sku}`, a.kind]));
  // The most urgent SKUs the view lists (oversold, then low or selling out), lowest first.
  const closest = [...v.oversold, ...v.low_stock]
    .sort((a, b) => a.level - b.level || a.store_id.localeCompare(b.store_id) || a.sku.localeCompare(b.sku)).slice(0, 12);
  const max = Math.max(1, ...closest.map((s) => Math.abs(s.level)));
  $('stock-bars').replaceChildren(...closest.map((s) => {
    const kind = kindOf(s, alertBySku);
    const bar = el('span', { class: 'bar' });
    bar.style.width = `${(Math.abs(s.level) / max) * 100}%`; // oversold: red, by how far; sold out: a mark
    const label = state.store ? `${s.name} · ${s.sku}` : `${s.name} · ${s.sku} · ${s.store_id}`;
    const level = s.level === 0 ? 'sold out' : number.format(s.level);
    return el('li', { class: kind === 'low_stock' || kind === 'sell_out_imminent' ? 'low' : kind, title: `${s.store_id} ${s.sku} ${s.name}` },
      el('span', {}, label), el('span', {}, bar), el('span', { class: 'n' }, level));
  }));
  const rows = [
    ...v.oversold.map((s) => ({ ...s, kind: 'oversold' })),
    ...v.low_stock.map((s) => ({ ...s, kind: s.alert === 'low_stock' ? '' : s.alert ?? '' })),
  ];
  $('low-stock').tBodies[0].replaceChildren(...rows.map((s) => {
    const sellOut = s.kind === 'oversold' ? `oversold by ${number.format(-s.level)}`
      : s.level === 0 ? 'sold out'
        : s.minutes_to_sell_out == null ? '—' : `in ~${Math.max(1, s.minutes_to_sell_out)} min`;
    return el('tr', { class: s.kind, 'data-sku': s.sku, 'data-store': s.store_id },
      el('td', { class: 'store-col' }, s.store_id), el('td', {}, s.sku), el('td', {}, s.name), el('td', {}, number.format(s.level)),
      el('td', {}, s.sold_last_15m == null ? '—' : number.format(s.sold_last_15m)),
      el('td', { class: s.kind === 'sell_out_imminent' || (s.kind === '' && s.minutes_to_sell_out != null) ? 'projection' : '' }, sellOut));
  }));
  // The view lists the most urgent (aggregate.list_limit); `counts` says how many in all.
  const whole = (v.counts?.oversold ?? 0) + (v.counts?.low_stock ?? 0);
  const empty = $('low-stock-empty');
  empty.textContent = rows.length === 0 ? 'Nothing is low.'
    : `…and ${number.format(whole - rows.length)} more (GET /api/stock lists every level).`;
  empty.hidden = rows.length > 0 && whole <= rows.length;
}

function renderLists(v) {
  $('top-products').replaceChildren(...v.top_products.map((p) =>
    el('li', { 'data-store': p.store_id }, el('span', { class: 'what' }, p.name),
      el('span', { class: 'meta' }, `${state.store ? '' : `${p.store_id} · `}${number.format(p.units)} units`))));
  $('recent-orders').replaceChildren(...v.recent_orders.map((o) =>
    el('li', { class: o.cancelled ? 'cancelled' : '', 'data-store': o.store_id, 'data-order': o.order_id },
      el('span', { class: 'what' }, `${o.customer_name} · ${money(o.total)}`),
      el('span', { class: 'meta' }, `${state.store ? '' : `${o.store_id} · `}${time(o.occurred_at, o.store_id)}`))));
}

function renderAlerts(v) {
  // Each active alert once, in the server's order (most urgent kind first); a
  // notification at most once per alert id, even across reconnects, restarts and reloads
  // (ids are stable, docs/api.md).
  let notified = false;
  for (const alert of state.replay ? [] : v.alerts) {
    if (state.seenAlerts.has(alert.id)) continue;
    state.seenAlerts.add(alert.id);
    notified = true;
    if (state.primed && state.notify && state.tab?.leader && alert.kind !== 'low_stock') {
      new Notification(`storepulse: ${alert.kind.replaceAll('_', ' ')}`, { body: `${alert.name} (${alert.sku}) at ${alert.store_id}: level ${alert.level}`, tag: alert.id });
    }
  }
  state.primed = true;
  if (notified) sessionStorage.setItem('storepulse.alerts', JSON.stringify([...state.seenAlerts].slice(-500)));
  for (const kind of ALERT_KINDS) {
    // Whole counts: the alerts list itself holds the most urgent only.
    const n = v.counts?.alerts?.[kind] ?? v.alerts.filter((a) => a.kind === kind).length;
    const out = $(`count-${kind}`);
    out.textContent = number.format(n);
    out.parentElement.classList.toggle('active', n > 0);
  }
  $('alerts').replaceChildren(...v.alerts.map((a) =>
    el('li', { class: `alert ${a.kind}`, 'data-alert-id': a.id, 'data-kind': a.kind },
      el('span', { class: 'what' }, `${a.kind.replaceAll('_', ' ')}: ${a.name} (${a.sku})`),
      el('span', { class: 'meta' }, `${state.store ? '' : `${a.store_id} · `}level ${number.format(a.level)} · since ${time(a.since, a.store_id)}`))));
  const empty = $('alerts-empty');
  empty.textContent = 'No alerts.';
  empty.hidden = v.alerts.length > 0;
}

function renderFreshness() {
  const now = Date.now();
  const parts = [];
  if (state.tab && !state.tab.leader) parts.push('shared stream');
  if (state.asOfMs) parts.push(`newest event ${ago(now - state.asOfMs)}`);
  if (state.dataAt) parts.push(`data ${ago(now - state.dataAt)}`);
  if (state.lag != null) parts.push(`lag ${number.format(state.lag)}`);
  if (state.watching) parts.push(`${number.format(state.watching)} watching`);
  const freshness = parts.join(' · ') || 'waiting for data';
  if ($('freshness').textContent !== freshness) $('freshness').textContent = freshness;
  // Heartbeats keep the connection alive but are not data: stale means no snapshot or
  // delta for a while (the producers stopped, or the processor is stuck), or far behind.
  renderReplay();
  const quiet = !state.replay && state.dataAt && now - state.dataAt > STALE_AFTER_MS;
  const behind = !state.replay && state.lag != null && state.lag > STALE_LAG;
  const refused = state.problem && state.status !== 'live';
  const banner = $('stale');
  banner.hidden = !(quiet || behind || refused);
  document.body.classList.toggle('stale', !banner.hidden);
  const title = refused ? state.problem.reason : '';
  if ($('connection').title !== title) $('connection').title = title;
  if (!banner.hidden) {
    const retry = refused ? Math.max(0, Math.round((state.problem.until - now) / 1000)) : 0;
    banner.textContent = refused ? `Not connected (${state.problem.reason}); retrying in ${retry} s. The numbers shown may be out of date.`
      : behind ? `Stale: the processor is ${number.format(state.lag)} records behind.`
        : `Stale: no new events for ${ago(now - state.dataAt, false)} (newest event ${ago(now - (state.asOfMs ?? now))}). Projections are on hold.`;
  }
}

function ago(ms, suffix = true) {
  const s = Math.max(0, Math.round(ms / 1000));
  const text = s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
  return suffix ? `${text} ago` : text;
}

// ---- the store selector and notifications ---------------------------------------------

// The stores to choose from: the first page of GET /api/stores (the all-stores scope holds
// the rollup, not the stores), kept in localStorage for the next load.
const STORE_CHOICES = 1000;
async function rememberStores() {
  if (state.allowed) return; // the token's stores are the list
  const known = new Set(JSON.parse(localStorage.getItem('storepulse.stores') ?? '[]'));
  for (const id of Object.keys(state.view.stores ?? {})) known.add(id);
  if (!state.store) {
    try {
      const response = await fetch(`/api/stores?limit=${STORE_CHOICES}`);
      if (response.ok) {
        known.clear();
        for (const id of (await response.json()).items) known.add(id);
      }
    } catch {
      // offline for a moment: the remembered list stays
    }
  }
  localStorage.setItem('storepulse.stores', JSON.stringify([...known].sort()));
  fillStores();
}

function fillStores() {
  const select = $('store');
  if (state.allowed) {
    // A token for some stores: those, and no rollup.
    if ([...select.options].map((o) => o.value).join() !== state.allowed.join()) {
      select.replaceChildren(...state.allowed.map((id) => el('option', { value: id }, id)));
    }
    select.value = state.store;
    return;
  }
  const known = JSON.parse(localStorage.getItem('storepulse.stores') ?? '[]');
  if (state.store && !known.includes(state.store)) known.push(state.store);
  const current = [...select.options].map((o) => o.value).join();
  if (current !== ['', ...known].join()) {
    select.replaceChildren(el('option', { value: '' }, 'All stores'), ...known.map((id) => el('option', { value: id }, id)));
  }
  select.value = state.store;
}

// ---- signing in -----------------------------------------------------------------------

// What the session allows: the store list, and a store inside it; and when to renew it.
function applySession(session) {
  state.signedIn = session.mode === 'jwt';
  state.allowed = session.stores === '*' ? null : [...session.stores].sort();
  if (state.allowed && !state.allowed.includes(state.store)) state.store = state.allowed[0] ?? '';
  $('logout').hidden = !state.signedIn;
  fillStores();
  scheduleRenewal(session);
}

// With `auth.renew_url`, the session is renewed halfway to its expiry: a fresh token from
// that URL (the shop's own sign-in), posted to /api/session. The server moves the open
// stream's end to the new expiry: no reconnect, no prompt. If renewing fails it is tried
// again (at most every 5 s); at the expiry the server ends the stream and the page asks.
let renewal = null;
function scheduleRenewal(session) {
  clearTimeout(renewal);
  if (session.mode !== 'jwt' || !session.renew_url || !session.expires_at_ms) return;
  const left = session.expires_at_ms - Date.now();
  renewal = setTimeout(() => renew(session), Math.max(1_000, left / 2));
}

async function renew(session) {
  try {
    const source = await fetch(session.renew_url, { credentials: 'include', cache: 'no-store' });
    if (!source.ok) throw new Error(`${session.renew_url}: ${source.status}`);
    const text = (await source.text()).trim();
    const token = text.startsWith('{') ? JSON.parse(text).token : text;
    const response = await fetch('/api/session', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new Error(`/api/session: ${response.status}`);
    const renewed = await response.json();
    state.renewals += 1;
    applySession(renewed);
  } catch (error) {
    console.warn('session not renewed:', error.message);
    const left = session.expires_at_ms - Date.now();
    if (left > 1_000) renewal = setTimeout(() => renew(session), Math.min(5_000, left / 2));
  }
}

function askForToken(why) {
  state.source?.close();
  state.source = null;
  $('login-why').textContent = why;
  $('login').hidden = false;
  setStatus('reconnecting');
}

$('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const token = $('login-token').value.trim();
  const response = await fetch('/api/session', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    $('login-error').textContent = body.error ?? response.statusText;
    return;
  }
  $('login-token').value = ''; // the cookie holds it now; the page keeps no copy
  $('login-error').textContent = '';
  $('login').hidden = true;
  const scope = state.store;
  applySession(body);
  if (state.tab && state.tab.scope === state.store && scope === state.store) {
    if (state.tab.leader) connect(state.lastId); // resume by id, gapless
  } else {
    leaveScope();
    state.view = null;
    state.lastId = null;
    joinScope();
  }
});

$('logout').addEventListener('click', async () => {
  clearTimeout(renewal);
  await fetch('/api/session', { method: 'DELETE' });
  leaveScope();
  askForToken('Signed out.');
});

async function start() {
  const response = await fetch('/api/session').catch(() => null);
  if (response?.status === 401) {
    askForToken('This dashboard needs a token (ask your operator: storepulse token).');
    return;
  }
  if (response?.ok) applySession(await response.json());
  const linked = new URLSearchParams(location.search);
  if (linked.get('replay_from') && linked.get('replay_to')) {
    // A shared link to a replay: ?replay_from=…&replay_to=…&replay_speed=10
    startReplay(linked.get('replay_from'), linked.get('replay_to'), Number(linked.get('replay_speed')) || 10);
  } else {
    joinScope();
  }
}

$('store').addEventListener('change', (e) => {
  leaveScope();
  state.store = e.target.value;
  localStorage.setItem('storepulse.store', state.store);
  state.view = null;
  state.lastId = null;
  state.dataAt = 0;
  setStatus('connecting');
  joinScope();
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
start();

// For tests and the curious: the applied view and the connection state.
window.storepulse = {
  view: () => state.view,
  selected,
  status: () => state.status,
  frames: () => state.frames,
  role: () => (state.tab?.leader ? 'leader' : 'follower'),
  replay: () => state.replay,
  allowedStores: () => state.allowed,
  renewals: () => state.renewals,
  alertsShown: () => [...document.querySelectorAll('#alerts [data-alert-id]')].map((li) => li.dataset.alertId),
};
