//! The edge and origin processes of `kokoa-control dev`: the real binaries, found next to this
//! executable (a release tarball, a `.deb` and `cargo build` all put the three side by side) or
//! in `PATH`, started with their output in the dev log directory and stopped with SIGTERM.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// How long a node may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of `name`: `explicit` when given (a flag or its environment variable), else the
/// file next to this executable, else the first in `PATH`.
pub fn find_binary(name: &str, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let env = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    let flag = format!("--{}-bin", name.trim_start_matches("kokoa-"));
    if let Some(path) = explicit {
        return executable(path).with_context(|| format!("{flag} / {env}: {}", path.display()));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    if let Some(path) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(path.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
    {
        return Ok(found);
    }
    bail!(
        "{name} not found next to {} nor in PATH: build all three programs (`cargo build \
         --release` builds kokoa-edge, kokoa-origin and kokoa-control together), or give its path \
         ({flag} or {env} for `dev`, --with-binary PATH for `bundle`)",
        beside
            .as_ref()
            .and_then(|p| p.parent())
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "this program".into())
    )
}

fn executable(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!("no such file");
    }
    Ok(path.to_path_buf())
}

/// A node started by `dev`. Killed (SIGKILL) if dropped while running; [`NodeProcess::stop`]
/// stops it gracefully.
pub struct NodeProcess {
    name: &'static str,
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `program --config CONFIG` with stdout and stderr appended to `LOG_DIR/NAME.log`.
    pub fn start(
        name: &'static str,
        program: &Path,
        config: &Path,
        admin_port: u16,
        log_dir: &Path,
    ) -> anyhow::Result<NodeProcess> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(NodeProcess {
            name,
            child,
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
            log,
        })
    }

    /// Waits until the node's admin `/healthz` answers 200, failing early if it exits.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the dev {} exited with {status} while starting; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if healthz(self.admin).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the dev {} did not become healthy on {} within {timeout:?}; see {}",
                    self.name,
                    self.admin,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resolves when the process exits, with an error that says so.
    pub async fn exited(&mut self) -> anyhow::Error {
        match self.child.wait().await {
            Ok(status) => anyhow::anyhow!(
                "the dev {} exited with {status}; see {}",
                self.name,
                self.log.display()
            ),
            Err(error) => anyhow::anyhow!("waiting for the dev {}: {error}", self.name),
        }
    }

    /// SIGTERM, then up to [`STOP_TIMEOUT`] to drain, then SIGKILL.
    pub async fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(node = self.name, "did not stop after SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// Whether `GET http://ADMIN/healthz` answers 200.
async fn healthz(admin: SocketAddr) -> bool {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let Ok(uri) = format!("http://{admin}/healthz").parse::<hyper::Uri>() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_binary_must_exist_and_a_missing_one_names_the_flag() {
        let error = find_binary("kokoa-edge", Some(Path::new("/nonexistent/kokoa-edge")))
            .expect_err("missing");
        assert!(format!("{error:#}").contains("--edge-bin"), "{error:#}");
        let found = find_binary("sh", Some(Path::new("/bin/sh"))).expect("exists");
        assert_eq!(found, PathBuf::from("/bin/sh"));
    }
}
