// The console's Overview and Events pages (loaded after console.js, whose helpers they use).
'use strict';

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

