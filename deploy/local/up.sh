#!/usr/bin/env bash
# `make up`: install what is missing, start a 2-worker lab on this machine (a master,
# and per worker a network namespace with containerd, kubelet and kube-proxy; the
# cluster DNS as an add-on, pods of the kubeling image), apply the demo, wait until
# its service answers through its ClusterIP from inside the lab and by its name from
# a pod, and show what runs. `make down` removes it all. Needs root (namespaces,
# containerd). PROXY=pod runs kube-proxy as a DaemonSet (deploy/addons/kube-proxy.yaml)
# instead of a process per node.
# TLS is on as across machines: the lab's master makes its CA, the nodes join with a
# bootstrap token from a 0600 file and the CA's pin; the CLI here is the master's
# admin through the lab's admin.conf (no key is copied anywhere).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
NODES=${NODES:-2}
PROXY=${PROXY:-process}
KUBELING="$VENV/bin/kubeling"
LAB_DIR=${KUBELING_LAB_DIR:-$HOME/.kubeling/lab}
mkdir -p .kubeling

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "make up needs root (network namespaces, containerd, nftables): sudo make up" >&2
  exit 1
fi

need=()
for tool in containerd runc nft conntrack nsenter ip busybox gcc; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
[[ -x /usr/lib/cni/bridge ]] || need+=(cni-plugins)
[[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)
if ((${#need[@]})); then
  step "installing system packages (missing: ${need[*]}) — log: .kubeling/install-deps.log"
  bash deploy/containerd/install-deps.sh >.kubeling/install-deps.log 2>&1 \
    || { tail -20 .kubeling/install-deps.log; exit 1; }
fi
command -v make >/dev/null || apt-get install -y -qq make >/dev/null

step "Python environment ($VENV) — log: .kubeling/install.log"
make --no-print-directory install proto >.kubeling/install.log 2>&1 \
  || { tail -20 .kubeling/install.log; exit 1; }

if status=$("$KUBELING" lab status 2>/dev/null) && ! grep -q DOWN <<<"$status"; then
  step "a lab is already up"
else
  if [[ -n ${status:-} ]]; then
    step "a lab is recorded but not running (after a reboot?): removing it"
    "$KUBELING" lab down
  fi
  step "starting a lab with $NODES worker nodes (kube-proxy: $PROXY)"
  "$KUBELING" lab up --nodes "$NODES" --proxy "$PROXY"
fi
# Every command below is the lab master's admin, whatever ~/.kubeling/config holds.
export KUBELING_CONFIG="$LAB_DIR/admin.conf"
[[ -r $KUBELING_CONFIG ]] || { echo "no $KUBELING_CONFIG: is the lab up?" >&2; exit 1; }

step "waiting for the nodes to be Ready"
for _ in $(seq 1 120); do
  ready=$("$KUBELING" get nodes 2>/dev/null | awk 'NR>1 && $2=="Ready"' | wc -l)
  [[ $ready -ge $NODES ]] && break
  sleep 1
done
[[ $ready -ge $NODES ]] || { echo "nodes are not Ready; see $LAB_DIR/logs" >&2; exit 1; }
"$KUBELING" get nodes -o wide

step "applying deploy/examples/demo.yaml (a Deployment of 3 web pods and a Service)"
"$KUBELING" apply -f deploy/examples/demo.yaml
"$KUBELING" rollout status deployment/web -n demo --timeout 300s

ip=$("$KUBELING" get service web -n demo -o json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["spec"]["clusterIP"])')
step "waiting for http://$ip/ to answer from inside the lab (node worker-1)"
# (Debian's static busybox wget crashes on the host: fetch with Python.)
fetch="import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())"
answer=""
for _ in $(seq 1 120); do
  if answer=$("$KUBELING" lab exec worker-1 -- python3 -c "$fetch" "http://$ip/" 2>/dev/null); then
    break
  fi
  sleep 1
done
[[ -n $answer ]] || { echo "the service did not answer; see $LAB_DIR/logs" >&2; exit 1; }
echo "    $answer"

pod=$("$KUBELING" get pods -n demo -o json | "$VENV/bin/python" -c 'import json,sys; print(next(p["metadata"]["name"] for p in json.load(sys.stdin)["items"] if p["status"].get("phase") == "Running"))')
if "$KUBELING" get deployment kube-dns -n kube-system >/dev/null 2>&1; then
  step "from pod $pod: http://web/ by its name (the cluster DNS add-on, 10.96.0.10)"
  answer=""
  for _ in $(seq 1 30); do
    answer=$("$KUBELING" exec -n demo "$pod" -- wget -qO- http://web/ 2>/dev/null) && break
    sleep 1
  done
  [[ -n $answer ]] || { echo "web did not answer by name; see $LAB_DIR/logs" >&2; exit 1; }
  echo "    $answer"
fi

step "what is running"
"$KUBELING" lab status
"$KUBELING" get pods -n kube-system -o wide
"$KUBELING" get pods -n demo -o wide
"$KUBELING" get services -n demo -o wide

cat <<NEXT

kubeling talks to the lab's master over mutual TLS as its admin: ~/.kubeling/config
(elsewhere: export KUBELING_CONFIG=$KUBELING_CONFIG).

Try next:
  $KUBELING get nodes -o wide
  $KUBELING lab exec worker-2 -- python3 -c '$fetch' http://$ip/
                                               (again: another pod may answer)
  $KUBELING scale deployment web -n demo --replicas 6
  $KUBELING proxy explain worker-1 $ip:80      (what kube-proxy installed for it; PROXY=process)
  $KUBELING exec -n demo $pod -- nslookup web.demo.svc.cluster.local   (the cluster DNS)
  $KUBELING logs -n demo POD                   (a pod name from 'get pods')
  $KUBELING lab stop worker-2                  (node loss: NotReady after 50 s, pods move 5 min later)
  $KUBELING user add alice --role view -o .kubeling/users   (a read-only credential)
  $KUBELING --config .kubeling/users/alice.conf get pods -A
  make demo                                    (the three-tier shop: deploy/examples/README.md)
  make down                                    (removes the whole lab)
NEXT
