//! Windows with the real interpreter and the real uv: what the stand-ins of `windows` and
//! `windows_paths` cannot show (a real `uv venv`, `uv pip install` and import check, and a hit on
//! what they left). These run in the CI's windows-latest job, where `scripts/test` passes the real
//! uv in `PENV_GUARD_TEST_UV` and `python` is a Windows CPython. Under Wine on the Linux machine
//! there is no Windows CPython, so they skip there, saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{BIN, repo, tool_wheels};

/// The real uv and the real interpreter, or why not.
fn real_tools() -> Result<(PathBuf, PathBuf), &'static str> {
    let uv = std::env::var_os("PENV_GUARD_TEST_UV")
        .map(PathBuf::from)
        .filter(|uv| uv.is_file())
        .ok_or("no real uv (PENV_GUARD_TEST_UV, set by scripts/test)")?;
    let out = Command::new("python")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map_err(|_| "no Windows CPython (`python`) on PATH")?;
    if !out.status.success() {
        return Err("`python` does not run");
    }
    let python = String::from_utf8(out.stdout).map_err(|_| "`python` printed no path")?;
    Ok((uv, PathBuf::from(python.trim())))
}

/// `file:///C:/…` for a directory whose path has no space (the tests' own temp dirs).
fn file_url(dir: &Path) -> String {
    format!("file:///{}", dir.display().to_string().replace('\\', "/"))
}

#[test]
fn a_real_miss_under_a_non_ascii_path_installs_validates_and_the_next_run_is_a_hit() {
    let (uv, python) = match real_tools() {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("skipped: {why}; this test runs on a real Windows (the CI's Windows job)");
            return;
        }
    };
    let home = tempfile::Builder::new()
        .prefix("penv-guard Jürgen Ä ")
        .tempdir()
        .unwrap();
    let local = tempfile::tempdir().unwrap();
    let wheels = local.path().join("wheels");
    let index = local.path().join("empty-index");
    std::fs::create_dir_all(&wheels).unwrap();
    std::fs::create_dir_all(&index).unwrap();
    let built = Command::new(&python)
        .arg(repo().join("tests/fixtures/make_wheel.py"))
        .arg(&wheels)
        .args(["alpha", "1.0", "--module", "alpha=VALUE = 1"])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let core = home.path().join("core");
    let penv = core.join("penv");
    let ensure = || -> Output {
        Command::new(BIN)
            .arg("ensure")
            .arg("--penv")
            .arg(&penv)
            .arg("--uv")
            .arg(&uv)
            .arg("--python")
            .arg(&python)
            .arg("--uv-cache-dir")
            .arg(local.path().join("uv-cache"))
            .args(["--dep", "alpha", "--json"])
            .env("PLATFORMIO_CORE_DIR", &core)
            .env(
                "UV_FIND_LINKS",
                format!("{},{}", wheels.display(), tool_wheels().display()),
            )
            .env("UV_DEFAULT_INDEX", file_url(&index))
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env_remove("PLATFORMIO_OFFLINE")
            .env_remove("PENV_GUARD_LOCK_TIMEOUT")
            .env_remove("PENV_GUARD_UV")
            .env_remove("VIRTUAL_ENV")
            .output()
            .unwrap()
    };
    let first = ensure();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{stderr}");
    // Any code page decodes it (the hook reads it with encoding="utf-8" too).
    assert!(
        first.stdout.is_ascii(),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["status"], "installed", "{stderr}");
    assert_eq!(report["installed"]["alpha"], "1.0");
    let named = report["penv"].as_str().unwrap();
    assert!(
        named.contains("Jürgen Ä") && named.ends_with(r"core\penv") && !named.contains(r"\\"),
        "the penv as Windows spells it: {named}"
    );
    let imported = Command::new(penv.join(r"Scripts\python.exe"))
        .args(["-c", "import alpha; print(alpha.VALUE)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&imported.stdout).trim(), "1");

    let second = ensure();
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(
        report["status"],
        "hit",
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
}
