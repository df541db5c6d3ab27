#!/usr/bin/env bash
# Puts the dashboard's third-party files in web/vendor/ (git-ignored): uPlot
# from npm, pinned by web/package-lock.json. Fast and quiet when already done;
# lorad serves web/ as is, so nothing is fetched at page-load time.
set -euo pipefail
cd "$(dirname "$0")/../web"

files=(uPlot.iife.min.js uPlot.min.css)
src=node_modules/uplot/dist
up_to_date() {
  for f in "${files[@]}"; do
    [ -f "vendor/$f" ] && [ "vendor/$f" -nt package-lock.json ] || return 1
  done
}
up_to_date && exit 0

# npm stamps package files with a fixed 1985 mtime; its own record of the
# install (node_modules/.package-lock.json) tells whether the lock changed.
if [ ! -f "$src/uPlot.iife.min.js" ] || [ ! node_modules/.package-lock.json -nt package-lock.json ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "web: npm not found (apt-get install npm); the dashboard needs uPlot in web/vendor/" >&2
    exit 1
  fi
  echo "web: npm ci (uPlot)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
mkdir -p vendor
for f in "${files[@]}"; do
  cp "$src/$f" "vendor/$f.tmp.$$"
  mv "vendor/$f.tmp.$$" "vendor/$f"
done
echo "web: vendor/ ready"
