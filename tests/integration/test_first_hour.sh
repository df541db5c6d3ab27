#!/usr/bin/env bash
# The first hour against a real lorad with one CPU worker, through the real
# `lora` CLI and curl (issue 12, items 12 and 16-19): the upload warns about
# duplicate rows, a dataset's kind is whole everywhere, preview renders with a
# chosen chat template, a cuda job on a CPU-only lorad is refused with why,
# reals come back as sent (0.003), answers carry a Date header (lora watch's
# clock), and lora show labels what tokens/s means. Binds 127.0.0.1 on a free
# port, works in a temp dir, bounds every wait, kills what it started.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
B=${LR_BUILD:-build}
LORA=$ROOT/$B/lora LORAD=$ROOT/$B/lorad WORKER=$ROOT/$B/lora-worker
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
P=0; F=0; S=0
ok()   { echo "ok   $1"; P=$((P+1)); }
bad()  { echo "FAIL $1${2:+: $2}"; F=$((F+1)); }
finish() { echo "$P passed, $F failed, $S skipped"; [ "$F" -eq 0 ]; exit $?; }
for x in "$LORA" "$LORAD" "$WORKER"; do
  if [ ! -x "$x" ]; then echo "skip first_hour: $x is not built (make)"; S=1; finish; fi
done

T=$(mktemp -d /tmp/lrfirst.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kids=$(pgrep -P "$PID" 2>/dev/null || true)
    kill -TERM "$PID"
    for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null
    for k in $kids; do kill -KILL "$k" 2>/dev/null; done
  fi
  rm -rf "$T"
}
trap cleanup EXIT
json() { $PY -c "import json,sys; j=json.load(open(sys.argv[1])); r=($2); print(r if not isinstance(r,bool) else int(r))" "$1"; }

D=$T/data
"$WORKER" mkmodel --arch llama --preset tiny --out "$T/model" >"$T/mk.log" 2>&1 || { bad "mkmodel" "$(tail -1 "$T/mk.log")"; finish; }
"$LORAD" model add tiny "$T/model" --data-dir "$D" >/dev/null 2>&1
TOKEN=$("$LORAD" user add alice --data-dir "$D" 2>/dev/null)
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$LORAD" serve --data-dir "$D" --listen "127.0.0.1:$PORT" --workers cpu:1 >"$T/lorad.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
export LORA_URL=$URL LORA_TOKEN=$TOKEN LORA_CONFIG=$T/config

# item 17: duplicates said at upload; item 12: the kind whole
printf '%s\n' '{"prompt":"a","completion":"b"}' '{"prompt":"a","completion":"c"}' \
  '{"prompt":"a","completion":"b"}' '{"prompt":"a","completion":"b","id":3}' > "$T/dup.jsonl"
"$LORA" datasets upload "$T/dup.jsonl" >"$T/o" 2>"$T/e"; rc=$?
DS=$(cat "$T/o")
[ $rc = 0 ] && grep -q '^warning: 2 of 4 rows repeat an earlier row' "$T/e" \
  && ok "upload: the CLI says 2 of 4 rows are duplicates" || bad "upload warning" "rc=$rc $(cat "$T/e")"
"$LORA" datasets ls >"$T/o" 2>&1
grep -q "prompt_completion " "$T/o" && ok "datasets ls: kind prompt_completion whole" || bad "kind in ls" "$(cat "$T/o")"
"$LORA" datasets show "$DS" --json >"$T/o" 2>&1
[ "$(json "$T/o" 'j["kind"]')" = prompt_completion ] && [ "$(json "$T/o" 'j["duplicates"]')" = 2 ] \
  && ok "datasets show --json: kind and duplicates" || bad "datasets show" "$(cat "$T/o")"

# item 17: preview with a chosen chat template
"$LORA" datasets preview "$DS" --model tiny --chat-template alpaca -n 1 >"$T/o" 2>"$T/e"; rc=$?
[ $rc = 0 ] && grep -q '### Instruction' "$T/o" && grep -q 'chat template alpaca' "$T/e" \
  && ok "preview --chat-template alpaca renders with alpaca" || bad "preview --chat-template" "rc=$rc $(cat "$T/o" "$T/e")"
"$LORA" datasets preview "$DS" --chat-template alpaca >"$T/o" 2>"$T/e"; rc=$?
[ $rc = 1 ] && grep -q 'give --model too' "$T/e" && ok "preview --chat-template without --model: usage error" \
  || bad "preview without model" "rc=$rc $(cat "$T/e")"

# item 18: refused at submit when no worker could run it
cat > "$T/cuda.yaml" <<EOF
model: tiny
training_file: $DS
device: cuda
EOF
"$LORA" submit "$T/cuda.yaml" >"$T/o" 2>"$T/e"; rc=$?
[ $rc = 2 ] && grep -q 'device cuda' "$T/e" && grep -q 'its workers: cpu' "$T/e" \
  && ok "submit device cuda on a CPU-only lorad: exit 2, says why" || bad "cuda refused" "rc=$rc $(cat "$T/e")"

# item 16: the learning rate as sent
cat > "$T/job.yaml" <<EOF
model: tiny
training_file: $DS
device: cpu
hyperparameters: {max_steps: 2, learning_rate: 0.003, logging_steps: 1, batch_size: 1, val_ratio: 0}
EOF
JOB=$("$LORA" submit "$T/job.yaml" 2>"$T/e")
curl -s -H "Authorization: Bearer $TOKEN" -D "$T/h" "$URL/v1/jobs/$JOB" >"$T/o"
grep -q '"learning_rate":0.003,' "$T/o" && ! grep -q '0\.00300000' "$T/o" \
  && ok "GET /v1/jobs/ID: \"learning_rate\":0.003" || bad "learning_rate" "$(grep -o '"learning_rate":[^,]*' "$T/o")"
grep -qi '^Date: ' "$T/h" && ok "answers carry a Date header (lora watch's clock)" || bad "Date header" "$(cat "$T/h")"
"$LORA" show "$JOB" --json >"$T/o" 2>&1
grep -q '"learning_rate": 0.003,' "$T/o" && ok "lora show --json: 0.003" || bad "show --json" "$(grep learning_rate "$T/o")"
"$LORA" watch "$JOB" >"$T/w" 2>&1; rc=$?
"$LORA" show "$JOB" >"$T/o" 2>&1
[ $rc = 0 ] && grep -q 'tokens/s (last 1 step) ' "$T/o" && ok "lora show labels tokens/s (last 1 step)" \
  || bad "tokens/s label" "rc=$rc $(cat "$T/w" "$T/o" | tail -5)"
finish
