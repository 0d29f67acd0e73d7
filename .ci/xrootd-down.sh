#!/usr/bin/env bash
# Stop the XRootD server .ci/xrootd-up.sh started: exactly the PIDs recorded in
# $CRBATCH_XROOTD_DIR/started.pids, each checked by its command name first (a reused PID is never
# killed). CRBATCH_XROOTD_PURGE=1 also removes the state directory and the data it served.
set -uo pipefail
DIR=${CRBATCH_XROOTD_DIR:-/var/spool/crbatch-xrootd}
PIDS="$DIR/started.pids"
log() { echo "[xrootd-down] $*" >&2; }

if [ -s "$PIDS" ]; then
  while read -r name pid; do
    [ -n "${pid:-}" ] || continue
    if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      log "stopping $name (pid $pid)"
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM; SIGKILL"
        kill -9 "$pid"
      fi
    else
      log "$name (pid $pid) is not running; skipping"
    fi
  done <"$PIDS"
  rm -f "$PIDS" "$DIR/url"
else
  log "nothing recorded in $PIDS: nothing to stop"
fi
if [ "${CRBATCH_XROOTD_PURGE:-0}" = 1 ] && [ -f "$DIR/xrd.cfg" ] && head -1 "$DIR/xrd.cfg" | grep -q "crbatch .ci/xrootd-up.sh"; then
  rm -rf "$DIR"
  log "purged $DIR"
fi
exit 0
