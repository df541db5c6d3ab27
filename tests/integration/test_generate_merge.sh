#!/usr/bin/env bash
# Integration: train a tiny adapter with `lora-worker run`, generate with
# and without it, merge it into the base, reload the merged folder (its
# greedy output must equal base + adapter token for token), and run an
# eval job (method eval) over a few rows. Works in a temp dir; every
# command is bounded by `timeout`.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
B=${LR_BUILD:-build}
W=$ROOT/$B/lora-worker
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
P=0; F=0; S=0
ok()   { echo "ok   $1"; P=$((P+1)); }
bad()  { echo "FAIL $1${2:+: $2}"; F=$((F+1)); }
finish() { echo "$P passed, $F failed, $S skipped"; [ "$F" -eq 0 ]; exit $?; }
if [ ! -x "$W" ]; then echo "skip: $W is not built"; S=1; finish; fi

T=$(mktemp -d /tmp/lrgen-it.XXXXXX)
trap 'rm -rf "$T"' EXIT
run() { timeout 120 "$@" >"$T/out" 2>"$T/err"; }
# json FILE EXPR: a Python expression over the parsed JSON `j` (JSONL: `rows`)
json() { $PY -c "import json,sys
t=open(sys.argv[1]).read()
try: j=json.loads(t)
except ValueError: j=None
rows=[json.loads(l) for l in t.splitlines() if l.strip()] if j is None else None
r=($2); print(r if not isinstance(r,bool) else int(r))" "$1"; }

# a tiny model and a small dataset in the notes format
run "$W" mkmodel --arch qwen2 --out "$T/model" --seed 1 && ok "mkmodel" || { bad "mkmodel" "$(cat "$T/err")"; finish; }
$PY - "$T/data.jsonl" <<'EOF'
import json, sys
topics = ["dropout", "attention", "batch norm", "weight decay", "warmup", "pruning", "distillation", "quantization",
          "mixup", "label smoothing", "early stopping", "gradient clipping"]
with open(sys.argv[1], "w") as f:
    for t in topics:
        out = (f"Summary:\n{t} helps models train.\n\nKey Points:\n- {t} is simple.\n- {t} is cheap.\n"
               f"- {t} is common.\n\nLimitation:\n{t} can hurt.\n\nFollow-up Question:\nWhen does {t} fail?")
        f.write(json.dumps({"input": f"Explain {t}.", "output": out}) + "\n")
EOF
cat >"$T/job.yaml" <<EOF
name: it-gen
model: model
training_file: data.jsonl
hyperparameters: {max_steps: 12, batch_size: 4, learning_rate: 0.01, lr_scheduler: constant, val_ratio: 0.0,
                  logging_steps: 4, eval_steps: 0, save_steps: 0, max_seq_len: 160, seed: 3}
lora: {r: 8, alpha: 16, dropout: 0.0, targets: all-linear}
EOF
if run "$W" run --config "$T/job.yaml" --out "$T/run" --threads 1 --quiet && [ -f "$T/run/adapter_model.safetensors" ]; then
  ok "lora-worker run trains an adapter"
else
  bad "lora-worker run" "$(tail -3 "$T/err")"; finish
fi

G=("$W" generate --model "$T/model" --prompt "Explain dropout." --max-new-tokens 24 --threads 1 --json)
if run "${G[@]}" && cp "$T/out" "$T/base.json" && [ "$(json "$T/base.json" "len(j['ids']) <= 24 and j['prompt_tokens'] > 0")" = 1 ]; then
  ok "generate without adapter ($(json "$T/base.json" "len(j['ids'])") tokens, stop $(json "$T/base.json" "j['stop']"))"
else
  bad "generate without adapter" "$(cat "$T/err")"
fi
if run "${G[@]}" --adapter "$T/run" && cp "$T/out" "$T/tuned.json" && [ "$(json "$T/tuned.json" "'text' in j")" = 1 ]; then
  ok "generate with adapter: $(json "$T/tuned.json" "repr(j['text'][:60])")"
else
  bad "generate with adapter" "$(cat "$T/err")"
fi
# a tiny random model's greedy text may not change, its logits must
run "$W" generate --model "$T/model" --prompt-ids 1,2,3 --max-new-tokens 1 --logits-out "$T/l0.st" &&
  run "$W" generate --model "$T/model" --adapter "$T/run" --prompt-ids 1,2,3 --max-new-tokens 1 --logits-out "$T/l1.st" &&
  [ -s "$T/l0.st" ] && ! cmp -s "$T/l0.st" "$T/l1.st" && ok "the adapter changes the logits (--logits-out)" ||
  bad "the adapter changes the logits" "$(cat "$T/err")"
run "${G[@]}" --adapter "$T/run" --temperature 0.9 --top-p 0.9 --top-k 40 --seed 5 && cp "$T/out" "$T/s1.json"
run "${G[@]}" --adapter "$T/run" --temperature 0.9 --top-p 0.9 --top-k 40 --seed 5 && cp "$T/out" "$T/s2.json"
cmp -s "$T/s1.json" "$T/s2.json" && ok "sampling with a seed is reproducible" || bad "sampling with a seed is reproducible"
# --json failures end with an error object naming the class and the input refused (lorad reads these, not the words)
printf '{"messages":[{"role":"assistant","content":"a"},{"role":"assistant","content":"b"}]}\n' >"$T/badturns.jsonl"
run "$W" generate --model "$T/model" --template mistral --prompts "$T/badturns.jsonl" --threads 1 --json; rc1=$?
e1=$(json "$T/out" "(rows or [j])[-1]['error']['code'] + '/' + str((rows or [j])[-1]['error']['param'])" 2>/dev/null)
run "${G[@]}" --model "$T/nope"; rc2=$?
e2=$(json "$T/out" "j['error']['code'] + '/' + str(j['error']['param'])" 2>/dev/null)
run "$W" merge --json --model "$T/model" --adapter "$T/nope" --out "$T/never"; rc3=$?
e3=$(json "$T/out" "j['error']['param'] is None and 'adapter_config.json' in j['error']['message']" 2>/dev/null)
[ "$rc1$rc2$rc3" = 222 ] && [ "$e1" = invalid/prompt ] && [ "$e2" = io/model ] && [ "$e3" = 1 ] &&
  ok "--json failures: an error object (prompt: $e1, model: $e2, merge)" || bad "--json error objects" "$rc1$rc2$rc3 $e1 $e2 $e3"
printf '{"id":"r1","input":"Explain dropout."}\n"Explain warmup."\n' >"$T/prompts.jsonl"
if run "$W" generate --model "$T/model" --adapter "$T/run" --prompts "$T/prompts.jsonl" --max-new-tokens 8 --threads 1 --json &&
   [ "$(json "$T/out" "[r['id'] for r in rows]")" = "['r1', 'line 2']" ]; then
  ok "generate --prompts (JSONL rows)"
else
  bad "generate --prompts" "$(cat "$T/out" "$T/err")"
fi
if run "$W" generate --model "$T/model" --prompt x --top-p 0; then bad "bad --top-p is refused"; else ok "bad --top-p is refused"; fi

# merge, reload, same greedy tokens as base + adapter
if run "$W" merge --model "$T/model" --adapter "$T/run" --out "$T/merged" && [ -f "$T/merged/model.safetensors" ] &&
   [ -f "$T/merged/tokenizer.json" ] && [ -f "$T/merged/config.json" ]; then
  ok "merge: $(cat "$T/out")"
else
  bad "merge" "$(cat "$T/err")"
fi
if run "$W" generate --model "$T/merged" --prompt "Explain dropout." --max-new-tokens 24 --threads 1 --json; then
  [ "$(json "$T/out" "j['ids']")" = "$(json "$T/tuned.json" "j['ids']")" ] &&
    ok "merged model reloads and generates what base + adapter generate" ||
    bad "merged greedy output" "$(json "$T/out" "j['ids']") vs $(json "$T/tuned.json" "j['ids']")"
else
  bad "merged model reloads" "$(cat "$T/err")"
fi
if run "$W" merge --model "$T/model" --adapter "$T/run" --out "$T/model"; then bad "merge over the base is refused"; else
  ok "merge over the base is refused"; fi

# an eval job: base vs tuned over 4 rows with the notes format rules
cat >"$T/eval.yaml" <<EOF
name: it-eval
model: model
training_file: data.jsonl
method: {type: eval, adapter: run}
eval:
  max_rows: 4
  generation: {max_new_tokens: 40, temperature: 0}
  format:
    sections: [Summary, {name: Key Points, bullets: 3}, Limitation, Follow-up Question]
    in_order: false
EOF
if run "$W" run --config "$T/eval.yaml" --out "$T/evalrun" --threads 1 && [ -f "$T/evalrun/eval_summary.json" ]; then
  ok "eval job runs"
else
  bad "eval job" "$(tail -5 "$T/err")"; finish
fi
S_=$T/evalrun/eval_summary.json R_=$T/evalrun/eval_results.jsonl
[ "$(json "$S_" "j['rows'] == 4 and j['rows_with_reference'] == 4")" = 1 ] && ok "eval: 4 rows with references" || bad "eval rows" "$(cat "$S_")"
[ "$(json "$S_" "all(0 <= j[k] <= 1 for k in ('compliance_base','compliance_tuned','f1_base','f1_tuned')) and j['kl'] >= 0 and j['kl_tokens'] > 0")" = 1 ] &&
  ok "eval summary: compliance $(json "$S_" "j['compliance_base']") -> $(json "$S_" "j['compliance_tuned']"), f1 $(json "$S_" "round(j['f1_base'],3)") -> $(json "$S_" "round(j['f1_tuned'],3)"), kl $(json "$S_" "round(j['kl'],4)")" ||
  bad "eval summary" "$(cat "$S_")"
[ "$(json "$R_" "len(rows) == 4 and all(r['base']['tokens'] <= 40 and r['tuned']['compliant'] in (True, False) and r['kl'] >= 0 for r in rows)")" = 1 ] &&
  ok "eval_results.jsonl: per-row outputs, compliance and kl" || bad "eval_results.jsonl" "$(head -c 600 "$R_")"
# the tuned greedy output of row 1 is what generate gives with the adapter
$PY - "$R_" "$T/tuned.json" <<'EOF' && ok "eval's tuned output equals lora-worker generate's" || bad "eval's tuned output equals generate's"
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][0]
g = json.load(open(sys.argv[2]))
sys.exit(0 if g["text"] and r["tuned"]["output"].startswith(g["text"]) else 1)  # greedy: 24 tokens are a prefix of 40
EOF
grep -q "compliance" "$T/err" && ok "eval reports through the job events" || bad "eval events" "$(cat "$T/err")"
finish
