//! The fixture builder: a temporary world with a penv path, a uv cache, a wheel directory that
//! uv reads through `UV_FIND_LINKS`, and a logging shim in front of the real uv that records every
//! call. The package index is an empty local directory (`UV_DEFAULT_INDEX`): uv 0.13 has no
//! environment variable for `--no-index` (`UV_NO_INDEX` is silently ignored), so without this
//! the tests would consult PyPI.

// On Windows only `stand_in` and the command helpers are used (see main.rs).
#![cfg_attr(windows, allow(dead_code))]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_penv-guard");

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file or directory that `scripts/setup --pio` puts under `.tools/` (`venv/bin/pio`), or a
/// failure that says to run it.
pub fn tools_path(relative: &str) -> PathBuf {
    let path = repo().join(".tools").join(relative);
    assert!(
        path.exists(),
        "no {}: run scripts/setup --pio",
        path.display()
    );
    path
}

/// The real uv: `$PENV_GUARD_TEST_UV`, `.tools/venv/bin/uv` (scripts/setup), or PATH.
pub fn real_uv() -> PathBuf {
    static UV: OnceLock<PathBuf> = OnceLock::new();
    UV.get_or_init(|| {
        if let Some(path) = std::env::var_os("PENV_GUARD_TEST_UV") {
            return PathBuf::from(path);
        }
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/uv");
        if tools.is_file() {
            return tools;
        }
        which("uv").expect("no uv found: run scripts/setup (it installs uv into .tools/)")
    })
    .clone()
}

/// `.tools/wheels`: the uv wheel (and nothing the tests build).
pub fn tool_wheels() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/wheels");
    assert!(
        std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()),
        "no uv wheel in {}: run scripts/setup",
        dir.display()
    );
    dir
}

