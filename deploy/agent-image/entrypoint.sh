#!/bin/sh
# The agent container's main process (busybox sh compatible), run as an infrastructure user
# (not the agent's: runs are exec'd as the agent's user, and everything of that user is ended
# with each run). Without arguments it keeps the container alive between tasks and reaps every
# orphan handed to it when it is PID 1. An AgentHost that holds its runs by a lifeline gives
# containers their own main command instead (plugins/runtime-docker/container-spec.ts), and
# each run's exec wrapper holds the run's lifeline and starts its loopback forwarder.

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
