// The dashboard in headless Chromium against a real lorad with a CPU worker
// training a tiny Llama: token entry, uploads, submit, the live jobs table
// and job page, cancel rights, compare, "Try it" and merge (and a full_sft
// job's register), a QLoRA job's fields, workers, a finished 100,000-step job and phone width. Screenshots go to $LR_ARTIFACTS (default /tmp/lorad-screens).
// Any console error on any page fails the test that opened it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { MAX_POINTS } from '../../web/js/job.js'; // points per series the job page asks for
import { Suite, Lorad, Browser, missingPiece, missingTraining, fixtureModel, waitFor, sleep, assert, SCREENS } from './harness.mjs';

const suite = new Suite();
const missing = missingPiece();
if (missing) suite.block(missing);
// Without a worker that trains, the pages that need no training still run
// against lorad with the GPT-2 fixture registered as the model.
const noTraining = missingTraining();
if (noTraining && !fixtureModel()) suite.block(`${noTraining}, and no fixture model to use instead`);
else if (noTraining) suite.blockTraining(noTraining);

let lorad, alice, bob; // Lorad, Browser (alice), Browser (bob)
let datasetId, longJob, runs = [];
const BIG = 'ftjob-100ksteps0001';

const CHAT = Array.from({ length: 24 }, (_, i) => JSON.stringify({
  messages: [
    { role: 'user', content: `What is ${i} plus ${i + 3}?` },
    { role: 'assistant', content: `${i} plus ${i + 3} is ${2 * i + 3}.` },
  ],
})).join('\n') + '\n';
const BROKEN = `${CHAT.split('\n').slice(0, 2).join('\n')}\n{"messages": [{"role": "user", "content": "oops"}\n${CHAT.split('\n')[3]}\n`;

const TRAIN = { batch_size: 2, max_seq_len: 64, logging_steps: 1, eval_steps: 5, save_steps: 20, val_ratio: 0.2 };

// Every metrics request a page makes, with its answer.
function recordMetrics(page) {
  const log = [];
  page.on('response', async (r) => {
    const u = new URL(r.url());
    if (!/\/v1\/jobs\/[^/]+\/metrics$/.test(u.pathname)) return;
    const entry = { t: Date.now(), params: Object.fromEntries(u.searchParams), status: r.status(), body: null };
    log.push(entry);
    try { entry.body = await r.json(); } catch { /* page navigated away */ }
  });
  return log;
}

const stepOf = (text) => Number(String(text).split('/')[0]);
const chartPoints = (p, key) => p.page.$eval(`.chart[data-chart="${key}"]`, (el) => JSON.parse(el.dataset.points || '{}'));

suite.test('lorad starts with a CPU worker and the dashboard is served', async () => {
  lorad = await new Lorad().start({ training: !noTraining, modelDir: fixtureModel() });
  const r = await fetch(`${lorad.url}/`);
  assert(r.ok && (await r.text()).includes('js/app.js'), 'GET / does not serve web/index.html');
  alice = await new Browser().start();
  bob = await new Browser().start();
});

suite.test('token entry: stored in the browser, identifies the user', async () => {
  const p = await alice.page(lorad.url, null);
  await p.page.goto(`${lorad.url}/`);
  await p.page.waitForSelector('#token-panel:not([hidden])');
  await p.page.fill('#token-input', lorad.tokens.alice);
  await p.page.click('#token-form button[type=submit]');
  await p.page.waitForFunction(() => document.getElementById('who').textContent.includes('alice'));
  assert(await p.page.evaluate(() => localStorage.getItem('lorad.token')) === lorad.tokens.alice, 'token not kept in localStorage');
  await p.page.waitForSelector('#view table.jobs, #view p.muted');
  await p.shot('token');
  p.checkConsole();
  await p.close();
});

