#!/usr/bin/env bash
# Installs what `kokoa-bench compare` runs besides Kokoa itself: the contenders (Nginx,
# wireguard-go + wg, onetun), the load generators (wrk, h2load, curl) and the namespace tools.
# Debian/Ubuntu, as root. Optional: linux-perf and valgrind for profiling.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "run as root (apt-get, and compare itself needs network namespaces)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    nginx libnginx-mod-stream wrk nghttp2-client wireguard-go wireguard-tools iproute2 curl util-linux procps

# Contender 4: a userspace WireGuard port forwarder (boringtun + smoltcp) from crates.io.
if ! command -v onetun >/dev/null && [ ! -x "${HOME}/.cargo/bin/onetun" ]; then
    cargo install onetun --locked
fi

# The distribution's nginx service is not used (each run starts its own instances with
# private configs); stop it so it does not hold port 80 or use CPU during a run.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
fi

if [ "${WITH_PROFILERS:-0}" = 1 ]; then
    apt-get install -y --no-install-recommends linux-perf valgrind
fi
echo "ready: cargo run -p kokoa-bench --release -- compare"
