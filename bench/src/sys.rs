//! The system side of the comparison: network namespaces joined by a veth pair (always torn
//! down, also on failure or Ctrl-C), processes started inside them, and `/proc` readings
//! (resident memory, CPU time).
//!
//! Addresses come from 10.250.0.0/16 and exist only inside the namespaces created here.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// `RLIMIT_NOFILE` given to every process started in a namespace: the hard limit this process
/// has (containers often forbid raising it), capped at 65,536. 10,000 idle connections plus
/// their upstream sides need about 10,100.
pub fn nofile() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_nofile_hard(&text))
        .unwrap_or(65_536)
        .min(65_536)
}

/// The hard `Max open files` limit from `/proc/PID/limits` text.
pub fn parse_nofile_hard(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    match fields.get(1)? {
        &"unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Runs a host command with a deadline and returns its output.
pub async fn run(args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
    let (program, rest) = args.split_first().context("empty command")?;
    tokio::time::timeout(
        timeout,
        Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{args:?} did not finish in {timeout:?}"))?
    .with_context(|| format!("running {args:?} (is it installed? see bench/setup.sh)"))
}

/// Runs a host command and fails with its output if it fails.
pub async fn check(args: &[&str]) -> anyhow::Result<String> {
    let output = run(args, Duration::from_secs(60)).await?;
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

/// A network namespace created by this run.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside it; fails if the command does.
    pub async fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        check(&full).await
    }

    /// Runs a command inside it with a deadline and returns the raw output.
    pub async fn output(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full, timeout).await
    }

    /// Starts a long-running process inside the namespace with a raised `RLIMIT_NOFILE`,
    /// its stdout and stderr going to `log`.
    pub fn spawn(&self, name: &str, args: &[&str], log: &Path) -> anyhow::Result<Process> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = file.try_clone().context("cloning a log file handle")?;
        let nofile = format!("--nofile={0}:{0}", nofile());
        // `ip netns exec` and `prlimit` both exec: the child's pid is the program's own.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "prlimit", &nofile, "--"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({args:?})"))?;
        let pid = child.id().context("a started child has a pid")?;
        Ok(Process {
            name: name.to_owned(),
            pid,
            child,
            log: log.to_owned(),
        })
    }

    /// A command to run inside the namespace with a raised `RLIMIT_NOFILE` (the caller sets
    /// up pipes and spawns it).
    pub fn command(&self, args: &[&str]) -> Command {
        let nofile = format!("--nofile={0}:{0}", nofile());
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, "prlimit", &nofile, "--"])
            .args(args)
            .kill_on_drop(true);
        command
    }
}

/// A process started in a namespace; killed with its descendants on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    pid: u32,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid and its descendants (Nginx workers).
    pub fn tree(&self) -> Vec<u32> {
        process_tree(self.pid)
    }

    /// Fails with the end of its log if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Stops it: SIGTERM to it and its descendants (wireguard-go removes its socket, Nginx
    /// its workers), then SIGKILL to whatever is left after 3 s.
    pub async fn stop(mut self) {
        let tree = self.tree();
        signal_all("-TERM", &tree);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await;
        let left: Vec<u32> = tree
            .into_iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        kill_all(&left);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Once reaped, the pid may belong to someone else: never signal it then.
        if let Ok(None) = self.child.try_wait() {
            kill_all(&process_tree(self.pid));
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILL to each pid (all started by this run).
pub fn kill_all(pids: &[u32]) {
    signal_all("-KILL", pids);
}

/// Sends a signal (`-TERM`, `-KILL`) to each pid with `kill(1)`.
fn signal_all(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut command = std::process::Command::new("kill");
    command.arg(signal);
    for pid in pids {
        command.arg(pid.to_string());
    }
    let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// `pid` and every descendant, from the parent pids in `/proc/*/stat`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(child) {
                parents.push((child, stat.ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut seen: HashSet<u32> = HashSet::from([pid]);
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (child, ppid) in &parents {
            if *ppid == parent && seen.insert(*child) {
                tree.push(*child);
            }
        }
        i += 1;
    }
    tree
}

/// What `/proc/PID/stat` tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Parent pid.
    pub ppid: u32,
    /// User + system time, clock ticks.
    pub cpu_ticks: u64,
}

/// Parses `/proc/PID/stat` text (the command name may contain spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' : state(3) ppid(4) ... utime(14) stime(15): indices 0-based from field 3.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        cpu_ticks: utime + stime,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
pub const CLK_TCK: f64 = 100.0;

/// CPU seconds (user + system) used so far by the processes.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| read_stat(*p))
        .map(|s| s.cpu_ticks as f64 / CLK_TCK)
        .sum()
}

/// Parses `VmRSS:` (KiB) out of `/proc/PID/status` text.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident memory of the processes, KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| parse_vmrss_kib(&s))
        .sum()
}

