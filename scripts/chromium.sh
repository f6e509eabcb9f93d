#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium, for the dashboard's browser tests
# (Playwright drives it; it never downloads a browser). Idempotent: nothing happens when it is
# there already. Installing needs root (or sudo), as scripts/postgres.sh does.
set -euo pipefail

log() { echo "chromium.sh: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -- "$@"; fi
}

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
log "no /usr/bin/chromium; installing Debian's chromium package"
if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq chromium >&2; then
  # A fresh machine has no package lists yet.
  as_root apt-get -o Acquire::Retries=5 update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq chromium >&2
fi
/usr/bin/chromium --version >&2
