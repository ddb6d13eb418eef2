#!/usr/bin/env bash
# `make down`: stop what `make up` started (by its PID) and remove its state.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE=.kubeling
if [[ -f $STATE/master.pid ]]; then
  pid=$(cat "$STATE/master.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$STATE/master.pid"
fi
rm -rf "$STATE"
echo "stopped"
