//! `--provisioner local`: edges as `kokoa-edge` processes on this machine, for dev, demos, tests
//! and the failover benchmark.
//!
//! What "a machine" is here:
//! - an address: the lowest free one of `--provision-local-range` (default `127.0.10.0/24`,
//!   loopback, so it needs no root: Linux routes all of 127/8 to `lo`). It is the edge's public
//!   address (DNS, control's probes), and every listener of the edge is on it with fixed ports:
//!   HTTPS on the health checker's `--health-public-port`, HTTP, admin and WireGuard on their
//!   `--provision-local-*-port`s. One address per edge, so edges never collide on ports;
//! - a directory `DIR/NAME` (DIR: `--provision-local-dir`, default `DATA_DIR/provision/local`)
//!   holding the unpacked bundle (its `edge.toml` rewritten to those listeners, its state
//!   directory inside), `address`, `pid` and `edge.log`. The instance id is NAME;
//! - a process: `kokoa-edge --config DIR/NAME/edge.toml` in a process group of its own, with
//!   no pipe to control, so it outlives a control restart (or SIGINT to control's terminal).
//!
//! Destroy stops the process recorded in `pid` only if it still is that edge (its
//! `/proc/PID/cmdline` names this config file): SIGTERM, up to [`STOP_TIMEOUT`] to drain, then
//! SIGKILL; then it removes the directory.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use super::{Instance, InstanceSpec, InstanceStatus, ProvisionError, Provisioner};

/// Default address range of local edges.
pub const DEFAULT_RANGE: &str = "127.0.10.0/24";
/// Default port of a local edge's plain HTTP listener.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Default port of a local edge's admin listener.
pub const DEFAULT_ADMIN_PORT: u16 = 9090;
/// Default WireGuard UDP port of a local edge.
pub const DEFAULT_TUNNEL_PORT: u16 = 51820;
/// How long a destroyed edge may drain after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how local edges run.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// One directory per edge inside.
    pub dir: PathBuf,
    /// The `kokoa-edge` program.
    pub program: PathBuf,
    /// Addresses handed out, one per edge (the network and broadcast addresses are skipped).
    pub range: Ipv4Net,
    /// HTTPS port (the health checker's public port).
    pub https_port: u16,
    /// Plain HTTP port.
    pub http_port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// WireGuard UDP port.
    pub tunnel_port: u16,
}

/// The local provisioner; see the module doc.
#[derive(Debug)]
pub struct LocalProvisioner {
    settings: LocalSettings,
    /// Serializes address allocation and process starts.
    lock: tokio::sync::Mutex<()>,
}

fn local(what: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Local(what.to_string())
}

