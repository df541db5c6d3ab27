#!/usr/bin/env bash
# Integration: the real `lora` binary against a real lorad with a CPU worker.
# Usage errors and an unreachable server need only build/lora; everything else
# needs build/lorad and build/lora-worker (mkmodel + training). What cannot run
# prints "skip: <missing piece>" (a skip is not a pass). Binds 127.0.0.1 on a
# free port, works in a temp dir, bounds every wait, kills what it started.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
B=${LR_BUILD:-build}
LORA=${LORA_BIN:-$ROOT/$B/lora}  # LORA_BIN: e.g. an ASan build of the client
LORAD=$ROOT/$B/lorad
WORKER=$ROOT/$B/lora-worker
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
P=0; F=0; S=0
ok()   { echo "ok   $1"; P=$((P+1)); }
bad()  { echo "FAIL $1${2:+: $2}"; F=$((F+1)); }
skip() { echo "skip: $1"; S=$((S+1)); }
finish() { echo "$P passed, $F failed, $S skipped"; [ "$F" -eq 0 ]; exit $?; }

T=$(mktemp -d /tmp/lrcli-it.XXXXXX)
LORAD_PID=
TMUX_SOCK=$T/tmux.sock
cleanup() {
  if [ -n "$LORAD_PID" ] && kill -0 "$LORAD_PID" 2>/dev/null; then
    kids=$(pgrep -P "$LORAD_PID" 2>/dev/null || true)
    kill -TERM "$LORAD_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$LORAD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$LORAD_PID" 2>/dev/null
    for k in $kids; do kill -KILL "$k" 2>/dev/null; done
  fi
  [ -S "$TMUX_SOCK" ] && tmux -S "$TMUX_SOCK" kill-server 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# json FILE EXPR: evaluates a Python expression over the parsed JSON `j`
json() { $PY -c "import json,sys; j=json.load(open(sys.argv[1])); r=($2); print(r if not isinstance(r,bool) else int(r))" "$1"; }
lines() { grep -c '' "$1"; }

# ---- no server needed ---------------------------------------------------------
if [ ! -x "$LORA" ]; then
  skip "all: $B/lora is not built (make)"
  finish
fi
export LORA_CONFIG=$T/config   # never read or write the user's own config
unset LORA_URL LORA_TOKEN

"$LORA" --help >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 0 ] && grep -q '^usage: lora COMMAND' "$T/o" && ok "help: exit 0" || bad "help: exit 0" "rc=$rc"

"$LORA" ls --frobnicate >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && [ "$(lines "$T/e")" = 1 ] && grep -q "unknown flag --frobnicate" "$T/e" && [ ! -s "$T/o" ] \
  && ok "usage: unknown flag -> exit 1, one line" || bad "usage: unknown flag" "rc=$rc $(cat "$T/e")"

"$LORA" frobnicate >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && [ "$(lines "$T/e")" = 1 ] && grep -q "unknown command 'frobnicate'" "$T/e" \
  && ok "usage: unknown command -> exit 1" || bad "usage: unknown command" "rc=$rc $(cat "$T/e")"

"$LORA" submit "$T/nope.yaml" >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && [ "$(lines "$T/e")" = 1 ] && grep -q "nope.yaml" "$T/e" \
  && ok "usage: missing file -> exit 1, one line" || bad "usage: missing file" "rc=$rc $(cat "$T/e")"

"$LORA" submit >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && grep -q "missing argument" "$T/e" && ok "usage: missing argument -> exit 1" || bad "usage: missing argument" "rc=$rc"

cat >"$T/min.yaml" <<EOF
model: tiny
training_file: file-x
EOF
"$LORA" submit "$T/min.yaml" --set lora.r=abc >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && [ "$(lines "$T/e")" = 1 ] && grep -q "lora.r must be an integer" "$T/e" \
  && ok "usage: bad --set value -> exit 1, one line" || bad "usage: bad --set value" "rc=$rc $(cat "$T/e")"
"$LORA" submit "$T/min.yaml" --set lora.nope=1 >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && [ "$(lines "$T/e")" = 1 ] && grep -q "unknown field 'lora.nope'" "$T/e" \
  && ok "usage: bad --set key -> exit 1, one line" || bad "usage: bad --set key" "rc=$rc $(cat "$T/e")"
