#!/usr/bin/env bash
# `make fuzz`: builds every tests/fuzz/fuzz_*.c with clang's libFuzzer and
# ASan/UBSan against the parser modules, then runs each for FUZZ_SECONDS
# (default 20) from its seed corpus in tests/fuzz/corpus/<name>/ (created and
# grown in build-fuzz/corpus/ so the tree stays clean). Fails on any crash.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${FUZZ_SECONDS:-20}
OUT=build-fuzz
CC=${FUZZ_CC:-clang}
command -v "$CC" >/dev/null || { echo "fuzz: clang not found (make deps installs it)"; exit 1; }
BLAS_INC=$(ls -d /usr/include/x86_64-linux-gnu/openblas-pthread 2>/dev/null || true)
FLAGS="-g -O1 -std=c11 -D_GNU_SOURCE -I. ${BLAS_INC:+-I$BLAS_INC} -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -pthread"
LIBS="-lopenblas -lpcre2-8 -lutf8proc -ljansson -lyaml -lmicrohttpd -lsqlite3 -luv -lcurl -lgnutls -lm -lpthread"
mkdir -p "$OUT/obj"
# Parsers live in common/, proto/, formats/, worker/ and daemon/ (the HTTP front door);
# the fuzz build leaves out the compute kernels (but quant.c, the 4-bit codes
# formats/ reads) and the programs' main()s.
srcs=$(ls common/*.c proto/*.c formats/*.c kernels/quant.c worker/*.c daemon/*.c 2>/dev/null | grep -v -e '^worker/main.c$' -e '^daemon/main.c$')
objs=()
for s in $srcs; do
  o="$OUT/obj/${s//\//_}.o"
  if [ ! -f "$o" ] || [ "$s" -nt "$o" ]; then $CC $FLAGS -c "$s" -o "$o"; fi
  objs+=("$o")
done
rm -f "$OUT/libfuzz.a"; ar rcs "$OUT/libfuzz.a" "${objs[@]}"
total=0; failed=0
for t in tests/fuzz/fuzz_*.c; do
  [ -f "$t" ] || continue
  name=$(basename "$t" .c)
  bin="$OUT/$name"
  if ! $CC $FLAGS -fsanitize=fuzzer "$t" "$OUT/libfuzz.a" -o "$bin" $LIBS 2>"$OUT/$name.build.log"; then
    echo "FAIL $name: does not build"; tail -5 "$OUT/$name.build.log"; failed=$((failed+1)); total=$((total+1)); continue
  fi
  corpus="$OUT/corpus/$name"; mkdir -p "$corpus"
  seeds="tests/fuzz/corpus/$name"; [ -d "$seeds" ] || seeds=""
  if "$bin" -max_total_time="$SECS" -print_final_stats=1 -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$OUT/$name-" "$corpus" $seeds >"$OUT/$name.log" 2>&1; then
    echo "ok   $name ($(grep -o 'stat::number_of_executed_units: [0-9]*' "$OUT/$name.log" | awk '{print $2}') runs in ${SECS}s; $(grep -c '' <(ls "$corpus")) corpus files)"
  else
    echo "FAIL $name: see $OUT/$name.log"; grep -E 'ERROR|SUMMARY' "$OUT/$name.log" | head -5; failed=$((failed+1))
  fi
  total=$((total+1))
done
echo "$((total-failed)) passed, $failed failed"
[ $failed -eq 0 ]