impl LocalProvisioner {
    /// A provisioner with `settings` (the directory is created on first use).
    pub fn new(settings: LocalSettings) -> Self {
        LocalProvisioner {
            settings,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory of instance `id`, refusing ids that are not plain names.
    fn dir_of(&self, id: &str) -> Result<PathBuf, ProvisionError> {
        if id.is_empty()
            || id.len() > 63
            || !id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        {
            return Err(local(format!("{id:?} is not a local instance id")));
        }
        Ok(self.settings.dir.join(id))
    }

    fn address_of(dir: &Path) -> Option<Ipv4Addr> {
        std::fs::read_to_string(dir.join("address"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn pid_of(dir: &Path) -> Option<i32> {
        std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|pid| *pid > 1)
    }

    /// The addresses every existing instance holds.
    fn used_addresses(&self) -> Vec<Ipv4Addr> {
        let Ok(entries) = std::fs::read_dir(&self.settings.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| Self::address_of(&entry.path()))
            .collect()
    }

    /// The lowest address of the range no instance holds and nothing listens on.
    fn free_address(&self) -> Result<Ipv4Addr, ProvisionError> {
        let used = self.used_addresses();
        let free = self.settings.range.hosts().find(|ip| {
            !used.contains(ip)
                && std::net::TcpListener::bind((*ip, self.settings.https_port)).is_ok()
                && std::net::TcpListener::bind((*ip, self.settings.admin_port)).is_ok()
                && std::net::UdpSocket::bind((*ip, self.settings.tunnel_port)).is_ok()
        });
        free.ok_or_else(|| {
            local(format!(
                "no free address left in {} (each local edge takes one)",
                self.settings.range
            ))
        })
    }

    fn instance(&self, id: &str, address: Ipv4Addr, status: InstanceStatus) -> Instance {
        Instance {
            id: id.to_owned(),
            public_ip: Some(IpAddr::V4(address)),
            endpoint: Some(SocketAddr::from((address, self.settings.tunnel_port)).to_string()),
            admin_address: Some(SocketAddr::from((address, self.settings.admin_port)).to_string()),
            status,
        }
    }

    /// Whether `pid` is a live (not zombie) `kokoa-edge` started with `config`.
    fn is_our_edge(pid: i32, config: &Path) -> bool {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
            return false;
        };
        let config = config.as_os_str().as_encoded_bytes();
        let names_config = cmdline.split(|b| *b == 0).any(|arg| arg == config);
        // `State:` Z (zombie) or X (dead) is not running.
        let alive = std::fs::read_to_string(proc.join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .is_some_and(|s| !matches!(s.trim().chars().next(), Some('Z' | 'X')))
        });
        names_config && alive
    }

    /// Unpacks the bundle's files (under its one top directory) into `dir`.
    fn unpack(bundle: &[u8], dir: &Path) -> Result<(), ProvisionError> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
        for entry in archive.entries().map_err(local)? {
            let mut entry = entry.map_err(local)?;
            let path = entry.path().map_err(local)?.into_owned();
            let Some(file) = path.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
                continue;
            };
            // Only the plain files the bundle carries; the install script and systemd unit
            // are for hosts with systemd, unused here but kept for reference.
            if file.contains('/') || file.starts_with('.') {
                continue;
            }
            let mode = entry.header().mode().unwrap_or(0o600);
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).map_err(local)?;
            let target = dir.join(&file);
            std::fs::write(&target, contents)
                .map_err(|e| local(format!("writing {}: {e}", target.display())))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o700))
                    .map_err(local)?;
            }
        }
        Ok(())
    }

    /// Rewrites the bundle's `edge.toml`: every listener on `address`, the state inside `dir`.
    fn configure(&self, dir: &Path, address: Ipv4Addr) -> Result<PathBuf, ProvisionError> {
        let config = dir.join("edge.toml");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| local(format!("the bundle has no edge.toml: {e}")))?;
        let mut table: toml::Table = text
            .parse()
            .map_err(|e| local(format!("the bundle's edge.toml: {e}")))?;
        let s = &self.settings;
        let at = |port: u16| toml::Value::String(SocketAddr::from((address, port)).to_string());
        let section =
            |table: &mut toml::Table, name: &str| -> Result<toml::Table, ProvisionError> {
                match table.remove(name) {
                    Some(toml::Value::Table(t)) => Ok(t),
                    None => Ok(toml::Table::new()),
                    Some(_) => Err(local(format!("[{name}] of edge.toml is not a table"))),
                }
            };
        let mut edge = section(&mut table, "edge")?;
        edge.insert("https".into(), at(s.https_port));
        edge.insert("http".into(), at(s.http_port));
        edge.insert("admin".into(), at(s.admin_port));
        table.insert("edge".into(), toml::Value::Table(edge));
        let mut tunnel = section(&mut table, "tunnel")?;
        tunnel.insert("listen".into(), at(s.tunnel_port));
        table.insert("tunnel".into(), toml::Value::Table(tunnel));
        let mut control = section(&mut table, "control")?;
        control.insert(
            "state_dir".into(),
            toml::Value::String(dir.join("state").display().to_string()),
        );
        table.insert("control".into(), toml::Value::Table(control));
        let text = toml::to_string(&table).map_err(local)?;
        std::fs::write(&config, text).map_err(local)?;
        Ok(config)
    }

    /// Starts the edge in `dir`, detached, and records its pid.
    fn start(&self, dir: &Path, config: &Path) -> Result<i32, ProvisionError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("edge.log"))
            .map_err(local)?;
        let err = log.try_clone().map_err(local)?;
        let mut command = tokio::process::Command::new(&self.settings.program);
        command
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a Ctrl-C to control's terminal does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        let child = command.spawn().map_err(|e| {
            local(format!(
                "cannot start {}: {e}",
                self.settings.program.display()
            ))
        })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| local("the edge exited at once"))?;
        // Dropped without waiting: tokio reaps it when it exits while control runs; after a
        // control restart init does.
        drop(child);
        std::fs::write(dir.join("pid"), format!("{pid}\n")).map_err(local)?;
        Ok(pid)
    }
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn defaults(&self) -> (Option<String>, Option<String>, Option<String>) {
        (Some("local".into()), None, None)
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProvisionError> {
        let _guard = self.lock.lock().await;
        let dir = self.dir_of(&spec.name)?;
        if let Some(address) = Self::address_of(&dir) {
            // Asked again (a control that restarted mid-way): the same machine, started if it
            // is not running.
            let config = dir.join("edge.toml");
            let running = Self::pid_of(&dir).is_some_and(|pid| Self::is_our_edge(pid, &config));
            if !running {
                self.start(&dir, &config)?;
            }
            return Ok(self.instance(&spec.name, address, InstanceStatus::Running));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| local(format!("cannot create {}: {e}", dir.display())))?;
        let made = (|| -> Result<Ipv4Addr, ProvisionError> {
            let address = self.free_address()?;
            std::fs::write(dir.join("address"), format!("{address}\n")).map_err(local)?;
            Self::unpack(&spec.bundle, &dir)?;
            let config = self.configure(&dir, address)?;
            self.start(&dir, &config)?;
            Ok(address)
        })();
        match made {
            Ok(address) => {
                tracing::info!(name = %spec.name, %address, dir = %dir.display(), "local edge started");
                Ok(self.instance(&spec.name, address, InstanceStatus::Running))
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(error)
            }
        }
    }

    async fn status(&self, id: &str) -> Result<Instance, ProvisionError> {
        let dir = self.dir_of(id)?;
        let Some(address) = Self::address_of(&dir) else {
            return Ok(Instance {
                id: id.to_owned(),
                public_ip: None,
                endpoint: None,
                admin_address: None,
                status: InstanceStatus::Gone,
            });
        };
        let config = dir.join("edge.toml");
        let running = Self::pid_of(&dir).is_some_and(|pid| Self::is_our_edge(pid, &config));
        let status = if running {
            InstanceStatus::Running
        } else {
            InstanceStatus::Gone
        };
        Ok(self.instance(id, address, status))
    }

    async fn destroy(&self, id: &str) -> Result<(), ProvisionError> {
        let _guard = self.lock.lock().await;
        let dir = self.dir_of(id)?;
        if !dir.exists() {
            return Ok(());
        }
        let config = dir.join("edge.toml");
        if let Some(pid) = Self::pid_of(&dir).filter(|pid| Self::is_our_edge(*pid, &config)) {
            use nix::sys::signal::{kill, Signal};
            let target = nix::unistd::Pid::from_raw(pid);
            let _ = kill(target, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Self::is_our_edge(pid, &config) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if Self::is_our_edge(pid, &config) {
                tracing::warn!(
                    name = id,
                    pid,
                    "local edge did not stop after SIGTERM; killing it"
                );
                let _ = kill(target, Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Self::is_our_edge(pid, &config) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        std::fs::remove_dir_all(&dir)
            .map_err(|e| local(format!("cannot remove {}: {e}", dir.display())))?;
        tracing::info!(name = id, "local edge destroyed");
        Ok(())
    }

    async fn find(&self, name: &str) -> Result<Option<Instance>, ProvisionError> {
        let instance = self.status(name).await?;
        Ok(instance.public_ip.is_some().then_some(instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_plain_names() {
        let provisioner = LocalProvisioner::new(LocalSettings {
            dir: PathBuf::from("/nonexistent"),
            program: PathBuf::from("/bin/true"),
            range: DEFAULT_RANGE.parse().expect("range"),
            https_port: 8443,
            http_port: DEFAULT_HTTP_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            tunnel_port: DEFAULT_TUNNEL_PORT,
        });
        assert!(provisioner.dir_of("edge-1").is_ok());
        for bad in ["", "../x", "a/b", ".", "A"] {
            assert!(provisioner.dir_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn our_own_process_is_not_an_edge_of_another_config() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        assert!(!LocalProvisioner::is_our_edge(
            pid,
            Path::new("/nonexistent/edge.toml")
        ));
    }
}
