//! Tracing setup shared by the node binaries.

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global tracing subscriber: human-readable lines on stderr, or one JSON object per
/// line when `json` is true. `RUST_LOG` selects what is logged (default `info`).
///
/// Calling it twice is harmless: the second call keeps the first subscriber.
pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    // An already-installed subscriber (tests that start several nodes in one process) is fine.
    drop(result);
}
