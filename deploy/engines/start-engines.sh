#!/usr/bin/env bash
# Starts the container engines the docker and podman runtime plugins talk to, on a Debian
# machine where we are root: installs docker.io and podman from Debian when missing, then
# starts dockerd and Podman's API service in the background unless they already answer.
# Idempotent; every wait is bounded. Logs go to $ENGINES_LOG_DIR (default /var/log/conductor).
set -euo pipefail

LOG_DIR="${ENGINES_LOG_DIR:-/var/log/conductor}"
DOCKER_SOCK="${DOCKER_SOCK:-/var/run/docker.sock}"
PODMAN_SOCK="${PODMAN_SOCK:-/run/podman/podman.sock}"
WAIT_SECONDS="${ENGINES_WAIT_SECONDS:-60}"
mkdir -p "$LOG_DIR"

log() { printf 'start-engines: %s\n' "$*" >&2; }

# Installs the Debian packages given whose command is missing ("command:package" pairs).
install_missing() {
  local want=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || want+=("${pair#*:}")
  done
  [ "${#want[@]}" -eq 0 ] && return 0
  log "installing ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${want[@]}" >"$LOG_DIR/apt.log" 2>&1 ||
    { cat "$LOG_DIR/apt.log" >&2; return 1; }
}

# Waits until "$@" succeeds, at most WAIT_SECONDS; fails naming $1 (a label) otherwise.
wait_for() {
  local what="$1" log_file="$2" i
  shift 2
  for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  log "$what did not answer within ${WAIT_SECONDS}s; its log ($log_file):"
  tail -n 30 "$log_file" >&2 || true
  return 1
}

# Whether a pid is a live process (a zombie left by a killed parent is not).
alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }

docker_answers() { curl -sf --unix-socket "$DOCKER_SOCK" http://d/_ping; }
podman_answers() { curl -sf --unix-socket "$PODMAN_SOCK" http://d/_ping; }

install_missing curl:curl dockerd:docker.io podman:podman

if docker_answers >/dev/null 2>&1; then
  log "dockerd already answers on $DOCKER_SOCK"
else
  # A dockerd that was killed (as at the end of a session) leaves its pid file behind, and a
  # new one refuses to start while it is there: remove it when no such process lives.
  for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ] && ! alive "$(cat "$pidfile" 2>/dev/null)"; then
      log "removing stale $pidfile"
      rm -f "$pidfile"
    fi
  done
  log "starting dockerd (log: $LOG_DIR/dockerd.log)"
  # From /: what an engine writes to its working folder (conmon's "oom" file after an OOM kill)
  # stays out of the folder this was run from.
  (cd / && exec nohup dockerd --host "unix://$DOCKER_SOCK") >"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  wait_for dockerd "$LOG_DIR/dockerd.log" docker_answers
  log "dockerd answers on $DOCKER_SOCK"
fi

if podman_answers >/dev/null 2>&1; then
  log "podman already answers on $PODMAN_SOCK"
else
  mkdir -p "$(dirname "$PODMAN_SOCK")"
  rm -f "$PODMAN_SOCK"
  log "starting podman system service (log: $LOG_DIR/podman.log)"
  (cd / && exec nohup podman system service --time=0 "unix://$PODMAN_SOCK") >"$LOG_DIR/podman.log" 2>&1 </dev/null &
  wait_for podman "$LOG_DIR/podman.log" podman_answers
  log "podman answers on $PODMAN_SOCK"
fi
