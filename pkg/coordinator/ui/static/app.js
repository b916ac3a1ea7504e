// The runs page of a stepflow coordinator: vanilla JS, no build step.
//
// Every POLL_MS it reads GET /api/v1/cluster (runs, stream, consumers,
// workers). Each running run (the newest MAX_LIVE of them) also follows
// GET /api/v1/runs/{id}/events (server-sent events) so that its counts
// move as results arrive. Browsers keep about six connections per host,
// so only a few event streams are opened; the others update with the poll.
//
// Requests carry X-Stepflow-UI: 1: with a token, the coordinator accepts
// the session cookie set by /ui/login only together with that header on
// anything that changes state.
'use strict';

const POLL_MS = 1000;
const MAX_LIVE = 4;
const RATE_WINDOW_MS = 30000;
const STUCK_MS = 60000;
const FAILURES_SHOWN = 20;

const runs = new Map(); // run id -> view

// ---- API ------------------------------------------------------------------

async function api(method, path, body) {
  const opts = { method, headers: { 'X-Stepflow-UI': '1' }, credentials: 'same-origin' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch('/api/v1' + path, opts);
  if (resp.status === 401) {
    location.href = '/ui/login';
    throw new Error('signed out');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!resp.ok) {
    throw new Error((data && data.message) || resp.status + ' ' + resp.statusText);
  }
  return data;
}

function say(msg, isError) {
  const el = document.getElementById('message');
  el.textContent = msg;
  el.className = isError ? 'error' : 'ok';
}

// ---- formatting -------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
}

function fmtDuration(ms) {
  if (ms == null || !isFinite(ms)) return '–';
  if (ms < 1) return Math.round(ms * 1000) + 'µs';
  if (ms < 1000) return Math.round(ms) + 'ms';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + 's';
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm' + String(Math.floor(s % 60)).padStart(2, '0') + 's';
  return Math.floor(m / 60) + 'h' + String(m % 60).padStart(2, '0') + 'm';
}

function ago(ts, now) {
  if (!ts) return '–';
  return fmtDuration(Math.max(0, now - Date.parse(ts))) + ' ago';
}

function shortId(id) { return id.length > 13 ? id.slice(0, 8) + '…' + id.slice(-4) : id; }

// ---- runs -------------------------------------------------------------------

function newRunView(id) {
  const v = { id, summary: null, es: null, samples: [], failuresAt: -1, failuresBusy: false, live: false, lastResultAt: null };
  const cell = (f, cls) => el('td', { 'data-f': f, class: cls || '' });
  v.bar = el('div', { class: 'bar-fill' });
  v.barFailed = el('div', { class: 'bar-failed' });
  v.barCancelled = el('div', { class: 'bar-cancelled' });
  v.progressText = el('span', { class: 'progress-text', 'data-f': 'done' });
  v.scaleInput = el('input', { type: 'number', min: '1', step: '1', class: 'scale', 'aria-label': 'max concurrency of ' + id });
  v.scaleBtn = el('button', { type: 'button', 'data-action': 'scale', onclick: () => scaleRun(v) }, 'Scale');
  v.cancelBtn = el('button', { type: 'button', 'data-action': 'cancel', class: 'danger', onclick: () => cancelRun(v) }, 'Cancel');
  v.cells = {
    run: el('td', { class: 'runid' }),
    status: cell('status'),
    progress: el('td', { class: 'progress-col' }, el('div', { class: 'bar' }, v.bar, v.barFailed, v.barCancelled), v.progressText),
    completed: cell('completed', 'num'),
    failed: cell('failed', 'num'),
    running: cell('running', 'num'),
    queued: cell('queued', 'num'),
    redelivered: cell('redelivered', 'num'),
    rate: cell('rate'),
    concurrency: el('td', { class: 'concurrency' }, el('span', { 'data-f': 'maxConcurrency' }), ' ', v.scaleInput, v.scaleBtn),
    actions: el('td', {}, v.cancelBtn),
  };
  v.row = el('tr', { class: 'run', 'data-run': id }, ...Object.values(v.cells));
  v.failList = el('ul', { class: 'failures' });
  v.errorText = el('p', { class: 'run-error' });
  v.detail = el('tr', { class: 'detail', 'data-detail': id, hidden: '' },
    el('td', { colspan: '11' }, v.errorText, v.failList));
  return v;
}

