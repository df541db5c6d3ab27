#!/usr/bin/env bash
# Each stopping rule of `lora-worker run` ends the run when its rule says and
# says why: the train-loss plateau (hyperparameters.patience, min_delta,
# counted at logging steps, never before min_steps), the eval-loss plateau
# (with a validation file, counted at eval_steps) and max_minutes. A learning
# rate of 1e-12 on a batch that holds the whole dataset keeps the loss flat,
# so the first check sets the best loss and every later one is a bad one:
# the plateau fires at the first checked step s >= min_steps with
# (checks before s) >= patience, which each case computes and asserts
# (the printed reason, the last step of train_log.csv, exit 0 and an adapter).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${LR_BUILD:-build}
W=$PWD/$B/lora-worker
T=$(mktemp -d /tmp/lrstop.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1${2:+: $2}"; fail=$((fail+1)); }

[ -x "$W" ] || { echo "FAIL $W is not built (make)"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }
"$W" mkmodel --arch llama --preset tiny --seed 1 --out "$T/model" >/dev/null ||
  { echo "FAIL mkmodel"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }
for i in 1 2 3 4 5 6 7 8; do
  printf '{"messages":[{"role":"user","content":"what is %d plus %d?"},{"role":"assistant","content":"%d"}]}\n' \
    "$i" "$i" $((2 * i))
done >"$T/train.jsonl"
for i in 11 12 13 14; do
  printf '{"messages":[{"role":"user","content":"what is %d plus 1?"},{"role":"assistant","content":"%d"}]}\n' \
    "$i" $((i + 1))
done >"$T/val.jsonl"

# run NAME HYPERPARAMETERS [validation_file]: one run in $T/NAME; its stdout+stderr in $T/NAME.log
run() {
  local name=$1 hp=$2 val=${3:-}
  {
    echo "model: model"
    echo "training_file: train.jsonl"
    [ -n "$val" ] && echo "validation_file: $val"
    echo "chat_template: chatml"
    echo "hyperparameters: {batch_size: 8, learning_rate: 1.0e-12, max_seq_len: 48, save_steps: 0, seed: 1, $hp}"
    echo "lora: {r: 2, alpha: 4, dropout: 0}"
  } >"$T/$name.yaml"
  (cd "$T" && "$W" run --config "$name.yaml" --out "$name" --threads 1 >"$name.log" 2>&1)
  echo $? >"$T/$name.rc"
}
last_step() { tail -n 1 "$T/$1/train_log.csv" | cut -d, -f1; }
# expect_stop NAME STEP REASON: stopped at STEP, with one reason line matching the basic regex
# REASON whole, exit 0, train_log.csv ending at STEP and the adapter written
expect_stop() {
  local name=$1 step=$2 why=$3 got
  got=$(grep -a '^\[info\] \(early stop\|stopped\) at step' "$T/$name.log")
  if [ "$(cat "$T/$name.rc")" = 0 ] && printf '%s\n' "$got" | grep -q "^\[info\] $why\$" &&
     [ "$(printf '%s\n' "$got" | wc -l)" = 1 ] && [ "$(last_step "$name")" = "$step" ] &&
     [ -s "$T/$name/adapter_model.safetensors" ] && grep -q "^done: adapter" "$T/$name.log"; then
    ok "$name: stops at step $step (${got#\[info\] })"
  else
    bad "$name: stops at step $step" "rc=$(cat "$T/$name.rc") last step $(last_step "$name") reason '$got'; $(tail -2 "$T/$name.log")"
  fi
}
# expect_no_stop NAME STEPS: ran to max_steps without a stopping rule firing
expect_no_stop() {
  local name=$1 steps=$2
  if [ "$(cat "$T/$name.rc")" = 0 ] && ! grep -q '\(early stop\|stopped\) at step' "$T/$name.log" &&
     [ "$(last_step "$name")" = "$steps" ] && [ -s "$T/$name/adapter_model.safetensors" ]; then
    ok "$name: runs all $steps steps"
  else
    bad "$name: runs all $steps steps" "rc=$(cat "$T/$name.rc") last step $(last_step "$name"); $(grep -a 'stop' "$T/$name.log")"
  fi
}
BEST='(best [0-9]*\.[0-9]\{4\})'

# 1. train-loss plateau, checked every step: best at 1, bad at 2,3,4 -> stop at 1 + patience = 4
run plateau_every_step "max_steps: 30, val_ratio: 0, logging_steps: 1, eval_steps: 0, patience: 3, min_delta: 0.01"
expect_stop plateau_every_step 4 "early stop at step 4: train loss did not improve by 0.01 for 3 evaluations $BEST"
[ "$(cut -d, -f1 "$T/plateau_every_step/train_log.csv" | grep '^[0-9]' | tr '\n' ' ')" = "1 2 3 4 " ] &&
  ok "plateau_every_step: the log holds steps 1..4" || bad "plateau_every_step: the log holds steps 1..4"

# 2. the plateau is counted at logging steps: checks at 3,6,9,12 -> stop at 3 * (1 + patience) = 12
run plateau_logging3 "max_steps: 40, val_ratio: 0, logging_steps: 3, eval_steps: 0, patience: 3, min_delta: 0.01"
expect_stop plateau_logging3 12 "early stop at step 12: train loss did not improve by 0.01 for 3 evaluations $BEST"

# 3. the warm-up floor: bad checks reach patience 2 at step 3, but no stop before min_steps 9 -> 9
run plateau_min_steps "max_steps: 30, val_ratio: 0, logging_steps: 1, eval_steps: 0, patience: 2, min_delta: 0.01, min_steps: 9"
expect_stop plateau_min_steps 9 "early stop at step 9: train loss did not improve by 0.01 for 2 evaluations $BEST"

# 4. a floor past max_steps: the same flat loss never stops the run
run plateau_floor_past_end "max_steps: 12, val_ratio: 0, logging_steps: 1, eval_steps: 0, patience: 2, min_delta: 0.01, min_steps: 50"
expect_no_stop plateau_floor_past_end 12

# 5. patience 0 is off
run plateau_off "max_steps: 10, val_ratio: 0, logging_steps: 1, eval_steps: 0, patience: 0"
expect_no_stop plateau_off 10

# 6. eval-loss early stop: evaluations at 2,4,6 -> best at 2, bad at 4 and 6 -> stop at 6
run eval_stop "max_steps: 40, logging_steps: 1, eval_steps: 2, patience: 2, min_delta: 0.01" val.jsonl
expect_stop eval_stop 6 "early stop at step 6: eval loss did not improve by 0.01 for 2 evaluations $BEST"
[ "$(awk -F, '$1 == 6 && $7 ~ /^[0-9.]+$/' "$T/eval_stop/train_log.csv" | wc -l)" = 1 ] && ok "eval_stop: step 6's eval loss is logged" ||
  bad "eval_stop: step 6's eval loss is logged" "$(tail -3 "$T/eval_stop/train_log.csv")"

# 7. with a validation set the flat train loss is not watched: evaluated only at the end -> no stop
run eval_only_at_end "max_steps: 10, logging_steps: 1, eval_steps: 0, patience: 2, min_delta: 0.01" val.jsonl
expect_no_stop eval_only_at_end 10

# 8. max_minutes: a limit shorter than one step stops after the first step
run max_minutes "max_steps: 50, val_ratio: 0, logging_steps: 1, eval_steps: 0, max_minutes: 1.0e-6"
expect_stop max_minutes 1 "stopped at step 1: max_minutes (1e-06) reached"

# 9. ... also when that step is not a logging step: the log still ends at the step reached
run max_minutes_unlogged "max_steps: 50, val_ratio: 0, logging_steps: 5, eval_steps: 0, max_minutes: 1.0e-6"
expect_stop max_minutes_unlogged 1 "stopped at step 1: max_minutes (1e-06) reached"

echo "$pass passed, $fail failed, 0 skipped"
[ "$fail" -eq 0 ]
