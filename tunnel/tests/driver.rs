//! The tokio driver end to end: two `Tunnel`s on 127.0.0.1 talking real WireGuard over UDP.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use kokoa_tunnel::{
    Incoming, IncomingStream, PeerConfig, PrivateKey, Tunnel, TunnelConfig, TunnelError,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An origin (10.100.N.1, accepts `ports`) and the edge peer config pointing at it.
async fn origin(
    n: u8,
    edge_key: &PrivateKey,
    ports: Vec<u16>,
) -> Result<(Tunnel, Incoming, PeerConfig)> {
    let key = PrivateKey::generate();
    let mut c = TunnelConfig::new(key.clone(), loopback());
    c.accept_ports = ports;
    c.peers = vec![PeerConfig {
        public_key: edge_key.public_key(),
        endpoint: None,
        allowed_ips: vec![format!("10.100.{n}.10/32").parse()?],
        local_address: ip(&format!("10.100.{n}.1")),
        persistent_keepalive: None,
    }];
    let (t, inc) = Tunnel::bind(c).await?;
    let peer = PeerConfig {
        public_key: key.public_key(),
        endpoint: Some(t.local_addr()),
        allowed_ips: vec![format!("10.100.{n}.1/32").parse()?],
        local_address: ip(&format!("10.100.{n}.10")),
        persistent_keepalive: None,
    };
    Ok((t, inc, peer))
}

async fn edge(key: PrivateKey, peers: Vec<PeerConfig>) -> Result<Tunnel> {
    let mut c = TunnelConfig::new(key, loopback());
    c.peers = peers;
    Ok(Tunnel::bind(c).await?.0)
}

/// Echoes every accepted stream until EOF, then half-closes.
fn echo_server(mut inc: Incoming) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(IncomingStream { mut stream, .. }) = inc.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    })
}

fn dst(n: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip(&format!("10.100.{n}.1")), port)
}

#[tokio::test]
async fn echo_round_trip_and_incoming_metadata() -> Result<()> {
    let ek = PrivateKey::generate();
    let (o, mut inc, peer) = origin(1, &ek, vec![80]).await?;
    let e = edge(ek.clone(), vec![peer.clone()]).await?;
    let mut s = e.connect(&peer.public_key, dst(1, 80), T).await?;
    assert_eq!(s.remote_addr(), dst(1, 80));
    assert_eq!(*s.local_addr().ip(), ip("10.100.1.10"));
    assert_eq!(s.peer(), o.public_key());
    let inc_stream = timeout(T, inc.accept()).await?.context("accept")?;
    assert_eq!(inc_stream.local_port, 80);
    assert_eq!(inc_stream.peer, ek.public_key());
    assert_eq!(inc_stream.remote, s.local_addr());
    let mut server = inc_stream.stream;
    s.write_all(b"hello through the tunnel").await?;
    let mut buf = [0u8; 24];
    server.read_exact(&mut buf).await?;
    server.write_all(&buf).await?;
    let mut back = [0u8; 24];
    timeout(T, s.read_exact(&mut back)).await??;
    assert_eq!(&back, b"hello through the tunnel");
    let stats = e.stats();
    assert!(stats.handshakes_completed >= 1);
    assert_eq!(stats.active_streams, 1);
    assert_eq!(stats.peers[0].endpoint, Some(o.local_addr()));
    assert!(stats.peers[0].last_handshake.is_some());
    Ok(())
}

#[tokio::test]
async fn half_close_still_reads_reply() -> Result<()> {
    let ek = PrivateKey::generate();
    let (_o, mut inc, peer) = origin(1, &ek, vec![80]).await?;
    let e = edge(ek, vec![peer.clone()]).await?;
    let server = tokio::spawn(async move {
        let mut st = inc.accept().await.context("accept")?.stream;
        let mut req = Vec::new();
        st.read_to_end(&mut req).await?; // ends at the client's FIN
        st.write_all(format!("got {} bytes", req.len()).as_bytes())
            .await?;
        st.shutdown().await?;
        anyhow::Ok(())
    });
    let mut s = e.connect(&peer.public_key, dst(1, 80), T).await?;
    s.write_all(&[7u8; 5000]).await?;
    s.shutdown().await?;
    let mut reply = String::new();
    timeout(T, s.read_to_string(&mut reply)).await??;
    assert_eq!(reply, "got 5000 bytes");
    assert!(
        s.write_all(b"x").await.is_err(),
        "writing after shutdown must fail"
    );
    timeout(T, server).await???;
    Ok(())
}

