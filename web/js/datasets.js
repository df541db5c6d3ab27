// #/datasets and #/datasets/ID : upload with progress and per-line errors,
// the list, a dataset's validation report and its rows rendered through the
// chat template with the trained tokens marked.
import { api, upload } from './api.js';
import { fmtBytes, fmtTime, fmtInt, errorLines, previewRuns } from './logic.js';
import { h, replace, errorBox, table, progressBar } from './ui.js';

function uploadCard(onUploaded) {
  const file = h('input', { type: 'file', name: 'file', accept: '.jsonl,.json,.csv,application/jsonl,text/csv', required: true });
  const bar = h('div', { class: 'upload-progress', hidden: true });
  const result = h('div', { class: 'upload-result' });
  const go = h('button', { type: 'submit' }, 'Upload');
  const form = h('form', { class: 'card upload', onsubmit: async (e) => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) return;
    go.disabled = true;
    bar.hidden = false;
    replace(bar, progressBar(0, 1), h('span', { class: 'muted' }, ' 0%'));
    result.replaceChildren();
    try {
      const d = await upload('/v1/datasets', f, {}, (frac) => replace(bar, progressBar(frac, 1), h('span', { class: 'muted' }, ` ${Math.round(frac * 100)}%`)));
      replace(result, h('div', { class: 'ok' }, 'Uploaded ', h('a', { href: `#/datasets/${encodeURIComponent(d.id)}` }, d.id),
        `: ${fmtInt(d.rows)} rows, ${d.kind || d.format}.`),
        d.warning ? h('div', { class: 'warning', role: 'status' }, d.warning) : null);
      form.reset();
      onUploaded();
    } catch (err) {
      const lines = errorLines(err.error);
      const e = err.error || {};
      const summary = lines.length && e.invalid_rows !== undefined
        ? `Not stored: ${fmtInt(e.invalid_rows)} of ${fmtInt(e.rows)} rows have a problem${lines.length < e.invalid_rows ? ` (the first ${lines.length} below)` : ''}.`
        : null;
      replace(result, summary ? h('div', { class: 'error', role: 'alert' }, summary) : errorBox(err),
        lines.length ? h('ul', { class: 'upload-errors' }, lines.map((l) => h('li', { dataset: { line: l.line ?? '' } },
          l.line ? h('b', {}, `line ${l.line}`) : null, l.line ? `: ${l.message.replace(/^line \d+:\s*/i, '')}` : l.message))) : null);
    } finally {
      go.disabled = false;
      bar.hidden = true;
    }
  } },
  h('h2', {}, 'Upload a dataset'),
  h('p', { class: 'muted' }, 'JSONL ({"messages": [...]}, Alpaca, prompt/completion, prompt/chosen/rejected) or CSV. Checked line by line on upload.'),
  h('div', { class: 'row' }, file, go), bar, result);
  return form;
}

function listView(root) {
  const body = h('div', {}, h('p', { class: 'muted' }, 'loading…'));
  const load = async () => {
    const r = await api('/v1/datasets', { params: { limit: 100 } });
    const ds = (r && r.data) || [];
    replace(body, ds.length ? table(['id', 'file', 'format', 'rows', 'size', 'user', 'uploaded'], ds.map((d) => h('tr', { dataset: { id: d.id } },
      h('td', {}, h('a', { href: `#/datasets/${encodeURIComponent(d.id)}` }, d.id)),
      h('td', {}, d.filename || d.name),
      h('td', {}, [d.format, d.kind].filter(Boolean).join(' · ')),
      h('td', { class: 'num' }, fmtInt(d.rows)),
      h('td', { class: 'num' }, fmtBytes(d.bytes)),
      h('td', {}, d.user),
      h('td', {}, fmtTime(d.created_at))))) : h('p', { class: 'muted' }, 'No datasets yet.'));
  };
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Datasets')), uploadCard(() => load().catch(() => {})),
    h('section', { class: 'card' }, h('h2', {}, 'Datasets'), body));
  load().catch((e) => replace(body, errorBox(e)));
}

