// The console's Dead letters and Jobs pages (loaded after console.js, whose helpers they use).
'use strict';

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

