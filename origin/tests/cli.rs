//! Runs the built `kokoa-origin` binary: key helpers, `--help`, and config errors.

use std::io::Write as _;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kokoa-origin");

fn run(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kokoa-origin starts");
    {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("kokoa-origin exits")
}

#[test]
fn genkey_pubkey_round_trip() {
    let genkey = run(&["genkey"], None);
    assert!(genkey.status.success(), "{genkey:?}");
    let private = String::from_utf8(genkey.stdout).unwrap();
    let private = private.trim();
    assert_eq!(private.len(), 44, "WireGuard base64 key: {private}");

    let pubkey = run(&["pubkey"], Some(private));
    assert!(pubkey.status.success(), "{pubkey:?}");
    let public = String::from_utf8(pubkey.stdout).unwrap();
    let expected = kokoa_tunnel::key::PrivateKey::from_base64(private)
        .unwrap()
        .public_key()
        .to_base64();
    assert_eq!(public.trim(), expected);

    let bad = run(&["pubkey"], Some("not a key"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("private key"));
}

#[test]
fn help_lists_the_commands() {
    let help = run(&["--help"], None);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for word in [
        "--config",
        "--log-json",
        "genkey",
        "pubkey",
        "check-config",
        "run",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("origin.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn bad_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let key = kokoa_tunnel::key::PrivateKey::generate().to_base64();
    let config = write_config(
        &dir,
        &format!(
            "[origin]\naddress = \"10.100.1.1\"\n[tunnel]\nprivate_key = \"{key}\"\n\
             [[edges]]\nname = \"e\"\npublic_key = \"garbage\"\naddress = \"10.100.1.10\"\n"
        ),
    );
    for command in ["check-config", "run"] {
        let out = run(&["--config", &config, command], None);
        assert_eq!(out.status.code(), Some(2), "{command}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("edges[0].public_key"),
            "{command}: {stderr}"
        );
    }

    let unknown = write_config(&dir, "[origin]\naddres = \"10.100.1.1\"\n");
    let out = run(&["--config", &unknown, "check-config"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("addres"));

    let missing = dir.path().join("nope.toml");
    let out = run(
        &["--config", &missing.to_string_lossy(), "check-config"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn example_config_checks_ok() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/origin.toml");
    let out = run(&["--config", example, "check-config"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}
