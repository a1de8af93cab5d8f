// The Observers console: a small single-page app over the ops server's JSON endpoints.
// No build step and no dependencies: the server embeds this file as it is.
'use strict';

const TOKEN_KEY = 'observers.ops-token';
const REFRESH_MS = 3000;

// ---- helpers ---------------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function secs(s) {
  if (s === null || s === undefined) return '–';
  if (s < 1) return `${num(s * 1000, s < 0.01 ? 2 : 1)} ms`;
  if (s < 120) return `${num(s, 1)} s`;
  if (s < 7200) return `${num(s / 60, 1)} min`;
  return `${num(s / 3600, 1)} h`;
}

function when(t) {
  if (!t) return '–';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? esc(t) : d.toLocaleString();
}

function pill(text, kind) {
  return `<span class="pill ${kind || ''}">${esc(text)}</span>`;
}

function json(v) {
  return `<pre>${esc(JSON.stringify(v, null, 2))}</pre>`;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

// ---- the ops token (kept for this tab only) --------------------------------------------------

const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

function authHeaders(t = token.get()) {
  return t ? { Authorization: `Bearer ${t}` } : {};
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJson(path) {
  const r = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new HttpError(r.status, body.error || `${r.status} ${r.statusText}`);
  return body;
}

// Asks for the token and checks it against the server (the same rule as retry and purge);
// resolves to the accepted token, or null when cancelled.
function askToken(why) {
  const dialog = $('#token-dialog');
  const input = $('#token-input');
  const err = $('#token-error');
  $('#token-why').textContent = why || 'Retry and purge need the ops token (OBSERVERS_OPS_TOKEN of observers run). It is kept for this tab only.';
  err.hidden = true;
  input.value = '';
  return new Promise((resolve) => {
    const done = (value) => {
      $('#token-form').onsubmit = null;
      $('#token-cancel').onclick = null;
      dialog.close();
      resolve(value);
    };
    $('#token-cancel').onclick = () => done(null);
    $('#token-forget').onclick = () => { token.clear(); updateTokenButton(); done(null); };
    $('#token-form').onsubmit = async (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      const r = await fetch('/api/ui/token', { method: 'POST', headers: authHeaders(t) }).catch(() => null);
      if (r && r.ok) {
        token.set(t);
        updateTokenButton();
        done(t);
        refreshNow();
        return;
      }
      const body = r ? await r.json().catch(() => ({})) : {};
      err.textContent = r && r.status === 401
        ? 'Refused: the ops server did not accept this token.'
        : `Refused: ${body.error || 'the ops server did not answer'}`;
      err.hidden = false;
      input.select();
    };
    dialog.showModal();
    input.focus();
  });
}

function updateTokenButton() {
  $('#token-button').textContent = token.get() ? 'Ops token ✓' : 'Ops token';
}

// A state-changing request: needs the token; asks for it when the tab has none.
async function act(path, body) {
  let t = token.get();
  if (!t) {
    t = await askToken();
    if (!t) return null;
  }
  const r = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...authHeaders(t) },
    body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) {
    token.clear();
    updateTokenButton();
    throw new HttpError(401, 'Refused: the ops server did not accept the token; enter it again.');
  }
  if (!r.ok) throw new HttpError(r.status, data.error || `${r.status} ${r.statusText}`);
  return data;
}

function confirmAction(title, text, label, danger) {
  const dialog = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  const ok = $('#confirm-ok');
  ok.textContent = label;
  ok.className = danger ? 'danger' : '';
  return new Promise((resolve) => {
    const done = (v) => { $('#confirm-form').onsubmit = null; dialog.close(); resolve(v); };
    $('#confirm-cancel').onclick = () => done(false);
    $('#confirm-form').onsubmit = (ev) => { ev.preventDefault(); done(true); };
    dialog.showModal();
  });
}

function notice(el, text, kind) {
  el.innerHTML = text ? `<div class="notice ${kind || ''}" role="status">${esc(text)}</div>` : '';
}

// ---- live status and the access banner --------------------------------------------------------

function setLive(ok, text) {
  const live = $('#live');
  live.className = `live ${ok ? '' : 'down'}`;
  live.textContent = text;
}

function showAccessProblem(e) {
  const banner = $('#banner');
  if (!e) {
    banner.hidden = true;
    return false;
  }
  if (e.status === 401) {
    banner.className = 'banner';
    banner.innerHTML = `This ops server needs the ops token to show data. <button type="button" id="banner-token">Enter token</button>`;
    $('#banner-token').onclick = () => askToken('This ops server needs its ops token (OBSERVERS_OPS_TOKEN) to show data. It is kept for this tab only.');
    banner.hidden = false;
    return true;
  }
  if (e.status === 403) {
    banner.className = 'banner bad';
    banner.textContent = e.message;
    banner.hidden = false;
    return true;
  }
  return false;
}

