#!/usr/bin/env bash
# Puts the dashboard's third-party files in web/vendor/ (git-ignored): uPlot
# from npm, pinned by web/package-lock.json. Fast and quiet when already done;
# lorad serves web/ as is, so nothing is fetched at page-load time.
#   mk/web.sh           web/vendor/ (what `make` runs)
#   mk/web.sh --tests   also tests/browser/node_modules (playwright-core, pinned
#                       by tests/browser/package-lock.json) for the browser tests
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# npm ci in dir unless its node_modules matches its lock. npm stamps package
# files with a fixed 1985 mtime; its own record of the install
# (node_modules/.package-lock.json) tells whether the lock changed.
npm_ci() {
  local dir=$1 what=$2
  [ -f "$dir/node_modules/.package-lock.json" ] && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "web: npm not found (apt-get install npm); needed for $what" >&2
    exit 1
  fi
  echo "web: npm ci in ${dir#$root/} ($what)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

web=$root/web
files=(uPlot.iife.min.js uPlot.min.css)
fresh=1
for f in "${files[@]}"; do
  [ -f "$web/vendor/$f" ] && [ "$web/vendor/$f" -nt "$web/package-lock.json" ] || fresh=0
done
if [ $fresh = 0 ]; then
  npm_ci "$web" uPlot
  mkdir -p "$web/vendor"
  for f in "${files[@]}"; do
    cp "$web/node_modules/uplot/dist/$f" "$web/vendor/$f.tmp.$$"
    mv "$web/vendor/$f.tmp.$$" "$web/vendor/$f"
  done
  echo "web: vendor/ ready"
fi

if [ "${1:-}" = --tests ]; then
  npm_ci "$root/tests/browser" playwright-core
fi
