use std::process::ExitCode;
use std::time::Instant;

use clap::Parser as _;
use penv_guard::cli::{Cli, Command};

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    match penv_guard::run(&cli, start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("penv-guard: error: {error}");
            if let Some(detail) = error.detail() {
                eprintln!("{detail}");
            }
            if matches!(&cli.command, Command::Ensure(args) if args.json) {
                let report = serde_json::json!({
                    "status": "error",
                    "exit_code": error.exit_code(),
                    "error": error.to_string(),
                });
                println!("{report}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}
