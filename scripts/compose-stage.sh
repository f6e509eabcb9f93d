#!/usr/bin/env bash
# The compose stage of scripts/test.sh: the project's image built from docker/Dockerfile and
# the whole loop run in containers with `docker-compose --profile cpu up` (compose.yaml plus
# the test-only docker/compose.test.yaml), driven over HTTP by tests/compose/.
#
#   bash scripts/compose-stage.sh [PYTEST ARGS...]
#
# It starts dockerd when none runs (scripts/docker-daemon.sh), makes base images when Docker
# Hub cannot be reached (scripts/docker-base-images.sh), fetches the wheels on the host
# (scripts/wheelhouse.sh; the build has no package index: pip in the build reads them from
# 127.0.0.1 over HTTP), builds, and runs the tests, which bring the stack up and take it down
# with `down -v`. On the way out, whatever happens: the stack is removed, the wheel server and
# a dockerd this stage started are stopped by their PIDs, and images of older builds are
# pruned. The wheelhouse and Docker's layer cache stay (RETINANET_CI_CACHE, /var/lib/docker),
# so the next run rebuilds only the layers of the project's code.
#
# No engine (not root, no kernel support): the stage says so and skips, except under CI
# (CI=true), where it fails, as the PostgreSQL stage does.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=retinanet-ci
IMAGE=retinanet-service:latest
# A fixed port: pip's find-links URL is a build argument, so part of the dependency layer's
# cache key (another port rebuilds that layer).
WHEEL_PORT="${RETINANET_CI_WHEEL_PORT:-8765}"
wheel_server=""
export DOCKER_BUILDKIT=0  # the legacy builder: no buildx here, and it needs no registry

log() { echo "compose-stage.sh: $*" >&2; }

under_ci() { [ -n "${CI:-}" ] && [ "${CI:-}" != false ] && [ "${CI:-}" != 0 ]; }

unavailable() {
  if under_ci; then
    log "FAILED: $* (CI=$CI: the compose stage must run)"
    exit 1
  fi
  log "SKIPPED: $* (the compose stage runs where dockerd can; under CI it must)"
  exit 0
}

cleanup() {
  local rc=$?
  if docker version >/dev/null 2>&1; then
    # The override's variables only need values for `down` to parse it.
    RETINANET_CI_POSTGRES_IMAGE=- RETINANET_CI_PG_PORT=0 RETINANET_CI_API_PORT=0 \
      docker-compose -p "$PROJECT" -f compose.yaml -f docker/compose.test.yaml down -v \
      --remove-orphans >/dev/null 2>&1 || true
    docker image prune -f >/dev/null 2>&1 || true  # the image of an older build, not the cache
  fi
  if [ -n "$wheel_server" ]; then kill "$wheel_server" 2>/dev/null || true; fi
  bash scripts/docker-daemon.sh stop || true
  log "finished in $SECONDS s (exit $rc)"
  exit "$rc"
}

bash scripts/compose-tool.sh || unavailable "docker-compose cannot be installed"
daemon_rc=0
bash scripts/docker-daemon.sh start || daemon_rc=$?
trap cleanup EXIT
if [ "$daemon_rc" = 3 ]; then unavailable "no Docker engine can run here"; fi
[ "$daemon_rc" = 0 ] || exit "$daemon_rc"

images="$(bash scripts/docker-base-images.sh)"
eval "$(tail -1 <<<"$images")"
wheelhouse="$(bash scripts/wheelhouse.sh | tail -1)"
# Served, not copied into the build context: 3 GB sent to the daemon and stored in a layer on
# every build otherwise.
.venv/bin/python -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$wheelhouse" \
  >/dev/null 2>&1 &
wheel_server=$!
for _ in $(seq 1 50); do
  sleep 0.2
  curl -sf "http://127.0.0.1:$WHEEL_PORT/" >/dev/null && break
done
if ! kill -0 "$wheel_server" 2>/dev/null; then
  wheel_server=
  log "cannot serve the wheels on 127.0.0.1:$WHEEL_PORT (taken? set RETINANET_CI_WHEEL_PORT)"
  exit 1
fi

# A stack an interrupted run left behind would be reused, volumes and all.
RETINANET_CI_PG_PORT=0 RETINANET_CI_API_PORT=0 docker-compose -p "$PROJECT" -f compose.yaml \
  -f docker/compose.test.yaml down -v --remove-orphans >/dev/null 2>&1 || true

log "building $IMAGE from docker/Dockerfile (PYTHON_IMAGE=$RETINANET_CI_PYTHON_IMAGE)"
start_s=$SECONDS
docker build --network host --quiet -f docker/Dockerfile -t "$IMAGE" \
  --build-arg "PYTHON_IMAGE=$RETINANET_CI_PYTHON_IMAGE" --build-arg PIP_NO_INDEX=1 \
  --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/" . >&2
kill "$wheel_server" && wheel_server=
size="$(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
log "built $IMAGE in $((SECONDS - start_s)) s ($size)"

export RETINANET_COMPOSE_STAGE=1 RETINANET_CI_POSTGRES_IMAGE RETINANET_CI_COMPOSE_PROJECT=$PROJECT
export RETINANET_CI_COMPOSE_LOG="${RETINANET_CI_CACHE:-/var/cache/retinanet-ci}/compose.log"
.venv/bin/python -m pytest tests/compose -m compose "$@"
