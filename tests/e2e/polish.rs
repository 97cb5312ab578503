//! What an operator sees of `kokoa-edge` and `kokoa-origin` around the data path: `--version`
//! with commit and build date, completions and man pages generated from the flags, and logs
//! without ANSI colours when they go to a file (as under systemd or `> log`).

use std::time::Duration;

use anyhow::{ensure, Context as _};
use kokoa_tests::net::{free_tcp, free_udp, loopback};
use kokoa_tests::process::binary;

use crate::run_bounded;

async fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(binary(program)?)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program} {args:?}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn node_programs_print_their_build_and_generate_completions_and_man_pages() {
    run_bounded(Duration::from_secs(60), async {
        for program in ["kokoa-edge", "kokoa-origin"] {
            let version = output(program, &["--version"]).await?;
            let prefix = format!("{program} {} (commit ", env!("CARGO_PKG_VERSION"));
            ensure!(version.starts_with(&prefix), "{version}");
            ensure!(
                version.contains(", built 20") && version.contains("linux"),
                "{version}"
            );

            let bash = output(program, &["completions", "bash"]).await?;
            for word in ["check-config", "genkey", "--config", "--log-json"] {
                ensure!(
                    bash.contains(word),
                    "{program} bash completion lacks {word}"
                );
            }
            let fish = output(program, &["completions", "fish"]).await?;
            ensure!(fish.contains(&format!("complete -c {program}")), "{fish}");

            let dir = tempfile::tempdir()?;
            output(
                program,
                &["man", "--dir", &dir.path().display().to_string()],
            )
            .await?;
            let page = std::fs::read_to_string(dir.path().join(format!("{program}.1")))?;
            ensure!(page.contains(&format!(".TH {program}")), "{page}");
            ensure!(page.contains("log\\-json"), "{page}");
            ensure!(dir
                .path()
                .join(format!("{program}-check-config.1"))
                .is_file());
        }
        Ok(())
    });
}

#[test]
fn logs_in_a_file_carry_no_colour_codes() {
    run_bounded(Duration::from_secs(60), async {
        let dir = tempfile::tempdir()?;
        let key = output("kokoa-edge", &["genkey"]).await?;
        std::fs::write(dir.path().join("edge.key"), key)?;
        let admin = free_tcp(loopback(1))?;
        let config = dir.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "[edge]\nhttps = \"{}\"\nhttp = \"{}\"\nadmin = \"{admin}\"\n\n[tunnel]\n\
                 private_key_file = \"edge.key\"\nlisten = \"{}\"\n",
                free_tcp(loopback(1))?,
                free_tcp(loopback(1))?,
                free_udp(loopback(1))?
            ),
        )?;
        // Not through Process::spawn, which sets NO_COLOR: here nothing but the file decides.
        let log = dir.path().join("edge.log");
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(binary("kokoa-edge")?)
            .arg("--config")
            .arg(&config)
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?;
        // Healthy means it logged its start-up lines.
        let ready = async {
            for _ in 0..200 {
                if kokoa_tests::net::http_get(admin, "/healthz").await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::bail!("the edge never became healthy")
        };
        ready.await?;
        drop(child);
        let text = std::fs::read_to_string(&log)?;
        ensure!(text.contains("INFO"), "no log lines:\n{text}");
        ensure!(
            !text.contains('\u{1b}'),
            "ANSI escape codes in a log file:\n{text}"
        );
        Ok(())
    });
}
