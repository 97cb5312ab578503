//! Active checks of the origin's services: every [`ServiceChecks::interval`] each service of
//! the current table is probed once — an HTTP `GET` of its `health_path` (2xx and 3xx pass) or,
//! without one (or for a `tcp` service), a TCP connect — each probe bounded by
//! [`ServiceChecks::timeout`]. Results go to [`Services::record`], which closes a down
//! service's tunnel port (the edges then answer 503 at once) and reopens it when it passes
//! again; they are counted in `kokoa_origin_service_probes_total` and reported in heartbeats.
//!
//! Bounded: one round at a time (the next starts an interval after the previous one ended),
//! so a service never has two probes in flight, and a round holds at most one connection per
//! service for at most the timeout. An HTTP probe reads at most [`MAX_STATUS_LINE`] bytes of
//! the answer. A new table (a reload, a control snapshot) starts a round at once, so a new
//! service's health is known without waiting an interval.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::{Metrics, ProbeLabels};
use crate::service::{Check, Service, Services};

/// The most an HTTP probe reads of the answer, looking for the status line.
pub const MAX_STATUS_LINE: usize = 1024;

/// Probes every service of `services` until the task is dropped.
pub async fn run(services: Arc<Services>, metrics: Metrics) {
    let checks = *services.checks();
    tracing::info!(
        interval = ?checks.interval(),
        timeout = ?checks.timeout(),
        unhealthy_threshold = checks.unhealthy_threshold.get(),
        healthy_threshold = checks.healthy_threshold.get(),
        "probing services"
    );
    loop {
        round(&services, &metrics).await;
        tokio::select! {
            () = tokio::time::sleep(checks.interval()) => {}
            () = services.changed() => {}
        }
    }
}

/// Probes every service of the current table once, concurrently, and records the results.
pub async fn round(services: &Services, metrics: &Metrics) {
    let table = services.load();
    let timeout = services.checks().timeout();
    let mut probes = tokio::task::JoinSet::new();
    for service in table.iter() {
        let service = service.clone();
        probes.spawn(async move {
            let result = probe(&service, timeout).await;
            (service, result)
        });
    }
    while let Some(joined) = probes.join_next().await {
        let Ok((service, result)) = joined else {
            continue;
        };
        metrics
            .probes
            .get_or_create(&ProbeLabels {
                service: service.name.clone(),
                result: if result.is_ok() { "pass" } else { "fail" },
            })
            .inc();
        if let Err(error) = &result {
            tracing::debug!(service = %service.name, %error, "probe failed");
        }
        services.record(&service, result);
    }
}

/// One probe of `service`, bounded by `timeout` (the lookup of a host name included).
pub async fn probe(service: &Service, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let address = service.resolve().await?;
        match &service.check {
            Check::Tcp => connect(address).await.map(drop),
            Check::Http(path) => http_get(address, &service.local.to_string(), path).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{}: no answer within {} ms",
            service.check_text(),
            timeout.as_millis()
        )),
    }
}

async fn connect(address: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(address)
        .await
        .map_err(|error| format!("connecting to {address}: {error}"))
}

