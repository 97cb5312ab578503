//! Node bundles on a bare host: `kokoa-control bundle ... --with-binary` carries the program, and
//! the bundle's `install.sh`, run into a temporary root (`KOKOA_ROOT`), puts the program, the
//! config, control's CA, the token and the unit where the unit expects them. Without a program
//! in the bundle it takes an installed one, and with none it refuses, saying how to get one.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use kokoa_tests::control::Control;
use kokoa_tests::process::binary;
use serde_json::json;

use crate::run_bounded;

async fn cli(control: &Control, args: &[&str]) -> anyhow::Result<Output> {
    tokio::process::Command::new(binary("kokoa-control")?)
        .args(args)
        .env("KOKOA_API_URL", control.url())
        .env("KOKOA_CA_FILE", control.data_dir.join("ca.crt"))
        .env("KOKOA_API_TOKEN", &control.token)
        .output()
        .await
        .with_context(|| format!("running kokoa-control {args:?}"))
}

async fn untar(archive: &Path, into: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(into)?;
    let status = tokio::process::Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .await?;
    ensure!(status.success(), "tar -xzf {} failed", archive.display());
    Ok(())
}

/// Runs `dir/install.sh` with `KOKOA_ROOT=root` and extra environment.
async fn install(dir: &Path, root: &Path, env: &[(&str, &Path)]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg(dir.join("install.sh"))
        .env("KOKOA_ROOT", root)
        .env_remove("KOKOA_BIN");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().await.context("running install.sh")
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn bundles_install_their_program_on_a_bare_host() {
    run_bounded(Duration::from_secs(120), async {
        let work = tempfile::tempdir()?;
        let control = Control::start(work.path()).await?;
        control
            .ok("POST", "/origins", Some(json!({ "name": "home" })))
            .await?;
        control
            .ok(
                "POST",
                "/edge-nodes",
                Some(json!({ "name": "vps1", "endpoint": "127.0.0.1:51820", "origins": ["home"] })),
            )
            .await?;

        // An edge bundle carrying kokoa-edge, installed into an empty root.
        let archive = work.path().join("vps1.tar.gz");
        let archive_arg = archive.display().to_string();
        let made = cli(
            &control,
            &[
                "bundle",
                "edge",
                "vps1",
                "-o",
                &archive_arg,
                "--with-binary",
            ],
        )
        .await?;
        ensure!(made.status.success(), "{}", text(&made));
        ensure!(
            text(&made).contains("x86_64") || text(&made).contains("aarch64"),
            "{}",
            text(&made)
        );
        untar(&archive, &work.path().join("unpacked")).await?;
        let bundle = work.path().join("unpacked/kokoa-edge-vps1");
        let program = std::fs::read(binary("kokoa-edge")?)?;
        ensure!(
            std::fs::read(bundle.join("kokoa-edge"))? == program,
            "the bundle's kokoa-edge is not the program next to kokoa-control"
        );

        let root = work.path().join("root");
        let installed = install(&bundle, &root, &[]).await?;
        ensure!(
            installed.status.success(),
            "install.sh: {}",
            text(&installed)
        );
        let bin = root.join("usr/local/bin/kokoa-edge");
        ensure!(std::fs::read(&bin)? == program, "installed program differs");
        ensure!(mode(&bin)? == 0o755, "program mode {:o}", mode(&bin)?);
        let etc = root.join("etc/kokoa/edge");
        ensure!(
            std::fs::read(etc.join("edge.toml"))? == std::fs::read(bundle.join("edge.toml"))?,
            "edge.toml differs"
        );
        ensure!(mode(&etc.join("edge.toml"))? == 0o640);
        ensure!(mode(&etc.join("enroll.token"))? == 0o640);
        ensure!(etc.join("control-ca.pem").is_file());
        ensure!(mode(&root.join("var/lib/kokoa-edge"))? == 0o700);
        let unit = std::fs::read_to_string(root.join("etc/systemd/system/kokoa-edge.service"))?;
        ensure!(
            unit.contains("ExecStart=/usr/local/bin/kokoa-edge --config /etc/kokoa/edge/edge.toml"),
            "{unit}"
        );
        // The installed program accepts the installed config.
        let checked = tokio::process::Command::new(&bin)
            .arg("check-config")
            .arg("--config")
            .arg(etc.join("edge.toml"))
            .output()
            .await?;
        ensure!(checked.status.success(), "check-config: {}", text(&checked));
        ensure!(
            text(&checked).contains("control mode"),
            "{}",
            text(&checked)
        );

        // An origin bundle without a program: refused on a bare root, with the way out...
        let archive = work.path().join("home.tar.gz");
        let archive_arg = archive.display().to_string();
        let made = cli(&control, &["bundle", "origin", "home", "-o", &archive_arg]).await?;
        ensure!(made.status.success(), "{}", text(&made));
        untar(&archive, &work.path().join("unpacked")).await?;
        let bundle = work.path().join("unpacked/kokoa-origin-home");
        ensure!(!bundle.join("kokoa-origin").exists());
        let bare = work.path().join("bare");
        let refused = install(&bundle, &bare, &[]).await?;
        ensure!(!refused.status.success(), "installed without a program");
        ensure!(
            text(&refused).contains("--with-binary"),
            "{}",
            text(&refused)
        );
        ensure!(
            !bare.join("etc/kokoa").exists(),
            "a refused install left files behind"
        );
        // ...installed from KOKOA_BIN...
        let origin_program = binary("kokoa-origin")?;
        let with_bin = work.path().join("with-bin");
        let installed = install(&bundle, &with_bin, &[("KOKOA_BIN", &origin_program)]).await?;
        ensure!(installed.status.success(), "{}", text(&installed));
        ensure!(
            std::fs::read(with_bin.join("usr/local/bin/kokoa-origin"))?
                == std::fs::read(&origin_program)?
        );
        // ...or using the Debian package's /usr/bin program.
        let packaged = work.path().join("packaged");
        std::fs::create_dir_all(packaged.join("usr/bin"))?;
        std::fs::copy(&origin_program, packaged.join("usr/bin/kokoa-origin"))?;
        let installed = install(&bundle, &packaged, &[]).await?;
        ensure!(installed.status.success(), "{}", text(&installed));
        ensure!(!packaged.join("usr/local/bin/kokoa-origin").exists());
        let unit =
            std::fs::read_to_string(packaged.join("etc/systemd/system/kokoa-origin.service"))?;
        ensure!(
            unit.contains("ExecStart=/usr/bin/kokoa-origin --config"),
            "{unit}"
        );

        // --with-binary refuses a file that is not a program.
        let not_a_program = work.path().join("kokoa-origin.txt");
        std::fs::write(&not_a_program, "#!/bin/sh\necho hi\n")?;
        let refused = cli(
            &control,
            &[
                "bundle",
                "origin",
                "home",
                "-o",
                &archive_arg,
                "--with-binary",
                &not_a_program.display().to_string(),
            ],
        )
        .await?;
        ensure!(!refused.status.success());
        ensure!(
            text(&refused).contains("not a Linux program"),
            "{}",
            text(&refused)
        );
        Ok(())
    });
}
