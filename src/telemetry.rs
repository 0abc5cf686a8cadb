//! Logging through tracing: human-readable text or JSON lines, on stderr.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Keeps the log writer thread alive; dropping it writes out what is queued.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber; `filter` takes `RUST_LOG`-style directives.
///
/// Lines go to stderr through a writer thread, so that a request never waits
/// for a write to the terminal or the log collector (one line per RPC adds up).
/// The thread writes whatever is queued in one go, then flushes.
pub fn init(format: LogFormat, filter: &str) -> Result<LogGuard, LogError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| LogError::Filter {
        filter: filter.to_owned(),
        why: e.to_string(),
    })?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Never drop a line: when the queue is full, the caller waits.
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
    };
    installed.map_err(|e| LogError::Install(e.to_string()))?;
    Ok(guard)
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The level directives do not parse.
    /// The log filter is not one.
    #[error("invalid log level {filter:?}: {why}")]
    Filter {
        /// The filter given.
        filter: String,
        /// Why.
        why: String,
    },
    /// A global logger was already installed.
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// JSON lines: `timestamp`, `level`, the event's fields (`message` among them),
/// and the current span as `span` (its `name` and fields) when there is one.
///
/// The shape of tracing-subscriber's flattened JSON, written straight into the
/// line instead of through a map of values per event: that map made the
/// per-RPC line the largest single cost of the hot path (BENCHMARKS.md).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(
            writer,
            "{{\"timestamp\":\"{}\",\"level\":\"{}\"",
            humantime::format_rfc3339_micros(SystemTime::now()),
            event.metadata().level()
        )?;
        let mut fields = JsonVisitor {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{\"name\":")?;
            string(&mut writer, span.name())?;
            let extensions = span.extensions();
            // JsonFields formats a span's fields as one JSON object: splice its members in.
            if let Some(members) = extensions
                .get::<FormattedFields<N>>()
                .and_then(|f| f.fields.strip_prefix('{')?.strip_suffix('}'))
                .filter(|m| !m.is_empty())
            {
                writer.write_char(',')?;
                writer.write_str(members)?;
            }
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes an event's fields as JSON members, each after a comma.
struct JsonVisitor<'a, W> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> JsonVisitor<'_, W> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char(',')?;
                string(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl<W: fmt::Write> Visit for JsonVisitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.member(field, |out| write!(out, "{value}"));
        } else {
            self.member(field, |out| string(out, &value.to_string()));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value}")?;
            out.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// Writes `s` as a JSON string.
fn string(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(s)?;
    out.write_char('"')
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            // Only ASCII bytes are escaped, so `i` is on a character boundary.
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_max_level(tracing::Level::TRACE)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn events_are_json_lines_with_every_field() {
        let error = std::io::Error::other("disk \"full\"");
        let got = lines(|| {
            tracing::info!(
                method = "GetCredentialHeaders",
                latency_us = 42u64,
                delta = -3i64,
                ok = true,
                ratio = 0.5,
                code = ?tonic::Code::Ok,
                error = %error,
                odd = "tab\there \"quoted\" back\\slash\nnew line \u{1} é ☃",
                "rpc done"
            );
            tracing::warn!(
                error = &error as &(dyn std::error::Error + 'static),
                "plain"
            );
        });
        assert_eq!(got.len(), 2);
        let e = &got[0];
        assert_eq!(e["level"], "INFO");
        assert_eq!(e["message"], "rpc done");
        assert_eq!(e["method"], "GetCredentialHeaders");
        assert_eq!(e["latency_us"], 42);
        assert_eq!(e["delta"], -3);
        assert_eq!(e["ok"], true);
        assert_eq!(e["ratio"], 0.5);
        assert_eq!(e["code"], "Ok");
        assert_eq!(e["error"], "disk \"full\"");
        assert_eq!(
            e["odd"],
            "tab\there \"quoted\" back\\slash\nnew line \u{1} é ☃"
        );
        let time = e["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(got[1]["level"], "WARN");
        assert_eq!(got[1]["error"], "disk \"full\"");
        assert!(e.get("span").is_none());
    }

    #[test]
    fn the_current_span_is_named_with_its_fields() {
        let got = lines(|| {
            let span = tracing::info_span!("rewrap", batch = 25u64, who = "ops");
            let _entered = span.enter();
            tracing::info!("inside");
            let bare = tracing::info_span!("bare");
            let _inner = bare.enter();
            tracing::info!("deeper");
        });
        assert_eq!(got[0]["span"]["name"], "rewrap");
        assert_eq!(got[0]["span"]["batch"], 25);
        assert_eq!(got[0]["span"]["who"], "ops");
        assert_eq!(got[1]["span"], serde_json::json!({"name": "bare"}));
    }
}
