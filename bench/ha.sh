#!/usr/bin/env bash
# Side-by-side HA benchmark: Patroni (Debian package) and pgwarden on the same machine, in one run,
# driven by the baseline harness (bl.py + writer.py from ../shared/baseline, never copied here).
#
#   bash bench/ha.sh [options]          (as root; see bench/README.md)
#
# Options:
#   --runs N               failover / switchover / pgcrash runs per profile and manager (default 5)
#   --boot-runs N          bootstrap runs per profile and manager (default 3)
#   --profiles LIST        comma list of timing profiles (default native,tuned,fast). bl.py knows
#                          default (30/10/10), tuned (10/2/4), fast (5/1/2), native (no timing keys);
#                          NAME=TTL/LOOP_WAIT/RETRY_TIMEOUT adds one, e.g. pgw-fast=2/0.5/0.75
#                          (fractions are pgwarden-only: Patroni wants whole seconds)
#   --idle-seconds S       idle footprint window per profile, 0 skips it (default 60)
#   --cpu-seconds S        no-false-failover CPU-load duration (pgbench -c 4 -j 2 -T S; default 300)
#   --etcd-moves N         etcd leader moves / member restarts in the no-false-failover checks (default 5)
#   --nff-profile-patroni P / --nff-profile-pgwarden P
#                          profile of the no-false-failover checks (default: tuned (10/2/4) for Patroni,
#                          native for pgwarden, i.e. its own defaults 4/1/1)
#   --skip-patroni | --skip-pgwarden | --skip-nofalse | --skip-pgcrash | --skip-switchover | --skip-failover
#   --baseline DIR         baseline harness dir (default $BENCH_BASELINE_DIR or <repo>/../shared/baseline)
#   --results DIR          results dir (default <repo>/bench/results/<UTC timestamp>)
#   --state DIR            runtime state (data dirs, logs; default /tmp/pgwarden-bench)
#   --pgwarden-bin PATH    use this binary instead of building (cargo build --release -p pgwarden)
#   --no-install           do not apt-get install missing packages
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CMDLINE="bash bench/ha.sh $*"
RUNS=5; BOOT_RUNS=3; PROFILES=native,tuned,fast; IDLE_S=60; CPU_S=300; ETCD_MOVES=5
NFF_PATRONI=tuned; NFF_PGWARDEN=native
DO_PATRONI=1; DO_PGWARDEN=1; DO_NOFALSE=1; DO_PGCRASH=1; DO_SWITCHOVER=1; DO_FAILOVER=1; INSTALL=1
BASELINE=${BENCH_BASELINE_DIR:-$REPO/../shared/baseline}
RESULTS=""; STATE=/tmp/pgwarden-bench; PGW_BIN=""
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1

die() { echo "ha.sh: error: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) need_arg "$@"; RUNS=$2; shift 2;;
    --boot-runs) need_arg "$@"; BOOT_RUNS=$2; shift 2;;
    --profiles) need_arg "$@"; PROFILES=$2; shift 2;;
    --idle-seconds) need_arg "$@"; IDLE_S=$2; shift 2;;
    --cpu-seconds) need_arg "$@"; CPU_S=$2; shift 2;;
    --etcd-moves) need_arg "$@"; ETCD_MOVES=$2; shift 2;;
    --nff-profile-patroni) need_arg "$@"; NFF_PATRONI=$2; shift 2;;
    --nff-profile-pgwarden) need_arg "$@"; NFF_PGWARDEN=$2; shift 2;;
    --skip-patroni) DO_PATRONI=0; shift;;
    --skip-pgwarden) DO_PGWARDEN=0; shift;;
    --skip-nofalse) DO_NOFALSE=0; shift;;
    --skip-pgcrash) DO_PGCRASH=0; shift;;
    --skip-switchover) DO_SWITCHOVER=0; shift;;
    --skip-failover) DO_FAILOVER=0; shift;;
    --baseline) need_arg "$@"; BASELINE=$2; shift 2;;
    --results) need_arg "$@"; RESULTS=$2; shift 2;;
    --state) need_arg "$@"; STATE=$2; shift 2;;
    --pgwarden-bin) need_arg "$@"; PGW_BIN=$2; shift 2;;
    --no-install) INSTALL=0; shift;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) die "unknown option $1 (see --help)";;
  esac
