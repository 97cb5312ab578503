//! Node bundles: everything a new edge or origin host needs to join, as one tar.gz.
//!
//! `GET /api/v1/{edge-nodes,origins}/{id}/bundle` answers with [`build`]'s archive:
//!
//! | file | what |
//! |---|---|
//! | `edge.toml` / `origin.toml` | the bootstrap config: listeners and `[control]` (no routes, peers or services: those come from control) |
//! | `control-ca.pem` | control's CA, the only trust anchor the node accepts for the gRPC TLS |
//! | `enroll.token` | a fresh one-time enrollment token (mode 0600) |
//! | `kokoa-edge.service` / `kokoa-origin.service` | systemd unit running as the `kokoa` user |
//! | `install.sh` | creates the user and directories, installs the files, enables the unit |
//! | `kokoa-edge` / `kokoa-origin` | only with `kokoa-control bundle ... --with-binary` ([`add_binary`]): the program itself, so a bare host needs nothing else |
//!
//! Paths inside the config are relative to it, so the files work wherever they are unpacked;
//! `install.sh` puts them in `/etc/kokoa/edge/` (or `/etc/kokoa/origin/`, so an edge and an
//! origin on one host never share a token or CA file) and the state in `/var/lib/kokoa-edge` (or
//! `-origin`).

use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::store::{Edge, Origin};

/// Where the installed files go: `CONFIG_DIR/edge/` or `CONFIG_DIR/origin/`.
pub const CONFIG_DIR: &str = "/etc/kokoa";
/// The WireGuard port an edge listens on unless its endpoint says otherwise.
pub const DEFAULT_EDGE_TUNNEL_PORT: u16 = 51820;

/// What every bundle needs from the running control.
#[derive(Clone, Debug)]
pub struct BundleSettings {
    /// The gRPC URL nodes dial (`--public-url`), e.g. `https://control.example.com:7443`.
    pub control_url: String,
    /// Control's CA certificate (PEM).
    pub ca_pem: String,
    /// How long the bundle's enrollment token stays valid.
    pub enrollment_ttl: Duration,
}

/// The node a bundle is for.
// One short-lived value per bundle request, never kept in a collection: an edge record being
// larger than an origin's (its limits, tunnel settings and listeners) costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum BundleNode {
    /// An edge.
    Edge(Edge),
    /// An origin.
    Origin(Origin),
}

impl BundleNode {
    /// `edge` or `origin`.
    pub fn kind(&self) -> &'static str {
        match self {
            BundleNode::Edge(_) => "edge",
            BundleNode::Origin(_) => "origin",
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        match self {
            BundleNode::Edge(edge) => &edge.name,
            BundleNode::Origin(origin) => &origin.name,
        }
    }

    fn managed_key(&self) -> bool {
        match self {
            BundleNode::Edge(edge) => edge.managed_key,
            BundleNode::Origin(origin) => origin.managed_key,
        }
    }
}

/// A TOML basic string (quoted and escaped).
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The port of a `host:port` endpoint.
fn endpoint_port(endpoint: Option<&str>) -> Option<u16> {
    endpoint?.rsplit_once(':')?.1.parse().ok()
}

/// The bootstrap config (`edge.toml` / `origin.toml`) in the format nodes read in control mode.
pub fn node_config(settings: &BundleSettings, node: &BundleNode) -> String {
    let kind = node.kind();
    let mut out = format!(
        "# kokoa-{kind} bootstrap config for {name:?}, made by kokoa-control.\n\
         # Routes, peers, services and (unless noted below) the WireGuard key come from control\n\
         # over gRPC; the last applied config is kept in state_dir, so this node keeps working\n\
         # while control is unreachable.\n",
        name = node.name()
    );
    match node {
        BundleNode::Edge(edge) => {
            let port = endpoint_port(edge.endpoint.as_deref()).unwrap_or(DEFAULT_EDGE_TUNNEL_PORT);
            out.push_str(&format!(
                "\n[edge]\nhttps = \"0.0.0.0:443\"\nhttp = \"0.0.0.0:80\"\nadmin = \"127.0.0.1:9090\"\n\
                 \n[tunnel]\n# WireGuard UDP port origins dial (the port of the edge's endpoint).\nlisten = \"0.0.0.0:{port}\"\n"
            ));
        }
        BundleNode::Origin(_) => {
            out.push_str(
                "\n[origin]\nadmin = \"127.0.0.1:9091\"\n\
                 \n[tunnel]\n# Ephemeral: the origin dials its edges, so no port needs forwarding.\nlisten = \"0.0.0.0:0\"\n",
            );
        }
    }
    if !node.managed_key() {
        out.push_str(&format!(
            "# The operator holds this node's WireGuard private key: put it in {CONFIG_DIR}/{kind}/{kind}.key\n\
             # (mode 0600) and uncomment:\n# private_key_file = \"{kind}.key\"\n"
        ));
    }
    out.push_str(&format!(
        "\n[control]\nurl = {url}\nca_file = \"control-ca.pem\"\n\
         # One-time: exchanged for a long-lived credential (kept in state_dir) on first start.\n\
         token_file = \"enroll.token\"\nstate_dir = \"/var/lib/kokoa-{kind}\"\n",
        url = quote(&settings.control_url),
    ));
    out
}

