#!/usr/bin/env bash
# The base images of the compose stage: the real ones (python:3.11-slim-bookworm for
# docker/Dockerfile's PYTHON_IMAGE, postgres:16-bookworm for compose.yaml's postgres) when they
# can be pulled, else local stand-ins with the same contract, made without any registry:
# `debootstrap --variant=minbase bookworm` from the Debian mirror of this machine's apt
# sources, `docker import`, then docker/ci/{python,postgres}.Dockerfile on top. Prints, as the
# LAST line of stdout:
#
#   export RETINANET_CI_PYTHON_IMAGE=... RETINANET_CI_POSTGRES_IMAGE=...
#
# Idempotent: an image that exists is reused (the stand-ins rebuild from Docker's cache).
# Needs root and a running engine (scripts/docker-daemon.sh). Builds use the host's network.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${RETINANET_CI_CACHE:-/var/cache/retinanet-ci}"
MINBASE=retinanet-ci/bookworm:minbase
PYTHON_REAL=python:3.11-slim-bookworm
POSTGRES_REAL=postgres:16-bookworm
PYTHON_STANDIN=retinanet-ci/python:3.11-bookworm
POSTGRES_STANDIN=retinanet-ci/postgres:15-bookworm

log() { echo "docker-base-images.sh: $*" >&2; }

have() { docker image inspect "$1" >/dev/null 2>&1; }

# A pull that cannot reach a registry fails within seconds; the timeout bounds a slow one.
pulled() { have "$1" || timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

# The Debian mirror the apt sources name for bookworm (deb822 or one-line style).
debian_mirror() {
  local uri
  uri="$(awk '
    /^URIs:/ { uris = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") found = uris }
    /^$/ { uris = "" }
    END { print found }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  if [ -z "$uri" ]; then
    uri="$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

make_minbase() {
  if have "$MINBASE"; then return; fi
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get -o Acquire::Retries=5 update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq debootstrap >&2
  fi
  local mirror rootfs
  mirror="$(debian_mirror)"
  rootfs="$CACHE/rootfs.$$"
  log "debootstrap --variant=minbase bookworm from $mirror"
  mkdir -p "$CACHE"
  rm -rf "$rootfs"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$MINBASE" >&2
  rm -rf "$rootfs"
  trap - EXIT
}

standin() {  # standin NAME DOCKERFILE
  log "building the stand-in $1"
  docker build -q --network host -t "$1" -f "docker/ci/$2" --build-arg "BASE=$MINBASE" \
    docker/ci >&2
}

main() {
  local python_image="$PYTHON_REAL" postgres_image="$POSTGRES_REAL"
  if ! pulled "$PYTHON_REAL" || ! pulled "$POSTGRES_REAL"; then
    log "cannot pull $PYTHON_REAL and $POSTGRES_REAL: making local stand-ins"
    make_minbase
    standin "$PYTHON_STANDIN" python.Dockerfile
    standin "$POSTGRES_STANDIN" postgres.Dockerfile
    python_image="$PYTHON_STANDIN" postgres_image="$POSTGRES_STANDIN"
  fi
  log "base images: $python_image, $postgres_image"
  echo "export RETINANET_CI_PYTHON_IMAGE=$python_image RETINANET_CI_POSTGRES_IMAGE=$postgres_image"
}

main "$@"