"$LORA" sweep "$T/min.yaml" --grid lora.r >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && [ "$(lines "$T/e")" = 1 ] && ok "usage: bad --grid -> exit 1" || bad "usage: bad --grid" "rc=$rc $(cat "$T/e")"

dead=$(free_port)
"$LORA" ls --url "http://127.0.0.1:$dead" >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 3 ] && [ "$(lines "$T/e")" = 1 ] && grep -q "cannot connect to http://127.0.0.1:$dead" "$T/e" \
  && ok "unreachable server -> exit 3, one line" || bad "unreachable server" "rc=$rc $(cat "$T/e")"
LORA_URL="http://127.0.0.1:$dead" "$LORA" workers --json >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 3 ] && [ ! -s "$T/o" ] && ok "unreachable via LORA_URL -> exit 3, nothing on stdout" || bad "unreachable via LORA_URL" "rc=$rc"

# ---- a real server ------------------------------------------------------------
SERVER_TESTS=("wrong token -> exit 2" "login writes the config" "models ls --json" "datasets upload + ls --json"
  "datasets upload: validation report with line numbers" "datasets show/preview" "submit with --set overrides"
  "watch to completion -> exit 0 (piped)" "ls table and --json" "show --json" "metrics --csv" "logs"
  "download matches the server byte for byte" "generate: base and tuned blocks" "generate --json, sampling options"
  "generate: bad option -> exit 1" "generate: prompt from stdin" "merge --wait registers the model"
  "merge into a taken name -> exit 2" "failing job -> watch exit 4" "generate on a failed job -> exit 2" "cancel -> watch exit 5"
  "sweep of 4 points ranked by eval loss" "sweep --random: explicit points across sections" "workers --json" "watch in a terminal (tmux): bar + sparkline"
  "watch in a terminal: Ctrl-C -> 130")
skip_server() { for t in "${SERVER_TESTS[@]}"; do skip "$t: $1"; done; finish; }
[ -x "$LORAD" ] || skip_server "$B/lorad is not built"
[ -x "$WORKER" ] || skip_server "$B/lora-worker is not built"
"$WORKER" mkmodel --arch llama --preset tiny --out "$T/model" >"$T/mk.log" 2>&1 \
  || skip_server "lora-worker mkmodel --arch llama --preset tiny failed: $(tail -1 "$T/mk.log")"
D=$T/data
"$LORAD" model add tiny "$T/model" --data-dir "$D" >"$T/madd.log" 2>&1 \
  || skip_server "lorad model add failed: $(tail -1 "$T/madd.log")"
"$LORAD" user add alice --data-dir "$D" >"$T/user.log" 2>&1 || skip_server "lorad user add failed: $(tail -1 "$T/user.log")"
TOKEN=$(grep -oE '[A-Za-z0-9_]{24,}' "$T/user.log" | tail -1)
[ -n "$TOKEN" ] || skip_server "no token in the output of lorad user add"
PORT=$(free_port)
"$LORAD" serve --data-dir "$D" --listen "127.0.0.1:$PORT" --workers cpu:1 --shutdown-grace-s 2 >"$T/lorad.log" 2>&1 &
LORAD_PID=$!
up=0
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && { up=1; break; }
  kill -0 "$LORAD_PID" 2>/dev/null || break
  sleep 0.2
done
[ $up = 1 ] || skip_server "lorad serve did not answer /healthz in 20 s: $(tail -1 "$T/lorad.log")"
export LORA_URL="http://127.0.0.1:$PORT" LORA_TOKEN="$TOKEN"
# the CPU worker says hello after lorad starts: wait (bounded) until it is idle
for _ in $(seq 1 100); do
  "$LORA" workers --json >"$T/wk" 2>/dev/null && [ "$(json "$T/wk" 'any(w["status"]=="idle" for w in j)')" = 1 ] && break
  sleep 0.2
done

"$LORA" ls --token lr_not_a_token >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 2 ] && [ "$(lines "$T/e")" = 1 ] && grep -qi "token" "$T/e" \
  && ok "wrong token -> exit 2" || bad "wrong token -> exit 2" "rc=$rc $(cat "$T/e")"

