#!/usr/bin/env bash
# HTTP load on lorad with wrk, against a store holding 10,000 jobs:
# GET /v1/jobs?limit=50 (first page, the one queued job by status, a page
# deep in the list by after=) and GET /v1/jobs/{id}, next to serving a static file
# from the same server in the same run (the HTTP layer's ceiling).
# Not a timed test: it prints requests/s, p99 latency and lorad's CPU time
# per request (all its threads, from /proc: less sensitive than latency to
# other load on the machine, since wrk runs on the same cores).
#   bash bench/http_load.sh [seconds per case, default 5] [connections, default 32]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LR_BUILD:-build}
DUR=${1:-5}
CONNS=${2:-32}
NJOBS=${NJOBS:-10000}
FIX=${LR_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
for t in wrk sqlite3 curl; do command -v $t >/dev/null || { echo "bench/http_load.sh: needs $t"; exit 1; }; done
[ -x "$B/lorad" ] || { echo "bench/http_load.sh: build $B/lorad first (make)"; exit 1; }

D=$(mktemp -d /tmp/lrbench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT

mkdir -p "$D/web"
# A worker that never says hello: lorad takes jobs for it (a job no worker
# could run is refused) and none of them runs during the measurement.
printf '#!/bin/sh\nexec sleep 300\n' > "$D/idle-worker"
chmod +x "$D/idle-worker"
head -c 2048 /dev/zero | tr '\0' 'x' > "$D/web/static.txt"
A=(--data-dir "$D" --migrations-dir migrations)
TOKEN=$("$B/lorad" user add bench "${A[@]}" 2>/dev/null)
"$B/lorad" model add tiny "$FIX/models/tiny-gpt2-hf" "${A[@]}" >/dev/null
"$B/lorad" serve "${A[@]}" --listen 127.0.0.1:$PORT --workers cpu:1 --worker-bin "$D/idle-worker" --web-dir "$D/web" --http-threads 2 \
    >"$D/lorad.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
AUTH="Authorization: Bearer $TOKEN"
printf '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}\n' |
    curl -sf -H "$AUTH" --data-binary @- "http://127.0.0.1:$PORT/v1/datasets?filename=d.jsonl" >"$D/ds.json"
FID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$D/ds.json")
curl -sf -H "$AUTH" -d "{\"model\":\"tiny\",\"training_file\":\"$FID\"}" "http://127.0.0.1:$PORT/v1/jobs" >"$D/job.json"
ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$D/job.json")
# Copies of that job, straight into the database (the API path is not what is measured here).
sqlite3 "$D/lorad.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $NJOBS - 1)
  INSERT INTO jobs(id, name, user, model, status, priority, device, spec, created_at, loss)
  SELECT printf('ftjob-%012x', i), 'bench', 'bench', model, 'succeeded', 0, device, spec, created_at, 1.5
  FROM n, (SELECT * FROM jobs WHERE id = '$ID');"

cpu_ns() { cat /proc/$PID/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }
run() { # name, path, header...
  local name=$1 path=$2; shift 2
  local out c0 c1
  c0=$(cpu_ns)
  out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$@" "http://127.0.0.1:$PORT$path")
  c1=$(cpu_ns)
  local rps p99 n
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  printf '%-28s %10s req/s   p99 %8s   lorad %6.1f us CPU/req\n' "$name" "$rps" "$p99" \
    "$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN {print (n > 0 ? (b - a) / 1000 / n : 0)}')"
  echo "$rps" >"$D/rps.$name"
}
echo "lorad HTTP load: $NJOBS jobs in the store, $CONNS connections, ${DUR}s per case, 2 HTTP threads"
run static_file /static.txt
run jobs_list_50 "/v1/jobs?limit=50" -H "$AUTH"
run jobs_list_status "/v1/jobs?status=queued&limit=50" -H "$AUTH"
run jobs_list_deep "/v1/jobs?limit=50&after=ftjob-000000000064" -H "$AUTH"
run job_get "/v1/jobs/$ID" -H "$AUTH"
python3 - "$D" <<'PY'
import sys
d = sys.argv[1]
names = ("jobs_list_50", "jobs_list_status", "jobs_list_deep", "job_get")
r = {n: float(open("%s/rps.%s" % (d, n)).read()) for n in ("static_file",) + names}
for n in names:
    print("%-28s %.3f of the static-file ceiling" % (n, r[n] / r["static_file"]))
PY
