//! Child processes of the tests: the built `kokoa-*` binaries, with stdout/stderr captured to
//! files that are printed when a test fails, killed when dropped.

use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// The path of a workspace binary built next to the running test executable
/// (`target/<profile>/NAME`; the test itself runs from `target/<profile>/deps/`), or in
/// `$KOKOA_BIN_DIR` when that is set (benchmarks built in the dev profile that measure the
/// release binaries: `KOKOA_BIN_DIR=target/release`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("KOKOA_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("locating the test executable")?;
            let mut dir = exe
                .parent()
                .context("the test executable has no directory")?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p {name}` (cargo test --workspace does)",
            path.display()
        );
    }
    Ok(path)
}

tokio::task_local! {
    static CAPTURED: Arc<Mutex<Vec<String>>>;
}

/// Runs `body` and collects the logs of every [`Process`] dropped inside it, so that a test
/// that fails with an error (not a panic) can still print what the binaries logged.
pub async fn capture_logs<F: Future>(body: F) -> (F::Output, Vec<String>) {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let output = CAPTURED.scope(captured.clone(), body).await;
    let logs = std::mem::take(&mut *captured.lock().unwrap_or_else(|e| e.into_inner()));
    (output, logs)
}

/// A running child process. Killed on drop; its output is printed then if the thread is
/// panicking, or handed to [`capture_logs`] when dropped inside it.
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `program` with `args`; output goes to `NAME.stdout` / `NAME.stderr` in `log_dir`.
    /// `wrapper` (such as `ip netns exec NS`) is prepended when given.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        log_dir: &Path,
        wrapper: &[&str],
    ) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let out = std::fs::File::create(&stdout).context("creating the stdout log")?;
        let err = std::fs::File::create(&stderr).context("creating the stderr log")?;
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env(
                "RUST_LOG",
                std::env::var("KOKOA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            exited: None,
        })
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the process wrote so far, stdout then stderr.
    pub fn logs(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        format!(
            "----- {} stdout -----\n{}----- {} stderr -----\n{}",
            self.name,
            read(&self.stdout),
            self.name,
            read(&self.stderr)
        )
    }

    /// Fails if the process has already exited (with its logs in the error).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited {
            bail!("{} exited with {status}\n{}", self.name, self.logs());
        }
        if let Some(status) = self.child.try_wait().context("polling the child")? {
            self.exited = Some(status);
            bail!("{} exited with {status}\n{}", self.name, self.logs());
        }
        Ok(())
    }

    /// Sends a signal by name (`TERM`, `KILL`) with kill(1); the workspace forbids unsafe code,
    /// so no libc call.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.id().context("the process has already been reaped")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .context("running kill(1)")?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the child")?;
                self.exited = Some(status);
                Ok(status)
            }
            Err(_) => bail!(
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.logs()
            ),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let logs = self.logs();
        let handed = CAPTURED
            .try_with(|captured| {
                captured
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(logs.clone())
            })
            .is_ok();
        if !handed && std::thread::panicking() {
            eprintln!("{logs}");
        }
    }
}