function applySummary(v, s, source) {
  const prev = v.summary;
  v.summary = s;
  const it = s.items;
  const done = it.completed + it.failed + it.cancelled;
  const now = Date.now();
  v.samples.push([now, done]);
  while (v.samples.length > 2 && now - v.samples[0][0] > RATE_WINDOW_MS) v.samples.shift();
  if (s.lastResultAt !== undefined) v.lastResultAt = s.lastResultAt;
  if (source === 'sse') v.row.setAttribute('data-live', 'sse');

  v.row.setAttribute('data-status', s.status);
  v.cells.run.replaceChildren(
    el('span', { class: 'mono', title: s.runId }, shortId(s.runId)),
    el('span', { class: 'flow' }, s.flowName || shortId(s.flowId || '')));
  v.cells.status.replaceChildren(el('span', { class: 'badge st-' + s.status }, s.status));
  const pct = it.total > 0 ? (100 * done / it.total) : 100;
  const share = (n) => (it.total > 0 ? 100 * n / it.total : 0) + '%';
  v.bar.style.width = it.total > 0 ? share(it.completed) : (s.status === 'running' ? '0%' : '100%');
  v.barFailed.style.width = share(it.failed);
  v.barCancelled.style.width = share(it.cancelled);
  v.progressText.textContent = done + '/' + it.total + ' (' + pct.toFixed(0) + '%)';
  v.progressText.title = it.cancelled > 0 ? it.cancelled + ' cancelled' : '';
  v.cells.completed.textContent = it.completed;
  v.cells.failed.textContent = it.failed;
  v.cells.failed.className = 'num' + (it.failed > 0 ? ' bad' : '');
  v.cells.running.textContent = it.running;
  v.cells.queued.textContent = it.queued;
  v.cells.redelivered.textContent = it.redelivered;
  v.cells.redelivered.className = 'num' + (it.redelivered > 0 ? ' warn' : '');
  v.cells.concurrency.querySelector('[data-f=maxConcurrency]').textContent = s.maxConcurrency;
  if (document.activeElement !== v.scaleInput && (!prev || prev.maxConcurrency !== s.maxConcurrency || !v.scaleInput.value)) {
    v.scaleInput.value = s.maxConcurrency;
  }
  const active = s.status === 'running' || s.status === 'paused';
  v.scaleInput.disabled = v.scaleBtn.disabled = v.cancelBtn.disabled = !active;
  v.row.classList.toggle('finished', !active);
  renderRate(v, now);

  if (s.error) {
    v.errorText.textContent = 'Run error: ' + s.error;
    v.detail.hidden = false;
  }
  if (it.failed > 0 && it.failed !== v.failuresAt) loadFailures(v, it.failed);
}

function renderRate(v, now) {
  const s = v.summary;
  const it = s.items;
  const remaining = it.total - it.completed - it.failed - it.cancelled;
  let text = '–';
  let cls = '';
  if (s.status === 'running') {
    const a = v.samples[0], b = v.samples[v.samples.length - 1];
    let rate = null;
    if (b[0] - a[0] >= 1000) rate = 1000 * (b[1] - a[1]) / (b[0] - a[0]);
    else {
      const elapsed = now - Date.parse(s.createdAt);
      const done = it.completed + it.failed + it.cancelled;
      if (elapsed > 0 && done > 0) rate = 1000 * done / elapsed;
    }
    if (rate != null && rate > 0) text = rate.toFixed(rate < 10 ? 1 : 0) + '/s · ETA ' + fmtDuration(1000 * remaining / rate);
    else if (rate === 0) text = '0/s';
    const last = v.lastResultAt ? Date.parse(v.lastResultAt) : Date.parse(s.createdAt);
    if (it.running > 0 && now - last > STUCK_MS) {
      text += ' · no result for ' + fmtDuration(now - last);
      cls = 'warn';
    }
  } else if (s.completedAt) {
    const took = Date.parse(s.completedAt) - Date.parse(s.createdAt);
    text = 'took ' + fmtDuration(took);
  }
  v.cells.rate.textContent = text;
  v.cells.rate.className = cls;
}