/// The systemd unit.
pub fn systemd_unit(node: &BundleNode) -> String {
    let kind = node.kind();
    let capabilities = match node {
        // The edge binds 80 and 443 without running as root.
        BundleNode::Edge(_) => {
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"
        }
        BundleNode::Origin(_) => "CapabilityBoundingSet=\n",
    };
    format!(
        "[Unit]\n\
         Description=Kokoa {kind} {name}\n\
         Documentation=https://example.invalid/kokoa\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User=kokoa\n\
         Group=kokoa\n\
         ExecStart=/usr/local/bin/kokoa-{kind} --config {CONFIG_DIR}/{kind}/{kind}.toml\n\
         Restart=always\n\
         RestartSec=2\n\
         TimeoutStopSec=20\n\
         {capabilities}\
         NoNewPrivileges=true\n\
         ProtectSystem=strict\n\
         ProtectHome=true\n\
         PrivateTmp=true\n\
         PrivateDevices=true\n\
         StateDirectory=kokoa-{kind}\n\
         StateDirectoryMode=0700\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = node.name(),
    )
}

/// The install script: run as root from the unpacked bundle directory. The program comes from
/// `KOKOA_BIN`, else the bundle itself (`--with-binary`), else an existing install (the Debian
/// package's `/usr/bin`, or `/usr/local/bin`). `KOKOA_ROOT=DIR` installs under `DIR` instead of
/// `/`, without users, ownership or systemd (to stage an image, or to see what lands where).
pub fn install_script(node: &BundleNode) -> String {
    let kind = node.kind();
    format!(
        r#"#!/bin/sh
# Installs kokoa-{kind} "{name}" from this bundle. Run as root in the unpacked directory:
#   sudo ./install.sh
# The program is taken from $KOKOA_BIN, else ./kokoa-{kind} (bundles made with --with-binary),
# else an existing install (/usr/bin/kokoa-{kind} from the kokoa-{kind} package, or
# /usr/local/bin/kokoa-{kind}). KOKOA_ROOT=DIR installs under DIR instead of / and leaves users,
# file ownership and systemd alone.
set -eu
cd "$(dirname "$0")"
root=${{KOKOA_ROOT:-}}

fail() {{
    echo "install.sh: $*" >&2
    exit 1
}}

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    fail "run as root (sudo ./install.sh), or set KOKOA_ROOT=DIR to install under DIR"
fi

source=""
if [ -n "${{KOKOA_BIN:-}}" ]; then
    source=$KOKOA_BIN
elif [ -f ./kokoa-{kind} ]; then
    source=./kokoa-{kind}
fi
if [ -n "$source" ]; then
    [ -f "$source" ] || fail "$source does not exist"
    install -d -m 0755 "$root/usr/local/bin"
    install -m 0755 "$source" "$root/usr/local/bin/kokoa-{kind}"
    bin=/usr/local/bin/kokoa-{kind}
elif [ -x "$root/usr/bin/kokoa-{kind}" ]; then
    bin=/usr/bin/kokoa-{kind}
elif [ -x "$root/usr/local/bin/kokoa-{kind}" ]; then
    bin=/usr/local/bin/kokoa-{kind}
else
    fail "no kokoa-{kind} program here: make the bundle with \`kokoa-control bundle {kind} {name} -o FILE --with-binary\`, install the kokoa-{kind} package, or set KOKOA_BIN=/path/to/kokoa-{kind}"
fi
"$root$bin" --version >/dev/null 2>&1 ||
    fail "$root$bin does not run on this machine (built for another architecture?)"

own() {{
    # install(1) ownership flags, only for a real install.
    [ -n "$root" ] || printf '%s' "-o $1 -g $2"
}}
if [ -z "$root" ] && ! getent passwd kokoa >/dev/null; then
    useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin kokoa
fi

install -d -m 0755 $(own root root) "$root{CONFIG_DIR}"
install -d -m 0750 $(own root kokoa) "$root{CONFIG_DIR}/{kind}"
install -d -m 0700 $(own kokoa kokoa) "$root/var/lib/kokoa-{kind}"
install -m 0640 $(own root kokoa) {kind}.toml "$root{CONFIG_DIR}/{kind}/{kind}.toml"
install -m 0644 $(own root root) control-ca.pem "$root{CONFIG_DIR}/{kind}/control-ca.pem"
# Readable by the service only; used once, on the first start.
install -m 0640 $(own root kokoa) enroll.token "$root{CONFIG_DIR}/{kind}/enroll.token"
install -d -m 0755 "$root/etc/systemd/system"
sed "s#^ExecStart=[^ ]*#ExecStart=$bin#" kokoa-{kind}.service >"$root/etc/systemd/system/kokoa-{kind}.service"
chmod 0644 "$root/etc/systemd/system/kokoa-{kind}.service"

if [ -n "$root" ]; then
    echo "kokoa-{kind} staged under $root (program $bin, config {CONFIG_DIR}/{kind}/{kind}.toml)"
elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable kokoa-{kind}.service
    systemctl restart kokoa-{kind}.service
    echo "kokoa-{kind} installed and started; follow it with: journalctl -u kokoa-{kind} -f"
else
    echo "kokoa-{kind} installed; no systemd here, so start it yourself:"
    echo "  su -s /bin/sh kokoa -c '$bin --config {CONFIG_DIR}/{kind}/{kind}.toml'"
fi
"#,
        name = node.name(),
    )
}

