#!/usr/bin/env bash
# Start a local Docker engine and make the offline base image the container tests build on.
#
# Idempotent: reuses an engine that already answers and a base image that already exists.
# Records only the PIDs it starts (one "comm pid" per line) in $CRBATCH_DOCKER_DIR/started.pids;
# .ci/docker-down.sh stops exactly those.
#
# Why each step (see ../shared/docs/infrastructure.md, "Docker"):
#   - Debian's docker.io 20.10: its /usr/bin/docker client does BuildKit with DOCKER_BUILDKIT=1
#     (a newer client earlier on PATH may lack buildx), so tests call /usr/bin/docker explicitly;
#   - dockerd --bridge=none --iptables=false --ip6tables=false: leaves the host's network alone;
#     builds use --network host, test containers --network none;
#   - no registry is reachable, so the base image is a debootstrap'd bookworm (python3 3.11) with the
#     host's extra CA certificates, so that pip inside `docker build` trusts the same proxies as the host.
#
# Env: CRBATCH_DOCKER_DIR (pids/logs, default /var/lib/crbatch-docker),
#      CRBATCH_DOCKER_DATA_ROOT (dockerd --data-root, default /var/lib/docker),
#      CRBATCH_BASE_IMAGE (tag of the base image, default local/python:3.11-bookworm).
set -euo pipefail
DIR=${CRBATCH_DOCKER_DIR:-/var/lib/crbatch-docker}
DATA=${CRBATCH_DOCKER_DATA_ROOT:-/var/lib/docker}
BASE=${CRBATCH_BASE_IMAGE:-local/python:3.11-bookworm}
DOCKER=/usr/bin/docker
log() { echo "[docker-up] $*" >&2; }
t0=$(date +%s)
mkdir -p "$DIR"
touch "$DIR/started.pids"

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >"$DIR/apt.log" 2>&1 \
    || { apt-get update -q >>"$DIR/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >>"$DIR/apt.log" 2>&1; } \
    || { log "apt-get install $* failed; see $DIR/apt.log"; exit 1; }
}
need=()
[ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  apt_install "${need[@]}"
fi

if $DOCKER info >/dev/null 2>&1; then
  log "a Docker engine already answers; reusing it (docker-down.sh stops only an engine this script started)"
else
  log "starting dockerd (data-root $DATA, log $DIR/dockerd.log)"
  nohup /usr/sbin/dockerd --data-root "$DATA" -p "$DIR/dockerd.pid" \
      --bridge=none --iptables=false --ip6tables=false >"$DIR/dockerd.log" 2>&1 </dev/null &
  pid=$!
  # Record at once, so docker-down.sh can stop it even if the wait below fails.
  echo "dockerd $pid" >>"$DIR/started.pids"
  for _ in $(seq 1 150); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.2; done
  $DOCKER info >/dev/null 2>&1 || { log "dockerd did not come up in 30 s; see $DIR/dockerd.log"; exit 1; }
fi

if $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
  log "base image $BASE exists"
else
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"; exit 1; }
  rootfs="$DIR/rootfs"
  rm -rf "$rootfs"
  log "debootstrap bookworm from $mirror (log $DIR/debootstrap.log)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$mirror" >"$DIR/debootstrap.log" 2>&1 \
    || { log "debootstrap failed; see $DIR/debootstrap.log"; exit 1; }
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || log "update-ca-certificates in the rootfs failed"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  log "docker import -> $BASE"
  # PIP_CERT: pip uses its own CA bundle (certifi) unless told to use the system's, which has the host's CAs.
  tar -C "$rootfs" -c . | $DOCKER import \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi
log "ready in $(( $(date +%s) - t0 )) s; base image $BASE"