/// 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The edge host and the origin host: two namespaces joined by a veth pair. Dropping it kills
/// every process still inside either namespace (all started by this run), deletes both
/// namespaces (and with them the veth and any WireGuard interface) and the `/etc/netns`
/// hosts files.
#[derive(Debug)]
pub struct Hosts {
    /// The edge host (load generator, edge).
    pub edge: Netns,
    /// The origin host (origin, app).
    pub origin: Netns,
    /// Edge's veth address.
    pub edge_ip: Ipv4Addr,
    /// Origin's veth address.
    pub origin_ip: Ipv4Addr,
    /// The third octet of the WireGuard subnet 10.250.W.0/24 (stock WireGuard contenders).
    pub wg_subnet: u8,
    /// A unique tag for more names (interfaces are at most 15 bytes).
    pub tag: String,
    created: Vec<String>,
    etc_dirs: Vec<PathBuf>,
}

impl Hosts {
    /// Creates both namespaces, the veth link (10.250.V.1/24 and .2/24), loopback up, and an
    /// `/etc/netns/<edge>/hosts` that maps the benchmark host names to 127.0.0.1 (so the load
    /// generators use real names, SNI included).
    pub async fn create(host_names: &[&str]) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let tag = format!("{:x}", pid % 0xfffff);
        // V even, W = V + 1, both below 250: distinct concurrent runs rarely collide, and a
        // collision could only clash inside each run's own namespaces.
        let veth_subnet = ((pid % 120) * 2 + 2) as u8;
        let mut hosts = Self {
            edge: Netns {
                name: format!("kokoa-bench-{tag}-edge"),
            },
            origin: Netns {
                name: format!("kokoa-bench-{tag}-origin"),
            },
            edge_ip: Ipv4Addr::new(10, 250, veth_subnet, 1),
            origin_ip: Ipv4Addr::new(10, 250, veth_subnet, 2),
            wg_subnet: veth_subnet + 1,
            tag: tag.clone(),
            created: Vec::new(),
            etc_dirs: Vec::new(),
        };
        for name in [hosts.edge.name.clone(), hosts.origin.name.clone()] {
            check(&["ip", "netns", "add", &name]).await?;
            hosts.created.push(name.clone());
            check(&["ip", "-n", &name, "link", "set", "lo", "up"]).await?;
        }
        let veth_edge = format!("kbe{tag}");
        let veth_origin = format!("kbo{tag}");
        check(&[
            "ip",
            "link",
            "add",
            &veth_edge,
            "netns",
            &hosts.edge.name,
            "type",
            "veth",
            "peer",
            "name",
            &veth_origin,
            "netns",
            &hosts.origin.name,
        ])
        .await?;
        for (ns, dev, ip) in [
            (&hosts.edge, &veth_edge, hosts.edge_ip),
            (&hosts.origin, &veth_origin, hosts.origin_ip),
        ] {
            let cidr = format!("{ip}/24");
            check(&["ip", "-n", ns.name(), "addr", "add", &cidr, "dev", dev]).await?;
            check(&["ip", "-n", ns.name(), "link", "set", dev, "up"]).await?;
        }
        let etc = PathBuf::from("/etc/netns").join(hosts.edge.name());
        std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        hosts.etc_dirs.push(etc.clone());
        let mut text = String::from("127.0.0.1 localhost\n");
        for name in host_names {
            text.push_str(&format!("127.0.0.1 {name}\n"));
        }
        std::fs::write(etc.join("hosts"), text).context("writing the edge host's hosts file")?;
        Ok(hosts)
    }

    /// Pids of every process inside a namespace (`ip netns pids`).
    fn pids_in(name: &str) -> Vec<u32> {
        std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.created {
            kill_all(&Self::pids_in(name));
        }
        // Give the kernel a moment to reap them before the namespaces go.
        std::thread::sleep(Duration::from_millis(200));
        for name in &self.created {
            match std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "could not delete namespace {name}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("could not delete namespace {name}: {e}"),
            }
        }
        for dir in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A private scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/kokoa-bench-<pid>` (mode 0700 by the umask of root is not assumed: the
    /// keys in it are throwaway keys of this run).
    pub fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("kokoa-bench-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing a stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("KOKOA_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_even_with_odd_command_names() {
        let text = "1234 (nginx: worker (x)) S 1200 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 1 0 500 1000000 200 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                ppid: 1200,
                cpu_ticks: 325
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn nofile_hard_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95000                95000                processes\n\
                      Max open files            1024                 20000                files\n";
        assert_eq!(parse_nofile_hard(limits), Some(20000));
        assert_eq!(parse_nofile_hard("nothing"), None);
    }

    #[test]
    fn vmrss() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t   4321 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kib(status), Some(4321));
        assert_eq!(parse_vmrss_kib("Name: x\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(rss_kib(&[me]) > 0);
        assert!(process_tree(me).contains(&me));
    }
}
