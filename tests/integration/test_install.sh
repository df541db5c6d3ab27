#!/usr/bin/env bash
# `make install DESTDIR=... PREFIX=...` installs a tree that works on its own:
# the three programs in bin/, web/ and migrations/ in share/lorad/ where the
# installed lorad finds them without flags (user add applies the migrations;
# serve serves the dashboard and starts the lora-worker beside it), and the
# installed lora talks to it. Binds 127.0.0.1 on a free port; cleans up.
set -u
cd "$(dirname "$0")/../.."
B=${LR_BUILD:-build}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
P=0; F=0; S=0
ok()  { echo "ok   $1"; P=$((P+1)); }
bad() { echo "FAIL $1${2:+: $2}"; F=$((F+1)); }
finish() { echo "$P passed, $F failed, $S skipped"; [ "$F" -eq 0 ]; exit $?; }
for f in lorad lora-worker lora; do
  if [ ! -x "$B/$f" ]; then echo "skip install: $B/$f is not built (make)"; S=1; finish; fi
done
if [ ! -f web/vendor/uPlot.iife.min.js ]; then echo "skip install: web/vendor is not there (make web)"; S=1; finish; fi

T=$(mktemp -d /tmp/lrinstall.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"
    for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null
  fi
  rm -rf "$T"
}
trap cleanup EXIT

make --no-print-directory BUILD="$B" NVCC= install DESTDIR="$T/stage" PREFIX=/opt/lorad >"$T/out" 2>&1 \
  && ok "make install exits 0" || bad "make install" "$(tail -5 "$T/out")"
R=$T/stage/opt/lorad
for f in bin/lorad bin/lora-worker bin/lora share/lorad/web/index.html share/lorad/web/js/app.js \
         share/lorad/web/vendor/uPlot.iife.min.js share/lorad/migrations/0001_init.sql; do
  [ -f "$R/$f" ] && ok "installed $f" || bad "installed $f"
done
[ -x "$R/bin/lora" ] && ok "bin/lora is executable" || bad "bin/lora is executable"

# the staged tree moved elsewhere still works: lorad finds its files from its own path
mv "$R" "$T/moved"
R=$T/moved
TOKEN=$("$R/bin/lorad" user add alice --admin --data-dir "$T/data" 2>"$T/err")
[[ "$TOKEN" == lr_* ]] && ok "installed lorad applies its migrations (user add)" || bad "user add" "$(cat "$T/err")"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$R/bin/lorad" serve --data-dir "$T/data" --listen "127.0.0.1:$PORT" --workers cpu >"$T/lorad.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$URL/" -o "$T/index.html" && grep -qi '<html' "$T/index.html" \
  && ok "installed lorad serves the dashboard" || bad "dashboard" "$(tail -5 "$T/lorad.log")"
idle=
for _ in $(seq 100); do
  idle=$(LORA_CONFIG=$T/cfg "$R/bin/lora" workers --url "$URL" --token "$TOKEN" --json 2>/dev/null |
         $PY -c 'import json,sys; print(sum(1 for w in json.load(sys.stdin) if w.get("status") == "idle"))' 2>/dev/null)
  [ "$idle" = 1 ] && break
  sleep 0.1
done
[ "$idle" = 1 ] && ok "installed lora sees lorad's worker (the installed lora-worker) idle" \
  || bad "worker idle" "$(tail -5 "$T/lorad.log")"
finish
