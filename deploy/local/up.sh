#!/usr/bin/env bash
# `make up`: install what is missing, start a master on localhost:6443, apply the
# demo manifests and show what is there. `make down` stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE=.kubeling
VENV=${VENV:-.venv}
mkdir -p "$STATE"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

step "Python environment ($VENV)"
make --no-print-directory install proto >"$STATE/install.log" 2>&1 || { tail -20 "$STATE/install.log"; exit 1; }

if [[ -f $STATE/master.pid ]] && kill -0 "$(cat "$STATE/master.pid")" 2>/dev/null; then
  step "master already running (pid $(cat "$STATE/master.pid"))"
else
  step "starting kubeling-master on 127.0.0.1:6443 (log: $STATE/master.log)"
  nohup "$VENV/bin/kubeling-master" --listen 127.0.0.1:6443 --data-dir "$STATE/master" \
    >"$STATE/master.log" 2>&1 &
  echo $! >"$STATE/master.pid"
  for _ in $(seq 1 100); do
    "$VENV/bin/kubeling" --server 127.0.0.1:6443 get namespaces >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
"$VENV/bin/python" -c 'from kubeling.cli.config import save_config; save_config("127.0.0.1:6443")'

step "applying deploy/examples/demo.yaml"
"$VENV/bin/kubeling" apply -f deploy/examples/demo.yaml

step "what is running"
"$VENV/bin/kubeling" get deployments -n demo
"$VENV/bin/kubeling" get services -n demo -o wide

cat <<'NEXT'

Try next:
  .venv/bin/kubeling get namespaces
  .venv/bin/kubeling describe deployment web -n demo
  .venv/bin/kubeling get pods -A -w          (Ctrl-C to stop)
  .venv/bin/grpcurl -plaintext localhost:6443 list
  make down                                  (stops the master)
NEXT
