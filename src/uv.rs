//! The children of a miss that change the penv: finding uv and the host Python, creating the
//! penv, putting uv into it, and `uv pip install`. They run through `process` (deadline, own
//! process group, the lock kept by the child).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
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
/// when it is a venv or penv-guard made it; penv-guard's own files stay.
pub fn create_venv(
    uv: Option<&Path>,
    python: &Path,
    penv: &Penv,
    cache_dir: &Path,
    timeout: Duration,
    hold: Option<&File>,
) -> Result<()> {
    let fail = |message: String| Error::VenvCreate {
        penv: penv.root.clone(),
        message,
    };
    check_penv_is_ours(penv)?;
    if matches!(penv.occupant(), Occupant::Venv | Occupant::OursUnfinished) {
        clear(penv).map_err(fail)?;
    }
    std::fs::create_dir_all(&penv.root)
        .map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    std::fs::write(penv.created_marker(), b"").map_err(|e| {
        fail(format!(
            "cannot write {}: {e}",
            penv.created_marker().display()
        ))
    })?;
    let program = uv.unwrap_or(python).to_path_buf();
    let (mut command, what) = if let Some(uv) = uv {
        let mut command = Command::new(uv);
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
        Ok(())
    } else {
        Err(fail(format!(
            "`{what}` {}: {}",
            out.describe_status(timeout),
            process::tail(&out.output_tail, 3).replace('\n', " | ")
        )))
    }
}

/// Removes the venv's contents, `pyvenv.cfg` last (with the marker already written, the
/// directory is recognisable whenever this stops).
fn clear(penv: &Penv) -> std::result::Result<(), String> {
    let Ok(entries) = std::fs::read_dir(&penv.root) else {
        return Ok(());
    };
    let mut entries: Vec<std::fs::DirEntry> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name() == "pyvenv.cfg");
    for entry in entries {
        if is_own_file_name(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Puts uv into a penv that has none, the way pioarduino does when no uv exists anywhere: with
/// the penv's own pip (`ensurepip` first, as uv-made venvs have no pip).
pub fn bootstrap_uv(penv: &Penv, timeout: Duration, hold: Option<&File>) -> Result<PathBuf> {
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
        "uv",
    ]);
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

pub struct InstallRequest<'a> {
    pub uv: &'a Path,
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
    let mut command = Command::new(request.uv);
    command
        .args(["pip", "install", "--python"])
        .arg(request.python)
        .arg("--cache-dir")
        .arg(request.cache_dir)
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
    let out =
        process::run(command, request.timeout, request.stderr, request.hold).map_err(|e| {
            Error::Install {
                message: format!("cannot run {}: {e}", request.uv.display()),
                tail: String::new(),
            }
        })?;
    if out.success() {
        return Ok(());
    }
    if request.offline && !out.timed_out {
        return Err(Error::Offline {
            tail: out.output_tail,
        });
    }
    Err(Error::Install {
        message: format!("`uv pip install` {}", out.describe_status(request.timeout)),
        tail: out.output_tail,
    })
}

/// `uv --version`, asked once after an install, for the state and `status`.
pub fn uv_version(uv: &Path) -> Option<String> {
    let mut command = Command::new(uv);
    command.arg("--version");
    let out = process::run(command, Duration::from_secs(10), Stderr::Captured, None).ok()?;
    out.success().then(|| out.stdout.trim().to_owned())
}
