//! Allocator settings a node needs before its allocator starts: freed memory goes back to the
//! system promptly, so a node's resident memory falls again after a load or an attack ends
//! (issue 16: "the origin returns memory after load").
//!
//! The nodes use mimalloc (v3). It gives freed pages back to the system (`madvise`) only
//! `purge_delay` milliseconds (default 1,000) after they became free, and it runs those
//! delayed purges from later allocator calls on the same arena. A node that goes quiet after a
//! burst (1,000 stalled streams whose client left) makes no such calls, so it kept 40-80 MB
//! above its pre-attack size for as long as it stayed quiet (measured with
//! `tests/e2e/memory.rs`: edge 38 -> 85 -> 111 MB, origin 21 -> 57 MB, 30 s after the client
//! left); with a purge delay of 0 the pages are returned when they are freed (edge 34 -> 61
//! MB, origin 19 -> 41 MB, flat). mimalloc reads its options from the environment once, when the
//! process loads and before `main`, and the workspace forbids the `unsafe` FFI call that would
//! set the option later, so [`reexec_with_allocator_settings`] starts the process image again
//! with the variable set: same PID, same arguments, same file descriptors.

/// The mimalloc option that delays returning freed pages ([module docs](self)).
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// The value the nodes run with: purge freed pages at once.
pub const PURGE_DELAY: &str = "0";

/// Runs this program again (`/proc/self/exe`, with the same arguments) with
/// [`PURGE_DELAY_ENV`] set to [`PURGE_DELAY`], unless the environment sets it already (an
/// operator's own value wins, and the re-executed process does not loop). Returns only if it
/// did not re-execute: the variable is set, or `exec` failed (then with a warning on stderr;
/// the node still runs, returning memory later).
pub fn reexec_with_allocator_settings(name: &str) {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new("/proc/self/exe");
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        let error = command.args(args).env(PURGE_DELAY_ENV, PURGE_DELAY).exec();
        eprintln!(
            "{name}: warning: cannot start again with {PURGE_DELAY_ENV}={PURGE_DELAY} \
             ({error}); freed memory returns to the system later"
        );
    }
}
