#!/usr/bin/env bash
# mk/run.sh (what `make run` runs after deps and all) in a temp data folder
# on a free port, with a 3-step demo job: it ends with lines to paste that
# set URL/TOKEN/LORA_URL/LORA_TOKEN/PATH (also in data/env, mode 0600); with
# them the README's curl tour and `lora` work as written; no line ends in
# "its token (shown only now):" with nothing after it; mk/stop.sh (`make
# stop`) stops lorad and frees the port, and says so when nothing runs.
set -u
cd "$(dirname "$0")/../.."
B=${LR_BUILD:-build}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
P=0; F=0; S=0
ok()  { echo "ok   $1"; P=$((P+1)); }
bad() { echo "FAIL $1${2:+: $2}"; F=$((F+1)); }
finish() { echo "$P passed, $F failed, $S skipped"; [ "$F" -eq 0 ]; exit $?; }
for x in lorad lora lora-worker; do
  if [ ! -x "$B/$x" ]; then echo "skip make_run: $B/$x is not built (make)"; S=1; finish; fi
done
T=$(mktemp -d /tmp/lrmakerun.XXXXXX)
cleanup() {
  if [ -f "$T/data/lorad.pid" ]; then
    pid=$(cat "$T/data/lorad.pid")
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = lorad ] && kill -KILL "$pid" 2>/dev/null
  fi
  rm -rf "$T"
}
trap cleanup EXIT
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export LORAD_DATA=$T/data LORAD_PORT=$PORT LR_BUILD=$B LORAD_DEMO_MAX_STEPS=3
timeout 300 bash mk/run.sh >"$T/out" 2>&1; rc=$?
[ $rc = 0 ] && ok "mk/run.sh exits 0" || bad "mk/run.sh" "rc=$rc $(tail -5 "$T/out")"
grep -q 'shown only now):$' "$T/out" && bad "no dangling token line" "$(grep -n 'shown only now' "$T/out")" \
  || ok "no dangling 'its token (shown only now):' line"
grep -q "^export URL=http://127.0.0.1:$PORT TOKEN=lr_" "$T/out" && grep -q '^export PATH=' "$T/out" \
  && ok "prints the export lines to paste" || bad "export lines" "$(tail -8 "$T/out")"
[ "$(stat -c %a "$T/data/env" 2>/dev/null)" = 600 ] && ok "data/env written, mode 600" || bad "data/env" "$(ls -l "$T/data")"
# the README's tour, in a shell that only has what make run printed
out=$(env -i HOME="$T" PATH=/usr/bin:/bin bash -c ". '$T/data/env' && export LORA_CONFIG='$T/cfg' AUTH=\"Authorization: Bearer \$TOKEN\" &&
  curl -sf -H \"\$AUTH\" \$URL/v1/models && echo && lora ls" 2>&1); rc=$?
[ $rc = 0 ] && grep -q '"demo-tiny"' <<<"$out" && grep -q 'demo-template' <<<"$out" \
  && ok "the tour's curl (\$URL, \$TOKEN) and lora (on PATH) work from data/env" || bad "tour" "rc=$rc $out"
bash mk/stop.sh >"$T/stop" 2>&1; rc=$?
[ $rc = 0 ] && grep -q 'stopped' "$T/stop" && ! curl -s "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 \
  && ok "make stop ends lorad and frees the port" || bad "make stop" "rc=$rc $(cat "$T/stop")"
bash mk/stop.sh >"$T/stop" 2>&1; rc=$?
[ $rc = 0 ] && grep -q 'was not started\|is not running' "$T/stop" && ok "make stop again: says nothing runs" \
  || bad "make stop again" "rc=$rc $(cat "$T/stop")"
finish
