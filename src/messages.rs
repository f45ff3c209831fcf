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

/// Serializes a report for stdout. Serialization of penv-guard's own report types cannot fail
/// (paths are serialized lossily, maps have string keys); if it ever did, the error is printed
/// instead of a panic.
pub fn json<T: serde::Serialize>(value: &T, pretty: bool) -> String {
    let result = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    result.unwrap_or_else(|e| {
        serde_json::json!({"status": "error", "error": format!("report: {e}")}).to_string()
    })
}

/// Diagnostics go through `tracing`: `PENV_GUARD_LOG` (an `EnvFilter`, like `RUST_LOG`:
/// `debug`, `penv_guard=info`) or `-v` (info) turns them on, to stderr, with each phase's
/// duration. Nothing is set up otherwise, so a hit with logging off costs nothing for it. The
/// variable works where nobody can pass `-v`, such as inside `pio run`.
pub fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = match std::env::var("PENV_GUARD_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            say(format_args!(
                "warning: PENV_GUARD_LOG={spec:?} is not a filter ({e}); using `info`"
            ));
            EnvFilter::new("info")
        }),
        _ if verbose => EnvFilter::new("penv_guard=info"),
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
