#!/usr/bin/env bash
# Installs the Debian packages lorad needs, only those that are missing.
# Quiet and fast when everything is there (it runs before every `make test`).
set -euo pipefail

# header-or-binary -> package
need=(
  "/usr/bin/cc gcc"
  "/usr/include/stdio.h libc6-dev"
  "/usr/bin/python3 python3"
  "/usr/bin/pgrep procps"
  "/usr/include/jansson.h libjansson-dev"
  "/usr/include/yaml.h libyaml-dev"
  "/usr/include/microhttpd.h libmicrohttpd-dev"
  "/usr/include/sqlite3.h libsqlite3-dev"
  "/usr/bin/sqlite3 sqlite3"
  "/usr/include/uv.h libuv1-dev"
  "/usr/include/pcre2.h libpcre2-dev"
  "/usr/include/utf8proc.h libutf8proc-dev"
  "/usr/include/x86_64-linux-gnu/curl/curl.h libcurl4-openssl-dev"
  "/usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h libopenblas-dev"
  "/usr/lib/python3/dist-packages/torch/__init__.py python3-torch"
  "/usr/lib/python3/dist-packages/numpy/__init__.py python3-numpy"
  "/usr/bin/curl curl"
  "/usr/bin/tmux tmux"
  "/usr/bin/wrk wrk"
  "/usr/bin/clang clang"
  "/usr/bin/chromium chromium"
  "/usr/bin/node nodejs"
  "/usr/lib/python3/dist-packages/jinja2/__init__.py python3-jinja2"
  "/usr/bin/mpirun openmpi-bin"
  "/usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h libopenmpi-dev"
  "/usr/include/gnutls/gnutls.h libgnutls28-dev"
  "/usr/bin/openssl openssl"
  "/usr/sbin/slurmctld slurm-wlm"
  "/usr/sbin/munged munge"
)
missing=()
for pair in "${need[@]}"; do
  path=${pair% *}; pkg=${pair#* }
  # node may come from elsewhere than Debian (the image ships one)
  if [ "$pkg" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
  [ -e "$path" ] || missing+=("$pkg")
done
# `make` fetches the dashboard's uPlot with npm (mk/web.sh); Debian's nodejs
# does not bring it
command -v npm >/dev/null 2>&1 || missing+=(npm)
# libFuzzer's runtime lives in clang's resource dir
if command -v clang >/dev/null 2>&1; then
  rd=$(clang -print-resource-dir 2>/dev/null || true)
  ls "$rd"/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || missing+=(libclang-rt-14-dev)
fi
# The official openai SDK that tests/integration/test_openai_sdk.py drives,
# from the npm registry, pinned by tests/openai/package-lock.json; npm ci only
# when node_modules does not match the lock (npm's own record of the install,
# as mk/web.sh does). Without npm or the registry the test says skip.
openai_sdk() {
  local dir
  dir=$(cd "$(dirname "$0")/.." && pwd)/tests/openai
  command -v npm >/dev/null 2>&1 || return 0
  [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ] && return 0
  echo "deps: npm ci in tests/openai (the openai SDK)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
    echo "deps: npm ci in tests/openai failed; test_openai_sdk.py will skip" >&2
}
if [ ${#missing[@]} -eq 0 ]; then openai_sdk; exit 0; fi
echo "deps: installing ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "deps: need root to apt-get install: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
openai_sdk
