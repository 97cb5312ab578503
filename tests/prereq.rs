//! The one place that decides whether a test whose prerequisite is missing (root, a Debian
//! package, a PostgreSQL server) skips or fails.
//!
//! Outside CI a missing prerequisite prints `SKIPPED <test>: <reason>` and the test returns
//! early and passes, so `cargo test` works on a laptop without BIND or root. Under `CI=true`
//! (what `.ci/run` exports) the same situation panics: CI installs everything, so a missing
//! piece there is a broken CI script, never a silent pass. Every test that needs something
//! outside the workspace goes through [`require`] (or one of the helpers built on it).

use std::path::PathBuf;

/// Whether this process runs under CI (`CI=true`), where prerequisites are mandatory.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `true` when `missing` is `None` (the test goes on). Otherwise prints `SKIPPED test: reason`
/// and returns `false`, or panics under `CI=true`.
pub fn require(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(reason) => {
            if in_ci() {
                panic!("{test}: prerequisite missing under CI=true: {reason}");
            }
            eprintln!("SKIPPED {test}: {reason}");
            println!("SKIPPED {test}: {reason}");
            false
        }
    }
}

/// Why `tools` cannot be used, if one of them is not installed (`hint` says which Debian
/// packages provide them, e.g. `"apt-get install pebble bind9"`).
pub fn missing_tools(tools: &[&str], hint: &str) -> Option<String> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| which(tool).is_none())
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("{} not installed ({hint})", missing.join(", ")))
    }
}

/// [`require`] for a list of programs.
pub fn tools(test: &str, tools: &[&str], hint: &str) -> bool {
    require(test, missing_tools(tools, hint))
}

/// Why the test cannot do what needs root (network namespaces, binding low ports), if this
/// process is not root.
pub fn missing_root() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    if uid.as_deref() == Some("0") {
        None
    } else {
        Some("not running as root (network namespaces need CAP_NET_ADMIN)".into())
    }
}

/// The PostgreSQL server URL the tests may create databases on (`KOKOA_TEST_POSTGRES`), or
/// `None` after [`require`] reported it missing.
pub fn postgres(test: &str) -> Option<String> {
    match std::env::var("KOKOA_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            require(
                test,
                Some(
                    "KOKOA_TEST_POSTGRES is not set (postgres://USER:PASS@HOST/DB of a server \
                     the tests may create databases on; .ci/run sets one up)"
                        .into(),
                ),
            );
            None
        }
    }
}

/// The path of `tool` in `PATH`, or in `/usr/sbin` and `/sbin` (where Debian puts `named`,
/// `ip` and `pdns_server` for non-root users).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_prerequisites_go_on() {
        assert!(require("t", None));
        assert!(missing_tools(&["sh"], "").is_none());
    }

    #[test]
    fn a_missing_tool_is_named() {
        let reason = missing_tools(&["sh", "kokoa-no-such-tool"], "apt-get install x").unwrap();
        assert!(reason.contains("kokoa-no-such-tool"), "{reason}");
        assert!(!reason.contains("sh,"), "{reason}");
        assert!(reason.contains("apt-get install x"), "{reason}");
    }

    #[test]
    fn missing_prerequisite_skips_outside_ci_and_fails_in_ci() {
        // The decision itself, without touching this process's environment.
        let outcome = std::panic::catch_unwind(|| require("t", Some("gone".into())));
        if in_ci() {
            assert!(
                outcome.is_err(),
                "CI=true must fail on a missing prerequisite"
            );
        } else {
            assert_eq!(outcome.ok(), Some(false));
        }
    }
}
