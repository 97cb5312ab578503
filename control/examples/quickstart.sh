#!/bin/sh
# Control-plane quickstart: publish 127.0.0.1:8001 on an origin host as app.example.com through
# one edge. Run on the control host; each step is one CLI call against the REST API.
set -eu

DATA=${KOKOA_DATA_DIR:-./kokoa-data}
EDGE_ENDPOINT=${EDGE_ENDPOINT:-198.51.100.7:51820}   # the edge VPS's public IP and WireGuard port

# 1. A master key (seals the WireGuard keys control generates). Keep a backup.
[ -f master.key ] || (umask 077 && head -c 32 /dev/urandom | base64 > master.key)

# 2. Start control (dashboard and REST API on https://127.0.0.1:7080, gRPC on :7443). Both
#    use certificates from control's own CA, $DATA/ca.crt: the CLI trusts it through
#    KOKOA_CA_FILE.
kokoa-control serve --data-dir "$DATA" --master-key-file master.key \
    --public-url "https://$(hostname -f):7443" --grpc-name "$(hostname -f)" &
until [ -f "$DATA/ca.crt" ] && curl -fs --cacert "$DATA/ca.crt" https://127.0.0.1:7080/healthz >/dev/null; do sleep 0.2; done
export KOKOA_CA_FILE="$DATA/ca.crt"

# 3. The first API token, straight from the database.
KOKOA_API_TOKEN=$(kokoa-control token create --name admin --data-dir "$DATA")
export KOKOA_API_TOKEN

# 4. Origin, service, edge, route.
kokoa-control origin add home
kokoa-control service add home web --port 8001 --local 127.0.0.1:8001 --health-path /
kokoa-control edge add vps1 --endpoint "$EDGE_ENDPOINT" --origin home
kokoa-control route add app.example.com --origin home --service web --alias www.example.com
kokoa-control route list

# 5. Bundles: copy each to its host, unpack, `sudo ./install.sh`.
kokoa-control bundle origin home -o home.tar.gz
kokoa-control bundle edge vps1 -o vps1.tar.gz

# 6. Watch the nodes enroll and apply the config.
kokoa-control status
