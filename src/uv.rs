//! The children of a miss that change the penv: finding uv and the host Python, creating the
//! penv, putting uv into it, and `uv pip install`. They run through `process` (deadline, own
//! process group, the lock kept by the child).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::messages;
use crate::penv::{Occupant, Penv, is_own_file_name};
use crate::process::{self, Stderr};

const UV_EXE: &str = if cfg!(windows) { "uv.exe" } else { "uv" };

/// uv in this order: `--uv`, `$PENV_GUARD_UV`, the penv's own uv, next to `--python`, PATH.
/// Looked up only on a miss; a hit needs no uv.
pub fn find_uv(explicit: Option<&Path>, penv: &Penv, python: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(absolute(path));
    }
    if let Some(path) = std::env::var_os("PENV_GUARD_UV").filter(|p| !p.is_empty()) {
        return Some(absolute(Path::new(&path)));
    }
    let beside_python = python
        .and_then(Path::parent)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(UV_EXE));
    [Some(penv.uv()), beside_python]
        .into_iter()
        .flatten()
        .find(|candidate| candidate.is_file())
        .or_else(|| which::which("uv").ok())
}

/// `--python`, else `python3` (`python` on Windows) on PATH. `None` when there is none.
pub fn find_python(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) if path.components().count() > 1 => Some(absolute(path)),
        Some(name) => which::which(name).ok(),
        None => which::which(if cfg!(windows) { "python" } else { "python3" }).ok(),
    }
}

pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `(version, real path of the base interpreter)` of a Python.
pub fn query_python(python: &Path, timeout: Duration) -> Result<(String, PathBuf)> {
    let mut command = Command::new(python);
    command.args([
        "-I",
        "-c",
        "import os, sys; print('%d.%d.%d' % sys.version_info[:3]); \
         print(os.path.realpath(getattr(sys, '_base_executable', None) or sys.executable))",
    ]);
    let not_found = |message: String| Error::PythonNotFound {
        python: python.to_path_buf(),
        message,
    };
    let out = process::run(command, timeout, Stderr::Captured, None)
        .map_err(|e| not_found(e.to_string()))?;
    if !out.success() {
        return Err(not_found(format!(
            "{}: {}",
            out.describe_status(timeout),
            process::tail(&out.output_tail, 1)
        )));
    }
    let mut lines = out.stdout.lines();
    match (lines.next(), lines.next()) {
        (Some(version), Some(real)) => Ok((version.trim().to_owned(), PathBuf::from(real.trim()))),
        _ => Err(not_found(format!(
            "unexpected output `{}`",
            out.stdout.trim()
        ))),
    }
}

/// Refuses a non-empty directory that is neither a venv nor one penv-guard created.
pub fn check_penv_is_ours(penv: &Penv) -> Result<()> {
    if penv.occupant() == Occupant::Foreign {
        return Err(Error::Usage(format!(
            "--penv {} is a non-empty directory that is not a virtual environment (no pyvenv.cfg); \
             penv-guard never clears what it did not create: choose another path or empty it",
            penv.root.display()
        )));
    }
    Ok(())
}

