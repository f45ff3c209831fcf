//! `penv-guard platform install|remove|status` as a Windows build runs them (under Wine here,
//! on a Windows runner in CI): LF and CRLF (Git for Windows' `core.autocrlf`) files, a core dir
//! under a non-ASCII user folder, the platform lock between two processes. Self-contained: it
//! needs no Python and no uv, only the binary and the upstream fixtures.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_penv-guard");

fn fixture(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if name == "55.03.311" {
        root.join("upstream/penv_setup.py")
    } else {
        root.join(format!("upstream-releases/{name}.py"))
    }
}

fn platform_json(version: &str) -> String {
    format!(
        r#"{{"name": "espressif32", "version": "{version}", "repository": {{"type": "git", "url": "https://github.com/pioarduino/platform-espressif32.git"}}}}"#
    )
}

/// `<core>/platforms/<version>/` with that release's file, CRLF if asked; returns the file.
fn add(core: &Path, version: &str, crlf: bool) -> (PathBuf, Vec<u8>) {
    let dir = core.join("platforms").join(version);
    fs::create_dir_all(dir.join("builder")).unwrap();
    fs::write(dir.join("platform.json"), platform_json(version)).unwrap();
    let mut text = fs::read_to_string(fixture(version)).unwrap();
    if crlf {
        text = text.replace('\n', "\r\n");
    }
    let file = dir.join("builder").join("penv_setup.py");
    fs::write(&file, &text).unwrap();
    (file, text.into_bytes())
}

fn platform(core: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("platform")
        .args(args)
        .arg("--core-dir")
        .arg(core)
        .env_remove("PENV_GUARD_LOCK_TIMEOUT")
        .output()
        .unwrap()
}

#[track_caller]
fn ok(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    stderr
}

fn states(core: &Path) -> Vec<(String, String)> {
    let output = platform(core, &["status", "--json"]);
    ok(&output);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.is_ascii(), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["version"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("penv-guard-win-J\u{fc}rgen \u{c4}-")
        .tempdir()
        .unwrap()
}

#[test]
fn windows_platform_install_hooks_lf_and_crlf_files_and_remove_restores_them_byte_for_byte() {
    let t = tempdir();
    let core = t.path().join(".platformio");
    let files = [
        add(&core, "55.03.311", false),
        add(&core, "55.03.35", true),
        add(&core, "55.03.38", true),
    ];
    assert!(
        states(&core).iter().all(|(_, s)| s == "not-hooked"),
        "{:?}",
        states(&core)
    );
    ok(&platform(&core, &["install"]));
    assert!(
        states(&core).iter().all(|(_, s)| s == "hooked"),
        "{:?}",
        states(&core)
    );
    for (file, original) in &files {
        let hooked = fs::read_to_string(file).unwrap();
        assert!(hooked.contains("def _penv_guard("), "{}", file.display());
        let crlf = original.windows(2).any(|w| w == b"\r\n");
        assert_eq!(
            hooked.matches("\r\n").count() == hooked.matches('\n').count(),
            crlf,
            "{}: line endings kept",
            file.display()
        );
    }
    assert!(ok(&platform(&core, &["install"])).contains("already hooked"));
    ok(&platform(&core, &["remove"]));
    for (file, original) in &files {
        assert_eq!(&fs::read(file).unwrap(), original, "{}", file.display());
        assert_eq!(fs::read_dir(file.parent().unwrap()).unwrap().count(), 1);
    }
}

#[test]
fn windows_platform_lock_held_by_another_process_is_waited_for_then_exit_75() {
    let t = tempdir();
    let core = t.path().join(".platformio");
    let (file, original) = add(&core, "55.03.311", true);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(core.join(".penv-guard-platform.lock"))
        .unwrap();
    lock.lock().unwrap();
    let output = Command::new(BIN)
        .args(["platform", "install", "--core-dir"])
        .arg(&core)
        .env("PENV_GUARD_LOCK_TIMEOUT", "0.5")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("platform lock"), "{stderr}");
    assert_eq!(fs::read(&file).unwrap(), original);
    drop(lock);
    ok(&platform(&core, &["install"]));
    assert_eq!(
        states(&core),
        [("55.03.311".to_owned(), "hooked".to_owned())]
    );
}
