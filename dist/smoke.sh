#!/usr/bin/env bash
# Runs built Kokoa programs end to end on loopback: the check a release artifact passes before it
# ships, on any architecture this machine can execute (aarch64 through qemu-user).
#
#   dist/smoke.sh [--bin DIR] [--port-base N] [--record]
#
# DIR holds kokoa-control, kokoa-edge and kokoa-origin (default: dist/build.sh's x86_64 stage,
# target/dist/stage/x86_64-unknown-linux-musl/bin). The script prints each program's --version,
# starts `kokoa-control dev` from DIR in a fresh directory (control with SQLite, the edge and
# origin from DIR enrolled through it, the sample app) on 127.0.0.1 ports N..N+8 (default
# 27080), and checks what a user sees: the app served through edge -> WireGuard -> origin over
# HTTP/1.1 and HTTP/2, a route added with the CLI and served, the origin's key rotated with the
# route still served, then Ctrl-C (SIGINT) stops every process dev started. Each wait is bounded
# (120 s for the first answer, 60 s for the others). Exit 0 only if every step passed.
#
# A program for another architecture needs qemu-user-static (Debian) and its binfmt handler; as
# root the script registers the handler from /usr/lib/binfmt.d when the kernel has none, since dev
# starts the edge and origin as ordinary programs. --record writes the report to
# bench/results/DATE-COMMIT-smoke-TRIPLE.md (a new name if that exists). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

die() {
    echo "dist/smoke.sh: $*" >&2
    exit 1
}

bin=$repo/target/dist/stage/x86_64-unknown-linux-musl/bin
base=27080
record=0
while [ $# -gt 0 ]; do
    case $1 in
    --bin)
        [ $# -ge 2 ] || die "--bin needs a directory"
        bin=$2
        shift
        ;;
    --port-base)
        [ $# -ge 2 ] || die "--port-base needs a port number"
        base=$2
        shift
        ;;
    --record) record=1 ;;
    -h | --help)
        sed -n '2,20p' "$0"
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
bin=$(cd "$bin" && pwd) || die "no directory $bin"
for program in kokoa-control kokoa-edge kokoa-origin; do
    [ -x "$bin/$program" ] || die "$bin/$program is missing (run dist/build.sh first)"
done
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
command -v pgrep >/dev/null || die "pgrep not found (apt-get install procps)"

# An ELF for another machine: make sure the kernel can hand it to qemu-user.
machine_of() {
    # The ELF e_machine field, as the name `uname -m` uses.
    case $(od -An -t x2 -j 18 -N 2 "$1" | tr -d ' ') in
    003e) echo x86_64 ;;
    00b7) echo aarch64 ;;
    *) echo unknown ;;
    esac
}
arch=$(machine_of "$bin/kokoa-control")
emulated=no
if [ "$arch" != "$(uname -m)" ]; then
    emulated="yes (qemu-user, $(uname -m) host)"
    if ! "$bin/kokoa-control" --version >/dev/null 2>&1; then
        conf=/usr/lib/binfmt.d/qemu-$arch.conf
        [ -f "$conf" ] || die "cannot run $arch programs here: apt-get install qemu-user-static"
        [ "$(id -u)" = 0 ] || die "cannot run $arch programs: the qemu-$arch binfmt handler is not registered (as root: systemd-binfmt, or rerun this script)"
        [ -e /proc/sys/fs/binfmt_misc/register ] ||
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        [ -e "/proc/sys/fs/binfmt_misc/qemu-$arch" ] ||
            grep -v '^#' "$conf" >/proc/sys/fs/binfmt_misc/register
        "$bin/kokoa-control" --version >/dev/null 2>&1 ||
            die "$arch programs still do not run after registering qemu-$arch"
    fi
fi

