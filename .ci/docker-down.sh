#!/usr/bin/env bash
# Stop what .ci/docker-up.sh started: only the PIDs it recorded, and only if the PID still runs the
# same program (a recycled PID is left alone). dockerd stops its containerd child itself.
set -uo pipefail
DIR=${CRBATCH_DOCKER_DIR:-/var/lib/crbatch-docker}
PIDS="$DIR/started.pids"
[ -s "$PIDS" ] || { echo "[docker-down] nothing recorded in $PIDS" >&2; exit 0; }
while read -r name pid; do
  [ -n "${pid:-}" ] || continue
  if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    echo "[docker-down] stopping $name (pid $pid)" >&2
    kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "[docker-down] $name (pid $pid) still running after 30 s; sending SIGKILL" >&2; kill -9 "$pid"; }
  fi
done <"$PIDS"
rm -f "$PIDS"
