//! Loopback ports, admin probes and bounded waiting.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::Process;

/// A loopback address of the 127.0.0.0/8 block (`127.0.0.x`).
pub fn loopback(x: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))
}

/// A TCP port on `ip` that was free a moment ago (bound to :0 and released) and that this
/// process has not handed out before.
pub fn free_tcp(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    fresh(|| {
        let listener = std::net::TcpListener::bind((ip, 0)).context("binding a probe TCP port")?;
        listener.local_addr().context("reading the probe port")
    })
}

/// A UDP port on `ip` that was free a moment ago and that this process has not handed out before.
pub fn free_udp(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    fresh(|| {
        let socket = std::net::UdpSocket::bind((ip, 0)).context("binding a probe UDP port")?;
        socket.local_addr().context("reading the probe port")
    })
}

/// Probes until the kernel offers a port number this process has not handed out yet.
///
/// A probe socket is released before the port is used, so the kernel may offer the same
/// ephemeral port to the next probe: two listeners of one topology (an edge's HTTPS and admin
/// ports, say) would then collide. Remembering every port handed out rules that out within a
/// test binary; across binaries the ports are used one binary at a time.
pub(crate) fn fresh(
    mut probe: impl FnMut() -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<SocketAddr> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let addr = probe()?;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.insert(addr.port()) {
            return Ok(addr);
        }
    }
    bail!("no port left that this process has not handed out already")
}

/// Retries `attempt` until it returns `Ok` or `timeout` passes; the error of the last attempt is
/// returned then. Waits `interval`-ish between attempts (never a fixed sleep as a readiness
/// guess: each attempt checks the real condition).
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(left.max(Duration::from_millis(10)), attempt()).await;
        match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if Instant::now() >= deadline => {
                return Err(error.context(format!("{what}: still failing after {timeout:?}")))
            }
            Err(_) => bail!("{what}: not done after {timeout:?}"),
            Ok(Err(_)) => {}
        }
        tokio::time::sleep(interval.min(deadline.saturating_duration_since(Instant::now()))).await;
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// A minimal HTTP/1.1 GET over plain TCP (for admin endpoints): status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status: u16 = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no HTTP status in {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
}

/// Waits until `GET /healthz` on `admin` answers 200, failing early if `process` exits.
pub async fn wait_healthy(process: &mut Process, admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        process.check_running()?;
        match http_get(admin, "/healthz").await {
            Ok((200, _)) => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Ok((status, body)) => bail!(
                "{} /healthz answers {status} {body}\n{}",
                process.name(),
                process.logs()
            ),
            Err(error) => {
                return Err(error.context(format!(
                    "{} never answered /healthz on {admin}\n{}",
                    process.name(),
                    process.logs()
                )))
            }
        }
    }
}

/// Scrapes `/metrics` and sums every sample whose name (with labels) starts with `prefix`.
/// `None` when no sample matches.
pub async fn metric(admin: SocketAddr, prefix: &str) -> anyhow::Result<Option<f64>> {
    let (status, body) = http_get(admin, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(sum_metric(&body, prefix))
}

/// Sums the samples of a Prometheus text body whose series starts with `prefix`.
pub fn sum_metric(body: &str, prefix: &str) -> Option<f64> {
    let mut found = None;
    for line in body.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let rest = &line[prefix.len()..];
        // `prefix` must end the name or be followed by labels.
        if !(rest.starts_with(' ') || rest.starts_with('{') || prefix.ends_with('{')) {
            continue;
        }
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// A TCP connection to `addr` from the loopback address `127.0.0.x`.
pub async fn connect_from(x: u8, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(loopback(x), 0))?;
    socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting from 127.0.0.{x} to {addr}"))
}

/// Waits for the peer to end a connection we send nothing on: `Ok(how)` with `EOF` or the
/// read error, or an error if it stays open for `limit` or sends data.
pub async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<String> {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => bail!("still open after {limit:?}"),
        Ok(Ok(0)) => Ok("EOF".into()),
        Ok(Ok(n)) => bail!("sent {n} bytes instead of closing: {:?}", &buf[..n]),
        Ok(Err(error)) => Ok(error.to_string()),
    }
}

/// Connects from 127.0.0.`x` to `addr` and sends nothing: `Ok(how)` if the edge ends the
/// connection within `limit` of the connect, an error if it stays open. The edge resets refused
/// connections (zero linger), which can be so quick that `connect` itself reports the reset.
pub async fn refused_at_accept(x: u8, addr: SocketAddr, limit: Duration) -> anyhow::Result<String> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(loopback(x), 0))?;
    match socket.connect(addr).await {
        Ok(mut stream) => wait_closed(&mut stream, limit).await,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
            Ok(format!("reset during connect: {error}"))
        }
        Err(error) => Err(error).with_context(|| format!("connecting from 127.0.0.{x} to {addr}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series() {
        let body = "# HELP x\nx_total 3\nx_total_other 9\ny{a=\"1\"} 2\ny{a=\"2\"} 5\n# EOF\n";
        assert_eq!(sum_metric(body, "x_total"), Some(3.0));
        assert_eq!(sum_metric(body, "y"), Some(7.0));
        assert_eq!(sum_metric(body, "y{a=\"2\"}"), Some(5.0));
        assert_eq!(sum_metric(body, "z"), None);
    }

    #[test]
    fn a_port_is_never_handed_out_twice() {
        // The kernel may offer a just-released port again; the second offer must be skipped.
        let offers = [7, 7, 7, 9];
        let mut next = offers.iter();
        let mut probe = || {
            let port = *next.next().expect("more offers than expected");
            Ok(SocketAddr::new(loopback(1), port))
        };
        assert_eq!(fresh(&mut probe).unwrap().port(), 7);
        assert_eq!(fresh(&mut probe).unwrap().port(), 9);
        // Real probes: many ports in a row, all distinct.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            assert!(seen.insert(free_tcp(loopback(1)).unwrap().port()));
            assert!(seen.insert(free_udp(loopback(1)).unwrap().port()));
        }
    }
}
