#!/usr/bin/env bash
# `make stop`: ends the lorad that `make run` started (its pid is in
# $LORAD_DATA/lorad.pid) and waits until it has exited, so a following
# `make run` finds the port free. lorad re-queues its running jobs on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${LORAD_DATA:-$PWD/data}
pidf=$DATA/lorad.pid
if [ ! -f "$pidf" ]; then
  echo "stop: no $pidf: lorad was not started by make run"
  exit 0
fi
pid=$(cat "$pidf")
# A stale pid file may name a process that is not lorad any more.
if ! kill -0 "$pid" 2>/dev/null || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != lorad ]; then
  echo "stop: lorad (pid $pid) is not running"
  rm -f "$pidf"
  exit 0
fi
kill -TERM "$pid"
for _ in $(seq 300); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
  echo "stop: lorad (pid $pid) did not exit within 30 s of SIGTERM; see $DATA/lorad.log" >&2
  exit 1
fi
rm -f "$pidf"
echo "stop: lorad (pid $pid) stopped"