/// Adds the node's program to a bundle made by [`build`], as `kokoa-KIND-NAME/kokoa-KIND`
/// (mode 0755), so `install.sh` installs it. `binary` must be a Linux ELF executable.
pub fn add_binary(bundle: &[u8], kind: &str, binary: &[u8]) -> Result<Vec<u8>, BundleError> {
    elf_machine(binary)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
    let encoder = GzEncoder::new(Vec::new(), Compression::default());
    let mut out = tar::Builder::new(encoder);
    let mut dir = None;
    let mut mtime = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if dir.is_none() {
            dir = path.parent().map(|p| p.to_path_buf());
        }
        mtime = entry.header().mtime().unwrap_or(0);
        let mut header = entry.header().clone();
        let mut contents = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut contents)?;
        out.append_data(&mut header, &path, contents.as_slice())?;
    }
    let dir = dir.ok_or(BundleError::Empty)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    out.append_data(&mut header, dir.join(format!("kokoa-{kind}")), binary)?;
    let mut encoder = out.into_inner()?;
    encoder.flush()?;
    Ok(encoder.finish()?)
}

/// Why a binary could not be added to a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not an ELF executable for a CPU Kokoa is built for.
    #[error("not a Linux program for x86_64 or aarch64: {0}")]
    NotAProgram(String),
    /// The bundle had no files.
    #[error("the bundle is empty")]
    Empty,
    /// Reading or writing the archive failed.
    #[error("rewriting the bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// The CPU of a Linux ELF executable (`x86_64`, `aarch64`), from its header.
pub fn elf_machine(binary: &[u8]) -> Result<&'static str, BundleError> {
    if binary.len() < 20 || &binary[..4] != b"\x7fELF" {
        return Err(BundleError::NotAProgram("no ELF header".into()));
    }
    // e_machine: 2 bytes at offset 18, in the byte order that EI_DATA (offset 5) names.
    let machine = match binary[5] {
        1 => u16::from_le_bytes([binary[18], binary[19]]),
        2 => u16::from_be_bytes([binary[18], binary[19]]),
        other => return Err(BundleError::NotAProgram(format!("ELF byte order {other}"))),
    };
    match machine {
        62 => Ok("x86_64"),
        183 => Ok("aarch64"),
        other => Err(BundleError::NotAProgram(format!("ELF machine {other}"))),
    }
}

