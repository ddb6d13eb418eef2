#!/usr/bin/env bash
# `make down`: remove the lab `make up` started: every process (by PID), pod, network
# namespace and file it made.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
if [[ -x $VENV/bin/kubeling ]]; then
  "$VENV/bin/kubeling" lab down
fi
rm -rf .kubeling
