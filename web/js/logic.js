// Pure logic of the dashboard: no DOM, no network, so node can test it
// (tests/browser/test_logic.mjs).

// ---- routing ---------------------------------------------------------------

// "#/jobs/ftjob-1?x=1" -> {path: ["jobs", "ftjob-1"], query: {x: "1"}}
export function parseHash(hash) {
  let s = String(hash || '').replace(/^#/, '');
  let q = '';
  const qi = s.indexOf('?');
  if (qi >= 0) { q = s.slice(qi + 1); s = s.slice(0, qi); }
  const path = s.split('/').filter(Boolean).map(decodeURIComponent);
  const query = {};
  for (const [k, v] of new URLSearchParams(q)) query[k] = v;
  return { path, query };
}

export function buildHash(path, query) {
  const p = '#/' + path.map(encodeURIComponent).join('/');
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null && v !== '') qs.set(k, v);
  const s = qs.toString();
  return s ? `${p}?${s}` : p;
}

// ---- formatting -------------------------------------------------------------

export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || v === '') return '–';
  const x = Number(v);
  if (!Number.isFinite(x)) return String(v);
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(Math.max(0, digits - 2));
  return String(Number(x.toPrecision(digits)));
}

// Axis ticks: short ("20k", "1.5M", "2e-4").
export function fmtAxis(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '';
  const a = Math.abs(v);
  if (a >= 1e9) return `${Number((v / 1e9).toPrecision(3))}G`;
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return fmtNum(v, 3);
}

// Tick labels of one axis: the shortest fmtAxis-like form that still tells
// neighbouring ticks apart (a learning rate sweeping 9.99e-4..1.0e-3 needs
// more digits than a loss from 2 to 6).
export function fmtTicks(vals) {
  const fin = vals.filter((v) => v !== null && Number.isFinite(v));
  const big = fin.some((v) => Math.abs(v) >= 1e4);
  for (let d = 3; d <= 8; d++) {
    const out = vals.map((v) => (big ? fmtAxis(v) : fmtNum(v, d)));
    if (new Set(out).size === new Set(fin).size) return out;
  }
  return vals.map((v) => fmtNum(v, 8));
}

export function fmtInt(v) {
  if (v === null || v === undefined) return '–';
  return Math.round(Number(v)).toLocaleString('en-US');
}

// Seconds to "45s", "3m 05s", "2h 07m", "3d 04h".
export function fmtDuration(sec) {
  if (sec === null || sec === undefined || !Number.isFinite(sec) || sec < 0) return '–';
  const s = Math.round(sec);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60), r = s % 60;
  if (m < 60) return `${m}m ${String(r).padStart(2, '0')}s`;
  const hr = Math.floor(m / 60), rm = m % 60;
  if (hr < 24) return `${hr}h ${String(rm).padStart(2, '0')}m`;
  return `${Math.floor(hr / 24)}d ${String(hr % 24).padStart(2, '0')}h`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return '–';
  let x = Number(n);
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return i === 0 ? `${x} B` : `${x.toFixed(x >= 100 ? 0 : 1)} ${u[i]}`;
}

// Unix seconds to a local "YYYY-MM-DD HH:MM:SS".
export function fmtTime(t) {
  if (t === null || t === undefined || !Number.isFinite(Number(t))) return '–';
  const d = new Date(Number(t) * 1000);
  const p = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// ---- jobs ------------------------------------------------------------------

export const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);
export const isFinished = (status) => FINISHED.has(status);

// Seconds a job has been (or was) running.
export function elapsed(job, now) {
  if (!job || !job.started_at) return null;
  const end = job.finished_at || now;
  return Math.max(0, end - job.started_at);
}

// Remaining seconds at the average pace so far; null when it cannot be told.
export function eta(step, total, elapsedSec) {
  if (!(step > 0) || !(total > 0) || !(elapsedSec > 0) || step > total) return null;
  return (elapsedSec / step) * (total - step);
}

export function progressFraction(step, total) {
  if (!(total > 0)) return 0;
  return Math.min(1, Math.max(0, (step || 0) / total));
}

