// The dashboard's submit form is built from GET /v1/jobspec (proto/jobspec.c's
// table): every field the table marks "form" is on it with the table's enum,
// default, range and help, none other is, and compute_dtype, a field that
// web/js/submit.js never names, is offered as a select of the table's values
// and reaches the submitted job. Runs against a real lorad (the GPT-2 fixture
// registered, else the tiny Llama); the job's run is not waited for.
// Run: cd tests/browser && LR_BUILD=build-X node test_submit_form.mjs
import fs from 'node:fs';
import path from 'node:path';
import { Suite, Lorad, Browser, ROOT, missingPiece, missingTraining, fixtureModel, assert } from './harness.mjs';

const suite = new Suite();
const missing = missingPiece();
if (missing) suite.block(missing);
const fixture = fixtureModel();
const noTraining = missingTraining();
if (!fixture && noTraining) suite.block(`${noTraining}, and no fixture model to use instead`);

const CHAT = Array.from({ length: 8 }, (_, i) => JSON.stringify({
  messages: [{ role: 'user', content: `What is ${i} plus 1?` }, { role: 'assistant', content: `${i + 1}.` }],
})).join('\n') + '\n';

let lorad, browser, schema, datasetId;

suite.test('GET /v1/jobspec answers the table without a token', async () => {
  lorad = await new Lorad().start(fixture ? { training: false, modelDir: fixture } : {});
  const r = await fetch(`${lorad.url}/v1/jobspec`);
  assert(r.ok, `GET /v1/jobspec: ${r.status}`);
  schema = await r.json();
  const cd = schema.fields.find((f) => f.path === 'compute_dtype');
  assert(cd && cd.form && JSON.stringify(cd.enum) === '["auto","f32","bf16"]' && cd.default === 'auto',
    `compute_dtype in the table: ${JSON.stringify(cd)}`);
  datasetId = (await lorad.upload('alice', 'chat.jsonl', CHAT)).id;
  browser = await new Browser().start();
});

suite.test('the form has the table\'s fields, enums, defaults, ranges and help', async () => {
  const src = fs.readFileSync(path.join(ROOT, 'web/js/submit.js'), 'utf8');
  assert(!src.includes('compute_dtype'), 'web/js/submit.js names compute_dtype: the test would not show the table drives the form');
  const p = await browser.page(lorad.url, lorad.tokens.alice);
  await p.open('#/submit');
  await p.page.waitForSelector('form.submit-form');
  const names = await p.page.$$eval('form.submit-form [name]', (els) => els.map((e) => e.name));
  const want = schema.fields.filter((f) => f.form).map((f) => f.path);
  assert(JSON.stringify([...names].sort()) === JSON.stringify([...want].sort()),
    `form fields ${names.join(',')}\n  table's form fields ${want.join(',')}`);
  const cd = await p.page.$eval('select[name="compute_dtype"]', (s) => ({ options: [...s.options].map((o) => o.value), value: s.value }));
  assert(JSON.stringify(cd.options) === '["auto","f32","bf16"]' && cd.value === 'auto', `compute_dtype select: ${JSON.stringify(cd)}`);
  const hint = await p.page.$eval('.field[data-param="compute_dtype"] small', (e) => e.textContent);
  const help = schema.fields.find((f) => f.path === 'compute_dtype').description;
  assert(hint.includes(help), `compute_dtype's hint "${hint}" lacks the table's help`);
  const bs = schema.fields.find((f) => f.path === 'hyperparameters.batch_size');
  const input = await p.page.$eval('input[name="hyperparameters.batch_size"]', (e) => ({ type: e.type, min: e.min, max: e.max, ph: e.placeholder }));
  assert(input.type === 'number' && input.min === String(bs.minimum) && input.max === String(bs.maximum) && input.ph === String(bs.default),
    `batch_size input ${JSON.stringify(input)} vs the table's ${JSON.stringify(bs)}`);
  const sched = await p.page.$eval('select[name="hyperparameters.lr_scheduler"]', (s) => s.value);
  assert(sched === schema.fields.find((f) => f.path === 'hyperparameters.lr_scheduler').default, `scheduler preselected ${sched}`);
  p.checkConsole();
  await p.close();
});

suite.test('submit: compute_dtype bf16 chosen in the form reaches the job', async () => {
  const p = await browser.page(lorad.url, lorad.tokens.alice);
  await p.open('#/submit');
  await p.page.waitForSelector('form.submit-form');
  await p.page.fill('[name="name"]', 'dtype-from-table');
  await p.page.selectOption('[name="model"]', 'tiny');
  await p.page.selectOption('[name="training_file"]', datasetId);
  await p.page.fill('[name="hyperparameters.max_steps"]', '1');
  await p.page.selectOption('[name="compute_dtype"]', 'bf16');
  await p.page.click('form.submit-form button[type=submit]');
  await p.page.waitForFunction(() => /^#\/jobs\/ftjob-/.test(location.hash));
  const id = decodeURIComponent(await p.page.evaluate(() => location.hash.split('/')[2]));
  const j = await lorad.api('alice', 'GET', `/v1/jobs/${id}`);
  assert(j.spec.compute_dtype === 'bf16' && j.spec.hyperparameters.max_steps === 1 && j.name === 'dtype-from-table',
    `spec not as submitted: ${JSON.stringify(j.spec).slice(0, 300)}`);
  p.checkConsole();
  await p.close();
});

try {
  await suite.run();
} finally {
  if (browser) await browser.close();
  if (lorad) {
    if (suite.failed) console.log(`---- lorad log (last lines)\n${lorad.tail(40)}`);
    await lorad.stop();
  }
}
process.exit(suite.finish());
