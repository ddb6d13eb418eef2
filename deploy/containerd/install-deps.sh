#!/usr/bin/env bash
# Debian packages a kubeling worker node needs. Idempotent: installs only what is
# missing, so CI can call it on every run. Run as root on Debian 12.
#
#   containerd                  CRI runtime (1.6, CRI plugin built in)
#   runc                        OCI runtime containerd's shim starts
#   containernetworking-plugins bridge, host-local, portmap, loopback in /usr/lib/cni
#   iptables                    portmap (hostPort) programs iptables (nft backend)
#   nftables libnftables1       kube-proxy's rules
#   iproute2                    ip netns / links for multi-node labs
#   conntrack                   flushing stale UDP conntrack entries
#   util-linux                  nsenter, unshare, umount
#   busybox-static              source of the busybox image (and the pause fallback)
#   gcc libc6-dev               compile the static pause binary for the sandbox image
#   mmdebstrap                  builds the provided images from Debian packages (make images)
set -euo pipefail

PACKAGES=(
  containerd
  runc
  containernetworking-plugins
  iptables
  nftables
  libnftables1
  iproute2
  conntrack
  util-linux
  busybox-static
  gcc
  libc6-dev
  mmdebstrap
  # The lab's image registry (docker.io's mirror for its nodes); harmless on a worker.
  docker-registry
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: must run as root" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: containerd would otherwise pull in extra tooling.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian containerd package enables a system-wide containerd service where an
# init system runs; kubeling starts its own instances with their own sockets, so
# the system one is left alone either way.
echo "node packages present: ${PACKAGES[*]}"
