//! The release artifacts `dist/build.sh` makes, used as a user would: the Debian packages
//! installed into a clean Debian root (a debootstrap chroot that `.ci/run` prepares), and the
//! container images started with `compose.yaml`, serving the sample app through the edge.
//!
//! They need the artifacts (`dist/build.sh`, in `target/dist` or `KOKOA_DIST_DIR`), root, and
//! for the packages a root file system (`dist/rootfs.sh`, in `target/dist-rootfs` or
//! `KOKOA_TEST_ROOTFS`), for the containers a running Docker daemon and docker-compose. Without
//! them they skip with the reason (and fail under `CI=true`), except that `.ci/run` may declare
//! containers impossible on its machine with `KOKOA_CONTAINERS_UNAVAILABLE=<reason>`, which it
//! prints too.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use kokoa_tests::client::{EdgeClient, Proto};
use kokoa_tests::eventually;
use kokoa_tests::net::{free_tcp, loopback};
use kokoa_tests::pki::client_config_trusting_pem;
use kokoa_tests::prereq;

use crate::run_bounded;

const TRIPLE: &str = "x86_64-unknown-linux-musl";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn dist_dir() -> PathBuf {
    std::env::var_os("KOKOA_DIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/dist"))
}

/// The built `.deb` of `package` (`kokoa-edge`, ...) for amd64.
fn deb(package: &str) -> Option<PathBuf> {
    std::fs::read_dir(dist_dir())
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with("_amd64.deb"))
        })
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    command
        .output()
        .with_context(|| format!("running {command:?}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(command: &mut Command) -> anyhow::Result<String> {
    let output = run(command)?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        text(&output)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `chroot ROOT sh -c SCRIPT`.
fn in_root(root: &Path, script: &str) -> Command {
    let mut command = Command::new("chroot");
    command
        .arg(root)
        .args(["/bin/sh", "-c", script])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// The uid or gid of `name` in the root's `/etc/passwd` or `/etc/group`.
fn id_in(root: &Path, file: &str, name: &str) -> anyhow::Result<u32> {
    let table = std::fs::read_to_string(root.join(file))?;
    table
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name))
                .then(|| fields.nth(1).and_then(|id| id.parse().ok()))
                .flatten()
        })
        .with_context(|| format!("no {name} in {file}"))
}

