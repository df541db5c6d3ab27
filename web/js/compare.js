// #/compare?ids=a,b or ?sweep=ID : overlaid loss curves of several runs and
// a table of what differed between them and how they ended, best first.
import { api } from './api.js';
import {
  fmtNum, buildHash, isFinished, normalizeMetrics, mergeMetrics, planFetches, boundStore,
  smoothFor, flatten, varyingKeys, summarize, rankRuns,
} from './logic.js';
import { h, replace, statusBadge, errorBox, table, poll, pref, setPref } from './ui.js';
import { LineChart, PALETTE, toXY } from './charts.js';

const MAX_POINTS = 500;
const POLL_MS = 4000;
const NAMES = ['loss', 'eval_loss'];

function picker(root, query) {
  const box = h('section', { class: 'card picker' }, h('h2', {}, 'Pick runs'), h('p', { class: 'muted' }, 'loading…'));
  root.append(box);
  (async () => {
    const r = await api('/v1/jobs', { params: { limit: 100 } });
    const jobs = (r && r.data) || [];
    const chosen = new Set((query.ids || '').split(',').filter(Boolean));
    const sweeps = [...new Set(jobs.map((j) => j.sweep_id).filter(Boolean))];
    const list = h('div', { class: 'pick-list' }, jobs.map((j) => h('label', { class: 'pick' },
      h('input', { type: 'checkbox', name: 'run', value: j.id, checked: chosen.has(j.id) }),
      ' ', statusBadge(j.status), ' ', j.name || j.id, h('span', { class: 'muted' }, ` ${j.id} · ${j.user}`))));
    replace(box, h('h2', {}, 'Pick runs'),
      sweeps.length ? h('div', { class: 'row' }, 'Whole sweep: ', sweeps.map((s) => h('a', { class: 'button secondary small', href: buildHash(['compare'], { sweep: s }) }, s))) : null,
      jobs.length ? list : h('p', { class: 'muted' }, 'No jobs yet.'),
      h('button', {
        type: 'button', class: 'compare-go',
        onclick: () => {
          const ids = [...list.querySelectorAll('input:checked')].map((i) => i.value);
          location.hash = buildHash(['compare'], { ids: ids.join(',') });
        },
      }, 'Compare selected'));
  })().catch((e) => replace(box, errorBox(e)));
}

