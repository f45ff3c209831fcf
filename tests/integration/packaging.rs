use std::path::Path;
use std::process::Command;

use crate::support::{BIN, real_uv, succeed};

/// Where .cargo/config.toml links statically (`+crt-static` on x86_64 glibc Linux).
const STATIC: bool = cfg!(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu"
));

/// Whether an ELF executable asks for a program interpreter (a PT_INTERP program header): a
/// dynamically linked one does, a static or static-pie one does not. ELF64 little-endian only.
fn has_program_interpreter(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path).unwrap();
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "{}: not ELF64 LE",
        path.display()
    );
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let phoff = usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap())).unwrap();
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}

/// What `cargo build` and `cargo install --path .` produce here: the same config builds the
/// binary under test.
#[test]
fn cargo_builds_a_static_binary_on_x86_64_linux_gnu() {
    if STATIC {
        assert!(
            !has_program_interpreter(Path::new(BIN)),
            "{BIN} is dynamically linked (PT_INTERP); .cargo/config.toml should add +crt-static"
        );
    }
}

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
    // uv writes only under this test's directory: its cache there, and a HOME of its own that
    // must stay empty (the user's ~/.cache/uv once got 5.7 MB from this test).
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let uv = |args: &[&str]| {
        let mut command = Command::new(real_uv());
        command
            .args(args)
            .env("HOME", &home)
            .env("UV_CACHE_DIR", dir.path().join("uv-cache"))
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME");
        command
    };
    succeed(uv(&["venv"]).arg(&venv));
    succeed(
        uv(&["pip", "install", "--python"])
            .arg(venv.join("bin/python"))
            .arg(&wheel),
    );
    let left_in_home: Vec<_> = std::fs::read_dir(&home).unwrap().flatten().collect();
    assert!(
        left_in_home.is_empty(),
        "uv wrote into HOME: {left_in_home:?}"
    );
    let installed = venv.join("bin/penv-guard");
    if STATIC {
        assert!(
            !has_program_interpreter(&installed),
            "the wheel's binary is dynamically linked (PT_INTERP)"
        );
    }
    let out = Command::new(&installed).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "penv-guard 0.1.0"
    );
}
