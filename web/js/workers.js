// #/workers : each device lorad supervises, what it runs and for whom.
import { api, serverNow } from './api.js';
import { fmtBytes, fmtDuration, fmtTime } from './logic.js';
import { h, replace, statusBadge, errorBox, table, poll } from './ui.js';

export function mount(root) {
  const msg = h('div', { class: 'msg' });
  const body = h('div', {}, h('p', { class: 'muted' }, 'loading…'));
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Workers')), msg, body);
  const jobs = new Map(); // job id -> job, for the owner and start time

  const load = async () => {
    const r = await api('/v1/workers');
    const ws = (r && r.data) || [];
    for (const w of ws) {
      const jid = w.job_id || w.job;
      if (jid && !jobs.has(jid)) jobs.set(jid, await api(`/v1/jobs/${encodeURIComponent(jid)}`));
    }
    const now = serverNow();
    replace(body, ws.length ? table(['worker', 'device', 'status', 'job', 'owner', 'memory', 'threads', 'since', 'restarts'], ws.map((w) => {
      const jid = w.job_id || w.job;
      const j = jid ? jobs.get(jid) : null;
      // Busy: since its job started; otherwise since the worker last spoke.
      const since = j && j.started_at ? j.started_at : (w.started_at ?? w.last_seen ?? null);
      return h('tr', { dataset: { id: w.id } },
        h('td', {}, w.id),
        h('td', {}, `${w.backend}${w.device ? ` · ${w.device}` : ''}`),
        h('td', {}, statusBadge(w.status)),
        h('td', {}, jid ? h('a', { href: `#/jobs/${encodeURIComponent(jid)}` }, (j && j.name) || jid) : '–'),
        h('td', {}, j ? j.user : '–'),
        h('td', { class: 'num' }, w.mem_bytes ? fmtBytes(w.mem_bytes) : '–'),
        h('td', { class: 'num' }, w.threads ?? '–'),
        h('td', { title: fmtTime(since) }, since ? `${fmtDuration(now - since)} ago` : '–'),
        h('td', { class: 'num' }, w.restarts ?? 0));
    }), { class: 'workers' }) : h('p', { class: 'muted' }, 'No workers: start lorad with --workers cpu (or cuda:0,...).'));
    if (msg.firstChild) msg.replaceChildren();
  };
  const p = poll(load, 3000, (e) => replace(msg, errorBox(e)));
  return () => p.stop();
}