suite.test('datasets: upload with progress; a broken line is named', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open('#/datasets');
  await p.page.setInputFiles('input[name=file]', { name: 'chat.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from(CHAT) });
  await p.page.click('form.upload button[type=submit]');
  const link = await p.page.waitForSelector('.upload-result .ok a');
  datasetId = (await link.textContent()).trim();
  assert(/^file-/.test(datasetId), `unexpected dataset id ${datasetId}`);
  await p.page.waitForSelector(`tr[data-id="${datasetId}"]`);
  p.expectHttp(400, '/v1/datasets');
  await p.page.setInputFiles('input[name=file]', { name: 'broken.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from(BROKEN) });
  await p.page.click('form.upload button[type=submit]');
  const li = await p.page.waitForSelector('.upload-errors li[data-line="3"]');
  const txt = await li.textContent();
  assert(/line 3/.test(txt), `the error does not name line 3: ${txt}`);
  // rows that repeat an earlier one are said at upload, not first in a job's events
  const twice = CHAT.split('\n').slice(0, 3).join('\n') + '\n' + CHAT.split('\n')[0] + '\n';
  await p.page.setInputFiles('input[name=file]', { name: 'twice.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from(twice) });
  await p.page.click('form.upload button[type=submit]');
  const warn = await (await p.page.waitForSelector('.upload-result .warning')).textContent();
  assert(/1 of 4 rows repeat an earlier row/.test(warn), `no duplicates warning: ${warn}`);
  await p.shot('datasets');
  p.checkConsole();
  await p.close();
});

suite.test('dataset page: report and preview with trained tokens highlighted', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/datasets/${datasetId}`);
  await p.page.waitForSelector('.report .kvs');
  await p.page.waitForSelector('pre.rendered mark.trained');
  const trained = await p.page.$$eval('pre.rendered mark.trained', (ms) => ms.map((m) => m.textContent).join('|'));
  assert(/plus .* is \d+/.test(trained), `trained text is not the assistant answer: ${trained.slice(0, 200)}`);
  const untrained = await p.page.$eval('pre.rendered', (el) => [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join(''));
  assert(/What is 0 plus 3\?/.test(untrained), 'the user turn should be shown untrained');
  // rendered with a chosen chat template, as a job with that chat_template
  await p.page.selectOption('select[name=chat_template]', 'alpaca');
  await p.page.click('section.preview button');
  await p.page.waitForFunction(() => document.querySelector('.template-used').textContent === 'rendered with alpaca');
  const alpaca = await p.page.$eval('pre.rendered', (el) => el.textContent);
  assert(/### Instruction/.test(alpaca), `not rendered with alpaca: ${alpaca.slice(0, 200)}`);
  await p.shot('dataset-preview');
  p.checkConsole();
  await p.close();
});

suite.test('submit: the server\'s validation message is shown next to the field, then the job is created', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open('#/submit');
  await p.page.waitForSelector('form.submit-form');
  await p.page.fill('[name="name"]', 'long-run');
  await p.page.selectOption('[name="model"]', 'tiny');
  await p.page.selectOption('[name="training_file"]', datasetId);
  await p.page.fill('[name="hyperparameters.max_steps"]', '20000');
  for (const [k, v] of Object.entries(TRAIN)) await p.page.fill(`[name="hyperparameters.${k}"]`, String(v));
  await p.page.fill('[name="lora.r"]', '4');
  await p.page.fill('[name="hyperparameters.learning_rate"]', '5');
  p.expectHttp(400, '/v1/jobs');
  await p.page.click('form.submit-form button[type=submit]');
  const err = await p.page.waitForSelector('.field[data-param="hyperparameters.learning_rate"].invalid .field-error');
  const msg = await err.textContent();
  assert(/learning_rate/.test(msg), `field error does not explain: ${msg}`);
  await p.shot('submit-error');
  await p.page.fill('[name="hyperparameters.learning_rate"]', '1e-3');
  await p.page.click('form.submit-form button[type=submit]');
  await p.page.waitForFunction(() => /^#\/jobs\/ftjob-/.test(location.hash));
  longJob = decodeURIComponent(await p.page.evaluate(() => location.hash.split('/')[2]));
  const j = await lorad.api('alice', 'GET', `/v1/jobs/${longJob}`);
  assert(j.name === 'long-run' && j.spec.hyperparameters.max_steps === 20000 && j.spec.lora.r === 4, `spec not as submitted: ${JSON.stringify(j.spec).slice(0, 300)}`);
  p.checkConsole();
  await p.close();
});

suite.test('jobs table updates while a job runs', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open('#/jobs');
  const row = `tr[data-id="${longJob}"]`;
  await waitFor(() => p.page.$(`${row}[data-status="running"]`), 90000, 'the job to run');
  const first = await waitFor(async () => { const s = stepOf(await p.page.textContent(`${row} td.step`)); return s > 0 ? s : 0; }, 60000, 'a first step');
  const later = await waitFor(async () => { const s = stepOf(await p.page.textContent(`${row} td.step`)); return s > first ? s : 0; }, 60000, 'the step to advance in the table');
  const loss = await p.page.textContent(`${row} td.loss`);
  assert(Number.isFinite(Number(loss)), `loss cell is not a number: ${loss}`);
  const tps = await p.page.textContent(`${row} td.tps`);
  assert(tps !== '–', 'tokens/s missing');
  console.log(`    table step ${first} -> ${later}, loss ${loss}`);
  await p.shot('jobs');
  p.checkConsole();
  await p.close();
}, { training: true });

suite.test('job page: the loss curve gains points, fetching only new ones', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  const log = recordMetrics(p.page);
  await p.open(`#/jobs/${longJob}`);
  const n1 = await waitFor(async () => (await chartPoints(p, 'loss')).loss || 0, 30000, 'loss points');
  const n2 = await waitFor(async () => { const n = (await chartPoints(p, 'loss')).loss || 0; return n > n1 ? n : 0; }, 60000, 'the loss curve to gain points');
  await waitFor(() => log.filter((e) => e.body).length >= 4, 30000, 'four metrics polls');
  const lr = (await chartPoints(p, 'lr'))['lr'];
  assert(lr > 0, 'no learning-rate points');
  // The first request asks for everything, capped; every later one only for what is past the page's points.
  const done = log.filter((e) => e.body);
  assert(done[0].params.after_step === undefined, `first request already had after_step=${done[0].params.after_step}`);
  const seen = new Map(); // "name@step" -> time first received
  let fetched = 0;
  done.forEach((e, i) => {
    assert(e.params.max_points === String(MAX_POINTS), `request without max_points=${MAX_POINTS}: ${JSON.stringify(e.params)}`);
    if (i > 0) assert(e.params.after_step !== undefined, `poll ${i} asked without after_step`);
    for (const s of e.body.series || []) {
      s.steps.forEach((st) => {
        if (i > 0) assert(st > Number(e.params.after_step), `poll ${i} got step ${st} <= after_step ${e.params.after_step}`);
        const k = `${s.name}@${st}`;
        // points of one poll may come twice (a lagging series and the main request); never from an earlier poll
        if (seen.has(k)) assert(e.t - seen.get(k) < 1000, `${k} fetched again ${e.t - seen.get(k)}ms after it was first fetched`);
        else seen.set(k, e.t);
        fetched++;
      });
    }
  });
  console.log(`    loss points ${n1} -> ${n2}; ${done.length} metrics requests, ${fetched} points fetched, ${seen.size} distinct`);
  // The controls redraw without errors.
  await p.page.selectOption('select[name=xmode]', 'wall');
  await p.page.check('input[name=log]');
  await p.page.fill('input[name=smoothing]', '0.9');
  await sleep(500);
  assert(((await chartPoints(p, 'loss')).loss || 0) > 0, 'no loss points in wall-time/log mode');
  await p.page.waitForSelector('.events ol.log li');
  await p.shot('job-running');
  await p.page.selectOption('select[name=xmode]', 'step');
  await p.page.uncheck('input[name=log]');
  p.checkConsole();
  await p.close();
}, { training: true });

suite.test('cancel is refused for another user', async () => {
  const p = await bob.page(lorad.url, lorad.tokens.bob);
  await p.open(`#/jobs/${longJob}`);
  await p.page.waitForFunction(() => document.getElementById('who').textContent.includes('bob'));
  const b = await p.page.waitForSelector('.job-head button.cancel');
  assert(await b.isDisabled(), 'bob may press cancel on alice\'s job');
  const title = await b.getAttribute('title');
  assert(/owner or an admin/.test(title), `no reason given: ${title}`);
  const before = (await lorad.api('bob', 'GET', `/v1/jobs/${longJob}`)).status;
  assert(before === 'running' || (noTraining && before === 'queued'), `alice's job is ${before}`);
  await lorad.api('bob', 'POST', `/v1/jobs/${longJob}/cancel`, undefined, 403);
  const j = await lorad.api('bob', 'GET', `/v1/jobs/${longJob}`);
  assert(j.status === before, `job is ${j.status} after bob's refused cancel`);
  await p.open('#/jobs');
  const rb = await p.page.waitForSelector(`tr[data-id="${longJob}"] button.cancel`);
  assert(await rb.isDisabled(), 'bob\'s jobs table offers cancel on alice\'s job');
  await p.shot('job-other-user');
  p.checkConsole();
  await p.close();
});

suite.test('cancel works for the owner', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/jobs/${longJob}`);
  const b = await p.page.waitForSelector('.job-head button.cancel:not([disabled])');
  await b.click();
  await p.page.waitForSelector('.job-head button.cancel:has-text("Confirm cancel")');
  await p.page.click('.job-head button.cancel');
  await p.page.waitForSelector('.job-head .badge[data-status="cancelled"]', { timeout: 60000 });
  const j = await lorad.api('alice', 'GET', `/v1/jobs/${longJob}`);
  assert(j.status === 'cancelled', `job is ${j.status}`);
  await p.shot('job-cancelled');
  p.checkConsole();
  await p.close();
});

suite.test('jobs filters: status and user', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open('#/jobs');
  await p.page.waitForSelector(`tr[data-id="${longJob}"]`);
  await p.page.selectOption('select[name=status]', 'cancelled');
  await p.page.waitForFunction(() => location.hash.includes('status=cancelled'));
  await p.page.waitForSelector(`tr[data-id="${longJob}"][data-status="cancelled"]`);
  const st = await p.page.$$eval('table.jobs tbody tr', (trs) => trs.map((t) => t.dataset.status));
  assert(st.length && st.every((x) => x === 'cancelled'), `status filter shows ${st}`);
  await p.page.selectOption('select[name=user]', 'alice');
  await p.page.waitForFunction(() => location.hash.includes('user=alice') && location.hash.includes('status=cancelled'));
  await p.page.waitForSelector(`tr[data-id="${longJob}"]`);
  await p.open('#/jobs?status=running&user=bob');
  await p.page.waitForSelector('#view p.muted:has-text("No jobs match")');
  p.checkConsole();
  await p.close();
});

suite.test('compare overlays two runs, best first', async () => {
  const tpl = { name: 'sweep', model: 'tiny', training_file: datasetId, hyperparameters: { ...TRAIN, max_steps: 30 }, lora: { r: 4 } };
  const sw = await lorad.api('alice', 'POST', '/v1/sweeps', { template: tpl, parameters: { 'hyperparameters.learning_rate': [1e-3, 1e-2] } });
  runs = (sw.jobs || []).map((j) => j.id);
  assert(runs.length === 2, `sweep made ${runs.length} jobs`);
  await waitFor(async () => {
    const js = await Promise.all(runs.map((id) => lorad.api('alice', 'GET', `/v1/jobs/${id}`)));
    const bad = js.find((j) => j.status === 'failed' || j.status === 'cancelled');
    if (bad) throw new Error(`${bad.id} ${bad.status}: ${JSON.stringify(bad.error)}`);
    return js.every((j) => j.status === 'succeeded');
  }, 240000, 'both sweep runs to succeed', 1000);
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/compare?ids=${runs.join(',')}`);
  await waitFor(async () => (await p.page.$eval('.chart[data-chart="loss"]', (el) => el.dataset.series)) === '2', 20000, 'two loss curves');
  const pts = await chartPoints(p, 'loss');
  const names = Object.keys(pts).filter((k) => !k.endsWith('(raw)'));
  assert(names.length === 2 && names.every((k) => pts[k] >= 10), `curves: ${JSON.stringify(pts)}`);
  const rows = await p.page.$$eval('table.compare tbody tr', (trs) => trs.map((tr) => [tr.dataset.id, tr.querySelector('.final-loss').textContent, tr.querySelector('.best-eval').textContent]));
  assert(rows.length === 2, `compare table has ${rows.length} rows`);
  const key = (r) => Number(r[2] === '–' ? Infinity : r[2]);
  assert(key(rows[0]) <= key(rows[1]), `not best first: ${JSON.stringify(rows)}`);
  const head = await p.page.$$eval('table.compare thead th', (ths) => ths.map((t) => t.textContent));
  assert(head.includes('learning_rate'), `the varied hyperparameter is not a column: ${head}`);
  await p.shot('compare');
  await p.open(`#/compare?sweep=${sw.id}`);
  await waitFor(async () => (await p.page.$$('table.compare tbody tr')).length === 2, 20000, 'the sweep\'s two runs');
  // A finished run's page lists its artifacts; a download carries the token.
  await p.open(`#/jobs/${runs[0]}`);
  const link = await p.page.waitForSelector('ul.files a:has-text("adapter_config.json")');
  await p.page.waitForSelector('ul.files a:has-text("adapter_model.safetensors")');
  const [dl] = await Promise.all([p.page.waitForEvent('download'), link.click()]);
  const cfg = JSON.parse(fs.readFileSync(await dl.path(), 'utf8'));
  assert(cfg.r === 4 || cfg.peft_type, `adapter_config.json: ${JSON.stringify(cfg).slice(0, 200)}`);
  await p.page.waitForSelector('.card table tbody tr'); // checkpoints
  p.checkConsole();
  await p.close();
}, { training: true });

suite.test('job page: "Try it" shows base and tuned side by side; merge into a model', async () => {
  const id = runs[0];
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/jobs/${id}`);
  await p.page.waitForSelector('.tryit textarea[name=prompt]');
  await p.page.fill('.tryit textarea[name=prompt]', 'What is 2 plus 5?');
  await p.page.fill('.tryit input[name=max_new_tokens]', '5000');
  await p.page.click('.tryit button.generate');
  const local = await p.page.waitForSelector('.tryit .gen-msg .error');
  assert(/1\.\.1024/.test(await local.textContent()), 'no inline message for max tokens 5000');
  await p.page.fill('.tryit input[name=max_new_tokens]', '8');
  await p.page.click('.tryit button.generate');
  await p.page.waitForSelector('.tryit .gen-out:not([hidden])', { timeout: 60000 });
  const shown = await p.page.$$eval('.gen-side', (els) => els.map((e) => [e.dataset.side, e.querySelector('pre').textContent, e.querySelector('.gen-info').textContent]));
  const r = await lorad.api('alice', 'POST', `/v1/jobs/${id}/generate`, { prompt: 'What is 2 plus 5?', max_new_tokens: 8, temperature: 0 });
  assert(shown.length === 2 && shown[0][0] === 'base' && shown[1][0] === 'tuned', `columns ${JSON.stringify(shown)}`);
  assert(shown[0][1] === r.base.text && shown[1][1] === r.tuned.text, 'the page shows other texts than the API gives (greedy)');
  assert(/^\d+ tokens/.test(shown[0][2]) && r.base.tokens <= 8, `info: ${shown[0][2]}`);
  assert(await p.page.$eval('.tryit .gen-msg', (e) => !e.firstChild), 'the local error stayed after a good generation');
  p.expectHttp(400, `/v1/jobs/${id}/generate`); // a server refusal is shown inline too
  await p.page.fill('.tryit textarea[name=prompt]', 'x'.repeat(33000));
  await p.page.click('.tryit button.generate');
  const srv = await p.page.waitForSelector('.tryit .gen-msg .error');
  assert(/prompt/.test(await srv.textContent()), 'the server\'s message is not shown');
  await p.page.fill('.tryit textarea[name=prompt]', 'What is 2 plus 5?');
  await p.shot('job-tryit');
  await p.page.fill('.tryit input[name=merge_name]', 'web-merged');
  await p.page.click('.tryit button.merge');
  await p.page.waitForSelector('.merge-msg [data-state=merged][data-model=web-merged]', { timeout: 60000 });
  const m = await lorad.api('alice', 'GET', '/v1/models/web-merged');
  assert(m.id === 'web-merged', `model ${JSON.stringify(m)}`);
  p.checkConsole();
  await p.close();
  const q = await bob.page(lorad.url, lorad.tokens.bob);
  await q.open(`#/jobs/${id}`);
  await q.page.waitForFunction(() => document.getElementById('who').textContent.includes('bob'));
  const b = await q.page.waitForSelector('.tryit button.merge');
  assert(await b.isDisabled(), 'bob may merge alice\'s job');
  q.checkConsole();
  await q.close();
}, { training: true });

suite.test('job page: a full_sft job tries its model and registers it', async () => {
  const j = await lorad.api('alice', 'POST', '/v1/jobs', {
    name: 'full', model: 'tiny', training_file: datasetId, device: 'cpu', method: { type: 'full_sft' },
    hyperparameters: { ...TRAIN, max_steps: 3, eval_steps: 1000, save_steps: 1000, val_ratio: 0 },
  });
  await waitFor(async () => {
    const s = (await lorad.api('alice', 'GET', `/v1/jobs/${j.id}`)).status;
    if (s === 'failed' || s === 'cancelled') throw new Error(`the full_sft job ${s}`);
    return s === 'succeeded';
  }, 120000, 'the full_sft job to succeed', 500);
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/jobs/${j.id}`);
  await p.page.waitForSelector('ul.files a:has-text("model.safetensors")');
  await p.page.fill('.tryit textarea[name=prompt]', 'What is 2 plus 5?');
  await p.page.fill('.tryit input[name=max_new_tokens]', '4');
  await p.page.click('.tryit button.generate');
  await p.page.waitForSelector('.tryit .gen-out:not([hidden])', { timeout: 60000 });
  const b = await p.page.waitForSelector('.tryit button.merge');
  assert((await b.textContent()) === 'Register as a model', `button: ${await b.textContent()}`);
  await p.page.fill('.tryit input[name=merge_name]', 'web-full');
  await b.click();
  const done = await p.page.waitForSelector('.merge-msg [data-state=merged][data-model=web-full]', { timeout: 60000 });
  assert(/^registered: /.test(await done.textContent()), `message: ${await done.textContent()}`);
  assert((await lorad.api('alice', 'GET', '/v1/models/web-full')).id === 'web-full', 'web-full is not registered');
  p.checkConsole();
  await p.close();
}, { training: true });

suite.test('submit: a QLoRA job (lora.quantize nf4, double_quant) from the form', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open('#/submit');
  await p.page.waitForSelector('form.submit-form');
  const dq = '[name="lora.double_quant"]';
  assert(await p.page.isDisabled(dq), 'double quantization is offered without a 4-bit base');
  await p.page.fill('[name="name"]', 'qlora');
  await p.page.selectOption('[name="model"]', 'tiny');
  await p.page.selectOption('[name="training_file"]', datasetId);
  for (const [k, v] of Object.entries({ ...TRAIN, max_steps: 3, eval_steps: 1000, save_steps: 1000, val_ratio: 0 })) await p.page.fill(`[name="hyperparameters.${k}"]`, String(v));
  await p.page.fill('[name="lora.r"]', '4');
  await p.page.selectOption('[name="lora.quantize"]', 'nf4');
  assert(!(await p.page.isDisabled(dq)), 'double quantization stays off with nf4');
  await p.page.check(dq);
  // the server's refusal of a 4-bit base for full fine-tuning lands on the quantize field
  await p.page.selectOption('[name="method.type"]', 'full_sft');
  p.expectHttp(400, '/v1/jobs');
  await p.page.click('form.submit-form button[type=submit]');
  const err = await p.page.waitForSelector('.field[data-param="lora.quantize"].invalid .field-error');
  assert(/full_sft/.test(await err.textContent()), `field error does not explain: ${await err.textContent()}`);
  await p.page.selectOption('[name="method.type"]', 'sft');
  await p.shot('submit-qlora');
  await p.page.click('form.submit-form button[type=submit]');
  await p.page.waitForFunction(() => /^#\/jobs\/ftjob-/.test(location.hash));
  const id = decodeURIComponent(await p.page.evaluate(() => location.hash.split('/')[2]));
  const j = await lorad.api('alice', 'GET', `/v1/jobs/${id}`);
  assert(j.spec.lora.quantize === 'nf4' && j.spec.lora.double_quant === true && j.spec.method.type === 'sft',
    `spec not as submitted: ${JSON.stringify(j.spec.lora)} ${JSON.stringify(j.spec.method)}`);
  if (!noTraining) {
    await waitFor(async () => {
      const s = (await lorad.api('alice', 'GET', `/v1/jobs/${id}`)).status;
      if (s === 'failed' || s === 'cancelled') throw new Error(`the QLoRA job ${s}`);
      return s === 'succeeded';
    }, 120000, 'the QLoRA job to succeed', 500);
  }
  p.checkConsole();
  await p.close();
});

suite.test('workers page: device, status, since', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open('#/workers');
  const row = await p.page.waitForSelector('table.workers tbody tr');
  const txt = await row.textContent();
  assert(/cpu/.test(txt), `worker row: ${txt}`);
  await p.shot('workers');
  p.checkConsole();
  await p.close();
});

suite.test('a finished 100,000-step job: at most max_points per series, fetched once', async () => {
  const sqlite = '/usr/bin/sqlite3';
  if (!fs.existsSync(sqlite)) return { skip: `${sqlite} (apt-get install -y sqlite3)` };
  const spec = JSON.stringify({
    name: 'night-sweep-100k', model: 'tiny', training_file: datasetId, validation_file: null, method: { type: 'sft' },
    hyperparameters: { max_steps: 100000, batch_size: 8, learning_rate: 2e-4, lr_scheduler: 'linear', logging_steps: 1, eval_steps: 500 },
    lora: { r: 16, alpha: 32, dropout: 0.05, targets: 'attn_mlp' },
  });
  const id = BIG;
  const t0 = Math.floor(Date.now() / 1000) - 86400;
  const series = (name, every, expr) => `WITH RECURSIVE s(i) AS (SELECT ${every} UNION ALL SELECT i+${every} FROM s WHERE i+${every} <= 100000)
    INSERT INTO metrics(job_id, name, step, value, wall_time) SELECT '${id}', '${name}', i, ${expr}, ${t0} + i*0.8 FROM s;`;
  const sql = `.timeout 20000
BEGIN;
INSERT INTO jobs(id, name, user, model, status, priority, device, spec, created_at, started_at, finished_at, step, total_steps, epoch, loss, eval_loss, tokens_per_s, lr)
  VALUES ('${id}', 'night-sweep-100k', 'alice', 'tiny', 'succeeded', 0, 'any', '${spec}', ${t0 - 60}, ${t0}, ${t0 + 80000}, 100000, 100000, 3.0, 0.41, 0.47, 5120.0, 0.0);
${series('loss', 1, '0.4 + 2.0*exp(-i/15000.0) + 0.05*((i*7919) % 101)/101.0')}
${series('lr', 1, '2e-4*(1 - i/100000.0)')}
${series('grad_norm', 1, '0.5 + ((i*104729) % 97)/97.0')}
${series('tokens_per_s', 1, '5000 + (i % 50)')}
${series('eval_loss', 500, '0.45 + 2.0*exp(-i/15000.0)')}
COMMIT;
`;
  const r = spawnSync(sqlite, [lorad.db()], { input: sql, encoding: 'utf8', timeout: 120000 });
  assert(r.status === 0, `sqlite3: ${r.stderr}`);
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  const log = recordMetrics(p.page);
  const t = Date.now();
  await p.open(`#/jobs/${id}`);
  await waitFor(async () => ((await chartPoints(p, 'loss')).loss || 0) > 0, 20000, 'the 100k job\'s curve');
  const ms = Date.now() - t;
  await sleep(5000); // a finished job's page must not poll its metrics again
  const done = log.filter((e) => e.body);
  assert(done.length === 1, `${done.length} metrics requests for a finished job (want 1)`);
  const e = done[0];
  assert(e.params.max_points === String(MAX_POINTS), `no max_points in ${JSON.stringify(e.params)}`);
  const sizes = Object.fromEntries(e.body.series.map((s) => [s.name, s.steps.length]));
  for (const [name, n] of Object.entries(sizes)) assert(n <= MAX_POINTS, `${name}: ${n} points > ${MAX_POINTS}`);
  assert(sizes.loss === MAX_POINTS && sizes.eval_loss === 200, `sizes ${JSON.stringify(sizes)}`);
  const loss = e.body.series.find((s) => s.name === 'loss');
  assert(loss.steps[0] === 1 && loss.steps[loss.steps.length - 1] === 100000, 'first and last points not kept');
  const pts = await chartPoints(p, 'loss');
  assert(pts.loss === MAX_POINTS, `chart holds ${pts.loss} loss points`);
  console.log(`    100k-step job: series sizes ${JSON.stringify(sizes)}; curve drawn in ${ms} ms`);
  await p.shot('job-100k');
  p.checkConsole();
  await p.close();
});

suite.test('job page: a Slurm-run job shows its batch job and state, a 2-device job its ranks', async () => {
  const sqlite = '/usr/bin/sqlite3';
  if (!fs.existsSync(sqlite)) return { skip: `${sqlite} (apt-get install -y sqlite3)` };
  const id = 'ftjob-slurmranks01';
  const spec = JSON.stringify({ name: 'on-the-cluster', model: 'tiny', training_file: datasetId, resources: { devices: 2 },
    hyperparameters: { max_steps: 10 } });
  const t0 = Math.floor(Date.now() / 1000) - 60;
  const sql = `.timeout 20000
INSERT INTO jobs(id, name, user, model, status, priority, device, spec, created_at, started_at, step, total_steps, slurm_job_id, slurm_state)
  VALUES ('${id}', 'on-the-cluster', 'alice', 'tiny', 'running', 0, 'any', '${spec}', ${t0}, ${t0}, 3, 10, '4711', 'RUNNING');
`;
  const r = spawnSync(sqlite, [lorad.db()], { input: sql, encoding: 'utf8', timeout: 60000 });
  assert(r.status === 0, `sqlite3: ${r.stderr}`);
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/jobs/${id}`);
  await waitFor(async () => (await p.page.$('.kv.slurm')) !== null, 10000, 'the slurm field');
  const slurm = await p.page.$eval('.kv.slurm .v', (el) => el.textContent);
  const ranks = await p.page.$eval('.kv.ranks .v', (el) => el.textContent);
  assert(slurm === '4711 (RUNNING)', `slurm field: ${slurm}`);
  assert(ranks === '2', `ranks field: ${ranks}`);
  p.checkConsole();
  await p.close();
  spawnSync(sqlite, [lorad.db()], { input: `.timeout 20000\nDELETE FROM jobs WHERE id = '${id}';\n`, encoding: 'utf8' });
});

suite.test('compare: runs picked by checkbox', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open('#/compare');
  await p.page.check(`.pick-list input[value="${BIG}"]`);
  await p.page.check(`.pick-list input[value="${longJob}"]`);
  await p.page.click('button.compare-go');
  await p.page.waitForFunction(() => location.hash.startsWith('#/compare?ids='));
  await p.page.waitForSelector('table.compare tbody tr:nth-child(2)');
  const ids = await p.page.$$eval('table.compare tbody tr', (trs) => trs.map((t) => t.dataset.id));
  assert(ids.length === 2 && ids.includes(BIG) && ids.includes(longJob), `compare rows ${ids}`);
  if (noTraining) assert(ids[0] === BIG, 'the run with an eval loss should rank first');
  await waitFor(async () => Number(await p.page.$eval('.chart[data-chart="loss"]', (el) => el.dataset.series)) >= 1, 20000, 'the 100k run\'s curve');
  await p.shot('compare-picked');
  p.checkConsole();
  await p.close();
});

suite.test('phone width: pages fit 390px without sideways scrolling', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice, { width: 390, height: 844 });
  const pages = [['#/jobs', 'phone-jobs', 'table.jobs'], [`#/jobs/${BIG}`, 'phone-job', '.chart .uplot'], ['#/submit', 'phone-submit', 'form.submit-form']];
  if (runs.length) pages.push([`#/compare?ids=${runs.join(',')}`, 'phone-compare', 'table.compare']);
  for (const [hash, name, sel] of pages) {
    await p.open(hash);
    await p.page.waitForSelector(sel);
    const w = await p.page.evaluate(() => document.documentElement.scrollWidth);
    assert(w <= 392, `${hash} is ${w}px wide on a 390px screen`);
    await p.shot(name);
  }
  p.checkConsole();
  await p.close();
});

try {
  await suite.run();
} finally {
  if (alice) await alice.close();
  if (bob) await bob.close();
  if (lorad) {
    if (suite.failed) console.log(`---- lorad log (last lines)\n${lorad.tail(40)}`);
    await lorad.stop();
  }
}
if (!suite.blocker) console.log(`screenshots: ${SCREENS}`);
process.exit(suite.finish());