#[test]
fn debian_packages_install_into_a_clean_root_and_keep_edited_configs() {
    const TEST: &str = "debian_packages_install_into_a_clean_root_and_keep_edited_configs";
    let rootfs = std::env::var_os("KOKOA_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/dist-rootfs"));
    let debs: Vec<Option<PathBuf>> = ["kokoa-edge", "kokoa-origin", "kokoa-control"]
        .iter()
        .map(|p| deb(p))
        .collect();
    let missing = prereq::missing_root()
        .or_else(|| prereq::missing_tools(&["chroot", "cp"], "apt-get install coreutils"))
        .or_else(|| {
            debs.iter().any(Option::is_none).then(|| {
                format!(
                    "no amd64 .deb packages in {} (run dist/build.sh)",
                    dist_dir().display()
                )
            })
        })
        .or_else(|| {
            (!rootfs.join(".kokoa-rootfs-done").is_file()).then(|| {
                format!(
                    "no Debian root in {} (run dist/rootfs.sh {0})",
                    rootfs.display()
                )
            })
        });
    if !prereq::require(TEST, missing) {
        return;
    }
    let debs: Vec<PathBuf> = debs.into_iter().flatten().collect();
    let work = tempfile::tempdir().expect("temporary directory");
    let root = work.path().join("root");
    let result = (|| -> anyhow::Result<()> {
        // A fresh copy per run: the prepared root stays clean.
        ok(Command::new("cp").arg("-a").arg(&rootfs).arg(&root))?;
        std::fs::create_dir_all(root.join("tmp/debs"))?;
        let mut names = Vec::new();
        for deb in &debs {
            let name = deb.file_name().context("deb name")?.to_owned();
            std::fs::copy(deb, root.join("tmp/debs").join(&name))?;
            names.push(format!("/tmp/debs/{}", name.to_string_lossy()));
        }
        let installed = ok(&mut in_root(&root, &format!("dpkg -i {}", names.join(" "))))?;
        eprintln!("{installed}");

        for program in ["kokoa-edge", "kokoa-origin", "kokoa-control"] {
            let version = ok(&mut in_root(&root, &format!("{program} --version")))?;
            ensure!(
                version.starts_with(&format!("{program} {} (commit ", env!("CARGO_PKG_VERSION")))
                    && version.contains(TRIPLE),
                "{version}"
            );
            ensure!(
                root.join(format!("usr/share/man/man1/{program}.1.gz"))
                    .is_file(),
                "no man page for {program}"
            );
            ensure!(
                root.join(format!("usr/share/bash-completion/completions/{program}"))
                    .is_file(),
                "no bash completion for {program}"
            );
            ensure!(
                root.join(format!("lib/systemd/system/{program}.service"))
                    .is_file(),
                "no unit for {program}"
            );
        }
        for (node, config) in [("edge", "edge.toml"), ("origin", "origin.toml")] {
            let checked = ok(&mut in_root(
                &root,
                &format!("kokoa-{node} check-config --config /etc/kokoa/{node}/{config}"),
            ))?;
            ensure!(checked.contains(": ok"), "{checked}");
        }
        let checked = ok(&mut in_root(
            &root,
            "set -a; . /etc/kokoa/control/control.env; set +a; kokoa-control check-config",
        ))?;
        ensure!(checked.starts_with("settings ok"), "{checked}");

        // The user, the directories and the keys the maintainer scripts made.
        let uid = id_in(&root, "etc/passwd", "kokoa")?;
        let gid = id_in(&root, "etc/group", "kokoa")?;
        for name in ["edge", "origin", "control"] {
            let state = std::fs::metadata(root.join(format!("var/lib/kokoa-{name}")))?;
            ensure!(state.uid() == uid && state.permissions().mode() & 0o777 == 0o700);
        }
        for key in ["edge/edge.key", "origin/origin.key", "control/master.key"] {
            let meta = std::fs::metadata(root.join("etc/kokoa").join(key))
                .with_context(|| format!("no {key}"))?;
            ensure!(
                meta.gid() == gid && meta.permissions().mode() & 0o777 == 0o640,
                "{key}: gid {} mode {:o}",
                meta.gid(),
                meta.permissions().mode()
            );
        }

        // An edited config (and the key) survive reinstalling the package.
        let config = root.join("etc/kokoa/edge/edge.toml");
        let key = std::fs::read(root.join("etc/kokoa/edge/edge.key"))?;
        let mut edited = std::fs::read_to_string(&config)?;
        edited.push_str("# edited by the operator\n");
        std::fs::write(&config, &edited)?;
        ok(&mut in_root(&root, &format!("dpkg -i {}", names[0])))?;
        ensure!(
            std::fs::read_to_string(&config)? == edited,
            "reinstalling kokoa-edge replaced the edited config"
        );
        ensure!(std::fs::read(root.join("etc/kokoa/edge/edge.key"))? == key);

        // Purge removes what the package made.
        ok(&mut in_root(&root, "dpkg --purge kokoa-edge"))?;
        ensure!(!root.join("var/lib/kokoa-edge").exists());
        ensure!(!root.join("etc/kokoa/edge").exists());
        ensure!(!root.join("usr/bin/kokoa-edge").exists());
        ensure!(root.join("usr/bin/kokoa-origin").exists());
        Ok(())
    })();
    if let Err(error) = result {
        panic!("{error:#}");
    }
}

/// `docker-compose` (v1) or `docker compose` (v2), whichever is installed.
fn compose_command() -> Option<Vec<String>> {
    if prereq::which("docker-compose").is_some() {
        return Some(vec!["docker-compose".into()]);
    }
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    matches!(v2, Ok(o) if o.status.success()).then(|| vec!["docker".into(), "compose".into()])
}

/// Stops and removes the compose project (containers, network, volumes) when dropped.
struct ComposeProject {
    command: Vec<String>,
    name: String,
    https: u16,
    api: u16,
}

impl ComposeProject {
    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .args(["-p", &self.name, "-f", "compose.yaml"])
            .args(args)
            .current_dir(workspace())
            .env("KOKOA_DEMO_HTTPS", self.https.to_string())
            .env("KOKOA_DEMO_API", self.api.to_string());
        command
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let down = self.compose(&["down", "-v", "--timeout", "5"]).output();
        if let Ok(down) = down {
            if !down.status.success() {
                eprintln!("compose down failed: {}", text(&down));
            }
        }
    }
}