// ---- charts ---------------------------------------------------------------------------------

// A line of `points[key]` (times `scale`), with a dot on every point, so a lone value shows too.
function chart(points, key, cls, unit, scale = 1) {
  const w = 600;
  const hgt = 100;
  const values = points.map((p) => (p[key] === null || p[key] === undefined ? null : p[key] * scale));
  const max = Math.max(1e-9, ...values.filter((v) => v !== null));
  const n = Math.max(values.length - 1, 1);
  let d = '';
  let dots = '';
  values.forEach((v, i) => {
    if (v === null) return;
    const x = (i / n) * (w - 8) + 4;
    const y = hgt - 4 - (v / max) * (hgt - 8);
    d += `${d === '' || values[i - 1] === null ? 'M' : 'L'}${x.toFixed(1)},${y.toFixed(1)} `;
    dots += `M${x.toFixed(1)},${y.toFixed(1)} l0,0 `;
  });
  return `<div class="legend">up to ${esc(num(max, max < 10 ? 2 : 0))} ${esc(unit)}</div>
    <svg class="chart" viewBox="0 0 ${w} ${hgt}" preserveAspectRatio="none" role="img" aria-label="${esc(key)}">
    <line class="axis" x1="0" y1="${hgt - 4}" x2="${w}" y2="${hgt - 4}"/><path class="${cls}" d="${d}"/><path class="${cls} dots" d="${dots}"/></svg>`;
}

// ---- pages ----------------------------------------------------------------------------------

const pages = {};

pages.overview = {
  title: 'Overview',
  render(main) {
    main.innerHTML = `<h1>Overview</h1><div id="ov"></div>`;
  },
  async refresh() {
    const [status, history] = await Promise.all([getJson('/status'), getJson('/api/ui/history')]);
    const m = status.metrics || {};
    const db = status.database || {};
    const inst = status.instance || {};
    const listeners = db.listeners || [];
    const breakers = (status.breakers || []).filter((b) => b.state !== 'closed');
    const fallbacks = [...(m.fallback_active || [])];
    if (status.redis && status.redis.fallback_active) fallbacks.push(`redis (${status.redis.mode})`);
    const points = history.points || [];
    const last = points[points.length - 1];
    const lastP99 = [...points].reverse().find((p) => p.p99_seconds !== null && p.p99_seconds !== undefined);
    const group = status.group;
    let groupHtml = '<p class="muted">HA is off: this instance runs the only listener.</p>';
    if (group && group.error) groupHtml = `<p class="error">${esc(group.error)}</p>`;
    else if (group) {
      groupHtml = `<dl class="kv"><dt>group</dt><dd>${esc(group.group)}</dd><dt>leader</dt><dd>${esc(group.leader ? group.leader.holder : 'none')}</dd></dl>
      <div class="table-wrap"><table><thead><tr><th>instance</th><th>state</th><th>partitions</th><th>heartbeat</th></tr></thead><tbody>
      ${(group.instances || []).map((i) => `<tr><td>${esc(i.instance_id)}${i.is_leader ? ' ' + pill('leader', 'ok') : ''}</td><td>${esc(i.state)}</td><td>${esc((i.partitions || []).join(', ') || '–')}</td><td>${secs(i.heartbeat_age_secs)} ago</td></tr>`).join('')}
      </tbody></table></div>
      <div class="table-wrap"><table><thead><tr><th>lease</th><th>holder</th><th>epoch</th><th>expires in</th></tr></thead><tbody>
      ${(group.leases || []).map((l) => `<tr><td>${esc(l.name)}</td><td>${esc(l.holder)}</td><td>${esc(l.epoch)}</td><td>${secs(l.expires_in_secs)}</td></tr>`).join('')}
      </tbody></table></div>`;
    }
    $('#ov').innerHTML = `
      <div class="grid">
        <section class="panel" id="ov-instance"><h2>Instance</h2><dl class="kv">
          <dt>instance</dt><dd>${esc(inst.instance_id)}</dd><dt>listener</dt><dd>${esc(inst.listener_id)}</dd>
          <dt>version</dt><dd>${esc(inst.version)}</dd><dt>up</dt><dd>${secs(status.uptime_seconds)}</dd>
          <dt>observers</dt><dd>${esc(inst.observers)}</dd></dl></section>
        <section class="panel"><h2>Events per second</h2><div class="figure" id="ov-rate">${num(last ? last.events_per_second : status.events_per_second, 1)} <small>now · ${num(status.events_per_second, 1)} over the last minute</small></div>
          ${chart(points, 'events_per_second', 'line', 'events/s')}</section>
        <section class="panel"><h2>Processing p99</h2><div class="figure">${lastP99 ? secs(lastP99.p99_seconds) : '–'} <small>since start ${secs(m.event_processing_p99_seconds)}</small></div>
          ${chart(points, 'p99_seconds', 'line2', 'ms', 1000)}<div class="legend">${points.length < 2 ? `collecting: one point every ${esc(history.every_seconds)} s` : `every ${esc(history.every_seconds)} s over the last ${esc(Math.max(1, Math.round(points.length * history.every_seconds / 60)))} min`}</div></section>
        <section class="panel"><h2>Dead letters</h2><div class="figure"><a href="/ui/dlq" data-nav id="ov-dlq">${num(db.dlq_pending)}</a> <small>pending · ${num(db.dlq_resolved)} resolved</small></div>
          <p class="muted">${num(m.events_processed)} events processed, ${num(m.events_failed)} with a failed action, ${num(m.retries)} retries.</p></section>
      </div>
      <section class="panel"><h2>Listeners</h2>${db.error ? `<p class="error">${esc(db.error)}</p>` : ''}
        <div class="table-wrap"><table id="ov-listeners"><thead><tr><th>listener</th><th>cursor</th><th>backlog</th><th>lag</th><th class="hide-narrow">processed</th><th class="hide-narrow">last save</th><th>errors</th></tr></thead><tbody>
        ${listeners.map((l) => `<tr><td>${esc(l.listener_id)}</td><td class="mono">${esc(l.cursor && typeof l.cursor === 'object' ? l.cursor.id : l.cursor)}</td><td>${num(l.backlog)}</td><td>${secs(l.lag_seconds)}</td><td class="hide-narrow">${num(l.events_processed)}</td><td class="hide-narrow">${when(l.last_save)}</td><td>${l.consecutive_errors ? `<span class="error">${esc(l.consecutive_errors)}: ${esc(l.last_error)}</span>` : pill('ok', 'ok')}</td></tr>`).join('') || '<tr><td colspan="7" class="muted">no checkpoint saved yet</td></tr>'}
        </tbody></table></div><p class="muted">Read horizon wait: ${secs(db.cutoff_lag_seconds)}.</p></section>
      <div class="grid">
        <section class="panel"><h2>Circuit breakers not closed</h2>${breakers.length ? `<div class="table-wrap"><table><thead><tr><th>endpoint</th><th>state</th><th>failure rate</th></tr></thead><tbody>${breakers.map((b) => `<tr><td>${esc(b.endpoint)}</td><td>${pill(b.state, 'bad')}${b.forced_open ? ' (forced)' : ''}</td><td>${num(b.failure_rate * 100)} %</td></tr>`).join('')}</tbody></table></div>` : '<p class="ok">All closed.</p>'}</section>
        <section class="panel"><h2>Fallbacks active</h2>${fallbacks.length ? fallbacks.map((f) => pill(f, 'warn')).join(' ') : '<p class="ok">None: every store runs on its configured backend.</p>'}</section>
        <section class="panel"><h2>HA group</h2>${groupHtml}</section>
      </div>`;
  },
};