// Who may cancel: the owner or an admin, while the job is not finished.
export function canCancel(job, me) {
  if (!job || isFinished(job.status)) return false;
  if (!me) return true; // unknown identity: let the server decide
  return !!me.admin || me.user === job.user;
}

// ---- metrics -----------------------------------------------------------------

// The metrics endpoint's answer to {name: [{step, value, wall}]} sorted by
// step. lorad answers {series: [{name, steps, values, wall_times}]}; the flat
// list ({data: [{step, name, value, wall_time}]}) and {series: {name: [...]}}
// are read too.
export function normalizeMetrics(resp) {
  const out = {};
  const add = (name, step, value, wall) => {
    if (name === undefined || step === undefined || step === null) return;
    (out[name] ||= []).push({ step: Number(step), value: value === null || value === undefined ? null : Number(value), wall: wall === undefined || wall === null ? null : Number(wall) });
  };
  const addGroup = (name, g) => {
    if (Array.isArray(g)) { for (const p of g) add(name, p.step, p.value, p.wall_time ?? p.wall); return; }
    if (g && Array.isArray(g.points)) { for (const p of g.points) add(name, p.step ?? p[0], p.value ?? p[1], p.wall_time ?? p[2]); return; }
    if (g && Array.isArray(g.steps)) {
      const vs = g.values || [], ws = g.wall_times || g.wall_time || [];
      g.steps.forEach((s, i) => add(name, s, vs[i], ws[i]));
    }
  };
  if (resp && Array.isArray(resp.series)) {
    for (const g of resp.series) if (g) addGroup(g.name, g);
  } else if (resp && resp.series && typeof resp.series === 'object') {
    for (const [name, g] of Object.entries(resp.series)) addGroup(name, g);
  }
  const data = resp && Array.isArray(resp.data) ? resp.data : Array.isArray(resp) ? resp : [];
  for (const d of data) {
    if (d && d.name !== undefined && (d.points || d.steps)) addGroup(d.name, d);
    else if (d) add(d.name, d.step, d.value, d.wall_time ?? d.wall);
  }
  for (const k of Object.keys(out)) out[k].sort((a, b) => a.step - b.step);
  return out;
}

// Appends points with a step beyond the series' last one (sorted input),
// so overlapping or repeated answers never duplicate a point. Returns how
// many were added.
export function appendPoints(series, pts) {
  let last = series.length ? series[series.length - 1].step : -Infinity;
  let n = 0;
  for (const p of pts) {
    if (p.step > last) { series.push(p); last = p.step; n++; }
  }
  return n;
}

// Merges a normalized answer into store ({name: points[]}); returns points added.
export function mergeMetrics(store, fresh) {
  let n = 0;
  for (const [name, pts] of Object.entries(fresh)) n += appendPoints(store[name] ||= [], pts);
  return n;
}

// Evenly spaced subset of at most max points, keeping the first and last
// (the same contract as the server's max_points), so a long-running page's
// series stay bounded while new points keep arriving.
export function decimate(pts, max) {
  if (!(max >= 2) || pts.length <= max) return pts;
  const out = [];
  const n = pts.length;
  for (let k = 0; k < max; k++) out.push(pts[Math.round((k * (n - 1)) / (max - 1))]);
  return out;
}

// Bounds every series of store at 2*max by decimating to max.
export function boundStore(store, max) {
  for (const k of Object.keys(store)) if (store[k].length > 2 * max) store[k] = decimate(store[k], max);
}

export function lastStep(pts) {
  return pts && pts.length ? pts[pts.length - 1].step : null;
}

