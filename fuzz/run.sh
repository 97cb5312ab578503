#!/usr/bin/env bash
# Runs one fuzz target (or `all`) for SECONDS each (default 60), starting from the committed
# seeds in corpus/TARGET and keeping what the fuzzer finds in target/corpus/TARGET, so the
# committed corpus stays a handful of readable seeds. Crashes land in targets/artifacts/TARGET/.
#
#   fuzz/run.sh [--record] TARGET|all [SECONDS] [extra libFuzzer flags...]
#
# --record writes fuzz/results/<date>-<build>.md: the command, the machine, the load average,
# and per target the seconds, executions, executions per second, coverage (libFuzzer's `cov`
# and `ft`), corpus size and crashes, taken from libFuzzer's own final lines (the full logs are
# kept beside it in target/fuzz-logs/). <build> is the short git commit (+ -dirty); an existing
# file is never replaced (-run2, -run3, ...). Figures quoted in fuzz/README.md come from these.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); the toolchain is stable, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its sanitizer flags.
set -euo pipefail
record=0
if [ "${1:-}" = --record ]; then
  record=1
  shift
fi
target=${1:?usage: fuzz/run.sh [--record] TARGET|all [SECONDS] [libFuzzer flags...]}
secs=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")"
fuzz_dir=targets
if [ "$target" = all ]; then
  targets=$(RUSTC_BOOTSTRAP=1 cargo fuzz list --fuzz-dir "$fuzz_dir")
else
  targets=$target
fi
logs=target/fuzz-logs
mkdir -p "$logs"
# Build first, so compile time stays out of the runs.
RUSTC_BOOTSTRAP=1 cargo fuzz build -O --fuzz-dir "$fuzz_dir"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
failed=0
for t in $targets; do
  mkdir -p "target/corpus/$t" "corpus/$t"
  echo "== $t: ${secs}s"
  log="$logs/$t.log"
  status=0
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O --fuzz-dir "$fuzz_dir" "$t" "target/corpus/$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "$@" 2>&1 | tee "$log" || status=$?
  # libFuzzer's last status line: "#N DONE cov: C ft: F corp: K/S ... exec/s: E ..."
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  rate=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
  corp=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" | cut -d' ' -f2 || echo "?")
  crashes=0
  if [ "$status" != 0 ]; then
    crashes=1
    failed=1
  fi
  rows+=("| \`$t\` | $secs | $runs | $rate | $cov | $ft | $corp | $crashes |")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "$record" = 1 ]; then
  commit=$(git rev-parse --short HEAD)
  build=$commit
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then build="$commit-dirty"; fi
  mkdir -p results
  base="results/$(date -u +%F)-$build"
  file=$base.md
  n=2
  while [ -e "$file" ]; do
    file=$base-run$n.md
    n=$((n + 1))
  done
  {
    echo "# Fuzz run $(date -u +%F) ($build)"
    echo
    echo "Command: \`fuzz/run.sh --record $target $secs${*:+ $*}\` (cargo-fuzz $(cargo fuzz --version 2>/dev/null | cut -d' ' -f2),"
    echo "$(rustc --version), libFuzzer with AddressSanitizer, \`-O\`)."
    echo "Machine: $(nproc) cores, $(uname -sr); load average before: $load_before, after: $load_after."
    echo "Seeds: \`fuzz/corpus/TARGET\` plus what earlier runs on this machine kept in \`fuzz/target/corpus/TARGET\`."
    echo
    echo "| target | seconds | executions | exec/s | cov | ft | corpus (units/size) | crashes |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
  } >"$file"
  echo "recorded fuzz/$file"
fi
exit "$failed"
