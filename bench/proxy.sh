#!/usr/bin/env bash
# Proxy benchmark: direct vs pgwarden proxy (transaction, session) vs PgBouncer (transaction, session)
# vs HAProxy, in front of one pgwarden cluster run by the baseline harness (bl.py from ../shared/baseline,
# imported, never copied). Parts: pgbench matrix, memory per idle client, failover write gap.
#
#   bash bench/proxy.sh [options]          (as root; see bench/README.md, "Proxy benchmark")
#
# Options:
#   -T, --seconds S        pgbench -T per run (default 15)
#   --reps N               repetitions of every (workload, clients, target) run (default 3)
#   --clients LIST         comma list of pgbench client counts (default 16,64,256)
#   --workloads LIST       select (-S) and/or tpcb (default script) (default select,tpcb)
#   --targets LIST         any of direct,pgwarden_txn,pgwarden_session,pgbouncer_txn,pgbouncer_session,haproxy
#                          (default: all six)
#   --scale N              pgbench -i -s N, once (default 10)
#   --jobs N               pgbench -j (default 2)
#   --sampling-rate R      fraction of transactions in pgbench's -l log, used for p99 (default 1)
#   --seed N               seed of the shuffles and kill delays (default: random, printed and recorded)
#   --idle-clients N       idle clients held per pooler (default 10000)
#   --idle-reps N          idle-client repetitions per pooler (default 3)
#   --failover-runs N      failovers with writers through the proxy and HAProxy (default 5)
#   --profile P            bl.py timing profile of the cluster: tuned (10/2/4, default), fast, default, native
#   --max-connections N    PostgreSQL max_connections and HAProxy per-server maxconn (default 300; bl.py: 200)
#   --txn-pool N           default_pool_size of both transaction poolers (default 20)
#   --session-pool N       default_pool_size of both session poolers (default: the largest --clients value)
#   --proxy-threads N      pgwarden proxy worker_threads (default 1; 0 = one per CPU)
#   --parts LIST           pgbench,idle,failover (default: all)
#   --baseline DIR         baseline harness dir (default $BENCH_BASELINE_DIR or <repo>/../shared/baseline)
#   --results DIR          results dir (default <repo>/bench/results/<UTC timestamp>-proxy)
#   --state DIR            runtime state: binary copy, data dirs, logs (default /tmp/pgwarden-proxy-bench)
#   --pgwarden-bin PATH    use this binary instead of building (cargo build --release -p pgwarden)
#   --no-install           do not apt-get install missing packages
#   --teardown-only        stop whatever an earlier run with the same --state left behind, then exit
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CMDLINE="bash bench/proxy.sh $*"
SECONDS_T=15; REPS=3; CLIENTS=16,64,256; WORKLOADS=select,tpcb
TARGETS=direct,pgwarden_txn,pgwarden_session,pgbouncer_txn,pgbouncer_session,haproxy
SCALE=10; JOBS=2; RATE=1; SEED=""; IDLE_N=10000; IDLE_REPS=3; FO_RUNS=5; PROFILE=tuned
MAXCONN=300; TXN_POOL=20; SESSION_POOL=0; PROXY_THREADS=1; PARTS=pgbench,idle,failover
BASELINE=${BENCH_BASELINE_DIR:-$REPO/../shared/baseline}
RESULTS=""; STATE=/tmp/pgwarden-proxy-bench; PGW_BIN=""; INSTALL=1; TEARDOWN_ONLY=0
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1

