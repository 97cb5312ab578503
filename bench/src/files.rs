//! Names of results files: `<date>-<build>[-<kind>]` where build is the short git commit of
//! the tree that was measured, plus `-dirty` when it had uncommitted changes. A results file
//! is evidence and is never overwritten: when a name is taken (a second run of the same
//! build on the same day), the next free `-runN` suffix is used, and the files are created
//! with `create_new`, so not even a concurrent run can replace one.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// The build being measured: `git rev-parse --short HEAD`, plus `-dirty` when tracked files
/// differ from it (untracked files, such as new results, do not count). `unknown` outside a
/// git checkout.
pub fn build_id(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            build_name(&commit, dirty)
        }
        _ => "unknown".to_owned(),
    }
}

/// `commit` or `commit-dirty`.
pub fn build_name(commit: &str, dirty: bool) -> String {
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit.to_owned()
    }
}

/// The stem of a results file: `2026-12-07-abc1234` or `2026-12-07-abc1234-micro`.
pub fn stem(date: &str, build: &str, kind: Option<&str>) -> String {
    match kind {
        Some(kind) => format!("{date}-{build}-{kind}"),
        None => format!("{date}-{build}"),
    }
}

/// The `n`th candidate for `stem`: the stem itself, then `stem-run2`, `stem-run3`, ...
fn candidate(stem: &str, n: usize) -> String {
    if n <= 1 {
        stem.to_owned()
    } else {
        format!("{stem}-run{n}")
    }
}

/// Files created for one results set (same stem, one per extension), all new and empty.
#[derive(Debug)]
pub struct NewFiles {
    /// The stem that was free, suffix included.
    pub stem: String,
    /// `(path, file)` per extension, in the order asked.
    pub files: Vec<(PathBuf, File)>,
}

impl NewFiles {
    /// The file name (no directory) for an extension.
    pub fn name(&self, ext: &str) -> String {
        format!("{}.{ext}", self.stem)
    }

    /// Writes `contents` into the file for `ext` and returns its path.
    pub fn write(&mut self, ext: &str, contents: &[u8]) -> anyhow::Result<PathBuf> {
        let name = self.name(ext);
        let (path, file) = self
            .files
            .iter_mut()
            .find(|(p, _)| p.file_name().is_some_and(|n| n == name.as_str()))
            .with_context(|| format!("no file reserved for .{ext}"))?;
        file.write_all(contents)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path.clone())
    }
}

/// Creates `dir/<stem>.<ext>` for every extension, with the first candidate stem for which
/// none of them exists. Never opens an existing file.
pub fn create_new(dir: &Path, stem: &str, exts: &[&str]) -> anyhow::Result<NewFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    'candidates: for n in 1..=1000 {
        let stem = candidate(stem, n);
        let paths: Vec<PathBuf> = exts
            .iter()
            .map(|ext| dir.join(format!("{stem}.{ext}")))
            .collect();
        if paths.iter().any(|p| p.exists()) {
            continue;
        }
        let mut files = Vec::new();
        for path in paths {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => files.push((path, file)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // Taken between the check and the open: give back what this attempt made.
                    for (made, _) in files {
                        let _ = std::fs::remove_file(made);
                    }
                    continue 'candidates;
                }
                Err(e) => {
                    for (made, _) in files {
                        let _ = std::fs::remove_file(made);
                    }
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        return Ok(NewFiles { stem, files });
    }
    anyhow::bail!("no free name for {stem} in {}", dir.display())
}

/// Today's date in UTC as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    date_of(secs)
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn date_of(secs: u64) -> String {
    let (y, m, d, _, _) = crate::report::civil_from_unix(secs);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("kokoa-bench-{name}-"))
            .tempdir()
            .expect("temp dir")
    }

    #[test]
    fn names_carry_date_build_and_kind() {
        assert_eq!(build_name("0e3bf9c", false), "0e3bf9c");
        assert_eq!(build_name("0e3bf9c", true), "0e3bf9c-dirty");
        assert_eq!(stem("2026-12-07", "0e3bf9c", None), "2026-12-07-0e3bf9c");
        assert_eq!(
            stem("2026-12-07", "0e3bf9c-dirty", Some("micro")),
            "2026-12-07-0e3bf9c-dirty-micro"
        );
    }

    #[test]
    fn an_existing_name_gets_the_next_suffix_and_is_left_untouched() {
        let dir = temp_dir("names");
        std::fs::write(dir.path().join("2026-12-07-abc.md"), "first run").expect("seed");
        // Only the chart of a second run exists: the whole set moves on, so the .md and
        // .svg of one run always share a stem.
        std::fs::write(dir.path().join("2026-12-07-abc-run2.svg"), "second run").expect("seed");

        let mut third = create_new(dir.path(), "2026-12-07-abc", &["md", "svg"]).expect("third");
        assert_eq!(third.stem, "2026-12-07-abc-run3");
        third.write("md", b"third run").expect("write md");
        let mut fourth = create_new(dir.path(), "2026-12-07-abc", &["md", "svg"]).expect("fourth");
        assert_eq!(fourth.stem, "2026-12-07-abc-run4");
        assert_eq!(fourth.name("svg"), "2026-12-07-abc-run4.svg");
        fourth.write("svg", b"<svg/>").expect("write svg");

        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
        assert_eq!(read("2026-12-07-abc.md"), "first run");
        assert_eq!(read("2026-12-07-abc-run2.svg"), "second run");
        assert_eq!(read("2026-12-07-abc-run3.md"), "third run");
        assert_eq!(read("2026-12-07-abc-run3.svg"), "");
        assert_eq!(read("2026-12-07-abc-run4.svg"), "<svg/>");
        assert!(!dir.path().join("2026-12-07-abc-run2.md").exists());
    }

    #[test]
    fn a_free_name_is_used_as_is() {
        let dir = temp_dir("free");
        let files = create_new(&dir.path().join("results"), "2026-12-07-abc-micro", &["md"])
            .expect("create");
        assert_eq!(files.stem, "2026-12-07-abc-micro");
        assert!(dir.path().join("results/2026-12-07-abc-micro.md").exists());
        assert_eq!(files.files.len(), 1);
    }

    #[test]
    fn build_id_names_the_commit_of_a_repository() {
        let dir = temp_dir("git");
        let git = |args: &[&str]| {
            let status = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .status()
                .expect("git runs");
            assert!(status.success(), "git {args:?}");
        };
        assert_eq!(build_id(dir.path()), "unknown");
        git(&["init", "-q"]);
        std::fs::write(dir.path().join("f"), "1").expect("write");
        git(&["add", "f"]);
        git(&["-c", "commit.gpgsign=false", "commit", "-q", "-m", "one"]);
        let commit = String::from_utf8(
            Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .expect("git")
                .stdout,
        )
        .expect("utf-8");
        let commit = commit.trim();
        assert_eq!(build_id(dir.path()), commit);
        std::fs::write(dir.path().join("new-results.md"), "untracked").expect("write");
        assert_eq!(build_id(dir.path()), commit, "untracked files are not dirt");
        std::fs::write(dir.path().join("f"), "2").expect("write");
        assert_eq!(build_id(dir.path()), format!("{commit}-dirty"));
    }
}
