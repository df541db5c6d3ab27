#!/usr/bin/env bash
# Runs every test and adds up the cases. Suites: unit (tests/unit programs),
# integration (tests/integration/test_*.sh and *.py), reference (PyTorch
# oracle in tests/reference/), browser, asan. With an argument, only that suite.
# Each test program prints "ok|FAIL|skip NAME" lines and its own
# "N passed, N failed, N skipped"; the last line of this script is the total.
set -uo pipefail
cd "$(dirname "$0")/.."
export LR_BUILD=${LR_BUILD:-build}
export LR_FIXTURES=${LR_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
only=${1:-}
P=0; F=0; S=0
failed_names=()
logdir=$(mktemp -d /tmp/lrtests.XXXXXX)

run_one() { # name, command...
  local name=$1; shift
  local log="$logdir/$(echo "$name" | tr '/ ' '__').log"
  local start=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
  local p=0 f=0 s=0
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -nE 's/.* ([0-9]+) skipped.*/\1/p'); s=${s:-0}
  fi
  if [ $rc -ne 0 ] && [ "$f" = 0 ]; then f=1; fi
  if [ -z "$line" ] && [ $rc -eq 0 ]; then p=1; fi
  P=$((P+p)); F=$((F+f)); S=$((S+s))
  printf '%-46s %3d passed %2d failed %2d skipped  (%ds)\n' "$name" "$p" "$f" "$s" $((SECONDS-start))
  grep -E '^(skip|FAIL) ' "$log" | sed 's/^/    /'
  if [ "$f" != 0 ]; then
    failed_names+=("$name")
    echo "---- $name (last 40 lines of $log)"; tail -40 "$log"; echo "----"
  fi
}

if [ -z "$only" ] || [ "$only" = unit ]; then
  for t in "$LR_BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "unit/$(basename "$t")" "$t"
  done
fi
if [ -z "$only" ] || [ "$only" = reference ]; then
  for t in tests/reference/test_*.py; do
    [ -f "$t" ] || continue
    run_one "reference/$(basename "$t")" /usr/bin/python3 "$t"
  done
fi
if [ -z "$only" ] || [ "$only" = integration ]; then
  for t in tests/integration/test_*; do
    [ -f "$t" ] || continue
    case "$t" in
      *.py) run_one "integration/$(basename "$t")" /usr/bin/python3 "$t" ;;
      *.sh) run_one "integration/$(basename "$t")" bash "$t" ;;
    esac
  done
fi
if [ -z "$only" ] || [ "$only" = browser ]; then
  for t in tests/browser/test_*.mjs; do
    [ -f "$t" ] || continue
    run_one "browser/$(basename "$t")" node "$t"
  done
fi
if [ -z "$only" ]; then
  # The unit suite again, built with ASan/UBSan.
  run_one "asan/unit" make --no-print-directory asan
fi
[ ${#failed_names[@]} -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
