use std::process::ExitCode;
use std::time::Instant;

use penv_guard::cli::{Cli, Command};
use penv_guard::messages;

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse_args();
    messages::init_logging(matches!(&cli.command, Command::Ensure(args) if args.verbose));
    match penv_guard::run(&cli, start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            messages::say(format_args!("error: {error}"));
            if let Some(detail) = error.detail() {
                messages::say_raw(detail);
            }
            if matches!(&cli.command, Command::Ensure(args) if args.json) {
                let report = serde_json::json!({
                    "status": "error",
                    "exit_code": error.exit_code(),
                    "error": error.to_string(),
                });
                messages::println(&messages::json(&report, false));
            }
            ExitCode::from(error.exit_code())
        }
    }
}