pages.events = {
  title: 'Events',
  render(main) {
    const p = new URLSearchParams(location.search);
    const v = (k) => esc(p.get(k) || '');
    main.innerHTML = `<h1>Events</h1>
      <section class="panel"><form class="filters" id="ev-form">
        <label>Text <input name="text" value="${v('text')}" placeholder="words, errors, values"></label>
        <label>Entity type <input name="entity_type" value="${v('entity_type')}" placeholder="Order"></label>
        <label>Entity id <input name="entity_id" value="${v('entity_id')}"></label>
        <label>Tenant <input name="tenant" value="${v('tenant')}"></label>
        <label>Since <input name="since" type="datetime-local" step="1" value="${v('since')}"></label>
        <label>Until <input name="until" type="datetime-local" step="1" value="${v('until')}"></label>
        <button type="submit">Search</button></form></section>
      <section class="panel"><div id="ev-summary" class="muted"></div><div class="table-wrap"><table id="ev-table"><thead><tr><th>id</th><th>time</th><th>entity</th><th>event</th><th class="hide-narrow">tenant</th><th>observers</th><th>outcome</th></tr></thead><tbody></tbody></table></div>
      <div class="pager"><button type="button" class="ghost" id="ev-prev">Newer</button><span id="ev-page"></span><button type="button" class="ghost" id="ev-next">Older</button></div></section>`;
    $('#ev-form').onsubmit = (ev) => {
      ev.preventDefault();
      const q = {};
      for (const [k, val] of new FormData(ev.target)) q[k] = val;
      navigate(`/ui/events${query(q)}`, true);
    };
    const page = Number(p.get('page') || 1);
    $('#ev-prev').onclick = () => { p.set('page', Math.max(1, page - 1)); navigate(`/ui/events?${p}`, true); };
    $('#ev-next').onclick = () => { p.set('page', page + 1); navigate(`/ui/events?${p}`, true); };
  },
  async refresh() {
    const p = new URLSearchParams(location.search);
    const iso = (v) => (v ? new Date(v).toISOString() : '');
    const page = Number(p.get('page') || 1);
    const q = {
      text: p.get('text'), entity_type: p.get('entity_type'), entity_id: p.get('entity_id'), tenant: p.get('tenant'),
      since: iso(p.get('since')), until: iso(p.get('until')), page, per_page: 25, facets: 'false',
    };
    let res;
    try {
      res = await getJson(`/api/observers/search${query(q)}`);
    } catch (e) {
      if (e.status === 404) {
        $('#ev-summary').innerHTML = '<span class="warn">The audit trail is off on this instance: set <code>[search] backend = "postgres"</code> (or "elasticsearch") to keep one.</span>';
        return;
      }
      throw e;
    }
    $('#ev-summary').textContent = `${num(res.total)}${res.total_exact === false ? '+' : ''} matching events, newest first`;
    $('#ev-page').textContent = `page ${page}`;
    $('#ev-prev').disabled = page <= 1;
    $('#ev-next').disabled = page * 25 >= res.total;
    $('#ev-table tbody').innerHTML = res.results.map((e) => {
      const failed = (e.failed_actions || []).length;
      const outcome = failed ? pill(`${failed} failed`, 'bad') : (e.matched_observers || []).length ? pill(`${(e.successful_actions || []).length} ok`, 'ok') : pill('no match');
      const href = `/ui/events/${e.event_id}${query({ entity_type: e.entity_type, entity_id: e.entity_id })}`;
      return `<tr class="clickable" data-href="${esc(href)}"><td><a href="${esc(href)}" data-nav>${esc(e.event_id)}</a></td><td>${when(e.timestamp)}</td><td>${esc(e.entity_type)}:${esc(e.entity_id)}</td><td>${esc(e.event_type)}</td><td class="hide-narrow">${esc(e.tenant_id || '')}</td><td>${esc((e.matched_observers || []).join(', '))}</td><td>${outcome}</td></tr>`;
    }).join('') || '<tr><td colspan="7" class="muted">no events match</td></tr>';
  },
};