// The requests of one poll, each asking only for points newer than the page
// holds. The last one asks for every series past the newest step seen (it
// also brings series not seen yet). Before it, one per lagging cursor: a
// series whose next point (at its usual spacing) should be at or before that
// newest step, e.g. an lr or eval_loss point that reached lorad just after
// the loss of the same step had been read. Lagging requests come first so
// that plain appending keeps each series sorted; a lagging series' points
// past the newest step come back twice within the poll and are dropped by
// appendPoints. At most maxExtra lagging requests: the oldest cursors share one.
export function planFetches(store, maxExtra = 2) {
  const names = Object.keys(store).filter((k) => store[k].length);
  if (!names.length) return [{ after_step: null, names: null }];
  let top = -Infinity;
  for (const k of names) top = Math.max(top, lastStep(store[k]));
  const cursors = new Map();
  for (const k of names) {
    const pts = store[k];
    const c = lastStep(pts);
    const gap = pts.length > 1 ? c - pts[pts.length - 2].step : Math.max(1, c);
    if (c < top && c + gap <= top) (cursors.get(c) || cursors.set(c, []).get(c)).push(k);
  }
  const cs = [...cursors.keys()].sort((a, b) => b - a);
  const lagging = [];
  for (let i = 0; i < cs.length && i < maxExtra; i++) {
    let group = cursors.get(cs[i]);
    let c = cs[i];
    if (i === maxExtra - 1) for (const older of cs.slice(i + 1)) { group = group.concat(cursors.get(older)); c = older; }
    lagging.push({ after_step: c, names: group.slice().sort() });
  }
  return [...lagging.reverse(), { after_step: top, names: null }];
}

// TensorBoard's scalar smoothing: an exponential moving average debiased
// like Adam's first moment, so the curve starts at the first value instead
// of at zero. Non-finite values pass through; a constant series is left as is.
export function smooth(values, weight) {
  const w = Math.min(Math.max(Number(weight) || 0, 0), 0.999);
  const out = new Array(values.length);
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  const constant = finite.every((v) => v === finite[0]);
  let last = 0, n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (constant || w === 0 || v === null || !Number.isFinite(v)) { out[i] = v; continue; }
    last = last * w + (1 - w) * v;
    n++;
    out[i] = last / (1 - Math.pow(w, n));
  }
  return out;
}

// The server's clock as the browser sees it (lora watch does the same), so
// elapsed times against the server's started_at do not carry the difference
// between the two clocks. Each answer's Date header (whole seconds: the
// server's time was at least that when the answer arrived) bounds server
// minus browser time from below; the highest bound is kept, and now() never
// goes back. Times in seconds.
export function serverClock() {
  let offset = null, last = -Infinity;
  return {
    sample(dateHeader, clientNow) {
      const t = Date.parse(dateHeader || '');
      if (!Number.isFinite(t)) return;
      const low = t / 1000 - clientNow;
      if (offset === null || low > offset) offset = low;
    },
    now(clientNow) {
      last = Math.max(last, clientNow + (offset ?? 0));
      return last;
    },
  };
}

// A job's metrics.tokens_per_s is the rate of its last logging window, not
// the run's average; the label says which window (as `lora show` does).
export function tpsLabel(spec) {
  const n = Number(spec && spec.hyperparameters && spec.hyperparameters.logging_steps);
  return n >= 1 ? `tokens/s (last ${n} step${n === 1 ? '' : 's'})` : 'tokens/s (last log window)';
}

// Smoothing for a drawn series: an EMA over a handful of points (eval loss
// every few hundred steps) mostly shows its own lag, and the curve's last
// drawn value is then not the last measured one. Series shorter than
// SMOOTH_MIN_POINTS finite values are drawn as measured.
export const SMOOTH_MIN_POINTS = 20;
export function smoothFor(values, weight) {
  const n = values.filter((v) => v !== null && Number.isFinite(v)).length;
  return n < SMOOTH_MIN_POINTS ? values.slice() : smooth(values, weight);
}

// uPlot wants one x array shared by every series: the sorted union of xs,
// with null where a series has no point (drawn with spanGaps).
export function alignSeries(list) {
  const xs = [...new Set(list.flatMap((s) => s.x))].sort((a, b) => a - b);
  const idx = new Map(xs.map((x, i) => [x, i]));
  const ys = list.map((s) => {
    const y = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => { y[idx.get(x)] = s.y[i]; });
    return y;
  });
  return [xs, ...ys];
}

// For a log scale: values that are not > 0 cannot be drawn.
export const positiveOnly = (ys) => ys.map((v) => (v !== null && v > 0 ? v : null));

// ---- compare ---------------------------------------------------------------

// {a: {b: 1}, c: [1, 2]} -> {"a.b": 1, c: "[1,2]"}
export function flatten(obj, prefix = '', out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = Array.isArray(v) ? JSON.stringify(v) : v;
  }
  return out;
}

