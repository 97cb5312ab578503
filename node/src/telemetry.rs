//! Tracing setup shared by the node binaries.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global tracing subscriber: human-readable lines on stderr, or one JSON object per
/// line when `json` is true. `RUST_LOG` selects what is logged (default `info`).
///
/// Human lines carry ANSI colours only when stderr (where the logs go) is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>), so files, pipes and journald get plain
/// text. JSON lines never carry colour.
///
/// Calling it twice is harmless: the second call keeps the first subscriber.
pub fn init(json: bool) {
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    init_with(json, ansi, std::io::stderr);
}

/// [`init`] writing to `writer` (a file, say) with colours as `ansi` says.
pub fn init_with<W>(json: bool, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = if json {
        builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.with_ansi(ansi).try_init()
    };
    // An already-installed subscriber (tests that start several nodes in one process) is fine.
    drop(result);
}

/// Whether human-readable logs get ANSI colours: only on a terminal, and never when `NO_COLOR`
/// holds a non-empty value.
pub fn use_colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }
}