pages.eventDetail = {
  title: 'Event',
  render(main, [id]) {
    main.innerHTML = `<p><a href="/ui/events" data-nav>← Events</a></p><h1>Event ${esc(id)}</h1><div id="evd"></div>`;
  },
  async refresh([id]) {
    const p = new URLSearchParams(location.search);
    const res = await getJson(`/api/observers/search${query({ entity_type: p.get('entity_type'), entity_id: p.get('entity_id'), per_page: 1000, facets: 'false' })}`);
    const e = res.results.find((r) => String(r.event_id) === id);
    if (!e) {
      $('#evd').innerHTML = '<p class="muted">This event is not in the audit trail (yet, or any more). Open it from the Events search.</p>';
      return;
    }
    let dlq = [];
    try {
      dlq = (await getJson(`/api/ui/dlq${query({ entity_type: e.entity_type, status: 'all', limit: 1000 })}`)).items.filter((i) => String(i.event.id) === id);
    } catch (_) { /* the DLQ may not be wired */ }
    const ok = new Set(e.successful_actions || []);
    const failed = new Set(e.failed_actions || []);
    $('#evd').innerHTML = `<div class="grid"><section class="panel"><dl class="kv">
        <dt>entity</dt><dd>${esc(e.entity_type)}:${esc(e.entity_id)}</dd><dt>event</dt><dd>${esc(e.event_type)}</dd>
        <dt>time</dt><dd>${when(e.timestamp)}</dd><dt>tenant</dt><dd>${esc(e.tenant_id || '–')}</dd><dt>user</dt><dd>${esc(e.user_id || '–')}</dd>
        <dt>took</dt><dd>${num(e.duration_ms)} ms</dd></dl></section>
      <section class="panel"><h2>Matched observers</h2>${(e.matched_observers || []).map((o) => `<div>${esc(o)}</div>`).join('') || '<p class="muted">none</p>'}</section></div>
      <section class="panel"><h2>Actions</h2><div class="table-wrap"><table id="evd-actions"><thead><tr><th>action</th><th>outcome</th></tr></thead><tbody>
        ${[...ok].map((a) => `<tr><td>${esc(a)}</td><td>${pill('delivered', 'ok')}</td></tr>`).join('')}
        ${[...failed].map((a) => `<tr><td>${esc(a)}</td><td>${pill('failed', 'bad')}</td></tr>`).join('')}
        </tbody></table></div>
        ${(e.errors || []).map((x) => `<p class="error">${esc(x)}</p>`).join('')}
        ${dlq.length ? `<h2>Dead letters of this event</h2>${dlq.map((i) => `<div><a href="/ui/dlq/${i.id}" data-nav>#${i.id}</a> ${esc(i.observer)} ${esc(i.action_type)}#${esc(i.action_index)} ${pill(i.status, i.status === 'pending' ? 'bad' : 'ok')}</div>`).join('')}` : ''}</section>
      <section class="panel"><h2>Row</h2>${json(e.data)}</section>`;
  },
};