pub fn host_python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        // The real interpreter, not a pyenv shim: venvs and wheels build faster without it.
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// Runs a helper command (uv, maturin, Python) that must succeed; its stderr is the failure text.
#[track_caller]
pub fn succeed(command: &mut Command) -> Output {
    let out = command.output().expect("helper command starts");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A wheel to build: `Wheel::new("alpha", "1.0").module("alpha", "X = 1")`.
#[derive(Clone)]
pub struct Wheel {
    name: String,
    version: String,
    args: Vec<String>,
}

impl Wheel {
    pub fn new(name: &str, version: &str) -> Wheel {
        Wheel {
            name: name.into(),
            version: version.into(),
            args: Vec::new(),
        }
    }

    pub fn module(mut self, name: &str, source: &str) -> Wheel {
        self.args.push(format!("--module={name}={source}"));
        self
    }

    pub fn file(mut self, path: &str, source: &str) -> Wheel {
        self.args.push(format!("--module-file={path}={source}"));
        self
    }

    pub fn requires(mut self, spec: &str) -> Wheel {
        self.args.push(format!("--requires={spec}"));
        self
    }

    /// RECORD claims `size` bytes for `path`: damage no reinstall repairs.
    pub fn record_size(mut self, path: &str, size: u64) -> Wheel {
        self.args.push(format!("--record-size={path}={size}"));
        self
    }

    pub fn top_level(mut self, name: &str) -> Wheel {
        self.args.push(format!("--top-level={name}"));
        self
    }

    pub fn build(&self, out_dir: &Path) -> PathBuf {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_wheel.py");
        let out = succeed(
            Command::new(host_python())
                .arg(script)
                .arg(out_dir)
                .arg(&self.name)
                .arg(&self.version)
                .args(&self.args),
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }
}

/// A certifi whose `where()` and RECORD name its `cacert.pem`, as the real one's do.
pub fn certifi_wheel() -> Wheel {
    Wheel::new("certifi", "2025.8.3")
        .module(
            "certifi",
            "import os\n\ndef where():\n    return os.path.join(os.path.dirname(__file__), 'cacert.pem')\n",
        )
        .file("certifi/cacert.pem", "# test CA bundle\n")
}

/// The standard wheels most tests use, with the odd cases pioarduino's list has.
pub fn standard_wheels() -> Vec<Wheel> {
    vec![
        Wheel::new("alpha", "1.0").module("alpha", "VALUE = 1"),
        Wheel::new("alpha", "2.0").module("alpha", "VALUE = 2"),
        // Import name unlike the distribution name, and a top_level.txt naming something
        // unimportable (fatfs-ng lists `wrapper`).
        Wheel::new("Odd_Name", "3.1")
            .module("oddimport", "")
            .top_level("oddimport")
            .top_level("wrapper"),
        Wheel::new("postpkg", "1.0.post1").module("postpkg", ""),
        Wheel::new("single", "1.0").file("single_mod.py", "X = 1"),
        Wheel::new("needs-alpha", "1.0")
            .module("needs_alpha", "import alpha")
            .requires("alpha>=1.0"),
        Wheel::new("broken", "1.0").module("broken", "raise ImportError('broken on purpose')"),
    ]
}

/// The standard wheels, built once rather than once per `World` (7 Python starts each) into
/// `CARGO_TARGET_TMPDIR/standard-wheels-<key>`, which later test runs reuse. The key hashes
/// `make_wheel.py` and every wheel's arguments, so a changed fixture gets a fresh directory. It
/// is built under a temporary name and renamed into place: test threads wait on the `OnceLock`,
/// and concurrent test processes see either no directory or a complete one.
fn standard_wheel_files() -> &'static [PathBuf] {
    use sha2::Digest as _;
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let wheels = standard_wheels();
        let mut hasher = sha2::Sha256::new();
        hasher.update(std::fs::read(manifest.join("tests/fixtures/make_wheel.py")).unwrap());
        for wheel in &wheels {
            hasher.update(format!(
                "{:?}\0",
                (&wheel.name, &wheel.version, &wheel.args)
            ));
        }
        let key = u64::from_be_bytes(hasher.finalize()[..8].try_into().unwrap());
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = parent.join(format!("standard-wheels-{key:016x}"));
        if !dir.is_dir() {
            let building = tempfile::Builder::new()
                .prefix(".standard-wheels-")
                .tempdir_in(parent)
                .unwrap();
            for wheel in &wheels {
                wheel.build(building.path());
            }
            // If another process won the race, its directory is just as complete: drop ours.
            if std::fs::rename(building.path(), &dir).is_ok() {
                let _ = building.keep();
            }
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "whl"))
            .collect();
        files.sort();
        assert_eq!(
            files.len(),
            wheels.len(),
            "standard wheels in {}",
            dir.display()
        );
        files
    })
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub penv: PathBuf,
    pub cache: PathBuf,
    pub wheels: PathBuf,
    pub shim: PathBuf,
    pub uv_log: PathBuf,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("penv-guard-test-")
            .tempdir()
            .unwrap();
        let wheels = dir.path().join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        // Copies, not links: tests add wheels here, and a rebuilt name would write through a link.
        for built in standard_wheel_files() {
            std::fs::copy(built, wheels.join(built.file_name().unwrap())).unwrap();
        }
        let world = World {
            penv: dir.path().join("core/penv"),
            cache: dir.path().join("uv-cache"),
            shim: dir.path().join("bin/uv"),
            uv_log: dir.path().join("uv-calls.log"),
            wheels,
            dir,
        };
        world.write_shim("");
        world
    }

    /// (Re)writes the logging shim; `extra` is shell run before the real uv (sleeps, faults).
    pub fn write_shim(&self, extra: &str) {
        std::fs::create_dir_all(self.shim.parent().unwrap()).unwrap();
        let script = format!(
            "#!/bin/sh\necho \"$$ start $(date +%s.%N) $*\" >> '{log}'\n{extra}\n'{uv}' \"$@\"\nrc=$?\necho \"$$ end $(date +%s.%N) rc=$rc\" >> '{log}'\nexit $rc\n",
            log = self.uv_log.display(),
            uv = real_uv().display(),
        );
        std::fs::write(&self.shim, script).unwrap();
        set_executable(&self.shim);
    }

    /// `start` lines of the shim log whose arguments contain `needle`.
    pub fn uv_calls(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.uv_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" start ") && l.contains(needle))
            .count()
    }

    pub fn installs(&self) -> usize {
        self.uv_calls("pip install")
    }

    pub fn cmd(&self, subcommand: &str) -> TestCommand {
        self.cmd_of(Path::new(BIN), subcommand)
    }

    /// [`World::cmd`] run by another copy of penv-guard.
    pub fn cmd_of(&self, binary: &Path, subcommand: &str) -> TestCommand {
        let mut command = penv_command(binary, subcommand, &self.penv, &self.shim, &host_python());
        command
            .arg("--uv-cache-dir")
            .arg(&self.cache)
            .env("PLATFORMIO_CORE_DIR", self.dir.path().join("core"))
            .env("UV_FIND_LINKS", self.find_links())
            .env("UV_DEFAULT_INDEX", self.empty_index_url())
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_CONFIG", "1");
        TestCommand { command }
    }

    pub fn ensure(&self, deps: &[&str]) -> TestCommand {
        self.cmd("ensure").deps(deps)
    }

    /// `penv-guard ensure` where no uv exists: no `--uv`, no `PENV_GUARD_UV`, and a PATH that
    /// holds only `python3` (with no uv next to it).
    // Unix only: `python3` on that PATH is a symlink to the host Python.
    #[cfg(unix)]
    pub fn ensure_without_uv(&self) -> TestCommand {
        let python_only = self.dir.path().join("python-only");
        std::fs::create_dir_all(&python_only).unwrap();
        let link = python_only.join("python3");
        if !link.exists() {
            std::os::unix::fs::symlink(host_python(), link).unwrap();
        }
        let mut command = Command::new(BIN);
        command
            .arg("ensure")
            .arg("--penv")
            .arg(&self.penv)
            .arg("--uv-cache-dir")
            .arg(&self.cache)
            .env("PATH", &python_only)
            .env_remove("PENV_GUARD_UV")
            .env_remove("PLATFORMIO_OFFLINE")
            .env("UV_FIND_LINKS", self.find_links())
            .env("UV_DEFAULT_INDEX", self.empty_index_url())
            .env("UV_NO_CONFIG", "1");
        TestCommand { command }
    }

    /// The world's wheels, then the uv wheel `scripts/setup` keeps in `.tools/wheels` (penv-guard
    /// puts uv into every penv it creates, as pioarduino does).
    pub fn find_links(&self) -> std::ffi::OsString {
        let mut links = self.wheels.clone().into_os_string();
        links.push(",");
        links.push(tool_wheels());
        links
    }

    pub fn empty_index_url(&self) -> String {
        let dir = self.dir.path().join("empty-index");
        std::fs::create_dir_all(&dir).unwrap();
        format!("file://{}", dir.display())
    }

    pub fn state_path(&self) -> PathBuf {
        self.penv.join(".penv-guard-state.json")
    }

    pub fn site_packages(&self) -> PathBuf {
        let lib = self.penv.join("lib");
        let python_dir = std::fs::read_dir(&lib)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("python"))
            .unwrap();
        python_dir.path().join("site-packages")
    }

    /// The lock beside the penv: `<core>/penv.penv-guard.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.penv.with_file_name("penv.penv-guard.lock")
    }

    pub fn holder_path(&self) -> PathBuf {
        self.penv.with_file_name("penv.penv-guard.holder")
    }

    /// Takes the penv lock as another penv-guard would (creating it if needed); held until the
    /// returned file is dropped. `holder` is written as the holder record when given.
    pub fn hold_lock(&self, holder: Option<&str>) -> std::fs::File {
        std::fs::create_dir_all(self.penv.parent().unwrap()).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.lock_path())
            .unwrap();
        file.try_lock().unwrap();
        if let Some(holder) = holder {
            std::fs::write(self.holder_path(), holder).unwrap();
        }
        file
    }
}

