#!/usr/bin/env bash
# Runs a set of criterion benchmarks and records them as a new results file:
#
#   bench/record.sh micro     # route, sni, ratelimit, wireguard, netstack
#   bench/record.sh control   # propagation (release binaries, built first) and fanout
#   bench/record.sh tunnel    # kokoa-tunnel's throughput example: two tunnels on loopback
#   bench/record.sh micro -- --quick    # anything after -- goes to the benchmarks
#
# writes bench/results/<date>-<build>-<kind>.md: the command, the machine, the load average
# before and after, criterion's estimates (low, estimate, high of its confidence interval) and
# the benchmarks' own output. <build> is the short git commit, plus -dirty when tracked files
# differ from it. An existing file is never replaced: a second run of the same build on the
# same day gets -run2, -run3, ... Numbers quoted in a README come from these files.
set -euo pipefail

usage() {
	echo "usage: bench/record.sh micro|control|tunnel [-- args for the benchmarks]" >&2
	exit 2
}
[ $# -ge 1 ] || usage
kind=$1
shift
extra=()
if [ $# -gt 0 ]; then
	[ "$1" = "--" ] || usage
	shift
	extra=("$@")
fi
case $kind in
micro) benches=(route sni ratelimit wireguard netstack) ;;
control) benches=(propagation fanout) ;;
tunnel) benches=() ;;
*) usage ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo=${CARGO:-cargo}
bench_args=()
for b in "${benches[@]}"; do bench_args+=(--bench "$b"); done
if [ "$kind" = tunnel ]; then
	run=("$cargo" run -p kokoa-tunnel --release --example throughput --)
	[ ${#extra[@]} -gt 0 ] || extra=(5)
	build_cmd=("$cargo" build -p kokoa-tunnel --release --example throughput)
else
	run=("$cargo" bench -p kokoa-bench "${bench_args[@]}" --)
	build_cmd=("$cargo" bench -p kokoa-bench "${bench_args[@]}" --no-run)
fi

commit=$(git rev-parse --short HEAD)
build=$commit
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then build="$commit-dirty"; fi
date=$(date -u +%F)
base="bench/results/$date-$build-$kind"

# Build first, so compile time and compiler load stay out of the measurements.
if [ "$kind" = control ]; then
	"$cargo" build --release -p kokoa-control -p kokoa-edge -p kokoa-origin
fi
"${build_cmd[@]}"

# Reserve the name (noclobber: never opens an existing file).
out=$base.md
n=2
while ! (set -C; : >"$out") 2>/dev/null; do
	out="$base-run$n.md"
	n=$((n + 1))
done
log=$(mktemp)
body=$(mktemp)
trap 'rm -f "$log" "$body"' EXIT
trap 'rm -f "$out"; exit 130' INT TERM

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%F %H:%M UTC')
t0=$(date +%s)
if ! "${run[@]}" "${extra[@]}" 2>&1 | tee "$log"; then
	rm -f "$out"
	echo "benchmarks failed; no results file written" >&2
	exit 1
fi
t1=$(date +%s)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
{
	echo "# Benchmarks ($kind), $started"
	echo
	echo "Recorded by \`bench/record.sh $kind${extra[*]:+ -- ${extra[*]}}\` (\`cargo ${run[*]:1} ${extra[*]}\`) in $((t1 - t0)) s, build $build."
	echo
	echo "## Machine"
	echo
	echo "- CPU: ${cpu:-unknown}, $(nproc) cores available"
	echo "- kernel: $(uname -r)"
	echo "- rustc: $(rustc --version)"
	echo "- niceness of the run: $(nice)"
	echo "- 1/5/15-minute load average: $load_before before, $load_after after"
	echo "  (more than the core count means other work shared the cores: the machine is shared"
	echo "  with other builds, so these figures are upper bounds for times and lower bounds for"
	echo "  throughputs)"
	echo
	if [ "$kind" != tunnel ]; then
	echo "## Criterion's estimates"
	echo
	echo "Each row: the low end, the estimate and the high end of criterion's confidence interval."
	echo
	echo "| benchmark | time | throughput |"
	echo "|---|---|---|"
	awk '
		function bracket(s) { s = substr(s, index(s, "[") + 1); sub(/\].*/, "", s); return s }
		function flush() { if (t != "") printf "| `%s` | %s | %s |\n", name, t, p; t = ""; p = "" }
		/^Benchmarking|^Found|^Running|^Gnuplot|^WARNING|^Warning/ { next }
		/change:/ { skip = 1; next }
		/^[^ \t]+[ \t]*$/ { flush(); name = $1; skip = 0; next }
		/time:[ \t]*\[/ {
			if ($1 != "time:") { flush(); name = $1; skip = 0; t = bracket($0) }
			else if (!skip) { flush(); t = bracket($0) }
			next
		}
		/thrpt:[ \t]*\[/ { if (!skip) p = bracket($0); next }
		END { flush() }
	' "$log"
	echo
	fi
	echo "## Output"
	echo
	echo '```'
	grep -v -e '^Benchmarking' -e '^ *Compiling' -e '^ *Finished' "$log" || true
	echo '```'
} >"$body"
cat "$body" >>"$out"
echo "wrote $out"