async function loadFailures(v, failed) {
  if (v.failuresBusy) return;
  v.failuresBusy = true;
  try {
    const data = await api('GET', '/runs/' + encodeURIComponent(v.id) + '/items?status=failed&limit=' + FAILURES_SHOWN);
    v.failuresAt = failed;
    const items = [];
    for (const item of data.items) {
      const err = item.result && item.result.error;
      const msg = err ? (err.message || JSON.stringify(err)) : 'failed';
      items.push(el('li', { 'data-item': String(item.itemIndex) },
        el('span', { class: 'mono' }, 'item ' + item.itemIndex), ' ', el('span', { class: 'errmsg' }, msg)));
    }
    if (failed > items.length) items.push(el('li', { class: 'muted' }, '… ' + (failed - items.length) + ' more failed items'));
    v.failList.replaceChildren(...items);
    v.detail.hidden = items.length === 0 && !v.summary.error;
  } catch (e) {
    say('Failed items of ' + shortId(v.id) + ': ' + e.message, true);
  } finally {
    v.failuresBusy = false;
  }
}

function follow(v) {
  if (v.es) return;
  const es = new EventSource('/api/v1/runs/' + encodeURIComponent(v.id) + '/events');
  v.es = es;
  es.addEventListener('counts', (ev) => applySummary(v, JSON.parse(ev.data), 'sse'));
  es.addEventListener('done', (ev) => {
    applySummary(v, JSON.parse(ev.data), 'sse');
    unfollow(v);
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) unfollow(v);
  };
}

function unfollow(v) {
  if (v.es) {
    v.es.close();
    v.es = null;
  }
}

async function cancelRun(v) {
  v.cancelBtn.disabled = true;
  try {
    const s = await api('POST', '/runs/' + encodeURIComponent(v.id) + '/cancel');
    applySummary(v, s, 'api');
    say('Run ' + shortId(v.id) + ' cancelled.');
  } catch (e) {
    say('Cancel ' + shortId(v.id) + ': ' + e.message, true);
    v.cancelBtn.disabled = false;
  }
}

async function scaleRun(v) {
  const n = Number(v.scaleInput.value);
  if (!Number.isInteger(n) || n < 1) {
    say('Concurrency must be a whole number of at least 1.', true);
    return;
  }
  v.scaleBtn.disabled = true;
  try {
    const s = await api('PATCH', '/runs/' + encodeURIComponent(v.id), { maxConcurrency: n });
    applySummary(v, s, 'api');
    say('Run ' + shortId(v.id) + ' now runs up to ' + s.maxConcurrency + ' items at once.');
  } catch (e) {
    say('Scale ' + shortId(v.id) + ': ' + e.message, true);
  } finally {
    v.scaleBtn.disabled = false;
  }
}

function doneOf(s) { return s.items.completed + s.items.failed + s.items.cancelled; }

function renderRuns(list) {
  const body = document.querySelector('#runs tbody');
  const seen = new Set();
  let live = 0;
  let anchor = null; // the last node placed, to keep the API's order (newest first)
  for (const s of list) {
    seen.add(s.runId);
    let v = runs.get(s.runId);
    if (!v) {
      v = newRunView(s.runId);
      runs.set(s.runId, v);
    }
    // The event stream sends counts when results arrive; the poll also
    // sees what changes in between (items taken after a scale, say).
    // Apply the poll unless the stream (or an action's answer) has
    // already shown more results, or the end of the run.
    const older = v.summary && (doneOf(s) < doneOf(v.summary) ||
      (s.status === 'running' && v.summary.status !== 'running' && v.summary.status !== 'paused'));
    if (older) {
      v.lastResultAt = s.lastResultAt || v.lastResultAt;
      renderRate(v, Date.now());
    } else {
      applySummary(v, s, 'poll');
    }
    // Move rows only when the order changed: moving a row would take
    // the focus from a Scale field being typed in.
    const want = anchor ? anchor.nextElementSibling : body.firstElementChild;
    if (want !== v.row) body.insertBefore(v.row, want);
    if (v.row.nextElementSibling !== v.detail) body.insertBefore(v.detail, v.row.nextElementSibling);
    anchor = v.detail;
    if (s.status === 'running' && live < MAX_LIVE) {
      live++;
      follow(v);
    }
  }
  for (const [id, v] of runs) {
    if (!seen.has(id)) {
      unfollow(v);
      v.row.remove();
      v.detail.remove();
      runs.delete(id);
    }
  }
  document.getElementById('no-runs').hidden = list.length > 0;
}

