#!/bin/sh
# The control-plane flow on one machine, step by step with the CLI, everything on loopback:
# start control, make an origin, a service, an edge and a route, download the two nodes'
# bundles, start the edge and the origin from them (they enroll with control), start a sample
# app, and fetch it through the edge. `kokoa-control dev` does the same in one command; this
# script shows each step an operator takes on real hosts.
#
#   control/examples/quickstart.sh          (kokoa-control, kokoa-edge, kokoa-origin in PATH,
#                                            or KOKOA_BIN_DIR=target/release)
#
# Every process it starts is stopped when it exits (Ctrl-C included); with a terminal it waits
# for Enter first, so you can try more commands (it prints them). Ports (all on 127.0.0.1) can be
# changed with QS_API_PORT, QS_GRPC_PORT, QS_HTTPS_PORT, QS_HTTP_PORT, QS_TUNNEL_PORT,
# QS_ADMIN_PORT (edge; the origin uses the next one) and QS_APP_PORT.
set -eu

bin=${KOKOA_BIN_DIR:+$KOKOA_BIN_DIR/}
for program in kokoa-control kokoa-edge kokoa-origin; do
    if ! command -v "$bin$program" >/dev/null 2>&1; then
        echo "quickstart: $bin$program not found: build with \`cargo build --release\` and set KOKOA_BIN_DIR=target/release, or install the packages" >&2
        exit 1
    fi
done
command -v curl >/dev/null || {
    echo "quickstart: curl is needed" >&2
    exit 1
}

api_port=${QS_API_PORT:-7180}
grpc_port=${QS_GRPC_PORT:-7543}
https_port=${QS_HTTPS_PORT:-8543}
http_port=${QS_HTTP_PORT:-8180}
tunnel_port=${QS_TUNNEL_PORT:-51920}
admin_port=${QS_ADMIN_PORT:-9190}
origin_admin_port=$((admin_port + 1))
app_port=${QS_APP_PORT:-8101}
host=app.quickstart.localhost

work=$(mktemp -d "${TMPDIR:-/tmp}/kokoa-quickstart.XXXXXX")
pids=""
stop() {
    # Stop what this script started, by PID, newest first; then remove its files.
    for pid in $pids; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $pids; do
        wait "$pid" 2>/dev/null || true
    done
    pids=""
    rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM
started() { pids="$1 $pids"; }

wait_for() {
    # wait_for WHAT URL [CURL OPTIONS]: up to 30 s for URL to answer 200.
    what=$1
    url=$2
    shift 2
    tries=0
    until curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -gt 150 ]; then
            echo "quickstart: $what did not come up; logs in $work/*.log:" >&2
            tail -n 20 "$work"/*.log >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

step() { printf '\n== %s\n' "$*"; }

step "1. A master key (seals the WireGuard keys control generates) and control itself"
(umask 077 && head -c 32 /dev/urandom | base64 >"$work/master.key")
"${bin}kokoa-control" serve --data-dir "$work/control" --master-key-file "$work/master.key" \
    --api "127.0.0.1:$api_port" --grpc "127.0.0.1:$grpc_port" --grpc-name 127.0.0.1 \
    --public-url "https://127.0.0.1:$grpc_port" >"$work/control.log" 2>&1 &
started $!
# The dashboard and REST API speak HTTPS with a certificate from control's own CA
# ($work/control/ca.crt, written at start); curl and the CLI (KOKOA_CA_FILE) trust that CA.
wait_for control "https://127.0.0.1:$api_port/healthz" --cacert "$work/control/ca.crt"

step "2. The first API token, made on the database directly"
KOKOA_API_TOKEN=$("${bin}kokoa-control" token create --name admin --data-dir "$work/control" 2>/dev/null)
KOKOA_API_URL=https://127.0.0.1:$api_port
KOKOA_CA_FILE=$work/control/ca.crt
export KOKOA_API_TOKEN KOKOA_API_URL KOKOA_CA_FILE

step "3. An origin, its service (the app on 127.0.0.1:$app_port), an edge, a route"
"${bin}kokoa-control" origin add home
"${bin}kokoa-control" service add home web --port 8001 --local "127.0.0.1:$app_port" --health-path /
"${bin}kokoa-control" edge add vps1 --endpoint "127.0.0.1:$tunnel_port" --origin home
"${bin}kokoa-control" route add "$host" --origin home --service web

step "4. The nodes' bundles (on real hosts: copy each over and run its install.sh)"
"${bin}kokoa-control" bundle edge vps1 -o "$work/vps1.tar.gz"
"${bin}kokoa-control" bundle origin home -o "$work/home.tar.gz"
tar -xzf "$work/vps1.tar.gz" -C "$work"
tar -xzf "$work/home.tar.gz" -C "$work"
# On one machine the nodes listen on loopback ports and keep their state here, not in /var/lib.
edge_dir=$work/kokoa-edge-vps1
origin_dir=$work/kokoa-origin-home
sed -i -e "s|^https = .*|https = \"127.0.0.1:$https_port\"|" \
    -e "s|^http = .*|http = \"127.0.0.1:$http_port\"|" \
    -e "s|^admin = .*|admin = \"127.0.0.1:$admin_port\"|" \
    -e "s|^listen = .*|listen = \"127.0.0.1:$tunnel_port\"|" \
    -e "s|^state_dir = .*|state_dir = \"state\"|" "$edge_dir/edge.toml"
sed -i -e "s|^admin = .*|admin = \"127.0.0.1:$origin_admin_port\"|" \
    -e "s|^listen = .*|listen = \"127.0.0.1:0\"|" \
    -e "s|^state_dir = .*|state_dir = \"state\"|" "$origin_dir/origin.toml"

step "5. The app, the origin and the edge (they enroll with control and take their config)"
"${bin}kokoa-control" sample-app --listen "127.0.0.1:$app_port" >"$work/app.log" 2>&1 &
started $!
"${bin}kokoa-origin" --config "$origin_dir/origin.toml" >"$work/origin.log" 2>&1 &
started $!
"${bin}kokoa-edge" --config "$edge_dir/edge.toml" >"$work/edge.log" 2>&1 &
started $!
wait_for origin "http://127.0.0.1:$origin_admin_port/healthz"
wait_for edge "http://127.0.0.1:$admin_port/healthz"

step "6. The app through the edge (a self-signed placeholder certificate until ACME or an upload gives it one, hence -k)"
wait_for "the route" "https://$host:$https_port/" -k --resolve "$host:$https_port:127.0.0.1"
curl -sS -k --resolve "$host:$https_port:127.0.0.1" "https://$host:$https_port/" | head -n 3
"${bin}kokoa-control" status
echo
echo "quickstart: served https://$host:$https_port/ through edge vps1 and origin home."

if [ -t 0 ]; then
    echo "Try, in another terminal (this control and its token live until you press Enter):"
    echo "  export KOKOA_API_URL=$KOKOA_API_URL KOKOA_CA_FILE=$KOKOA_CA_FILE KOKOA_API_TOKEN=$KOKOA_API_TOKEN"
    echo "  (the dashboard: $KOKOA_API_URL/ after \`${bin}kokoa-control user add NAME --data-dir $work/control\`)"
    echo "  ${bin}kokoa-control route add hello.quickstart.localhost --origin home --service web"
    echo "  curl -k --resolve hello.quickstart.localhost:$https_port:127.0.0.1 https://hello.quickstart.localhost:$https_port/"
    echo "Press Enter to stop everything."
    read -r _
fi
