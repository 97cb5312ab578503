//! What an operator sees of the `kokoa-control` binary before anything runs: `--version`, help
//! that offers client flags only to client commands, shell completions, man pages, and
//! `check-config` (exit 0, or 2 naming the bad setting, and nothing written either way).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kokoa-control");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("KOKOA_MASTER_KEY")
        .env_remove("KOKOA_MASTER_KEY_FILE")
        .env_remove("KOKOA_DATA_DIR")
        .env_remove("KOKOA_DATABASE")
        .output()
        .expect("running kokoa-control")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_names_the_commit_the_build_date_and_the_target() {
    let output = run(&["--version"]);
    assert!(output.status.success());
    let text = stdout(&output);
    let text = text.trim();
    let rest = text
        .strip_prefix(&format!(
            "kokoa-control {} (commit ",
            env!("CARGO_PKG_VERSION")
        ))
        .unwrap_or_else(|| panic!("{text}"));
    let (commit, rest) = rest
        .split_once(", built ")
        .unwrap_or_else(|| panic!("{text}"));
    let (date, target) = rest.split_once(", ").unwrap_or_else(|| panic!("{text}"));
    assert!(target.ends_with(')') && target.contains("linux"), "{text}");
    let date = date.as_bytes();
    assert!(
        date.len() == 10 && date[4] == b'-' && date[7] == b'-',
        "{text}"
    );
    // Built from this checkout: the commit is HEAD's (git is there wherever the tests build).
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(head) = head {
        assert_eq!(commit, head, "{text}");
    }
}

#[test]
fn client_flags_appear_only_on_client_commands() {
    for server in [
        &["serve", "--help"][..],
        &["dev", "--help"],
        &["check-config", "--help"],
        &["sample-app", "--help"],
    ] {
        let help = stdout(&run(server));
        assert!(help.contains("Usage:"), "{server:?}: {help}");
        for flag in ["--api-url", "--token", "--json"] {
            assert!(!help.contains(flag), "{server:?} offers {flag}:\n{help}");
        }
    }
    for client in [&["route", "list", "--help"][..], &["status", "--help"]] {
        let help = stdout(&run(client));
        for flag in ["--api-url", "--token", "--json"] {
            assert!(help.contains(flag), "{client:?} lacks {flag}:\n{help}");
        }
    }
    // A server command refuses a client flag rather than ignoring it.
    let refused = run(&["serve", "--token", "x"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--token"), "{}", stderr(&refused));
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success(), "{}", stderr(&bash));
    let bash = stdout(&bash);
    for word in ["serve", "route", "--with-binary", "check-config"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let zsh = stdout(&run(&["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef kokoa-control"), "{zsh}");

    let dir = tempfile::tempdir().expect("dir");
    let man = run(&["man", "--dir", &dir.path().display().to_string()]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = std::fs::read_to_string(dir.path().join("kokoa-control.1")).expect("main page");
    assert!(
        page.starts_with(".ie") || page.contains(".TH kokoa-control"),
        "{page}"
    );
    let serve = std::fs::read_to_string(dir.path().join("kokoa-control-serve.1")).expect("serve");
    assert!(serve.contains("master\\-key\\-file"), "{serve}");
    assert!(dir.path().join("kokoa-control-route-add.1").is_file());
}

#[test]
fn check_config_accepts_usable_settings_and_names_bad_ones_without_writing() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let key = dir.path().join("master.key");
    std::fs::write(
        &key,
        kokoa_control::store::MasterKey::generate().to_base64(),
    )
    .expect("key");
    let data_arg = data.display().to_string();
    let key_arg = key.display().to_string();

    let good = run(&[
        "check-config",
        "--data-dir",
        &data_arg,
        "--master-key-file",
        &key_arg,
        "--grpc-name",
        "control.example.com",
    ]);
    assert!(good.status.success(), "{}", stderr(&good));
    let report = stdout(&good);
    assert!(report.starts_with("settings ok"), "{report}");
    assert!(
        report.contains("https://control.example.com:7443"),
        "{report}"
    );
    assert!(!data.exists(), "check-config created the data directory");

    let no_key = run(&["check-config", "--data-dir", &data_arg]);
    assert_eq!(no_key.status.code(), Some(2), "{}", stderr(&no_key));
    assert!(
        stderr(&no_key).contains("master key"),
        "{}",
        stderr(&no_key)
    );

    let bad_database = run(&[
        "check-config",
        "--data-dir",
        &data_arg,
        "--master-key-file",
        &key_arg,
        "--database",
        "mysql://x",
    ]);
    assert_eq!(bad_database.status.code(), Some(2));
    assert!(
        stderr(&bad_database).contains("--database"),
        "{}",
        stderr(&bad_database)
    );

    let bad_acme = run(&[
        "check-config",
        "--data-dir",
        &data_arg,
        "--master-key-file",
        &key_arg,
        "--acme-directory",
        "lets-encrypt",
    ]);
    assert_eq!(bad_acme.status.code(), Some(2));
    assert!(
        stderr(&bad_acme).contains("--acme-directory"),
        "{}",
        stderr(&bad_acme)
    );
    assert!(!data.exists());
}
