// #/submit : the job spec's form, built from GET /v1/jobspec (proto/jobspec.c's
// table, one schema everywhere): every field the table marks "form", with its
// default as the placeholder or the selected option, an enum as a select, a
// range as min/max and the field's help as the hint. Written here are only
// what the table does not know: the groups, a few shorter labels, and the
// selects filled from the server's models and datasets. Validation is the
// server's: its error names the field by dotted path (param), shown next to
// that field.
import { api, ApiError } from './api.js';
import { buildSpec, fieldForParam } from './logic.js';
import { h, replace, errorBox } from './ui.js';

// [legend, path prefix]: a field goes in the group of its prefix, else the first
const GROUPS = [['Job', ''], ['Training', 'hyperparameters'], ['LoRA', 'lora']];
// labels where the field's own name reads badly; else its name, "_" as spaces
const LABELS = {
  model: 'base model', training_file: 'training dataset', validation_file: 'validation dataset', 'method.type': 'method',
  'hyperparameters.n_epochs': 'epochs', 'hyperparameters.grad_accum': 'grad accumulation', 'hyperparameters.lr_scheduler': 'scheduler',
  'hyperparameters.max_seq_len': 'max sequence length', 'hyperparameters.val_ratio': 'validation ratio',
  'hyperparameters.logging_steps': 'log every (steps)', 'hyperparameters.eval_steps': 'eval every (steps)',
  'hyperparameters.save_steps': 'checkpoint every (steps)', 'lora.r': 'rank r', 'lora.targets': 'target modules',
  'lora.use_dora': 'DoRA', 'lora.use_rslora': 'rsLoRA (alpha/√r)', 'lora.quantize': 'quantize base (QLoRA)',
  'lora.double_quant': 'double quantization',
};
// fields whose choices are the server's objects: [list, optional]
const LISTS = { model: ['models', false], training_file: ['datasets', false], validation_file: ['datasets', true] };

const labelOf = (f) => LABELS[f.path] || f.path.split('.').pop().replaceAll('_', ' ');
// "auto" and the fields of several shapes: the first branch is the one the form offers
const plain = (f) => (f.oneOf ? f.oneOf[0] : f);
const kindOf = (f) => {
  const p = plain(f);
  if (LISTS[f.path] || p.enum) return 'string';
  if (p.type === 'boolean') return 'bool';
  return p.type === 'integer' ? 'int' : p.type === 'number' ? 'number' : 'string';
};

function rangeText(p) {
  if (p.minimum === undefined && p.maximum === undefined) return '';
  const lo = p.minimum === undefined ? '' : `${p.minimum}${p.exclusiveMinimum ? ' <' : ' ≤'} `;
  // a 64-bit bound (seeds) is no limit a person meets, and JavaScript cannot print it exactly
  const hi = p.maximum === undefined || p.maximum > Number.MAX_SAFE_INTEGER ? '' : ` ≤ ${p.maximum}`;
  return `${lo}x${hi}`;
}

function control(f, lists) {
  const name = f.path, id = `f-${f.path}`, p = plain(f);
  if (LISTS[f.path]) {
    const [list, optional] = LISTS[f.path];
    const items = lists[list] || [];
    return h('select', { name, id },
      optional ? h('option', { value: '' }, 'none') : null,
      !optional && !items.length ? h('option', { value: '' }, '(none available)') : null,
      items.map((x) => h('option', { value: x.value }, x.label)));
  }
  if (p.enum) return h('select', { name, id, value: f.default }, p.enum.map((o) => h('option', { value: o }, o)));
  const kind = kindOf(f);
  if (kind === 'bool') return h('input', { type: 'checkbox', name, id, checked: f.default === true });
  // a number that may also be "auto" stays a text box
  const numeric = (kind === 'int' || kind === 'number') && !f.auto;
  return h('input', {
    type: numeric ? 'number' : 'text', name, id, autocomplete: 'off',
    placeholder: f.default === undefined || f.default === null ? '' : String(f.default),
    min: numeric ? p.minimum : undefined, max: numeric ? p.maximum : undefined,
    step: numeric ? (kind === 'int' ? '1' : 'any') : undefined,
    inputmode: kind === 'int' ? 'numeric' : kind === 'number' ? 'decimal' : undefined,
  });
}

function hint(f) {
  const r = rangeText(plain(f));
  const text = [f.description, r && `(${r})`, f.auto && '(or auto)'].filter(Boolean).join(' ');
  return text ? h('small', { class: 'muted' }, text) : null;
}

// Sets v at dotted path in spec.
function setPath(spec, path, v) {
  const parts = path.split('.');
  let o = spec;
  for (const p of parts.slice(0, -1)) o = o[p] ||= {};
  o[parts[parts.length - 1]] = v;
}

export function mount(root) {
  const msg = h('div', { class: 'msg' });
  const formBox = h('div', {}, h('p', { class: 'muted' }, 'loading…'));
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Submit a job')), msg, formBox);

  (async () => {
    const [schema, m, d] = await Promise.all([api('/v1/jobspec'), api('/v1/models'), api('/v1/datasets', { params: { limit: 100 } })]);
    const fields = schema.fields.filter((f) => f.form);
    const paths = fields.map((f) => f.path);
    const kinds = Object.fromEntries(fields.map((f) => [f.path, kindOf(f)]));
    const lists = {
      models: ((m && m.data) || []).filter((x) => !x.job).map((x) => ({ value: x.id, label: x.id })), // jobs train registered models
      datasets: ((d && d.data) || []).map((x) => ({ value: x.id, label: `${x.filename || x.name || x.id} (${x.id}, ${x.rows} rows)` })),
    };
    const groupOf = (f) => {
      const g = GROUPS.find(([, pre]) => pre && f.path.startsWith(`${pre}.`));
      return g ? g[0] : GROUPS[0][0];
    };
    const submitBtn = h('button', { type: 'submit' }, 'Submit job');
    const form = h('form', { class: 'submit-form', novalidate: true },
      GROUPS.map(([title]) => h('fieldset', { class: 'card' }, h('legend', {}, title),
        h('div', { class: 'fields' }, fields.filter((f) => groupOf(f) === title).map((f) => h('div', { class: `field${kinds[f.path] === 'bool' ? ' bool' : ''}`, dataset: { param: f.path } },
          h('label', { for: `f-${f.path}` }, labelOf(f)), control(f, lists), hint(f),
          h('div', { class: 'field-error', role: 'alert' })))))),
      h('div', { class: 'row' }, submitBtn));

    // double_quant is refused without a 4-bit base: offered only with one
    const quant = form.elements.namedItem('lora.quantize'), dq = form.elements.namedItem('lora.double_quant');
    if (quant && dq) {
      const syncQuant = () => { dq.disabled = quant.value === 'none'; if (dq.disabled) dq.checked = false; };
      quant.addEventListener('change', syncQuant);
      syncQuant();
    }

    const clearErrors = () => {
      msg.replaceChildren();
      for (const f of form.querySelectorAll('.field.invalid')) { f.classList.remove('invalid'); f.querySelector('.field-error').textContent = ''; }
    };
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearErrors();
      const values = {}, flags = [];
      for (const f of fields) {
        const el = form.elements.namedItem(f.path);
        if (el.type === 'checkbox') flags.push([f.path, el.checked, f.default === true]);
        else values[f.path] = el.value;
      }
      const spec = buildSpec(values, kinds);
      for (const [p, on, def] of flags) if (on !== def) setPath(spec, p, on); // a box left as its default is not sent
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
