//! Tracing set-up: one subscriber for the process, JSON for machines or pretty for people.
//!
//! Redaction happens at the source, not here: secrets live in `secrecy` wrappers whose
//! `Debug` prints `[REDACTED]`, HTTP spans carry the matched route (never the raw URI, whose
//! query holds authorization codes and states), and the `Authorization` header is marked
//! sensitive. The integration tests capture every level of a full flow and grep it.

use std::io;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Installs the global subscriber writing to `writer`. Fails if `filter` does not parse
/// (the error names the directive) or a subscriber is already installed.
pub fn init<W>(filter: &str, format: LogFormat, writer: W) -> Result<(), String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Installs the subscriber for the process, logging to standard error.
pub fn init_stderr(filter: &str, format: LogFormat) -> Result<(), String> {
    init(filter, format, io::stderr)
}
