// The official openai SDK (pinned in package.json) against a real lorad:
// every call is the SDK's own, on a client made with baseURL and apiKey
// only. Run by tests/integration/test_openai_sdk.py, which starts lorad and
// passes LORAD_URL, LORAD_TOKEN (alice), LORAD_TOKEN_BOB and the data files
// in OAI_TRAIN, OAI_VALID, OAI_DPO. Prints "ok|FAIL NAME" lines, then
// "RESULT {json}" for the checks the harness makes on the server's files.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const client = new OpenAI({ baseURL: `${env.LORAD_URL}/v1`, apiKey: env.LORAD_TOKEN });
const bob = new OpenAI({ baseURL: `${env.LORAD_URL}/v1`, apiKey: env.LORAD_TOKEN_BOB });
let passed = 0, failed = 0;
const result = {};

function check(cond, name, detail) {
  if (cond) { passed++; console.log(`ok   ${name}`); } else { failed++; console.log(`FAIL ${name}${detail !== undefined ? ': ' + JSON.stringify(detail).slice(0, 600) : ''}`); }
  return cond;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(fn, secs, what) {
  const end = Date.now() + secs * 1000;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${secs} s waiting for ${what}`);
    await sleep(200);
  }
}
async function errorOf(p) {
  try { await p; return null; } catch (e) { return e; }
}
const done = (s) => ['succeeded', 'failed', 'cancelled'].includes(s);
async function finish(id, secs = 240) {
  return waitFor(async () => { const j = await client.fineTuning.jobs.retrieve(id); return done(j.status) && j; }, secs, `job ${id}`);
}

// Required fields of OpenAI's objects, read from the SDK's own types (its
// d.ts files are generated from OpenAI's OpenAPI description): the fields
// of `export interface NAME {` without '?'.
function required(file, name) {
  const src = fs.readFileSync(path.join(here, 'node_modules/openai/resources', file), 'utf8');
  const start = src.indexOf(`export interface ${name} {`);
  if (start < 0) throw new Error(`no interface ${name} in ${file}`);
  const body = src.slice(start, src.indexOf('\n}', start));
  const out = [];
  let depth = 0;
  for (const line of body.split('\n').slice(1)) {
    const m = depth === 0 && line.match(/^ {4}(\w+)(\??):/);
    if (m && !m[2]) out.push(m[1]);
    depth += (line.match(/{/g) || []).length - (line.match(/}/g) || []).length;
  }
  return out;
}
function schemaCheck(obj, file, name) {
  const req = required(file, name);
  const missing = req.filter((k) => !(k in obj));
  check(req.length > 3 && missing.length === 0, `${name}: every required field of OpenAI's schema (${req.join(', ')})`, missing);
}

const supervised = (epochs, seed, extra = {}) => ({
  model: 'demo-tiny',
  training_file: result.train,
  validation_file: result.valid,
  seed,
  method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: epochs, batch_size: 8, learning_rate_multiplier: 15 } } },
  ...extra,
});

