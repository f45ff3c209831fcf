//! penv-guard: keeps PlatformIO's Python environment (penv) satisfied, answering "already
//! satisfied" from files in a few milliseconds and doing the real work (uv, import validation)
//! only on a miss, under a cross-process lock.

pub mod cli;
pub mod dep_input;
pub mod distinfo;
pub mod ensure;
pub mod error;
pub mod fingerprint;
pub mod fsutil;
pub mod history;
pub mod lock;
pub mod markers;
pub mod messages;
pub mod os;
pub mod penv;
pub mod phases;
pub mod platform;
pub mod platform_edits;
pub mod process;
pub mod requirements;
pub mod size;
pub mod stamp;
pub mod state;
pub mod status;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod uv;
pub mod validate;
pub mod verdict;

use std::time::Instant;

use cli::{Cli, Command};
pub use error::{Error, Result};

pub fn run(cli: &Cli, start: Instant) -> Result<()> {
    match &cli.command {
        Command::Ensure(args) => ensure::ensure(args, start),
        Command::Fingerprint(args) => fingerprint::run(args),
        Command::Size(args) => size::run(args),
        Command::Status(args) => status::run(args),
        Command::Platform(args) => platform::run(args),
    }
}
