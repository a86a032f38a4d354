#!/usr/bin/env bash
# Installs what pgwarden needs to build, run the demo and run the tests on a
# Debian or Ubuntu machine: PostgreSQL 15, etcd 3.4, the protobuf compiler for
# the etcd client, HAProxy and Patroni's patronictl (compatibility tests),
# nftables, iproute2, curl and libfaketime (the fault-injection testbed), and
# the Rust components used by CI (rustfmt, clippy).
# Safe to run more than once.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo "$@"; else
      echo "error: installing packages needs root; re-run as root or install sudo" >&2; exit 1
    fi
  else
    "$@"
  fi
}

packages=(postgresql-15 etcd-server etcd-client protobuf-compiler libprotobuf-dev pkg-config haproxy python3-venv openssl
          nftables iproute2 curl faketime)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d stops the packages from starting a system PostgreSQL or etcd on
  # 5432/2379; pgwarden starts its own instances.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    need_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    trap 'need_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  need_root apt-get update -qq
  need_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
# The real patronictl, for the compatibility tests.
bash "$(dirname "$0")/install-patronictl.sh"
echo "==> dependencies ready"
