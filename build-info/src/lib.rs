//! Build-script helper for the three Kokoa binaries: `--version` says which commit a binary was
//! built from, when, and for which target, so an operator can tell two builds of `0.1.0` apart.
//!
//! Each binary's package calls [`emit`] from its `build.rs`; the program then reads
//! `env!("KOKOA_LONG_VERSION")`, e.g. `0.1.0 (commit 1a2b3c4d5e6f, built 2026-12-06,
//! x86_64-unknown-linux-musl)`, and the parts `KOKOA_GIT_COMMIT`, `KOKOA_BUILD_DATE` and
//! `KOKOA_BUILD_TARGET`.
//!
//! Sources, in order: `KOKOA_BUILD_COMMIT` (for builds outside a git checkout, such as a source
//! tarball), else `git rev-parse HEAD` in the package's directory, else `unknown`; the date is
//! `SOURCE_DATE_EPOCH` when set (reproducible builds) and the build script's run otherwise. The
//! script reruns only when HEAD moves or those variables change, so an ordinary edit-compile
//! cycle does not rebuild anything for it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Prints the `cargo:` lines that set the version variables. Call it from `build.rs`.
pub fn emit() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-env-changed=KOKOA_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = match std::env::var("KOKOA_BUILD_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => {
            for path in git_watch_paths(&dir) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            git(&dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    let date = build_date(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".into());
    println!("cargo:rustc-env=KOKOA_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=KOKOA_BUILD_DATE={date}");
    println!("cargo:rustc-env=KOKOA_BUILD_TARGET={target}");
    println!(
        "cargo:rustc-env=KOKOA_LONG_VERSION={}",
        long_version(&version, &commit, &date, &target)
    );
}

/// The `--version` text after the program name.
pub fn long_version(version: &str, commit: &str, date: &str, target: &str) -> String {
    format!("{version} (commit {commit}, built {date}, {target})")
}

/// `YYYY-MM-DD` (UTC) of `SOURCE_DATE_EPOCH`, or of now when it is unset or not a number.
pub fn build_date(source_date_epoch: Option<&str>) -> String {
    let now = time::OffsetDateTime::now_utc();
    let when = source_date_epoch
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(now);
    let date = when.date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The files whose change means HEAD moved: `HEAD` itself, the branch it names (loose or packed).
/// Only existing files are listed: cargo treats a missing one as always changed.
fn git_watch_paths(dir: &Path) -> Vec<PathBuf> {
    let Some(git_dir) = git(dir, &["rev-parse", "--absolute-git-dir"]) else {
        return Vec::new();
    };
    let git_dir = PathBuf::from(git_dir);
    let common = git(dir, &["rev-parse", "--git-common-dir"])
        .map(|common| {
            let common = PathBuf::from(common);
            if common.is_absolute() {
                common
            } else {
                dir.join(common)
            }
        })
        .unwrap_or_else(|| git_dir.clone());
    let mut paths = vec![git_dir.join("HEAD")];
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        paths.push(common.join(reference));
    }
    paths.push(common.join("packed-refs"));
    paths.retain(|path| path.is_file());
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_comes_from_source_date_epoch() {
        assert_eq!(build_date(Some("1796593930")), "2026-12-06");
        assert_eq!(build_date(Some("0")), "1970-01-01");
        // Garbage falls back to today, which is at least a well-formed date.
        let today = build_date(Some("yesterday"));
        assert_eq!(today.len(), 10, "{today}");
        assert_eq!(&today[4..5], "-");
    }

    #[test]
    fn long_version_names_every_part() {
        assert_eq!(
            long_version("0.1.0", "1a2b3c", "2026-12-06", "x86_64-unknown-linux-musl"),
            "0.1.0 (commit 1a2b3c, built 2026-12-06, x86_64-unknown-linux-musl)"
        );
    }
}
