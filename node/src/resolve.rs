//! Resolving the endpoints the model keeps as written (`host:port`): at the moment they are
//! used, never as part of validating a config, so a name that does not resolve now is a
//! problem of the one peer or service that uses it.

use std::net::SocketAddr;

use kokoa_model::Endpoint;

/// One address for `endpoint`, preferring the IPv4 family when `prefer_ipv4` (so that an IPv4
/// socket gets an address it can reach), else IPv6, else the first the resolver gave.
///
/// Names under `.invalid` never resolve and are answered at once without asking any
/// resolver, as RFC 6761 section 6.4 asks of name resolution libraries.
pub async fn endpoint(endpoint: &Endpoint, prefer_ipv4: bool) -> std::io::Result<SocketAddr> {
    match endpoint {
        Endpoint::Addr(addr) => Ok(*addr),
        Endpoint::Host { host, .. }
            if host.as_str() == "invalid" || host.as_str().ends_with(".invalid") =>
        {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} is under .invalid, which never resolves (RFC 6761)"),
            ))
        }
        Endpoint::Host { host, port } => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port.get()))
                .await?
                .collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4() == prefer_ipv4)
                .or_else(|| addrs.first())
                .copied()
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("host name {host} has no addresses"),
                    )
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_and_localhost() {
        let literal = Endpoint::parse("127.0.0.1:9").unwrap();
        assert_eq!(
            endpoint(&literal, true).await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        let host = Endpoint::parse("localhost:9").unwrap();
        let resolved = endpoint(&host, true).await.unwrap();
        assert!(resolved.ip().is_loopback());
        assert_eq!(resolved.port(), 9);
        let nowhere = Endpoint::parse("nowhere.invalid:9").unwrap();
        assert!(endpoint(&nowhere, true).await.is_err());
    }
}