// ---- cluster ------------------------------------------------------------------

function renderStreams(c, now) {
  const body = document.querySelector('#streams tbody');
  body.replaceChildren(...c.streams.map((s) => el('tr', { 'data-stream': s.name },
    el('td', { class: 'mono' }, s.name),
    el('td', { class: 'num', 'data-f': 'messages' }, String(s.messages)),
    el('td', { class: 'num' }, fmtBytes(s.bytes)),
    el('td', { class: 'num' }, String(s.consumers)),
    el('td', {}, s.oldestAt ? ago(s.oldestAt, now) : '–'))));
  let queued = 0, inflight = 0;
  for (const k of c.consumers) { queued += k.numPending; inflight += k.numAckPending; }
  let free = 0, live = 0;
  for (const w of c.workers) {
    if (w.stale || w.draining) continue;
    live++;
    free += Math.max(0, w.slots.total - w.slots.busy);
  }
  let verdict = '', cls = 'muted';
  if (queued > 0 && live === 0) { verdict = 'backing up: no live worker'; cls = 'bad'; }
  else if (queued > 0 && free === 0) { verdict = 'backing up: every worker slot is busy'; cls = 'warn'; }
  else if (queued > 0) verdict = 'queued items wait for their runs\' concurrency limits (' + free + ' worker slots free)';
  const bl = document.getElementById('backlog');
  bl.textContent = queued + ' queued · ' + inflight + ' in flight' + (verdict ? ' · ' + verdict : '');
  bl.className = cls;
}

function renderWorkers(c) {
  const body = document.querySelector('#workers tbody');
  body.replaceChildren(...c.workers.map((w) => {
    const badges = [];
    if (w.stale) badges.push(el('span', { class: 'badge bad' }, 'STALE'));
    if (w.slow) badges.push(el('span', { class: 'badge warn' }, 'SLOW'));
    if (w.draining) badges.push(el('span', { class: 'badge' }, 'DRAINING'));
    const pct = w.slots.total > 0 ? 100 * w.slots.busy / w.slots.total : 0;
    const fill = el('div', { class: 'bar-fill' });
    fill.style.width = pct + '%'; // CSSOM, which the page's CSP allows (style attributes it does not)
    return el('tr', { 'data-worker': w.id, class: w.stale ? 'stale' : '' },
      el('td', { class: 'mono', title: w.host + ' pid ' + w.pid + ' · ' + w.version }, w.id, ' ', ...badges),
      el('td', { 'data-f': 'slots' },
        el('div', { class: 'bar small' }, fill),
        w.slots.busy + '/' + w.slots.total),
      el('td', { class: 'num', 'data-f': 'done' }, String(w.items.completed)),
      el('td', { class: 'num' + (w.items.failed > 0 ? ' bad' : '') }, String(w.items.failed)),
      el('td', { class: 'num' }, w.recent.items > 0 ? fmtDuration(w.recent.meanMs) : '–'),
      el('td', { class: 'num' }, w.recent.items > 0 ? fmtDuration(w.recent.p95Ms) : '–'),
      el('td', {}, fmtDuration(w.heartbeatAgeMs) + ' ago'));
  }));
  document.getElementById('no-workers').hidden = c.workers.length > 0;
}

async function poll() {
  try {
    const c = await api('GET', '/cluster?recent=20');
    const now = Date.now();
    renderStreams(c, now);
    renderWorkers(c);
    renderRuns(c.runs);
    const upd = document.getElementById('updated');
    upd.textContent = 'updated ' + new Date(c.time).toLocaleTimeString();
    upd.className = 'muted';
    if (c.errors) say('Partly unavailable: ' + c.errors.map((e) => e.section + ': ' + e.message).join('; '), true);
  } catch (e) {
    const upd = document.getElementById('updated');
    upd.textContent = 'coordinator unreachable: ' + e.message;
    upd.className = 'error';
  }
}

async function loop() {
  for (;;) {
    await poll();
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

document.addEventListener('DOMContentLoaded', loop);