// Keys whose values differ between the flat specs (what a sweep varied).
export function varyingKeys(flats, ignore = ['name']) {
  const keys = new Set(flats.flatMap((f) => Object.keys(f)));
  return [...keys].filter((k) => !ignore.includes(k) && new Set(flats.map((f) => JSON.stringify(f[k] ?? null))).size > 1).sort();
}

// Final train loss (mean of the last few logged points, which is steadier
// than the last one) and best eval loss of a series store.
export function summarize(store, tail = 5) {
  const vals = (name) => (store[name] || []).map((p) => p.value).filter((v) => v !== null && Number.isFinite(v));
  const loss = vals('loss');
  const ev = vals('eval_loss');
  const t = loss.slice(-tail);
  return {
    final_loss: t.length ? t.reduce((a, b) => a + b, 0) / t.length : null,
    best_eval_loss: ev.length ? Math.min(...ev) : null,
    final_eval_loss: ev.length ? ev[ev.length - 1] : null,
    steps: lastStep(store.loss || []),
  };
}

// Best first: lowest best eval loss, then lowest final train loss; runs
// without either go last, in their given order.
export function rankRuns(runs) {
  const key = (r) => [r.best_eval_loss ?? Infinity, r.final_loss ?? Infinity];
  return runs.map((r, i) => ({ r, i })).sort((a, b) => {
    const ka = key(a.r), kb = key(b.r);
    return ka[0] - kb[0] || ka[1] - kb[1] || a.i - b.i;
  }).map((x) => x.r);
}

// ---- datasets ----------------------------------------------------------------

// Line numbers named by an upload error: its errors list (lorad sends
// strings "line 17: ..."), else "line N" in the message.
export function errorLines(error) {
  if (!error) return [];
  const lineOf = (s) => { const m = /line (\d+)/i.exec(s || ''); return m ? Number(m[1]) : null; };
  if (Array.isArray(error.errors) && error.errors.length)
    return error.errors.map((e) => (typeof e === 'string' ? { line: lineOf(e), message: e } : { line: e.line ?? lineOf(e.message), message: e.message || '' }));
  const line = lineOf(error.message);
  return line ? [{ line, message: error.message }] : [];
}

// ---- submit ------------------------------------------------------------------

// Form values (dotted path -> string) to a job spec. Empty fields are left
// out so the server's defaults apply; numbers are sent as numbers, anything
// that does not parse is sent as typed so the server's message names it.
export function buildSpec(fields, types) {
  const spec = {};
  for (const [path, raw] of Object.entries(fields)) {
    const t = types[path] || 'string';
    let v = raw;
    if (t === 'bool') {
      if (!raw) continue; // unchecked: the default (false) applies
      v = true;
    } else {
      if (raw === undefined || raw === null || String(raw).trim() === '') continue;
      v = String(raw).trim();
      if (t === 'int' || t === 'number') {
        const n = Number(v);
        if (Number.isFinite(n)) v = n;
      } else if (t === 'list') {
        v = v.split(',').map((s) => s.trim()).filter(Boolean);
      }
    }
    const parts = path.split('.');
    let o = spec;
    for (const p of parts.slice(0, -1)) o = o[p] ||= {};
    o[parts[parts.length - 1]] = v;
  }
  return spec;
}

// The form field an error's param belongs to: itself or its nearest
// enclosing known path ("lora.targets[2]" -> "lora.targets"); null when none.
export function fieldForParam(param, known) {
  if (!param) return null;
  let p = String(param);
  while (p) {
    if (known.includes(p)) return p;
    const np = p.replace(/\[\d+\]$/, '');
    if (np !== p) { p = np; continue; }
    const i = p.lastIndexOf('.');
    if (i < 0) break;
    p = p.slice(0, i);
  }
  return null;
}

// Queue order of the queued jobs (the scheduler's: priority high first, then
// oldest): {jobId: 1-based position}.
export function queuePositions(jobs) {
  const q = jobs.filter((j) => j.status === 'queued')
    .map((j, i) => ({ j, i }))
    .sort((a, b) => (b.j.priority || 0) - (a.j.priority || 0) || (a.j.created_at || 0) - (b.j.created_at || 0) || b.i - a.i);
  const out = {};
  q.forEach((x, k) => { out[x.j.id] = k + 1; });
  return out;
}

