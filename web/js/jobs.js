// #/jobs?status=&user=&sweep= : the live table of jobs.
import { api, serverNow } from './api.js';
import { fmtNum, fmtDuration, elapsed, eta, isFinished, canCancel, buildHash, queuePositions } from './logic.js';
import { h, replace, statusBadge, progressBar, errorBox, table, poll } from './ui.js';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const seenUsers = new Set();
const seenSweeps = new Set();
const POLL_MS = 2000;

const methodOf = (j) => (j.spec && j.spec.method && (j.spec.method.type || j.spec.method)) || j.method || '–';

// A cancel button that asks once more before acting, since a running job's
// progress is lost past its last checkpoint.
export function cancelButton(job, me, onDone, onError) {
  if (isFinished(job.status)) return null;
  const allowed = canCancel(job, me);
  const b = h('button', {
    type: 'button', class: 'danger small cancel', dataset: { id: job.id },
    disabled: !allowed,
    title: allowed ? 'cancel this job' : 'only the owner or an admin can cancel this job',
  }, 'Cancel');
  let armed = false;
  b.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      b.textContent = 'Confirm cancel';
      setTimeout(() => { armed = false; if (b.isConnected && !b.disabled) b.textContent = 'Cancel'; }, 5000);
      return;
    }
    b.disabled = true;
    b.textContent = 'Cancelling…';
    try {
      await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: 'POST' });
      onDone && onDone();
    } catch (e) {
      b.textContent = 'Cancel';
      onError && onError(e);
    }
  });
  return b;
}

function row(j, now, me, pos, refresh, showError) {
  const p = j.progress || {};
  const m = j.metrics || {};
  const el = elapsed(j, now);
  const left = j.status === 'running' ? eta(p.step, p.total_steps, el) : null;
  return h('tr', { dataset: { id: j.id, status: j.status } },
    h('td', { class: 'status' }, statusBadge(j.status), pos ? h('span', { class: 'muted qpos', title: 'place in the queue' }, pos === 1 ? ' next' : ` #${pos}`) : null),
    h('td', { class: 'name' }, h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.name || j.id), j.name ? h('div', { class: 'muted id' }, j.id) : null),
    h('td', { class: 'user', dataset: { label: 'user' } }, j.user),
    h('td', { class: 'model', dataset: { label: 'model' } }, j.model),
    h('td', { class: 'method', dataset: { label: 'method' } }, methodOf(j)),
    h('td', { class: 'prog' }, progressBar(p.step, p.total_steps)),
    h('td', { class: 'step num', dataset: { label: 'step' } }, `${p.step ?? 0}/${p.total_steps || '?'}`),
    h('td', { class: 'loss num', dataset: { label: 'loss' } }, fmtNum(m.loss)),
    h('td', { class: 'eval num', dataset: { label: 'eval' } }, fmtNum(m.eval_loss)),
    h('td', { class: 'tps num', dataset: { label: 'tok/s' } }, fmtNum(m.tokens_per_s, 3)),
    h('td', { class: 'elapsed num', dataset: { label: 'elapsed' } }, fmtDuration(el)),
    h('td', { class: 'eta num', dataset: { label: 'ETA' } }, fmtDuration(left)),
    h('td', { class: 'act' }, cancelButton(j, me, refresh, showError)),
  );
}

function select(name, label, values, current, onchange) {
  return h('label', { class: 'filter' }, label,
    h('select', { name, value: current || '', onchange },
      h('option', { value: '' }, 'all'),
      values.map((v) => h('option', { value: v }, v))));
}

export function mount(root, ctx) {
  const q = ctx.query || {};
  const filters = { status: q.status || '', user: q.user || '', sweep: q.sweep || '' };
  if (filters.user) seenUsers.add(filters.user);
  if (filters.sweep) seenSweeps.add(filters.sweep);
  const bar = h('div', { class: 'filters' });
  const msg = h('div', { class: 'msg' });
  const body = h('div', {}, h('p', { class: 'muted' }, 'loading…'));
  const stamp = h('span', { class: 'muted stamp' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Jobs'), stamp), bar, msg, body);

  const setFilter = (k) => (e) => {
    location.hash = buildHash(['jobs'], { ...filters, [k]: e.target.value });
  };
  const drawFilters = () => replace(bar,
    select('status', 'status', STATUSES, filters.status, setFilter('status')),
    select('user', 'user', [...seenUsers].sort(), filters.user, setFilter('user')),
    select('sweep', 'sweep', [...seenSweeps].sort(), filters.sweep, setFilter('sweep')),
    filters.sweep ? h('a', { class: 'button secondary small', href: buildHash(['compare'], { sweep: filters.sweep }) }, 'Compare this sweep') : null);
  drawFilters();

  const showError = (e) => replace(msg, errorBox(e));
  const load = async () => {
    const r = await api('/v1/jobs', { params: { status: filters.status, user: filters.user, sweep_id: filters.sweep, limit: 100 } });
    const list = (r && r.data) || [];
    const before = seenUsers.size + seenSweeps.size;
    for (const j of list) { if (j.user) seenUsers.add(j.user); if (j.sweep_id) seenSweeps.add(j.sweep_id); }
    if (seenUsers.size + seenSweeps.size !== before) drawFilters();
    const now = serverNow();
    const pos = queuePositions(list);
    const rows = list.map((j) => row(j, now, ctx.me, pos[j.id], () => p.now(), showError));
    replace(body, list.length
      ? table(['status', 'job', 'user', 'model', 'method', 'progress', 'step', 'loss', 'eval loss', 'tokens/s', 'elapsed', 'ETA', ''], rows, { class: 'jobs' })
      : h('p', { class: 'muted' }, 'No jobs', filters.status || filters.user || filters.sweep ? ' match these filters.' : ' yet: submit one.'));
    if (msg.firstChild && msg.firstChild.dataset.stale) msg.replaceChildren();
    stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
  };
  const p = poll(load, POLL_MS, (e) => replace(msg, Object.assign(errorBox(e), { dataset: { stale: '1' } })));
  return () => p.stop();
}
