#!/usr/bin/env bash
# `make demo`: the three-tier application of deploy/examples/three-tier.yaml (redis
# StatefulSet on a local-path claim, a Python REST API, a front-end on NodePort 30090)
# on the lab `make up` starts (started here when none is up). Builds the two images it
# runs if the cache has none (python:3.11-slim, redis:7; cached by their inputs, so a
# second run takes a second) and pushes them to the lab's registry if it lacks them,
# applies the manifest, waits for every rollout, then
# writes an item and reads it back through the NodePort from the lab network (the
# master's namespace, outside every node), and prints what to try next.
# deploy/examples/README.md walks through it. Needs root, as `make up`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
KUBELING=${KUBELING:-$VENV/bin/kubeling}
LAB_DIR=${KUBELING_LAB_DIR:-$HOME/.kubeling/lab}
MANIFEST=deploy/examples/three-tier.yaml
NS=shop
PORT=30090
start=$SECONDS

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "make demo needs root (network namespaces, containerd, nftables): sudo make demo" >&2
  exit 1
fi

if status=$("$KUBELING" lab status 2>/dev/null) && ! grep -q DOWN <<<"$status"; then
  step "a lab is up"
else
  # Installs what is missing (mmdebstrap among it), starts the lab, applies its demo.
  step "no lab is up: make up"
  bash deploy/local/up.sh
fi

# A lab pushes the images built when it started; these two may be newer than it.
step "the images the demo runs (python:3.11-slim, redis:7): built unless cached"
"$KUBELING" image build --provided python:3.11-slim redis:7
# The registry listens in the master's namespace: list and push from there.
held=$("$KUBELING" lab exec master -- "$KUBELING" image list --registry 10.99.0.1:5000)
for image in python:3.11-slim redis:7; do
  if ! grep -qx "10.99.0.1:5000/library/$image" <<<"$held"; then
    "$KUBELING" lab exec master -- "$KUBELING" image push "$image" --registry 10.99.0.1:5000
  fi
done
export KUBELING_CONFIG="$LAB_DIR/admin.conf"

step "applying $MANIFEST"
"$KUBELING" apply -f "$MANIFEST"
"$KUBELING" rollout status statefulset/db -n $NS --timeout 300s
"$KUBELING" rollout status deployment/api -n $NS --timeout 300s
"$KUBELING" rollout status deployment/web -n $NS --timeout 300s

node_ip=$("$KUBELING" get nodes -o json | "$VENV/bin/python" -c '
import json, sys
node = json.load(sys.stdin)["items"][0]
print(next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"))')
url="http://$node_ip:$PORT/api/items"

# One request from the lab network; prints the front-end pod and the JSON answer.
request='
import sys, urllib.request
body = sys.argv[2].encode() if len(sys.argv) > 2 else None
req = urllib.request.Request(sys.argv[1], data=body, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=5) as answer:
    print("web:", answer.headers["X-Served-By"], "->", answer.read().decode())'

step "waiting for $url to answer from the lab network (the master's namespace)"
answer=""
for _ in $(seq 1 120); do
  answer=$("$KUBELING" lab exec master -- python3 -c "$request" "$url" 2>/dev/null) && break
  sleep 1
done
[[ -n $answer ]] || { echo "the application did not answer; see $LAB_DIR/logs and 'kubeling get pods -n $NS'" >&2; exit 1; }

step "POST $url {\"name\": \"apple\"}  (front-end -> api -> redis)"
# Retried on a network error: the front-end answers GET before the API pods behind
# it are all ready (readiness is per tier).
for try in $(seq 1 10); do
  "$KUBELING" lab exec master -- python3 -c "$request" "$url" '{"name": "apple"}' 2>/dev/null && break
  [[ $try -lt 10 ]] || { echo "the POST failed; see $LAB_DIR/logs" >&2; exit 1; }
  sleep 3
done
step "GET $url"
"$KUBELING" lab exec master -- python3 -c "$request" "$url"
step "the application answers, $((SECONDS - start)) s after make demo started"

step "what is running"
"$KUBELING" get pods -n $NS -o wide
"$KUBELING" get pvc -n $NS
"$KUBELING" get services -n $NS

cat <<NEXT

Try next (deploy/examples/README.md shows each with its output):
  $KUBELING lab exec master -- python3 -c 'import urllib.request as u; print(u.urlopen("$url").read().decode())'
  $KUBELING scale deployment api -n $NS --replicas 5
  $KUBELING delete pod db-0 -n $NS             (it comes back on the same node, with the data)
  $KUBELING rollout status statefulset/db -n $NS
  sed 's/id="version">v1/id="version">v2/; s/shop.example\/page: v1/shop.example\/page: v2/' \\
      $MANIFEST | $KUBELING apply -f -        (a new front-end)
  $KUBELING rollout status deployment/web -n $NS
  $KUBELING logs -n $NS POD                    (a pod name from 'get pods')
  make down                                    (removes the whole lab)
NEXT