/// `GET path` on a fresh connection; passes on a 2xx or 3xx status line.
async fn http_get(address: SocketAddr, host: &str, path: &str) -> Result<(), String> {
    let mut stream = connect(address).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kokoa-origin-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("sending GET {path} to {address}: {error}"))?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line = loop {
        if let Some(end) = answer.windows(2).position(|w| w == b"\r\n") {
            break String::from_utf8_lossy(&answer[..end]).into_owned();
        }
        if answer.len() >= MAX_STATUS_LINE {
            return Err(format!(
                "GET {path} on {address}: no status line in the first {MAX_STATUS_LINE} bytes"
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|error| format!("reading the answer to GET {path} from {address}: {error}"))?;
        if n == 0 {
            return Err(format!(
                "GET {path} on {address}: the connection closed before a status line"
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
    };
    let status = status_code(&line)
        .ok_or_else(|| format!("GET {path} on {address}: not an HTTP answer ({line:.80})"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} on {address} answered {status}"))
    }
}

/// The status code of an HTTP/1.x status line.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kokoa_model::ServiceChecks;
    use tokio::net::TcpListener;

    use super::*;
    use crate::service::{PortGate, ServiceTable};

    fn service(port: u16, local: SocketAddr, health_path: Option<&str>) -> kokoa_model::Service {
        let mut text = format!("name = \"s{port}\"\nport = {port}\nlocal = \"{local}\"\n");
        if let Some(path) = health_path {
            text.push_str(&format!("health_path = \"{path}\"\n"));
        }
        kokoa_model::from_toml(&text).unwrap()
    }

    /// An app that answers every connection with `status_line` once, or says nothing at all.
    async fn app(status_line: Option<&'static str>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&request[..n]).into_owned();
                    match status_line {
                        Some(line) => {
                            assert!(
                                request.starts_with("GET /healthz HTTP/1.1\r\n"),
                                "{request}"
                            );
                            let _ = stream
                                .write_all(
                                    format!("{line}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                                )
                                .await;
                        }
                        // Hold the connection without answering.
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn http_and_tcp_probes_judge_by_status_connect_and_time() {
        let timeout = Duration::from_millis(500);
        for (line, pass) in [
            ("HTTP/1.1 200 OK", true),
            ("HTTP/1.1 204 No Content", true),
            ("HTTP/1.0 302 Found", true),
            ("HTTP/1.1 404 Not Found", false),
            ("HTTP/1.1 503 Service Unavailable", false),
            ("SSH-2.0-OpenSSH_9.2", false),
        ] {
            let (addr, task) = app(Some(line)).await;
            let s = Service::new(&service(1, addr, Some("/healthz")));
            let result = probe(&s, timeout).await;
            assert_eq!(result.is_ok(), pass, "{line}: {result:?}");
            if let Err(error) = result {
                assert!(error.contains(&addr.to_string()), "{error}");
            }
            task.abort();
        }
        // An app that accepts but never answers fails by the timeout.
        let (addr, task) = app(None).await;
        let s = Service::new(&service(1, addr, Some("/healthz")));
        let error = probe(&s, Duration::from_millis(200)).await.unwrap_err();
        assert!(error.contains("no answer within 200 ms"), "{error}");
        // Without a health path the probe is a connect: the silent app passes.
        let s = Service::new(&service(1, addr, None));
        assert_eq!(probe(&s, timeout).await, Ok(()));
        task.abort();
        // Nobody listening: refused.
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let s = Service::new(&service(1, closed, None));
        let error = probe(&s, timeout).await.unwrap_err();
        assert!(
            error.contains(&format!("connecting to {closed}")),
            "{error}"
        );
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<u16>>>);

    impl PortGate for Recorder {
        fn set_accept_ports(&self, ports: Vec<u16>) {
            *self.0.lock().unwrap() = ports;
        }
    }

    #[tokio::test]
    async fn rounds_take_a_down_service_out_and_put_it_back() {
        let (up, task) = app(Some("HTTP/1.1 200 OK")).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flaky = listener.local_addr().unwrap();
        let checks: ServiceChecks =
            kokoa_model::from_toml("unhealthy_threshold = 2\nhealthy_threshold = 1").unwrap();
        let services = Services::with_checks(ServiceTable::default(), checks);
        let gate = Recorder::default();
        services.replace(
            ServiceTable::new(
                &[service(80, up, Some("/healthz")), service(81, flaky, None)],
                &ServiceTable::default(),
            ),
            &gate,
        );
        let metrics = Metrics::default();
        round(&services, &metrics).await;
        assert_eq!(*gate.0.lock().unwrap(), vec![80, 81]);
        drop(listener);
        round(&services, &metrics).await;
        assert_eq!(
            *gate.0.lock().unwrap(),
            vec![80, 81],
            "one failure is not down"
        );
        round(&services, &metrics).await;
        assert_eq!(*gate.0.lock().unwrap(), vec![80], "two are");
        let health = services.health();
        assert!(health[0].healthy);
        assert!(!health[1].healthy);
        assert!(health[1].error.contains("connecting to"), "{:?}", health[1]);
        // The app comes back on the same port: the next round reopens it.
        let _listener = TcpListener::bind(flaky).await.unwrap();
        round(&services, &metrics).await;
        assert_eq!(*gate.0.lock().unwrap(), vec![80, 81]);
        let fail = metrics
            .probes
            .get_or_create(&ProbeLabels {
                service: "s81".into(),
                result: "fail",
            })
            .get();
        assert_eq!(fail, 2);
        task.abort();
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 301 Moved"), Some(301));
        assert_eq!(status_code("HTTP/1.1 200"), Some(200));
        assert_eq!(status_code("HTTP/2 200"), None);
        assert_eq!(status_code("HTTP/1.1 2000 OK"), None);
        assert_eq!(status_code("HTTP/1.1 099 x"), None);
        assert_eq!(status_code(""), None);
    }
}