done
for v in RUNS BOOT_RUNS IDLE_S CPU_S ETCD_MOVES; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[ "$DO_PATRONI$DO_PGWARDEN" != "00" ] || die "--skip-patroni and --skip-pgwarden together leave nothing to measure"
[ "$(id -u)" -eq 0 ] || die "run as root: the harness starts PostgreSQL and the agents as the postgres user"

# ---------------------------------------------------------------- baseline harness (not part of the repo)
BASELINE_ARG=$BASELINE
BASELINE=$(cd "$BASELINE" 2>/dev/null && pwd) || BASELINE_MISSING=1
if [ -n "${BASELINE_MISSING:-}" ] || [ ! -f "$BASELINE/bl.py" ] || [ ! -f "$BASELINE/writer.py" ]; then
  die "baseline harness not found (looked for bl.py and writer.py in '$BASELINE_ARG').
  It is not shipped with this repository: put the shared folder beside the checkout (../shared/baseline
  relative to the repo root), or pass --baseline DIR / set BENCH_BASELINE_DIR."
fi

# ---------------------------------------------------------------- profiles
EXTRA=""; PLIST=()
IFS=',' read -r -a _ps <<< "$PROFILES"
for p in "${_ps[@]}"; do
  [ -n "$p" ] || continue
  if [[ $p == *=* ]]; then
    [[ $p =~ ^[A-Za-z0-9_-]+=[0-9]+/[0-9.]+/[0-9.]+$ ]] || die "profile '$p' is not NAME=TTL/LOOP_WAIT/RETRY_TIMEOUT"
    EXTRA="${EXTRA:+$EXTRA,}$p"; PLIST+=("${p%%=*}")
  else
    case "$p" in default|tuned|fast|native) PLIST+=("$p");; *) die "unknown profile '$p' (use NAME=TTL/LW/RT for a new one)";; esac
  fi
done
[ ${#PLIST[@]} -gt 0 ] || die "no profiles"
export BENCH_EXTRA_PROFILES="$EXTRA"

# ---------------------------------------------------------------- packages, system PostgreSQL
if [ "$INSTALL" = 1 ]; then
  pkgs=(postgresql-15 etcd-server etcd-client python3-psycopg2 python3-requests)
  [ "$DO_PATRONI" = 1 ] && pkgs+=(patroni pgbouncer haproxy)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -e /usr/sbin/policy-rc.d ]; then     # keep the packages from starting their own services
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      RM_POLICY=1
    fi
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } || die "apt-get install ${missing[*]} failed"
    [ -n "${RM_POLICY:-}" ] && rm -f /usr/sbin/policy-rc.d
  fi
fi
$PY -c 'import psycopg2, requests' 2>/dev/null || die "$PY cannot import psycopg2 and requests (apt-get install python3-psycopg2 python3-requests)"
command -v etcd >/dev/null && command -v etcdctl >/dev/null || die "etcd/etcdctl not found (apt-get install etcd-server etcd-client)"
[ -x /usr/lib/postgresql/15/bin/postgres ] || [ -n "${BL_PGBIN:-}" ] || die "PostgreSQL 15 binaries not found in /usr/lib/postgresql/15/bin (apt-get install postgresql-15, or set BL_PGBIN)"
[ "$DO_PATRONI" = 0 ] || command -v patroni >/dev/null || die "patroni not found (apt-get install patroni, or --skip-patroni)"
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $2=="main" && $4 ~ /online/' | grep -q .; then
  echo "==> stopping the system PostgreSQL cluster 15/main (it holds port 5432)"
  pg_ctlcluster 15 main stop || die "could not stop the system cluster 15/main"
fi

# ---------------------------------------------------------------- pgwarden binary (frozen copy for the run)
mkdir -p "$STATE" && chmod 755 "$STATE"
if [ "$DO_PGWARDEN" = 1 ]; then
  if [ -z "$PGW_BIN" ]; then
    echo "==> cargo build --release -p pgwarden"
    (cd "$REPO" && cargo build --release -p pgwarden) || die "cargo build --release -p pgwarden failed (or pass --skip-pgwarden)"
    PGW_BIN=$REPO/target/release/pgwarden
  fi
  [ -x "$PGW_BIN" ] || die "pgwarden binary '$PGW_BIN' not found or not executable"
  mkdir -p "$STATE/bin" && chmod 755 "$STATE/bin"
  install -m 755 "$PGW_BIN" "$STATE/bin/pgwarden"     # readable by the postgres user, immune to rebuilds
  PGW_SHA=$(sha256sum "$STATE/bin/pgwarden" | cut -c1-16)