/// (Re)creates the penv with `python`: with `uv venv` when a uv is given, else with
/// `python -m venv` (which brings pip, to install uv with). An existing directory is cleared only
/// when it is a venv or penv-guard made it; penv-guard's own files stay. `Some` is a warning
/// about what [`clear`] could not delete.
pub fn create_venv(
    uv: Option<&Path>,
    python: &Path,
    penv: &Penv,
    cache_dir: &Path,
    timeout: Duration,
    hold: Option<&File>,
) -> Result<Option<String>> {
    let fail = |message: String| Error::VenvCreate {
        penv: penv.root.clone(),
        message,
    };
    check_penv_is_ours(penv)?;
    let occupant = penv.occupant();
    std::fs::create_dir_all(&penv.root)
        .map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    // The marker first: a clear that stops half-way leaves a directory recognisably ours.
    std::fs::write(penv.created_marker(), b"").map_err(|e| {
        fail(format!(
            "cannot write {}: {e}",
            penv.created_marker().display()
        ))
    })?;
    let mut warning = None;
    if matches!(occupant, Occupant::Venv | Occupant::OursUnfinished) {
        warning = clear(penv).map_err(fail)?;
    }
    let program = uv.unwrap_or(python).to_path_buf();
    let (mut command, what) = if let Some(uv) = uv {
        let mut command = uv_command(uv, penv);
        // uv keeps what it learns about the interpreter in its cache: the penv's, never the
        // user's default one.
        command
            .arg("--cache-dir")
            .arg(cache_dir)
            .args(["venv", "--allow-existing", "--no-project", "--python"])
            .arg(python)
            .arg(&penv.root);
        (command, "uv venv")
    } else {
        let mut command = Command::new(python);
        command.args(["-m", "venv"]).arg(&penv.root);
        (command, "python -m venv")
    };
    command.env_remove("VIRTUAL_ENV");
    let out = process::run(command, timeout, Stderr::Captured, hold)
        .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
    if out.success() {
        Ok(warning)
    } else {
        Err(fail(format!(
            "`{what}` {}: {}",
            out.describe_status(timeout),
            process::tail(&out.output_tail, 3).replace('\n', " | ")
        )))
    }
}

/// Where [`clear`] moves a venv's contents before deleting them, inside the penv.
const ASIDE_PREFIX: &str = ".penv-guard-old-";

/// Clears the venv without ever leaving it half-deleted: every entry but penv-guard's own files
/// is first moved into a fresh directory inside the penv (`.penv-guard-old-<pid>`; renames within
/// one filesystem), `pyvenv.cfg` last. If a move fails (a file in use on Windows, an immutable
/// or read-only directory), the moves done are undone and nothing is deleted: the penv stays as
/// it was and usable, and the error names the entry. Only then is the moved-aside directory
/// deleted; what cannot be deleted there (a file still in use) stays, named in the returned
/// warning, and the next clear removes it.
fn clear(penv: &Penv) -> std::result::Result<Option<String>, String> {
    let Ok(entries) = std::fs::read_dir(&penv.root) else {
        return Ok(None);
    };
    let mut names: Vec<std::ffi::OsString> = entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| !is_own_file_name(name))
        .collect();
    // Leftovers of an earlier clear go now where they can; what cannot stays aside.
    names.retain(|name| {
        let leftover = name.to_str().is_some_and(|n| n.starts_with(ASIDE_PREFIX));
        if leftover {
            let _ = remove_tree(&penv.root.join(name));
        }
        !leftover
    });
    names.sort_by_key(|name| name == "pyvenv.cfg");
    let aside = (0..100u32)
        .map(|n| {
            penv.root
                .join(format!("{ASIDE_PREFIX}{}-{n}", std::process::id()))
        })
        .find(|dir| std::fs::create_dir(dir).is_ok())
        .ok_or_else(|| format!("cannot create a directory in {}", penv.root.display()))?;
    let mut moved: Vec<&std::ffi::OsString> = Vec::new();
    for name in &names {
        let from = penv.root.join(name);
        if let Err(e) = std::fs::rename(&from, aside.join(name)) {
            let not_back: Vec<String> = moved
                .iter()
                .rev()
                .filter(|m| std::fs::rename(aside.join(m), penv.root.join(m)).is_err())
                .map(|m| m.to_string_lossy().into_owned())
                .collect();
            if not_back.is_empty() {
                let _ = std::fs::remove_dir(&aside);
                return Err(format!(
                    "cannot move {} aside to clear the penv: {e} (a file in it in use by a \
                     running program, or an immutable or read-only directory?); nothing was \
                     removed, the penv is as it was",
                    from.display()
                ));
            }
            return Err(format!(
                "cannot move {} aside to clear the penv: {e}; and {} could not be moved back \
                 from {}",
                from.display(),
                not_back.join(", "),
                aside.display()
            ));
        }
        moved.push(name);
    }
    Ok(remove_tree(&aside).err().map(|(path, e)| {
        format!(
            "the old penv's files were moved aside to {}, but {} cannot be deleted ({e}: in use \
             by a running program?); they are left there, and a later recreation removes them",
            aside.display(),
            path.display()
        )
    }))
}

