#!/usr/bin/env bash
# The fault matrix (reliability-plan.md §3) and the randomized soak, against
# real etcd, PostgreSQL and pgwarden agents in network namespaces and cgroups.
# Root only. Prints a markdown table; artifacts of failed runs (operation
# history, fault events, etcd dump, every log) are kept under
# target/faultbed-artifacts/ and their path is printed.
#
#   bash scripts/faults.sh                                  # full matrix, async + sync
#   bash scripts/faults.sh --scenarios F01,F05 --modes async
#   bash scripts/faults.sh --scenarios ci --modes async     # the CI subset
#   bash scripts/faults.sh --soak-only --soak-seed 42 --soak-steps 12
#   bash scripts/faults.sh --soak-seed 42                   # matrix, then soak
#
# The soak's seed is printed with its result; rerun with the same seed to
# replay the same fault sequence. --out FILE appends the table to FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "faults.sh must run as root (namespaces, cgroups, nftables)" >&2
  exit 2
fi
cargo build --locked -p pgwarden -p pgwarden-faultbed --bins
# A private copy, so a rebuild during a long run cannot swap the binary under the agents.
bin_dir="$(mktemp -d /tmp/pgwfb-bin.XXXXXX)"
trap 'rm -rf "$bin_dir"' EXIT
cp target/debug/pgwarden "$bin_dir/pgwarden"
chmod 755 "$bin_dir"
PGWARDEN_BIN="$bin_dir/pgwarden" target/debug/faultbed "$@"
