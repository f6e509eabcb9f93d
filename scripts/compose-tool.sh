#!/usr/bin/env bash
# Installs Debian's docker-compose (1.29) when missing: the tests validate compose.yaml with its
# `config` command, which needs no Docker engine. Needs root or sudo, like scripts/postgres.sh.
set -euo pipefail
if command -v docker-compose >/dev/null; then
  exit 0
fi
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -- "$@"; fi
}
as_root apt-get -o Acquire::Retries=5 update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq docker-compose >&2
