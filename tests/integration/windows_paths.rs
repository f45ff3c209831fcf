//! Windows only: paths, JSON and `size` with `penv-guard.exe` under Wine (or on a Windows runner),
//! in directories with non-ASCII names and spaces, spelled with and without `\\?\`. A miss runs
//! the stand-in `python.exe`/`uv.exe` (`examples/stand_in.rs`): these tests check paths, keys and
//! file replacement, never a real install.

use std::fs::{self, OpenOptions};
use std::os::windows::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::stand_in::StandIns;
use crate::support::{BIN, Run, TestCommand, penv_command};

/// A name with what Windows users' folders have: non-ASCII letters and spaces.
const ODD: &str = "J\u{fc}rgen \u{c4} Project";

/// Sets a file's or directory's mtime (directories need backup semantics to be opened).
fn set_mtime(path: &Path, t: SystemTime) {
    const FILE_WRITE_ATTRIBUTES: u32 = 0x100;
    const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
    OpenOptions::new()
        .access_mode(FILE_WRITE_ATTRIBUTES)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// The raw JSON text has no `\\?\` and no doubled backslash (JSON writes one backslash as `\\`,
/// so a doubled one would read `\\\\`).
#[track_caller]
fn assert_paths_plain(json_text: &str) {
    assert!(
        !json_text.contains(r"\\\\?\\"),
        "a verbatim prefix: {json_text}"
    );
    assert!(
        !json_text.contains(r"\\\\"),
        "a doubled backslash: {json_text}"
    );
}

/// `path` spelled with the verbatim prefix: `\\?\C:\…`.
fn verbatim(path: &Path) -> PathBuf {
    PathBuf::from(format!(
        r"\\?\{}",
        std::path::absolute(path).unwrap().display()
    ))
}

/// Stand-ins whose penv lives under [`ODD`].
fn odd_stand_ins() -> StandIns {
    let mut w = StandIns::new();
    w.penv = w.dir.path().join(ODD).join("penv");
    fs::create_dir_all(w.penv.parent().unwrap()).unwrap();
    w
}

/// `ensure` on `penv` with the stand-ins, and `python` as `--python`.
fn ensure_with(w: &StandIns, penv: &Path, python: &Path) -> TestCommand {
    command_on(w, "ensure", penv, python)
}

/// `penv-guard <subcommand> --dep alpha --json` on `penv` with the stand-ins.
fn command_on(w: &StandIns, subcommand: &str, penv: &Path, python: &Path) -> TestCommand {
    let mut command = penv_command(Path::new(BIN), subcommand, penv, &w.uv, python);
    command
        .args(["--dep", "alpha", "--json"])
        .arg("--uv-cache-dir")
        .arg(w.dir.path().join("uv-cache"))
        .env("PLATFORMIO_CORE_DIR", w.dir.path().join("core"))
        .env("PENV_GUARD_STAND_IN_LOG", &w.log)
        .env_remove("PENV_GUARD_STAND_IN_SLEEP")
        .env_remove("PENV_GUARD_STAND_IN_GRANDCHILD");
    TestCommand { command }
}

/// `fingerprint --json` prints its report indented, over several lines.
fn pretty_json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn installs(w: &StandIns) -> usize {
    w.intervals("uv", "pip install").len()
}

#[test]
fn size_under_a_non_ascii_path_with_spaces_is_real_cached_and_free_of_verbatim_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join(ODD);
    let env = project.join(".pio").join("build").join("esp32dev");
    fs::create_dir_all(env.join("src")).unwrap();
    fs::write(project.join("platformio.ini"), "[env:esp32dev]\n").unwrap();
    fs::write(env.join("firmware.bin"), vec![1u8; 5000]).unwrap();
    fs::write(env.join("src").join("main.o"), vec![2u8; 300]).unwrap();
    // Older than the racy window, so the first walk is cached as fresh.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for path in [
        env.join("src").join("main.o"),
        env.join("src"),
        env.join("firmware.bin"),
        env.clone(),
    ] {
        set_mtime(&path, hour_ago);
    }
    let size = || -> Run {
        let mut command = Command::new(BIN);
        command
            .args(["size", "--json", "--project-dir"])
            .arg(&project)
            .env_remove("PLATFORMIO_BUILD_DIR")
            .env_remove("PLATFORMIO_WORKSPACE_DIR");
        TestCommand { command }.run().ok()
    };
    let first = size();
    assert_paths_plain(&first.stdout);
    let report = first.json();
    let entry = &report["envs"][0];
    assert_eq!(entry["name"], "esp32dev");
    assert_eq!(entry["state"], "walked", "{report}");
    assert_eq!(entry["partial"], false, "{report}");
    assert_eq!(entry["apparent_bytes"], 5300, "{report}");
    assert_eq!(entry["files"], 2);
    let path = entry["path"].as_str().unwrap();
    assert!(path.ends_with(r"\.pio\build\esp32dev"), "{path}");
    assert!(path.contains(ODD), "{path}");
    assert!(!first.stderr.contains(r"\\?\"), "{}", first.stderr);

    let second = size();
    let report = second.json();
    assert_eq!(report["envs"][0]["state"], "fresh", "cached: {report}");
    assert_eq!(report["envs"][0]["apparent_bytes"], 5300);
    assert!(
        project
            .join(".pio")
            .join(".penv-guard")
            .join("build-size.json")
            .is_file(),
        "the cache is written under the workspace dir"
    );
}

#[test]
fn the_json_report_and_the_state_spell_paths_as_windows_does() {
    let w = odd_stand_ins();
    // Spelled verbatim, as a tool passing a long path would: kept exactly, never doubled.
    let penv = verbatim(&w.penv);
    let run = ensure_with(&w, &penv, &w.python).run().ok();
    assert_paths_plain(&run.stdout.replace(r"\\\\?\\", "VERBATIM"));
    let report = run.json();
    assert_eq!(report["status"], "installed", "{report}");
    let spelled = penv.to_str().unwrap();
    assert_eq!(report["penv"], spelled);
    assert_eq!(report["python"], format!(r"{spelled}\Scripts\python.exe"));
    assert_eq!(report["esptool"], format!(r"{spelled}\Scripts\esptool.exe"));

    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(w.penv.join(".penv-guard-state.json")).unwrap()).unwrap();
    assert_eq!(state["request"]["penv"], spelled);
    // The real path has no verbatim prefix: the same place spelled plainly is the same penv.
    let real = state["fingerprint_input"]["penv"].as_str().unwrap();
    assert!(
        !real.starts_with(r"\\?\") && real.ends_with(&format!(r"{ODD}\penv")),
        "{real}"
    );
    assert_eq!(
        state["host_python"]["path"],
        w.python.to_str().unwrap(),
        "the host Python recorded as spelled"
    );

    let plain = ensure_with(&w, &w.penv, &w.python).run().ok().json();
    assert_eq!(plain["status"], "hit", "{plain}");
    assert_eq!(plain["penv"], w.penv.to_str().unwrap());
    assert_eq!(installs(&w), 1);
}

#[test]
fn a_unc_penv_is_named_as_spelled_in_the_fingerprint() {
    let w = StandIns::new();
    let unc = "\\\\server\\share\\J\u{fc}rgen\\penv";
    let run = command_on(&w, "fingerprint", Path::new(unc), &w.python)
        .run()
        .ok();
    assert!(!run.stdout.contains(r"\\\\\\\\server"), "{}", run.stdout);
    assert_eq!(pretty_json(&run)["input"]["penv"], unc, "{}", run.stdout);
}

#[test]
fn a_key_printed_before_an_install_is_the_one_recorded_after_it() {
    let w = odd_stand_ins();
    let fingerprint = || pretty_json(&command_on(&w, "fingerprint", &w.penv, &w.python).run().ok());
    let before = fingerprint();
    assert_eq!(before["penv_exists"], false);
    let installed = ensure_with(&w, &w.penv, &w.python).run().ok().json();
    assert_eq!(installed["status"], "installed", "{installed}");
    assert_eq!(
        installed["fingerprint"], before["fingerprint"],
        "before: {before}\nafter: {installed}"
    );
    let after = fingerprint();
    assert_eq!(after["penv_exists"], true);
    assert_eq!(after["input"], before["input"]);
    assert_eq!(after["input"]["interpreter"], w.python.to_str().unwrap());
}

#[test]
fn another_spelling_of_the_same_python_is_a_hit() {
    let w = odd_stand_ins();
    let first = ensure_with(&w, &w.penv, &w.python).run().ok().json();
    assert_eq!(first["status"], "installed", "{first}");
    let upper = w.python.parent().unwrap().join("PYTHON.EXE");
    let dotted = w.python.parent().unwrap().join(".").join("python.exe");
    for spelling in [upper, dotted] {
        let again = ensure_with(&w, &w.penv, &spelling).run().ok().json();
        assert_eq!(again["status"], "hit", "{}: {again}", spelling.display());
    }
    assert_eq!(installs(&w), 1, "no reinstall");
    // Another interpreter is still a change.
    let other = w.dir.path().join("other").join("python.exe");
    fs::create_dir_all(other.parent().unwrap()).unwrap();
    fs::copy(&w.python, &other).unwrap();
    let changed = ensure_with(&w, &w.penv, &other).run().ok().json();
    assert_eq!(changed["status"], "installed", "{changed}");
}

#[test]
fn the_state_is_replaced_while_another_process_reads_it() {
    const FILE_SHARE_READ: u32 = 0x1;
    let w = odd_stand_ins();
    ensure_with(&w, &w.penv, &w.python).run().ok();
    let state = w.penv.join(".penv-guard-state.json");
    // A reader that does not share deletion (an antivirus scan, Python's `open()`), for a while.
    let reader = OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ)
        .open(&state)
        .unwrap();
    let reading = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(reader);
    });
    // `--verify` removes the state before it installs and writes it again after.
    let run = ensure_with(&w, &w.penv, &w.python).arg("--verify").run();
    reading.join().unwrap();
    let run = run.ok();
    assert_eq!(run.json()["status"], "installed", "{}", run.stderr);
    let hit = ensure_with(&w, &w.penv, &w.python).run().ok().json();
    assert_eq!(hit["status"], "hit");
}
