#!/usr/bin/env bash
# `make run`: the demo. Makes a small random model, registers it, starts lorad
# with one CPU worker, creates a user, uploads the demo dataset, submits the
# demo job, follows its first loss points and prints the dashboard URL and token.
# It writes $LORAD_DATA/env, the shell variables the README's tour uses (URL,
# TOKEN, LORA_URL, LORA_TOKEN, PATH with the build folder): `. data/env`.
# lorad keeps running in the background; `make stop` (or kill $(cat data/lorad.pid)) ends it.
# LORAD_DEMO_MAX_STEPS shortens the demo job (tests/integration/test_make_run.sh).
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
  # lorad says "its token (shown only now):" on stderr; the token is printed
  # below, with the variables to paste, so that line would be left dangling.
  err=$(mktemp)
  if ! TOKEN=$("$B/lorad" user add demo --admin --data-dir "$DATA" 2>"$err"); then
    cat "$err" >&2; rm -f "$err"; exit 1
  fi
  rm -f "$err"
  (umask 077 && echo "$TOKEN" > "$DATA/demo.token")
  echo "== made the admin user demo (its token is in $DATA/demo.token)"
fi
BIN=$(cd "$B" && pwd)
(umask 077 && cat > "$DATA/env" <<ENV
export URL=$URL TOKEN=$TOKEN
export LORA_URL=$URL LORA_TOKEN=$TOKEN
export PATH=$BIN:\$PATH
ENV
)

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

export LORA_URL=$URL LORA_TOKEN=$TOKEN
echo "== uploading examples/demo.jsonl (lora datasets upload)"
DS=$("$B/lora" datasets upload examples/demo.jsonl --json |
     /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"]); print("   ", d.get("rows"), "rows,", d.get("format"), file=sys.stderr)')
echo "== submitting the demo job (lora submit examples/demo-job.yaml)"
JOB=$("$B/lora" submit examples/demo-job.yaml --set training_file="$DS" ${LORAD_DEMO_MAX_STEPS:+--set max_steps="$LORAD_DEMO_MAX_STEPS"})
echo "   job $JOB"
echo "== following it (lora watch; Ctrl-C leaves it running)"
"$B/lora" watch "$JOB" || true
"$B/lora" ls
cat <<MSG

lorad is running (pid $(cat "$DATA/lorad.pid"), log $DATA/lorad.log).
  dashboard:  $URL/
  token:      $TOKEN
  the job:    $URL/#/jobs/$JOB
  stop:       make stop

For the README's curl tour and the lora CLI, paste these lines (or run: . $DATA/env):
$(cat "$DATA/env")
then: lora ls; lora metrics $JOB; curl -s -H "Authorization: Bearer \$TOKEN" \$URL/v1/jobs
MSG
