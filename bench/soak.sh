#!/bin/sh
# Soak run (issue 16): 30 minutes (KOKOA_SOAK_SECS) of mixed load -- HTTP/1.1, HTTP/2,
# WebSocket, bulk -- through kokoa-control + kokoa-edge + kokoa-origin on loopback, while
# control, the origin and the edge restart and the origin's and edge's keys rotate, one
# disruption every KOKOA_SOAK_PERIOD seconds (default 60). Reports failed requests per cause and
# every process's RSS every 10 s in bench/results/<UTC date>-<build>-soak.md. Not run by CI.
#
#   bench/soak.sh                          # build release binaries, then 30 minutes
#   KOKOA_SOAK_SECS=300 bench/soak.sh      # a shorter run, labelled as such in its file
#   KOKOA_BIN_DIR=/tmp/bins KOKOA_BUILD=abc1234 bench/soak.sh   # measure other binaries
#
# The harness (benches/soak.rs) is built in the dev profile; the binaries it measures are the
# release ones unless KOKOA_BIN_DIR says otherwise.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${KOKOA_BIN_DIR:-}" ]; then
    nice -n 10 cargo build --release -p kokoa-edge -p kokoa-origin -p kokoa-control
    KOKOA_BIN_DIR=$root/target/release
    export KOKOA_BIN_DIR
fi
KOKOA_TEST_LOG=${KOKOA_TEST_LOG:-warn}
export KOKOA_TEST_LOG
exec nice -n 10 cargo bench --profile dev -p kokoa-bench --bench soak