// Windows has no executable bit (a program runs by its extension): nothing to set there.
#[cfg_attr(not(unix), allow(unused_variables))]
pub fn set_executable(path: &Path) {
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;
    #[cfg(unix)]
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `binary <subcommand>` on `penv` with this uv and Python, without the caller's settings
/// (`PLATFORMIO_OFFLINE`, `PENV_GUARD_*`, an active venv).
pub fn penv_command(
    binary: &Path,
    subcommand: &str,
    penv: &Path,
    uv: &Path,
    python: &Path,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg(subcommand)
        .arg("--penv")
        .arg(penv)
        .arg("--uv")
        .arg(uv)
        .arg("--python")
        .arg(python)
        .env_remove("PLATFORMIO_OFFLINE")
        .env_remove("PENV_GUARD_LOCK_TIMEOUT")
        .env_remove("PENV_GUARD_UV")
        .env_remove("VIRTUAL_ENV");
    command
}

pub struct TestCommand {
    pub command: Command,
}

impl TestCommand {
    /// `--dep` for each of `deps`.
    pub fn deps(mut self, deps: &[&str]) -> Self {
        for dep in deps {
            self.command.arg("--dep").arg(dep);
        }
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    pub fn run(mut self) -> Run {
        let output = self.command.output().expect("penv-guard runs");
        Run::from(output)
    }

    pub fn run_with_stdin(mut self, input: &str) -> Run {
        use std::io::Write as _;
        let mut child = self
            .command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("penv-guard starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Run::from(child.wait_with_output().expect("penv-guard runs"))
    }

    pub fn spawn(mut self) -> std::process::Child {
        self.command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("penv-guard starts")
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn code(self, expected: i32) -> Self {
        assert_eq!(
            self.code,
            Some(expected),
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        self.code(0)
    }

    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_else(|| {
            panic!("no JSON on stdout\nstderr: {}", self.stderr);
        });
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"))
    }

    pub fn status(&self) -> String {
        self.json()["status"].as_str().unwrap().to_owned()
    }
}

/// A loopback HTTP server for `dir` (stopped on drop), for tests where uv must fetch and cache.
pub struct Server {
    child: std::process::Child,
    pub url: String,
}

impl Server {
    pub fn serve(dir: &Path) -> Server {
        Server::serve_logged(dir, None)
    }

    /// Like [`Server::serve`]; with `log`, http.server's request log (one line per request) is
    /// appended to that file.
    pub fn serve_logged(dir: &Path, log: Option<&Path>) -> Server {
        use std::io::BufRead as _;
        let stderr = match log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
                .into(),
            None => std::process::Stdio::null(),
        };
        let mut child = Command::new(host_python())
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .nth(5)
            .expect("port in http.server banner");
        Server {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A source tree installable with `uv pip install -e DIR` without any index: the packages are
/// built by `tests/fixtures/inplace_backend.py`. Returns the tree's path.
pub fn editable_project(parent: &Path, name: &str, version: &str, module_source: &str) -> PathBuf {
    let dir = parent.join(format!("tool-{name}"));
    let package = dir.join(name.replace('-', "_"));
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), module_source).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inplace_backend.py"),
        dir.join("inplace_backend.py"),
    )
    .unwrap();
    std::fs::write(
        dir.join("pyproject.toml"),
        format!(
            "[build-system]\nrequires = []\nbuild-backend = \"inplace_backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"{name}\"\nversion = \"{version}\"\n"
        ),
    )
    .unwrap();
    dir
}

impl TestCommand {
    pub fn run_in(mut self, dir: &Path) -> Run {
        self.command.current_dir(dir);
        self.run()
    }
}

/// Stand-in `python.exe` and `uv.exe` for the Windows tests under Wine, where there is no Windows
/// CPython (`examples/stand_in.rs` says what they imitate). Only the process, lock and path tests
/// use them; everything that needs a real interpreter runs on a real Windows runner.
#[cfg(windows)]
pub mod stand_in {
    use std::path::{Path, PathBuf};

    use super::{BIN, TestCommand, penv_command};

    /// `examples/stand_in.exe` of the same build as this test binary (`<target>/<triple>/debug/
    /// deps/integration-….exe` → `<target>/<triple>/debug/examples/stand_in.exe`). Cargo builds
    /// examples only for a plain `cargo test`; with `--test integration` build it first
    /// (`cargo build --example stand_in` with the same `--target`).
    pub fn exe() -> PathBuf {
        let test_exe = std::env::current_exe().unwrap();
        let profile_dir = test_exe.parent().and_then(Path::parent).unwrap();
        let exe = profile_dir.join("examples").join("stand_in.exe");
        assert!(
            exe.is_file(),
            "no {}: build it with `cargo build --example stand_in` for this target",
            exe.display()
        );
        exe
    }

    /// One `<pid> <event> <unix seconds> <role> <detail>` line of the stand-ins' log.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Event {
        pub pid: u32,
        pub kind: String,
        pub at: f64,
        pub role: String,
    }

    /// A temp dir with `host/python.exe`, `host/uv.exe` (copies of the stand-in), a penv path
    /// `core/penv`, a uv cache dir and the stand-ins' log.
    pub struct StandIns {
        pub dir: tempfile::TempDir,
        pub penv: PathBuf,
        pub python: PathBuf,
        pub uv: PathBuf,
        pub log: PathBuf,
    }

    impl StandIns {
        pub fn new() -> StandIns {
            let dir = tempfile::Builder::new()
                .prefix("penv-guard-stand-in-")
                .tempdir()
                .unwrap();
            let host = dir.path().join("host");
            std::fs::create_dir_all(&host).unwrap();
            let (python, uv) = (host.join("python.exe"), host.join("uv.exe"));
            std::fs::copy(exe(), &python).unwrap();
            std::fs::copy(exe(), &uv).unwrap();
            StandIns {
                penv: dir.path().join("core").join("penv"),
                log: dir.path().join("stand-in.log"),
                python,
                uv,
                dir,
            }
        }

        /// `penv-guard <subcommand>` on this penv with the stand-ins, logging to [`Self::log`].
        pub fn cmd(&self, subcommand: &str) -> TestCommand {
            let mut command = penv_command(
                Path::new(BIN),
                subcommand,
                &self.penv,
                &self.uv,
                &self.python,
            );
            command
                .arg("--uv-cache-dir")
                .arg(self.dir.path().join("uv-cache"))
                .env("PLATFORMIO_CORE_DIR", self.dir.path().join("core"))
                .env("PENV_GUARD_STAND_IN_LOG", &self.log)
                .env_remove("PENV_GUARD_STAND_IN_SLEEP")
                .env_remove("PENV_GUARD_STAND_IN_GRANDCHILD");
            TestCommand { command }
        }

        pub fn ensure(&self, deps: &[&str]) -> TestCommand {
            self.cmd("ensure").deps(deps)
        }

        pub fn lock_path(&self) -> PathBuf {
            self.penv.with_file_name("penv.penv-guard.lock")
        }

        pub fn holder_path(&self) -> PathBuf {
            self.penv.with_file_name("penv.penv-guard.holder")
        }

        pub fn events(&self) -> Vec<Event> {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| {
                    let mut parts = line.split_whitespace();
                    Some(Event {
                        pid: parts.next()?.parse().ok()?,
                        kind: parts.next()?.to_owned(),
                        at: parts.next()?.parse().ok()?,
                        role: parts.next()?.to_owned(),
                    })
                })
                .collect()
        }

        /// `(pid, first, last)` event times of every process that ran as `role` with an
        /// argument line containing `needle` (a `start` line carries the arguments).
        pub fn intervals(&self, role: &str, needle: &str) -> Vec<(u32, f64, f64)> {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let pids: Vec<u32> = text
                .lines()
                .filter(|l| l.contains(" start ") && l.contains(needle))
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect();
            let events = self.events();
            pids.into_iter()
                .filter_map(|pid| {
                    let times: Vec<f64> = events
                        .iter()
                        .filter(|e| e.pid == pid && e.role == role)
                        .map(|e| e.at)
                        .collect();
                    Some((pid, *times.first()?, *times.last()?))
                })
                .collect()
        }
    }
}
