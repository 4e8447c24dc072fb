//! Log output: native journald fields under systemd, readable lines on stderr otherwise.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber once. Under systemd (`JOURNAL_STREAM` set) events go to
/// journald with their fields un-prefixed, so `MESSAGE_ID` is a real journal field.
pub fn init() {
    let filter = EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = registry
                .with(
                    layer
                        .with_field_prefix(None)
                        .with_syslog_identifier("palisade".into()),
                )
                .try_init();
            return;
        }
    }
    let _ = registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .try_init();
}
