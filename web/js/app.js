// The shell: token entry, who am I, and hash routing to one page module at a
// time. A page is mount(el, ctx) returning its cleanup (timers, charts).
import { api, getToken, setToken, ApiError } from './api.js';
import { parseHash } from './logic.js';
import { h, replace, errorBox } from './ui.js';
import * as jobs from './jobs.js';
import * as job from './job.js';
import * as compare from './compare.js';
import * as workers from './workers.js';
import * as datasets from './datasets.js';
import * as submit from './submit.js';

const view = document.getElementById('view');
const panel = document.getElementById('token-panel');
const who = document.getElementById('who');
const ctx = { me: null };
let cleanup = null;

function route() {
  const { path, query } = parseHash(location.hash);
  const [page = 'jobs', id] = path;
  if (page === 'jobs' && id) return { mod: job, page, id, query };
  const mod = { jobs, compare, workers, datasets, submit }[page];
  return mod ? { mod, page, id, query } : null;
}

function render() {
  if (cleanup) { try { cleanup(); } catch (e) { console.warn(e); } cleanup = null; }
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', location.hash.startsWith(a.getAttribute('href')));
  if (!getToken()) {
    panel.hidden = false;
    replace(view, h('div', { class: 'card' }, h('p', {}, 'Enter an API token above to see the dashboard.')));
    return;
  }
  const r = route();
  if (!r) { replace(view, errorBox(`no page ${location.hash}`)); return; }
  view.replaceChildren();
  view.dataset.page = r.page;
  cleanup = r.mod.mount(view, { ...ctx, id: r.id, query: r.query }) || null;
}

async function loadMe() {
  ctx.me = null;
  who.textContent = getToken() ? 'token ✓' : 'token';
  if (!getToken()) return;
  try {
    const me = await api('/v1/me');
    ctx.me = { user: me.user || me.name || me.id, admin: !!(me.admin ?? me.is_admin) };
    who.textContent = ctx.me.user + (ctx.me.admin ? ' (admin)' : '');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) who.textContent = 'token ✗';
  }
}

document.getElementById('token-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = document.getElementById('token-input');
  const t = input.value.trim();
  if (!t) return;
  setToken(t);
  input.value = '';
  await loadMe();
  document.getElementById('token-msg').textContent = ctx.me ? `signed in as ${ctx.me.user}` : 'saved';
  if (ctx.me) panel.hidden = true;
  render();
});
document.getElementById('token-clear').addEventListener('click', () => {
  setToken('');
  ctx.me = null;
  who.textContent = 'token';
  document.getElementById('token-msg').textContent = 'forgotten';
  render();
});
who.addEventListener('click', () => { panel.hidden = !panel.hidden; });
window.addEventListener('lorad:unauthorized', () => {
  panel.hidden = false;
  document.getElementById('token-msg').textContent = 'lorad refused the token: enter a valid one';
});
window.addEventListener('hashchange', render);

if (!location.hash) history.replaceState(null, '', '#/jobs');
loadMe().then(render);