function dlqFilters() {
  const p = new URLSearchParams(location.search);
  return { status: p.get('status') || 'pending', observer: p.get('observer') || '', entity_type: p.get('entity_type') || '', action_type: p.get('action_type') || '' };
}

function retrySummary(r) {
  if (!r) return '';
  let text = `Retried ${r.retried}: ${r.delivered} delivered, ${r.failed} still failing.`;
  const errors = (r.items || []).filter((i) => !i.ok).map((i) => `#${i.id}: ${i.error}`);
  if (errors.length) text += ` ${errors.slice(0, 3).join('; ')}`;
  return text;
}

// Sends a retry, then again for the items the server left for lack of time.
async function retryAll(body) {
  let r = await act('/api/ui/dlq/retry', body);
  if (!r) return null;
  const total = { ...r, items: [...r.items] };
  while (r.not_attempted && r.not_attempted.length) {
    r = await act('/api/ui/dlq/retry', { ids: r.not_attempted });
    if (!r) break;
    total.retried += r.retried; total.delivered += r.delivered; total.failed += r.failed; total.items.push(...r.items);
  }
  return total;
}

pages.dlq = {
  title: 'Dead letters',
  selected: new Set(),
  render(main) {
    const f = dlqFilters();
    this.selected = new Set();
    main.innerHTML = `<h1>Dead letters</h1>
      <section class="panel"><form class="filters" id="dlq-form">
        <label>Status <select name="status">${['pending', 'resolved', 'all'].map((s) => `<option ${s === f.status ? 'selected' : ''}>${s}</option>`).join('')}</select></label>
        <label>Observer <input name="observer" value="${esc(f.observer)}"></label>
        <label>Entity type <input name="entity_type" value="${esc(f.entity_type)}"></label>
        <label>Action type <input name="action_type" value="${esc(f.action_type)}" placeholder="webhook"></label>
        <button type="submit">Filter</button></form></section>
      <section class="panel"><div id="dlq-counts" class="muted"></div>
        <div class="actions">
          <button type="button" id="dlq-retry-selected" disabled>Retry selected</button>
          <button type="button" id="dlq-purge-selected" class="danger" disabled>Purge selected</button>
          <button type="button" id="dlq-retry-all" class="ghost">Retry all matching</button>
          <button type="button" id="dlq-purge-all" class="ghost">Purge all matching</button>
        </div><div id="dlq-notice"></div>
        <div class="table-wrap"><table id="dlq-table"><thead><tr><th><input type="checkbox" id="dlq-all" aria-label="select all"></th><th>id</th><th class="hide-narrow">created</th><th>observer</th><th>entity</th><th>status</th><th class="hide-narrow">tries</th><th>error</th></tr></thead><tbody></tbody></table></div></section>`;
    $('#dlq-form').onsubmit = (ev) => {
      ev.preventDefault();
      const q = {};
      for (const [k, val] of new FormData(ev.target)) q[k] = val;
      navigate(`/ui/dlq${query(q)}`, true);
    };
    const out = $('#dlq-notice');
    const run = async (fn) => {
      try { notice(out, await fn()); } catch (e) { notice(out, e.message, 'bad'); }
      refreshNow();
    };
    $('#dlq-all').onchange = (ev) => {
      $$('#dlq-table tbody input[type=checkbox]').forEach((c) => { c.checked = ev.target.checked; c.onchange(); });
    };
    $('#dlq-retry-selected').onclick = () => run(async () => {
      const ids = [...this.selected];
      if (!(await confirmAction('Retry selected items?', `Run the failed action of ${ids.length} item(s) again now.`, 'Retry'))) return '';
      return retrySummary(await retryAll({ ids }));
    });
    $('#dlq-purge-selected').onclick = () => run(async () => {
      const ids = [...this.selected];
      if (!(await confirmAction('Purge selected items?', `Delete ${ids.length} item(s) from the dead-letter queue. This cannot be undone.`, 'Purge', true))) return '';
      const r = await act('/api/ui/dlq/purge', { ids });
      this.selected.clear();
      return r ? `Purged ${r.purged} item(s).` : '';
    });
    $('#dlq-retry-all').onclick = () => run(async () => {
      const m = dlqFilters();
      if (m.status === 'resolved') return 'Resolved items were delivered already; nothing to retry.';
      if (!(await confirmAction('Retry all matching items?', `Run the failed action of every pending item matching ${describe(m)} again now.`, 'Retry all'))) return '';
      return retrySummary(await retryAll({ matching: { ...m, status: 'pending' } }));
    });
    $('#dlq-purge-all').onclick = () => run(async () => {
      const m = dlqFilters();
      if (!(await confirmAction('Purge all matching items?', `Delete every ${m.status === 'all' ? '' : m.status + ' '}item matching ${describe(m)}. This cannot be undone.`, 'Purge all', true))) return '';
      const r = await act('/api/ui/dlq/purge', { matching: m });
      return r ? `Purged ${r.purged} item(s).` : '';
    });
  },
  async refresh() {
    const f = dlqFilters();
    const res = await getJson(`/api/ui/dlq${query({ ...f, limit: 200 })}`);
    $('#dlq-counts').textContent = `${num(res.pending)} pending, ${num(res.resolved)} resolved in the queue; showing ${res.items.length}${res.items.length >= res.limit ? ` (the oldest ${res.limit})` : ''}.`;
    const ids = new Set(res.items.map((i) => i.id));
    for (const id of [...this.selected]) if (!ids.has(id)) this.selected.delete(id);
    $('#dlq-table tbody').innerHTML = res.items.map((i) => `<tr data-id="${i.id}">
      <td><input type="checkbox" value="${i.id}" ${this.selected.has(i.id) ? 'checked' : ''} aria-label="select ${i.id}"></td>
      <td><a href="/ui/dlq/${i.id}" data-nav>${i.id}</a></td><td class="hide-narrow">${when(i.created_at)}</td>
      <td>${esc(i.observer || '(source)')} <span class="muted">${esc(i.action_type)}#${esc(i.action_index)}</span></td>
      <td>${esc(i.event.entity_type)}:${esc(i.event.entity_id)}</td><td>${pill(i.status, i.status === 'pending' ? 'bad' : 'ok')}</td>
      <td class="hide-narrow">${esc(i.attempts)}+${esc(i.retry_count)}</td><td class="trunc" title="${esc(i.error)}"><span class="mono">${esc(i.error_code)}</span> ${esc(i.error)}</td></tr>`).join('')
      || '<tr><td colspan="8" class="muted">no items match</td></tr>';
    $$('#dlq-table tbody input[type=checkbox]').forEach((c) => {
      c.onchange = () => { if (c.checked) this.selected.add(Number(c.value)); else this.selected.delete(Number(c.value)); this.buttons(); };
    });
    this.buttons();
  },
  buttons() {
    $('#dlq-retry-selected').disabled = this.selected.size === 0;
    $('#dlq-purge-selected').disabled = this.selected.size === 0;
    $('#dlq-retry-selected').textContent = `Retry selected (${this.selected.size})`;
    $('#dlq-purge-selected').textContent = `Purge selected (${this.selected.size})`;
  },
};

