#!/usr/bin/env bash
# `make run`: the demo. Makes a small random model, registers it, starts lorad
# with one CPU worker, creates a user, uploads the demo dataset, submits the
# demo job, follows its first loss points and prints the dashboard URL and token.
# lorad keeps running in the background; `make stop` (or kill $(cat data/lorad.pid)) ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LR_BUILD:-build}
DATA=${LORAD_DATA:-$PWD/data}
PORT=${LORAD_PORT:-8080}
URL="http://127.0.0.1:$PORT"
mkdir -p "$DATA/models"

if [ ! -f "$DATA/models/demo-tiny/config.json" ]; then
  echo "== making a small random Llama-layout model (lora-worker mkmodel)"
  "$B/lora-worker" mkmodel --arch llama --preset tiny --seed 1 --dtype f32 --out "$DATA/models/demo-tiny"
fi
"$B/lorad" model add demo-tiny "$DATA/models/demo-tiny" --data-dir "$DATA" >/dev/null 2>&1 || true

if [ -f "$DATA/demo.token" ]; then
  TOKEN=$(cat "$DATA/demo.token")
else
  TOKEN=$("$B/lorad" user add demo --admin --data-dir "$DATA" | tail -1)
  echo "$TOKEN" > "$DATA/demo.token"
  chmod 600 "$DATA/demo.token"
fi

if [ -f "$DATA/lorad.pid" ] && kill -0 "$(cat "$DATA/lorad.pid")" 2>/dev/null; then
  echo "== lorad already running (pid $(cat "$DATA/lorad.pid"))"
else
  echo "== starting lorad on $URL with one CPU worker"
  setsid "$B/lorad" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --workers cpu \
    >"$DATA/lorad.log" 2>&1 < /dev/null &
  echo $! > "$DATA/lorad.pid"
  for _ in $(seq 100); do
    curl -fs "$URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "$URL/healthz" >/dev/null || { echo "lorad did not start; see $DATA/lorad.log"; tail -20 "$DATA/lorad.log"; exit 1; }
fi

AUTH="Authorization: Bearer $TOKEN"
echo "== uploading examples/demo.jsonl"
DS=$(curl -fsS -H "$AUTH" -F "file=@examples/demo.jsonl" "$URL/v1/datasets" |
     /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"]); print("   ", d.get("rows"), "rows,", d.get("format"), file=sys.stderr)')
echo "== submitting the demo job (examples/demo-job.yaml)"
SPEC=$(sed "s/DATASET_ID/$DS/" examples/demo-job.yaml |
       /usr/bin/python3 -c 'import sys,json,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))' 2>/dev/null ||
       sed "s/DATASET_ID/$DS/" examples/demo-job.yaml)
JOB=$(curl -fsS -H "$AUTH" -H 'Content-Type: application/json' --data-binary "$SPEC" "$URL/v1/jobs" |
      /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "   job $JOB"
echo "== first loss points"
for _ in $(seq 60); do
  sleep 2
  J=$(curl -fsS -H "$AUTH" "$URL/v1/jobs/$JOB")
  line=$(echo "$J" | /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); p=j.get("progress") or {}; m=j.get("metrics") or {}; print(j["status"], p.get("step"), "/", p.get("total_steps"), "loss", m.get("loss"))')
  echo "   $line"
  case "$line" in succeeded*|failed*|cancelled*) break ;; esac
  step=$(echo "$line" | awk '{print $2}')
  [ "$step" != None ] && [ "${step:-0}" -ge 30 ] 2>/dev/null && break
done
cat <<MSG

lorad is running (pid $(cat "$DATA/lorad.pid"), log $DATA/lorad.log).
  dashboard:  $URL/
  token:      $TOKEN
  the job:    $URL/#/jobs/$JOB
  CLI:        export LORA_URL=$URL LORA_TOKEN=$TOKEN; $B/lora ls
  stop:       kill \$(cat $DATA/lorad.pid)
MSG