/// `remove_dir_all` that names the first path it could not remove. Symlinks are removed, never
/// followed.
fn remove_tree(path: &Path) -> std::result::Result<(), (PathBuf, std::io::Error)> {
    let at = |e| (path.to_path_buf(), e);
    let meta = std::fs::symlink_metadata(path).map_err(at)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(at)? {
            remove_tree(&entry.map_err(at)?.path())?;
        }
        std::fs::remove_dir(path).map_err(at)
    } else {
        // A directory symlink on Windows is removed as a directory.
        std::fs::remove_file(path)
            .or_else(|e| {
                if meta.file_type().is_symlink() {
                    std::fs::remove_dir(path)
                } else {
                    Err(e)
                }
            })
            .map_err(at)
    }
}

/// Puts uv into a penv that has none, the way pioarduino does when no uv exists anywhere: with
/// the penv's own pip (`ensurepip` first, as uv-made venvs have no pip). Offline, pip may only
/// read the local `UV_FIND_LINKS` directories that hold a uv wheel ([`offline_uv_wheels`]).
pub fn bootstrap_uv(
    penv: &Penv,
    offline: bool,
    timeout: Duration,
    hold: Option<&File>,
) -> Result<PathBuf> {
    let python = penv.python();
    let fail = |message: String| Error::Install {
        message: format!("no uv found anywhere, and installing it with pip failed: {message}"),
        tail: String::new(),
    };
    let mut ensurepip = Command::new(&python);
    ensurepip.args(["-m", "ensurepip", "--default-pip"]);
    let _ = process::run(ensurepip, timeout, Stderr::Captured, hold);
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    if offline {
        let dirs = offline_uv_wheels();
        if dirs.is_empty() {
            return Err(Error::UvUnavailableOffline);
        }
        pip.arg("--no-index");
        for dir in dirs {
            pip.arg("--find-links").arg(dir);
        }
    }
    pip.arg("uv");
    let out = process::run(pip, timeout, Stderr::Captured, hold)
        .map_err(|e| fail(format!("cannot run {}: {e}", python.display())))?;
    if !out.success() || !penv.uv().is_file() {
        return Err(fail(format!(
            "{}: {}",
            out.describe_status(timeout),
            process::tail(&out.output_tail, 3).replace('\n', " | ")
        )));
    }
    Ok(penv.uv())
}

/// Offline, with no uv found the usual way: a uv the uv cache unpacked when it installed one
/// (`<cache>/archive-v0/<id>/uv-<version>.data/scripts/uv`) that runs. `None` if there is none.
pub fn uv_in_cache(cache_dir: &Path) -> Option<PathBuf> {
    let subdirs = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let named = |path: &Path, test: &dyn Fn(&str) -> bool| {
        path.file_name().and_then(|n| n.to_str()).is_some_and(test)
    };
    subdirs(cache_dir)
        .into_iter()
        .filter(|p| named(p, &|n| n.starts_with("archive-v")))
        .flat_map(|archive| subdirs(&archive))
        .flat_map(|unpacked| subdirs(&unpacked))
        .filter(|p| {
            named(p, &|n| {
                n.starts_with("uv-") && Path::new(n).extension().is_some_and(|x| x == "data")
            })
        })
        .map(|data| data.join("scripts").join(UV_EXE))
        .filter(|uv| uv.is_file())
        .find(|uv| uv_version(uv).is_some())
}

/// The local `UV_FIND_LINKS` directories (comma-separated, as uv reads them; `file://` URLs
/// too) that hold a uv wheel: what pip may install uv from offline.
pub fn offline_uv_wheels() -> Vec<PathBuf> {
    let links = std::env::var("UV_FIND_LINKS").unwrap_or_default();
    links
        .split(',')
        .map(str::trim)
        .filter_map(|link| {
            if let Some(rest) = link.strip_prefix("file://") {
                Some(PathBuf::from(rest))
            } else if link.contains("://") || link.is_empty() {
                None
            } else {
                Some(PathBuf::from(link))
            }
        })
        .filter(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.starts_with("uv-")
                            && std::path::Path::new(n)
                                .extension()
                                .is_some_and(|x| x.eq_ignore_ascii_case("whl"))
                    })
                })
            })
        })
        .map(|dir| absolute(&dir))
        .collect()
}