function describe(m) {
  const parts = ['observer', 'entity_type', 'action_type'].filter((k) => m[k]).map((k) => `${k} = ${m[k]}`);
  return parts.length ? parts.join(', ') : 'the current filter (everything)';
}

pages.dlqDetail = {
  title: 'Dead letter',
  render(main, [id]) {
    main.innerHTML = `<p><a href="/ui/dlq" data-nav>← Dead letters</a></p><h1>Dead letter ${esc(id)}</h1>
      <div class="actions"><button type="button" id="dlqd-retry">Retry</button><button type="button" id="dlqd-purge" class="danger">Purge</button></div>
      <div id="dlqd-notice"></div><div id="dlqd"></div>`;
    const out = $('#dlqd-notice');
    $('#dlqd-retry').onclick = async () => {
      try {
        if (!(await confirmAction(`Retry item ${id}?`, 'Run its failed action again now, with the running configuration.', 'Retry'))) return;
        const r = await retryAll({ ids: [Number(id)] });
        if (r) notice(out, r.retried === 0 ? 'Nothing to retry: the item is resolved already.' : r.delivered ? 'Delivered: the item is resolved.' : retrySummary(r), r && r.failed ? 'bad' : 'ok');
      } catch (e) { notice(out, e.message, 'bad'); }
      refreshNow();
    };
    $('#dlqd-purge').onclick = async () => {
      try {
        if (!(await confirmAction(`Purge item ${id}?`, 'Delete it from the dead-letter queue. This cannot be undone.', 'Purge', true))) return;
        const r = await act('/api/ui/dlq/purge', { ids: [Number(id)] });
        if (r) { navigate('/ui/dlq', true); }
      } catch (e) { notice(out, e.message, 'bad'); }
    };
  },
  async refresh([id]) {
    let i;
    try {
      i = await getJson(`/api/ui/dlq/${id}`);
    } catch (e) {
      if (e.status === 404) { $('#dlqd').innerHTML = `<p class="muted">${esc(e.message)}</p>`; return; }
      throw e;
    }
    const ev = i.event;
    $('#dlqd-retry').disabled = i.status !== 'pending';
    $('#dlqd').innerHTML = `<div class="grid"><section class="panel"><h2>Status</h2><div class="figure" id="dlqd-status">${pill(i.status, i.status === 'pending' ? 'bad' : 'ok')}</div>
        <dl class="kv"><dt>observer</dt><dd>${esc(i.observer || '(source row)')}</dd><dt>action</dt><dd>${esc(i.action_type)} #${esc(i.action_index)}</dd>
        <dt>attempts</dt><dd>${esc(i.attempts)} then ${esc(i.retry_count)} retried</dd><dt>created</dt><dd>${when(i.created_at)}</dd><dt>last retry</dt><dd>${when(i.last_retry_at)}</dd></dl></section>
      <section class="panel"><h2>Error</h2><p class="mono">${esc(i.error_code)}</p><p class="error" id="dlqd-error">${esc(i.error)}</p></section>
      <section class="panel"><h2>Event</h2><dl class="kv"><dt>event</dt><dd><a href="/ui/events/${esc(ev.id)}${query({ entity_type: ev.entity_type, entity_id: ev.entity_id })}" data-nav>${esc(ev.id)}</a> ${esc(ev.kind || ev.event_type || '')}</dd>
        <dt>entity</dt><dd>${esc(ev.entity_type)}:${esc(ev.entity_id)}</dd><dt>tenant</dt><dd>${esc(ev.tenant_id || '–')}</dd><dt>time</dt><dd>${when(ev.timestamp)}</dd></dl></section></div>
      <section class="panel"><h2>Payload</h2>${json(ev)}</section>`;
  },
};

