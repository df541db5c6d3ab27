#!/usr/bin/env bash
# The dependency direction between the folders, from the #include lines of
# every C/CUDA source (docs/ARCHITECTURE.md, "Layers"):
#   common/   the project's own headers: common/ only
#   proto/    common/ proto/                  (what both processes speak)
#   kernels/  common/ kernels/                (the compute backends)
#   formats/  common/ proto/ kernels/ formats/ (files both processes read:
#             tokenizer, chat templates, datasets, config.json, safetensors,
#             adapters, 4-bit checkpoints, the merge; kernels/ for quant.h)
#   worker/   anything but daemon/ and client/
#   daemon/   common/ proto/ formats/ daemon/ (never worker/, kernels/ or client/)
#   client/   common/ proto/ formats/ client/
# ALLOW lists "file -> header" pairs that break the rule, to shrink only: an
# entry no longer needed fails the test. It is empty since the folder move.
# Also: no source file over 1,000 lines without a stated reason (below).
set -uo pipefail
cd "$(dirname "$0")/../.."
P=0; F=0
ok()  { echo "ok   $1"; P=$((P+1)); }
bad() { echo "FAIL $1${2:+: $2}"; F=$((F+1)); }

# "file -> included header" pairs that break the rule today; shrink only.
ALLOW=()

# allowed FOLDER: the top folders a folder's files may include from
allowed() {
  case $1 in
    common) echo "common" ;;
    proto) echo "common proto" ;;
    kernels) echo "common kernels" ;;
    formats) echo "common proto kernels formats" ;;
    worker) echo "common proto kernels formats worker" ;;
    daemon) echo "common proto formats daemon" ;;
    client) echo "common proto formats client" ;;
  esac
}

pairs=$(mktemp /tmp/layers.XXXXXX)
trap 'rm -f "$pairs"' EXIT
find common proto kernels formats worker daemon client -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) |
  sort | while read -r f; do
    sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | while read -r inc; do
      echo "$f -> $inc"
    done
  done >"$pairs"
n_files=$(cut -d' ' -f1 "$pairs" | sort -u | wc -l)
[ "$n_files" -gt 100 ] && ok "read the includes of $n_files source files" || bad "read the includes" "only $n_files files"

for layer in common proto kernels formats worker daemon client; do
  may=$(allowed "$layer")
  wrong=()
  while read -r f _ inc; do
    top=${inc%%/*}
    [ "$top" = "$inc" ] && continue           # a header of the same folder by bare name
    case " common proto kernels formats worker daemon client " in *" $top "*) ;; *) continue ;; esac
    case " $may " in *" $top "*) continue ;; esac
    pair="$f -> $inc"
    found=0
    for a in ${ALLOW[@]+"${ALLOW[@]}"}; do [ "$a" = "$pair" ] && found=1; done
    [ $found = 1 ] || wrong+=("$pair")
  done < <(grep "^$layer/" "$pairs")
  if [ ${#wrong[@]} -eq 0 ]; then
    ok "$layer/ includes only from: $may"
  else
    bad "$layer/ includes only from: $may" "$(printf '%s; ' "${wrong[@]}")"
  fi
done

# Long files (issue 13): a source file over LONG lines says in its first 40
# lines why it stays whole, on a line holding "Why this file is long:".
# Vendored and installed code (web/vendor, node_modules) is not ours.
LONG=1000
long=()
while IFS= read -r f; do
  n=$(wc -l <"$f")
  [ "$n" -gt "$LONG" ] || continue
  head -n 40 "$f" | grep -q "Why this file is long:" || long+=("$f ($n lines)")
done < <(find common proto kernels formats worker daemon client web tests bench examples mk \
           \( -name node_modules -o -path web/vendor \) -prune -o -type f \
           \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.js' -o -name '*.mjs' -o -name '*.py' \) \
           -print 2>/dev/null | sort)
if [ ${#long[@]} -eq 0 ]; then
  ok "every source file over $LONG lines says why in its top comment"
else
  bad "source files over $LONG lines without \"Why this file is long:\" in their first 40 lines" "$(printf '%s; ' "${long[@]}")"
fi

stale=()
for a in ${ALLOW[@]+"${ALLOW[@]}"}; do grep -qxF "$a" "$pairs" || stale+=("$a"); done
if [ ${#stale[@]} -eq 0 ]; then
  ok "every allow-list entry is still needed (${#ALLOW[@]} left)"
else
  bad "allow-list entries no longer needed: remove them" "$(printf '%s; ' "${stale[@]}")"
fi
echo "$P passed, $F failed, 0 skipped"
[ "$F" -eq 0 ]