env -u LORA_URL -u LORA_TOKEN "$LORA" login "$LORA_URL" "$TOKEN" >"$T/o" 2>"$T/e"; rc=$?
if [ $rc -eq 0 ] && grep -q "token = $TOKEN" "$T/config" && [ "$(stat -c %a "$T/config")" = 600 ] &&
   env -u LORA_URL -u LORA_TOKEN "$LORA" ls >/dev/null 2>&1; then ok "login writes the config"
else bad "login writes the config" "rc=$rc $(cat "$T/e")"; fi

"$LORA" models ls --json >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 0 ] && [ "$(json "$T/o" '[m["id"] for m in j] == ["tiny"]')" = 1 ] && ok "models ls --json" || bad "models ls --json" "rc=$rc"

# A small chat dataset: short rows so the tiny model trains in seconds.
$PY - "$T/train.jsonl" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(32):
        a, b = i % 7, i % 5
        f.write(json.dumps({"messages": [{"role": "user", "content": f"what is {a} plus {b}?"},
                                         {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}) + "\n")
EOF
"$LORA" datasets upload "$T/train.jsonl" --name arith.jsonl >"$T/o" 2>"$T/e"; rc=$?
DS=$(cat "$T/o")
"$LORA" datasets ls --json >"$T/ls" 2>/dev/null
if [ $rc -eq 0 ] && [[ "$DS" =~ ^file-[0-9a-f]+$ ]] && [ "$(json "$T/ls" "[d['rows'] for d in j if d['id']=='$DS']")" = "[32]" ]; then
  ok "datasets upload + ls --json"
else bad "datasets upload + ls --json" "rc=$rc out=$DS $(cat "$T/e")"; fi

printf '%s\n' '{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}' '{"messages": 3}' 'not json' >"$T/bad.jsonl"
"$LORA" datasets upload "$T/bad.jsonl" >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 2 ] && grep -q "line 2" "$T/e" && grep -q "line 3" "$T/e" && [ ! -s "$T/o" ] \
  && ok "datasets upload: validation report with line numbers" || bad "datasets upload: validation report" "rc=$rc $(cat "$T/e")"

"$LORA" datasets show "$DS" >"$T/o" 2>&1 && grep -q "rows *32" "$T/o" &&
  "$LORA" datasets preview "$DS" --model tiny -n 2 >"$T/p" 2>&1 && grep -q "plus" "$T/p" \
  && ok "datasets show/preview" || bad "datasets show/preview" "$(tail -2 "$T/o" "$T/p" 2>/dev/null)"

cat >"$T/job.yaml" <<EOF
name: cli-it
model: tiny
training_file: $DS
hyperparameters:
  max_steps: 8
  batch_size: 4
  logging_steps: 1
  eval_steps: 4
  save_steps: 100
  val_ratio: 0.25
  max_seq_len: 64
lora: {r: 8, alpha: 16}
device: cpu
EOF
"$LORA" submit "$T/job.yaml" --set lora.r=4 --set learning_rate=1e-3 --set name=over >"$T/o" 2>"$T/e"; rc=$?
JOB=$(cat "$T/o")
"$LORA" show "$JOB" --json >"$T/show" 2>/dev/null
if [ $rc -eq 0 ] && [[ "$JOB" =~ ^ftjob- ]] &&
   [ "$(json "$T/show" 'j["spec"]["lora"]["r"] == 4 and abs(j["spec"]["hyperparameters"]["learning_rate"] - 1e-3) < 1e-12 and j["name"] == "over"')" = 1 ]; then
  ok "submit with --set overrides"
else bad "submit with --set overrides" "rc=$rc $JOB $(cat "$T/e")"; fi

timeout 120 "$LORA" watch "$JOB" --interval 0.3 >"$T/watch" 2>&1; rc=$?
"$LORA" show "$JOB" --json >"$T/show" 2>/dev/null
if [ $rc -eq 0 ] && [ "$(json "$T/show" 'j["status"]')" = succeeded ] && grep -q "succeeded" "$T/watch" &&
   ! grep -q $'\x1b' "$T/watch"; then ok "watch to completion -> exit 0 (piped)"
else bad "watch to completion -> exit 0 (piped)" "rc=$rc $(tail -3 "$T/watch") lorad: $(tail -5 "$T/lorad.log")"; fi

"$LORA" ls >"$T/o" 2>&1 && head -1 "$T/o" | grep -q "^ID  *NAME  *USER  *STATUS  *PROGRESS  *STEP  *LOSS  *EVAL LOSS  *ELAPSED  *ETA$" &&
  grep -q "^$JOB  *over  *alice  *succeeded  *100%" "$T/o" && "$LORA" ls --status succeeded --json >"$T/lj" 2>/dev/null &&
  [ "$(json "$T/lj" "any(x['id']=='$JOB' for x in j) and all(x['status']=='succeeded' for x in j)")" = 1 ] \
  && ok "ls table and --json" || bad "ls table and --json" "$(cat "$T/o")"

[ "$(json "$T/show" 'j["progress"]["step"] == 8 and j["metrics"]["loss"] is not None')" = 1 ] \
  && ok "show --json" || bad "show --json" "$(head -c 300 "$T/show")"

"$LORA" metrics "$JOB" --csv >"$T/o" 2>&1; rc=$?
[ $rc -eq 0 ] && head -1 "$T/o" | grep -q "^step,.*loss" && [ "$(lines "$T/o")" -ge 9 ] \
  && ok "metrics --csv" || bad "metrics --csv" "rc=$rc $(head -3 "$T/o")"

"$LORA" logs "$JOB" >"$T/o" 2>&1; rc=$?
[ $rc -eq 0 ] && [ -s "$T/o" ] && ok "logs" || bad "logs" "rc=$rc"

"$LORA" download "$JOB" --out "$T/dl" --json >"$T/o" 2>"$T/e"; rc=$?
same=1; n=0
if [ $rc -eq 0 ]; then
  for f in $(json "$T/o" '" ".join(x["name"] for x in j["files"])'); do
    n=$((n+1)); cmp -s "$T/dl/$f" "$D/runs/$JOB/$f" || same=0
  done
fi
if [ $rc -eq 0 ] && [ $same = 1 ] && [ -s "$T/dl/adapter_model.safetensors" ] && [ -s "$T/dl/adapter_config.json" ] &&
   cmp -s "$T/dl/adapter_model.safetensors" "$D/runs/$JOB/adapter_model.safetensors"; then
  ok "download matches the server byte for byte ($n files)"
else bad "download matches the server byte for byte" "rc=$rc same=$same $(cat "$T/e")"; fi

"$LORA" generate "$JOB" "what is 2 plus 3?" -n 8 >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 0 ] && grep -qE "^(──|--) base \(tiny\)  \([0-8] tokens, " "$T/o" && grep -qE "^(──|--) tuned \($JOB\)" "$T/o" \
  && ok "generate: base and tuned blocks" || bad "generate: base and tuned blocks" "rc=$rc $(cat "$T/o" "$T/e")"
