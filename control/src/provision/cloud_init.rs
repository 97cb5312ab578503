//! The cloud-init user data a new VPS boots with: it writes the edge's bundle (bootstrap config,
//! control's CA, one-time enrollment token), fetches `kokoa-edge` from the configured release
//! URL and checks its SHA-256 (or, without a release, uses the program the image already has),
//! and runs the bundle's `install.sh`, which installs and starts the systemd unit; the edge then
//! enrolls with the token.
//!
//! The token travels in the user data, which the provider keeps and serves to the VPS's
//! metadata endpoint: it is one-time (spent at the first enrollment) and expires with the
//! bundle's TTL, so a copy read later is worthless.

use base64::Engine as _;

use super::cloud::Release;

/// Where the bundle is written on the VPS.
pub const BUNDLE_PATH: &str = "/root/kokoa-edge-bundle.tar.gz";
/// Where the downloaded program is written before `install.sh` installs it.
pub const PROGRAM_PATH: &str = "/root/kokoa-edge.download";

/// A single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `#cloud-config` user data for the edge `name` with `bundle` (tar.gz from
/// [`crate::bundle::build`]).
pub fn user_data(name: &str, bundle: &[u8], release: Option<&Release>) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let fetch = match release {
        Some(release) => format!(
            "curl -fsSL --retry 5 --retry-delay 2 -o {PROGRAM_PATH} {url}\n      \
             echo {sum} | sha256sum -c -\n      \
             chmod 0755 {PROGRAM_PATH}\n      \
             export KOKOA_BIN={PROGRAM_PATH}\n      ",
            url = shell_quote(&release.url),
            sum = shell_quote(&format!("{}  {PROGRAM_PATH}", release.sha256)),
        ),
        None => String::new(),
    };
    let dir = format!("/root/kokoa-edge-{name}");
    format!(
        "#cloud-config\n\
         # kokoa-edge {name:?}: installs the node bundle made by kokoa-control and enrolls it.\n\
         write_files:\n  \
         - path: {BUNDLE_PATH}\n    \
         encoding: b64\n    \
         permissions: '0600'\n    \
         content: {encoded}\n\
         runcmd:\n  \
         - |\n      \
         set -eu\n      \
         cd /root\n      \
         {fetch}tar -xzf {BUNDLE_PATH} -C /root\n      \
         {dir}/install.sh\n      \
         rm -f {BUNDLE_PATH} {dir}/enroll.token\n",
        dir = shell_quote(&dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_carries_the_bundle_and_checks_the_program() {
        let release = Release {
            url: "https://example.com/kokoa-edge".into(),
            sha256: "ab".repeat(32),
        };
        let data = user_data("edge1", b"bundle bytes", Some(&release));
        assert!(data.starts_with("#cloud-config\n"));
        let encoded = base64::engine::general_purpose::STANDARD.encode(b"bundle bytes");
        assert!(data.contains(&format!("content: {encoded}\n")));
        assert!(data.contains("curl -fsSL --retry 5 --retry-delay 2 -o /root/kokoa-edge.download 'https://example.com/kokoa-edge'"));
        assert!(data.contains(&format!(
            "echo '{}  /root/kokoa-edge.download' | sha256sum -c -",
            "ab".repeat(32)
        )));
        assert!(data.contains("'/root/kokoa-edge-edge1'/install.sh"));
        // Without a release, the image's own kokoa-edge is used: nothing is downloaded.
        let data = user_data("edge1", b"x", None);
        assert!(!data.contains("curl"));
        // The runcmd script is valid sh.
        let script: String = data
            .split("- |\n")
            .nth(1)
            .expect("script")
            .lines()
            .map(|l| l.trim_start().to_owned() + "\n")
            .collect();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("runcmd.sh");
        std::fs::write(&path, script).expect("write");
        let syntax = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("sh");
        assert!(
            syntax.status.success(),
            "{}",
            String::from_utf8_lossy(&syntax.stderr)
        );
    }
}
