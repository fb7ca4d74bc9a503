#!/usr/bin/env bash
# Install the Debian packages the sandbox cluster and the tests need, then make sure a root
# Docker engine answers on /var/run/docker.sock. Idempotent, non-interactive, run as root.
set -euo pipefail

PACKAGES=(
  docker.io            # dockerd + containerd: the root engine and one engine per sandbox host
  openssh-server       # sshd in every sandbox host
  openssh-client       # ssh, ssh-keygen, ssh-keyscan
  debootstrap          # builds the base image without any registry
  docker-registry      # the sandbox's image registry
  iproute2             # ip netns / link / addr
  iptables             # the FORWARD rule for the sandbox bridge
  procps               # ps / pkill used by tests
  util-linux           # nsenter, unshare, mount
  openssl              # self-signed CA and certificate for the registry
  ca-certificates
  tmux                 # a real terminal for the full-screen `watch` test
  chromium             # headless browser that renders `report`'s HTML in its test
)
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/q7x2-dockerd.log}

if [ "$(id -u)" != 0 ]; then
  echo "install-host-deps.sh: must run as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# apt may be busy with another install on this machine: wait for its locks instead of failing.
apt_retry() {
  local i
  for i in $(seq 1 60); do
    if apt-get -o DPkg::Lock::Timeout=120 "$@"; then
      return 0
    fi
    echo "install-host-deps.sh: apt-get $1 failed (attempt $i), retrying in 5 s" >&2
    sleep 5
  done
  return 1
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-host-deps.sh: installing ${missing[*]}"
  # Package scripts must not start services (sshd, registry, dockerd) in the root namespace:
  # the sandbox starts its own instances. policy-rc.d is the Debian way to say so.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  apt_retry update -q
  apt_retry install -y -q --no-install-recommends "${missing[@]}"
  if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  trap - EXIT
else
  echo "install-host-deps.sh: all packages present"
fi

engine_answers() {
  docker -H unix:///var/run/docker.sock version >/dev/null 2>&1
}

if engine_answers; then
  echo "install-host-deps.sh: root Docker engine already answers"
  exit 0
fi

echo "install-host-deps.sh: starting dockerd (log: $DOCKERD_LOG)"
# setsid + nohup: the engine must outlive this script and the shell that ran it.
setsid nohup dockerd -H unix:///var/run/docker.sock >>"$DOCKERD_LOG" 2>&1 < /dev/null &
for _ in $(seq 1 120); do
  if engine_answers; then
    echo "install-host-deps.sh: root Docker engine is up"
    exit 0
  fi
  sleep 0.5
done
echo "install-host-deps.sh: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1