"$LORA" generate "$JOB" "what is 2 plus 3?" --json -n 4 -t 0.7 --top-p 0.9 --top-k 20 --seed 3 --stop zz >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 0 ] && [ "$(json "$T/o" 'j["object"] == "generation" and j["base"]["tokens"] <= 4 and j["tuned"]["tokens"] <= 4')" = 1 ] \
  && ok "generate --json, sampling options" || bad "generate --json, sampling options" "rc=$rc $(cat "$T/e")"
"$LORA" generate "$JOB" x -n 0 >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && grep -q -- "--max-new-tokens must be an integer in 1..1024" "$T/e" \
  && ok "generate: bad option -> exit 1" || bad "generate: bad option -> exit 1" "rc=$rc $(cat "$T/e")"
printf 'what is\n2 plus 3?\n' | "$LORA" generate "$JOB" - -n 4 --json >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 0 ] && [ "$(json "$T/o" 'j["prompt"] == "what is\n2 plus 3?\n"')" = 1 ] \
  && ok "generate: prompt from stdin" || bad "generate: prompt from stdin" "rc=$rc $(cat "$T/e")"
timeout 120 "$LORA" merge "$JOB" --name cli-merged --wait >"$T/o" 2>"$T/e"; rc=$?
"$LORA" models ls --json >"$T/ml" 2>/dev/null
[ $rc -eq 0 ] && [ "$(cat "$T/o")" = cli-merged ] && [ "$(json "$T/ml" '"cli-merged" in [m["id"] for m in j]')" = 1 ] \
  && ok "merge --wait registers the model" || bad "merge --wait registers the model" "rc=$rc $(cat "$T/o" "$T/e")"
