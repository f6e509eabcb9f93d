#!/usr/bin/env bash
# Start or stop a Docker engine for the compose stage (scripts/compose-stage.sh).
#
#   bash scripts/docker-daemon.sh start   # exit 0: an engine answers (ours or one already running)
#   bash scripts/docker-daemon.sh stop    # stops the engine `start` started, by its PID; else nothing
#
# `start` uses an engine that already runs and touches nothing of it. Otherwise it installs
# Debian's docker.io when dockerd is missing and starts dockerd itself (PID 1 is often no
# systemd in CI containers) with no bridge, no iptables rules, no masquerading and IP forwarding
# left as it is: the stage runs every container and build with host networking, so the host's
# firewall and routing are never changed. Exit 3: no engine can run here (not root, no dockerd,
# a kernel without what it needs); the caller decides whether that skips or fails.
set -euo pipefail

STATE_DIR="${RETINANET_CI_CACHE:-/var/cache/retinanet-ci}"
PID_FILE="$STATE_DIR/dockerd.pid"   # only ever the dockerd this script started
LOG="$STATE_DIR/dockerd.log"

log() { echo "docker-daemon.sh: $*" >&2; }

engine_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_if_missing() {
  if command -v dockerd >/dev/null && command -v docker >/dev/null; then return; fi
  log "no dockerd; installing Debian's docker.io"
  apt-get -o Acquire::Retries=5 update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq docker.io >&2
}

start() {
  if engine_answers; then
    log "a Docker engine already runs: using it"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    log "cannot start dockerd: not root"
    return 3
  fi
  install_if_missing || { log "cannot install docker.io"; return 3; }
  mkdir -p "$STATE_DIR"
  log "starting dockerd (log: $LOG)"
  # setsid: the daemon outlives this script but not `stop`; its containerd is its child.
  setsid dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --ip-forward=false --userland-proxy=false >>"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PID_FILE"
  for _ in $(seq 1 60); do
    if engine_answers; then
      log "dockerd $pid ready"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      log "dockerd exited at start; its log ends with:"
      tail -5 "$LOG" >&2
      return 3
    fi
    sleep 0.5
  done
  log "dockerd $pid did not answer in 30 s; stopping it"
  stop
  return 3
}

stop() {
  [ -f "$PID_FILE" ] || return 0
  local pid
  pid="$(cat "$PID_FILE")"
  rm -f "$PID_FILE"
  # Only a dockerd: a stale file may name a PID that the system gave to something else since.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 0
  log "stopping dockerd $pid"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  log "dockerd $pid still runs after 30 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
