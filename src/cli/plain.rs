//! `ensure` and `size` read without clap when they are written the plain way their callers write
//! them (`penv_setup.py`, CI scripts, build hooks): clap was a third of a hit's instructions.
//! Anything else is `None`, and clap reads the line, so help and error messages are clap's. A
//! property test holds every `Some` equal to what clap makes of the same line.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{DEFAULT_TIMEOUT_SECS, DepArgs, EnsureArgs, PenvArgs, SizeArgs};

/// `penv-guard ensure ...` read without clap, when it is written the plain way its callers write
/// it (`penv_setup.py`, CI scripts; see [`plain_options`]). `None` also for `--quiet` with
/// `--verbose` or `--env` without `--project-dir`: clap then parses the line. A property test holds every `Some` equal to clap's result.
pub(super) fn ensure(args: &[OsString]) -> Option<EnsureArgs> {
    let mut out = EnsureArgs {
        penv: PenvArgs {
            penv: None,
            python: None,
            uv: None,
            uv_cache_dir: None,
        },
        deps: DepArgs::default(),
        offline: false,
        lock_timeout: None,
        install_timeout: DEFAULT_TIMEOUT_SECS,
        allow_unlocked: false,
        verify: false,
        json: false,
        quiet: false,
        verbose: false,
        project_dir: None,
        env: None,
    };
    let flags = [
        "--offline",
        "--allow-unlocked",
        "--verify",
        "--json",
        "-q",
        "--quiet",
        "-v",
        "--verbose",
    ];
    for (name, value) in plain_options(args, &flags)? {
        let path = || Some(PathBuf::from(value));
        match name {
            "--offline" => out.offline = true,
            "--allow-unlocked" => out.allow_unlocked = true,
            "--verify" => out.verify = true,
            "--json" => out.json = true,
            "-q" | "--quiet" => out.quiet = true,
            "-v" | "--verbose" => out.verbose = true,
            "--penv" => out.penv.penv = path(),
            "--python" => out.penv.python = path(),
            "--uv" => out.penv.uv = path(),
            "--uv-cache-dir" => out.penv.uv_cache_dir = path(),
            "--deps-json" => out.deps.deps_json = path(),
            "--esptool-dir" => out.deps.esptool_dir = path(),
            "--project-dir" => out.project_dir = path(),
            "--env" => out.env = Some(value.to_owned()),
            "--dep" => out.deps.dep.push(value.to_owned()),
            "-r" | "--requirement" => out.deps.requirement.push(value.into()),
            "--lock-timeout" => out.lock_timeout = Some(value.parse().ok()?),
            "--install-timeout" => out.install_timeout = value.parse().ok()?,
            _ => return None,
        }
    }
    let refused = (out.quiet && out.verbose) || (out.env.is_some() && out.project_dir.is_none());
    (!refused).then_some(out)
}

/// `penv-guard size ...` read without clap, as [`ensure`] reads `ensure`.
pub(super) fn size(args: &[OsString]) -> Option<SizeArgs> {
    let mut out = SizeArgs {
        project_dir: PathBuf::from("."),
        env: Vec::new(),
        refresh: false,
        json: false,
    };
    for (name, value) in plain_options(args, &["--refresh", "--json"])? {
        match name {
            "--refresh" => out.refresh = true,
            "--json" => out.json = true,
            "--project-dir" => out.project_dir = PathBuf::from(value),
            "--env" => out.env.push(value.to_owned()),
            _ => return None,
        }
    }
    Some(out)
}

