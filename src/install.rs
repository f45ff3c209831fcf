//! The child processes of a miss: finding uv, creating the penv with `uv venv`, running
//! `uv pip install`, and asking the host Python its version. Each runs with a deadline and is
//! killed past it; its output is kept (the tail is shown on failure).

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::penv::Penv;

const TAIL_LINES: usize = 25;

/// uv in this order: `--uv`, `$PENV_GUARD_UV`, the penv's own uv, next to `--python`, PATH.
/// Paths are made absolute: the fingerprint must not depend on the working directory.
pub fn find_uv(explicit: Option<&Path>, penv: &Penv, python: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(absolute(path));
    }
    if let Some(path) = std::env::var_os("PENV_GUARD_UV").filter(|p| !p.is_empty()) {
        return Some(absolute(Path::new(&path)));
    }
    let exe = if cfg!(windows) { "uv.exe" } else { "uv" };
    let beside_python = python
        .and_then(Path::parent)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(exe));
    [Some(penv.bin_dir().join(exe)), beside_python]
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

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

pub struct Captured {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub output_tail: String,
    pub timed_out: bool,
}

impl Captured {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn describe_status(&self, timeout: Duration) -> String {
        if self.timed_out {
            return format!("killed after the {}s timeout", timeout.as_secs_f64());
        }
        match self.status.and_then(|s| s.code()) {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        }
    }
}

/// Runs `command` until it exits or `timeout` passes (then kills it). stderr is shown live when
/// `live` is set and stderr is a terminal; otherwise it is captured.
pub fn run_captured(
    mut command: Command,
    timeout: Duration,
    live: bool,
) -> std::io::Result<Captured> {
    let live = live && std::io::stderr().is_terminal();
    command.stdin(Stdio::null()).stdout(Stdio::piped());
    command.stderr(if live {
        Stdio::inherit()
    } else {
        Stdio::piped()
    });
    let mut child = command.spawn()?;
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|s| drain(s, Arc::clone(&stdout))),
        child.stderr.take().map(|s| drain(s, Arc::clone(&stderr))),
    ];
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (Some(status), false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    };
    if !timed_out {
        // Grandchildren may hold the pipes open after a kill; only join after a clean exit.
        for reader in readers.into_iter().flatten() {
            let _ = reader.join();
        }
    }
    let stdout = String::from_utf8_lossy(&stdout.lock().expect("stdout buffer")).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.lock().expect("stderr buffer")).into_owned();
    let combined = format!("{stderr}{}", if stdout.is_empty() { "" } else { "\n" }) + &stdout;
    Ok(Captured {
        status,
        stdout,
        output_tail: tail(&combined, TAIL_LINES),
        timed_out,
    })
}

fn drain(
    mut source: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = source.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("output buffer")
                .extend_from_slice(&buf[..n]);
        }
    })
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `(version, real path of the interpreter)` of a host Python.
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
    let out = run_captured(command, timeout, false).map_err(|e| not_found(e.to_string()))?;
    if !out.success() {
        return Err(not_found(format!(
            "{}: {}",
            out.describe_status(timeout),
            tail(&out.output_tail, 1)
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

/// Removes everything in the penv but penv-guard's own lock files, then runs `uv venv`.
/// The lock file must survive: a waiter may already have it open.
pub fn create_venv(uv: &Path, python: &Path, penv: &Penv, timeout: Duration) -> Result<()> {
    let fail = |message: String| Error::VenvCreate {
        penv: penv.root.clone(),
        message,
    };
    if let Ok(entries) = std::fs::read_dir(&penv.root) {
        for entry in entries.flatten() {
            if Penv::is_own_file(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| fail(format!("cannot remove {}: {e}", path.display())))?;
        }
    }
    let mut command = Command::new(uv);
    command
        .args(["venv", "--allow-existing", "--no-project", "--python"])
        .arg(python)
        .arg(&penv.root);
    let out = run_captured(command, timeout, false)
        .map_err(|e| fail(format!("cannot run {}: {e}", uv.display())))?;
    if out.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "`uv venv` {}: {}",
            out.describe_status(timeout),
            tail(&out.output_tail, 3).replace('\n', " | ")
        )))
    }
}

pub struct InstallRequest<'a> {
    pub uv: &'a Path,
    pub python: &'a Path,
    pub requirements_file: &'a Path,
    pub cache_dir: &'a Path,
    pub offline: bool,
    pub timeout: Duration,
    pub lock_budget: Duration,
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
    if request.offline {
        command.arg("--offline");
    }
    let seconds = request.lock_budget.as_secs().max(1);
    command.env("UV_LOCK_TIMEOUT", OsString::from(seconds.to_string()));
    let out = run_captured(command, request.timeout, true).map_err(|e| Error::Install {
        message: format!("cannot run {}: {e}", request.uv.display()),
        tail: String::new(),
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
    let out = run_captured(command, Duration::from_secs(10), false).ok()?;
    out.success().then(|| out.stdout.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "");
    }

    #[cfg(unix)]
    #[test]
    fn run_captured_kills_after_the_deadline() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo started; sleep 30"]);
        let start = Instant::now();
        let out = run_captured(command, Duration::from_millis(300), false).unwrap();
        assert!(out.timed_out);
        assert!(!out.success());
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
