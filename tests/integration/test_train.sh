#!/usr/bin/env bash
# lora-worker run end to end on a tiny random model: the loss falls on a
# dataset with a learnable rule, the outputs are there and PEFT-shaped, a run
# resumed from a checkpoint ends bit for bit where an uninterrupted one does,
# grad_accum k x batch b tracks batch k*b, and bad job files fail clearly.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${LR_BUILD:-build}
W=$B/lora-worker
T=$(mktemp -d /tmp/lrtrain.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()   { echo "ok   $1"; pass=$((pass+1)); }
bad()  { echo "FAIL $1"; fail=$((fail+1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

"$W" mkmodel --arch llama --preset tiny --seed 3 --out "$T/model" >/dev/null || { echo "FAIL mkmodel"; echo "0 passed, 1 failed"; exit 1; }
cp examples/demo.jsonl "$T/data.jsonl"
cat > "$T/job.yaml" <<YAML
name: t
model: model
training_file: data.jsonl
chat_template: chatml
hyperparameters: {max_steps: 60, batch_size: 8, learning_rate: 3.0e-3, warmup_ratio: 0.05, max_seq_len: 96,
                  val_ratio: 0.1, logging_steps: 5, eval_steps: 20, save_steps: 20, save_total_limit: 0, seed: 5}
lora: {r: 8, alpha: 16, dropout: 0.1, targets: all-linear}
YAML

# 1. a full run
"$W" run --config "$T/job.yaml" --out "$T/full" --threads 2 > "$T/full.log" 2>&1
check "run succeeds" '[ $? -eq 0 ] || grep -q "done:" "$T/full.log"'
for f in adapter_model.safetensors adapter_config.json train_log.csv train_log.json time_metrics.json; do
  check "output $f exists" "[ -s '$T/full/$f' ]"
done
read -r first last efirst elast <<<"$(/usr/bin/python3 - "$T/full/train_log.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
loss = [r["loss"] for r in rows if r["loss"] is not None]
ev = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
print(loss[0], loss[-1], ev[0], ev[-1])
PY
)"
check "train loss falls ($first -> $last)" "/usr/bin/python3 -c 'import sys; sys.exit(0 if $last < $first - 0.3 else 1)'"
check "held-out loss falls ($efirst -> $elast)" "/usr/bin/python3 -c 'import sys; sys.exit(0 if $elast < $efirst else 1)'"
check "adapter_config is PEFT's" "/usr/bin/python3 - '$T/full/adapter_config.json' <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
assert c['peft_type'] == 'LORA' and c['r'] == 8 and c['lora_alpha'] == 16 and c['task_type'] == 'CAUSAL_LM'
assert sorted(c['target_modules']) == sorted(['q_proj','k_proj','v_proj','o_proj','gate_proj','up_proj','down_proj'])
PY"
check "checkpoints at 20 and 40 are complete" "[ -f '$T/full/checkpoints/checkpoint-20/DONE' ] && [ -f '$T/full/checkpoints/checkpoint-40/DONE' ]"

# 2. resume: a run dir holding only checkpoint-20 continues to the same end, bit for bit
mkdir -p "$T/resumed/checkpoints"
cp -r "$T/full/checkpoints/checkpoint-20" "$T/resumed/checkpoints/"
cp "$T/full/train_log.json" "$T/resumed/"
"$W" run --config "$T/job.yaml" --out "$T/resumed" --threads 2 --resume > "$T/resumed.log" 2>&1
check "resume says where it starts" "grep -q 'resumed from checkpoint at step 20' '$T/resumed.log'"
check "resumed adapter is bitwise identical" "cmp -s '$T/full/adapter_model.safetensors' '$T/resumed/adapter_model.safetensors'"
check "resumed loss curve is identical" "cmp -s '$T/full/train_log.csv' <(cat '$T/resumed/train_log.csv') || diff <(cut -d, -f1-5,7 '$T/full/train_log.csv') <(cut -d, -f1-5,7 '$T/resumed/train_log.csv') >/dev/null"

# 3. gradient accumulation: 2 x 4 rows tracks 1 x 8 rows (same data, same order)
"$W" run --config "$T/job.yaml" --out "$T/acc" --threads 2 --quiet --set batch_size=4 --set grad_accum=2 \
  --set max_steps=10 --set lora.dropout=0 --set logging_steps=1 --set eval_steps=0 --set save_steps=0 > /dev/null 2>&1
"$W" run --config "$T/job.yaml" --out "$T/big" --threads 2 --quiet --set batch_size=8 --set grad_accum=1 \
  --set max_steps=10 --set lora.dropout=0 --set logging_steps=1 --set eval_steps=0 --set save_steps=0 > /dev/null 2>&1
check "grad_accum 2x4 == batch 8 (loss per step within 1e-4)" "/usr/bin/python3 - '$T/acc/train_log.json' '$T/big/train_log.json' <<'PY'
import json, sys
a = [r['loss'] for r in json.load(open(sys.argv[1]))]
b = [r['loss'] for r in json.load(open(sys.argv[2]))]
assert len(a) == len(b) == 10, (len(a), len(b))
d = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print('max rel diff', d)
assert d < 1e-4, d
PY"

# 5. full_sft on plain-text rows: a full HF model folder in the base's dtype, and a resumed run ends bit for bit
/usr/bin/python3 - "$T/text.jsonl" <<'PY'
import json, random, sys
r = random.Random(1)
with open(sys.argv[1], "w") as f:
    for i in range(64):
        f.write(json.dumps({"text": f"the {r.choice(['red','blue','green'])} {r.choice(['cat','dog','owl'])} sat near the {r.choice(['hill','lake'])}."}) + "\n")
PY
cat > "$T/full.yaml" <<YAML
model: model
training_file: text.jsonl
method: {type: full_sft}
hyperparameters: {max_steps: 20, batch_size: 8, learning_rate: 1.0e-3, max_seq_len: 32, val_ratio: 0, logging_steps: 5,
                  eval_steps: 0, save_steps: 10, save_total_limit: 0, weight_decay: 0.1, seed: 2}
YAML
"$W" run --config "$T/full.yaml" --out "$T/fs" --threads 2 > "$T/fs.log" 2>&1
check "full_sft run writes model.safetensors, config.json, tokenizer.json and no adapter" \
  "[ -s '$T/fs/model.safetensors' ] && [ -s '$T/fs/config.json' ] && [ -s '$T/fs/tokenizer.json' ] && [ ! -e '$T/fs/adapter_model.safetensors' ]"
check "full_sft weights changed and loss fell" "/usr/bin/python3 - '$T/model' '$T/fs' <<'PY'
import json, struct, sys
def header(d):
    b = open(d + '/model.safetensors', 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop('__metadata__', None)
    return h, b[8 + n:]
(h0, d0), (h1, d1) = header(sys.argv[1]), header(sys.argv[2])
assert sorted(h0) == sorted(h1), 'tensor names differ'
assert all(h0[k]['dtype'] == h1[k]['dtype'] and h0[k]['shape'] == h1[k]['shape'] for k in h0)
assert d0 != d1, 'weights unchanged'
rows = [r['loss'] for r in json.load(open(sys.argv[2] + '/train_log.json')) if r['loss'] is not None]
assert rows[-1] < rows[0], rows
PY"
mkdir -p "$T/fsr/checkpoints"
cp -r "$T/fs/checkpoints/checkpoint-10" "$T/fsr/checkpoints/"
cp "$T/fs/train_log.json" "$T/fsr/"
"$W" run --config "$T/full.yaml" --out "$T/fsr" --threads 2 --resume > "$T/fsr.log" 2>&1
check "full_sft resumed from step 10 ends with a bitwise identical model" \
  "grep -q 'resumed from checkpoint at step 10' '$T/fsr.log' && cmp -s '$T/fs/model.safetensors' '$T/fsr/model.safetensors'"
"$W" generate --model "$T/fs" --raw --prompt "the red" --max-new-tokens 8 > "$T/fsg.log" 2>&1
check "the full_sft model folder loads back for generation" "[ -s '$T/fsg.log' ]"

# 4. bad input fails with a clear message and exit code 2
printf 'model: model\ntraining_file: data.jsonl\nhyperparameters: {learning_rate: -1}\n' > "$T/bad.yaml"
"$W" run --config "$T/bad.yaml" --out "$T/bad" > "$T/bad.log" 2>&1; rc=$?
check "out-of-range hyperparameter: exit 2 and names the field" "[ $rc -eq 2 ] && grep -q 'hyperparameters.learning_rate' '$T/bad.log'"
printf '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n{"messages": [\n' > "$T/broken.jsonl"
printf 'model: model\ntraining_file: broken.jsonl\n' > "$T/broken.yaml"
"$W" run --config "$T/broken.yaml" --out "$T/broken" > "$T/broken.log" 2>&1; rc=$?
check "broken dataset line: exit 2 and names the line" "[ $rc -eq 2 ] && grep -q 'line 2' '$T/broken.log'"
printf 'model: nowhere\ntraining_file: data.jsonl\n' > "$T/nomodel.yaml"
"$W" run --config "$T/nomodel.yaml" --out "$T/nomodel" > "$T/nomodel.log" 2>&1; rc=$?
check "missing model directory: exit 2" "[ $rc -eq 2 ] && [ -s '$T/nomodel.log' ]"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
