//! Shell completions and man pages for the Kokoa programs, generated from their clap
//! definitions (`kokoa-* completions SHELL`, `kokoa-* man --dir DIR`), so they never drift from
//! the flags the programs accept. The Debian packages install both.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

/// Writes `command`'s completion script for `shell` to `out`.
pub fn completions(
    mut command: clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, out);
    out.flush().context("writing the completion script")
}

/// Writes `NAME.1` and one page per subcommand (`NAME-SUB.1`) into `dir` (created if missing).
pub fn man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("kokoa-test")
            .about("A test program")
            .arg(clap::Arg::new("config").long("config").help("Config file"))
            .subcommand(clap::Command::new("check-config").about("Check it"))
    }

    #[test]
    fn completions_name_the_flags_and_subcommands() {
        let mut bash = Vec::new();
        completions(command(), clap_complete::Shell::Bash, &mut bash).expect("bash");
        let bash = String::from_utf8(bash).expect("utf-8");
        assert!(bash.contains("--config"), "{bash}");
        assert!(bash.contains("check-config"), "{bash}");
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = tempfile::tempdir().expect("dir");
        man_pages(command(), dir.path()).expect("pages");
        let page = std::fs::read_to_string(dir.path().join("kokoa-test.1")).expect("main page");
        assert!(page.contains(".TH"), "{page}");
        assert!(page.contains("config"), "{page}");
        assert!(dir.path().join("kokoa-test-check-config.1").is_file());
    }
}
