#!/usr/bin/env bash
# Runs one fuzz target (or `all`) for SECONDS each (default 60), starting from the committed
# seeds in corpus/TARGET and keeping what the fuzzer finds in target/corpus/TARGET, so the
# committed corpus stays a handful of readable seeds. Crashes land in artifacts/TARGET/.
# Usage: fuzz/run.sh TARGET|all [SECONDS] [extra libFuzzer flags...]
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET|all [SECONDS]}
secs=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
if [ "$target" = all ]; then
  targets=$(RUSTC_BOOTSTRAP=1 cargo fuzz list)
else
  targets=$target
fi
for t in $targets; do
  mkdir -p "target/corpus/$t" "corpus/$t"
  echo "== $t: ${secs}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "target/corpus/$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 "$@"
done