#[test]
fn compose_demo_serves_the_app_through_the_edge_container() {
    const TEST: &str = "compose_demo_serves_the_app_through_the_edge_container";
    if let Some(reason) = std::env::var("KOKOA_CONTAINERS_UNAVAILABLE")
        .ok()
        .filter(|r| !r.is_empty())
    {
        // Declared (and printed) by .ci/run: no container runtime can run on this machine.
        eprintln!("SKIPPED {TEST}: {reason}");
        println!("SKIPPED {TEST}: {reason}");
        return;
    }
    let compose = compose_command();
    let programs = dist_dir().join("stage").join(TRIPLE).join("bin");
    let missing = prereq::missing_tools(&["docker"], "apt-get install docker.io")
        .or_else(|| {
            compose
                .is_none()
                .then(|| "docker-compose not installed (apt-get install docker-compose)".into())
        })
        .or_else(|| {
            let info = Command::new("docker").arg("info").output();
            (!matches!(info, Ok(ref o) if o.status.success()))
                .then(|| "the Docker daemon is not running (start dockerd)".into())
        })
        .or_else(|| {
            (!programs.join("kokoa-edge").is_file()).then(|| {
                format!(
                    "no static programs in {} (run dist/build.sh)",
                    programs.display()
                )
            })
        });
    if !prereq::require(TEST, missing) {
        return;
    }
    let Some(command) = compose else { return };
    run_bounded(Duration::from_secs(900), async move {
        let project = ComposeProject {
            command,
            name: format!("kokoa-e2e-{}", std::process::id()),
            https: free_tcp(loopback(1))?.port(),
            api: free_tcp(loopback(1))?.port(),
        };
        let up = tokio::task::spawn_blocking({
            let mut up = project.compose(&["up", "-d", "--build"]);
            move || ok(&mut up)
        })
        .await??;
        eprintln!("{up}");
        for image in ["kokoa-edge:demo", "kokoa-origin:demo", "kokoa-control:demo"] {
            let user = ok(Command::new("docker").args([
                "image",
                "inspect",
                "--format",
                "{{.Config.User}}",
                image,
            ]))?;
            ensure!(user.trim() == "65532:65532", "{image} runs as {user:?}");
        }

        // Control writes the dev CA once it has uploaded the certificate.
        let control = ok(&mut project.compose(&["ps", "-q", "control"]))?
            .trim()
            .to_owned();
        let work = tempfile::tempdir()?;
        let ca_file = work.path().join("dev-ca.pem");
        eventually("control wrote the dev CA", Duration::from_secs(120), || {
            let copied = Command::new("docker")
                .arg("cp")
                .arg(format!("{control}:/var/lib/kokoa-dev/dev-ca.pem"))
                .arg(&ca_file)
                .output();
            async move {
                let copied = copied?;
                ensure!(copied.status.success(), "{}", text(&copied));
                Ok(())
            }
        })
        .await?;
        let ca = std::fs::read_to_string(&ca_file)?;
        let client = EdgeClient::with_configs(
            SocketAddr::from(([127, 0, 0, 1], project.https)),
            client_config_trusting_pem(&ca, &[b"http/1.1"])?,
            client_config_trusting_pem(&ca, &[b"h2"])?,
        );
        let logs = || {
            project
                .compose(&["logs", "--no-color", "--tail", "40"])
                .output()
                .map(|o| text(&o))
                .unwrap_or_default()
        };
        let page = eventually(
            "the app is served through the edge container",
            Duration::from_secs(180),
            || {
                let client = client.clone();
                async move {
                    let answer = client
                        .get("app.kokoa.localhost", "/from-compose", Proto::Http2)
                        .await?;
                    ensure!(answer.status == 200, "status {}", answer.status);
                    Ok(answer.text())
                }
            },
        )
        .await
        .with_context(logs)?;
        ensure!(
            page.contains("Hello from the Kokoa sample app")
                && page.contains("GET /from-compose")
                && page.contains("x-forwarded-proto: https"),
            "{page}"
        );
        drop(project);
        Ok(())
    });
}
