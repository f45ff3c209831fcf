use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::error::EXIT_CODES;

mod plain;

/// Keep PlatformIO's Python environment (penv) satisfied, fast and safely.
#[derive(Debug, Parser)]
#[command(name = "penv-guard", version, about, after_help = EXIT_CODES, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line. The hot paths go first: `ensure` and `size` written the plain
    /// way are read without clap ([`plain`]: clap was a third of a hit's
    /// instructions); then by a clap command that holds only that subcommand's arguments, which
    /// spares building the others. Anything those
    /// do not accept (`--help`, a typo) goes to the whole [`Cli`], so messages are the same.
    pub fn parse_args() -> Cli {
        Cli::parse_from_args(std::env::args_os().collect())
    }

    pub fn parse_from_args(mut args: Vec<OsString>) -> Cli {
        // `help --help` (or `help ensure -h`) asks for help too: clap's help subcommand takes
        // only subcommand names and would call `--help` an unrecognized subcommand.
        if args.get(1).is_some_and(|a| a == "help") {
            args.retain(|a| a != "--help" && a != "-h");
        }
        let short = match args.get(1).and_then(|a| a.to_str()) {
            Some("ensure") => plain::ensure(&args)
                .or_else(|| parse_alone::<EnsureArgs>("ensure", &args))
                .map(Command::Ensure),
            Some("size") => plain::size(&args)
                .or_else(|| parse_alone::<SizeArgs>("size", &args))
                .map(Command::Size),
            _ => None,
        };
        match short {
            Some(command) => Cli { command },
            None => Cli::parse_from(args),
        }
    }
}

/// `args` parsed by a command holding subcommand `name` alone, with [`Cli`]'s settings.
fn parse_alone<T: Args + FromArgMatches>(name: &'static str, args: &[OsString]) -> Option<T> {
    let command = clap::Command::new("penv-guard")
        .args_override_self(true)
        .subcommand(T::augment_args(clap::Command::new(name)));
    let (_, mut matches) = command
        .try_get_matches_from(args)
        .ok()?
        .remove_subcommand()?;
    T::from_arg_matches_mut(&mut matches).ok()
}

pub(crate) const DEFAULT_TIMEOUT_SECS: f64 = 600.0;

/// The variable that sets `--lock-timeout` where nobody can pass it (inside `pio run`).
pub const LOCK_TIMEOUT_VAR: &str = "PENV_GUARD_LOCK_TIMEOUT";

/// `fingerprint` installs nothing, takes no lock and never goes online: its own codes.
const FINGERPRINT_EXIT_CODES: &str = "\
Exit codes:
  0   the fingerprint was printed
  1   no Python to read the version from (see --python), or an I/O error
  2   usage error or bad input (flags, requirements, deps JSON, paths)";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the penv satisfy the dependency list (a few ms when it already does)
    #[command(after_help = EXIT_CODES)]
    Ensure(EnsureArgs),
    /// Print the fingerprint of the dependency list and penv (a CI cache key)
    #[command(after_help = FINGERPRINT_EXIT_CODES)]
    Fingerprint(FingerprintArgs),
    /// Report (and cache) the size of each PlatformIO environment's build directory
    Size(SizeArgs),
    /// Explain what `ensure` would do now and why, without changing anything
    Status(StatusArgs),
    /// Hook pioarduino's builder/penv_setup.py in installed platforms (install, remove, status)
    Platform(PlatformArgs),
}