pages.jobs = {
  title: 'Jobs',
  selected: new Set(),
  render(main) {
    const p = new URLSearchParams(location.search);
    const status = p.get('status') || 'failed';
    this.selected = new Set();
    main.innerHTML = `<h1>Jobs</h1><div class="grid" id="jobs-stats"></div>
      <section class="panel"><h2>Queues</h2><div class="table-wrap"><table id="jobs-queues"><thead><tr><th>queue</th><th>pending</th><th>processing</th><th>failed</th><th>oldest due</th></tr></thead><tbody></tbody></table></div></section>
      <section class="panel"><form class="filters" id="jobs-form"><label>Status <select name="status">${['failed', 'pending', 'processing', 'completed', 'all'].map((s) => `<option ${s === status ? 'selected' : ''}>${s}</option>`).join('')}</select></label></form>
        <div class="actions"><button type="button" id="jobs-retry-selected" disabled>Retry selected</button><button type="button" id="jobs-retry-all" class="ghost">Retry all failed</button></div><div id="jobs-notice"></div>
        <div class="table-wrap"><table id="jobs-table"><thead><tr><th></th><th>id</th><th>queue</th><th>kind</th><th>status</th><th>attempts</th><th class="hide-narrow">run at</th><th>last error</th></tr></thead><tbody></tbody></table></div></section>`;
    $('#jobs-form select').onchange = (ev) => navigate(`/ui/jobs${query({ status: ev.target.value })}`, true);
    const out = $('#jobs-notice');
    const retry = async (body, text) => {
      try {
        if (!(await confirmAction('Retry failed jobs?', text, 'Retry'))) return;
        const r = await act('/api/ui/jobs/retry', body);
        if (r) notice(out, `${r.retried} failed job(s) back to pending.`, 'ok');
        this.selected.clear();
      } catch (e) { notice(out, e.message, 'bad'); }
      refreshNow();
    };
    $('#jobs-retry-selected').onclick = () => retry({ ids: [...this.selected] }, `Put ${this.selected.size} failed job(s) back to pending, attempts reset.`);
    $('#jobs-retry-all').onclick = () => retry({ all: true }, 'Put every failed job back to pending, attempts reset.');
  },
  async refresh() {
    const status = new URLSearchParams(location.search).get('status') || 'failed';
    const [res, st] = await Promise.all([getJson(`/api/ui/jobs${query({ status, limit: 200 })}`), getJson('/status')]);
    const s = res.stats;
    $('#jobs-stats').innerHTML = ['pending', 'processing', 'completed', 'failed'].map((k) => `<section class="panel"><h2>${k}</h2><div class="figure ${k === 'failed' && s[k] ? 'error' : ''}">${num(s[k])}</div></section>`).join('')
      + `<section class="panel"><h2>mean run</h2><div class="figure">${s.avg_run_ms === null ? '–' : `${num(s.avg_run_ms, 1)} <small>ms</small>`}</div></section>`;
    const queues = (st.database && st.database.jobs) || [];
    $('#jobs-queues tbody').innerHTML = queues.map((q) => `<tr><td>${esc(q.queue)}</td><td>${num(q.pending)}</td><td>${num(q.processing)}</td><td>${num(q.failed)}</td><td>${secs(q.oldest_pending_age_seconds)}</td></tr>`).join('') || '<tr><td colspan="5" class="muted">no live jobs</td></tr>';
    const ids = new Set(res.jobs.map((j) => j.id));
    for (const id of [...this.selected]) if (!ids.has(id)) this.selected.delete(id);
    $('#jobs-table tbody').innerHTML = res.jobs.map((j) => `<tr><td>${j.status === 'failed' ? `<input type="checkbox" value="${j.id}" ${this.selected.has(j.id) ? 'checked' : ''} aria-label="select ${j.id}">` : ''}</td>
      <td>${j.id}</td><td>${esc(j.queue)}</td><td>${esc(j.kind)}</td><td>${pill(j.status, j.status === 'failed' ? 'bad' : j.status === 'completed' ? 'ok' : '')}</td><td>${j.attempts}/${j.max_attempts}</td>
      <td class="hide-narrow">${when(j.run_at)}</td><td class="trunc" title="${esc(j.last_error || '')}">${esc(j.last_error || '')}</td></tr>`).join('') || `<tr><td colspan="8" class="muted">no ${esc(status === 'all' ? '' : status)} jobs</td></tr>`;
    $$('#jobs-table tbody input[type=checkbox]').forEach((c) => {
      c.onchange = () => { if (c.checked) this.selected.add(Number(c.value)); else this.selected.delete(Number(c.value)); $('#jobs-retry-selected').disabled = this.selected.size === 0; };
    });
    $('#jobs-retry-selected').disabled = this.selected.size === 0;
  },
};