async function main() {
  // files
  const train = await client.files.create({ file: fs.createReadStream(env.OAI_TRAIN), purpose: 'fine-tune' });
  const valid = await client.files.create({ file: fs.createReadStream(env.OAI_VALID), purpose: 'fine-tune' });
  const dpo = await client.files.create({ file: fs.createReadStream(env.OAI_DPO), purpose: 'fine-tune' });
  result.train = train.id; result.valid = valid.id;
  check(train.object === 'file' && train.purpose === 'fine-tune' && train.status === 'processed' && train.bytes > 0 &&
        train.filename === path.basename(env.OAI_TRAIN), 'files.create: a file object, validated', train);
  schemaCheck(train, 'files.d.ts', 'FileObject');
  const got = await client.files.retrieve(valid.id);
  check(got.id === valid.id && got.bytes === valid.bytes, 'files.retrieve', got);
  const content = await (await client.files.content(valid.id)).text();
  check(content === fs.readFileSync(env.OAI_VALID, 'utf8'), 'files.content: the bytes uploaded');
  const files = [];
  for await (const f of client.files.list({ purpose: 'fine-tune', limit: 2 })) files.push(f.id);
  check([train.id, valid.id, dpo.id].every((id) => files.includes(id)) && files.length === 3,
    'files.list auto-pages (limit 2) through every file', files);

  // typed errors
  let e = await errorOf(client.fineTuning.jobs.create({ ...supervised(1, 1), method: { type: 'reinforcement' } }));
  check(e instanceof OpenAI.BadRequestError && e.param === 'method.type' && /supervised and dpo/.test(e.message),
    'reinforcement: BadRequestError with param method.type naming what is supported', e && [e.status, e.param, e.message]);
  e = await errorOf(client.fineTuning.jobs.create({ ...supervised(1, 1), training_file: 'file-000000000000' }));
  check(e instanceof OpenAI.BadRequestError && e.param === 'training_file', 'unknown training_file: BadRequestError, param training_file', e && [e.status, e.param]);
  e = await errorOf(client.fineTuning.jobs.retrieve('ftjob-000000000000'));
  check(e instanceof OpenAI.NotFoundError && e.type === 'not_found_error', 'unknown job: NotFoundError', e && [e.status, e.type]);
  const stranger = new OpenAI({ baseURL: `${env.LORAD_URL}/v1`, apiKey: 'lr_not_a_token' });
  e = await errorOf(stranger.files.list());
  check(e instanceof OpenAI.AuthenticationError, 'a bad key: AuthenticationError', e && e.status);

  // pause and resume: job P is paused while it runs, then resumed
  const p = await client.fineTuning.jobs.create(supervised(4, 7, { suffix: 'pr' }));
  await waitFor(async () => { const j = await client.fineTuning.jobs.retrieve(p.id); return j.status === 'running' && j.progress.step >= 3; }, 120, 'P running');
  const pausing = await client.fineTuning.jobs.pause(p.id);
  check(pausing.id === p.id && ['running', 'paused'].includes(pausing.status), 'jobs.pause answers the job', pausing.status);
  const paused = await waitFor(async () => { const j = await client.fineTuning.jobs.retrieve(p.id); return j.status !== 'running' && j; }, 60, 'P paused');
  check(paused.status === 'paused' && paused.progress.step < paused.progress.total_steps, 'the job is paused mid-run', [paused.status, paused.progress]);
  result.paused_at = paused.progress.step;
  // U: the same job, uninterrupted; A: the main job
  const u = await client.fineTuning.jobs.create(supervised(4, 7, { suffix: 'pr' }));
  const a = await client.fineTuning.jobs.create(supervised(10, 42, { suffix: 'notes', metadata: { team: 'docs', run: 'main' } }));
  check(a.status === 'queued' && a.seed === 42 && a.metadata.team === 'docs' && a.user_provided_suffix === 'notes' &&
        a.hyperparameters.n_epochs === 10 && a.hyperparameters.batch_size === 8 && a.hyperparameters.learning_rate_multiplier === 15 &&
        a.method.type === 'supervised' && a.validation_file === valid.id && a.fine_tuned_model === null,
  'jobs.create: OpenAI fields recorded and shown', a);
  schemaCheck(a, 'fine-tuning/jobs/jobs.d.ts', 'FineTuningJob');

  // a full queue: bob may queue 2 (max_queued_per_user); the third is refused
  const b1 = await bob.fineTuning.jobs.create(supervised(1, 1));
  const b2 = await bob.fineTuning.jobs.create(supervised(1, 1));
  e = await errorOf(bob.fineTuning.jobs.create(supervised(1, 1)));
  check(e instanceof OpenAI.RateLimitError && e.code === 'too_many_queued', 'a full queue: RateLimitError', e && [e.status, e.code]);
  for (const b of [b1, b2]) {
    const c = await bob.fineTuning.jobs.cancel(b.id);
    check(c.status === 'cancelled', `jobs.cancel of a queued job (${b.id})`, c.status);
  }

  const resumed = await client.fineTuning.jobs.resume(p.id);
  check(resumed.status === 'queued', 'jobs.resume queues the paused job again', resumed.status);
  const [pf, uf, af] = [await finish(p.id), await finish(u.id), await finish(a.id, 400)];
  check(pf.status === 'succeeded' && uf.status === 'succeeded' && af.status === 'succeeded', 'the three jobs succeed',
    [pf.status, uf.status, af.status, af.error]);
  result.p = p.id; result.u = u.id; result.model = af.fine_tuned_model;
  const pev = [];
  for await (const ev of client.fineTuning.jobs.listEvents(p.id, { limit: 100 })) pev.push(ev.message);
  check(pev.some((m) => m.startsWith('paused at the checkpoint of step')), 'P\'s events say where it paused', pev.slice(0, 12));
  e = await errorOf(client.fineTuning.jobs.resume(p.id));
  check(e instanceof OpenAI.ConflictError && /only a paused job/.test(e.message), 'resume of a finished job: ConflictError', e && [e.status, e.message]);
  e = await errorOf(bob.fineTuning.jobs.pause(a.id));
  check(e instanceof OpenAI.PermissionDeniedError, 'pause of another user\'s job: PermissionDeniedError', e && e.status);

  // the finished job
  check(af.fine_tuned_model === `ft:demo-tiny:alice:notes:${a.id}` && af.finished_at >= af.created_at &&
        Number.isInteger(af.finished_at) && af.trained_tokens > 0,
  'retrieve: fine_tuned_model ft:<base>:<user>:<suffix>:<job id>, unix seconds, trained_tokens', af);
  const ids = [];
  for await (const j of client.fineTuning.jobs.list({ limit: 2 })) ids.push(j.id);
  check([p.id, u.id, a.id].every((id) => ids.includes(id)) && ids.indexOf(a.id) < ids.indexOf(p.id),
    'jobs.list auto-pages (limit 2), newest first', ids);
  const tagged = [];
  for await (const j of client.fineTuning.jobs.list({ metadata: { run: 'main' } })) tagged.push(j.id);
  check(tagged.length === 1 && tagged[0] === a.id, 'jobs.list metadata[run]=main finds the main job alone', tagged);

  const events = [];
  for await (const ev of client.fineTuning.jobs.listEvents(a.id, { limit: 20 })) events.push(ev);
  const metrics = events.filter((ev) => ev.type === 'metrics');
  check(metrics.length >= 10 && metrics.every((ev) => Number.isInteger(ev.data.step) && typeof ev.data.train_loss === 'number' &&
        ev.data.total_steps === af.progress.total_steps) && metrics.some((ev) => typeof ev.data.valid_loss === 'number'),
  'listEvents: metrics events with step, train_loss, valid_loss, total_steps', metrics.slice(0, 2));
  const frac = (v) => typeof v === 'number' && v >= 0 && v <= 1;
  check(metrics.every((ev) => frac(ev.data.train_mean_token_accuracy)) &&
        metrics.some((ev) => frac(ev.data.valid_mean_token_accuracy)),
  'listEvents: metrics events with train_mean_token_accuracy and valid_mean_token_accuracy in [0, 1]',
  metrics.slice(0, 2).map((ev) => ev.data));
  check(events.length > 20 && events.every((ev, i) => i === 0 || ev.created_at <= events[i - 1].created_at),
    'listEvents auto-pages newest first', events.length);
  schemaCheck(events.find((ev) => ev.type === 'message'), 'fine-tuning/jobs/jobs.d.ts', 'FineTuningJobEvent');

  const ckpts = [];
  for await (const c of client.fineTuning.jobs.checkpoints.list(a.id)) ckpts.push(c);
  check(ckpts.length >= 1 && ckpts.every((c) => c.object === 'fine_tuning.job.checkpoint' && c.fine_tuning_job_id === a.id &&
        c.fine_tuned_model_checkpoint === `${af.fine_tuned_model}:ckpt-step-${c.step_number}` && c.metrics.step === c.step_number),
  'checkpoints.list: named checkpoints with metrics', ckpts);
  if (ckpts.length) schemaCheck(ckpts[0], 'fine-tuning/jobs/checkpoints.d.ts', 'FineTuningJobCheckpoint');

  // the tuned model answers in the template it learned
  const ask = { messages: [{ role: 'user', content: 'What colour is milk?' }], temperature: 0, max_tokens: 40 };
  const chat = await client.chat.completions.create({ model: af.fine_tuned_model, ...ask });
  const text = chat.choices[0].message.content;
  check(chat.object === 'chat.completion' && /^Answer: /.test(text) && chat.usage.completion_tokens > 0 &&
        chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens,
  'chat.completions.create with the fine-tuned model answers in the taught template', chat);
  const stream = await client.chat.completions.create({ model: af.fine_tuned_model, ...ask, stream: true });
  let streamed = '', chunks = 0, finishReason = null;
  for await (const ch of stream) {
    chunks++;
    streamed += ch.choices[0]?.delta?.content ?? '';
    finishReason = ch.choices[0]?.finish_reason ?? finishReason;
  }
  check(chunks > 2 && streamed === text && finishReason === chat.choices[0].finish_reason,
    'streamed (SSE) text equals the non-streamed text at temperature 0', [streamed, text, chunks]);
  const base = await client.chat.completions.create({ model: 'demo-tiny', ...ask });
  check(!/^Answer: /.test(base.choices[0].message.content), 'the base model does not know the template', base.choices[0].message.content);
  if (ckpts.length) {
    const ck = await client.chat.completions.create({ model: ckpts[0].fine_tuned_model_checkpoint, ...ask });
    check(typeof ck.choices[0].message.content === 'string', 'a checkpoint name is a model too', ck.choices[0]);
  }
  const cmpl = await client.completions.create({ model: af.fine_tuned_model, prompt: 'Milk is', max_tokens: 5, temperature: 0 });
  check(cmpl.object === 'text_completion' && typeof cmpl.choices[0].text === 'string', 'completions.create', cmpl);
  e = await errorOf(client.chat.completions.create({ model: 'ft:demo-tiny:alice:x:ftjob-000000000000', ...ask }));
  check(e instanceof OpenAI.NotFoundError && e.param === 'model', 'an unknown fine-tuned model: NotFoundError', e && [e.status, e.param]);
  e = await errorOf(client.chat.completions.create({ model: af.fine_tuned_model, ...ask, n: 2 }));
  check(e instanceof OpenAI.BadRequestError && e.param === 'n', 'n = 2: BadRequestError, param n', e && [e.status, e.param]);

  // the results file and the fine-tuned model among the models
  check(af.result_files.length === 1, 'a succeeded job has a results file', af.result_files);
  const rf = await client.files.retrieve(af.result_files[0]);
  const csv = (await (await client.files.content(rf.id)).text()).trim().split('\n');
  check(rf.purpose === 'fine-tune-results' && rf.bytes > 0 && csv[0] === 'step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate' &&
        csv.length - 1 === metrics.length,
  'the results file: a CSV of every logged step', [rf, csv.length, metrics.length, csv.slice(0, 3)]);
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  check(models.some((m) => m.id === 'demo-tiny' && m.owned_by === 'lorad') &&
        models.some((m) => m.id === af.fine_tuned_model && m.owned_by === 'alice' && m.object === 'model'),
  'models.list: the base and the fine-tuned models', models.map((m) => m.id));
  const fm = await client.models.retrieve(uf.fine_tuned_model);
  check(fm.id === uf.fine_tuned_model && Number.isInteger(fm.created), 'models.retrieve of a fine-tuned model', fm);

  // DPO in OpenAI's preference format, then deleting its file
  const d = await client.fineTuning.jobs.create({
    model: 'demo-tiny', training_file: dpo.id, seed: 3,
    method: { type: 'dpo', dpo: { hyperparameters: { beta: 0.2, n_epochs: 1, batch_size: 4 } } },
  });
  check(d.method.type === 'dpo' && d.method.dpo.hyperparameters.beta === 0.2, 'a DPO job: method dpo with beta', d.method);
  const df = await finish(d.id);
  check(df.status === 'succeeded', 'the DPO job succeeds', df.error);
  const gone = await client.models.delete(df.fine_tuned_model);
  check(gone.deleted === true && gone.id === df.fine_tuned_model, 'models.delete of a fine-tuned model', gone);
  e = await errorOf(client.chat.completions.create({ model: df.fine_tuned_model, ...ask }));
  check(e instanceof OpenAI.NotFoundError && e.param === 'model', 'a deleted fine-tuned model: NotFoundError', e && [e.status, e.message]);
  e = await errorOf(client.models.retrieve(df.fine_tuned_model));
  check(e instanceof OpenAI.NotFoundError, 'a deleted fine-tuned model is gone from the models', e && e.status);
  const del = await client.files.delete(dpo.id);
  check(del.deleted === true && del.id === dpo.id, 'files.delete', del);
  e = await errorOf(client.files.retrieve(dpo.id));
  check(e instanceof OpenAI.NotFoundError, 'a deleted file: NotFoundError', e && e.status);
}

try {
  await main();
} catch (err) {
  check(false, 'the SDK flow ran to its end', String(err && err.stack || err));
}
console.log(`RESULT ${JSON.stringify(result)}`);
console.log(`${passed} passed, ${failed} failed, 0 skipped`);
process.exit(failed ? 1 : 0);