fi
PGW_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || PGW_COMMIT="$PGW_COMMIT+dirty"

# ---------------------------------------------------------------- results
[ -n "$RESULTS" ] || RESULTS=$REPO/bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS" || die "cannot create $RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
FAILS=$RESULTS/failures.txt
LOG=$RESULTS/run.log
echo "==> results in $RESULTS (progress log: $LOG)"
export BL_DIR=$BASELINE BL_RESULTS=$RESULTS
BLX=("$PY" "$REPO/bench/blx.py")

CUR_BASE=""; CUR_LABEL=""
teardown() {     # stop everything the harness started for the current block, by recorded PID
  [ -n "$CUR_BASE" ] || return 0
  echo "==> teardown ($CUR_LABEL, $CUR_BASE)" | tee -a "$LOG"
  BL_BASE=$CUR_BASE BL_LABEL=$CUR_LABEL "${BLX[@]}" teardown >>"$LOG" 2>&1 || echo "teardown reported an error, see $LOG" >&2
  CUR_BASE=""
}
on_exit() { rc=$?; teardown; exit $rc; }
trap on_exit EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

BENCH_META_EXTRA=$($PY -c 'import json,sys; print(json.dumps(dict(command=sys.argv[1], repo_commit=sys.argv[2], pgwarden_sha256_16=sys.argv[3], profiles=sys.argv[4], runs=sys.argv[5])))' \
  "$CMDLINE" "$PGW_COMMIT" "${PGW_SHA:-}" "$PROFILES" "runs=$RUNS boot_runs=$BOOT_RUNS idle_s=$IDLE_S cpu_s=$CPU_S etcd_moves=$ETCD_MOVES nff=patroni:$NFF_PATRONI,pgwarden:$NFF_PGWARDEN") \
  "${BLX[@]}" meta --out "$RESULTS/meta.json" >/dev/null || die "could not collect machine facts"

label_env() {   # sets the harness environment for one manager
  case "$1" in
    patroni) export BL_AGENT_CMD=/usr/bin/patroni BL_CTL_CMD=patronictl BL_LABEL=patroni;;
    pgwarden) export BL_AGENT_CMD="$STATE/bin/pgwarden agent" BL_CTL_CMD="$STATE/bin/pgwarden" BL_LABEL=pgwarden;;
  esac
  export BL_BASE=$STATE/$1
}

fresh_state() {   # a clean BL_BASE for each block; only ever deletes a directory this script created
  local d=$1
  if [ -e "$d" ]; then
    [ -f "$d/.pgwarden-bench" ] || die "$d exists and was not created by bench/ha.sh; remove it or pass --state"
    rm -rf "$d"
  fi
  mkdir -p "$d" && touch "$d/.pgwarden-bench"
}

phase() {   # phase LIMIT_S DESCRIPTION CMD...: run one harness step (bounded in time), record a failure
  local limit=$1 desc=$2; shift 2
  echo "==> [$BL_LABEL] $desc" | tee -a "$LOG"
  local t0=$SECONDS
  if timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1; then
    echo "    ok ($((SECONDS - t0)) s)" | tee -a "$LOG"; return 0
  fi
  [ $((SECONDS - t0)) -ge "$limit" ] && echo "step exceeded its time limit of $limit s" >>"$LOG"
  echo "    FAILED after $((SECONDS - t0)) s: $desc ($(tail -n 1 "$LOG"))" | tee -a "$LOG"
  echo "$BL_LABEL | $desc | $(tail -n 1 "$LOG" | cut -c1-200)" >> "$FAILS"
  return 1
}

keep_logs() {   # copy the block's agent/etcd logs and writer CSVs into the results (kept out of git)
  [ -d "$BL_BASE/logs" ] && mkdir -p "$RESULTS/logs" && cp -r "$BL_BASE/logs" "$RESULTS/logs/$1" 2>/dev/null
  return 0
}

start_block() {   # start_block LABEL NAME: ports free, fresh state, etcd up
  label_env "$1"
  BL_BASE=$BL_BASE "${BLX[@]}" preflight >>"$LOG" 2>&1 || { tail -n 1 "$LOG" >&2; die "ports busy before the $1 $2 block"; }
  fresh_state "$BL_BASE"
  CUR_BASE=$BL_BASE; CUR_LABEL=$1
  phase 60 "etcd-start" "${BLX[@]}" etcd-start
}

