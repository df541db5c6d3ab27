#!/usr/bin/env bash
# The Makefile's order, proved on a copy of it: `make run`, `make bench`,
# `make test`, `make soak` and `make fuzz` must finish installing packages
# (deps) before anything compiles, although the Makefile forces -j, and still
# compile side by side. The copy runs in a temp tree with a few empty sources,
# a deps step that sleeps, a fake compiler that only logs and touches its
# output, and fake run/bench/test/soak/fuzz scripts; the log then shows
# whether any compile began before deps ended. Also: no "rm build/obj/...",
# "ar rcs" or jobserver noise, `make stop` exists, `make -n install` installs
# the three programs, web/ and migrations/.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
P=0; F=0; S=0
ok()  { echo "ok   $1"; P=$((P+1)); }
bad() { echo "FAIL $1${2:+: $2}"; F=$((F+1)); }
finish() { echo "$P passed, $F failed, $S skipped"; [ "$F" -eq 0 ]; exit $?; }
if ! command -v ar >/dev/null; then
  echo "skip make_order: ar not found"; S=1; finish
fi

# run as a top-level make, as a user would (not as a sub-make of make test)
unset MAKELEVEL MAKEFLAGS MFLAGS
T=$(mktemp -d /tmp/lrmake.XXXXXX)
trap 'rm -rf "$T"' EXIT
LOG=$T/order.log

# tree: the real Makefile, empty sources, fake scripts
cp "$ROOT/Makefile" "$T/"
mkdir -p "$T"/{common,proto,worker,kernels/cpu,daemon,client,tests/unit,tests/fuzz,mk,bench,migrations}
for f in common/a.c proto/b.c worker/main.c worker/w.c kernels/cpu/k.c daemon/main.c daemon/d.c \
         client/main.c client/c.c tests/unit/harness.c tests/unit/test_one.c tests/unit/test_two.c; do
  echo "int x_$(echo "$f" | tr '/.' '__');" > "$T/$f"
done
echo "CREATE TABLE t(x);" > "$T/migrations/0001_init.sql"
cat > "$T/mk/deps.sh" <<EOF
echo "deps begin" >> "$LOG"
sleep 2
echo "deps end" >> "$LOG"
EOF
for s in mk/run.sh mk/stop.sh bench/run.sh tests/run.sh tests/fuzz/run.sh; do
  echo "echo \"script $s \$LR_BUILD\" >> \"$LOG\"" > "$T/$s"
done
mkdir -p "$T/tests/integration"
echo "import os; open('$LOG', 'a').write('script tests/integration/test_soak.py %s\\n' % os.environ.get('LR_BUILD', ''))" \
  > "$T/tests/integration/test_soak.py"
cat > "$T/cc" <<EOF
#!/bin/sh
# a compiler that only records that it ran and makes its output
out=
while [ \$# -gt 0 ]; do
  [ "\$1" = -o ] && out=\$2
  shift
done
echo "cc \$out" >> "$LOG"
sleep 0.2
: > "\$out"
echo "cc-end \$out" >> "$LOG"
EOF
chmod +x "$T/cc"

# check TARGET SCRIPT: make TARGET in the tree, from a clean build folder
check() {
  local target=$1 script=$2
  rm -rf "$T/build" "$LOG"
  (cd "$T" && make --no-print-directory CC="$T/cc" NVCC= "$target") >"$T/out" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then bad "make $target" "exit $rc: $(tail -5 "$T/out")"; return; fi
  local end first_cc ran
  end=$(grep -n '^deps end$' "$LOG" | head -1 | cut -d: -f1)
  first_cc=$(grep -n '^cc ' "$LOG" | head -1 | cut -d: -f1)
  ran=$(grep -n "^script $script" "$LOG" | head -1 | cut -d: -f1)
  local last_cc
  last_cc=$(grep -n '^cc-end ' "$LOG" | tail -1 | cut -d: -f1)
  if [ -z "$end" ]; then bad "make $target: deps ran" "$(cat "$LOG")"; return; fi
  if [ "$target" != fuzz ]; then
    if [ -z "$first_cc" ]; then bad "make $target: compiled" "$(cat "$LOG")"; return; fi
    [ "$first_cc" -gt "$end" ] && ok "make $target: deps ended before the first compile" \
      || bad "make $target: a compile began before deps ended" "$(head -5 "$LOG" | tr '\n' '|')"
    [ -n "$ran" ] && [ "$ran" -gt "$last_cc" ] && ok "make $target: $script after the last compile" \
      || bad "make $target: $script order" "$(tr '\n' '|' < "$LOG")"
    grep -q "^script $script build$" "$LOG" && ok "make $target: passes BUILD on as LR_BUILD" \
      || bad "make $target: LR_BUILD" "$(grep script "$LOG")"
    # serial deps, but the compiles still run side by side (two begin before one ends)
    grep -A1 '^cc ' "$LOG" | grep -v '^--$' | paste - - | grep -q $'^cc [^\t]*\tcc ' \
      && ok "make $target: compiles in parallel" || bad "make $target: compiles ran one at a time" "$(head -6 "$LOG" | tr '\n' '|')"
  else
    [ -n "$ran" ] && [ "$ran" -gt "$end" ] && ok "make fuzz: $script after deps ended" \
      || bad "make fuzz: order" "$(tr '\n' '|' < "$LOG")"
  fi
  if grep -qE '^rm |ar rcs|jobserver' "$T/out"; then bad "make $target: quiet" "$(grep -E '^rm |ar rcs|jobserver' "$T/out" | cut -c1-120)"
  else ok "make $target: no rm, ar rcs or jobserver lines"; fi
}
check run mk/run.sh
check bench bench/run.sh
check test tests/run.sh
check fuzz tests/fuzz/run.sh
check soak tests/integration/test_soak.py

# a second build in the same folder finds the test objects still there
(cd "$T" && make --no-print-directory CC="$T/cc" NVCC= all) >"$T/out" 2>&1
rm -f "$LOG"
(cd "$T" && make --no-print-directory CC="$T/cc" NVCC= all) >"$T/out" 2>&1
grep -q 'tests/unit/test_one.o' "$LOG" 2>/dev/null && bad "rebuild: test objects kept" "$(cat "$LOG")" \
  || ok "rebuild: test objects kept (nothing recompiled)"

(cd "$T" && make --no-print-directory stop) >"$T/out" 2>&1 && grep -q '^script mk/stop.sh' "$LOG" \
  && ok "make stop runs mk/stop.sh" || bad "make stop" "$(cat "$T/out")"

(cd "$T" && make --no-print-directory -n install CC="$T/cc" NVCC= PREFIX=/opt/lr DESTDIR=/stage) >"$T/out" 2>&1
for want in "build/lorad" "build/lora-worker" "build/lora " "/stage/opt/lr/bin" \
            "migrations/\*.sql /stage/opt/lr/share/lorad/migrations/" "web/index.html /stage/opt/lr/share/lorad/web/"; do
  grep -q -- "$want" "$T/out" && ok "make -n install: $want" || bad "make -n install: $want" "$(cat "$T/out")"
done
finish
