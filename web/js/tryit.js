// The job page's "Try it" card: a prompt answered by the base model and by
// base + this job's adapter (a full_sft job: its trained model) in two
// columns (POST /v1/jobs/ID/generate), and "Merge into a model" ("Register as
// a model" for full_sft: POST /v1/jobs/ID/merge either way, then polling the
// job's events until they say the model is registered or that it failed).
import { api } from './api.js';
import { generationRequest, mergeNameFor, canMerge, trainedOutput } from './logic.js';
import { h, replace, errorBox } from './ui.js';

const MERGE_POLL_MS = 1500;

function side(cls, title) {
  const text = h('pre', { class: 'gen-text' });
  const info = h('p', { class: 'muted gen-info' });
  return { el: h('div', { class: `gen-side ${cls}`, dataset: { side: cls } }, h('h3', {}, title), text, info), text, info };
}

// Returns { el, destroy }.
export function tryCard(job, me) {
  const jid = encodeURIComponent(job.id);
  let stopped = false;
  let timer = null;

  // ---- generate ----
  const prompt = h('textarea', { name: 'prompt', rows: 3, placeholder: 'a prompt, sent as a user message through the chat template' });
  const maxTok = h('input', { type: 'number', name: 'max_new_tokens', min: '1', max: '1024', step: '1', value: '128' });
  const temp = h('input', { type: 'number', name: 'temperature', min: '0', max: '5', step: '0.1', value: '0' });
  const go = h('button', { type: 'submit', class: 'generate' }, 'Generate');
  const genMsg = h('div', { class: 'msg gen-msg' });
  const base = side('base', `base (${job.model})`);
  const tuned = side('tuned', 'tuned (this job)');
  const out = h('div', { class: 'cols gen-out', hidden: true }, base.el, tuned.el);
  const form = h('form', {
    class: 'tryit-form',
    novalidate: true, // errors are shown inline, in the server's words where it has them
    onsubmit: async (e) => {
      e.preventDefault();
      const req = generationRequest({ prompt: prompt.value, max_new_tokens: maxTok.value, temperature: temp.value });
      if (req.error) { replace(genMsg, errorBox(req.error)); return; }
      genMsg.replaceChildren();
      go.disabled = true;
      go.textContent = 'Generating…';
      try {
        const r = await api(`/v1/jobs/${jid}/generate`, { method: 'POST', body: req.body });
        if (stopped) return;
        for (const [s, d] of [[base, r.base], [tuned, r.tuned]]) {
          s.text.textContent = d.text;
          s.info.textContent = `${d.tokens} tokens, ${d.stop.replace('_', ' ')}`;
        }
        out.hidden = false;
        out.dataset.seconds = String(r.seconds);
      } catch (err) {
        if (!stopped) replace(genMsg, errorBox(err));
      } finally {
        go.disabled = false;
        go.textContent = 'Generate';
      }
    },
  },
  h('label', { class: 'field' }, 'Prompt', prompt),
  h('div', { class: 'row' },
    h('label', {}, 'max tokens ', maxTok), h('label', {}, 'temperature ', temp), go));

  // ---- merge ----
  const allowed = canMerge(job, me);
  const { full } = trainedOutput(job);
  const name = h('input', { name: 'merge_name', placeholder: mergeNameFor(job), spellcheck: false, maxlength: '63' });
  const mergeMsg = h('div', { class: 'merge-msg' });
  const mergeBtn = h('button', {
    type: 'button', class: 'secondary merge',
    disabled: !allowed,
    title: !allowed ? 'only the owner or an admin can merge this job'
      : full ? 'register the trained model as a new model that jobs can train on'
        : 'write base + adapter as a new model that jobs can train on',
    onclick: () => merge(),
  }, full ? 'Register as a model' : 'Merge into a model');

  async function merge() {
    const want = name.value.trim() || mergeNameFor(job);
    mergeBtn.disabled = true;
    replace(mergeMsg, h('span', { class: 'muted' }, full ? `registering as ${want}…` : `starting the merge into ${want}…`));
    try {
      const before = await api(`/v1/jobs/${jid}/events`, { params: { limit: 10000 } });
      const evs = (before && before.data) || [];
      let after = evs.length ? evs[evs.length - 1].id : 0;
      const r = await api(`/v1/jobs/${jid}/merge`, { method: 'POST', body: name.value.trim() ? { name: want } : {} });
      const model = r.id;
      replace(mergeMsg, h('span', { class: 'muted', dataset: { state: 'merging' } },
        full ? `copying the model into ${model}…` : `merging into model ${model}…`));
      // The job's events say how it ended (polling /v1/models/NAME would
      // log a 404 per poll while the merge runs).
      const merged = full ? `registered the full_sft model as ${model} ` : `merged into model ${model} `;
      const failed = full ? `registering the full_sft model as ${model} failed` : `merge into model ${model} failed`;
      const check = async () => {
        if (stopped) return;
        const ev = await api(`/v1/jobs/${jid}/events`, { params: { after, limit: 10000 } });
        for (const e of (ev && ev.data) || []) {
          after = e.id;
          if (e.message.startsWith(failed)) throw new Error(e.message);
          if (e.message.startsWith(merged)) {
            replace(mergeMsg, h('span', { class: 'ok', dataset: { state: 'merged', model } },
              `${full ? 'registered' : 'merged'}: model ${model} is registered; jobs can train on it`));
            mergeBtn.disabled = false;
            return;
          }
        }
        timer = setTimeout(() => check().catch(fail), MERGE_POLL_MS);
      };
      await check();
    } catch (err) {
      fail(err);
    }
  }
  function fail(err) {
    if (stopped) return;
    replace(mergeMsg, errorBox(err));
    mergeBtn.disabled = !allowed;
  }

  const el = h('section', { class: 'card tryit' },
    h('h2', {}, 'Try it'), form, genMsg, out,
    h('div', { class: 'row merge-row' }, mergeBtn, h('label', {}, 'name ', name)), mergeMsg);
  return { el, destroy() { stopped = true; clearTimeout(timer); } };
}