end_block() {
  teardown
  keep_logs "$1-$2"
  BL_BASE=$STATE/$1 "${BLX[@]}" preflight >>"$LOG" 2>&1 || die "ports still busy after the teardown of $1 $2 (see $LOG)"
}

profile_block() {   # profile_block LABEL PROFILE
  local l=$1 p=$2
  start_block "$l" "$p" || return 1
  phase $((60 + 120 * BOOT_RUNS)) "bootstrap --profile $p --runs $BOOT_RUNS" "${BLX[@]}" bootstrap --profile "$p" --runs "$BOOT_RUNS" --keep &&
  { [ "$IDLE_S" = 0 ] || phase $((300 + IDLE_S)) "idle --profile $p --seconds $IDLE_S" "${BLX[@]}" idle --profile "$p" --seconds "$IDLE_S"; } &&
  { [ "$RUNS" = 0 ] || [ "$DO_FAILOVER" = 0 ] || phase $((120 + 400 * RUNS)) "failover --profile $p --runs $RUNS" "${BLX[@]}" failover --profile "$p" --runs "$RUNS"; } &&
  { [ "$RUNS" = 0 ] || [ "$DO_SWITCHOVER" = 0 ] || phase $((120 + 300 * RUNS)) "switchover --profile $p --runs $RUNS" "${BLX[@]}" switchover --profile "$p" --runs "$RUNS"; } &&
  { [ "$RUNS" = 0 ] || [ "$DO_PGCRASH" = 0 ] || phase $((120 + 400 * RUNS)) "pgcrash --profile $p --runs $RUNS" "${BLX[@]}" pgcrash --profile "$p" --runs "$RUNS"; }
  end_block "$l" "$p"
}

nofalse_block() {   # nofalse_block LABEL PROFILE
  local l=$1 p=$2
  start_block "$l" "nofalse" || return 1
  # the bootstrap that sets the cluster up is not a measurement: its record goes elsewhere
  phase 300 "bootstrap --profile $p (setup)" env BL_RESULTS="$RESULTS/setup" "${BLX[@]}" bootstrap --profile "$p" --runs 1 --keep &&
  phase $((400 + 20 * ETCD_MOVES)) "nofalse etcd-move-leader x$ETCD_MOVES" "${BLX[@]}" nofalse --check etcd-move-leader --profile "$p" --moves "$ETCD_MOVES" &&
  phase $((400 + 60 * ETCD_MOVES)) "nofalse etcd-member-restart x$ETCD_MOVES" "${BLX[@]}" nofalse --check etcd-member-restart --profile "$p" --moves "$ETCD_MOVES" &&
  phase $((900 + CPU_S)) "nofalse cpu-load ${CPU_S}s" "${BLX[@]}" nofalse --check cpu-load --profile "$p" --seconds "$CPU_S"
  end_block "$l" "nofalse"
}

LABELS=()
[ "$DO_PATRONI" = 1 ] && LABELS+=(patroni)
[ "$DO_PGWARDEN" = 1 ] && LABELS+=(pgwarden)
T0=$SECONDS
i=0
for p in "${PLIST[@]}"; do
  # alternate which manager goes first (ABBA), so slow drift of the machine does not favour one of them
  if [ $((i % 2)) = 1 ] && [ ${#LABELS[@]} = 2 ]; then order=("${LABELS[1]}" "${LABELS[0]}"); else order=("${LABELS[@]}"); fi
  for l in "${order[@]}"; do profile_block "$l" "$p"; done
  i=$((i + 1))
done
if [ "$DO_NOFALSE" = 1 ]; then
  for l in "${LABELS[@]}"; do
    if [ "$l" = patroni ]; then nofalse_block "$l" "$NFF_PATRONI"; else nofalse_block "$l" "$NFF_PGWARDEN"; fi
  done
fi
echo "==> measurements done in $(( (SECONDS - T0) / 60 )) min $(( (SECONDS - T0) % 60 )) s" | tee -a "$LOG"

$PY "$REPO/bench/report.py" "$RESULTS" > "$RESULTS/report.md" || die "report generation failed"
cat "$RESULTS/report.md"
echo
echo "==> report: $RESULTS/report.md"
[ -s "$FAILS" ] && { echo "==> some steps failed, see $FAILS" >&2; exit 1; }
exit 0