pages.notFound = {
  title: 'Not found',
  render(main) { main.innerHTML = '<h1>Not found</h1><p><a href="/ui/" data-nav>Overview</a></p>'; },
  async refresh() {},
};

// ---- routing and refresh ------------------------------------------------------------------------

const routes = [
  [/^\/ui\/?$/, 'overview', 'overview'],
  [/^\/ui\/events\/?$/, 'events', 'events'],
  [/^\/ui\/events\/(\d+)\/?$/, 'eventDetail', 'events'],
  [/^\/ui\/dlq\/?$/, 'dlq', 'dlq'],
  [/^\/ui\/dlq\/(\d+)\/?$/, 'dlqDetail', 'dlq'],
  [/^\/ui\/jobs\/?$/, 'jobs', 'jobs'],
];

let current = null;
let refreshing = false;

function route() {
  for (const [re, name, nav] of routes) {
    const m = location.pathname.match(re);
    if (m) return { page: pages[name], params: m.slice(1), nav };
  }
  return { page: pages.notFound, params: [], nav: '' };
}

async function refreshNow() {
  if (!current || refreshing) return;
  refreshing = true;
  const mine = current;
  try {
    await mine.page.refresh(mine.params);
    if (mine === current) {
      showAccessProblem(null);
      setLive(true, `live · ${new Date().toLocaleTimeString()}`);
    }
  } catch (e) {
    if (mine === current) {
      setLive(false, e.status === 401 || e.status === 403 ? 'no access' : 'offline');
      if (!showAccessProblem(e)) {
        const banner = $('#banner');
        banner.className = 'banner bad';
        banner.textContent = `Could not refresh: ${e.message}`;
        banner.hidden = false;
      }
    }
  } finally {
    refreshing = false;
  }
}

function show() {
  current = route();
  document.title = `${current.page.title} · Observers`;
  $$('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === current.nav));
  current.page.render($('#main'), current.params);
  refreshNow();
}

function navigate(url, push) {
  if (push) history.pushState(null, '', url);
  show();
}

document.addEventListener('click', (ev) => {
  const row = ev.target.closest('tr[data-href]');
  const a = ev.target.closest('a[href]');
  const href = a ? a.getAttribute('href') : row && !ev.target.closest('input,button') ? row.dataset.href : null;
  if (!href || !href.startsWith('/ui') || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  navigate(href, true);
});

window.addEventListener('popstate', show);
document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshNow(); });

document.addEventListener('DOMContentLoaded', () => {
  $('#token-button').onclick = () => askToken();
  updateTokenButton();
  show();
  setInterval(() => { if (!document.hidden) refreshNow(); }, REFRESH_MS);
});
