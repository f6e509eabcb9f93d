#!/usr/bin/env bash
# The wheels docker/Dockerfile installs (pyproject.toml's dependencies with the `postgres`
# extra, and setuptools to build the project), downloaded on the host so that the image builds
# with no package index (pip in a build cannot use this machine's pip configuration). Prints the
# folder as the LAST line of stdout. Wheels for CPython 3.11 on glibc 2.36 (bookworm), whatever
# the host's own Python.
#
# Cached: the folder persists between runs (RETINANET_CI_CACHE, default
# /var/cache/retinanet-ci); when pyproject.toml or this script changes, only new wheels are
# fetched and the ones no longer required are removed (about 3 GB: torch's CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${RETINANET_CI_CACHE:-/var/cache/retinanet-ci}"
DIR="$CACHE/wheelhouse"
PYTHON="${PYTHON:-.venv/bin/python}"
stamp="$DIR/.stamp-$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)"

log() { echo "wheelhouse.sh: $*" >&2; }

requirements() {
  "$PYTHON" - <<'PY'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))
build = project["build-system"]["requires"]
print("\n".join([*project["project"]["dependencies"],
                 *project["project"]["optional-dependencies"]["postgres"], *build]))
PY
}

platforms() {
  local y
  for y in $(seq 36 -1 17); do echo "--platform=manylinux_2_${y}_x86_64"; done
  echo --platform=manylinux2014_x86_64 --platform=manylinux2010_x86_64
  echo --platform=manylinux1_x86_64 --platform=linux_x86_64
}

if [ -f "$stamp" ]; then
  log "up to date: $DIR"
  echo "$DIR"
  exit 0
fi
mkdir -p "$DIR"
reqs="$(mktemp)"
out="$(mktemp)"
trap 'rm -f "$reqs" "$out"' EXIT
requirements >"$reqs"
log "downloading the wheels of $(wc -l <"$reqs") requirements into $DIR"
# shellcheck disable=SC2046
"$PYTHON" -m pip download --quiet --progress-bar off --dest "$DIR" --requirement "$reqs" \
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
  $(platforms) --log "$out" >&2
# Keep exactly what this resolution used: the log names every file it saved or found there.
keep="$(grep -oE "(Saved|already downloaded) [^ ]+\.whl" "$out" | awk '{print $NF}' |
  xargs -r -n1 basename | sort -u)"
[ -n "$keep" ] || { log "pip named no wheels; see $out"; exit 1; }
for file in "$DIR"/*.whl; do
  if ! grep -qxF "$(basename "$file")" <<<"$keep"; then
    log "removing $(basename "$file") (no longer required)"
    rm -f "$file"
  fi
done
rm -f "$DIR"/.stamp-*
touch "$stamp"
log "$(wc -l <<<"$keep") wheels, $(du -sh "$DIR" | cut -f1)"
echo "$DIR"