#[derive(Debug, Args, Clone)]
pub struct PenvArgs {
    /// The penv directory [default: $PLATFORMIO_CORE_DIR/penv, else ~/.platformio/penv]
    #[arg(long, value_name = "DIR")]
    pub penv: Option<PathBuf>,
    /// Python used to create the penv [default: python3 on PATH]
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// uv binary [default: $PENV_GUARD_UV, the penv's uv, uv next to --python, uv on PATH]
    #[arg(long, value_name = "PATH")]
    pub uv: Option<PathBuf>,
    /// uv cache directory [default: <core dir>/.cache/uv]
    #[arg(long, value_name = "DIR")]
    pub uv_cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct DepArgs {
    /// Requirements file (PEP 508 lines); repeatable
    #[arg(short = 'r', long = "requirement", value_name = "FILE")]
    pub requirement: Vec<PathBuf>,
    /// One requirement (PEP 508), e.g. 'rich>=14'; repeatable
    #[arg(long, value_name = "SPEC")]
    pub dep: Vec<String>,
    /// JSON object {name: spec} like pioarduino's python_deps ('-' for stdin)
    #[arg(long, value_name = "FILE")]
    pub deps_json: Option<PathBuf>,
    /// Also require esptool installed editable from this directory (pioarduino's tool-esptoolpy)
    #[arg(long, value_name = "DIR")]
    pub esptool_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct EnsureArgs {
    #[command(flatten)]
    pub penv: PenvArgs,
    #[command(flatten)]
    pub deps: DepArgs,
    /// Never touch the network (also: PLATFORMIO_OFFLINE=1)
    #[arg(long)]
    pub offline: bool,
    /// Seconds to wait for another penv-guard's lock; 0 tries once [env: PENV_GUARD_LOCK_TIMEOUT]
    /// [default: 600]
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<f64>,
    /// Seconds after which a running `uv pip install` (or validation) is killed
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub install_timeout: f64,
    /// Proceed without the lock where the filesystem cannot lock (unsafe with parallel builds)
    #[arg(long)]
    pub allow_unlocked: bool,
    /// Install and validate even when the state says the penv is satisfied
    #[arg(long)]
    pub verify: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Explain each step on stderr
    #[arg(short, long)]
    pub verbose: bool,
    /// PlatformIO project, to print an environment's cached build size (with --env)
    #[arg(long, value_name = "DIR")]
    pub project_dir: Option<PathBuf>,
    /// PlatformIO environment whose cached build size is printed
    #[arg(long, value_name = "NAME", requires = "project_dir")]
    pub env: Option<String>,
}

impl EnsureArgs {
    /// `--lock-timeout`, else `PENV_GUARD_LOCK_TIMEOUT`, else 600, with the name the user gave
    /// it under (for the message when it is negative). The variable is read here, not by clap,
    /// so a bad value is one line naming the variable and its value (exit 2), not clap's error
    /// about a flag nobody passed.
    pub fn lock_timeout(&self) -> Result<(f64, &'static str), crate::error::Error> {
        if let Some(secs) = self.lock_timeout {
            return Ok((secs, "--lock-timeout"));
        }
        let Some(value) = std::env::var_os(LOCK_TIMEOUT_VAR) else {
            return Ok((DEFAULT_TIMEOUT_SECS, "--lock-timeout"));
        };
        let text = value.to_string_lossy();
        if text.trim().is_empty() {
            return Ok((DEFAULT_TIMEOUT_SECS, "--lock-timeout"));
        }
        match value.to_str().and_then(|v| v.trim().parse::<f64>().ok()) {
            Some(secs) => Ok((secs, LOCK_TIMEOUT_VAR)),
            None => Err(crate::error::Error::Usage(format!(
                "{LOCK_TIMEOUT_VAR}={text:?} is not a number of seconds (0 tries the lock once; \
                 unset, it waits 600)"
            ))),
        }
    }
}

/// `--uv` and `--uv-cache-dir` do not enter the fingerprint: accepted (a script can pass
/// `fingerprint` the line it passes `ensure`) but not offered in its help.
#[derive(Debug, Args, Clone)]
#[command(mut_arg("uv", |a| a.hide(true)), mut_arg("uv_cache_dir", |a| a.hide(true)))]
pub struct FingerprintArgs {
    #[command(flatten)]
    pub penv: PenvArgs,
    #[command(flatten)]
    pub deps: DepArgs,
    /// Print the fingerprint and its inputs as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SizeArgs {
    /// PlatformIO project directory
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub project_dir: PathBuf,
    /// Only these environments; repeatable
    #[arg(long, value_name = "NAME")]
    pub env: Vec<String>,
    /// Walk even when the cached size is fresh
    #[arg(long)]
    pub refresh: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub penv: PenvArgs,
    #[command(flatten)]
    pub deps: DepArgs,
    /// PlatformIO project whose build sizes are reported
    #[arg(long, value_name = "DIR")]
    pub project_dir: Option<PathBuf>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct PlatformArgs {
    #[command(subcommand)]
    pub action: PlatformAction,
}

#[derive(Debug, Subcommand, Clone)]
pub enum PlatformAction {
    /// Hook every pioarduino espressif32 platform under <core dir>/platforms/ (idempotent)
    Install(CoreDirArgs),
    /// Restore each hooked builder/penv_setup.py byte for byte
    Remove(CoreDirArgs),
    /// Per platform: its version, hooked or not, and what to do
    Status(PlatformStatusArgs),
}

#[derive(Debug, Args, Clone)]
pub struct CoreDirArgs {
    /// PlatformIO's core directory [default: $PLATFORMIO_CORE_DIR, else ~/.platformio]
    #[arg(long, value_name = "DIR")]
    pub core_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct PlatformStatusArgs {
    #[command(flatten)]
    pub dir: CoreDirArgs,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::{CommandFactory, Parser as _};

    use super::{Cli, Command, EnsureArgs, SizeArgs, parse_alone};

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `words` parsed by the subcommand alone (`ensure` or `size`, as `words[0]` says).
    fn alone(words: &[&str]) -> Option<Command> {
        let argv = argv(words);
        match words[0] {
            "ensure" => parse_alone::<EnsureArgs>("ensure", &argv).map(Command::Ensure),
            _ => parse_alone::<SizeArgs>("size", &argv).map(Command::Size),
        }
    }

    /// `penv-guard` followed by `words`.
    pub(crate) fn argv(words: &[&str]) -> Vec<std::ffi::OsString> {
        std::iter::once("penv-guard")
            .chain(words.iter().copied())
            .map(Into::into)
            .collect()
    }

    #[test]
    fn hot_subcommands_parse_alike_alone_and_in_the_whole_cli() {
        for words in [
            &["ensure"][..],
            &[
                "ensure",
                "--json",
                "--penv",
                "/p",
                "--python",
                "py",
                "--deps-json",
                "-",
            ],
            &[
                "ensure",
                "--dep",
                "a",
                "--dep=b>=1",
                "-r",
                "x.txt",
                "-q",
                "--offline",
            ],
            &[
                "ensure",
                "--lock-timeout",
                "1",
                "--lock-timeout",
                "2.5",
                "--verify",
                "-v",
            ],
            &[
                "ensure",
                "--project-dir",
                ".",
                "--env",
                "esp32",
                "--install-timeout=3",
            ],
            &[
                "ensure",
                "--uv",
                "u",
                "--uv-cache-dir",
                "c",
                "--esptool-dir",
                "e",
                "--",
            ],
            &["size"],
            &[
                "size",
                "--project-dir",
                "p",
                "--env",
                "a",
                "--env",
                "b",
                "--json",
            ],
            &["size", "--refresh", "--refresh", "--project-dir=q"],
        ] {
            let whole = Cli::try_parse_from(argv(words)).unwrap().command;
            assert_eq!(
                format!("{:?}", alone(words)),
                format!("{:?}", Some(whole)),
                "{words:?}"
            );
        }
    }

    #[test]
    fn what_a_subcommand_alone_refuses_is_left_to_the_whole_cli() {
        for words in [
            &["ensure", "--help"][..],
            &["ensure", "--quiet", "--verbose"],
            &["ensure", "--env", "x"],
            &["ensure", "--no-such-flag"],
            &["ensure", "--lock-timeout", "soon"],
            &["size", "--help"],
            &["size", "--penv", "x"],
        ] {
            assert!(alone(words).is_none(), "{words:?}");
            assert!(Cli::try_parse_from(argv(words)).is_err(), "{words:?}");
        }
    }
}