die() { echo "proxy.sh: error: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -T|--seconds) need_arg "$@"; SECONDS_T=$2; shift 2;;
    --reps) need_arg "$@"; REPS=$2; shift 2;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2;;
    --targets) need_arg "$@"; TARGETS=$2; shift 2;;
    --scale) need_arg "$@"; SCALE=$2; shift 2;;
    --jobs) need_arg "$@"; JOBS=$2; shift 2;;
    --sampling-rate) need_arg "$@"; RATE=$2; shift 2;;
    --seed) need_arg "$@"; SEED=$2; shift 2;;
    --idle-clients) need_arg "$@"; IDLE_N=$2; shift 2;;
    --idle-reps) need_arg "$@"; IDLE_REPS=$2; shift 2;;
    --failover-runs) need_arg "$@"; FO_RUNS=$2; shift 2;;
    --profile) need_arg "$@"; PROFILE=$2; shift 2;;
    --max-connections) need_arg "$@"; MAXCONN=$2; shift 2;;
    --txn-pool) need_arg "$@"; TXN_POOL=$2; shift 2;;
    --session-pool) need_arg "$@"; SESSION_POOL=$2; shift 2;;
    --proxy-threads) need_arg "$@"; PROXY_THREADS=$2; shift 2;;
    --parts) need_arg "$@"; PARTS=$2; shift 2;;
    --baseline) need_arg "$@"; BASELINE=$2; shift 2;;
    --results) need_arg "$@"; RESULTS=$2; shift 2;;
    --state) need_arg "$@"; STATE=$2; shift 2;;
    --pgwarden-bin) need_arg "$@"; PGW_BIN=$2; shift 2;;
    --no-install) INSTALL=0; shift;;
    --teardown-only) TEARDOWN_ONLY=1; shift;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) die "unknown option $1 (see --help)";;
  esac
done

