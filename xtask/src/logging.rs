//! Log lines that read like the rest of the output: an `info` event is its
//! message and fields, a warning starts `warning:`, an error `error:`;
//! every line is printed with the progress bars cleared, so the two never
//! interleave on one line. `SELFSUP_LOG` (an `EnvFilter`) overrides the
//! level; debug and trace lines keep their module path.

use std::fmt;
use std::io::Write;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the subscriber: `warn` when quiet, else selfsup's `info` too.
pub fn init(quiet: bool) {
    selfsup::core::progress::set_quiet(quiet);
    let default = if quiet {
        "warn,hf_hub=off"
    } else {
        "warn,selfsup=info,hf_hub=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SELFSUP_LOG")
        .unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| AboveBars)
        .with_ansi(false)
        .event_format(Plain)
        .try_init();
}

/// The line format described in the module docs.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        match *meta.level() {
            Level::ERROR => write!(w, "error: ")?,
            Level::WARN => write!(w, "warning: ")?,
            Level::INFO => {}
            _ => write!(w, "{} {}: ", meta.level(), meta.target())?,
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Standard error, written with the progress bars suspended.
struct AboveBars;

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        selfsup::core::progress::suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
