#!/usr/bin/env bash
# Builds the agent image OFFLINE, from files on this machine (no registry is reached):
# a root filesystem holding busybox, socat, the Claude Code CLI's native binary (from the
# repository's node_modules) and the glibc libraries `ldd` lists for them, a uid-1000
# user and the entrypoint; then `docker import` and/or `podman import` it.
#
#   bash deploy/agent-image/build-offline.sh [--docker] [--podman]
#
# With neither flag it imports into every engine that answers. Idempotent: an engine that
# already holds an image built from the same inputs is left alone. Missing Debian packages
# (busybox-static, socat) are installed, with `apt-get update` first.
set -euo pipefail
start_ns=$(date +%s%N)

IMAGE="${CONDUCTOR_IMAGE:-conductor-agent:dev}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
CLAUDE_BIN="${CLAUDE_BIN:-$REPO_ROOT/node_modules/@anthropic-ai/claude-code/bin/claude.exe}"
# Node runs the Broker's MCP server (one file, no packages) inside the agent.
NODE_BIN="${NODE_BIN:-$(readlink -f "$REPO_ROOT/node_modules/node/bin/node")}"
AGENT_UID=1000
AGENT_HOME=/home/agent

log() { printf 'build-offline: %s\n' "$*" >&2; }

want_docker=0 want_podman=0
for arg in "$@"; do
  case "$arg" in
    --docker) want_docker=1 ;;
    --podman) want_podman=1 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) log "unknown argument: $arg (use --docker and/or --podman)"; exit 2 ;;
  esac
done
if [ "$want_docker" = 0 ] && [ "$want_podman" = 0 ]; then
  docker info >/dev/null 2>&1 && want_docker=1
  podman info >/dev/null 2>&1 && want_podman=1
  if [ "$want_docker" = 0 ] && [ "$want_podman" = 0 ]; then
    log "neither docker nor podman answers: run 'bash deploy/engines/start-engines.sh' first"
    exit 1
  fi
fi

[ -x "$CLAUDE_BIN" ] || {
  log "no Claude Code binary at $CLAUDE_BIN: run 'npm ci' in $REPO_ROOT first"
  exit 1
}
[ -x "$NODE_BIN" ] || {
  log "no node binary at $NODE_BIN: run 'npm ci' in $REPO_ROOT first"
  exit 1
}

# Debian packages whose files go into the image (command:package pairs).
missing=()
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v socat >/dev/null 2>&1 || missing+=(socat)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
BUSYBOX=/bin/busybox
BASH_BIN="$(readlink -f /bin/bash)"
SOCAT="$(command -v socat)"

# The inputs decide the tag's identity: skip the work when an engine already has them.
inputs_id="$(
  {
    sha256sum "$HERE/entrypoint.sh" "$BUSYBOX" "$BASH_BIN" "$SOCAT" "$0"
    stat -c '%s %Y %n' "$CLAUDE_BIN" "$NODE_BIN"
  } | sha256sum | cut -c1-16
)"
image_label() { # engine → the inputs id of its current image, or nothing
  "$1" image inspect --format '{{index .Config.Labels "dev.conductor.image-inputs"}}' "$2" 2>/dev/null || true
}

engines=()
[ "$want_docker" = 1 ] && engines+=(docker)
[ "$want_podman" = 1 ] && engines+=(podman)
todo=()
for engine in "${engines[@]}"; do
  name="$IMAGE"
  [ "$engine" = podman ] && [[ "$IMAGE" != */* ]] && name="localhost/$IMAGE"
  if [ "$(image_label "$engine" "$name")" = "$inputs_id" ]; then
    log "$engine already has $name ($inputs_id)"
  else
    todo+=("$engine")
  fi
done

if [ "${#todo[@]}" -gt 0 ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  root="$work/rootfs"
  # A merged-/usr layout like Debian's, so ldd's paths exist as they are.
  mkdir -p "$root"/{usr/bin,usr/lib/x86_64-linux-gnu,usr/lib64,usr/local/bin,etc,tmp,proc,sys,dev,run}
  ln -s usr/bin "$root/bin"
  ln -s usr/bin "$root/sbin"
  ln -s usr/lib "$root/lib"
  ln -s usr/lib64 "$root/lib64"
  chmod 1777 "$root/tmp"

  cp "$BUSYBOX" "$root/usr/bin/busybox"
  # The CLI's Bash tool refuses anything but bash or zsh ("No suitable shell found").
  cp "$BASH_BIN" "$root/usr/bin/bash"
  for applet in $("$BUSYBOX" --list); do
    [ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
  done
  cp "$SOCAT" "$root/usr/bin/socat"
  # Hard link when possible: the binary is ~400 MB.
  ln "$CLAUDE_BIN" "$root/usr/local/bin/claude" 2>/dev/null || cp "$CLAUDE_BIN" "$root/usr/local/bin/claude"
  cp "$NODE_BIN" "$root/usr/local/bin/node"
  for bin in "$BUSYBOX" "$BASH_BIN" "$SOCAT" "$CLAUDE_BIN" "$NODE_BIN"; do
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)"
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
      mkdir -p "$root$(dirname "$lib")"
      [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
  done
  install -m 0755 "$HERE/entrypoint.sh" "$root/entrypoint.sh"

  cat >"$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/bin/sh
agent:x:$AGENT_UID:$AGENT_UID:agent:$AGENT_HOME:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
  cat >"$root/etc/group" <<GROUP
root:x:0:
agent:x:$AGENT_UID:
nogroup:x:65534:
GROUP
  echo "hosts: files dns" >"$root/etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
  mkdir -p "$root$AGENT_HOME"
  chown "$AGENT_UID:$AGENT_UID" "$root$AGENT_HOME"

  tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
  changes=(
    --change "ENTRYPOINT [\"/entrypoint.sh\"]"
    --change "USER $AGENT_UID:$AGENT_UID"
    --change "WORKDIR $AGENT_HOME"
    --change "ENV PATH=/usr/local/bin:/usr/bin:/bin"
    --change "ENV HOME=$AGENT_HOME"
    --change "ENV CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1"
    --change "LABEL dev.conductor.image-inputs=$inputs_id"
  )
  for engine in "${todo[@]}"; do
    log "importing $IMAGE into $engine"
    quiet=(); [ "$engine" = podman ] && quiet=(--quiet)
    "$engine" import "${quiet[@]}" "${changes[@]}" "$work/rootfs.tar" "$IMAGE" >/dev/null
  done
fi

elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
log "image $IMAGE ready for: ${engines[*]} (inputs $inputs_id) in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s"
