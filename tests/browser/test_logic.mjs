// Unit tests of web/js/logic.js, the dashboard's pure logic (no browser).
import assert from 'node:assert/strict';
import * as L from '../../web/js/logic.js';

let passed = 0, failed = 0;
function test(name, fn) {
  try { fn(); console.log(`ok ${name}`); passed++; } catch (e) { console.log(`FAIL ${name}: ${e.message}`); failed++; }
}
const near = (a, b, tol = 1e-9) => assert.ok(Math.abs(a - b) <= tol, `${a} != ${b} (tol ${tol})`);

test('parseHash reads path and query', () => {
  assert.deepEqual(L.parseHash('#/jobs/ftjob-1?x=1&y=a%2Cb'), { path: ['jobs', 'ftjob-1'], query: { x: '1', y: 'a,b' } });
  assert.deepEqual(L.parseHash(''), { path: [], query: {} });
  assert.deepEqual(L.parseHash('#/compare?ids=a,b').query.ids, 'a,b');
});

test('buildHash drops empty values and round-trips', () => {
  const h = L.buildHash(['jobs'], { status: 'running', user: '', sweep: undefined });
  assert.equal(h, '#/jobs?status=running');
  assert.deepEqual(L.parseHash(L.buildHash(['compare'], { ids: 'a,b' })).query, { ids: 'a,b' });
});

test('smooth: weight 0 is the identity', () => {
  assert.deepEqual(L.smooth([3, 1, 2], 0), [3, 1, 2]);
});

test('smooth: debiased EMA matches TensorBoard', () => {
  // TensorBoard: last = last*w + (1-w)*v; smoothed = last / (1 - w^n)
  const w = 0.6, v = [1, 2, 3, 10];
  let last = 0;
  const want = v.map((x, i) => { last = last * w + (1 - w) * x; return last / (1 - Math.pow(w, i + 1)); });
  const got = L.smooth(v, w);
  got.forEach((g, i) => near(g, want[i], 1e-12));
  near(got[0], 1, 1e-12); // debiased: starts at the first value, not at 0.4
});

test('smooth: non-finite values pass through and do not count', () => {
  const got = L.smooth([1, null, NaN, 3], 0.5);
  assert.equal(got[1], null);
  assert.ok(Number.isNaN(got[2]));
  // second accumulated value: last = 0.5*0.5 + 0.5*3 = 1.75; debias 1-0.25 = 0.75
  near(got[3], 1.75 / 0.75, 1e-12);
});

test('smooth: a constant series stays constant', () => {
  assert.deepEqual(L.smooth([2, 2, 2], 0.9), [2, 2, 2]);
});

test('eta at the average pace; null when unknown', () => {
  near(L.eta(25, 100, 50), 150);
  assert.equal(L.eta(0, 100, 50), null);
  assert.equal(L.eta(10, 0, 50), null);
  assert.equal(L.eta(10, 100, 0), null);
});

test('elapsed uses finished_at when the job ended', () => {
  assert.equal(L.elapsed({ started_at: 100, finished_at: 160 }, 1000), 60);
  assert.equal(L.elapsed({ started_at: 100 }, 130), 30);
  assert.equal(L.elapsed({ started_at: null }, 130), null);
});

test('fmtDuration', () => {
  assert.equal(L.fmtDuration(5), '5s');
  assert.equal(L.fmtDuration(185), '3m 05s');
  assert.equal(L.fmtDuration(7620), '2h 07m');
  assert.equal(L.fmtDuration(3 * 86400 + 4 * 3600), '3d 04h');
  assert.equal(L.fmtDuration(null), '–');
});

test('fmtAxis is short', () => {
  assert.equal(L.fmtAxis(100000), '100k');
  assert.equal(L.fmtAxis(20000), '20k');
  assert.equal(L.fmtAxis(1500000), '1.5M');
  assert.equal(L.fmtAxis(5000), '5000');
  assert.equal(L.fmtAxis(0.0002), '2.0e-4');
});

test('fmtTicks adds digits until neighbouring ticks differ', () => {
  assert.deepEqual(L.fmtTicks([0.000998, 0.000999, 0.001]), ['9.98e-4', '9.99e-4', '0.001']);
  assert.deepEqual(L.fmtTicks([2, 4, 6]), ['2', '4', '6']);
  assert.deepEqual(L.fmtTicks([20000, 40000, 100000]), ['20k', '40k', '100k']);
});

