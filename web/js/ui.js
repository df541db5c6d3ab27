// DOM helpers shared by the pages. Text always goes in as text nodes, so
// names and messages from the server cannot inject markup.
import { progressFraction } from './logic.js';

// h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child, [more])
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  let value;
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'value') { value = v; continue; }
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  // After the children: a <select>'s value needs its options.
  if (value !== undefined) el.value = value;
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function statusBadge(status) {
  return h('span', { class: `badge st-${status}`, dataset: { status } }, status);
}

export function progressBar(step, total) {
  const f = progressFraction(step, total);
  return h('div', { class: 'progress', title: `${Math.round(f * 100)}%`, role: 'progressbar', 'aria-valuenow': Math.round(f * 100) },
    h('div', { class: 'bar', style: { width: `${(f * 100).toFixed(1)}%` } }));
}

export function errorBox(err) {
  return h('div', { class: 'error', role: 'alert' }, err && err.message ? err.message : String(err));
}

export function table(headers, rows, opts = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: opts.class || '' },
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))),
      h('tbody', {}, rows)));
}

// Runs fn now and again every ms after it settles, until stopped; skips
// while the tab is hidden. Errors go to onError and do not stop the loop.
export function poll(fn, ms, onError) {
  let timer = null, stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try { await fn(); } catch (e) { if (!stopped && onError) onError(e); }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return { stop() { stopped = true; clearTimeout(timer); }, now() { clearTimeout(timer); tick(); } };
}

// Preferences kept across visits (smoothing, x axis, log scale).
export function pref(key, fallback) {
  try {
    const v = localStorage.getItem(`lorad.${key}`);
    return v === null ? fallback : JSON.parse(v);
  } catch { return fallback; }
}
export function setPref(key, v) {
  try { localStorage.setItem(`lorad.${key}`, JSON.stringify(v)); } catch { /* storage disabled */ }
}
