// The Observers console: a small single-page app over the ops server's JSON endpoints. This file
// holds the shared pieces (requests, the ops token, dialogs, routing and the live refresh);
// pages.js and queues.js add the pages. No build step and no dependencies: the server embeds
// these files as they are.
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

// ---- pages (added by pages.js and queues.js) ------------------------------------------------

const pages = {};

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