test('fmtNum and fmtBytes', () => {
  assert.equal(L.fmtNum(2.345678), '2.346');
  assert.equal(L.fmtNum(0.0002), '2.00e-4');
  assert.equal(L.fmtNum(null), '–');
  assert.equal(L.fmtBytes(512), '512 B');
  assert.equal(L.fmtBytes(1536), '1.5 KiB');
});

test('normalizeMetrics reads lorad\'s series answer', () => {
  const r = { object: 'job.metrics', series: [
    { name: 'loss', steps: [2, 1], values: [0.5, null], wall_times: [11, 10], total_points: 2 },
    { name: 'lr', steps: [1], values: [1e-4], wall_times: [10] },
  ], last_step: 2 };
  const m = L.normalizeMetrics(r);
  assert.deepEqual(m.loss, [{ step: 1, value: null, wall: 10 }, { step: 2, value: 0.5, wall: 11 }]);
  assert.equal(m.lr[0].value, 1e-4);
});

test('normalizeMetrics reads a flat list', () => {
  const m = L.normalizeMetrics({ data: [{ step: 3, name: 'loss', value: 1, wall_time: 5 }, { step: 1, name: 'loss', value: 2, wall_time: 4 }] });
  assert.deepEqual(m.loss.map((p) => p.step), [1, 3]);
});

test('appendPoints adds only steps past the last one', () => {
  const s = [{ step: 1 }, { step: 5 }];
  assert.equal(L.appendPoints(s, [{ step: 4 }, { step: 5 }, { step: 6 }, { step: 6 }, { step: 9 }]), 2);
  assert.deepEqual(s.map((p) => p.step), [1, 5, 6, 9]);
});

test('mergeMetrics creates series and counts new points', () => {
  const store = { loss: [{ step: 1, value: 1 }] };
  const n = L.mergeMetrics(store, { loss: [{ step: 1, value: 1 }, { step: 2, value: 0.9 }], eval_loss: [{ step: 2, value: 1.1 }] });
  assert.equal(n, 2);
  assert.equal(store.eval_loss.length, 1);
});

