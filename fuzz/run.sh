#!/usr/bin/env bash
# Builds tine's fuzz targets with libFuzzer's coverage instrumentation and runs
# them. On the stable toolchain: the instrumentation is SanitizerCoverage
# (codegen flags stable rustc has), so no nightly is needed; --asan adds
# AddressSanitizer and then needs a nightly toolchain.
#
#   fuzz/run.sh                      every target for 60 s each
#   fuzz/run.sh --seconds 600 chunked forward
#   fuzz/run.sh --replay             every committed input once, then 5 s of
#                                    new inputs per target (what CI runs)
#   fuzz/run.sh --asan --seconds 600 stats_reader
#
# Committed seeds are in fuzz/corpus/TARGET (read, never written); what a run
# finds goes to fuzz/out/corpus/TARGET, and a failing input to
# fuzz/out/artifacts/TARGET/. Reproduce one with
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/out/artifacts/TARGET/crash-...
# The last line per target is libFuzzer's: executions, coverage (cov: edges,
# ft: features), corpus size.
set -euo pipefail
cd "$(dirname "$0")"

seconds=60
replay=0
asan=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --replay) replay=1; seconds=5; shift ;;
    --asan) asan=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^tine-fuzz$')
[ ${#targets[@]} -gt 0 ] || read -r -a targets <<<"$(echo $all)"

triple=x86_64-unknown-linux-gnu
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
toolchain=()
if [ "$asan" = 1 ]; then
  flags+=" -Zsanitizer=address"
  toolchain=(+nightly)
fi
RUSTFLAGS="$flags" cargo "${toolchain[@]}" build --release --quiet --target "$triple" \
  $(printf -- '--bin %s ' "${targets[@]}")

failed=()
for t in "${targets[@]}"; do
  mkdir -p "out/corpus/$t" "out/artifacts/$t" "corpus/$t"
  bin="target/$triple/release/$t"
  log="out/$t.log"
  : >"$log"
  args=(-artifact_prefix="out/artifacts/$t/" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  if [ "$replay" = 1 ]; then
    # Every committed input once: a regression in any of them fails here.
    if ! "$bin" "${args[@]}" -runs=0 "corpus/$t" >"$log" 2>&1; then
      echo "$t: a committed input fails (log: fuzz/$log)"; failed+=("$t"); continue
    fi
  fi
  if "$bin" "${args[@]}" -max_total_time="$seconds" "out/corpus/$t" "corpus/$t" >>"$log" 2>&1; then
    summary=$(grep -E '^#[0-9]+\s+DONE' "$log" | tail -1 || true)
    echo "$t: ${summary:-done}"
  else
    echo "$t: FAILED (log: fuzz/$log; input in fuzz/out/artifacts/$t/)"
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 || true
    failed+=("$t")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
