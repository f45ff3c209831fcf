//! A **stand-in** for CPython and uv, for penv-guard's Windows integration tests under Wine, where
//! no Windows CPython exists (issue 16). It is not a mock in the main suite: the Linux suite runs
//! the real uv and the real Python. It imitates only what penv-guard asks of them on a miss, and
//! nothing is ever validated against it that needs a real interpreter.
//!
//! How tests find it: cargo builds examples beside the test binary's `deps/` directory, so it is
//! `<target dir>/<triple>/debug/examples/stand_in(.exe)` (`support::stand_in::exe()` works it out
//! from `std::env::current_exe()`). A test copies it as `python.exe` and `uv.exe` into a temp dir;
//! what it does depends on the name it was started as:
//!
//! - `python*`: `-I -c <script> [arg]` for the three scripts penv-guard runs: the version query
//!   (`uv::query_python`: prints 3.11.7 and its own path), the PEP 508 marker environment
//!   (`markers::capture`: a Windows one) and the import check (`validate::validate_imports`: a
//!   module "imports" when `<penv>/Lib/site-packages/<module>` or `<module>.py` exists). Anything
//!   else, `-m` included, fails with a line saying so.
//! - `uv*`: `--version`; `venv … --python PY DIR` (writes `DIR/pyvenv.cfg` with
//!   `version_info = 3.11.7` and copies PY to `DIR/Scripts/python.exe`); `pip install --python PY
//!   -r FILE [--reinstall-package N]…` (for each requirement line `name`, `name==version`: a
//!   package `<module>/__init__.py` and `<name>-<version>.dist-info` with METADATA and RECORD in
//!   `<penv>/Lib/site-packages`; no version pinned means 1.0; `-e`, comments and markers ignored).
//! - `--stand-in-hang` (first argument, any name): a grandchild that ticks into the log for at most
//!   60 s, for tree-kill tests.
//!
//! Environment (penv-guard passes its environment on to its children):
//! - `PENV_GUARD_STAND_IN_LOG=<file>`: every stand-in appends `<pid> <event> <unix seconds> <role>
//!   <detail>` lines: `start` (the arguments, on one line), `end` (`rc=N`), and `tick` every 50 ms
//!   while sleeping or hanging, so a test sees when each process really ran (a killed one stops
//!   ticking and writes no `end`).
//! - `PENV_GUARD_STAND_IN_SLEEP=<seconds>`: `uv pip install` sleeps (ticking) before installing.
//! - `PENV_GUARD_STAND_IN_GRANDCHILD=venv` (or `pip`): `uv venv` (or `uv pip install`) first
//!   starts a `--stand-in-hang` grandchild that never exits by itself (within 60 s) and holds no
//!   pipe, waits until the grandchild has logged its start, then goes on as usual.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VERSION: &str = "3.11.7";
const HANG_LIMIT: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let role = if args.first().is_some_and(|a| a == "--stand-in-hang") {
        "grandchild"
    } else if name.starts_with("python") {
        "python"
    } else if name.starts_with("uv") {
        "uv"
    } else {
        eprintln!("stand-in: started as `{name}`; copy it as python.exe or uv.exe");
        return ExitCode::from(2);
    };
    log("start", role, &args.join(" "));
    let result = match role {
        "grandchild" => {
            sleep_ticking(HANG_LIMIT, role);
            Ok(())
        }
        "python" => python(&exe, &args),
        _ => uv(&exe, &args),
    };
    let code = match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("stand-in {role}: {message}");
            1
        }
    };
    log("end", role, &format!("rc={code}"));
    ExitCode::from(code)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One line `<pid> <event> <unix seconds> <role> <detail>`, the detail on one line.
fn log(event: &str, role: &str, detail: &str) {
    let Some(path) = std::env::var_os("PENV_GUARD_STAND_IN_LOG") else {
        return;
    };
    let detail = detail.replace(['\n', '\r'], " ");
    let line = format!(
        "{} {event} {:.3} {role} {detail}\n",
        std::process::id(),
        now()
    );
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

fn sleep_ticking(length: Duration, role: &str) {
    let end = Instant::now() + length;
    while Instant::now() < end {
        log("tick", role, "");
        std::thread::sleep(TICK);
    }
}

/// The penv a `python.exe` in `<penv>/Scripts` belongs to.
fn site_packages_of(python: &Path) -> PathBuf {
    let penv = python
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    penv.join("Lib").join("site-packages")
}

/// The marker and import reports go to the file the script's last argument names, as the real
/// scripts write them (`open(sys.argv.pop(), "w")`), never to stdout.
fn write_report(rest: &[&str], report: &str) -> Result<(), String> {
    let path = rest.last().ok_or("no report file named")?;
    std::fs::write(path, report).map_err(|e| format!("cannot write the report {path}: {e}"))
}

fn python(exe: &Path, args: &[String]) -> Result<(), String> {
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "-I")
        .collect();
    let ["-c", script, rest @ ..] = args.as_slice() else {
        return Err(format!("only `-c <script>` is imitated, not {args:?}"));
    };
    if script.contains("sys.version_info[:3]") {
        println!("{VERSION}\n{}", exe.display());
    } else if script.contains("platform_machine") {
        let markers = serde_json::json!({
            "implementation_name": "cpython",
            "implementation_version": VERSION,
            "os_name": "nt",
            "platform_machine": "AMD64",
            "platform_python_implementation": "CPython",
            "platform_release": "10",
            "platform_system": "Windows",
            "platform_version": "10.0.19045",
            "python_full_version": VERSION,
            "python_version": "3.11",
            "sys_platform": "win32",
        });
        write_report(rest, &markers.to_string())?;
    } else if script.contains("importlib.import_module") {
        let pairs: Vec<(String, String)> = rest
            .first()
            .and_then(|a| serde_json::from_str(a).ok())
            .ok_or("the import check's argument is not a JSON list of pairs")?;
        let site = site_packages_of(exe);
        let failures: Vec<(String, String, String)> = pairs
            .into_iter()
            .filter(|(_, module)| {
                !site.join(module).is_dir() && !site.join(format!("{module}.py")).is_file()
            })
            .map(|(dist, module)| {
                let error = format!("ModuleNotFoundError: No module named '{module}'");
                (dist, module, error)
            })
            .collect();
        let report = serde_json::to_string(&failures).map_err(|e| e.to_string())?;
        write_report(rest, &report)?;
    } else {
        return Err(format!("this script is not imitated: {script}"));
    }
    Ok(())
}

fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

fn uv(exe: &Path, args: &[String]) -> Result<(), String> {
    // uv's global options may stand before the command (`uv --cache-dir DIR venv …`).
    let mut args = args;
    while args.first().is_some_and(|a| a == "--cache-dir") && args.len() >= 2 {
        args = &args[2..];
    }
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("uv 0.0.0 (penv-guard stand-in)");
            Ok(())
        }
        Some("venv") => {
            leave_grandchild(exe, "venv")?;
            venv(args)
        }
        Some("pip") if args.get(1).is_some_and(|a| a == "install") => {
            leave_grandchild(exe, "pip")?;
            pip_install(args)
        }
        _ => Err(format!("this command is not imitated: {args:?}")),
    }
}

/// Starts a grandchild that hangs, when `PENV_GUARD_STAND_IN_GRANDCHILD` names `command`.
fn leave_grandchild(exe: &Path, command: &str) -> Result<(), String> {
    if std::env::var_os("PENV_GUARD_STAND_IN_GRANDCHILD").is_none_or(|c| c != command) {
        return Ok(());
    }
    let grandchild = std::process::Command::new(exe)
        .arg("--stand-in-hang")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the grandchild: {e}"))?;
    // Going on only once it runs, so that a test sees it was running when this one exited.
    let started = format!("{} start ", grandchild.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(path) = std::env::var_os("PENV_GUARD_STAND_IN_LOG")
        && Instant::now() < deadline
        && !fs::read_to_string(path).is_ok_and(|log| log.lines().any(|l| l.starts_with(&started)))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn venv(args: &[String]) -> Result<(), String> {
    let python = value_of(args, "--python").ok_or("no --python")?;
    let dir = PathBuf::from(args.last().ok_or("no directory")?);
    let scripts = dir.join("Scripts");
    let io = |e: std::io::Error| e.to_string();
    fs::create_dir_all(&scripts).map_err(io)?;
    fs::create_dir_all(dir.join("Lib").join("site-packages")).map_err(io)?;
    let home = Path::new(python).parent().unwrap_or(Path::new("."));
    let cfg = format!(
        "home = {}\nimplementation = CPython\nuv = 0.0.0\nversion_info = {VERSION}\n",
        home.display()
    );
    fs::write(dir.join("pyvenv.cfg"), cfg).map_err(io)?;
    fs::copy(python, scripts.join("python.exe")).map_err(io)?;
    Ok(())
}

fn pip_install(args: &[String]) -> Result<(), String> {
    let python = value_of(args, "--python").ok_or("no --python")?;
    let requirements = value_of(args, "-r").ok_or("no -r")?;
    if let Some(seconds) = std::env::var("PENV_GUARD_STAND_IN_SLEEP")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        sleep_ticking(Duration::from_secs_f64(seconds.clamp(0.0, 600.0)), "uv");
    }
    let text = fs::read_to_string(requirements).map_err(|e| format!("{requirements}: {e}"))?;
    let site = site_packages_of(Path::new(python));
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('-') {
            continue;
        }
        let (name, version) = requirement(line);
        install(&site, &name, &version).map_err(|e| format!("installing {name}: {e}"))?;
    }
    Ok(())
}

/// `name` and the version to install from `name[extras]==version; markers`.
fn requirement(line: &str) -> (String, String) {
    let name: String = line
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    let version = line
        .split(';')
        .next()
        .and_then(|spec| spec.split_once("=="))
        .map_or_else(
            || "1.0".to_owned(),
            |(_, v)| v.chars().take_while(|c| !", ".contains(*c)).collect(),
        );
    (name, version)
}

fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace(['-', '.'], "_")
}

fn install(site: &Path, name: &str, version: &str) -> std::io::Result<()> {
    fs::create_dir_all(site)?;
    let module = normalized(name);
    for entry in fs::read_dir(site)?.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = file_name.strip_suffix(".dist-info")
            && stem
                .rsplit_once('-')
                .is_some_and(|(n, _)| normalized(n) == module)
        {
            fs::remove_dir_all(entry.path())?;
        }
    }
    let source = format!("# {name} {version}, installed by penv-guard's uv stand-in\n");
    fs::create_dir_all(site.join(&module))?;
    fs::write(site.join(&module).join("__init__.py"), &source)?;
    let dist_info = format!("{module}-{version}.dist-info");
    fs::create_dir_all(site.join(&dist_info))?;
    let metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n");
    fs::write(site.join(&dist_info).join("METADATA"), &metadata)?;
    let record = format!(
        "{module}/__init__.py,,{}\n{dist_info}/METADATA,,{}\n{dist_info}/RECORD,,\n",
        source.len(),
        metadata.len()
    );
    fs::write(site.join(&dist_info).join("RECORD"), record)
}