test('decimate keeps first and last, evenly spaced, at most max', () => {
  const pts = Array.from({ length: 1001 }, (_, i) => ({ step: i }));
  const d = L.decimate(pts, 11);
  assert.equal(d.length, 11);
  assert.deepEqual(d.map((p) => p.step), [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
  assert.equal(L.decimate(pts.slice(0, 5), 11).length, 5);
});

test('boundStore decimates a series past twice the cap', () => {
  const store = { a: Array.from({ length: 25 }, (_, i) => ({ step: i })), b: Array.from({ length: 5 }, (_, i) => ({ step: i })) };
  L.boundStore(store, 10);
  assert.equal(store.a.length, 10);
  assert.equal(store.a[9].step, 24);
  assert.equal(store.b.length, 5);
});

test('planFetches: first load asks for everything', () => {
  assert.deepEqual(L.planFetches({}), [{ after_step: null, names: null }]);
});

test('planFetches: one request past the newest step when series are level', () => {
  const s = { loss: [{ step: 10 }, { step: 20 }], lr: [{ step: 20 }] };
  assert.deepEqual(L.planFetches(s), [{ after_step: 20, names: null }]);
});

test('planFetches: a sparse series is not asked for before its next point is due', () => {
  const s = { loss: [{ step: 60 }, { step: 70 }], lr: [{ step: 70 }], eval_loss: [{ step: 0 }, { step: 50 }] };
  assert.deepEqual(L.planFetches(s), [{ after_step: 70, names: null }]);
});

test('planFetches: a lagging series gets its own request, before the main one', () => {
  // eval_loss at 100 was due (every 50) but had not arrived when loss at 100 was read
  const s = { loss: [{ step: 99 }, { step: 100 }], lr: [{ step: 98 }, { step: 99 }], eval_loss: [{ step: 0 }, { step: 50 }] };
  assert.deepEqual(L.planFetches(s), [{ after_step: 50, names: ['eval_loss'] }, { after_step: 99, names: ['lr'] }, { after_step: 100, names: null }]);
});

test('planFetches: at most 1 + maxExtra requests, oldest cursors merged', () => {
  const s = { a: [{ step: 99 }, { step: 100 }], b: [{ step: 89 }, { step: 90 }], c: [{ step: 79 }, { step: 80 }], d: [{ step: 9 }, { step: 10 }] };
  assert.deepEqual(L.planFetches(s, 2), [
    { after_step: 10, names: ['c', 'd'] }, { after_step: 90, names: ['b'] }, { after_step: 100, names: null }]);
});

test('planFetches then appendPoints: a poll never drops a late point nor keeps a duplicate', () => {
  // server state: loss 1..10, lr 1..10; the page read loss up to 5 and lr up to 4 (lr@5 was late)
  const server = { loss: [], lr: [] };
  for (let i = 1; i <= 10; i++) { server.loss.push({ step: i, value: i }); server.lr.push({ step: i, value: -i }); }
  const store = { loss: server.loss.slice(0, 5).map((p) => ({ ...p })), lr: server.lr.slice(0, 4).map((p) => ({ ...p })) };
  store.lr.unshift({ step: 0, value: 0 }); // spacing 1
  for (const f of L.planFetches(store)) {
    const fresh = {};
    for (const [k, pts] of Object.entries(server)) if (!f.names || f.names.includes(k)) fresh[k] = pts.filter((p) => p.step > f.after_step);
    L.mergeMetrics(store, fresh);
  }
  assert.deepEqual(store.loss.map((p) => p.step), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(store.lr.map((p) => p.step), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

test('alignSeries unions x and fills gaps with null', () => {
  assert.deepEqual(L.alignSeries([{ x: [1, 2, 3], y: [10, 20, 30] }, { x: [2, 4], y: [5, 6] }]),
    [[1, 2, 3, 4], [10, 20, 30, null], [null, 5, null, 6]]);
});

test('positiveOnly hides values a log scale cannot draw', () => {
  assert.deepEqual(L.positiveOnly([1, 0, -1, null, 2]), [1, null, null, null, 2]);
});

test('flatten and varyingKeys find what a sweep changed', () => {
  const a = L.flatten({ name: 'a', lora: { r: 8, targets: 'attn' }, hyperparameters: { learning_rate: 1e-4, seed: 1 } });
  const b = L.flatten({ name: 'b', lora: { r: 16, targets: 'attn' }, hyperparameters: { learning_rate: 1e-4, seed: 1 } });
  assert.equal(a['lora.r'], 8);
  assert.deepEqual(L.varyingKeys([a, b]), ['lora.r']);
  assert.equal(L.flatten({ t: ['q', 'v'] }).t, '["q","v"]');
});

test('summarize: final loss is the mean of the tail, best eval the minimum', () => {
  const store = { loss: [1, 2, 3, 4, 5, 6].map((v, i) => ({ step: i + 1, value: v })), eval_loss: [{ step: 3, value: 2 }, { step: 6, value: 1.5 }] };
  const s = L.summarize(store, 2);
  near(s.final_loss, 5.5);
  assert.equal(s.best_eval_loss, 1.5);
  assert.equal(s.steps, 6);
});

test('rankRuns: best eval loss first, then final loss, unknown last', () => {
  const r = L.rankRuns([
    { id: 'x', best_eval_loss: null, final_loss: 0.1 },
    { id: 'y', best_eval_loss: 1.2, final_loss: 0.9 },
    { id: 'z', best_eval_loss: 1.1, final_loss: 1.0 },
    { id: 'w', best_eval_loss: null, final_loss: null },
  ]);
  assert.deepEqual(r.map((x) => x.id), ['z', 'y', 'x', 'w']);
});

test('errorLines: from the errors list or the message', () => {
  assert.deepEqual(L.errorLines({ message: 'x', errors: [{ line: 3, message: 'line 3: bad' }] }), [{ line: 3, message: 'line 3: bad' }]);
  assert.deepEqual(L.errorLines({ message: "line 17: missing field 'messages'" }), [{ line: 17, message: "line 17: missing field 'messages'" }]);
  assert.deepEqual(L.errorLines({ message: 'empty file' }), []);
  assert.deepEqual(L.errorLines({ message: 'x', errors: ["line 2: invalid JSON"] }), [{ line: 2, message: 'line 2: invalid JSON' }]);
});

test('buildSpec: nests dotted paths, omits empty fields, types numbers', () => {
  const spec = L.buildSpec(
    { name: 'run', model: 'tiny', 'hyperparameters.learning_rate': '2e-4', 'hyperparameters.max_steps': '', 'lora.r': '8', 'lora.use_dora': false, 'lora.use_rslora': true, 'hyperparameters.batch_size': 'abc' },
    { 'hyperparameters.learning_rate': 'number', 'hyperparameters.max_steps': 'int', 'lora.r': 'int', 'lora.use_dora': 'bool', 'lora.use_rslora': 'bool', 'hyperparameters.batch_size': 'int' });
  assert.deepEqual(spec, { name: 'run', model: 'tiny', hyperparameters: { learning_rate: 2e-4, batch_size: 'abc' }, lora: { r: 8, use_rslora: true } });
});

test('fieldForParam finds the field or its nearest parent', () => {
  const known = ['lora.targets', 'hyperparameters.learning_rate', 'training_file'];
  assert.equal(L.fieldForParam('hyperparameters.learning_rate', known), 'hyperparameters.learning_rate');
  assert.equal(L.fieldForParam('lora.targets[2]', known), 'lora.targets');
  assert.equal(L.fieldForParam('training_file[0].file', known), 'training_file');
  assert.equal(L.fieldForParam('hyperparameters.foo', known), null);
  assert.equal(L.fieldForParam(null, known), null);
});

test('canCancel: owner or admin, never a finished job', () => {
  const j = { user: 'alice', status: 'running' };
  assert.equal(L.canCancel(j, { user: 'alice', admin: false }), true);
  assert.equal(L.canCancel(j, { user: 'bob', admin: false }), false);
  assert.equal(L.canCancel(j, { user: 'root', admin: true }), true);
  assert.equal(L.canCancel({ ...j, status: 'succeeded' }, { user: 'alice' }), false);
});

test('queuePositions: priority first, then oldest', () => {
  const p = L.queuePositions([
    { id: 'a', status: 'queued', priority: 0, created_at: 1 },
    { id: 'b', status: 'queued', priority: 5, created_at: 3 },
    { id: 'c', status: 'running', priority: 9, created_at: 0 },
    { id: 'd', status: 'queued', priority: 0, created_at: 2 },
  ]);
  assert.deepEqual(p, { b: 1, a: 2, d: 3 });
});

test('previewRuns merges tokens into trained and untrained runs', () => {
  assert.deepEqual(L.previewRuns({ tokens: [{ text: '<u>', trained: false }, { text: 'hi', trained: false }, { text: 'yo', trained: true }, { text: '!', trained: true }] }),
    [{ text: '<u>hi', trained: false }, { text: 'yo!', trained: true }]);
  assert.deepEqual(L.previewRuns({ pieces: ['a', 'b', 'c'], labels: [-100, 5, 6] }), [{ text: 'a', trained: false }, { text: 'bc', trained: true }]);
  assert.deepEqual(L.previewRuns({ segments: [{ text: 'x', trained: true }] }), [{ text: 'x', trained: true }]);
  assert.deepEqual(L.previewRuns({ text: 'plain' }), [{ text: 'plain', trained: false }]);
  assert.deepEqual(L.previewRuns({ messages: [{ role: 'user', content: 'q', trained: false }, { role: 'assistant', content: 'a', trained: true }] }),
    [{ text: 'user: q\n', trained: false }, { text: 'assistant: a\n', trained: true }]);
});


test('generationRequest checks like the server', () => {
  assert.deepEqual(L.generationRequest({ prompt: 'hi', max_new_tokens: '8', temperature: '0.5' }), { body: { prompt: 'hi', max_new_tokens: 8, temperature: 0.5 } });
  assert.deepEqual(L.generationRequest({ prompt: 'hi', max_new_tokens: '', temperature: '' }), { body: { prompt: 'hi' } });
  assert.equal(L.generationRequest({ prompt: '  ' }).param, 'prompt');
  for (const n of ['0', '1025', '2.5', 'x']) assert.equal(L.generationRequest({ prompt: 'a', max_new_tokens: n }).param, 'max_new_tokens', n);
  for (const t of ['-1', '5.1', 'warm']) assert.equal(L.generationRequest({ prompt: 'a', temperature: t }).param, 'temperature', t);
});

test('mergeNameFor is lorad\'s default merged model name', () => {
  assert.equal(L.mergeNameFor({ id: 'ftjob-1', name: 'notes r16' }), 'notes-r16-merged');
  assert.equal(L.mergeNameFor({ id: 'ftjob-1', name: '' }), 'ftjob-1-merged');
  assert.equal(L.mergeNameFor({ id: 'ftjob-1', name: '-.x' }), 'x-merged');
  assert.equal(L.mergeNameFor({ id: 'ftjob-1', name: 'aé' }), 'a---merged'); // é is two UTF-8 bytes
  assert.equal(L.mergeNameFor({ id: 'j', name: 'x'.repeat(80) }).length, 56 + '-merged'.length);
});

test('canMerge: a finished job, its owner or an admin', () => {
  const j = { status: 'succeeded', user: 'alice' };
  assert.equal(L.canMerge(j, { user: 'alice', admin: false }), true);
  assert.equal(L.canMerge(j, { user: 'bob', admin: false }), false);
  assert.equal(L.canMerge(j, { user: 'bob', admin: true }), true);
  assert.equal(L.canMerge({ ...j, status: 'running' }, { user: 'alice' }), false);
});

test('trainedOutput: a full_sft job has a model, any other an adapter', () => {
  assert.deepEqual(L.trainedOutput({ spec: { method: { type: 'full_sft' } } }), { full: true, file: 'model.safetensors' });
  for (const j of [{ spec: { method: { type: 'sft' } } }, { spec: {} }, {}, null])
    assert.deepEqual(L.trainedOutput(j), { full: false, file: 'adapter_model.safetensors' });
});

test('smoothFor: a short series (4 evals) is drawn as measured, its last value kept', () => {
  const evals = [2.0, 1.5, 1.2, 1.1];
  const got = L.smoothFor(evals, 0.9);
  assert.deepEqual(got, evals);
  assert.equal(got[got.length - 1], 1.1); // smooth() would draw about 1.45 here
  assert.ok(Math.abs(L.smooth(evals, 0.9)[3] - 1.1) > 0.1);
});

test('smoothFor: a long series is smoothed like smooth()', () => {
  const v = Array.from({ length: 50 }, (_, i) => 3 - i * 0.02 + (i % 2 ? 0.3 : -0.3));
  assert.deepEqual(L.smoothFor(v, 0.6), L.smooth(v, 0.6));
  // nulls do not count toward the length
  const sparse = [1, null, null, 2, null, 3];
  assert.deepEqual(L.smoothFor(sparse, 0.6), sparse);
  assert.equal(L.SMOOTH_MIN_POINTS > 4, true);
});

test('tpsLabel names the window tokens_per_s covers', () => {
  assert.equal(L.tpsLabel({ hyperparameters: { logging_steps: 10 } }), 'tokens/s (last 10 steps)');
  assert.equal(L.tpsLabel({ hyperparameters: { logging_steps: 1 } }), 'tokens/s (last 1 step)');
  assert.equal(L.tpsLabel({}), 'tokens/s (last log window)');
  assert.equal(L.tpsLabel(undefined), 'tokens/s (last log window)');
});

test('serverClock: elapsed on the server clock never goes back with a browser 30 s ahead', () => {
  const c = L.serverClock();
  assert.equal(c.now(5000), 5000); // no Date yet: the browser's own time
  const c2 = L.serverClock();
  const job = { started_at: 1000, finished_at: null };
  let prev = -1, back = 0;
  for (let server = 1000.3; server < 1060; server += 0.7) {
    c2.sample(new Date(Math.floor(server) * 1000).toUTCString(), server + 30.01);
    const el = L.elapsed(job, c2.now(server + 30.02));
    back += el < prev; prev = el;
    assert.ok(el <= server - 1000 + 0.05, `elapsed ${el} ahead of the server's ${server - 1000}`);
  }
  const done = { started_at: 1000, finished_at: 1060 };
  assert.equal(L.elapsed(done, c2.now(1090.5)), 60);
  assert.ok(60 >= prev, `ended at 60 after showing ${prev}`);
  assert.equal(back, 0);
  c2.sample('not a date', 0); // ignored
  assert.ok(c2.now(1091) >= 1060);
});

console.log(`${passed} passed, ${failed} failed, 0 skipped`);
process.exit(failed ? 1 : 0);
