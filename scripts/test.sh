#!/usr/bin/env bash
# The whole test suite: lint, unit tests, integration tests against real
# etcd 3.4 and PostgreSQL 15 on loopback, the fault-injection CI subset in
# network namespaces, and a short fuzzing run of the wire codec. Must run as root (tests start
# PostgreSQL as the `postgres` OS user) or as a user that can run
# `runuser -u postgres`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> building"
cargo build --workspace --all-targets --locked
echo "==> tests"
# Cluster tests start several PostgreSQL and etcd processes each; running them
# one at a time avoids false failovers on a 2-core machine.
cargo test --workspace --locked -- --test-threads=1
echo "==> fuzzing the wire codec (20 s per target)"
bash scripts/fuzz.sh --seconds 20
