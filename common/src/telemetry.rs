//! Logging set-up for binaries. Libraries only emit `tracing` events.

/// Installs a stderr subscriber honouring `RUST_LOG` (default `info` for
/// servers, `warn` for client commands).
pub fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