"$LORA" merge "$JOB" --name cli-merged >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 2 ] && grep -q "already registered" "$T/e" \
  && ok "merge into a taken name -> exit 2" || bad "merge into a taken name -> exit 2" "rc=$rc $(cat "$T/e")"

# max_seq_len 8 cuts every assistant turn away: the worker has nothing to train on.
"$LORA" submit "$T/job.yaml" --set max_seq_len=8 --set name=doomed --watch --interval 0.3 >"$T/o" 2>&1; rc=$?
FJOB=$(head -1 "$T/o")
"$LORA" show "$FJOB" --json >"$T/fs" 2>/dev/null
[ $rc -eq 4 ] && [ "$(json "$T/fs" 'j["status"]')" = failed ] && grep -q "error" "$T/o" \
  && ok "failing job -> watch exit 4" || bad "failing job -> watch exit 4" "rc=$rc $(tail -2 "$T/o")"
"$LORA" generate "$FJOB" x >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 2 ] && grep -q "no adapter" "$T/e" && ok "generate on a failed job -> exit 2" || bad "generate on a failed job -> exit 2" "rc=$rc $(cat "$T/e")"

"$LORA" submit "$T/job.yaml" --set max_steps=100000 --set name=long >"$T/o" 2>/dev/null
CJOB=$(cat "$T/o")
"$LORA" cancel "$CJOB" >"$T/c" 2>&1; crc=$?
timeout 120 "$LORA" watch "$CJOB" --interval 0.3 >/dev/null 2>&1; rc=$?
[ $crc -eq 0 ] && [ $rc -eq 5 ] && ok "cancel -> watch exit 5" || bad "cancel -> watch exit 5" "cancel rc=$crc watch rc=$rc $(cat "$T/c")"

"$LORA" sweep "$T/job.yaml" --grid lora.r=2,4 --grid learning_rate=5e-4,2e-3 --json >"$T/sw" 2>"$T/e"; rc=$?
SW=$(json "$T/sw" 'j["id"]' 2>/dev/null)
done_=0
if [ $rc -eq 0 ] && [ -n "$SW" ]; then
  for _ in $(seq 1 600); do
    "$LORA" sweep show "$SW" --json >"$T/ss" 2>/dev/null &&
      [ "$(json "$T/ss" 'all(x["status"] in ("succeeded","failed","cancelled") for x in j["jobs"])')" = 1 ] && { done_=1; break; }
    sleep 0.5
  done
fi
"$LORA" sweep show "$SW" >"$T/st" 2>&1
if [ $done_ = 1 ] &&
   [ "$(json "$T/ss" 'len(j["jobs"]) == 4 and all(x["status"]=="succeeded" for x in j["jobs"]) and [x["metrics"]["eval_loss"] for x in j["jobs"]] == sorted(x["metrics"]["eval_loss"] for x in j["jobs"])')" = 1 ] &&
   [ "$(sed -n 3p "$T/st" | awk '{print $1, $2}')" = "1 $(json "$T/ss" 'j["jobs"][0]["id"]')" ] &&
   head -2 "$T/st" | tail -1 | grep -q "learning_rate *lora.r"; then
  ok "sweep of 4 points ranked by eval loss"
else bad "sweep of 4 points ranked by eval loss" "rc=$rc done=$done_ $(cat "$T/e") $(cat "$T/st")"; fi

# --random sends explicit points, so it may vary fields of several sections at once
"$LORA" sweep "$T/job.yaml" --random 3 --seed 5 --range learning_rate=1e-4:1e-2:log --grid lora.r=2,4,8 --json \
  >"$T/sr" 2>"$T/e"; rc=$?
