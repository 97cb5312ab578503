//! Edge and origin config files, written from typed specs in the formats of
//! `edge/examples/edge.toml` and `origin/examples/origin.toml`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kokoa_tunnel::key::{PrivateKey, PublicKey};

/// One `[[edges]]` entry of an origin.
#[derive(Clone, Debug)]
pub struct OriginEdge {
    /// Name.
    pub name: String,
    /// The edge's public key.
    pub public_key: PublicKey,
    /// Where the edge's tunnel listens (`None`: the edge dials in).
    pub endpoint: Option<SocketAddr>,
    /// The edge's inner address.
    pub address: Ipv4Addr,
}

/// One `[[services]]` entry of an origin.
#[derive(Clone, Debug)]
pub struct OriginService {
    /// Name.
    pub name: String,
    /// Port inside the tunnel.
    pub port: u16,
    /// The app's local address.
    pub local: SocketAddr,
}

/// An origin config file.
#[derive(Clone, Debug)]
pub struct OriginSpec {
    /// Admin listener.
    pub admin: SocketAddr,
    /// The origin's inner address.
    pub address: Ipv4Addr,
    /// Private key.
    pub private_key: PrivateKey,
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Drain time on SIGTERM, seconds.
    pub drain_timeout: u64,
    /// Edges.
    pub edges: Vec<OriginEdge>,
    /// Services.
    pub services: Vec<OriginService>,
}

impl OriginSpec {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "[origin]\nadmin = \"{}\"\naddress = \"{}\"\ndrain_timeout = {}\nconnect_timeout = 2\n",
            self.admin, self.address, self.drain_timeout
        );
        let _ = writeln!(
            out,
            "[tunnel]\nprivate_key = \"{}\"\nlisten = \"{}\"\n",
            self.private_key.to_base64(),
            self.listen
        );
        for edge in &self.edges {
            let _ = writeln!(
                out,
                "[[edges]]\nname = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\nkeepalive = 5",
                edge.name, edge.public_key, edge.address
            );
            if let Some(endpoint) = edge.endpoint {
                let _ = writeln!(out, "endpoint = \"{endpoint}\"");
            }
            out.push('\n');
        }
        for service in &self.services {
            let _ = writeln!(
                out,
                "[[services]]\nname = \"{}\"\nport = {}\nlocal = \"{}\"\n",
                service.name, service.port, service.local
            );
        }
        out
    }
}

/// One `[[origins]]` entry of an edge.
#[derive(Clone, Debug)]
pub struct EdgeOrigin {
    /// Name the routes refer to.
    pub name: String,
    /// The origin's public key.
    pub public_key: PublicKey,
    /// Where the origin listens, if it does (origins behind NAT dial the edge instead).
    pub endpoint: Option<SocketAddr>,
    /// The edge's own inner address toward this origin.
    pub address: Ipv4Addr,
    /// The origin's inner address.
    pub origin_address: Ipv4Addr,
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct EdgeRoute {
    /// Host name (exact or `*.domain`).
    pub host: String,
    /// The origin's name.
    pub origin: String,
    /// The service port inside the tunnel.
    pub port: u16,
}

/// One `[[tcp_routes]]` entry.
#[derive(Clone, Debug)]
pub struct EdgeTcpRoute {
    /// Public listen address.
    pub listen: SocketAddr,
    /// The origin's name.
    pub origin: String,
    /// The service port inside the tunnel.
    pub port: u16,
}

/// An edge config file.
#[derive(Clone, Debug)]
pub struct EdgeSpec {
    /// TLS listener.
    pub https: SocketAddr,
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Drain time on SIGTERM, seconds.
    pub drain_timeout: u64,
    /// Private key.
    pub private_key: PrivateKey,
    /// Tunnel UDP listen address.
    pub listen: SocketAddr,
    /// Origins.
    pub origins: Vec<EdgeOrigin>,
    /// Host routes.
    pub routes: Vec<EdgeRoute>,
    /// Raw TCP routes.
    pub tcp_routes: Vec<EdgeTcpRoute>,
    /// Certificate chain and key files (PEM).
    pub certificates: Vec<(PathBuf, PathBuf)>,
}

impl EdgeSpec {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "[edge]\nhttps = \"{}\"\nhttp = \"{}\"\nadmin = \"{}\"\ndrain_timeout = {}\n",
            self.https, self.http, self.admin, self.drain_timeout
        );
        let _ = writeln!(
            out,
            "[tunnel]\nprivate_key = \"{}\"\nlisten = \"{}\"\n",
            self.private_key.to_base64(),
            self.listen
        );
        for origin in &self.origins {
            let _ = writeln!(
                out,
                "[[origins]]\nname = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\norigin_address = \"{}\"",
                origin.name, origin.public_key, origin.address, origin.origin_address
            );
            if let Some(endpoint) = origin.endpoint {
                let _ = writeln!(out, "endpoint = \"{endpoint}\"\nkeepalive = 5");
            }
            out.push('\n');
        }
        for route in &self.routes {
            let _ = writeln!(
                out,
                "[[routes]]\nhost = \"{}\"\norigin = \"{}\"\nport = {}\n",
                route.host, route.origin, route.port
            );
        }
        for route in &self.tcp_routes {
            let _ = writeln!(
                out,
                "[[tcp_routes]]\nlisten = \"{}\"\norigin = \"{}\"\nport = {}\n",
                route.listen, route.origin, route.port
            );
        }
        out.push_str("[tls]\n");
        for (cert, key) in &self.certificates {
            let _ = writeln!(
                out,
                "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            );
        }
        out
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
