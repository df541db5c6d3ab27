// The job page of a job that co-trained in one worker pass (issue 19): it
// names and links the jobs that shared the pass and its packed steps; a job
// that trained alone shows no such field. The rows are written with sqlite3
// as lorad's store writes them from the worker's pack heartbeats (the
// flow itself is tests/integration/test_daemon_pack.py), so no worker needs
// to train.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { Suite, Lorad, Browser, missingPiece, fixtureModel, waitFor, assert } from './harness.mjs';

const suite = new Suite();
const missing = missingPiece();
if (missing) suite.block(missing);
else if (!fixtureModel()) suite.block('the fixture model (../shared/fixtures)');
const sqlite = '/usr/bin/sqlite3';
if (!fs.existsSync(sqlite)) suite.block(`${sqlite} (apt-get install -y sqlite3)`);

let lorad, alice;
const A = 'ftjob-packpagea001', B = 'ftjob-packpageb002', C = 'ftjob-packpagec003', SOLO = 'ftjob-packpagesolo';

suite.test('lorad starts (no training needed)', async () => {
  lorad = await new Lorad().start({ training: false, modelDir: fixtureModel() });
  alice = await new Browser().start();
  const spec = JSON.stringify({ model: 'tiny', training_file: 'file-x', hyperparameters: { max_steps: 10 } });
  const t0 = Math.floor(Date.now() / 1000) - 60;
  const mates = JSON.stringify([A, B, C]);
  const row = (id, pack) => `INSERT INTO jobs(id, name, user, model, status, priority, device, spec, created_at, started_at,
    finished_at, step, total_steps, pack_id, pack_jobs, packed_steps) VALUES ('${id}', '${id}', 'alice', 'tiny', 'succeeded',
    0, 'any', '${spec}', ${t0}, ${t0}, ${t0 + 30}, 10, 10, ${pack ? "'w0-1-p1'" : 'NULL'}, ${pack ? `'${mates}'` : 'NULL'},
    ${pack ? 9 : 0});`;
  const sql = `.timeout 20000\n${[A, B, C].map((id) => row(id, true)).join('\n')}\n${row(SOLO, false)}\n`;
  const r = spawnSync(sqlite, [lorad.db()], { input: sql, encoding: 'utf8', timeout: 60000 });
  assert(r.status === 0, `sqlite3: ${r.stderr}`);
});

suite.test('job page: "shared a pass with" names and links the other jobs', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/jobs/${B}`);
  await waitFor(async () => (await p.page.$('.kv.pack')) !== null, 10000, 'the pack field');
  const text = await p.page.$eval('.kv.pack .v', (el) => el.textContent);
  const links = await p.page.$$eval('.kv.pack .v a', (as) => as.map((a) => a.getAttribute('href')));
  assert(text === `${A}, ${C} (9 steps packed)`, `pack field: ${text}`);
  assert(links.length === 2 && links[0] === `#/jobs/${A}` && links[1] === `#/jobs/${C}`, `links: ${links}`);
  await p.shot('job-pack');
  p.checkConsole();
  await p.close();
});

suite.test('job page: a job that trained alone has no pack field', async () => {
  const p = await alice.page(lorad.url, lorad.tokens.alice);
  await p.open(`#/jobs/${SOLO}`);
  await waitFor(async () => (await p.page.$('.kv')) !== null, 10000, 'the job fields');
  assert((await p.page.$('.kv.pack')) === null, 'a pack field on a job that trained alone');
  p.checkConsole();
  await p.close();
});

try {
  await suite.run();
} finally {
  if (alice) await alice.close();
  if (lorad) {
    if (suite.failed) console.log(`---- lorad log (last lines)\n${lorad.tail(40)}`);
    await lorad.stop();
  }
}
process.exit(suite.finish());