pub struct InstallRequest<'a> {
    pub uv: &'a Path,
    pub penv: &'a Penv,
    pub python: &'a Path,
    pub requirements_file: &'a Path,
    pub reinstall: &'a [String],
    pub cache_dir: &'a Path,
    pub offline: bool,
    pub timeout: Duration,
    pub lock_budget: Duration,
    pub stderr: Stderr,
    pub hold: Option<&'a File>,
}

pub fn pip_install(request: &InstallRequest<'_>) -> Result<()> {
    let mut command = uv_command(request.uv, request.penv);
    command
        .args(["pip", "install", "--python"])
        .arg(request.python)
        .arg("--cache-dir")
        .arg(absolute(request.cache_dir))
        .arg("-r")
        .arg(request.requirements_file);
    for name in request.reinstall {
        command.arg("--reinstall-package").arg(name);
    }
    if request.offline {
        command.arg("--offline");
    }
    let seconds = request.lock_budget.as_secs().clamp(1, 86_400);
    command.env("UV_LOCK_TIMEOUT", seconds.to_string());
    command.env_remove("VIRTUAL_ENV");
    // Offline, uv's words decide whether a failure is "not available offline" (exit 4): its
    // output is captured and shown afterwards instead of live.
    let stderr = if request.offline {
        Stderr::Captured
    } else {
        request.stderr
    };
    let out = process::run(command, request.timeout, stderr, request.hold).map_err(|e| {
        Error::Install {
            message: format!("cannot run {}: {e}", request.uv.display()),
            tail: String::new(),
        }
    })?;
    if out.success() {
        if request.stderr == Stderr::Live && stderr == Stderr::Captured {
            messages::say_raw(out.output_tail.trim_end());
        }
        return Ok(());
    }
    if request.offline && !out.timed_out && is_offline_miss(&out.output_tail) {
        return Err(Error::Offline {
            tail: out.output_tail,
        });
    }
    Err(Error::Install {
        message: format!("`uv pip install` {}", out.describe_status(request.timeout)),
        tail: out.output_tail,
    })
}

/// Whether uv's output says it failed because something was not available offline (uv 0.13.9):
/// the resolver's hint "Packages were unavailable because the network was disabled", its
/// "… was not found in the cache", and a download's or git fetch's "Network connectivity is
/// disabled". A read-only site-packages, a resolver conflict among local wheels or a broken
/// wheel say none of these.
pub fn is_offline_miss(output: &str) -> bool {
    let output = output.to_lowercase();
    [
        "because the network was disabled",
        "network connectivity is disabled",
        "was not found in the cache",
    ]
    .iter()
    .any(|needle| output.contains(needle))
}

/// Path-valued `UV_*` variables whose relative entries uv would take against its working
/// directory (lists: `UV_FIND_LINKS` is comma-separated, `UV_INDEX` space-separated).
const UV_PATH_VARIABLES: [(&str, Option<char>); 9] = [
    ("UV_FIND_LINKS", Some(',')),
    ("UV_INDEX", Some(' ')),
    ("UV_DEFAULT_INDEX", None),
    ("UV_INDEX_URL", None),
    ("UV_EXTRA_INDEX_URL", Some(' ')),
    ("UV_CONFIG_FILE", None),
    ("UV_CONSTRAINT", Some(' ')),
    ("UV_OVERRIDE", Some(' ')),
    ("UV_BUILD_CONSTRAINT", Some(' ')),
];

