#!/usr/bin/env bash
# Fuzzes the wire codec (crates/wire/fuzz) with cargo-fuzz and libFuzzer:
# each target runs for a fixed time; a crash, a timeout or an out-of-memory
# fails the script and names the saved input.
#
#   bash scripts/fuzz.sh                         # every target, 60 s each
#   bash scripts/fuzz.sh --seconds 20            # CI
#   bash scripts/fuzz.sh --target frontend --seconds 600
#
# Needs only a stable Rust toolchain and a C++ compiler (libfuzzer-sys
# compiles libFuzzer); cargo-fuzz is installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
targets=()
usage() {
  echo "usage: $0 [--seconds N] [--target NAME]..." >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) [ $# -ge 2 ] || usage; seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --target) [ $# -ge 2 ] || usage; targets+=("$2"); shift 2 ;;
    --target=*) targets+=("${1#*=}"); shift ;;
    -h|--help) usage ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
done
case "$seconds" in
  ''|*[!0-9]*|0) echo "error: --seconds needs a positive whole number" >&2; exit 2 ;;
esac

fuzz_dir=crates/wire/fuzz
all_targets=()
for f in "$fuzz_dir"/fuzz_targets/*.rs; do
  all_targets+=("$(basename "$f" .rs)")
done
if [ "${#targets[@]}" -eq 0 ]; then
  targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
  [ -f "$fuzz_dir/fuzz_targets/$t.rs" ] || {
    echo "error: no fuzz target '$t' (have: ${all_targets[*]})" >&2
    exit 2
  }
done

if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing g++ (libfuzzer-sys compiles libFuzzer's C++ sources)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "error: a C++ compiler is needed to build libFuzzer; install g++" >&2
    exit 1
  fi
fi

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in *":$cargo_bin:"*) ;; *) PATH="$cargo_bin:$PATH" ;; esac
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (about 2 minutes, once)"
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, sancov passes)
# to rustc. RUSTC_BOOTSTRAP=1 lets the stable compiler accept them, so CI needs
# no nightly toolchain; the stable toolchain ships the ASan runtime.
export RUSTC_BOOTSTRAP=1
echo "==> $(rustc --version), $(cargo fuzz --version)"

cd crates/wire
echo "==> building the fuzz targets (the first build takes a few minutes)"
start=$(date +%s)
cargo fuzz build
echo "==> built in $(($(date +%s) - start)) s"

failed=()
summary=()
for t in "${targets[@]}"; do
  log="fuzz/target/fuzz-$t.log"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$artifacts"
  marker="fuzz/target/.fuzz-$t.start"
  touch "$marker"
  echo "==> fuzzing $t for $seconds s (corpus fuzz/corpus/$t, log crates/wire/$log)"
  # -timeout: one input taking 10 s is a hang worth reporting, well below
  # libFuzzer's default of 20 minutes. -rss_limit_mb stays at its default
  # (2 GiB), so a runaway allocation is reported as a crash too.
  status=0
  cargo fuzz run "$t" -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$status" -eq 0 ]; then
    echo "    ok: ${runs:-?} executions (${rate:-?}/s), no crash"
    summary+=("$t: ok, ${runs:-?} executions in $seconds s")
  else
    { grep -E -A1 'panicked at' "$log" | head -2; grep -E '^SUMMARY' "$log" | head -1; } | sed 's/^/    /' || true
    new=$(find "$artifacts" -type f -newer "$marker" 2>/dev/null | head -1)
    echo "    FAILED (exit $status); full log: crates/wire/$log"
    if [ -n "$new" ]; then
      echo "    input: crates/wire/$new"
      echo "    replay: cd crates/wire && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $new"
      echo "    minimize: cd crates/wire && RUSTC_BOOTSTRAP=1 cargo fuzz tmin $t $new"
    fi
    summary+=("$t: FAILED${new:+, input crates/wire/$new}")
    failed+=("$t")
  fi
  rm -f "$marker"
done

echo "==> summary"
printf '    %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "error: fuzzing failed: ${failed[*]}" >&2
  exit 1
fi