#[tokio::test]
async fn sixty_four_concurrent_streams() -> Result<()> {
    let ek = PrivateKey::generate();
    let (_o, inc, peer) = origin(1, &ek, vec![80]).await?;
    let _srv = echo_server(inc);
    let e = edge(ek, vec![peer.clone()]).await?;
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let e = e.clone();
        let key = peer.public_key;
        tasks.push(tokio::spawn(async move {
            let mut s = e.connect(&key, dst(1, 80), T).await?;
            let data: Vec<u8> = (0..64 * 1024u32)
                .map(|j| (j.wrapping_mul(31) ^ i) as u8)
                .collect();
            let (mut r, mut w) = tokio::io::split(&mut s);
            let send = async {
                w.write_all(&data).await?;
                w.shutdown().await?;
                anyhow::Ok(())
            };
            let mut back = Vec::new();
            let recv = async {
                r.read_to_end(&mut back).await?;
                anyhow::Ok(())
            };
            tokio::try_join!(send, recv)?;
            if back != data {
                bail!("stream {i}: echo mismatch ({} bytes back)", back.len());
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(20), t).await???;
    }
    Ok(())
}

#[tokio::test]
async fn sixteen_mib_each_way_with_checksum() -> Result<()> {
    const LEN: usize = 16 << 20;
    let ek = PrivateKey::generate();
    let (_o, mut inc, peer) = origin(1, &ek, vec![80]).await?;
    let e = edge(ek, vec![peer.clone()]).await?;
    let data: Vec<u8> = (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = Sha256::digest(&data);
    let server_data = data.clone();
    let server = tokio::spawn(async move {
        let st = inc.accept().await.context("accept")?.stream;
        let (mut r, mut w) = tokio::io::split(st);
        let up = async {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0;
            loop {
                let k = r.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                n += k;
                h.update(&buf[..k]);
            }
            anyhow::Ok((n, h.finalize()))
        };
        let down = async {
            w.write_all(&server_data).await?;
            w.shutdown().await?;
            anyhow::Ok(())
        };
        let (up, ()) = tokio::try_join!(up, down)?;
        anyhow::Ok(up)
    });
    let s = e.connect(&peer.public_key, dst(1, 80), T).await?;
    let (mut r, mut w) = tokio::io::split(s);
    let send = async {
        w.write_all(&data).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    };
    let recv = async {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            let k = r.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k;
            h.update(&buf[..k]);
        }
        anyhow::Ok((n, h.finalize()))
    };
    let started = std::time::Instant::now();
    let ((), (n, got)) = timeout(Duration::from_secs(30), async {
        tokio::try_join!(send, recv)
    })
    .await??;
    let (up_n, up_hash) = timeout(T, server).await???;
    eprintln!("16 MiB each way in {:?}", started.elapsed());
    assert_eq!(n, LEN);
    assert_eq!(got, want);
    assert_eq!(up_n, LEN);
    assert_eq!(up_hash, want);
    Ok(())
}

#[tokio::test]
async fn connect_errors() -> Result<()> {
    let ek = PrivateKey::generate();
    let (_o, inc, peer) = origin(1, &ek, vec![80]).await?;
    let _srv = echo_server(inc);
    // A peer whose endpoint answers nothing: no handshake, so the connect times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let ghost = PeerConfig {
        public_key: PrivateKey::generate().public_key(),
        endpoint: Some(silent.local_addr()?),
        allowed_ips: vec!["10.100.2.1/32".parse()?],
        local_address: ip("10.100.2.10"),
        persistent_keepalive: None,
    };
    let e = edge(ek, vec![peer.clone(), ghost.clone()]).await?;

    let unknown = PrivateKey::generate().public_key();
    match e.connect(&unknown, dst(1, 80), T).await {
        Err(TunnelError::UnknownPeer(k)) => assert_eq!(k, unknown),
        other => bail!("expected UnknownPeer, got {other:?}"),
    }
    match e.connect(&peer.public_key, dst(1, 81), T).await {
        Err(TunnelError::Refused) => {}
        other => bail!("expected Refused, got {other:?}"),
    }
    let started = std::time::Instant::now();
    match e
        .connect(&ghost.public_key, dst(2, 80), Duration::from_millis(500))
        .await
    {
        Err(TunnelError::TimedOut) => {}
        other => bail!("expected TimedOut, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // The tunnel still works after the failures, and they left no streams behind.
    let mut s = e.connect(&peer.public_key, dst(1, 80), T).await?;
    s.write_all(b"ping").await?;
    let mut b = [0u8; 4];
    timeout(T, s.read_exact(&mut b)).await??;
    assert_eq!(&b, b"ping");
    assert_eq!(e.stats().active_streams, 1);
    Ok(())
}

#[tokio::test]
async fn removing_a_peer_resets_its_streams_and_keeps_the_others() -> Result<()> {
    let ek = PrivateKey::generate();
    let (_o1, inc1, p1) = origin(1, &ek, vec![80]).await?;
    let (_o2, inc2, p2) = origin(2, &ek, vec![80]).await?;
    let _s1 = echo_server(inc1);
    let _s2 = echo_server(inc2);
    let e = edge(ek, vec![p1.clone(), p2.clone()]).await?;
    let mut a = e.connect(&p1.public_key, dst(1, 80), T).await?;
    let mut b = e.connect(&p2.public_key, dst(2, 80), T).await?;
    for s in [&mut a, &mut b] {
        s.write_all(b"abc").await?;
        let mut x = [0u8; 3];
        timeout(T, s.read_exact(&mut x)).await??;
    }
    e.set_peers(vec![p2.clone()]);
    let mut x = [0u8; 3];
    let err = timeout(T, a.read(&mut x))
        .await?
        .expect_err("stream of a removed peer must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    b.write_all(b"def").await?;
    timeout(T, b.read_exact(&mut x)).await??;
    assert_eq!(&x, b"def");
    assert!(matches!(
        e.connect(&p1.public_key, dst(1, 80), T).await,
        Err(TunnelError::UnknownPeer(_))
    ));
    assert_eq!(e.stats().peers.len(), 1);
    Ok(())
}

#[tokio::test]
async fn shutdown_fails_streams_and_ends_accept() -> Result<()> {
    let ek = PrivateKey::generate();
    let (o, mut inc, peer) = origin(1, &ek, vec![80]).await?;
    let e = edge(ek, vec![peer.clone()]).await?;
    let mut s = e.connect(&peer.public_key, dst(1, 80), T).await?;
    let mut server = timeout(T, inc.accept()).await?.context("accept")?.stream;
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 8];
        server.read(&mut b).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    o.shutdown();
    let r = timeout(T, reader).await??;
    assert!(r.is_err(), "a blocked read must fail on shutdown: {r:?}");
    assert!(timeout(T, inc.accept()).await?.is_none());
    assert!(matches!(
        o.connect(&ek_pub(&e), SocketAddrV4::new(ip("10.100.1.10"), 1), T)
            .await,
        Err(TunnelError::Closed)
    ));
    // The edge side sees nothing more; its stream is still usable locally.
    let _ = s.write_all(b"late").await;
    Ok(())
}

fn ek_pub(e: &Tunnel) -> kokoa_tunnel::PublicKey {
    e.public_key()
}

#[tokio::test]
async fn origin_behind_nat_dials_out_and_edge_connects_back() -> Result<()> {
    // The edge does not know the origin's address; the origin knows the edge's and keeps the
    // path open with persistent keepalive, as a home origin behind NAT does.
    let (ek, ok) = (PrivateKey::generate(), PrivateKey::generate());
    let mut ec = TunnelConfig::new(ek.clone(), loopback());
    ec.peers = vec![PeerConfig {
        public_key: ok.public_key(),
        endpoint: None,
        allowed_ips: vec!["10.100.1.1/32".parse()?],
        local_address: ip("10.100.1.10"),
        persistent_keepalive: None,
    }];
    let (e, _) = Tunnel::bind(ec).await?;
    let mut oc = TunnelConfig::new(ok.clone(), loopback());
    oc.accept_ports = vec![80];
    oc.peers = vec![PeerConfig {
        public_key: ek.public_key(),
        endpoint: Some(e.local_addr()),
        allowed_ips: vec!["10.100.1.10/32".parse()?],
        local_address: ip("10.100.1.1"),
        persistent_keepalive: Some(25),
    }];
    let (o, inc) = Tunnel::bind(oc).await?;
    let _srv = echo_server(inc);
    for _ in 0..100 {
        if e.stats().handshakes_completed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        e.stats().handshakes_completed > 0,
        "the origin did not dial out"
    );
    assert_eq!(e.stats().peers[0].endpoint, Some(o.local_addr()));
    let mut s = e.connect(&ok.public_key(), dst(1, 80), T).await?;
    s.write_all(b"from the edge").await?;
    let mut b = [0u8; 13];
    timeout(T, s.read_exact(&mut b)).await??;
    assert_eq!(&b, b"from the edge");
    Ok(())
}

#[test]
fn handles_are_send_sync_unpin_static() {
    fn check<T: Send + Sync + Unpin + 'static>() {}
    check::<Tunnel>();
    check::<kokoa_tunnel::TunnelStream>();
    check::<IncomingStream>();
    check::<Incoming>();
}

#[tokio::test]
async fn drop_after_write_delivers_everything_then_eof() -> Result<()> {
    let ek = PrivateKey::generate();
    let (_o, mut inc, peer) = origin(1, &ek, vec![80]).await?;
    let e = edge(ek, vec![peer.clone()]).await?;
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    // The reader runs concurrently: a megabyte is more than the send and receive buffers.
    let reader = tokio::spawn(async move {
        let mut server = inc.accept().await.context("accept")?.stream;
        let mut got = Vec::new();
        server.read_to_end(&mut got).await?;
        anyhow::Ok(got)
    });
    let mut s = e.connect(&peer.public_key, dst(1, 80), T).await?;
    timeout(T, s.write_all(&data)).await??;
    drop(s); // graceful: FIN after the queued data
    let got = timeout(T, reader).await???;
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    // The closed stream is reaped on both sides.
    for _ in 0..100 {
        if e.socket_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.socket_count(), 0);
    assert_eq!(e.stats().active_streams, 0);
    Ok(())
}

#[tokio::test]
async fn origin_key_rotation_keeps_a_download_running() -> Result<()> {
    // A paced 4 MiB download (about a second) from the origin; the origin rotates its key
    // 200 ms in, the edge learns the new public key 300 ms later. The stream must complete
    // byte-exact: both sides re-key in place and TCP resends what the gap lost.
    const LEN: usize = 4 << 20;
    const CHUNK: usize = 32 * 1024;
    let ek = PrivateKey::generate();
    let (o, mut inc, peer) = origin(1, &ek, vec![80]).await?;
    let e = edge(ek, vec![peer.clone()]).await?;
    let data: Vec<u8> = (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let want = Sha256::digest(&data);
    let server = tokio::spawn(async move {
        let mut st = inc.accept().await.context("accept")?.stream;
        for chunk in data.chunks(CHUNK) {
            st.write_all(chunk).await?;
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        st.shutdown().await?;
        // Keep the stream until the edge has read everything.
        let mut b = [0u8; 1];
        let _ = st.read(&mut b).await;
        anyhow::Ok(())
    });
    let mut s = e.connect(&peer.public_key, dst(1, 80), T).await?;
    let new_key = PrivateKey::generate();
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        o.set_private_key(new_key.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut rotated = peer.clone();
        rotated.public_key = new_key.public_key();
        e.try_set_peers(vec![rotated])?;
        anyhow::Ok(())
    };
    let recv = async {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k;
            h.update(&buf[..k]);
        }
        anyhow::Ok((n, h.finalize()))
    };
    let ((), (n, got)) = timeout(Duration::from_secs(30), async {
        tokio::try_join!(rotate, recv)
    })
    .await??;
    drop(s);
    timeout(T, server).await???;
    assert_eq!(n, LEN);
    assert_eq!(got, want);
    assert_eq!(o.public_key(), new_key.public_key());
    let stats = e.stats();
    assert_eq!(stats.peers.len(), 1);
    assert_eq!(stats.peers[0].public_key, new_key.public_key());
    assert!(stats.peers[0].last_handshake.is_some());
    // New streams use the new key.
    let mut s2 = e.connect(&new_key.public_key(), dst(1, 80), T).await?;
    drop(s2.write_all(b"x").await);
    Ok(())
}

/// An origin lists a new edge before it knows the edge's address (control adds the edge, then
/// its address once the machine has one). When the address arrives the origin handshakes at
/// once, not at its first keepalive 25 s later.
#[tokio::test]
async fn a_kept_alive_peer_handshakes_as_soon_as_its_endpoint_is_known() -> Result<()> {
    let edge_key = PrivateKey::generate();
    let origin_key = PrivateKey::generate();
    let edge_peer = |endpoint| PeerConfig {
        public_key: edge_key.public_key(),
        endpoint,
        allowed_ips: vec!["10.100.9.10/32".parse().unwrap()],
        local_address: ip("10.100.9.1"),
        persistent_keepalive: Some(25),
    };
    let mut c = TunnelConfig::new(origin_key.clone(), loopback());
    c.accept_ports = vec![80];
    c.peers = vec![edge_peer(None)];
    let (o, inc) = Tunnel::bind(c).await?;
    let _echo = echo_server(inc);
    let e = edge(
        edge_key.clone(),
        vec![PeerConfig {
            public_key: origin_key.public_key(),
            endpoint: None,
            allowed_ips: vec!["10.100.9.1/32".parse()?],
            local_address: ip("10.100.9.10"),
            persistent_keepalive: None,
        }],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(o.stats().peers[0].last_handshake.is_none());

    o.set_peers(vec![edge_peer(Some(e.local_addr()))]);
    // Well inside the 25 s keepalive, which is when the session would start without the fix.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while o.stats().peers[0].last_handshake.is_none() {
        if tokio::time::Instant::now() > deadline {
            bail!("no handshake within 10 s of learning the edge's endpoint");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the edge, which never knew where the origin is, reaches it now.
    let mut s = e.connect(&origin_key.public_key(), dst(9, 80), T).await?;
    s.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    timeout(T, s.read_exact(&mut back)).await??;
    assert_eq!(&back, b"ping");
    Ok(())
}
