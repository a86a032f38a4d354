#!/usr/bin/env bash
# The whole test suite: lint, unit tests, and integration tests against real
# etcd 3.4 and PostgreSQL 15 on loopback. Must run as root (tests start
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
