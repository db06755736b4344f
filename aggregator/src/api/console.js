// The operator console's script, served by the aggregator itself: draws each group's capacity
// and its policies' values over the window (the query API, the vigil_scaling_* series),
// refreshes the page the aggregator renders, and sets silences and pauses through the admin
// API with the token the operator gives (kept in this tab's session storage only).
'use strict';
(() => {
  const $ = (s, e = document) => e.querySelector(s);
  const $$ = (s, e = document) => Array.from(e.querySelectorAll(s));
  const SVG = 'http://www.w3.org/2000/svg';
  const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf'];
  const REFRESH_MS = 10000;

  const token = $('#token');
  token.value = sessionStorage.getItem('vigil-admin-token') || '';
  token.addEventListener('input', () => sessionStorage.setItem('vigil-admin-token', token.value));

  // An admin call: the token as a bearer header when one is given; the error text otherwise.
  async function admin(method, path, body) {
    const headers = { 'Content-Type': 'application/json' };
    if (token.value) headers.Authorization = 'Bearer ' + token.value;
    const r = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) {
      let msg = text;
      try { const j = JSON.parse(text); msg = j.error || JSON.stringify(j); } catch (_) { /* plain text */ }
      throw new Error(r.status === 401
        ? 'refused (401): give the admin token above'
        : `${r.status}: ${msg}`);
    }
    return text ? JSON.parse(text) : null;
  }

  // "90s", "30m", "2h", "1d", "1h30m" in milliseconds; NaN for anything else.
  function duration(s) {
    const m = String(s).trim().match(/^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/);
    if (!m || !String(s).trim()) return NaN;
    const [, d, h, mi, se] = m.map((x) => Number(x || 0));
    return (((d * 24 + h) * 60 + mi) * 60 + se) * 1000;
  }

  // ---- the action dialog ----
  const dialog = $('#act');
  let pending = null;

  function field(label, name, value, required) {
    const l = document.createElement('label');
    l.textContent = label + ' ';
    const i = document.createElement('input');
    i.type = 'text';
    i.name = name;
    i.value = value || '';
    i.required = !!required;
    l.appendChild(i);
    return l;
  }

  function open(title, fields, run) {
    $('#act-title').textContent = title;
    const box = $('#act-fields');
    box.replaceChildren(...fields);
    const status = $('#act-status');
    status.textContent = '';
    status.className = '';
    pending = run;
    dialog.showModal();
    const first = box.querySelector('input[type=text]');
    if (first) first.focus();
  }

  const form = dialog.querySelector('form');
  $('#act-cancel').addEventListener('click', () => dialog.close());
  // Apply, or Enter in a field: the form's submit.
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!form.reportValidity() || !pending) return;
    const status = $('#act-status');
    status.className = '';
    status.textContent = 'sending…';
    try {
      const done = await pending(new FormData(form));
      status.textContent = done || 'done';
      dialog.close();
      refresh();
    } catch (e) {
      status.className = 'bad';
      status.textContent = e.message;
    }
  });

  function author() {
    return sessionStorage.getItem('vigil-author') || '';
  }

  function remember(data) {
    if (data.get('author')) sessionStorage.setItem('vigil-author', data.get('author'));
  }

  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-act]');
    if (!b) return;
    const d = b.dataset;
    if (d.act === 'pause') {
      const what = d.kind === 'scaling' ? `scaling of ${d.name}` : `replacement policy ${d.name}`;
      open(`Pause the ${what}`, [
        field('Reason', 'reason', '', true),
        field('Author', 'author', author(), false),
        field('Until (a time or a duration: 2h; empty: until resumed)', 'until', '', false),
      ], async (data) => {
        remember(data);
        const body = { reason: data.get('reason'), author: data.get('author') };
        if (data.get('until')) body.until = data.get('until');
        await admin('POST', `/api/v1/${d.kind}/${encodeURIComponent(d.name)}/pause`, body);
        return `paused the ${what}`;
      });
    } else if (d.act === 'resume') {
      await direct(() => admin('POST', `/api/v1/${d.kind}/${encodeURIComponent(d.name)}/resume`, {}));
    } else if (d.act === 'expire') {
      await direct(() => admin('DELETE', `/api/v2/silence/${encodeURIComponent(d.id)}`));
    } else if (d.act === 'silence') {
      const labels = JSON.parse(d.labels);
      const boxes = Object.keys(labels).sort().map((k) => {
        const l = document.createElement('label');
        const c = document.createElement('input');
        c.type = 'checkbox';
        c.name = 'm:' + k;
        c.checked = true;
        l.appendChild(c);
        l.appendChild(document.createTextNode(` ${k}="${labels[k]}"`));
        return l;
      });
      open(`Silence ${labels.alertname || 'this alert'}`, [
        ...boxes,
        field('For (a duration)', 'duration', '2h', true),
        field('Author', 'author', author(), true),
        field('Comment', 'comment', '', true),
      ], async (data) => {
        remember(data);
        const ms = duration(data.get('duration'));
        if (!(ms > 0)) throw new Error('the duration is not one: say 30m, 2h or 1d');
        const matchers = Object.keys(labels).filter((k) => data.get('m:' + k))
          .map((k) => ({ name: k, value: labels[k], isRegex: false, isEqual: true }));
        if (!matchers.length) throw new Error('keep at least one label to match');
        // The aggregator's clock, not this computer's (which may be off).
        const now = Date.now() + skew;
        const r = await admin('POST', '/api/v2/silences', {
          matchers,
          startsAt: new Date(now).toISOString(),
          endsAt: new Date(now + ms).toISOString(),
          createdBy: data.get('author'),
          comment: data.get('comment'),
        });
        return `silence ${r.silenceID} set`;
      });
    }
  });

  // Resume and expire need no fields: done at once, the outcome said in the page's banner.
  async function direct(call) {
    const banner = $('#banner') || document.body.insertBefore(document.createElement('p'), $('#live'));
    banner.id = 'banner';
    banner.setAttribute('role', 'status');
    try {
      await call();
      banner.className = '';
      banner.textContent = 'done';
      refresh();
    } catch (e) {
      banner.className = 'bad';
      banner.textContent = e.message;
    }
  }

  // ---- charts ----
  async function range(query, start, end, step) {
    const q = new URLSearchParams({ query, start: start / 1000, end: end / 1000, step: step / 1000 });
    const r = await fetch('/api/v1/query_range?' + q, { credentials: 'same-origin' });
    if (!r.ok) throw new Error(`${r.status} for ${query}`);
    const j = await r.json();
    return j.data.result.map((s) => ({
      metric: s.metric,
      points: s.values.map(([t, v]) => [t * 1000, Number(v)]).filter(([, v]) => Number.isFinite(v)),
    }));
  }

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function hhmm(ms) {
    return new Date(ms).toISOString().slice(11, 16) + 'Z';
  }

  // One chart: series [{name, points}], over [start, end]; a gap over two steps breaks a line.
  function chart(title, series, start, end, step) {
    const W = 640, H = 170, L = 44, R = 8, T = 18, B = 22;
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' });
    svg.appendChild(el('title', {}, title));
    svg.appendChild(el('text', { x: L, y: 12 }, title));
    const all = series.flatMap((s) => s.points.map(([, v]) => v));
    let max = Math.max(0, ...all);
    max = max > 1e-6 ? max * 1.1 : 1;
    const min = Math.min(0, ...all);
    const x = (t) => L + ((t - start) / Math.max(1, end - start)) * (W - L - R);
    const y = (v) => T + (1 - (v - min) / (max - min)) * (H - T - B);
    svg.appendChild(el('line', { class: 'axis', x1: L, y1: y(min), x2: W - R, y2: y(min) }));
    svg.appendChild(el('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
    for (const v of [min, (min + max) / 2, max]) {
      const shown = Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
      svg.appendChild(el('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end' }, shown));
    }
    svg.appendChild(el('text', { x: L, y: H - 6 }, hhmm(start)));
    svg.appendChild(el('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }, hhmm(end)));
    if (!all.length) {
      svg.appendChild(el('text', { class: 'empty', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data in the window yet'));
    }
    const legend = document.createElement('div');
    legend.className = 'legend';
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const runs = [];
      for (const p of s.points) {
        const last = runs.length ? runs[runs.length - 1] : null;
        if (last && p[0] - last[last.length - 1][0] <= 2 * step) last.push(p);
        else runs.push([p]);
      }
      for (const run of runs) {
        const pts = run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
        const line = el('polyline', { points: pts, stroke: color, 'data-series': s.name });
        line.appendChild(el('title', {}, s.name));
        svg.appendChild(line);
      }
      const item = document.createElement('span');
      const swatch = document.createElement('i');
      swatch.setAttribute('data-color', color);
      swatch.style.background = color;
      item.append(swatch, s.name + (s.points.length ? '' : ' (none)'));
      legend.appendChild(item);
    });
    const box = document.createElement('div');
    box.append(svg, legend);
    return box;
  }

  // Each metric once for every group: one line per group (and policy), whatever else a series
  // carries (an engine's external labels, say).
  async function series(live) {
    const end = Number(live.dataset.now) || Date.now() + skew;
    const start = end - Number(live.dataset.window || 3600000);
    // At most ~300 points a line, never finer than the evaluation interval.
    const step = Math.max(Number(live.dataset.step) || 10000, Math.ceil((end - start) / 300 / 1000) * 1000);
    const [desired, inService, recommended, value, target] = await Promise.all([
      range('max by (asg) (vigil_scaling_desired_capacity)', start, end, step),
      range('max by (asg) (vigil_scaling_in_service_instances)', start, end, step),
      range('max by (asg, policy) (vigil_scaling_recommended_capacity)', start, end, step),
      range('max by (asg, policy) (vigil_scaling_policy_value)', start, end, step),
      range('max by (asg, policy) (vigil_scaling_policy_target)', start, end, step),
    ]);
    return { start, end, step, desired, inService, recommended, value, target };
  }

  function draw(fig, d) {
    const asg = fig.dataset.asg;
    let policies = [];
    try { policies = JSON.parse(fig.dataset.policies || '[]'); } catch (_) { /* none */ }
    const of = (rs, policy) => rs.filter((s) => s.metric.asg === asg
      && (policy === undefined || s.metric.policy === policy)).flatMap((s) => s.points);
    const capacity = [
      { name: 'desired', points: of(d.desired) },
      { name: 'in service', points: of(d.inService) },
      ...policies.map((p) => ({ name: `recommended by ${p}`, points: of(d.recommended, p) })),
    ];
    const values = policies.map((p) => [p, [
      { name: 'value', points: of(d.value, p) },
      { name: 'target', points: of(d.target, p) },
    ]]);
    // A window the data does not fill yet (a fresh start) is shown from its first point, over
    // five minutes at least.
    const first = Math.min(...[capacity, ...values.map(([, v]) => v)]
      .flatMap((c) => c.flatMap((s) => s.points.map(([t]) => t))));
    let from = d.start;
    if (Number.isFinite(first) && first > d.start) {
      from = Math.max(d.start, Math.min(first - Math.max(60000, (d.end - first) * 0.05), d.end - 300000));
    }
    const parts = [chart(`${asg}: capacity`, capacity, from, d.end, d.step)];
    for (const [p, s] of values) {
      parts.push(chart(`${p}: value against target`, s, from, d.end, d.step));
    }
    const caption = fig.querySelector('figcaption');
    fig.replaceChildren(...parts, caption);
    fig.dataset.drawn = String(d.end);
  }

  async function drawAll() {
    const live = $('#live');
    const figs = $$('figure.chart', live);
    if (!figs.length) return;
    let d;
    try {
      d = await series(live);
    } catch (e) {
      for (const f of figs) {
        const p = f.querySelector('p.bad') || f.insertBefore(document.createElement('p'), f.firstChild);
        p.className = 'bad';
        p.textContent = `charts unavailable: ${e.message}`;
      }
      return;
    }
    for (const f of figs) draw(f, d);
  }

  // ---- refresh: the page as the aggregator renders it now ----
  // The aggregator's clock less this computer's, from the page's render time.
  let skew = (Number($('#live').dataset.now) || Date.now()) - Date.now();
  let refreshing = false;
  let again = false;
  const updated = $('#updated');

  async function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    // Not while the operator is in a dialog or selecting text to copy.
    if (dialog.open || String(window.getSelection() || '')) return;
    refreshing = true;
    try {
      const r = await fetch('/', { credentials: 'same-origin' });
      if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
      const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
      const fresh = doc.querySelector('#live');
      if (!fresh) throw new Error('no page in the answer');
      // Keep the drawn charts until the new ones are drawn (no flicker).
      const old = new Map($$('figure.chart', $('#live')).map((f) => [f.dataset.asg, f]));
      $('#live').replaceWith(fresh);
      for (const f of $$('figure.chart', fresh)) {
        const was = old.get(f.dataset.asg);
        if (was) f.replaceChildren(...was.childNodes);
      }
      skew = (Number(fresh.dataset.now) || Date.now()) - Date.now();
      updated.className = '';
      updated.textContent = `updated ${new Date(Date.now() + skew).toISOString().slice(11, 19)}Z`;
      await drawAll();
    } catch (e) {
      updated.className = 'bad';
      updated.textContent = `refresh failed: ${e.message}; the page shows the last state it had`;
    } finally {
      refreshing = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  drawAll();
  setInterval(refresh, REFRESH_MS);
})();
