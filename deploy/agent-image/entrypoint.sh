#!/bin/sh
# The agent container's main process (busybox sh compatible), run as an infrastructure user
# (not the agent's: runs are exec'd as the agent's user, and everything of that user is ended
# with each run). Without arguments it keeps the container alive between tasks and reaps every
# orphan handed to it when it is PID 1. When CONDUCTOR_LIFELINE_SOCKET is set it holds a
# connection to that socket of its AgentHost instead: when the AgentHost dies, the connection
# closes and the container ends with everything in it — no run outlives its AgentHost.
# (The loopback forwarder to the model proxy is started by each run's exec wrapper.)

# With a command (`docker run <image> claude --version`), run it instead of idling.
if [ "$#" -gt 0 ]; then
  exec "$@"
fi

# PID 1 ignores signals it has no handler for: stop at once on TERM/INT.
trap 'exit 0' TERM INT

if [ -n "${CONDUCTOR_LIFELINE_SOCKET:-}" ]; then
  # Reads until the AgentHost's end closes (it never writes); then the container stops.
  socat -u "UNIX-CONNECT:${CONDUCTOR_LIFELINE_SOCKET}" OPEN:/dev/null &
  wait $!
  exit 0
fi

# `wait` collects any child, including orphans re-parented to us; the long sleep keeps
# one job alive so `wait` blocks instead of spinning. Bounded per round, endless overall.
while :; do
  sleep 86400 &
  wait
done
