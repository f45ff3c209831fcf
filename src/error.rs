use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The exit-code table: `--help` prints it, the README repeats it (a test checks they agree),
/// and `Error::exit_code` maps every error onto one of its codes.
pub const EXIT_CODES: &str = "\
Exit codes:
  0   satisfied (hit, or installed and validated)
  1   install failed (uv or venv creation failed, uv or Python missing, I/O error, no lock access)
  2   usage error or bad input (flags, requirements, deps JSON, paths, unknown --env)
  3   validation failed after install: an import, or a damaged distribution (no state written)
  4   offline and not satisfiable from the local cache
  75  lock timeout: another penv-guard holds the penv lock (retryable)";

pub const EXIT_INSTALL: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_VALIDATION: u8 = 3;
pub const EXIT_OFFLINE: u8 = 4;
pub const EXIT_LOCK_TIMEOUT: u8 = 75;

#[derive(Debug)]
pub enum Error {
    /// Bad input that is not a requirement: a path, a flag value.
    Usage(String),
    BadRequirement {
        origin: String,
        text: String,
        message: String,
    },
    BadDepsJson {
        origin: String,
        message: String,
    },
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    UvNotFound,
    /// Offline, with no uv found and none in the uv cache or `UV_FIND_LINKS` to install.
    UvUnavailableOffline,
    PythonNotFound {
        python: PathBuf,
        message: String,
    },
    VenvCreate {
        penv: PathBuf,
        message: String,
    },
    Install {
        message: String,
        tail: String,
    },
    Offline {
        tail: String,
    },
    Validation {
        dist: String,
        module: String,
        error: String,
    },
    /// A required distribution shows no module to import, so nothing could prove it works.
    NothingToImport {
        dist: String,
    },
    LockTimeout {
        path: PathBuf,
        seconds: f64,
        holder: String,
    },
    LockUnsupported {
        path: PathBuf,
        source: io::Error,
    },
    /// Another `platform install`/`remove` held the platform lock for the whole timeout.
    PlatformLockTimeout {
        path: PathBuf,
        seconds: f64,
    },
    LockPermission {
        path: PathBuf,
        owner: Option<u32>,
    },
    /// A record check found files missing or changed, and reinstalling did not repair them.
    Broken {
        path: PathBuf,
        dist: String,
        problem: String,
    },
}

impl Error {
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::BadRequirement { .. } | Error::BadDepsJson { .. } => {
                EXIT_USAGE
            }
            Error::Validation { .. } | Error::NothingToImport { .. } | Error::Broken { .. } => {
                EXIT_VALIDATION
            }
            Error::Offline { .. } | Error::UvUnavailableOffline => EXIT_OFFLINE,
            Error::LockTimeout { .. } | Error::PlatformLockTimeout { .. } => EXIT_LOCK_TIMEOUT,
            Error::Io { .. }
            | Error::UvNotFound
            | Error::PythonNotFound { .. }
            | Error::VenvCreate { .. }
            | Error::Install { .. }
            | Error::LockUnsupported { .. }
            | Error::LockPermission { .. } => EXIT_INSTALL,
        }
    }

    /// Output of a failed child process, shown after the one-line message.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Error::Install { tail, .. } | Error::Offline { tail } if !tail.trim().is_empty() => {
                Some(tail)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) => f.write_str(message),
            Error::BadRequirement {
                origin,
                text,
                message,
            } => write!(f, "invalid requirement `{text}` ({origin}): {message}"),
            Error::BadDepsJson { origin, message } => {
                write!(f, "invalid dependency JSON in {origin}: {message}")
            }
            Error::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            Error::UvNotFound => f.write_str(
                "uv not found (looked at --uv, $PENV_GUARD_UV, the penv, next to --python, PATH); \
                 install it with `pip install uv` or pass --uv PATH",
            ),
            Error::UvUnavailableOffline => f.write_str(
                "offline and no uv found (looked at --uv, $PENV_GUARD_UV, the penv, next to \
                 --python, PATH, the uv cache) nor a uv wheel in UV_FIND_LINKS to install: run \
                 once online, pass --uv PATH to a uv binary \
                 (https://docs.astral.sh/uv/getting-started/installation/), or put a uv wheel \
                 in a UV_FIND_LINKS directory",
            ),
            Error::PythonNotFound { python, message } => {
                write!(f, "cannot run Python `{}`: {message}", python.display())
            }
            Error::VenvCreate { penv, message } => {
                write!(f, "cannot create the penv {}: {message}", penv.display())
            }
            Error::Install { message, .. } => write!(f, "install failed: {message}"),
            Error::Offline { .. } => f.write_str(
                "offline and the requirements cannot be satisfied from the local uv cache \
                 (run once online, or point UV_FIND_LINKS at local wheels)",
            ),
            Error::Validation {
                dist,
                module,
                error,
            } => write!(
                f,
                "validation failed: `import {module}` (from {dist}) raised {error}; no state written"
            ),
            Error::NothingToImport { dist } => write!(
                f,
                "validation failed: no importable module found for {dist} (none in its RECORD, \
                 top_level.txt or editable hook, nor one named after it); no state written"
            ),
            Error::LockTimeout {
                path,
                seconds,
                holder,
            } => write!(
                f,
                "timed out after {seconds}s waiting for the penv lock {} (held by {holder}); \
                 another `pio run` or ESPHome compile may be installing. \
                 Set PENV_GUARD_LOCK_TIMEOUT or --lock-timeout to wait longer",
                path.display()
            ),
            Error::PlatformLockTimeout { path, seconds } => write!(
                f,
                "timed out after {seconds}s waiting for the platform lock {} (another \
                 `penv-guard platform install` or `remove` is running); set \
                 PENV_GUARD_LOCK_TIMEOUT to wait longer",
                path.display()
            ),
            Error::LockPermission { path, owner } => {
                write!(
                    f,
                    "cannot take the penv lock {}: permission denied",
                    path.display()
                )?;
                if let Some(owner) = owner {
                    write!(f, " (it belongs to uid {owner}")?;
                    if let Some(me) = crate::os::lock::current_uid() {
                        write!(f, ", you are uid {me}")?;
                    }
                    f.write_str(")")?;
                }
                f.write_str(
                    "; run as that user, or give this user write access to the penv's directory",
                )
            }
            Error::Broken {
                path,
                dist,
                problem,
            } => write!(
                f,
                "{dist} is damaged and reinstalling did not repair it: {} is {problem}; \
                 no state written",
                path.display()
            ),
            Error::LockUnsupported { path, source } => write!(
                f,
                "cannot lock {}: {source}; this filesystem does not support locks. \
                 Pass --allow-unlocked to proceed without one (unsafe with parallel builds)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_and_help_list_the_same_exit_codes() {
        let readme = include_str!("../README.md");
        for line in EXIT_CODES.lines().skip(1) {
            let code = line.split_whitespace().next().unwrap();
            assert!(
                readme.contains(&format!("| {code} |")),
                "README's exit-code table lacks {code}"
            );
        }
        for code in [
            EXIT_INSTALL,
            EXIT_USAGE,
            EXIT_VALIDATION,
            EXIT_OFFLINE,
            EXIT_LOCK_TIMEOUT,
        ] {
            assert!(
                EXIT_CODES.contains(&format!("\n  {code} ")),
                "--help lacks exit code {code}"
            );
        }
    }
}