/// uv run from inside the penv, so that no `uv.toml` or `pyproject.toml [tool.uv]` of the
/// directory penv-guard was started in (a PlatformIO project) can redirect the penv's install
/// (a `target` there makes uv write elsewhere). Configuration above the penv
/// (`~/.config/uv/uv.toml`, `/etc/uv/uv.toml`, a `uv.toml` in a parent of the penv) and `UV_*`
/// variables still apply; relative paths in path-valued `UV_*` variables are made absolute
/// first, so they still mean what they meant where penv-guard was started. Every path
/// penv-guard itself gives uv is absolute.
fn uv_command(uv: &Path, penv: &Penv) -> Command {
    let mut command = Command::new(uv);
    if penv.root.is_dir() {
        command.current_dir(&penv.root);
        for (name, separator) in UV_PATH_VARIABLES {
            if let Some(value) = std::env::var_os(name).and_then(|v| v.into_string().ok()) {
                command.env(name, absolute_entries(&value, separator));
            }
        }
    }
    command
}

/// Each entry of a `UV_*` value that is a relative path, made absolute; URLs and absolute paths
/// unchanged.
fn absolute_entries(value: &str, separator: Option<char>) -> String {
    let one = |entry: &str| {
        if entry.is_empty() || entry.contains("://") || Path::new(entry).is_absolute() {
            entry.to_owned()
        } else {
            absolute(Path::new(entry)).to_string_lossy().into_owned()
        }
    };
    match separator {
        Some(sep) => value
            .split(sep)
            .map(one)
            .collect::<Vec<_>>()
            .join(&sep.to_string()),
        None => one(value),
    }
}

/// The uv configuration files that apply to an install into `penv` (as uv 0.13.9 finds them:
/// `UV_CONFIG_FILE`, else the nearest `uv.toml` or `pyproject.toml` with a `[tool.uv` table
/// from the penv up, the user's and the system's `uv.toml`), for a message when an install
/// landed elsewhere. Empty under `UV_NO_CONFIG`.
pub fn config_files(penv: &Penv) -> Vec<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(file) = set("UV_CONFIG_FILE") {
        return vec![absolute(Path::new(&file))];
    }
    if set("UV_NO_CONFIG").is_some_and(|v| v != "0" && v != "false") {
        return Vec::new();
    }
    let mut files = Vec::new();
    for dir in penv.root.ancestors() {
        let uv_toml = dir.join("uv.toml");
        let pyproject = dir.join("pyproject.toml");
        if uv_toml.is_file() {
            files.push(uv_toml);
            break;
        }
        if crate::fsutil::read_foreign_text(&pyproject).is_some_and(|t| t.contains("[tool.uv")) {
            files.push(pyproject);
            break;
        }
    }
    let user_dir = set("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| {
        set(if cfg!(windows) { "APPDATA" } else { "HOME" }).map(|home| {
            if cfg!(windows) {
                PathBuf::from(home)
            } else {
                PathBuf::from(home).join(".config")
            }
        })
    });
    let system = if cfg!(windows) {
        set("PROGRAMDATA").map(|d| PathBuf::from(d).join("uv").join("uv.toml"))
    } else {
        Some(PathBuf::from("/etc/uv/uv.toml"))
    };
    files.extend(
        user_dir
            .map(|d| d.join("uv").join("uv.toml"))
            .into_iter()
            .chain(system)
            .filter(|f| f.is_file()),
    );
    files
}

/// `uv --version`, asked once after an install, for the state and `status`.
pub fn uv_version(uv: &Path) -> Option<String> {
    let mut command = Command::new(uv);
    command.arg("--version");
    let out = process::run(command, Duration::from_secs(10), Stderr::Captured, None).ok()?;
    out.success().then(|| out.stdout.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_entries_of_uv_path_variables_become_absolute_and_urls_stay() {
        let cwd = std::env::current_dir().unwrap();
        // Absolute on every OS (`/abs` is relative to the drive on Windows).
        let abs = std::env::temp_dir().join("abs");
        let abs = abs.to_str().unwrap();
        let joined = absolute_entries(&format!("wheels,https://x/simple,{abs}"), Some(','));
        let entries: Vec<&str> = joined.split(',').collect();
        assert_eq!(entries[0], cwd.join("wheels").to_string_lossy());
        assert_eq!(entries[1..], ["https://x/simple", abs]);
        assert_eq!(absolute_entries("file:///x", None), "file:///x");
    }
}