export function mount(root, ctx) {
  const q = ctx.query || {};
  const msg = h('div', { class: 'msg' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Compare'), q.sweep ? h('span', { class: 'muted' }, `sweep ${q.sweep}`) : null), msg);
  const ids = (q.ids || '').split(',').filter(Boolean);
  if (!ids.length && !q.sweep) { picker(root, q); return null; }

  const settings = { xMode: pref('xMode', 'step'), log: pref('logScale', false), smoothing: pref('smoothing', 0.6) };
  const runs = []; // {job, store, color}
  const smoothVal = h('output', {}, settings.smoothing.toFixed(2));
  const controls = h('div', { class: 'controls' },
    h('label', {}, 'x axis ', h('select', { name: 'xmode', value: settings.xMode, onchange: (e) => { settings.xMode = e.target.value; setPref('xMode', settings.xMode); draw(); } },
      h('option', { value: 'step' }, 'step'), h('option', { value: 'wall' }, 'wall time'))),
    h('label', {}, h('input', { type: 'checkbox', name: 'log', checked: settings.log, onchange: (e) => { settings.log = e.target.checked; setPref('logScale', settings.log); draw(); } }), ' log scale'),
    h('label', { class: 'smoothing' }, 'smoothing ', h('input', {
      type: 'range', name: 'smoothing', min: '0', max: '0.99', step: '0.01', value: String(settings.smoothing),
      oninput: (e) => { settings.smoothing = Number(e.target.value); smoothVal.textContent = settings.smoothing.toFixed(2); setPref('smoothing', settings.smoothing); draw(); },
    }), ' ', smoothVal),
    h('a', { class: 'button secondary small', href: '#/compare' }, 'Pick other runs'));
  const lossEl = h('div', { class: 'chart', dataset: { chart: 'loss' } });
  const evalEl = h('div', { class: 'chart', dataset: { chart: 'eval_loss' } });
  const tableBox = h('div', {});
  root.append(controls, h('div', { class: 'charts' }, h('div', { class: 'card chart-card' }, lossEl), h('div', { class: 'card chart-card' }, evalEl)),
    h('section', { class: 'card' }, h('h2', {}, 'Runs, best first'), tableBox));
  const lossChart = new LineChart(lossEl, { title: 'train loss', syncKey: 'compare' });
  const evalChart = new LineChart(evalEl, { title: 'eval loss', syncKey: 'compare' });

  function curves(name) {
    const out = [];
    for (const r of runs) {
      const pts = r.store[name] || [];
      const walls = Object.values(r.store).flatMap((s) => (s.length && s[0].wall !== null ? [s[0].wall] : []));
      const t0 = walls.length ? Math.min(...walls) : 0;
      const label = r.job.name || r.job.id;
      out.push({ label: `${label} (raw)`, color: r.color, raw: true, ...toXY(pts, settings.xMode, t0) });
      out.push({ label, color: r.color, points: pts.length < 3, ...toXY(pts, settings.xMode, t0, smoothFor(pts.map((p) => p.value), settings.smoothing)) });
    }
    return out;
  }

  function draw() {
    for (const c of [lossChart, evalChart]) { c.opts.xMode = settings.xMode; c.opts.log = settings.log; }
    lossChart.set(curves('loss'));
    evalChart.set(curves('eval_loss'));
    const flats = runs.map((r) => flatten(r.job.spec || {}));
    const keys = varyingKeys(flats);
    const rows = rankRuns(runs.map((r, i) => ({ r, flat: flats[i], ...summarize(r.store) })));
    replace(tableBox, table(
      ['#', 'run', 'status', 'user', ...keys.map((k) => k.replace(/^(hyperparameters|lora|method)\./, '')), 'final loss', 'best eval loss', 'steps'],
      rows.map((x, i) => h('tr', { dataset: { id: x.r.job.id } },
        h('td', { class: 'num' }, i + 1),
        h('td', {}, h('span', { class: 'swatch', style: { background: x.r.color } }), h('a', { href: `#/jobs/${encodeURIComponent(x.r.job.id)}` }, x.r.job.name || x.r.job.id)),
        h('td', {}, statusBadge(x.r.job.status)),
        h('td', {}, x.r.job.user),
        keys.map((k) => h('td', { class: 'num' }, typeof x.flat[k] === 'number' ? fmtNum(x.flat[k]) : String(x.flat[k] ?? '–'))),
        h('td', { class: 'num final-loss' }, fmtNum(x.final_loss)),
        h('td', { class: 'num best-eval' }, fmtNum(x.best_eval_loss)),
        h('td', { class: 'num' }, x.steps ?? '–'))),
      { class: 'compare' }),
    keys.length ? null : h('p', { class: 'muted' }, 'These runs have the same hyperparameters.'));
  }

  async function fetchRun(r) {
    for (const f of planFetches(r.store)) {
      const m = await api(`/v1/jobs/${encodeURIComponent(r.job.id)}/metrics`, {
        params: { after_step: f.after_step ?? undefined, names: (f.names || NAMES).join(','), max_points: MAX_POINTS },
      });
      mergeMetrics(r.store, normalizeMetrics(m));
    }
    boundStore(r.store, MAX_POINTS);
  }

  async function tick() {
    if (!runs.length) {
      let jobs;
      if (q.sweep) {
        const s = await api(`/v1/sweeps/${encodeURIComponent(q.sweep)}`);
        jobs = (s.jobs || s.data || []).map((j) => (typeof j === 'string' ? { id: j } : j));
      } else jobs = ids.map((id) => ({ id }));
      jobs.forEach((j, i) => runs.push({ job: j, store: {}, color: PALETTE[i % PALETTE.length], done: false }));
    }
    for (const r of runs) {
      if (r.done) continue;
      r.job = await api(`/v1/jobs/${encodeURIComponent(r.job.id)}`);
      const finished = isFinished(r.job.status);
      await fetchRun(r);
      if (finished) r.done = true;
    }
    draw();
    if (msg.firstChild && msg.firstChild.dataset.stale) msg.replaceChildren();
    if (runs.every((r) => r.done)) p.stop();
  }
  const p = poll(tick, POLL_MS, (e) => replace(msg, Object.assign(errorBox(e), { dataset: { stale: '1' } })));
  return () => { p.stop(); lossChart.destroy(); evalChart.destroy(); };
}
