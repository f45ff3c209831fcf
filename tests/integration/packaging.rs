use std::path::Path;
use std::process::Command;

use crate::support::{real_uv, succeed};

/// `pip install penv-guard` must put the binary into the environment's scripts dir, as uv's and
/// ruff's wheels do (maturin `bindings = "bin"`).
#[test]
fn wheel_built_by_maturin_installs_the_binary_into_a_fresh_venv() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let maturin = root.join(".tools/venv/bin/maturin");
    assert!(maturin.is_file(), "maturin missing: run scripts/setup");
    let dir = tempfile::tempdir().unwrap();
    succeed(
        Command::new(&maturin)
            .args(["build", "--release", "--quiet", "--out"])
            .arg(dir.path().join("dist"))
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml")),
    );
    let wheel = std::fs::read_dir(dir.path().join("dist"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("penv_guard-0.1.0-py3-none-"), "{name}");

    let venv = dir.path().join("venv");
    let uv = real_uv();
    succeed(Command::new(&uv).arg("venv").arg(&venv));
    succeed(
        Command::new(&uv)
            .args(["pip", "install", "--python"])
            .arg(venv.join("bin/python"))
            .arg(&wheel),
    );
    let out = Command::new(venv.join("bin/penv-guard"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "penv-guard 0.1.0"
    );
}
