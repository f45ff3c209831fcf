//! Where output goes: human messages to stderr with the `penv-guard: ` prefix, machine output to
//! stdout. Neither ever panics: output to a closed or broken stdout (`| head -1`, `>&-`) or
//! stderr is dropped quietly, and the program ends with the status its work earned.

use std::io::Write as _;

pub const PREFIX: &str = "penv-guard: ";

/// This process's command line, for the lock's holder record and the miss history (lossy:
/// a non-UTF-8 argument never panics here).
pub fn command_line() -> String {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One human line on stderr, prefixed.
pub fn say(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{PREFIX}{message}");
}

/// Text on stderr as it is (a child's output tail, a report's detail).
pub fn say_raw(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Machine or report output on stdout; a reader that went away is not an error.
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// `print` with a newline.
pub fn println(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    print(&line);
}

/// Serializes a report for stdout, ASCII only (see [`ascii_only`]). Serialization of
/// penv-guard's own report types cannot fail (paths are serialized lossily, maps have string
/// keys); if it ever did, the error is printed instead of a panic.
pub fn json<T: serde::Serialize>(value: &T, pretty: bool) -> String {
    let result = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    ascii_only(result.unwrap_or_else(|e| {
        serde_json::json!({"status": "error", "error": format!("report: {e}")}).to_string()
    }))
}

/// JSON text with every non-ASCII character written as a `\uXXXX` escape (a UTF-16 surrogate
/// pair above U+FFFF), so that a caller decoding penv-guard's output in any code page (Python's
/// `text=True` on a cp1252 or cp932 Windows console) reads the same strings. Valid because
/// serde_json writes non-ASCII characters only inside string literals, where an escape means
/// the same character.
pub fn ascii_only(json: String) -> String {
    if json.is_ascii() {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 64);
    let mut units = [0u16; 2];
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut units) {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Diagnostics go through `tracing`. `-v` prints them for people: one `penv-guard: ` line per
/// event (each phase with its duration, the miss reason, the hit). `PENV_GUARD_LOG` (an
/// `EnvFilter`, like `RUST_LOG`: `debug`, `penv_guard=info`) prints them in `tracing`'s full
/// format with timestamps, and at `debug` each phase's span with its busy and idle times. Nothing
/// is set up otherwise, so a hit with logging off costs nothing for it. The variable works where
/// nobody can pass `-v`, such as inside `pio run`.
pub fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = match std::env::var("PENV_GUARD_LOG") {
        // Off, as documented: nothing to set up (a filter that passes nothing would cost a hit
        // a tenth more instructions).
        Ok(spec) if spec.trim().eq_ignore_ascii_case("off") => return,
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            say(format_args!(
                "warning: PENV_GUARD_LOG={spec:?} is not a filter ({e}); using `info`"
            ));
            EnvFilter::new("info")
        }),
        _ if verbose => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new("penv_guard=info"))
                .with_writer(std::io::stderr)
                .event_format(ForPeople)
                .try_init();
            return;
        }
        _ => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init();
}

/// `-v`'s format: an event's fields as one `penv-guard: ` line, without level, time or spans.
struct ForPeople;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for ForPeople
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        writer.write_str(PREFIX)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Text read from a file, safe to print on a terminal: control characters (an escape sequence,
/// a carriage return, a newline) are shown escaped (`\u{1b}`) instead of acting.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A byte count for people, in binary units with one decimal: `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in milliseconds for people: `0.4` → `0.4 ms`, `310` → `310 ms`, `19140` →
/// `19.1 s`.
pub fn human_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// An age in nanoseconds for people, in its largest whole unit: `90 s` → `1 min ago`. Ages of
/// zero or less (a clock set back) read `just now`.
pub fn human_age(ns: i64) -> String {
    let secs = ns / 1_000_000_000;
    match secs {
        i64::MIN..=0 => "just now".to_owned(),
        1..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_for_callers_is_ascii_with_surrogate_pairs_for_astral_characters() {
        let value =
            serde_json::json!({"penv": "C:\\Users\\J\u{fc}rgen \u{c4}/\u{65e5}\u{1f600}", "n": 1});
        for pretty in [false, true] {
            let text = json(&value, pretty);
            assert!(text.is_ascii(), "{text}");
            assert!(
                text.contains(r"J\u00fcrgen \u00c4/\u65e5\ud83d\ude00"),
                "{text}"
            );
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, value);
        }
        assert_eq!(ascii_only("{\"a\":\"b\"}".to_owned()), "{\"a\":\"b\"}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12_897_485), "12.3 MiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(printable("a\u{1b}[31mred\r\n"), "a\\u{1b}[31mred\\r\\n");
        assert_eq!(printable("plain — ü"), "plain — ü");
        assert_eq!(human_ms(0.2), "0.2 ms");
        assert_eq!(human_ms(9.94), "9.9 ms");
        assert_eq!(human_ms(310.4), "310 ms");
        assert_eq!(human_ms(19_140.0), "19.1 s");
        assert_eq!(human_age(-5_000_000_000), "just now");
        assert_eq!(human_age(0), "just now");
        assert_eq!(human_age(59_999_999_999), "59 s ago");
        assert_eq!(human_age(300_000_000_000), "5 min ago");
        assert_eq!(human_age(7_200_000_000_000), "2 h ago");
        assert_eq!(human_age(3 * 86_400_000_000_000), "3 d ago");
    }
}