// A preview row as [{text, trained}] runs (adjacent runs of the same kind
// merged). lorad sends {segments: [{text, trained}]} when rendered with a
// model, {messages: [{role, content, trained}]} without one; token lists
// ({tokens: [{text, trained|label}]}, parallel pieces + labels) and plain
// text are read too.
export function previewRuns(row) {
  const toks = [];
  const trainedOf = (t) => (t.trained ?? t.train ?? (t.label !== undefined ? t.label !== -100 && t.label !== null : false));
  if (Array.isArray(row.segments)) for (const s of row.segments) toks.push({ text: String(s.text ?? ''), trained: !!trainedOf(s) });
  else if (Array.isArray(row.tokens) && row.tokens.length && typeof row.tokens[0] === 'object') {
    for (const t of row.tokens) toks.push({ text: String(t.text ?? t.piece ?? t.token ?? ''), trained: !!trainedOf(t) });
  } else if (Array.isArray(row.pieces || row.tokens) && Array.isArray(row.labels)) {
    const ps = row.pieces || row.tokens;
    ps.forEach((p, i) => toks.push({ text: String(p), trained: row.labels[i] !== -100 && row.labels[i] !== null && row.labels[i] !== undefined }));
  } else if (Array.isArray(row.messages)) {
    for (const m of row.messages) toks.push({ text: `${m.part && m.part !== 'prompt' ? `[${m.part}] ` : ''}${m.role}: ${m.content}\n`, trained: !!m.trained });
  } else if (row.text !== undefined) toks.push({ text: String(row.text), trained: false });
  const runs = [];
  for (const t of toks) {
    const last = runs[runs.length - 1];
    if (last && last.trained === t.trained) last.text += t.text;
    else runs.push({ ...t });
  }
  return runs;
}

// The body of POST /v1/jobs/ID/generate from the "Try it" form's text
// values, checked as the server checks them: { body } or { error, param }.
export function generationRequest({ prompt, max_new_tokens: mnt, temperature }) {
  if (!prompt || !String(prompt).trim()) return { error: 'enter a prompt', param: 'prompt' };
  const body = { prompt: String(prompt) };
  if (mnt !== undefined && String(mnt).trim() !== '') {
    const n = Number(mnt);
    if (!Number.isInteger(n) || n < 1 || n > 1024) return { error: 'max tokens must be an integer in 1..1024', param: 'max_new_tokens' };
    body.max_new_tokens = n;
  }
  if (temperature !== undefined && String(temperature).trim() !== '') {
    const t = Number(temperature);
    if (!Number.isFinite(t) || t < 0 || t > 5) return { error: 'temperature must be a number in 0..5', param: 'temperature' };
    body.temperature = t;
  }
  return { body };
}

// The server's default name for a merged model: "<job name or id>-merged",
// each UTF-8 byte a model name cannot hold replaced by '-', as lorad does.
export function mergeNameFor(job) {
  let base = '';
  for (const b of new TextEncoder().encode(String((job && job.name) || ''))) {
    if (base.length >= 56) break;
    const ch = String.fromCharCode(b);
    const ok = b < 128 && /[A-Za-z0-9._-]/.test(ch);
    if (!base && (ch === '.' || ch === '-' || !ok)) continue;
    base += ok ? ch : '-';
  }
  return `${base || (job && job.id)}-merged`;
}

// What a finished job trained: an adapter, or for full_sft a whole model
// (its run directory is a model folder, which the merge route registers as
// it is). file is the artifact that says it is there.
export function trainedOutput(job) {
  const full = !!(job && job.spec && job.spec.method && job.spec.method.type === 'full_sft');
  return { full, file: full ? 'model.safetensors' : 'adapter_model.safetensors' };
}

export function canMerge(job, me) {
  if (!job || !isFinished(job.status)) return false;
  if (!me) return true; // unknown identity: let the server decide
  return !!me.admin || me.user === job.user;
}
