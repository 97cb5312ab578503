//! Network namespaces for the interop tests: two namespaces joined by a veth pair with
//! 10.250.X.Y/30 addresses, stock WireGuard (wireguard-go + wg) inside them, and commands run
//! with `ip netns exec`. Everything is created with unique names and deleted on drop, also when
//! a test fails. No traffic ever leaves these namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// Tools the interop tests run.
pub const TOOLS: &[&str] = &["ip", "wireguard-go", "wg", "curl", "python3"];

/// Why the interop tests cannot run here, if they cannot: not root, a tool missing, or no
/// TUN device.
pub fn missing_prerequisite() -> Option<String> {
    if let Some(reason) = crate::prereq::missing_root() {
        return Some(reason);
    }
    if let Some(reason) = crate::prereq::missing_tools(
        TOOLS,
        "apt-get install wireguard-go wireguard-tools iproute2 curl python3",
    ) {
        return Some(reason);
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (wireguard-go needs a TUN device)".into());
    }
    None
}

/// Returns `true` when the test should go on; otherwise [`crate::prereq::require`] skips it
/// (or fails it under `CI=true`).
pub fn prerequisites_or_skip(test: &str) -> bool {
    crate::prereq::require(test, missing_prerequisite())
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    crate::prereq::which(tool)
}

/// The full path of a tool (for [`crate::process::Process::spawn`]).
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    find_in_path(name).with_context(|| format!("{name} is not installed"))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for names (interface names are at most 15 bytes).
fn unique_tag() -> (String, u8) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let tag = format!("{:x}{n}", pid % 0xfffff);
    // X of 10.250.X.0: spread by pid and counter so parallel runs rarely collide (and a
    // collision could only clash inside each run's own namespaces).
    let subnet = ((pid.wrapping_mul(7) + n) % 250) as u8 + 1;
    (tag, subnet)
}

async fn run(args: &[&str]) -> anyhow::Result<Output> {
    let (program, rest) = args.split_first().context("empty command")?;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(program).args(rest).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("{args:?} did not finish in 30 s"))?
    .with_context(|| format!("running {args:?}"))?;
    Ok(output)
}

/// Runs a command and fails with its stderr if it fails.
pub async fn check(args: &[&str]) -> anyhow::Result<String> {
    let output = run(args).await?;
    if !output.status.success() {
        bail!(
            "{args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    async fn create(name: String) -> anyhow::Result<Self> {
        check(&["ip", "netns", "add", &name]).await?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]).await?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME` as a prefix for [`crate::process::Process::spawn`].
    pub fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Runs a command inside the namespace; fails if it does.
    pub async fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        check(&full).await
    }

    /// Runs a command inside the namespace and returns its raw output.
    pub async fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full).await
    }

    /// `curl` inside the namespace: HTTP status and body (status 0 if no response).
    pub async fn curl(&self, args: &[&str]) -> anyhow::Result<(u16, String)> {
        let mut full = vec!["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}"];
        full.extend_from_slice(args);
        let output = self.output(&full).await?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        let status = status.trim().parse().unwrap_or(0);
        if status == 0 {
            bail!(
                "curl {args:?} in {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok((status, body.to_owned()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let result = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "could not delete namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("could not delete namespace {}: {error}", self.name),
        }
    }
}

/// Two namespaces `a` and `b` joined by a veth pair: `a` is 10.250.X.1/30, `b` 10.250.X.2/30.
pub struct Pair {
    /// The first namespace.
    pub a: Netns,
    /// The second namespace.
    pub b: Netns,
    /// `a`'s veth address.
    pub a_ip: Ipv4Addr,
    /// `b`'s veth address.
    pub b_ip: Ipv4Addr,
    /// Unique tag, for more names.
    pub tag: String,
}

impl Pair {
    /// Creates both namespaces and the link.
    pub async fn create() -> anyhow::Result<Self> {
        let (tag, subnet) = unique_tag();
        let a = Netns::create(format!("kokoa-test-{tag}-a")).await?;
        let b = Netns::create(format!("kokoa-test-{tag}-b")).await?;
        let a_ip = Ipv4Addr::new(10, 250, subnet, 1);
        let b_ip = Ipv4Addr::new(10, 250, subnet, 2);
        let veth_a = format!("kva{tag}");
        let veth_b = format!("kvb{tag}");
        // Created directly inside the namespaces: nothing appears in the host's namespace.
        check(&[
            "ip",
            "link",
            "add",
            &veth_a,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &veth_b,
            "netns",
            b.name(),
        ])
        .await?;
        for (ns, dev, ip) in [(&a, &veth_a, a_ip), (&b, &veth_b, b_ip)] {
            ns.exec(&["ip", "addr", "add", &format!("{ip}/30"), "dev", dev])
                .await?;
            ns.exec(&["ip", "link", "set", dev, "up"]).await?;
        }
        Ok(Self {
            a,
            b,
            a_ip,
            b_ip,
            tag,
        })
    }
}

/// Configures a running wireguard-go interface `dev` in `ns` with `wg set` and `ip`.
pub struct StockPeer<'a> {
    /// Namespace.
    pub ns: &'a Netns,
    /// Interface name.
    pub dev: String,
}

impl StockPeer<'_> {
    /// Waits until wireguard-go has created the interface.
    pub async fn wait_created(&self) -> anyhow::Result<()> {
        crate::eventually(
            "wireguard-go interface",
            Duration::from_secs(10),
            || async {
                self.ns
                    .exec(&["ip", "link", "show", &self.dev])
                    .await
                    .map(drop)
            },
        )
        .await
    }

    /// `wg set` with the private key in `key_file`, a listen port and one peer; then the
    /// address `addr/24` and link up.
    #[allow(clippy::too_many_arguments)]
    pub async fn configure(
        &self,
        key_file: &Path,
        listen_port: u16,
        peer: &str,
        allowed: &str,
        endpoint: Option<String>,
        addr: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let key_file = key_file.to_string_lossy().into_owned();
        let port = listen_port.to_string();
        let mut args = vec![
            "wg",
            "set",
            &self.dev,
            "private-key",
            &key_file,
            "listen-port",
            &port,
            "peer",
            peer,
            "allowed-ips",
            allowed,
            "persistent-keepalive",
            "5",
        ];
        if let Some(endpoint) = endpoint.as_deref() {
            args.extend_from_slice(&["endpoint", endpoint]);
        }
        self.ns.exec(&args).await?;
        self.ns
            .exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", &self.dev])
            .await?;
        self.ns
            .exec(&["ip", "link", "set", &self.dev, "up"])
            .await?;
        Ok(())
    }

    /// `wg show DEV` for diagnostics.
    pub async fn show(&self) -> String {
        self.ns
            .exec(&["wg", "show", &self.dev])
            .await
            .unwrap_or_else(|e| format!("{e:#}"))
    }
}