dir=$(mktemp -d /tmp/kokoa-smoke.XXXXXX)
report=$dir/report.md
dev_pid=
cleanup() {
    if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
        kill -INT "$dev_pid" 2>/dev/null || true
        for _ in $(seq 1 20); do
            kill -0 "$dev_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$dev_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

api=$base grpc=$((base + 1)) https=$((base + 2)) http=$((base + 3)) tunnel=$((base + 4))
admin=$((base + 5)) app=$((base + 7))
started=$(date +%s.%N)
since() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { echo "- $* ($(since) s)" | tee -a "$report"; }
fail() {
    echo "- FAILED: $* ($(since) s)" | tee -a "$report"
    echo "dev's output (last 30 lines):" >&2
    tail -n 30 "$dir/dev.log" >&2 || true
    for log in "$dir"/state/logs/*; do
        [ -f "$log" ] || continue
        echo "== $log (last 15 lines)" >&2
        tail -n 15 "$log" >&2
    done
    echo "dist/smoke.sh: everything this run wrote is kept in $dir" >&2
    exit 1
}

# serve HOST VERSION: the HTTP status of GET / on HOST through the edge, "000" if none.
serve() {
    curl -s -o "$dir/body" -w '%{http_code}' --max-time 10 "--$2" \
        --cacert "$dir/state/dev-ca.pem" --resolve "$1:$https:127.0.0.1" "https://$1:$https/" || true
}
# wait_served HOST SECONDS: until HOST answers 200 with the sample app's greeting.
wait_served() {
    local deadline=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if [ -f "$dir/state/dev-ca.pem" ] && [ "$(serve "$1" http1.1)" = 200 ] &&
            grep -q "Hello from the Kokoa sample app" "$dir/body"; then
            return 0
        fi
        kill -0 "$dev_pid" 2>/dev/null || fail "kokoa-control dev exited early"
        sleep 0.5
    done
    return 1
}

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
{
    echo "# Smoke run of the built programs"
    echo
    echo "\`dist/smoke.sh --bin $(realpath --relative-to="$repo" "$bin" 2>/dev/null || echo "$bin")\`"
    echo "on $(date -u +%F) at commit $commit; programs for $arch, emulated: $emulated."
    echo
    for program in kokoa-control kokoa-edge kokoa-origin; do
        echo "    $("$bin/$program" --version)"
    done
    echo
} >"$report"
cat "$report"
triple=$("$bin/kokoa-control" --version | sed -n 's/.*, \([a-z0-9_]*-[a-z0-9_-]*\))$/\1/p')

"$bin/kokoa-control" dev --dir "$dir/state" --api-port "$api" --grpc-port "$grpc" \
    --https-port "$https" --http-port "$http" --tunnel-port "$tunnel" --admin-port "$admin" \
    --app-port "$app" >"$dir/dev.log" 2>&1 &
dev_pid=$!
step "started \`kokoa-control dev\` (pid $dev_pid) on 127.0.0.1:$api..$app"

wait_served app.kokoa.localhost 120 || fail "app.kokoa.localhost not served within 120 s"
step "app.kokoa.localhost served over HTTP/1.1 through edge -> WireGuard -> origin -> app"
[ "$(serve app.kokoa.localhost http2)" = 200 ] || fail "app.kokoa.localhost not served over HTTP/2"
step "app.kokoa.localhost served over HTTP/2"

export KOKOA_API_URL=http://127.0.0.1:$api
KOKOA_API_TOKEN=$(cat "$dir/state/api-token")
export KOKOA_API_TOKEN
"$bin/kokoa-control" route add hello.kokoa.localhost --origin home --service sample-app \
    >"$dir/route.log" 2>&1 || fail "route add: $(cat "$dir/route.log")"
wait_served hello.kokoa.localhost 60 || fail "the new route was not served within 60 s"
step "\`route add hello.kokoa.localhost\` through the CLI, then served"

"$bin/kokoa-control" origin rotate-key home >"$dir/rotate.log" 2>&1 ||
    fail "origin rotate-key: $(cat "$dir/rotate.log")"
wait_served hello.kokoa.localhost 60 || fail "not served after the origin's key rotation"
"$bin/kokoa-control" status >"$dir/status.log" 2>&1 || fail "status: $(cat "$dir/status.log")"
step "\`origin rotate-key home\`, hello.kokoa.localhost still served; \`status\` answers"

kill -INT "$dev_pid"
stopped=no
for _ in $(seq 1 60); do
    if ! kill -0 "$dev_pid" 2>/dev/null; then
        stopped=yes
        break
    fi
    sleep 0.5
done
[ "$stopped" = yes ] || fail "dev did not stop within 30 s of SIGINT"
code=0
wait "$dev_pid" || code=$?
dev_pid=
[ "$code" = 0 ] || fail "dev exited with status $code after SIGINT"
left=$(pgrep -f "$dir/state" || true)
[ -z "$left" ] || fail "processes left behind after dev stopped: $left"
step "SIGINT: dev stopped with status 0 and left no process behind"
echo | tee -a "$report"
echo "Passed." | tee -a "$report"

if [ "$record" = 1 ]; then
    name=bench/results/$(date -u +%F)-$commit-smoke-$triple
    target=$name.md
    n=2
    while [ -e "$target" ]; do
        target=$name-$n.md
        n=$((n + 1))
    done
    cp "$report" "$target"
    echo "recorded $target"
fi
rm -rf "$dir"