/// The options after the subcommand (`args[2..]`), as (name, value) pairs (the value is empty
/// for a name in `flags`), when the line is written the plain way: options by their long names
/// as `--name VALUE` or `--name=VALUE` (short ones apart, as `-q` or `-r FILE`), all UTF-8.
/// `None` for anything else, which clap reads its own way: help, short options run together,
/// `--`, a flag given a value, an empty value or one that starts with `-` (but `-` alone).
fn plain_options<'a>(args: &'a [OsString], flags: &[&str]) -> Option<Vec<(&'a str, &'a str)>> {
    let mut options = Vec::new();
    let mut words = args.get(2..)?.iter();
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (word, None),
        };
        if flags.contains(&name) {
            if inline.is_some() {
                return None;
            }
            options.push((name, ""));
            continue;
        }
        let value = match inline {
            Some(value) => value,
            None => words.next()?.to_str()?,
        };
        // clap reads a word that starts with `-` as an option, `-` alone (stdin) as a value.
        if value.is_empty() || (value.starts_with('-') && value != "-") {
            return None;
        }
        options.push((name, value));
    }
    Some(options)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use proptest::prelude::*;

    use super::{ensure, size};
    use crate::cli::tests::argv;
    use crate::cli::{Cli, Command};

    /// Words `ensure` lines are made of: every option, values of every shape, and what clap
    /// refuses or reads its own way.
    const ENSURE_WORDS: &[&str] = &[
        "--penv",
        "--python",
        "--uv",
        "--uv-cache-dir",
        "--deps-json",
        "--esptool-dir",
        "--project-dir",
        "--env",
        "--dep",
        "-r",
        "--requirement",
        "--lock-timeout",
        "--install-timeout",
        "--offline",
        "--allow-unlocked",
        "--verify",
        "--json",
        "-q",
        "--quiet",
        "-v",
        "--verbose",
        "/p",
        "p q",
        "rich>=14",
        "-",
        "--",
        "1",
        "2.5",
        "0",
        "-1",
        "nan",
        "inf",
        "1e3",
        "soon",
        "",
        "=",
        "--penv=/x",
        "--dep=a=b",
        "--json=true",
        "-qv",
        "-r=x",
        "--lock-timeout=7",
        "--install-timeout=",
        "--env=e",
        "--help",
        "-h",
        "--version",
        "--no-such",
        "-x",
        "ensure",
        "size",
        "--deps-json=-",
        "--penv=-p",
        "--refresh",
        "--refresh=1",
        "--project-dir=.",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn a_plain_ensure_or_size_line_parses_as_clap_parses_it(
            is_size in any::<bool>(),
            picks in proptest::collection::vec(0..ENSURE_WORDS.len(), 0..9)
        ) {
            let words: Vec<&str> = std::iter::once(if is_size { "size" } else { "ensure" })
                .chain(picks.iter().map(|&i| ENSURE_WORDS[i]))
                .collect();
            let plain = if is_size {
                size(&argv(&words)).map(Command::Size)
            } else {
                ensure(&argv(&words)).map(Command::Ensure)
            };
            if let Some(plain) = plain {
                let clap = Cli::try_parse_from(argv(&words)).map(|cli| cli.command);
                prop_assert_eq!(
                    format!("{:?}", Ok::<_, ()>(plain)),
                    format!("{:?}", clap.map_err(|_| ())),
                    "{:?}", words
                );
            }
        }
    }

    #[test]
    fn the_lines_pioarduino_and_ci_write_are_read_without_clap() {
        for words in [
            &["ensure"][..],
            &[
                "ensure",
                "--json",
                "--penv",
                "/p",
                "--python",
                "/py",
                "--uv-cache-dir",
                "/c",
                "--deps-json",
                "-",
                "--esptool-dir",
                "/e",
            ],
            &["ensure", "--dep", "rich>=14", "--dep=b", "-q", "--offline"],
            &[
                "ensure",
                "--project-dir",
                ".",
                "--env",
                "esp32",
                "--lock-timeout",
                "30",
            ],
        ] {
            assert!(ensure(&argv(words)).is_some(), "{words:?}");
        }
        for words in [
            &["size"][..],
            &[
                "size",
                "--project-dir",
                "/p",
                "--env",
                "a",
                "--env=b",
                "--json",
            ],
            &["size", "--refresh"],
        ] {
            assert!(size(&argv(words)).is_some(), "{words:?}");
        }
        for words in [
            &["ensure", "--help"][..],
            &["ensure", "-qv"],
            &["ensure", "--penv", "--json"],
            &["ensure", "--quiet", "--verbose"],
            &["ensure", "--env", "x"],
            &["ensure", "--", "--json"],
        ] {
            assert!(ensure(&argv(words)).is_none(), "{words:?}");
        }
    }
}
