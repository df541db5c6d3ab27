// Shared pieces of the dashboard's browser tests: a test registry with the
// repo's "ok/FAIL/skip NAME" lines and closing count, a real lorad with a CPU
// worker in a temp dir, and headless Chromium pages that fail a test on any
// console error. Everything binds 127.0.0.1, waits are bounded, and every
// process started here is killed at the end.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BUILD = path.resolve(ROOT, process.env.LR_BUILD || 'build');
export const SCREENS = process.env.LR_ARTIFACTS || '/tmp/lorad-screens';
export const CHROMIUM = process.env.LR_CHROMIUM || '/usr/bin/chromium';
// The worker lorad spawns and the tests use for mkmodel (default: beside lorad).
export const WORKER = process.env.LR_WORKER_BIN || path.join(BUILD, 'lora-worker');

// ---- test registry ----------------------------------------------------------

export class Suite {
  constructor() { this.tests = []; this.passed = 0; this.failed = 0; this.skipped = 0; this.blocker = null; this.noTraining = null; }
  // opts.training: the test needs a worker that trains.
  test(name, fn, opts = {}) { this.tests.push({ name, fn, opts }); }
  // Every remaining test is skipped with this reason (a missing piece).
  block(why) { if (!this.blocker) this.blocker = why; }
  // Tests that need training are skipped with this reason.
  blockTraining(why) { this.noTraining = why; }
  async run() {
    for (const t of this.tests) {
      const why = this.blocker || (t.opts.training && this.noTraining);
      if (why) { console.log(`skip ${t.name}: missing ${why}`); this.skipped++; continue; }
      const t0 = Date.now();
      try {
        const r = await t.fn();
        if (r && r.skip) { console.log(`skip ${t.name}: ${r.skip}`); this.skipped++; continue; }
        console.log(`ok ${t.name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
        this.passed++;
      } catch (e) {
        console.log(`FAIL ${t.name}: ${e && e.stack ? e.stack.split('\n').slice(0, 4).join('\n  ') : e}`);
        this.failed++;
      }
    }
  }
  finish() {
    console.log(`${this.passed} passed, ${this.failed} failed, ${this.skipped} skipped`);
    return this.failed ? 1 : 0;
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls fn until it returns a truthy value; throws what after ms.
export async function waitFor(fn, ms, what, every = 250) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${ms / 1000}s waiting for ${what}${last instanceof Error ? ` (${last.message})` : ''}`);
    await sleep(every);
  }
}

export function assert(cond, msg) { if (!cond) throw new Error(msg); }

// ---- what the tests need ----------------------------------------------------

function helpText(bin, args) {
  const r = spawnSync(bin, args, { encoding: 'utf8', timeout: 10000 });
  return `${r.stdout || ''}${r.stderr || ''}`;
}

// The first missing piece for the browser and the daemon, or null.
export function missingPiece() {
  if (!fs.existsSync(CHROMIUM)) return `${CHROMIUM} (apt-get install -y chromium)`;
  const pw = path.join(ROOT, 'tests/browser/node_modules/playwright-core');
  const uplot = path.join(ROOT, 'web/vendor/uPlot.iife.min.js');
  if (!fs.existsSync(pw) || !fs.existsSync(uplot)) {
    // The same pinned install `make` does, plus the test's own package.
    const r = spawnSync('bash', [path.join(ROOT, 'mk/web.sh'), '--tests'], { encoding: 'utf8', timeout: 180000 });
    if (r.status !== 0) process.stdout.write(`mk/web.sh --tests: ${(r.stderr || r.stdout || '').trim()}\n`);
  }
  if (!fs.existsSync(pw)) return `${pw} (bash mk/web.sh --tests)`;
  if (!fs.existsSync(uplot)) return `${uplot} (make web)`;
  const lorad = path.join(BUILD, 'lorad');
  if (!fs.existsSync(lorad)) return `${lorad} (make)`;
  const lh = helpText(lorad, ['--help']);
  for (const sub of ['serve', 'user add', 'model add']) if (!lh.includes(`lorad ${sub}`)) return `\`lorad ${sub}\` (not in lorad --help)`;
  return null;
}

// The first missing piece for real training by a CPU worker, or null.
export function missingTraining() {
  const worker = WORKER;
  if (!fs.existsSync(worker)) return `${worker} (make)`;
  for (const sub of ['mkmodel', 'agent']) {
    if (/unknown command/.test(helpText(worker, [sub, '--help']))) return `\`lora-worker ${sub}\` (an unknown command to ${worker})`;
  }
  return null;
}

// A model lorad can register when lora-worker cannot make one: the GPT-2
// fixture (read in place, never copied).
export function fixtureModel() {
  const base = process.env.LR_FIXTURES || path.resolve(ROOT, '../shared/fixtures');
  const dir = path.join(base, 'models/tiny-gpt2-hf');
  return fs.existsSync(path.join(dir, 'config.json')) ? dir : null;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function run(bin, args, what) {
  const r = spawnSync(bin, args, { encoding: 'utf8', timeout: 60000 });
  if (r.status !== 0) throw new Error(`${what}: ${path.basename(bin)} ${args.join(' ')} exited ${r.status}: ${(r.stderr || r.stdout || '').trim().slice(0, 600)}`);
  return r.stdout || '';
}

// ---- lorad --------------------------------------------------------------------

export class Lorad {
  constructor() { this.procs = []; this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorad-web-')); }

  // Model, users, then `lorad serve` with one CPU worker; waits for /healthz
  // and for the worker to be idle.
  // A model (the tiny Llama from `lora-worker mkmodel` when training is
  // possible, else modelDir), users, then `lorad serve` with one CPU
  // worker; waits for /healthz and, when training, for an idle worker.
  async start({ users = [['alice', false], ['bob', false]], workers = 'cpu', training = true, modelDir = null } = {}) {
    this.dataDir = path.join(this.tmp, 'data');
    fs.mkdirSync(this.dataDir);
    const lorad = path.join(BUILD, 'lorad');
    if (training) {
      modelDir = path.join(this.tmp, 'model');
      run(WORKER, ['mkmodel', '--arch', 'llama', '--preset', 'tiny', '--out', modelDir], 'making the tiny model');
    }
    run(lorad, ['model', 'add', 'tiny', modelDir, '--data-dir', this.dataDir], 'registering the model');
    this.tokens = {};
    for (const [name, admin] of users) {
      const out = run(lorad, ['user', 'add', name, ...(admin ? ['--admin'] : []), '--data-dir', this.dataDir], `adding user ${name}`);
      const tok = out.split(/\s+/).filter((w) => /^[A-Za-z0-9_\-.]{20,}$/.test(w)).pop();
      if (!tok) throw new Error(`no token in the output of lorad user add ${name}: ${out.slice(0, 200)}`);
      this.tokens[name] = tok;
    }
    this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.log = path.join(this.tmp, 'lorad.log');
    const fd = fs.openSync(this.log, 'a');
    const args = ['serve', '--data-dir', this.dataDir, '--listen', `127.0.0.1:${this.port}`, '--workers', workers];
    if (process.env.LR_WORKER_BIN) args.push('--worker-bin', WORKER);
    const p = spawn(lorad, args,
      { stdio: ['ignore', fd, fd], detached: true });
    fs.closeSync(fd);
    this.procs.push(p);
    this.exited = null;
    p.on('exit', (code, sig) => { this.exited = `lorad exited (${code ?? sig})`; });
    await waitFor(async () => {
      if (this.exited) throw new Error(`${this.exited}: ${this.tail()}`);
      const r = await fetch(`${this.url}/healthz`);
      return r.ok;
    }, 20000, 'lorad /healthz');
    if (training) {
      await waitFor(async () => {
        const ws = (await this.api(users[0][0], 'GET', '/v1/workers')).data || [];
        return ws.some((w) => w.status === 'idle');
      }, 60000, 'an idle CPU worker');
    }
    return this;
  }

  tail(n = 30) {
    try { return fs.readFileSync(this.log, 'utf8').trim().split('\n').slice(-n).join('\n'); } catch { return ''; }
  }

  db() {
    const f = fs.readdirSync(this.dataDir).find((x) => /\.(db|sqlite3?)$/.test(x));
    if (!f) throw new Error(`no SQLite database in ${this.dataDir}`);
    return path.join(this.dataDir, f);
  }

  // A REST call as user; returns the parsed body, throws on an error status
  // unless expect names it.
  async api(user, method, p, body, expect) {
    const r = await fetch(this.url + p, {
      method,
      headers: { Authorization: `Bearer ${this.tokens[user]}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (expect !== undefined) {
      if (r.status !== expect) throw new Error(`${method} ${p}: expected ${expect}, got ${r.status} ${text.slice(0, 300)}`);
      return data;
    }
    if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text.slice(0, 300)}`);
    return data;
  }

  async upload(user, name, content) {
    const fd = new FormData();
    fd.append('file', new Blob([content]), name);
    const r = await fetch(`${this.url}/v1/datasets`, { method: 'POST', headers: { Authorization: `Bearer ${this.tokens[user]}` }, body: fd });
    const d = await r.json();
    if (!r.ok) throw new Error(`upload ${name}: ${r.status} ${JSON.stringify(d)}`);
    return d;
  }

  async stop() {
    for (const p of this.procs) {
      if (p.exitCode !== null || p.signalCode) continue;
      const done = new Promise((r) => p.once('exit', r));
      try { process.kill(-p.pid, 'SIGTERM'); } catch { /* already gone */ }
      const t = setTimeout(() => { try { process.kill(-p.pid, 'SIGKILL'); } catch { /* gone */ } }, 8000);
      await done;
      clearTimeout(t);
    }
    if (!process.env.LR_KEEP) fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

// ---- browser ------------------------------------------------------------------

export class Browser {
  async start() {
    const { chromium } = await import('./node_modules/playwright-core/index.mjs');
    this.profile = fs.mkdtempSync(path.join(os.tmpdir(), 'lorad-chromium-'));
    this.ctx = await chromium.launchPersistentContext(this.profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 900 },
      timeout: 30000,
    });
    this.ctx.setDefaultTimeout(15000);
    fs.mkdirSync(SCREENS, { recursive: true });
    return this;
  }

  // A page that records console errors and uncaught exceptions. The token
  // lives in localStorage, shared by the pages of this browser: another
  // user gets a Browser of their own.
  async page(baseUrl, token, { width = 1280, height = 900 } = {}) {
    const page = await this.ctx.newPage();
    await page.setViewportSize({ width, height });
    return wrapPage(page, baseUrl, token);
  }

  async close() {
    try { await this.ctx.close(); } catch { /* already closed */ }
    fs.rmSync(this.profile, { recursive: true, force: true });
  }
}

// Console errors fail the test; an HTTP error status the test itself
// provokes (a broken upload, an invalid form) is declared with expectHttp.
function wrapPage(page, baseUrl, token) {
  const errors = [];
  const expected = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const loc = m.location() || {};
    const st = /status of (\d{3})/.exec(m.text());
    if (st) {
      const i = expected.findIndex((e) => e.status === Number(st[1]) && (loc.url || '').includes(e.url));
      if (i >= 0) { expected.splice(i, 1); return; }
    }
    errors.push(`console: ${m.text()} ${loc.url ? `(${loc.url})` : ''}`);
  });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    const u = r.url();
    // the test leaving a page aborts its in-flight polls: not an error
    if ((r.failure() || {}).errorText === 'net::ERR_ABORTED') return;
    if (!u.startsWith(baseUrl)) errors.push(`request outside lorad: ${u}`);
    else errors.push(`request failed: ${u} ${(r.failure() || {}).errorText}`);
  });
  page.on('request', (r) => { if (!r.url().startsWith(baseUrl) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) errors.push(`request outside lorad: ${r.url()}`); });
  return {
    page,
    errors,
    expectHttp(status, url) { expected.push({ status, url }); },
    // Opens a page of the dashboard, with the token stored first when the
    // browser has none yet.
    async open(hash) {
      await page.goto(`${baseUrl}/${hash}`);
      const has = await page.evaluate(() => !!localStorage.getItem('lorad.token'));
      if (!has && token) {
        await page.evaluate((t) => localStorage.setItem('lorad.token', t), token);
        await page.reload();
      }
      await page.waitForLoadState('domcontentloaded');
    },
    async shot(name) {
      await page.screenshot({ path: path.join(SCREENS, `${name}.png`), fullPage: true });
    },
    checkConsole() {
      if (errors.length) throw new Error(`console errors:\n  ${errors.join('\n  ')}`);
    },
    async close() { await page.close(); },
  };
}
