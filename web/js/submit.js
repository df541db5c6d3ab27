// #/submit : a form for the common fields of a job spec. Validation is the
// server's (proto/jobspec.c, one schema everywhere): its error names the
// field by dotted path (param), shown next to that field.
import { api, ApiError } from './api.js';
import { buildSpec, fieldForParam } from './logic.js';
import { h, replace, errorBox } from './ui.js';

// [path, label, type, options | placeholder (the default), help]
const SECTIONS = [
  ['Job', [
    ['name', 'name', 'string', 'optional label'],
    ['model', 'base model', 'select:models'],
    ['training_file', 'training dataset', 'select:datasets'],
    ['validation_file', 'validation dataset', 'select:datasets?', null, 'optional; else val_ratio of the training rows'],
    ['method.type', 'method', ['sft', 'kl_sft', 'dpo', 'full_sft', 'eval']],
    ['chat_template', 'chat template', ['auto', 'chatml', 'llama3', 'mistral', 'alpaca', 'plain']],
    ['device', 'device', ['any', 'cpu', 'cuda']],
    ['priority', 'priority', 'int', '0', '-100..100, higher runs first'],
  ]],
  ['Training', [
    ['hyperparameters.n_epochs', 'epochs', 'int', '3'],
    ['hyperparameters.max_steps', 'max steps', 'int', '0', 'wins over epochs when > 0'],
    ['hyperparameters.batch_size', 'batch size', 'int', '4'],
    ['hyperparameters.grad_accum', 'grad accumulation', 'int', '1'],
    ['hyperparameters.learning_rate', 'learning rate', 'number', '2e-4'],
    ['hyperparameters.lr_scheduler', 'scheduler', ['cosine', 'linear', 'constant']],
    ['hyperparameters.warmup_ratio', 'warmup ratio', 'number', '0'],
    ['hyperparameters.max_seq_len', 'max sequence length', 'int', '512'],
    ['hyperparameters.val_ratio', 'validation ratio', 'number', '0.1'],
    ['hyperparameters.logging_steps', 'log every (steps)', 'int', '10'],
    ['hyperparameters.eval_steps', 'eval every (steps)', 'int', '50'],
    ['hyperparameters.save_steps', 'checkpoint every (steps)', 'int', '100'],
    ['hyperparameters.seed', 'seed', 'int', '42'],
  ]],
  ['LoRA', [
    ['lora.r', 'rank r', 'int', '16'],
    ['lora.alpha', 'alpha', 'number', '32'],
    ['lora.dropout', 'dropout', 'number', '0.05'],
    ['lora.targets', 'target modules', ['attn_mlp', 'attn', 'all-linear']],
    ['lora.use_dora', 'DoRA', 'bool'],
    ['lora.use_rslora', 'rsLoRA (alpha/√r)', 'bool'],
    ['lora.quantize', 'quantize base (QLoRA)', ['none', 'nf4', 'fp4'], null, 'the frozen base weights 4-bit in memory'],
    ['lora.double_quant', 'double quantization', 'bool', null, 'the 4-bit scales quantized too (needs nf4 or fp4)'],
  ]],
];

const typeOf = (t) => (Array.isArray(t) || t.startsWith('select') ? 'string' : t);

function control(path, type, ph, lists) {
  const name = path;
  if (Array.isArray(type)) return h('select', { name, id: `f-${path}` }, type.map((o) => h('option', { value: o }, o)));
  if (type.startsWith('select:')) {
    const optional = type.endsWith('?');
    const items = lists[type.slice(7).replace('?', '')] || [];
    return h('select', { name, id: `f-${path}` },
      optional ? h('option', { value: '' }, 'none') : null,
      !optional && !items.length ? h('option', { value: '' }, '(none available)') : null,
      items.map((x) => h('option', { value: x.value }, x.label)));
  }
  if (type === 'bool') return h('input', { type: 'checkbox', name, id: `f-${path}` });
  return h('input', {
    type: 'text', name, id: `f-${path}`, placeholder: ph || '', autocomplete: 'off',
    inputmode: type === 'int' ? 'numeric' : type === 'number' ? 'decimal' : undefined,
  });
}

export function mount(root) {
  const msg = h('div', { class: 'msg' });
  const formBox = h('div', {}, h('p', { class: 'muted' }, 'loading…'));
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Submit a job')), msg, formBox);
  const paths = SECTIONS.flatMap(([, fs]) => fs.map((f) => f[0]));
  const types = Object.fromEntries(SECTIONS.flatMap(([, fs]) => fs.map((f) => [f[0], typeOf(f[2])])));

  (async () => {
    const [m, d] = await Promise.all([api('/v1/models'), api('/v1/datasets', { params: { limit: 100 } })]);
    const lists = {
      models: ((m && m.data) || []).filter((x) => !x.job).map((x) => ({ value: x.id, label: x.id })), // jobs train registered models
      datasets: ((d && d.data) || []).map((x) => ({ value: x.id, label: `${x.filename || x.name || x.id} (${x.id}, ${x.rows} rows)` })),
    };
    const submitBtn = h('button', { type: 'submit' }, 'Submit job');
    const form = h('form', { class: 'submit-form', novalidate: true },
      SECTIONS.map(([title, fields]) => h('fieldset', { class: 'card' }, h('legend', {}, title),
        h('div', { class: 'fields' }, fields.map(([path, label, type, ph, help]) => h('div', { class: `field${type === 'bool' ? ' bool' : ''}`, dataset: { param: path } },
          h('label', { for: `f-${path}` }, label), control(path, type, ph, lists),
          help ? h('small', { class: 'muted' }, help) : null,
          h('div', { class: 'field-error', role: 'alert' })))))),
      h('div', { class: 'row' }, submitBtn));

    // double_quant is refused without a 4-bit base: offered only with one
    const quant = form.elements.namedItem('lora.quantize'), dq = form.elements.namedItem('lora.double_quant');
    const syncQuant = () => { dq.disabled = quant.value === 'none'; if (dq.disabled) dq.checked = false; };
    quant.addEventListener('change', syncQuant);
    syncQuant();

    const clearErrors = () => {
      msg.replaceChildren();
      for (const f of form.querySelectorAll('.field.invalid')) { f.classList.remove('invalid'); f.querySelector('.field-error').textContent = ''; }
    };
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearErrors();
      const values = {};
      for (const p of paths) {
        const el = form.elements.namedItem(p);
        values[p] = el.type === 'checkbox' ? el.checked : el.value;
      }
      const spec = buildSpec(values, types);
      submitBtn.disabled = true;
      try {
        const j = await api('/v1/jobs', { method: 'POST', body: spec });
        location.hash = `#/jobs/${encodeURIComponent(j.id)}`;
      } catch (err) {
        const field = err instanceof ApiError ? fieldForParam(err.param, paths) : null;
        if (field) {
          const box = form.querySelector(`.field[data-param="${CSS.escape(field)}"]`);
          box.classList.add('invalid');
          box.querySelector('.field-error').textContent = err.message;
          box.querySelector('input,select').focus();
          box.scrollIntoView({ block: 'center' });
        } else {
          replace(msg, errorBox(err.param ? `${err.param}: ${err.message}` : err));
        }
      } finally {
        submitBtn.disabled = false;
      }
    });
    replace(formBox, form);
  })().catch((e) => replace(formBox, errorBox(e)));
  return null;
}
