//! Process signals that ask a node to stop.

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C).
///
/// If the signal handlers cannot be installed, logs why and resolves only on Ctrl-C.
pub async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this node")
            }
        }
    }
    if tokio::signal::ctrl_c().await.is_ok() {
        tracing::info!("SIGINT received, shutting down");
    } else {
        std::future::pending::<()>().await;
    }
}

/// Calls `reload` on every SIGHUP, one reload at a time, until the task is dropped or aborted.
/// If the handler cannot be installed, logs why and never reloads.
pub async fn on_reload<F, Fut>(mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloading the config needs a restart");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received, reloading the config");
        reload().await;
    }
}
