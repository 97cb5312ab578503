//! How the proxy reaches an origin service: [`TunnelDialer`] through the WireGuard tunnel in
//! production, [`TcpDialer`] over plain TCP in tests and local development.
//!
//! Dial failures are classified once here ([`DialError::status`]) so that the proxy picks the
//! status code in one place. Every one of them is a 503: an origin that refuses a service's
//! port (a TCP reset to the SYN) says the service is down — a Kokoa origin closes the port of a
//! service whose probes fail, and a stock WireGuard host's kernel resets a port nothing listens
//! on — which the proxy answers with its "service down" page ([`DialError::is_service_down`]);
//! an origin that cannot be reached at all (unknown, tunnel timed out or down) means the
//! service is unavailable from this edge. An I/O error of the tunnel itself is a 502.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use kokoa_tunnel::key::PublicKey;
use kokoa_tunnel::{StreamHandle, Tunnel, TunnelError, TunnelStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a connection to an origin service could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// No origin of that name is configured on this edge.
    #[error("unknown origin `{0}`: add it to [[origins]]")]
    UnknownOrigin(String),
    /// The origin answered with a reset: its service on that port is down (its probes fail),
    /// or it does not serve that port.
    #[error("origin `{origin}` refused port {port}: the service is down (see its probes on the origin: kokoa-control origin show, or the origin's log), or not configured on the origin")]
    Refused {
        /// The origin.
        origin: String,
        /// The service port.
        port: u16,
    },
    /// No answer in time: the origin is down, unreachable, or its keys do not match.
    #[error("origin `{origin}` did not answer within {timeout:?}: check that it runs and that the tunnel is up")]
    TimedOut {
        /// The origin.
        origin: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The tunnel cannot open a stream at all (shut down, out of streams or ports).
    #[error("tunnel unavailable toward origin `{origin}`: {reason}")]
    Unavailable {
        /// The origin.
        origin: String,
        /// What the tunnel said.
        reason: String,
    },
    /// Another I/O error.
    #[error("connecting to origin `{origin}`: {source}")]
    Io {
        /// The origin.
        origin: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl DialError {
    /// The status the client gets: 503 when the service is down or the origin could not be
    /// reached, 502 for another I/O error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Io { .. } => StatusCode::BAD_GATEWAY,
            Self::Refused { .. }
            | Self::UnknownOrigin(_)
            | Self::TimedOut { .. }
            | Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the origin said the service is down (it refused the port at once), rather than
    /// being unreachable: the proxy's "service down" page.
    pub fn is_service_down(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// A short label for metrics: `refused`, `timeout`, `unknown_origin`, `unavailable`, `io`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownOrigin(_) => "unknown_origin",
            Self::Refused { .. } => "refused",
            Self::TimedOut { .. } => "timeout",
            Self::Unavailable { .. } => "unavailable",
            Self::Io { .. } => "io",
        }
    }
}

/// How the proxy reaches an origin service: the tunnel in production, plain TCP in unit tests.
pub trait Dialer: Send + Sync + 'static {
    /// The byte stream to the service.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// Opens a connection to `port` on origin `origin`. Resolves once the TCP handshake is
    /// complete or fails; cancelling the future abandons the attempt.
    fn dial(
        &self,
        origin: &str,
        port: u16,
    ) -> impl Future<Output = Result<Self::Stream, DialError>> + Send;

    /// [`Dialer::dial`] on behalf of a client ([`UpstreamClient`]): the tunnel sizes the
    /// stream's buffers from that client's share of the window budget. Plain TCP ignores it.
    fn dial_for(
        &self,
        origin: &str,
        port: u16,
        client: Option<UpstreamClient>,
    ) -> impl Future<Output = Result<Self::Stream, DialError>> + Send {
        let _ = client;
        self.dial(origin, port)
    }

    /// A handle that moves the stream's buffer charge to another client while a pooled
    /// connection changes hands (tunnel streams only).
    fn handle(stream: &Self::Stream) -> Option<StreamHandle> {
        let _ = stream;
        None
    }
}

/// The client a request is forwarded for, as the tunnel's window budget knows it: the client
/// key (address masked with `[limits] ipv4_prefix` / `ipv6_prefix`, as for the limiters). The
/// proxy puts it in the upstream request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamClient(pub u128);

impl UpstreamClient {
    /// The key of `client` under `mask` (IPv4 keys as IPv4-mapped IPv6 addresses).
    pub fn new(mask: crate::limit::KeyMask, client: IpAddr) -> Self {
        let bits = match mask.key(client) {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        UpstreamClient(bits)
    }
}

/// Where an origin is inside the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginTarget {
    /// The origin's WireGuard key.
    pub public_key: PublicKey,
    /// The origin's inner address (`10.100.X.1`).
    pub address: Ipv4Addr,
}

/// Origin name -> tunnel target, swapped as a whole when origins change.
pub type OriginMap = HashMap<String, OriginTarget>;

/// Builds the origin map from the model's origins.
pub fn origin_map(origins: &[kokoa_model::OriginPeer]) -> OriginMap {
    origins
        .iter()
        .map(|origin| {
            (
                origin.name.to_string(),
                OriginTarget {
                    public_key: origin.public_key,
                    address: origin.origin_address.ip(),
                },
            )
        })
        .collect()
}

/// Dials origin services through the userspace WireGuard tunnel.
#[derive(Clone)]
pub struct TunnelDialer {
    tunnel: Tunnel,
    origins: Arc<ArcSwap<OriginMap>>,
    timeout: Duration,
}

impl TunnelDialer {
    /// Dials through `tunnel`; `origins` can be swapped while running.
    pub fn new(tunnel: Tunnel, origins: Arc<ArcSwap<OriginMap>>, timeout: Duration) -> Self {
        Self {
            tunnel,
            origins,
            timeout,
        }
    }
}

impl Dialer for TunnelDialer {
    type Stream = TunnelStream;

    async fn dial(&self, origin: &str, port: u16) -> Result<TunnelStream, DialError> {
        self.dial_for(origin, port, None).await
    }

    fn handle(stream: &TunnelStream) -> Option<StreamHandle> {
        Some(stream.handle())
    }

    async fn dial_for(
        &self,
        origin: &str,
        port: u16,
        client: Option<UpstreamClient>,
    ) -> Result<TunnelStream, DialError> {
        let target = self
            .origins
            .load()
            .get(origin)
            .copied()
            .ok_or_else(|| DialError::UnknownOrigin(origin.to_owned()))?;
        let dst = SocketAddrV4::new(target.address, port);
        self.tunnel
            .connect_for(&target.public_key, dst, self.timeout, client.map(|c| c.0))
            .await
            .map_err(|error| {
                let origin = origin.to_owned();
                match error {
                    TunnelError::UnknownPeer(_) => DialError::UnknownOrigin(origin),
                    TunnelError::Refused => DialError::Refused { origin, port },
                    TunnelError::TimedOut => DialError::TimedOut {
                        origin,
                        timeout: self.timeout,
                    },
                    TunnelError::Io(source) => DialError::Io { origin, source },
                    other => DialError::Unavailable {
                        origin,
                        reason: other.to_string(),
                    },
                }
            })
    }
}

/// Dials origin services over plain TCP: origin name -> IP address, same port. For tests and
/// running an edge next to its apps without a tunnel.
#[derive(Clone, Debug)]
pub struct TcpDialer {
    origins: HashMap<String, IpAddr>,
    timeout: Duration,
}

impl TcpDialer {
    /// Dials `origins[name]:port`, giving up after `timeout`.
    pub fn new(origins: HashMap<String, IpAddr>, timeout: Duration) -> Self {
        Self { origins, timeout }
    }
}

impl Dialer for TcpDialer {
    type Stream = TcpStream;

    async fn dial(&self, origin: &str, port: u16) -> Result<TcpStream, DialError> {
        let ip = *self
            .origins
            .get(origin)
            .ok_or_else(|| DialError::UnknownOrigin(origin.to_owned()))?;
        let connect = TcpStream::connect(SocketAddr::new(ip, port));
        match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => Err(DialError::TimedOut {
                origin: origin.to_owned(),
                timeout: self.timeout,
            }),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(DialError::Refused {
                    origin: origin.to_owned(),
                    port,
                })
            }
            Ok(Err(source)) => Err(DialError::Io {
                origin: origin.to_owned(),
                source,
            }),
            Ok(Ok(stream)) => {
                // Request/response traffic: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_dialer_classifies_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dialer = TcpDialer::new(
            HashMap::from([("home".to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST))]),
            Duration::from_secs(2),
        );
        assert!(dialer.dial("home", port).await.is_ok());
        drop(listener);
        let refused = dialer.dial("home", port).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.is_service_down());
        assert_eq!(refused.reason(), "refused");
        let unknown = dialer.dial("away", port).await.unwrap_err();
        assert_eq!(unknown.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!unknown.is_service_down());
    }
}
