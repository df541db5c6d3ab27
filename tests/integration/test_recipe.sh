#!/usr/bin/env bash
# The whole recipe on a model this test makes itself (issue 7's acceptance,
# and issue 3's "the learned behaviour shows in the outputs"):
#  1-2. full_sft pre-trains a random llama (4 layers, hidden 128) on one
#     prose style; one eval job compares the two models on held-out
#     prompts: the random one scores 0 on the style regex, the pre-trained
#     one >= 90% (fluent, in one style);
#  3. a LoRA SFT job teaches a new output template (Summary / Key Points
#     with two bullets / Question, nothing after): held-out loss falls and
#     the eval job's compliance rises from the base's to >= 90%;
#  4. DPO on near misses (a third bullet, a line after the question) on top
#     of the SFT adapter learns the preference (rewards/accuracy >= 0.9) and
#     does not lower the compliance.
# Everything runs through `lora-worker run` with 2 threads (deterministic).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${LR_BUILD:-build}
W=$B/lora-worker
T=$(mktemp -d /tmp/lrrecipe.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$T"' EXIT; echo "dir $T"
pass=0; fail=0
ok()   { echo "ok   $1"; pass=$((pass+1)); }
bad()  { echo "FAIL $1"; fail=$((fail+1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
py() { /usr/bin/python3 -c "$@"; }
summary() { py "import json; print(json.load(open('$1/eval_summary.json'))['$2'])"; }

/usr/bin/python3 tests/integration/recipe_data.py "$T" || { echo "FAIL data"; echo "0 passed, 1 failed"; exit 1; }
"$W" mkmodel --arch llama --seed 1 --hidden 128 --layers 4 --heads 4 --kv-heads 2 --intermediate 256 \
  --out "$T/random" >/dev/null || { echo "FAIL mkmodel"; echo "0 passed, 1 failed"; exit 1; }
run() { "$W" run --config "$T/$1.yaml" --out "$T/$1" --threads 2 --quiet > "$T/$1.log" 2>&1 || { cat "$T/$1.log"; return 1; }; }

STYLE='\AThe [a-z]+ [a-z]+ the [a-z]+\. The [a-z]+ is [a-z]+\. They live near the [a-z]+\.\z'
cat > "$T/style.yaml" <<YAML
model: random
training_file: style_eval.jsonl
chat_template: chatml
method: {type: eval, adapter: pre}
eval:
  generation: {max_new_tokens: 40, temperature: 0}
  format: {regex: '$STYLE'}
YAML
cat > "$T/pre.yaml" <<'YAML'
model: random
training_file: style.jsonl
chat_template: chatml
method: {type: full_sft}
hyperparameters: {max_steps: 200, batch_size: 8, learning_rate: 2.0e-3, warmup_ratio: 0.05, logging_steps: 20,
                  save_steps: 0, eval_steps: 0, max_seq_len: 96, val_ratio: 0, seed: 1}
YAML
cat > "$T/sft.yaml" <<'YAML'
model: pre
training_file: notes.jsonl
chat_template: chatml
method: {type: sft}
hyperparameters: {max_steps: 300, batch_size: 8, learning_rate: 5.0e-3, warmup_ratio: 0.05, logging_steps: 20,
                  save_steps: 0, eval_steps: 50, max_seq_len: 96, val_ratio: 0.1, seed: 1}
lora: {r: 16, alpha: 32, dropout: 0.0, targets: all-linear}
YAML
cat > "$T/dpo.yaml" <<'YAML'
model: pre
training_file: pairs.jsonl
chat_template: chatml
method: {type: dpo, beta: 0.1, reference_adapter: sft}
hyperparameters: {max_steps: 30, batch_size: 4, learning_rate: 3.0e-5, warmup_ratio: 0.05, logging_steps: 10,
                  save_steps: 0, eval_steps: 0, max_seq_len: 128, val_ratio: 0, seed: 1}
lora: {r: 16, alpha: 32, dropout: 0.0, targets: all-linear}
YAML
for a in sft dpo; do
  cat > "$T/notes_$a.yaml" <<YAML
model: pre
training_file: notes_eval.jsonl
chat_template: chatml
method: {type: eval, adapter: $a}
eval:
  generation: {max_new_tokens: 80, temperature: 0}
  format:
    sections: [Summary, {name: Key Points, bullets: 2}, {name: Question, ends_with: "?"}]
    in_order: true
    nothing_after: true
YAML
done

# 1-2. pre-training with full_sft
run pre
check "full_sft writes a full HF model folder" \
  "[ -s '$T/pre/model.safetensors' ] && [ -s '$T/pre/config.json' ] && [ -s '$T/pre/tokenizer.json' ] && [ ! -e '$T/pre/adapter_model.safetensors' ]"
read -r l0 l1 <<<"$(py "import json; r=[x['loss'] for x in json.load(open('$T/pre/train_log.json')) if x['loss'] is not None]; print(r[0], r[-1])")"
check "full_sft loss falls ($l0 -> $l1)" "py 'import sys; sys.exit(0 if $l1 < 0.5 * $l0 else 1)'"
run style; r0=$(summary "$T/style" compliance_base); r1=$(summary "$T/style" compliance_tuned)
check "random model is not in the style (compliance $r0)" "py 'import sys; sys.exit(0 if $r0 < 0.1 else 1)'"
check "pre-trained model answers held-out prompts in the style (compliance $r1 >= 0.9)" \
  "py 'import sys; sys.exit(0 if $r1 >= 0.9 else 1)'"
kl=$(summary "$T/style" kl)
check "the eval job compares the two whole models (KL $kl > 0)" "py 'import sys; sys.exit(0 if $kl > 0 else 1)'"

# 3. SFT teaches the notes template
run sft
read -r e0 e1 <<<"$(py "import json; r=[x['eval_loss'] for x in json.load(open('$T/sft/train_log.json')) if x['eval_loss'] is not None]; print(r[0], r[-1])")"
check "SFT held-out loss falls ($e0 -> $e1)" "py 'import sys; sys.exit(0 if $e1 < $e0 else 1)'"
run notes_sft
cb=$(summary "$T/notes_sft" compliance_base); ct=$(summary "$T/notes_sft" compliance_tuned)
check "SFT: held-out compliance rises from the base's $cb to $ct >= 0.9" \
  "py 'import sys; sys.exit(0 if $ct >= 0.9 and $cb < $ct else 1)'"

# 4. DPO on near misses keeps it
run dpo
read -r acc margin <<<"$(py "import json; r=json.load(open('$T/dpo/train_log.json'))[-1]; print(r['rewards/accuracy'], r['rewards/margin'])")"
check "DPO learns the preference (rewards/accuracy $acc >= 0.9, margin $margin > 0)" \
  "py 'import sys; sys.exit(0 if $acc >= 0.9 and $margin > 0 else 1)'"
run notes_dpo; cd_=$(summary "$T/notes_dpo" compliance_tuned)
check "DPO does not lower the compliance ($ct -> $cd_)" "py 'import sys; sys.exit(0 if $cd_ >= $ct else 1)'"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
