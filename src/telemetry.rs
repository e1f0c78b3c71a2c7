//! Tracing set-up: one subscriber for the process, JSON for machines or pretty for people.
//!
//! Redaction happens at the source, not here: secrets live in `secrecy` wrappers whose
//! `Debug` prints `[REDACTED]`, HTTP spans carry the matched route (never the raw URI, whose
//! query holds authorization codes and states), and the `Authorization` header is marked
//! sensitive. The integration tests capture every level of a full flow and grep it.
//!
//! In JSON, a span's fields are written as a JSON object when the span opens ([`SpanFields`]),
//! and copied into each line logged inside it. Every request opens one (`http`), so this is
//! on the hot path: `tracing-subscriber`'s own `JsonFields` builds a map of JSON values and
//! serialises it, which cost more than the rest of the request's middleware together
//! (`docs/benchmarks.md`); [`SpanFields`] writes the same object straight into the span's
//! buffer.

use std::fmt::{self, Write as _};
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields, MakeWriter};

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
            .fmt_fields(SpanFields)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Installs the subscriber for the process, logging to standard error.
pub fn init_stderr(filter: &str, format: LogFormat) -> Result<(), String> {
    init(filter, format, io::stderr)
}

/// The span fields of the JSON format: one JSON object (`{"method":"POST","route":…}`),
/// what the JSON line format reads back when a line is logged inside the span. Fields
/// recorded later are added to the object (the last value of a name wins when read).
pub struct SpanFields;

/// The usual span's object (`{"method":…,"route":…,"request_id":…}`) fits in this many bytes.
const SPAN_FIELDS_CAPACITY: usize = 256;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // Written into a buffer of its own and handed over at once: the span's buffer
        // (empty when the span opens) then grows once, not once per member.
        let mut object = String::with_capacity(SPAN_FIELDS_CAPACITY);
        object.push('{');
        let mut visitor = JsonObject::new(&mut object);
        fields.record(&mut visitor);
        visitor.result?;
        object.push('}');
        writer.write_str(&object)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // `current` holds `{…}` (possibly `{}`): reopen the object, append, close it.
        let had_fields = current.fields.len() > 2;
        if current.fields.ends_with('}') {
            current.fields.pop();
        } else {
            current.fields.clear();
            current.fields.push('{');
        }
        let mut visitor = JsonObject::new(&mut current.fields);
        visitor.first = !had_fields;
        fields.record(&mut visitor);
        let result = visitor.result;
        current.fields.push('}');
        result
    }
}

/// Writes visited fields as the members of a JSON object (without the braces).
struct JsonObject<'a> {
    writer: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl<'a> JsonObject<'a> {
    fn new(writer: &'a mut String) -> Self {
        Self {
            writer,
            first: true,
            result: Ok(()),
        }
    }

    /// Writes `"name":` (after a comma unless first), then the value by `write_value`.
    fn member(&mut self, field: &Field, write_value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // `r#type` is the raw identifier of a field named `type`.
        let name = name.strip_prefix("r#").unwrap_or(name);
        if !self.first {
            self.writer.push(',');
        }
        self.first = false;
        self.result = write_json_string(self.writer, name)
            .map(|()| self.writer.push(':'))
            .and_then(|()| write_value(self.writer));
    }
}

impl Visit for JsonObject<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_json_string(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those are written as strings ("NaN", "inf"), where
        // `JsonFields` writes `null`, so that the value stays readable.
        if value.is_finite() {
            self.member(field, |w| write!(w, "{value}"));
        } else {
            self.member(field, |w| write_json_string(w, &value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `text` as a JSON string (RFC 8259 §7).
fn write_json_string(writer: &mut String, text: &str) -> fmt::Result {
    writer.push('"');
    Escaped(writer).write_str(text)?;
    writer.push('"');
    Ok(())
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let needs_escape = |b: &u8| *b < b' ' || *b == b'"' || *b == b'\\';
        let mut rest = text;
        // Byte positions are char boundaries here: every byte that needs escaping is ASCII.
        while let Some(at) = rest.as_bytes().iter().position(needs_escape) {
            self.0.write_str(&rest[..at])?;
            match rest.as_bytes()[at] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                control => write!(self.0, "\\u{:04x}", control)?,
            }
            rest = &rest[at + 1..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use serde_json::{Value, json};

    use super::SpanFields;

    /// The `span` member of each line logged by `log`, with [`SpanFields`] as the span
    /// formatter, or (`ours` false) tracing-subscriber's own `JsonFields`.
    fn spans_logged(ours: bool, log: impl FnOnce()) -> Vec<Value> {
        // The subscriber writes to a file as it would to stderr; the test reads it back.
        let path = std::env::temp_dir().join(format!(
            "valo-oauth-span-fields-{}-{ours}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&path).unwrap();
        let builder = tracing_subscriber::fmt()
            .with_writer(Mutex::new(file))
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        if ours {
            tracing::subscriber::with_default(builder.fmt_fields(SpanFields).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        text.lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["span"].clone())
            .collect()
    }

    fn log_in_spans() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓";
        let span = tracing::info_span!(
            "http",
            method = "POST",
            route = "/v1/tenants/{tenant}/apps",
            tricky,
            count = 3u64,
            delta = -2i64,
            ok = true,
            ratio = 0.5f64,
            debugged = ?Some("x\"y"),
            r#type = "raw",
            later = tracing::field::Empty,
        );
        span.in_scope(|| tracing::info!("first"));
        span.record("later", "recorded");
        span.record("count", 4u64);
        span.in_scope(|| tracing::info!("second"));
        tracing::info_span!("empty").in_scope(|| tracing::info!("third"));
    }

    #[test]
    fn span_fields_read_back_as_json_fields_writes_them() {
        let ours = spans_logged(true, log_in_spans);
        assert_eq!(ours, spans_logged(false, log_in_spans));
        assert_eq!(ours.len(), 3);
        assert_eq!(
            ours[0]["tricky"],
            json!("quote \" backslash \\ newline \n tab \t bell \u{7} é ✓")
        );
        assert_eq!(ours[0]["debugged"], json!("Some(\"x\\\"y\")"));
        assert_eq!(ours[0]["type"], json!("raw"));
        assert_eq!(ours[1]["later"], json!("recorded"));
        assert_eq!(ours[1]["count"], json!(4));
        assert_eq!(ours[2], json!({"name": "empty"}));
    }
}
