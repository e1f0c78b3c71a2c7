//! The logging section: the filter (`log`) and the output format (`log_format`).

use super::ConfigError;
use super::layers::Layers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

pub(super) struct Logging {
    /// The `tracing` filter, such as `info` or `valo_oauth=debug`.
    pub(super) log: String,
    pub(super) format: LogFormat,
}

/// `log` (default `info`) and `log_format` (default JSON in production, pretty otherwise).
pub(super) fn resolve(l: &Layers, production: bool) -> Result<Logging, ConfigError> {
    let format = match l.raw.log_format.as_deref().map(str::trim) {
        Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            return Err(l.err(
                "log_format",
                format!("{other:?} is not one of json, pretty"),
            ));
        }
        None if production => LogFormat::Json,
        None => LogFormat::Pretty,
    };
    Ok(Logging {
        log: l.raw.log.as_deref().unwrap_or("info").to_owned(),
        format,
    })
}
