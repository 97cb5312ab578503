//! Where each peer was last heard from, kept in a small file so that a restarted node can reach
//! peers behind NAT at once.
//!
//! Why: WireGuard's responder keeps no state worth keeping across a restart, and an edge has
//! no configured endpoint for an origin behind NAT: it learns one from the origin's packets.
//! After a restart (a crash, an upgrade) it has none, and the origin keeps sending on its old
//! session, which the new process cannot decrypt, until its own timers give up on it (two
//! keepalive intervals and more: 11-55 s of 503s measured in issue 16). With the last endpoint
//! remembered, the restarted edge starts a handshake toward it while it starts up; the NAT
//! mapping is still open because the origin kept sending keepalives through it, so the origin
//! answers within a round trip. A stock WireGuard origin (wireguard-go, the kernel) answers
//! such a handshake the same way; nothing on its side has to change.
//!
//! The peer's receiver index is remembered too: packets of the old session carry it, so if the
//! remembered endpoint is stale (the NAT mapping changed while the node was down) the first
//! packet the peer sends on its old session still names the peer, and the node answers it with
//! a handshake toward the packet's source ([`crate::core`]).
//!
//! The file is a text file, one peer a line: `PUBLIC_KEY INDEX ENDPOINT`. It is written
//! atomically (a temporary file, then a rename) whenever a peer's endpoint changes, at most
//! once a second, and when the tunnel stops; a line that does not parse is skipped.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use crate::PublicKey;

/// A peer as last seen: its key, the receiver index its sessions used, where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedPeer {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Our 24-bit index for the peer (the upper bits of its sessions' receiver indices).
    pub index: u32,
    /// Where its authenticated packets last came from.
    pub endpoint: SocketAddr,
}

const HEADER: &str = "# kokoa tunnel peers: public key, session index, last endpoint\n";

/// The file's text for `peers`.
pub(crate) fn render(peers: &[CachedPeer]) -> String {
    let mut out = String::from(HEADER);
    for p in peers {
        out.push_str(&format!("{} {} {}\n", p.public_key, p.index, p.endpoint));
    }
    out
}

/// Parses the file's text; lines that do not parse are skipped.
pub(crate) fn parse(text: &str) -> Vec<CachedPeer> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let public_key = PublicKey::from_base64(fields.next()?).ok()?;
            let index: u32 = fields.next()?.parse().ok()?;
            let endpoint: SocketAddr = fields.next()?.parse().ok()?;
            (index < 1 << 24 && fields.next().is_none()).then_some(CachedPeer {
                public_key,
                index,
                endpoint,
            })
        })
        .collect()
}

/// Reads the peer cache at `path`; a missing file is an empty cache.
pub(crate) fn load(path: &Path) -> io::Result<Vec<CachedPeer>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Writes `peers` to `path` atomically (creating its directory if needed).
pub(crate) fn store(path: &Path, peers: &[CachedPeer]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, render(peers))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    #[test]
    fn round_trips_and_skips_bad_lines() {
        let a = CachedPeer {
            public_key: PrivateKey::generate().public_key(),
            index: 0x12_3456,
            endpoint: "203.0.113.7:40123".parse().unwrap(),
        };
        let b = CachedPeer {
            public_key: PrivateKey::generate().public_key(),
            index: 7,
            endpoint: "[2001:db8::1]:51820".parse().unwrap(),
        };
        let text = render(&[a, b]);
        assert_eq!(parse(&text), vec![a, b]);
        let noisy = format!(
            "{text}garbage\n{} 99999999 1.2.3.4:5\n{} 1 not-an-address\n\n",
            a.public_key, b.public_key
        );
        assert_eq!(parse(&noisy), vec![a, b]);
    }

    #[test]
    fn store_and_load_a_file() {
        let dir = std::env::temp_dir().join(format!("kokoa-peer-cache-{}", std::process::id()));
        let path = dir.join("sub").join("peers");
        assert_eq!(load(&path).unwrap(), vec![]);
        let a = CachedPeer {
            public_key: PrivateKey::generate().public_key(),
            index: 1,
            endpoint: "127.0.0.1:1".parse().unwrap(),
        };
        store(&path, &[a]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![a]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
