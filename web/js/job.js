// #/jobs/ID : one job: curves, progress, events, config, checkpoints,
// artifacts. Live while running: each poll fetches only points past the ones
// it has (after_step), and every answer is capped at MAX_POINTS per series.
import { api, download, serverNow } from './api.js';
import {
  fmtNum, fmtDuration, fmtTime, fmtBytes, elapsed, eta, isFinished,
  normalizeMetrics, mergeMetrics, planFetches, boundStore, smoothFor, tpsLabel, buildHash, trainedOutput,
} from './logic.js';
import { h, replace, statusBadge, progressBar, errorBox, table, poll, pref, setPref } from './ui.js';
import { LineChart, PALETTE, toXY } from './charts.js';
import { cancelButton } from './jobs.js';
import { tryCard } from './tryit.js';

export const MAX_POINTS = 1000;
const POLL_MS = 2000;
// Series with a chart of their own, in this order; any other series the
// worker logs (kl, reward margin...) gets a chart after these.
const SINGLE = [['lr', 'learning rate'], ['grad_norm', 'grad norm'], ['tokens_per_s', 'tokens/s']];
const NO_SMOOTH = new Set(['lr']);

export function mount(root, ctx) {
  const id = ctx.id;
  const jid = encodeURIComponent(id);
  const store = {};
  let job = null;
  let t0 = null;
  let metricsDone = false; // a finished job's series are complete once fetched after it ended
  let events = [];
  const charts = new Map();
  const settings = { xMode: pref('xMode', 'step'), log: pref('logScale', false), smoothing: pref('smoothing', 0.6) };

  const msg = h('div', { class: 'msg' });
  const head = h('div', { class: 'job-head' }, h('p', { class: 'muted' }, 'loading…'));
  const controls = h('div', { class: 'controls' });
  const grid = h('div', { class: 'charts' });
  const evBox = h('div', { class: 'events' });
  const ckBox = h('div', {});
  const artBox = h('div', {});
  const cfgBox = h('pre', { class: 'config' });
  const tryBox = h('div', {}); // "Try it" once the job has finished with an adapter (full_sft: a model)
  let tryit = null;
  replace(root, head, msg, tryBox, controls, grid,
    h('div', { class: 'cols' },
      h('section', { class: 'card' }, h('h2', {}, 'Events'), evBox),
      h('section', { class: 'card' }, h('h2', {}, 'Checkpoints'), ckBox, h('h2', {}, 'Artifacts'), artBox)),
    h('section', { class: 'card' }, h('h2', {}, 'Config'), cfgBox));

  // ---- controls ----
  const smoothVal = h('output', {}, settings.smoothing.toFixed(2));
  replace(controls,
    h('label', {}, 'x axis ',
      h('select', {
        name: 'xmode', value: settings.xMode,
        onchange: (e) => { settings.xMode = e.target.value; setPref('xMode', settings.xMode); draw(); },
      }, h('option', { value: 'step' }, 'step'), h('option', { value: 'wall' }, 'wall time'))),
    h('label', {}, h('input', {
      type: 'checkbox', name: 'log', checked: settings.log,
      onchange: (e) => { settings.log = e.target.checked; setPref('logScale', settings.log); draw(); },
    }), ' log scale'),
    h('label', { class: 'smoothing' }, 'smoothing ', h('input', {
      type: 'range', name: 'smoothing', min: '0', max: '0.99', step: '0.01', value: String(settings.smoothing),
      oninput: (e) => { settings.smoothing = Number(e.target.value); smoothVal.textContent = settings.smoothing.toFixed(2); setPref('smoothing', settings.smoothing); draw(); },
    }), ' ', smoothVal));

  const chartFor = (key, title, log) => {
    if (!charts.has(key)) {
      const el = h('div', { class: 'chart', dataset: { chart: key } });
      grid.append(h('div', { class: 'card chart-card' }, el));
      charts.set(key, new LineChart(el, { title, syncKey: `job-${id}` }));
    }
    const c = charts.get(key);
    c.opts.xMode = settings.xMode;
    c.opts.log = !!log;
    return c;
  };

  function curves(names) {
    const out = [];
    names.forEach((name, i) => {
      const pts = store[name] || [];
      const color = PALETTE[i % PALETTE.length];
      // A schedule is exact: smoothing would only make it lag.
      const smoothed = smoothFor(pts.map((p) => p.value), NO_SMOOTH.has(name) ? 0 : settings.smoothing);
      out.push({ label: `${name} (raw)`, color, raw: true, ...toXY(pts, settings.xMode, t0) });
      out.push({ label: name, color, points: pts.length < 3, ...toXY(pts, settings.xMode, t0, smoothed) });
    });
    return out;
  }

  function draw() {
    const walls = Object.values(store).flatMap((s) => (s.length && s[0].wall !== null ? [s[0].wall] : []));
    t0 = walls.length ? Math.min(...walls) : 0;
    chartFor('loss', 'loss', settings.log).set(curves(['loss', 'eval_loss']));
    for (const [name, title] of SINGLE) chartFor(name, title, false).set(curves([name]));
    for (const name of Object.keys(store).sort()) {
      if (name === 'loss' || name === 'eval_loss' || SINGLE.some(([n]) => n === name)) continue;
      chartFor(name, name.replace(/_/g, ' '), false).set(curves([name]));
    }
  }

  // ---- header ----
  function drawHead() {
    const j = job;
    const p = j.progress || {};
    const m = j.metrics || {};
    const el = elapsed(j, serverNow());
    const spec = j.spec || {};
    const method = (spec.method && (spec.method.type || spec.method)) || '–';
    const kv = (k, v, cls) => h('div', { class: `kv ${cls || ''}` }, h('span', { class: 'k' }, k), h('span', { class: 'v' }, v));
    replace(head,
      h('div', { class: 'page-head' },
        h('h1', {}, j.name || j.id), statusBadge(j.status),
        cancelButton(j, ctx.me, () => refresh.now(), (e) => replace(msg, errorBox(e))),
        h('a', { class: 'button secondary small', href: buildHash(['compare'], j.sweep_id ? { sweep: j.sweep_id } : { ids: j.id }) }, j.sweep_id ? 'Compare sweep' : 'Compare')),
      j.error ? errorBox(typeof j.error === 'string' ? j.error : j.error.message || JSON.stringify(j.error)) : null,
      j.stop_reason ? h('p', { class: 'stop-reason' }, h('strong', {}, 'Stopped early: '), j.stop_reason) : null,
      j.status === 'queued' && j.waiting_reason ? h('p', { class: 'waiting-reason' }, h('strong', {}, 'Waiting: '), j.waiting_reason) : null,
      h('div', { class: 'kvs' },
        kv('id', j.id), kv('user', j.user), kv('model', j.model), kv('method', method),
        kv('worker', j.worker || '–'),
        j.slurm ? kv('slurm job', `${j.slurm.job_id} (${j.slurm.state})`, 'slurm') : null,
        // co-trained in one worker pass (issue 19): links to the other jobs
        j.pack && (j.pack.jobs || []).length > 1
          ? kv('shared a pass with', h('span', {}, ...j.pack.jobs.filter((id) => id !== j.id).flatMap((id, i) => [
            i ? ', ' : '', h('a', { href: `#/jobs/${encodeURIComponent(id)}` }, id)]), ` (${j.pack.steps ?? 0} steps packed)`), 'pack')
          : null,
        spec.resources && spec.resources.devices > 1 ? kv('ranks', String(spec.resources.devices), 'ranks') : null,
        j.sweep_id ? kv('sweep', h('a', { href: buildHash(['jobs'], { sweep: j.sweep_id }) }, j.sweep_id)) : null,
        kv('progress', h('span', { class: 'progress-inline' }, progressBar(p.step, p.total_steps), ` ${p.step ?? 0}/${p.total_steps || '?'}`), 'step'),
        kv('epoch', fmtNum(p.epoch, 3)),
        kv('loss', fmtNum(m.loss)), kv('eval loss', fmtNum(m.eval_loss)),
        kv(tpsLabel(spec), fmtNum(m.tokens_per_s, 3)), kv('lr', fmtNum(m.lr, 3)),
        kv('elapsed', fmtDuration(el)),
        kv('ETA', fmtDuration(j.status === 'running' ? eta(p.step, p.total_steps, el) : null)),
        kv('created', fmtTime(j.created_at)), kv('started', fmtTime(j.started_at)), kv('finished', fmtTime(j.finished_at))));
  }

  // ---- data ----
  async function fetchMetrics() {
    const first = !Object.keys(store).length;
    const plan = planFetches(store);
    let added = 0;
    for (const f of plan) {
      const r = await api(`/v1/jobs/${jid}/metrics`, {
        params: { after_step: f.after_step === null ? undefined : f.after_step, names: f.names || undefined, max_points: MAX_POINTS },
      });
      added += mergeMetrics(store, normalizeMetrics(r));
    }
    boundStore(store, MAX_POINTS);
    if (added || first) draw();
  }

  async function fetchEvents() {
    const last = events.length ? events[events.length - 1] : null;
    const r = await api(`/v1/jobs/${jid}/events`, { params: { after: last && last.id !== undefined ? last.id : undefined, limit: 500 } });
    const d = (r && r.data) || [];
    if (last && last.id === undefined) events = d; // no ids: the server sends the whole log
    else events.push(...d.filter((e) => !last || e.id > last.id));
    if (!d.length && evBox.firstChild) return;
    replace(evBox, events.length
      ? h('ol', { class: 'log' }, events.slice(-500).map((e) => h('li', { class: `lvl-${e.level}` },
        h('time', {}, fmtTime(e.created_at)), ' ', h('span', { class: 'lvl' }, e.level), ' ', e.message)))
      : h('p', { class: 'muted' }, 'No events yet.'));
    evBox.scrollTop = evBox.scrollHeight;
  }

  async function fetchCheckpoints() {
    const r = await api(`/v1/jobs/${jid}/checkpoints`);
    const d = (r && r.data) || [];
    replace(ckBox, d.length
      ? table(['step', 'saved'], d.map((c) => h('tr', {}, h('td', { class: 'num' }, c.step), h('td', {}, fmtTime(c.created_at)))))
      : h('p', { class: 'muted' }, 'No checkpoints yet.'));
  }

  async function fetchArtifacts() {
    const r = await api(`/v1/jobs/${jid}/artifacts`);
    const d = (r && r.data) || [];
    if (!tryit && isFinished(job.status) && d.some((f) => (f.name || f) === trainedOutput(job).file)) {
      tryit = tryCard(job, ctx.me);
      replace(tryBox, tryit.el);
    }
    replace(artBox, d.length
      ? h('ul', { class: 'files' }, d.map((f) => {
        const name = typeof f === 'string' ? f : f.name || f.id || f.file;
        return h('li', {}, h('a', {
          href: `/v1/jobs/${jid}/artifacts/${encodeURIComponent(name)}`, download: name,
          onclick: (e) => { e.preventDefault(); download(e.currentTarget.getAttribute('href'), name).catch((err) => replace(msg, errorBox(err))); },
        }, name), f.bytes !== undefined ? h('span', { class: 'muted' }, ` ${fmtBytes(f.bytes)}`) : null);
      }))
      : h('p', { class: 'muted' }, isFinished(job.status) ? 'No artifacts.' : 'Written when the job ends.'));
  }

  let rounds = 0;
  async function tick() {
    job = await api(`/v1/jobs/${jid}`);
    drawHead();
    if (!rounds) cfgBox.textContent = JSON.stringify(job.spec || {}, null, 2);
    const finished = isFinished(job.status);
    if (!metricsDone) {
      await fetchMetrics();
      if (finished) metricsDone = true;
    }
    await fetchEvents();
    if (!rounds || !finished || rounds % 5 === 0) await fetchCheckpoints();
    if (!rounds || finished) await fetchArtifacts();
    if (msg.firstChild && msg.firstChild.dataset.stale) msg.replaceChildren();
    rounds++;
    if (finished) refresh.stop();
  }
  const refresh = poll(tick, POLL_MS, (e) => replace(msg, Object.assign(errorBox(e), { dataset: { stale: '1' } })));

  return () => {
    refresh.stop();
    if (tryit) tryit.destroy();
    for (const c of charts.values()) c.destroy();
  };
}