if [ $rc -eq 0 ] && [ "$(json "$T/sr" 'len(j["points"]) == 3 and len(j["jobs"]) == 3 and "parameters" not in j and
    sorted((p["hyperparameters.learning_rate"], p["lora.r"]) for p in j["points"]) ==
    sorted((x["spec"]["hyperparameters"]["learning_rate"], x["spec"]["lora"]["r"]) for x in j["jobs"])')" = 1 ]; then
  ok "sweep --random: explicit points across sections"
else bad "sweep --random: explicit points across sections" "rc=$rc $(cat "$T/e") $(head -c 600 "$T/sr")"; fi
for id in $(json "$T/sr" '" ".join(x["id"] for x in j["jobs"])' 2>/dev/null); do "$LORA" cancel "$id" >/dev/null 2>&1; done

"$LORA" workers --json >"$T/o" 2>/dev/null && [ "$(json "$T/o" 'j[0]["backend"]')" = cpu ] \
  && ok "workers --json" || bad "workers --json" "$(head -c 200 "$T/o")"

# ---- lora watch in a real terminal --------------------------------------------
if ! command -v tmux >/dev/null 2>&1; then
  skip "watch in a terminal (tmux): bar + sparkline: tmux is not installed"
  skip "watch in a terminal: Ctrl-C -> 130: tmux is not installed"
  finish
fi
"$LORA" submit "$T/job.yaml" --set max_steps=60 --set logging_steps=1 --set eval_steps=20 --set name=tty >"$T/o" 2>/dev/null
TJOB=$(cat "$T/o")
cat >"$T/w.sh" <<EOF
export LANG=C.UTF-8 LC_ALL= TERM=xterm-256color LORA_URL=$LORA_URL LORA_TOKEN=$LORA_TOKEN
"$LORA" watch $TJOB --interval 0.3
echo "EXIT=\$?"
sleep 120
EOF
tmux -S "$TMUX_SOCK" new-session -d -s w -x 110 -y 16 "bash $T/w.sh"
seen_bar=0; seen_spark=0; exited=""
for _ in $(seq 1 600); do
  tmux -S "$TMUX_SOCK" capture-pane -p -t w >"$T/pane" 2>/dev/null
  grep -q "%  ETA" "$T/pane" && grep -qE '[█░]' "$T/pane" && seen_bar=1
  grep -qE '^loss [▁▂▃▄▅▆▇█]{2,}' "$T/pane" && seen_spark=1
  exited=$(grep -oE 'EXIT=[0-9]+' "$T/pane" | head -1)
  [ -n "$exited" ] && break
  sleep 0.2
done
cp "$T/pane" "$T/pane.final"
[ -n "${LR_VERBOSE:-}" ] && cat "$T/pane.final"
heads=$(grep -c "^$TJOB " "$T/pane.final")
if [ $seen_bar = 1 ] && [ $seen_spark = 1 ] && [ "$exited" = EXIT=0 ] && [ "$heads" = 1 ]; then
  ok "watch in a terminal (tmux): bar + sparkline, redrawn in place, exit 0"
else bad "watch in a terminal (tmux): bar + sparkline" "bar=$seen_bar spark=$seen_spark $exited headers=$heads"; cat "$T/pane.final"; fi

"$LORA" submit "$T/job.yaml" --set max_steps=100000 --set name=interrupt >"$T/o" 2>/dev/null
IJOB=$(cat "$T/o")
tmux -S "$TMUX_SOCK" new-window -t w -n i "LANG=C.UTF-8 LORA_URL=$LORA_URL LORA_TOKEN=$LORA_TOKEN $LORA watch $IJOB --interval 0.3; echo EXIT=\$?; sleep 120"
for _ in $(seq 1 100); do
  tmux -S "$TMUX_SOCK" capture-pane -p -t w:i >"$T/pane" 2>/dev/null
  grep -q "^$IJOB" "$T/pane" && break
  sleep 0.2
done
tmux -S "$TMUX_SOCK" send-keys -t w:i C-c
exited=""
for _ in $(seq 1 50); do
  tmux -S "$TMUX_SOCK" capture-pane -p -t w:i >"$T/pane" 2>/dev/null
  exited=$(grep -oE 'EXIT=[0-9]+' "$T/pane" | head -1)
  [ -n "$exited" ] && break
  sleep 0.2
done
"$LORA" cancel "$IJOB" >/dev/null 2>&1
[ "$exited" = EXIT=130 ] && grep -q "stopped watching" "$T/pane" \
  && ok "watch in a terminal: Ctrl-C -> 130, job left running" || { bad "watch in a terminal: Ctrl-C -> 130" "$exited"; cat "$T/pane"; }

finish
