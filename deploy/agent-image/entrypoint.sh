#!/bin/sh
# The agent container's main process (busybox sh compatible). Without arguments it keeps the container alive
# between tasks (each task is an exec into it), reaps every orphan handed to it when it is
# PID 1, and, when CONDUCTOR_MODEL_SOCKET is set, runs the loopback forwarder: inside the
# container the CLI's ANTHROPIC_BASE_URL=http://127.0.0.1:${CONDUCTOR_MODEL_PORT:-8080}
# reaches the AgentHost's model proxy on the Unix socket mounted from the host.

if [ -n "${CONDUCTOR_MODEL_SOCKET:-}" ]; then
  socat "TCP-LISTEN:${CONDUCTOR_MODEL_PORT:-8080},bind=127.0.0.1,fork,reuseaddr" \
    "UNIX-CONNECT:${CONDUCTOR_MODEL_SOCKET}" &
fi

# With a command (`docker run <image> claude --version`), run it instead of idling.
if [ "$#" -gt 0 ]; then
  exec "$@"
fi

# PID 1 ignores signals it has no handler for: stop at once on TERM/INT.
trap 'exit 0' TERM INT

# `wait` collects any child, including orphans re-parented to us; the long sleep keeps
# one job alive so `wait` blocks instead of spinning. Bounded per round, endless overall.
while :; do
  sleep 86400 &
  wait
done