# ---------------------------------------------------------------- option checks (before touching anything)
for v in SECONDS_T REPS SCALE JOBS IDLE_N IDLE_REPS FO_RUNS MAXCONN TXN_POOL; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "${v/SECONDS_T/--seconds} must be a positive integer, got '${!v}'"
done
for v in SESSION_POOL PROXY_THREADS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[ -z "$SEED" ] || [[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '$SEED'"
[[ $RATE =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "--sampling-rate must be in (0, 1], got '$RATE'"
check_list() {   # check_list OPTION VALUE ALLOWED...
  local opt=$1 val=$2; shift 2
  [ -n "$val" ] || die "$opt is empty"
  IFS=',' read -r -a _items <<< "$val"
  for x in "${_items[@]}"; do
    [ -n "$x" ] || die "$opt has an empty item"
    [[ " $* " == *" $x "* ]] || die "$opt: '$x' is not one of $*"
  done
}
check_list --workloads "$WORKLOADS" select tpcb
check_list --targets "$TARGETS" direct pgwarden_txn pgwarden_session pgbouncer_txn pgbouncer_session haproxy
check_list --parts "$PARTS" pgbench idle failover
case "$PROFILE" in tuned|fast|default|native) ;; *) die "--profile must be tuned, fast, default or native";; esac
MAXC=0; MINC=0
IFS=',' read -r -a _cl <<< "$CLIENTS"
[ ${#_cl[@]} -gt 0 ] || die "--clients is empty"
for c in "${_cl[@]}"; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || die "--clients: '$c' is not a positive integer"
  [ "$c" -gt "$MAXC" ] && MAXC=$c
  { [ "$MINC" = 0 ] || [ "$c" -lt "$MINC" ]; } && MINC=$c
done
[ "$JOBS" -le "$MINC" ] || die "--jobs $JOBS is more than the smallest client count $MINC"
[ "$SESSION_POOL" = 0 ] || [ "$SESSION_POOL" -ge "$MAXC" ] || die "--session-pool $SESSION_POOL is below the largest client count $MAXC (session clients beyond the pool would only wait)"
[ "$MAXCONN" -ge 100 ] || die "--max-connections $MAXCONN is too small for the harness (at least 100)"
[ "$(id -u)" -eq 0 ] || die "run as root: the harness starts PostgreSQL, the agents and the poolers as the postgres user"

# ---------------------------------------------------------------- baseline harness (not part of the repo)
BASELINE_ARG=$BASELINE
BASELINE=$(cd "$BASELINE" 2>/dev/null && pwd) || BASELINE_MISSING=1
if [ -n "${BASELINE_MISSING:-}" ] || [ ! -f "$BASELINE/bl.py" ] || [ ! -f "$BASELINE/writer.py" ]; then
  die "baseline harness not found (looked for bl.py and writer.py in '$BASELINE_ARG').
  It is not shipped with this repository: put the shared folder beside the checkout (../shared/baseline
  relative to the repo root), or pass --baseline DIR / set BENCH_BASELINE_DIR."
fi
case "$STATE" in /*) ;; *) STATE=$(pwd)/$STATE;; esac
export BL_DIR=$BASELINE BL_BASE=$STATE/cluster BL_LABEL=pgwarden
export BL_AGENT_CMD="$STATE/bin/pgwarden agent" BL_CTL_CMD="$STATE/bin/pgwarden"
DRIVER=("$PY" "$REPO/bench/proxy_bench.py")

if [ "$TEARDOWN_ONLY" = 1 ]; then
  [ -d "$BL_BASE/pids" ] || { echo "nothing to tear down in $BL_BASE"; exit 0; }
  timeout -k 30 600 "${DRIVER[@]}" teardown; exit $?
fi

# ---------------------------------------------------------------- packages, system PostgreSQL
if [ "$INSTALL" = 1 ]; then
  missing=()
  for p in postgresql-15 etcd-server etcd-client pgbouncer haproxy python3-psycopg2 python3-requests; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -e /usr/sbin/policy-rc.d ]; then     # keep the packages from starting their own services
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      RM_POLICY=1
    fi
    { timeout 900 apt-get update -qq && timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
      { [ -n "${RM_POLICY:-}" ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install ${missing[*]} failed"; }
    [ -n "${RM_POLICY:-}" ] && rm -f /usr/sbin/policy-rc.d
  fi
fi
$PY -c 'import psycopg2, requests' 2>/dev/null || die "$PY cannot import psycopg2 and requests (apt-get install python3-psycopg2 python3-requests)"
command -v etcd >/dev/null || die "etcd not found (apt-get install etcd-server)"
[ -x /usr/sbin/pgbouncer ] || die "/usr/sbin/pgbouncer not found (apt-get install pgbouncer)"
[ -x /usr/sbin/haproxy ] || die "/usr/sbin/haproxy not found (apt-get install haproxy)"
[ -x /usr/lib/postgresql/15/bin/pgbench ] || [ -n "${BL_PGBIN:-}" ] || die "PostgreSQL 15 binaries not found in /usr/lib/postgresql/15/bin (apt-get install postgresql-15, or set BL_PGBIN)"
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $2=="main" && $4 ~ /online/' | grep -q .; then
  echo "==> stopping the system PostgreSQL cluster 15/main (it holds port 5432)"
  pg_ctlcluster 15 main stop || die "could not stop the system cluster 15/main"
fi

# ---------------------------------------------------------------- ports, before the (long) build
mkdir -p "$STATE" && chmod 755 "$STATE"
mkdir -p "$STATE/bin" && chmod 755 "$STATE/bin"
"${DRIVER[@]}" preflight || die "harness ports are taken (see above); nothing was started"

# ---------------------------------------------------------------- pgwarden binary (frozen copy for the run)
if [ -z "$PGW_BIN" ]; then
  echo "==> cargo build --release -p pgwarden"
  (cd "$REPO" && timeout 3600 cargo build --release -p pgwarden) || die "cargo build --release -p pgwarden failed"
  PGW_BIN=$REPO/target/release/pgwarden
fi
[ -x "$PGW_BIN" ] || die "pgwarden binary '$PGW_BIN' not found or not executable"
install -m 755 "$PGW_BIN" "$STATE/bin/pgwarden"     # readable by postgres, immune to rebuilds during the run
"$STATE/bin/pgwarden" proxy --help >/dev/null 2>&1 || die "$PGW_BIN has no 'proxy' sub-command"
PGW_SHA=$(sha256sum "$STATE/bin/pgwarden" | cut -c1-16)
PGW_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || PGW_COMMIT="$PGW_COMMIT+dirty"

# ---------------------------------------------------------------- file descriptors (10,000 idle clients)
# every pooler, the idle-client script and PostgreSQL inherit this; the limit is per process, and a
# pooler needs one descriptor per client plus its server connections and listeners
NOFILE=$(( IDLE_N + 2000 ))
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt "$NOFILE" ]; then
  ulimit -Hn "$NOFILE" 2>/dev/null || die "the hard open-file limit is $HARD and cannot be raised to $NOFILE (no CAP_SYS_RESOURCE?); use --idle-clients $(( HARD - 2000 )) or less"
  HARD=$NOFILE
fi
ulimit -Sn "$HARD" 2>/dev/null || die "cannot raise the open-file limit to $HARD (ulimit -n)"

# ---------------------------------------------------------------- results
[ -n "$RESULTS" ] || RESULTS=$REPO/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-proxy
mkdir -p "$RESULTS" || die "cannot create $RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
LOG=$RESULTS/run.log
echo "==> results in $RESULTS (progress: $LOG)"

export BENCH_META_EXTRA
BENCH_META_EXTRA=$($PY -c 'import json,sys; print(json.dumps(dict(command=sys.argv[1], repo_commit=sys.argv[2], pgwarden_sha256_16=sys.argv[3])))' \
  "$CMDLINE" "$PGW_COMMIT" "$PGW_SHA")

# upper bound of the whole run: every step inside has its own, this only catches a hung driver
IFS=',' read -r -a _wl <<< "$WORKLOADS"; IFS=',' read -r -a _tg <<< "$TARGETS"
NRUNS=0; NIDLE=0; NFO=0
[[ ,$PARTS, == *,pgbench,* ]] && NRUNS=$(( REPS * ${#_wl[@]} * ${#_cl[@]} * ${#_tg[@]} ))
[[ ,$PARTS, == *,idle,* ]] && NIDLE=$(( IDLE_REPS * 2 ))
[[ ,$PARTS, == *,failover,* ]] && NFO=$FO_RUNS
LIMIT=$(( 900 + NRUNS * (SECONDS_T + 150) + NIDLE * 420 + NFO * 700 ))
echo "==> $NRUNS pgbench runs of ${SECONDS_T} s, $NIDLE idle-client runs of $IDLE_N clients, $NFO failovers (hard limit $((LIMIT / 60)) min)"

on_exit() {   # a driver killed hard cannot tear down itself: stop what its pid files name
  rc=$?
  if [ -d "$BL_BASE/pids" ] && ls "$BL_BASE/pids"/*.pid >/dev/null 2>&1; then
    echo "==> teardown of leftovers" | tee -a "$LOG"
    timeout -k 30 600 "${DRIVER[@]}" teardown >>"$LOG" 2>&1 || echo "teardown reported a problem, see $LOG" >&2
  fi
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

args=(run --results "$RESULTS" --seconds "$SECONDS_T" --reps "$REPS" --clients "$CLIENTS" --workloads "$WORKLOADS"
      --targets "$TARGETS" --scale "$SCALE" --jobs "$JOBS" --sampling-rate "$RATE" --idle-clients "$IDLE_N"
      --idle-reps "$IDLE_REPS" --failover-runs "$FO_RUNS" --profile "$PROFILE" --max-connections "$MAXCONN"
      --txn-pool "$TXN_POOL" --session-pool "$SESSION_POOL" --proxy-threads "$PROXY_THREADS" --parts "$PARTS")
[ -n "$SEED" ] && args+=(--seed "$SEED")
T0=$SECONDS
# --foreground keeps the driver in this process group, so Ctrl-C reaches it and it tears down by PID;
# tee -i outlives the Ctrl-C, or the driver's teardown would die writing to a closed pipe
timeout --foreground -k 120 "$LIMIT" "${DRIVER[@]}" "${args[@]}" 2>&1 | tee -i -a "$LOG"
RC=${PIPESTATUS[0]}
echo "==> driver finished in $(( (SECONDS - T0) / 60 )) min $(( (SECONDS - T0) % 60 )) s (exit $RC)" | tee -a "$LOG"
[ "$RC" = 124 ] && echo "the run exceeded its limit of $LIMIT s" | tee -a "$RESULTS/failures.txt"

$PY "$REPO/bench/proxy_report.py" "$RESULTS" > "$RESULTS/report.md" || die "report generation failed"
cat "$RESULTS/report.md"
echo
echo "==> report: $RESULTS/report.md"
[ "$RC" = 0 ] || exit 1
exit 0