function reportView(d) {
  const kv = (k, v) => h('div', { class: 'kv' }, h('span', { class: 'k' }, k), h('span', { class: 'v' }, v));
  const stats = d.stats || {};
  const errs = stats.errors || [];
  const warns = stats.warnings || [];
  const skip = new Set(['errors', 'warnings']);
  return h('section', { class: 'card report' }, h('h2', {}, 'Validation report'),
    h('div', { class: 'kvs' },
      kv('file', d.filename || d.name || '–'), kv('format', [d.format, d.kind].filter(Boolean).join(' · ')),
      kv('rows', fmtInt(d.rows)),
      d.duplicates ? kv('duplicates', `${fmtInt(d.duplicates)} (a job trains on each distinct row once)`) : null,
      kv('size', fmtBytes(d.bytes)), kv('user', d.user), kv('uploaded', fmtTime(d.created_at)),
      Object.entries(stats).filter(([k, v]) => !skip.has(k) && (typeof v !== 'object' || v === null)).map(([k, v]) => kv(k.replace(/_/g, ' '), String(v)))),
    errs.length ? h('ul', { class: 'upload-errors' }, errs.map((e) => h('li', {}, typeof e === 'string' ? e : `line ${e.line}: ${e.message}`))) : h('p', { class: 'ok' }, 'Every row is valid.'),
    warns.length ? h('ul', { class: 'warnings' }, warns.map((w) => h('li', {}, typeof w === 'string' ? w : w.message))) : null);
}

function previewView(d) {
  const box = h('div', { class: 'preview-rows' });
  const modelSel = h('select', { name: 'model' });
  // '' = auto: the model's own template, as a job without chat_template
  const tplSel = h('select', { name: 'chat_template' }, ['', 'chatml', 'llama3', 'mistral', 'alpaca', 'plain'].map((t) => h('option', { value: t }, t || 'auto (the model\'s)')));
  const used = h('span', { class: 'muted template-used' });
  const limitIn = h('input', { type: 'number', name: 'limit', min: '1', max: '100', value: '5' });
  const load = async () => {
    replace(box, h('p', { class: 'muted' }, 'rendering…'));
    try {
      const r = await api(`/v1/datasets/${encodeURIComponent(d.id)}/preview`, { params: { model: modelSel.value, n: limitIn.value, chat_template: tplSel.value } });
      const rows = (r && (r.data || r.rows)) || [];
      used.textContent = r && r.chat_template ? `rendered with ${r.chat_template}` : '';
      replace(box, rows.length ? rows.map((row, i) => h('div', { class: 'preview-row', dataset: { line: row.line ?? '' } },
        h('div', { class: 'muted' }, row.line ? `line ${row.line}` : `row ${i + 1}`,
          typeof row.tokens === 'number' ? ` · ${row.tokens} tokens` : '', row.trained_tokens !== undefined ? ` · ${row.trained_tokens} trained` : ''),
        row.error ? errorBox(row.error) : null,
        h('pre', { class: 'rendered' }, previewRuns(row).map((run) => (run.trained ? h('mark', { class: 'trained' }, run.text) : run.text)))))
        : h('p', { class: 'muted' }, 'No rows.'));
    } catch (e) { replace(box, errorBox(e)); }
  };
  (async () => {
    const m = await api('/v1/models');
    // fine-tuned models (x.job) answer completions; a preview needs a registered model
    const models = ((m && m.data) || []).filter((x) => !x.job);
    replace(modelSel, models.map((x) => h('option', { value: x.id }, x.id)));
    if (models.length) load(); else replace(box, h('p', { class: 'muted' }, 'No models registered: the preview needs a model\'s tokenizer and chat template.'));
  })().catch((e) => replace(box, errorBox(e)));
  return h('section', { class: 'card preview' }, h('h2', {}, 'Preview'),
    h('p', { class: 'muted' }, 'Rows as the model sees them; ', h('mark', { class: 'trained' }, 'highlighted'), ' tokens are trained on (the loss counts them).'),
    h('div', { class: 'row' }, h('label', {}, 'model ', modelSel), h('label', {}, 'chat template ', tplSel), h('label', {}, 'rows ', limitIn),
      h('button', { type: 'button', onclick: load }, 'Render'), used),
    box);
}

export function mount(root, ctx) {
  if (!ctx.id) { listView(root); return null; }
  const msg = h('div', { class: 'msg' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, ctx.id), h('a', { class: 'button secondary small', href: '#/datasets' }, 'All datasets')), msg);
  api(`/v1/datasets/${encodeURIComponent(ctx.id)}`)
    .then((d) => root.append(reportView(d), previewView(d)))
    .catch((e) => replace(msg, errorBox(e)));
  return null;
}