/// Builds the bundle archive (tar.gz) for `node` with the enrollment `token`.
pub fn build(
    settings: &BundleSettings,
    node: &BundleNode,
    token: &str,
) -> std::io::Result<Vec<u8>> {
    let kind = node.kind();
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let files: [(String, Vec<u8>, u32); 5] = [
        (
            format!("{kind}.toml"),
            node_config(settings, node).into_bytes(),
            0o644,
        ),
        (
            "control-ca.pem".to_string(),
            settings.ca_pem.clone().into_bytes(),
            0o644,
        ),
        (
            "enroll.token".to_string(),
            format!("{token}\n").into_bytes(),
            0o600,
        ),
        (
            format!("kokoa-{kind}.service"),
            systemd_unit(node).into_bytes(),
            0o644,
        ),
        (
            "install.sh".to_string(),
            install_script(node).into_bytes(),
            0o755,
        ),
    ];
    let encoder = GzEncoder::new(Vec::new(), Compression::default());
    let mut archive = tar::Builder::new(encoder);
    let dir = format!("kokoa-{kind}-{}", node.name());
    for (name, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, format!("{dir}/{name}"), contents.as_slice())?;
    }
    let mut encoder = archive.into_inner()?;
    encoder.flush()?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use super::*;
    use crate::store::{NodeState, NodeStatus};

    fn state() -> NodeState {
        NodeState {
            status: NodeStatus::Pending,
            last_heartbeat: None,
            heartbeat: None,
            applied_version: None,
            nack: None,
        }
    }

    fn unpack(bytes: &[u8]) -> BTreeMap<String, (String, u32)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let mut files = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let mode = entry.header().mode().expect("mode");
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read");
            files.insert(path, (text, mode));
        }
        files
    }

    /// Unpacks the bundle into `dir` and loads its config with the node's own loader.
    fn unpack_to(bytes: &[u8], dir: &std::path::Path) {
        tar::Archive::new(flate2::read::GzDecoder::new(bytes))
            .unpack(dir)
            .expect("unpack");
    }

    fn settings() -> BundleSettings {
        BundleSettings {
            control_url: "https://control.example.com:7443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            enrollment_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn edge_bundle_has_every_file_and_a_parsable_config() {
        let now = time::OffsetDateTime::now_utc();
        let edge = Edge {
            id: uuid::Uuid::new_v4(),
            name: "vps1".into(),
            public_ip: None,
            endpoint: Some("198.51.100.7:51999".into()),
            provider: None,
            region: None,
            public_key: kokoa_tunnel::key::PrivateKey::generate().public_key(),
            managed_key: true,
            limits: None,
            tunnel: None,
            listeners: Vec::new(),
            state: state(),
            created_at: now,
            updated_at: now,
        };
        let bytes = build(&settings(), &BundleNode::Edge(edge), "kokoa_enr_secret").expect("build");
        let files = unpack(&bytes);
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "kokoa-edge-vps1/control-ca.pem",
                "kokoa-edge-vps1/edge.toml",
                "kokoa-edge-vps1/enroll.token",
                "kokoa-edge-vps1/install.sh",
                "kokoa-edge-vps1/kokoa-edge.service",
            ]
        );
        let (config, _) = &files["kokoa-edge-vps1/edge.toml"];
        let config: toml::Value = toml::from_str(config).expect("edge.toml parses");
        assert_eq!(config["tunnel"]["listen"].as_str(), Some("0.0.0.0:51999"));
        assert_eq!(config["edge"]["https"].as_str(), Some("0.0.0.0:443"));
        assert_eq!(
            config["control"]["url"].as_str(),
            Some("https://control.example.com:7443")
        );
        assert_eq!(
            config["control"]["ca_file"].as_str(),
            Some("control-ca.pem")
        );
        assert_eq!(
            config["control"]["token_file"].as_str(),
            Some("enroll.token")
        );
        assert_eq!(
            config["control"]["state_dir"].as_str(),
            Some("/var/lib/kokoa-edge")
        );
        assert!(config.get("routes").is_none() && config.get("origins").is_none());
        assert_eq!(
            files["kokoa-edge-vps1/enroll.token"],
            ("kokoa_enr_secret\n".into(), 0o600)
        );
        assert_eq!(files["kokoa-edge-vps1/install.sh"].1, 0o755);
        assert!(files["kokoa-edge-vps1/control-ca.pem"]
            .0
            .contains("BEGIN CERTIFICATE"));
        let unit = &files["kokoa-edge-vps1/kokoa-edge.service"].0;
        assert!(
            unit.contains("ExecStart=/usr/local/bin/kokoa-edge --config /etc/kokoa/edge/edge.toml")
        );
        assert!(unit.contains("CAP_NET_BIND_SERVICE"));
        let script = &files["kokoa-edge-vps1/install.sh"].0;
        assert!(script.starts_with("#!/bin/sh"));
        assert!(script.contains("useradd --system"));
        assert!(script.contains("systemctl enable kokoa-edge.service"));
        // The script at least parses as POSIX sh.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("install.sh");
        std::fs::write(&path, script).expect("write");
        let syntax = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("sh");
        assert!(
            syntax.status.success(),
            "{}",
            String::from_utf8_lossy(&syntax.stderr)
        );
    }

    #[test]
    fn origin_bundle_listens_ephemeral_and_notes_an_operator_key() {
        let now = time::OffsetDateTime::now_utc();
        let origin = Origin {
            id: uuid::Uuid::new_v4(),
            name: "home".into(),
            subnet: 1,
            public_key: kokoa_tunnel::key::PrivateKey::generate().public_key(),
            managed_key: false,
            tunnel: None,
            state: state(),
            created_at: now,
            updated_at: now,
        };
        let bytes = build(&settings(), &BundleNode::Origin(origin), "t").expect("build");
        let files = unpack(&bytes);
        let (config, _) = &files["kokoa-origin-home/origin.toml"];
        assert!(config.contains("# private_key_file = \"origin.key\""));
        let config: toml::Value = toml::from_str(config).expect("origin.toml parses");
        assert_eq!(config["tunnel"]["listen"].as_str(), Some("0.0.0.0:0"));
        assert_eq!(config["origin"]["admin"].as_str(), Some("127.0.0.1:9091"));
        assert_eq!(
            config["control"]["state_dir"].as_str(),
            Some("/var/lib/kokoa-origin")
        );
        assert!(files.contains_key("kokoa-origin-home/kokoa-origin.service"));
    }

    #[test]
    fn nodes_accept_their_bundle_configs() {
        // The node programs' own loaders (which read the CA file) accept what bundles write.
        let dir = tempfile::tempdir().expect("dir");
        let now = time::OffsetDateTime::now_utc();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("ca");
        let settings = BundleSettings {
            ca_pem: ca.cert.pem(),
            ..settings()
        };
        let key = kokoa_tunnel::key::PrivateKey::generate().public_key();
        let edge = Edge {
            id: uuid::Uuid::new_v4(),
            name: "vps1".into(),
            public_ip: None,
            endpoint: None,
            provider: None,
            region: None,
            public_key: key,
            managed_key: true,
            limits: None,
            tunnel: None,
            listeners: Vec::new(),
            state: state(),
            created_at: now,
            updated_at: now,
        };
        let origin = Origin {
            id: uuid::Uuid::new_v4(),
            name: "home".into(),
            subnet: 1,
            public_key: key,
            managed_key: true,
            tunnel: None,
            state: state(),
            created_at: now,
            updated_at: now,
        };
        unpack_to(
            &build(&settings, &BundleNode::Edge(edge), "t").expect("edge bundle"),
            dir.path(),
        );
        unpack_to(
            &build(&settings, &BundleNode::Origin(origin), "t").expect("origin bundle"),
            dir.path(),
        );
        kokoa_edge::config::EdgeConfig::load(&dir.path().join("kokoa-edge-vps1/edge.toml"))
            .expect("kokoa-edge accepts edge.toml");
        kokoa_origin::config::OriginConfig::load(&dir.path().join("kokoa-origin-home/origin.toml"))
            .expect("kokoa-origin accepts origin.toml");
    }
}
