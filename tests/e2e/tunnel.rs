//! The origin as a firewall: only service ports accept streams, and packets whose inner source
//! is outside the sending peer's allowed IPs are dropped. The test itself plays two edge peers,
//! each with its own `kokoa_tunnel::Tunnel`; no `kokoa-edge` is involved.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::config::{OriginEdge, OriginService, OriginSpec};
use kokoa_tests::net::{eventually, free_tcp, free_udp, loopback, metric};
use kokoa_tests::topology::start_origin;
use kokoa_tunnel::key::PrivateKey;
use kokoa_tunnel::{PeerConfig, Tunnel, TunnelConfig, TunnelError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::run_bounded;

const ORIGIN_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
const PROBE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 20);
const SPOOF_CONFIGURED: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 21);
/// What the spoofing peer really uses as its source: not in its allowed IPs at the origin.
const SPOOF_ACTUAL: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 77);

async fn test_peer() -> anyhow::Result<(PrivateKey, Tunnel)> {
    let key = PrivateKey::generate();
    let config = TunnelConfig::new(key.clone(), SocketAddr::new(loopback(3), 0));
    let (tunnel, _incoming) = Tunnel::bind(config).await.context("binding a test peer")?;
    Ok((key, tunnel))
}

#[test]
fn origin_refuses_ports_it_does_not_serve_and_drops_spoofed_sources() {
    run_bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir()?;
        let app = HttpApp::start("only", loopback(1)).await?;
        let (probe_key, probe) = test_peer().await?;
        let (spoof_key, spoof) = test_peer().await?;
        let origin_key = PrivateKey::generate();
        let spec = OriginSpec {
            admin: free_tcp(loopback(11))?,
            address: ORIGIN_ADDRESS,
            private_key: origin_key.clone(),
            listen: free_udp(loopback(11))?,
            drain_timeout: 2,
            tunnel: Default::default(),
            edges: vec![
                OriginEdge {
                    name: "probe".into(),
                    public_key: probe_key.public_key(),
                    endpoint: Some(probe.local_addr()),
                    address: PROBE_ADDRESS,
                },
                OriginEdge {
                    name: "spoof".into(),
                    public_key: spoof_key.public_key(),
                    endpoint: Some(spoof.local_addr()),
                    address: SPOOF_CONFIGURED,
                },
            ],
            services: vec![OriginService {
                name: "web".into(),
                port: 8001,
                local: app.addr,
                health_path: None,
            }],
            checks: String::new(),
        };
        let origin = start_origin(dir.path(), "home", &spec).await?;
        let origin_key = origin_key.public_key();
        let peer = |local_address| PeerConfig {
            public_key: origin_key,
            endpoint: Some(spec.listen),
            allowed_ips: vec![ipnet::Ipv4Net::from(ORIGIN_ADDRESS)],
            local_address,
            persistent_keepalive: None,
        };
        probe.set_peers(vec![peer(PROBE_ADDRESS)]);
        spoof.set_peers(vec![peer(SPOOF_ACTUAL)]);
        let timeout = Duration::from_secs(10);

        // A service port works: a real HTTP exchange with the app behind it.
        let mut stream = probe
            .connect(
                &origin_key,
                SocketAddrV4::new(ORIGIN_ADDRESS, 8001),
                timeout,
            )
            .await
            .with_context(|| format!("connecting to the service port\n{}", origin.logs()))?;
        stream
            .write_all(b"GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .context("no response from the service within 10 s")??;
        ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
        ensure!(response.contains("\"path\":\"/direct\""), "{response}");
        eventually("bridge metrics", Duration::from_secs(5), || async {
            let accepted = metric(
                spec.admin,
                "kokoa_origin_streams_accepted_total{service=\"web\"}",
            )
            .await?;
            ensure!(accepted == Some(1.0), "streams_accepted {accepted:?}");
            let to_local = metric(
                spec.admin,
                "kokoa_origin_bytes_total{service=\"web\",direction=\"to_local\"}",
            )
            .await?;
            ensure!(
                to_local.unwrap_or(0.0) >= 50.0,
                "bytes to_local {to_local:?}"
            );
            Ok(())
        })
        .await?;

        // Any other port is refused with a reset: the app's own port number, the admin port,
        // an arbitrary one. Nothing else on the host is reachable through the tunnel.
        for port in [9999, app.addr.port(), spec.admin.port(), 22] {
            match probe
                .connect(
                    &origin_key,
                    SocketAddrV4::new(ORIGIN_ADDRESS, port),
                    timeout,
                )
                .await
            {
                Err(TunnelError::Refused) => {}
                Err(other) => bail!("port {port}: expected Refused, got {other}"),
                Ok(_) => bail!("port {port} accepted a stream through the tunnel"),
            }
        }

        // Each refused SYN is counted as an unrouted stream (issue 16: it stayed 0).
        eventually(
            "unrouted streams counted",
            Duration::from_secs(5),
            || async {
                let unrouted = metric(spec.admin, "kokoa_origin_streams_unrouted_total").await?;
                ensure!(unrouted == Some(4.0), "streams_unrouted {unrouted:?}");
                Ok(())
            },
        )
        .await?;

        // A peer whose packets carry a source outside its allowed IPs gets nothing, and the
        // origin counts the drops.
        let before = metric(spec.admin, "kokoa_tunnel_dropped_source_total")
            .await?
            .unwrap_or(0.0);
        match spoof
            .connect(
                &origin_key,
                SocketAddrV4::new(ORIGIN_ADDRESS, 8001),
                Duration::from_secs(3),
            )
            .await
        {
            Err(TunnelError::TimedOut) => {}
            Err(other) => bail!("spoofed connect: expected TimedOut, got {other}"),
            Ok(_) => bail!("a spoofed source got a stream through the origin"),
        }
        let after = metric(spec.admin, "kokoa_tunnel_dropped_source_total")
            .await?
            .unwrap_or(0.0);
        ensure!(
            after > before,
            "dropped_source went from {before} to {after}"
        );
        // The spoofing peer did authenticate: the drop is cryptokey routing, not a bad key.
        let handshake = metric(
            spec.admin,
            "kokoa_tunnel_peer_last_handshake_age_seconds{edge=\"spoof\"}",
        )
        .await?;
        ensure!(
            handshake.is_some(),
            "the spoofing peer never completed a handshake"
        );
        Ok(())
    });
}
