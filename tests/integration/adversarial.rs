//! Attacks on the two promises: a hit is a guarantee, and nothing is ever lost (no foreign data
//! deleted, no install outside the lock, no hang, no panic). Each test is named after what it
//! guards and failed on penv-guard 0.1.

use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, Run, TestCommand, Wheel, World, editable_project, host_python};

/// Runs to completion within `limit`, or kills the process and fails: a hang is a failure.
#[track_caller]
fn within(command: TestCommand, limit: Duration) -> Run {
    let mut child = command.spawn();
    finish_within(&mut child, limit)
}

#[track_caller]
pub(crate) fn finish_within(child: &mut Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output_ref();
            panic!("still running after {limit:?}: {}", out.stderr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output_ref()
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> Run;
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> Run {
        use std::io::Read as _;
        let status = self.wait().unwrap();
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        if let Some(mut err) = self.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        Run {
            code: status.code(),
            stdout,
            stderr,
        }
    }
}

fn mkfifo(path: &Path) {
    assert!(
        Command::new("mkfifo").arg(path).status().unwrap().success(),
        "mkfifo {}",
        path.display()
    );
}

/// A shim that also takes an flock of its own for as long as uv runs (uv inherits the fd): a
/// second install that starts while an earlier one still runs logs `OVERLAP`.
fn write_overlap_shim(w: &World, extra: &str) -> PathBuf {
    let overlap = w.dir.path().join("overlap.lock");
    w.write_shim(&format!(
        "exec 9>>'{lock}'\nif ! flock -n 9; then echo \"$$ OVERLAP $(date +%s.%N) $*\" >> '{log}'; fi\n{extra}",
        lock = overlap.display(),
        log = w.uv_log.display(),
    ));
    overlap
}

/// Waits until the shim has started `count` installs.
fn wait_for_installs(w: &World, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.installs() < count {
        assert!(
            Instant::now() < deadline,
            "never saw install #{count} start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_json(w: &World, deps: &[&str]) -> serde_json::Value {
    let mut command = w.cmd("status").arg("--json");
    for dep in deps {
        command = command.arg("--dep").arg(dep);
    }
    let run = command.run().ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn signal(child: &Child, name: &str) {
    assert!(
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
}

// ---------------------------------------------------------------------------------------------
// Nothing is lost

#[test]
fn penv_at_an_ordinary_directory_is_refused_and_nothing_in_it_is_deleted() {
    let w = World::new();
    let thesis = w.dir.path().join("d");
    fs::create_dir_all(thesis.join("src")).unwrap();
    fs::write(thesis.join("thesis.tex"), "x").unwrap();
    fs::write(thesis.join("src/main.c"), "int main;").unwrap();
    let run = w
        .ensure(&["alpha"])
        .arg("--penv")
        .arg(&thesis)
        .run()
        .code(2);
    assert!(
        run.stderr.contains(&*thesis.to_string_lossy()) && run.stderr.contains("pyvenv.cfg"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(thesis.join("thesis.tex")).unwrap(), "x");
    assert!(thesis.join("src/main.c").is_file());
    assert_eq!(w.installs(), 0, "nothing was installed there");
    assert_eq!(w.uv_calls("venv"), 0, "no venv was made there");
}

// Linux only: the overlap shim takes its lock with flock(1), from util-linux.
#[cfg(target_os = "linux")]
#[test]
fn deleting_the_penv_during_an_install_does_not_let_a_second_install_run_beside_it() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    write_overlap_shim(&w, "case \"$*\" in *'pip install'*) sleep 3;; esac");
    let mut first = w.ensure(&["alpha", "single"]).spawn();
    wait_for_installs(&w, 2);
    fs::remove_dir_all(&w.penv).unwrap();
    let second = within(
        w.ensure(&["alpha", "single"])
            .arg("--json")
            .arg("--lock-timeout")
            .arg("120"),
        Duration::from_secs(120),
    );
    let _ = finish_within(&mut first, Duration::from_secs(60));
    let log = fs::read_to_string(&w.uv_log).unwrap();
    assert!(!log.contains("OVERLAP"), "two installs ran at once:\n{log}");
    assert!(
        second.stderr.contains("waiting for the penv lock"),
        "{}",
        second.stderr
    );
    let second = second.ok();
    assert_eq!(second.json()["installed"]["single"], "1.0");
}

// ---------------------------------------------------------------------------------------------
// No false hits

#[test]
fn esptool_project_updated_in_place_is_a_miss_that_installs_its_new_dependency() {
    let w = World::new();
    let tool = editable_project(w.dir.path(), "esptool", "4.0", "VERSION = 4\n");
    let run = |w: &World| {
        w.ensure(&["postpkg"])
            .arg("--esptool-dir")
            .arg(&tool)
            .arg("--json")
            .run()
            .ok()
    };
    assert_eq!(run(&w).status(), "installed");
    assert_eq!(run(&w).status(), "hit");
    // PlatformIO updates tool-esptoolpy at the same path: a new version needing alpha.
    fs::write(
        tool.join("esptool/__init__.py"),
        "import alpha\nVERSION = 5\n",
    )
    .unwrap();
    let pyproject = fs::read_to_string(tool.join("pyproject.toml")).unwrap();
    fs::write(
        tool.join("pyproject.toml"),
        pyproject.replace(
            "version = \"4.0\"",
            "version = \"5.0\"\ndependencies = [\"alpha<2\"]",
        ),
    )
    .unwrap();
    let after = run(&w);
    assert_eq!(after.status(), "installed", "{}", after.stderr);
    assert_eq!(after.json()["installed"]["esptool"], "5.0");
    let import = Command::new(w.penv.join("bin/python"))
        .args(["-c", "import esptool; print(esptool.VERSION)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&import.stdout).trim(), "5");
}

#[test]
fn a_distribution_missing_recorded_files_is_reinstalled_not_recorded_as_good() {
    let w = World::new();
    Wheel::new("deep", "1.0")
        .module("deep", "")
        .file("deep/sub/__init__.py", "")
        .file("deep/sub/data.py", "X = 1")
        .build(&w.wheels);
    w.ensure(&["deep"]).run().ok();
    // A full disk made uv stop half-way: a file RECORD lists is gone, the dist-info is there.
    let data = w.site_packages().join("deep/sub/data.py");
    fs::remove_file(&data).unwrap();
    let run = w.ensure(&["deep", "single"]).arg("--json").run().ok();
    assert_eq!(run.status(), "installed");
    assert!(data.is_file(), "the missing file was reinstalled");
    assert!(run.stderr.contains("deep"), "{}", run.stderr);
    // On demand: --verify finds it too.
    fs::remove_file(&data).unwrap();
    w.ensure(&["deep", "single"]).arg("--verify").run().ok();
    assert!(data.is_file());
}

#[test]
fn a_damaged_distribution_no_reinstall_repairs_exits_3_naming_the_file() {
    let w = World::new();
    Wheel::new("damaged", "1.0")
        .module("damaged", "X = 1")
        .record_size("damaged/__init__.py", 999)
        .build(&w.wheels);
    let run = w.ensure(&["damaged"]).run().code(3);
    assert!(
        run.stderr.contains("damaged/__init__.py") && run.stderr.contains("999"),
        "{}",
        run.stderr
    );
    assert!(!w.state_path().exists());
}

#[test]
fn files_removed_inside_a_package_directory_are_a_miss() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let init = w.site_packages().join("alpha/__init__.py");
    fs::remove_file(&init).unwrap();
    let run = w.ensure(&["alpha"]).arg("--json").run().ok();
    assert_eq!(run.status(), "installed", "{}", run.stderr);
    assert!(init.is_file());
}

#[test]
fn a_moved_penv_is_recreated_not_trusted() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let moved = w.dir.path().join("core/penv2");
    fs::rename(&w.penv, &moved).unwrap();
    let run = w
        .ensure(&["alpha"])
        .arg("--penv")
        .arg(&moved)
        .arg("--json")
        .arg("-v")
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    assert!(run.stderr.contains("moved"), "{}", run.stderr);
    let activate = fs::read_to_string(moved.join("bin/activate")).unwrap();
    assert!(
        activate.contains(&format!("VIRTUAL_ENV='{}'", moved.display())),
        "the venv was recreated at its new path"
    );
}

#[test]
fn markers_are_evaluated_with_the_penv_interpreters_own_values() {
    let w = World::new();
    let run = w
        .ensure(&["alpha ; platform_release >= \"1\""])
        .arg("--json")
        .run()
        .ok();
    assert!(
        run.json()["installed"]["alpha"].is_string(),
        "{}",
        run.stdout
    );
    assert_eq!(run.json()["modules"]["alpha"], serde_json::json!(["alpha"]));
}

#[test]
fn status_after_a_hand_edited_metadata_is_stale_and_names_verify() {
    let w = World::new();
    // Copies, not hard links from uv's cache, so that the edit in place below changes only the
    // penv (an edit in place is what a hit cannot see: no directory changes).
    w.ensure(&["alpha<2"])
        .env("UV_LINK_MODE", "copy")
        .run()
        .ok();
    let metadata = w.site_packages().join("alpha-1.0.dist-info/METADATA");
    let text = fs::read_to_string(&metadata).unwrap();
    fs::write(&metadata, text.replace("Version: 1.0", "Version: 3.0")).unwrap();
    let report = status_json(&w, &["alpha<2"]);
    assert_eq!(report["verdict"]["result"], "stale", "{report}");
    assert_eq!(report["dependencies"][0]["satisfied"], false);
    let hints = report["hints"].to_string();
    assert!(hints.contains("--verify"), "{hints}");
    assert!(!hints.contains("will install"), "{hints}");
    w.ensure(&["alpha<2"]).arg("--verify").run().ok();
    let report = status_json(&w, &["alpha<2"]);
    assert_eq!(report["verdict"]["result"], "hit", "{report}");
}

// ---------------------------------------------------------------------------------------------
// No install outside the lock

fn signal_mid_install_then_second_run(signal_name: &str) {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    write_overlap_shim(&w, "case \"$*\" in *'pip install'*) sleep 4;; esac");
    let mut first = w.ensure(&["alpha<2", "single"]).spawn();
    wait_for_installs(&w, 2);
    signal(&first, signal_name);
    let first = finish_within(&mut first, Duration::from_secs(30));
    if signal_name == "KILL" {
        assert_eq!(first.code, None);
    } else {
        let number = if signal_name == "TERM" { 15 } else { 2 };
        assert_eq!(first.code, Some(128 + number), "{}", first.stderr);
        let stopped = format!("stopped by signal {number}");
        assert!(first.stderr.contains(&stopped), "{}", first.stderr);
    }
    write_overlap_shim(&w, "");
    let second = within(
        w.ensure(&["alpha<2", "postpkg"])
            .arg("--json")
            .arg("--lock-timeout")
            .arg("60"),
        Duration::from_secs(90),
    )
    .ok();
    // Let a possible orphan finish before reading the log.
    std::thread::sleep(Duration::from_secs(5));
    let log = fs::read_to_string(&w.uv_log).unwrap();
    assert!(
        !log.contains("OVERLAP"),
        "an install ran outside the lock:\n{log}"
    );
    assert_eq!(second.json()["installed"]["postpkg"], "1.0.post1");
    let status = status_json(&w, &["alpha<2", "postpkg"]);
    assert_eq!(
        status["verdict"]["result"], "hit",
        "the penv still matches the second run's list: {status}"
    );
}

// Linux only: the overlap shim takes its lock with flock(1), from util-linux.
#[cfg(target_os = "linux")]
#[test]
fn sigterm_mid_install_stops_uv_before_the_lock_is_released() {
    signal_mid_install_then_second_run("TERM");
}

// Linux only: the overlap shim takes its lock with flock(1), from util-linux.
#[cfg(target_os = "linux")]
#[test]
fn sigint_mid_install_stops_uv_before_the_lock_is_released() {
    signal_mid_install_then_second_run("INT");
}

// Linux only: the overlap shim takes its lock with flock(1), from util-linux.
#[cfg(target_os = "linux")]
#[test]
fn sigkill_mid_install_leaves_the_lock_with_uv_until_it_is_gone() {
    signal_mid_install_then_second_run("KILL");
}

// ---------------------------------------------------------------------------------------------
// Never hang, never panic

#[test]
fn install_timeout_holds_when_an_import_leaves_a_child_holding_the_output() {
    let w = World::new();
    Wheel::new("spawner", "1.0")
        .module(
            "spawner",
            "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])",
        )
        .build(&w.wheels);
    let start = Instant::now();
    within(
        w.ensure(&["spawner"]).arg("--install-timeout").arg("20"),
        Duration::from_secs(60),
    )
    .ok();
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "waited for the grandchild: {:?}",
        start.elapsed()
    );
}

#[test]
fn install_timeout_holds_when_an_import_never_returns() {
    let w = World::new();
    Wheel::new("forever", "1.0")
        .module(
            "forever",
            "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\ntime.sleep(600)",
        )
        .build(&w.wheels);
    let run = within(
        w.ensure(&["forever"]).arg("--install-timeout").arg("3"),
        Duration::from_secs(60),
    )
    .code(3);
    assert!(run.stderr.contains("timeout"), "{}", run.stderr);
    assert!(!w.state_path().exists());
}

#[test]
fn a_fifo_at_the_state_path_is_a_miss_not_a_hang() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    fs::remove_file(w.state_path()).unwrap();
    mkfifo(&w.state_path());
    let status = within(
        w.cmd("status").args(["--dep", "alpha", "--json"]),
        Duration::from_secs(30),
    )
    .ok();
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["state"]["condition"], "corrupt");
    let run = within(w.ensure(&["alpha"]).arg("--json"), Duration::from_secs(60)).ok();
    assert_eq!(run.status(), "installed");
    let aside: Vec<_> = fs::read_dir(&w.penv)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("displaced"))
        .collect();
    assert_eq!(aside.len(), 1, "the FIFO was moved aside, not deleted");
}

#[test]
fn a_symlink_from_the_state_path_to_dev_zero_is_a_miss_not_a_memory_blowup() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    fs::remove_file(w.state_path()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", w.state_path()).unwrap();
    let run = within(w.ensure(&["alpha"]).arg("--json"), Duration::from_secs(60)).ok();
    assert_eq!(run.status(), "installed");
    assert!(w.state_path().is_file() && !w.state_path().is_symlink());
}

#[test]
fn a_directory_at_the_state_path_is_a_miss_and_is_kept() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    fs::remove_file(w.state_path()).unwrap();
    fs::create_dir(w.state_path()).unwrap();
    fs::write(w.state_path().join("keep.txt"), "mine").unwrap();
    let run = w.ensure(&["alpha"]).arg("--json").run().ok();
    assert_eq!(run.status(), "installed");
    let kept = fs::read_dir(&w.penv)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("displaced"))
        .expect("moved aside");
    assert_eq!(
        fs::read_to_string(kept.path().join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn a_fifo_at_the_holder_path_does_not_block_a_lock_wait() {
    let w = World::new();
    let _lock = w.hold_lock(None);
    mkfifo(&w.holder_path());
    let start = Instant::now();
    within(
        w.ensure(&["alpha"]).arg("--lock-timeout").arg("1"),
        Duration::from_secs(30),
    )
    .code(75);
    assert!(start.elapsed() < Duration::from_secs(15));
}

// Linux only: APFS (macOS) refuses file names that are not UTF-8.
#[cfg(target_os = "linux")]
#[test]
fn non_utf8_uv_and_python_paths_do_not_panic() {
    let w = World::new();
    let odd = w.dir.path().join(std::ffi::OsStr::from_bytes(b"b\xff"));
    fs::create_dir_all(&odd).unwrap();
    std::os::unix::fs::symlink(&w.shim, odd.join("uv")).unwrap();
    std::os::unix::fs::symlink(host_python(), odd.join("python3")).unwrap();
    let run = w
        .ensure(&["alpha"])
        .arg("--uv")
        .arg(odd.join("uv"))
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    for command in [
        w.ensure(&["alpha"])
            .arg("--python")
            .arg(odd.join("python3")),
        w.ensure(&["alpha", "single"])
            .arg("--python")
            .arg(odd.join("python3"))
            .arg("--uv")
            .arg(odd.join("uv")),
        w.cmd("status")
            .arg("--dep")
            .arg("alpha")
            .arg("--uv")
            .arg(odd.join("uv"))
            .arg("--json"),
        w.cmd("fingerprint").arg("--dep").arg("alpha").arg("--json"),
    ] {
        let run = command.run();
        assert!(
            matches!(run.code, Some(0..=4)),
            "{:?}: {}",
            run.code,
            run.stderr
        );
    }
}

#[test]
fn a_huge_install_timeout_does_not_overflow() {
    let w = World::new();
    w.ensure(&["alpha"])
        .arg("--install-timeout")
        .arg("1e19")
        .arg("--lock-timeout")
        .arg("1e300")
        .run()
        .ok();
}

#[test]
fn a_closed_stdout_ends_quietly_without_a_panic() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    for args in [
        vec!["status", "--dep", "alpha"],
        vec!["status", "--dep", "alpha", "--json"],
        vec!["fingerprint", "--dep", "alpha", "--json"],
        vec!["ensure", "--dep", "alpha", "--json"],
        vec!["size", "--project-dir", "."],
    ] {
        let mut command = w.cmd(args[0]).args(&args[1..]).command;
        // `| true`: the reader is gone before penv-guard writes.
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let run = finish_within(&mut child, Duration::from_secs(30));
        assert_ne!(run.code, Some(101), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// Files, locks and other users

#[test]
fn a_dangling_symlink_at_the_lock_path_is_not_followed() {
    let w = World::new();
    fs::create_dir_all(w.penv.parent().unwrap()).unwrap();
    let target = w.dir.path().join("elsewhere/created-by-follow");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&target, w.lock_path()).unwrap();
    let run = w.ensure(&["alpha"]).run().code(2);
    assert!(
        run.stderr.contains(&*w.lock_path().to_string_lossy()) && run.stderr.contains("symlink"),
        "{}",
        run.stderr
    );
    assert!(
        !target.exists(),
        "penv-guard created a file through the symlink"
    );
}

/// `command` run through `program args…` (a shell that sets the umask, `setpriv`).
fn wrapped(command: &Command, program: &str, args: &[&str]) -> Command {
    let mut outer = Command::new(program);
    outer
        .args(args)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => outer.env(key, value),
            None => outer.env_remove(key),
        };
    }
    outer
}

#[test]
fn state_and_lock_follow_the_umask_so_other_users_can_read_them() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new();
    let command = w.ensure(&["alpha"]).command;
    let out = wrapped(&command, "sh", &["-c", "umask 022; exec \"$0\" \"$@\""])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = fs::metadata(w.state_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "state mode {mode:o}");
    let mode = fs::metadata(w.lock_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "lock mode {mode:o}");
}

const AS_NOBODY: [&str; 3] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

/// `penv-guard ARGS` as the user nobody, or `None` where nobody cannot run the binary or the
/// system Python (the test then has nothing to show).
fn as_nobody(w: &World, args: &[&str]) -> Option<Run> {
    let probe = wrapped(&Command::new(BIN), "setpriv", &AS_NOBODY)
        .arg("--version")
        .output()
        .ok()?;
    if !probe.status.success() || !Path::new("/usr/bin/python3").is_file() {
        eprintln!("skipped: nobody cannot run {BIN} or there is no /usr/bin/python3");
        return None;
    }
    let mut command = Command::new(BIN);
    command
        .args(args)
        .arg("--penv")
        .arg(&w.penv)
        .env("PATH", "/usr/bin:/bin")
        .env_remove("PENV_GUARD_UV")
        .env_remove("PLATFORMIO_OFFLINE");
    Some(Run::from(
        wrapped(&command, "setpriv", &AS_NOBODY).output().unwrap(),
    ))
}

#[test]
fn another_user_who_can_read_the_state_gets_hits_and_one_who_cannot_lock_is_told_why() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new();
    // A penv whose interpreter every user can run (a Docker image, a shared CI cache).
    w.ensure(&["alpha"])
        .arg("--python")
        .arg("/usr/bin/python3")
        .run()
        .ok();
    fs::set_permissions(w.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let Some(hit) = as_nobody(&w, &["ensure", "--dep", "alpha", "--json"]) else {
        return;
    };
    let hit = hit.ok();
    assert_eq!(hit.status(), "hit");
    let miss = as_nobody(&w, &["ensure", "--dep", "alpha", "--dep", "single"]).unwrap();
    assert_eq!(miss.code, Some(1), "{}", miss.stderr);
    assert!(
        miss.stderr.contains(&*w.lock_path().to_string_lossy())
            && miss.stderr.contains("permission denied"),
        "{}",
        miss.stderr
    );
}

#[test]
fn a_holder_record_is_cleared_on_release_and_a_dead_pid_is_never_named() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    assert!(!w.holder_path().exists(), "the record outlived its lock");
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let _lock = w.hold_lock(Some(&format!(
        r#"{{"pid": {dead_pid}, "command": "old run", "since_unix": 0}}"#
    )));
    let run = w
        .ensure(&["alpha", "single"])
        .arg("--lock-timeout")
        .arg("0")
        .run()
        .code(75);
    assert!(
        !run.stderr.contains(&format!("pid {dead_pid}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("an unknown process"), "{}", run.stderr);
}

#[test]
fn a_hit_needs_no_uv_and_another_uv_changes_nothing() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let fingerprint = w.cmd("fingerprint").arg("--dep").arg("alpha").run().ok();
    // No uv anywhere: PATH without it, no --uv.
    let mut command = Command::new(BIN);
    command
        .args(["ensure", "--dep", "alpha", "--json", "--penv"])
        .arg(&w.penv)
        .env("PATH", "/usr/bin:/bin")
        .env_remove("PENV_GUARD_UV");
    let run = Run::from(command.output().unwrap()).ok();
    assert_eq!(run.status(), "hit");
    let other_uv = w.dir.path().join("other/uv");
    fs::create_dir_all(other_uv.parent().unwrap()).unwrap();
    fs::copy(&w.shim, &other_uv).unwrap();
    let again = w
        .cmd("fingerprint")
        .arg("--dep")
        .arg("alpha")
        .arg("--uv")
        .arg(&other_uv)
        .run()
        .ok();
    assert_eq!(again.stdout, fingerprint.stdout);
    assert_eq!(
        w.ensure(&["alpha"])
            .arg("--uv")
            .arg(&other_uv)
            .arg("--json")
            .run()
            .ok()
            .status(),
        "hit"
    );
}

// ---------------------------------------------------------------------------------------------
// Exit codes that match the documentation

#[test]
fn a_missing_requirements_file_is_bad_input() {
    let w = World::new();
    let missing = w.dir.path().join("no-such-requirements.txt");
    let run = w.cmd("ensure").arg("-r").arg(&missing).run().code(2);
    assert!(
        run.stderr.contains(&*missing.to_string_lossy()),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Found by the hostile review of this change

#[test]
fn a_penv_reached_through_a_symlink_takes_the_same_lock() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let link = w.dir.path().join("elsewhere/penv-link");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&w.penv, &link).unwrap();
    let _lock = w.hold_lock(None);
    let run = w
        .ensure(&["alpha", "single"])
        .arg("--penv")
        .arg(&link)
        .arg("--lock-timeout")
        .arg("0")
        .run()
        .code(75);
    assert!(
        run.stderr.contains(&*w.lock_path().to_string_lossy()),
        "{}",
        run.stderr
    );
    assert_eq!(w.installs(), 1, "no install beside the lock holder");
}

#[test]
fn a_directory_named_pyvenv_cfg_does_not_make_a_venv() {
    let w = World::new();
    let dir = w.dir.path().join("d");
    fs::create_dir_all(dir.join("pyvenv.cfg")).unwrap();
    fs::write(dir.join("notes.txt"), "keep").unwrap();
    w.ensure(&["alpha"]).arg("--penv").arg(&dir).run().code(2);
    assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "keep");
}

#[test]
fn a_moved_penv_is_recreated_even_when_its_activate_script_says_nothing() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let moved = w.dir.path().join("core/penv3");
    fs::rename(&w.penv, &moved).unwrap();
    fs::remove_file(moved.join("bin/activate")).unwrap();
    let run = w
        .ensure(&["alpha"])
        .arg("--penv")
        .arg(&moved)
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    let activate = fs::read_to_string(moved.join("bin/activate")).unwrap();
    assert!(activate.contains(&format!("VIRTUAL_ENV='{}'", moved.display())));
}

fn chattr(flag: &str, path: &Path) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_deleted_metadata_is_a_miss_and_is_repaired() {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    let metadata = w.site_packages().join("alpha-1.0.dist-info/METADATA");
    fs::remove_file(&metadata).unwrap();
    let run = w.ensure(&["alpha<2"]).arg("--json").run().ok();
    assert_eq!(run.status(), "installed");
    assert!(metadata.is_file(), "reinstalled");
}

#[test]
fn a_fifo_or_a_device_as_a_requirements_file_is_bad_input_not_a_hang() {
    let w = World::new();
    let fifo = w.dir.path().join("requirements.fifo");
    mkfifo(&fifo);
    let run = within(
        w.cmd("fingerprint").arg("-r").arg(&fifo),
        Duration::from_secs(30),
    )
    .code(2);
    assert!(run.stderr.contains("no dependencies"), "{}", run.stderr);
    for flag in ["-r", "--deps-json"] {
        let run = within(
            w.cmd("fingerprint").arg(flag).arg("/dev/zero"),
            Duration::from_secs(30),
        )
        .code(2);
        assert!(
            run.stderr.contains("/dev/zero") && run.stderr.contains("a device"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_fifo_at_the_history_path_is_left_alone() {
    use std::os::unix::fs::FileTypeExt as _;
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let history = w.penv.join(".penv-guard-history.jsonl");
    fs::remove_file(&history).unwrap();
    mkfifo(&history);
    within(w.ensure(&["alpha", "single"]), Duration::from_secs(60)).ok();
    assert!(
        fs::symlink_metadata(&history)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn nan_timeouts_are_bad_input() {
    let w = World::new();
    for flag in ["--lock-timeout", "--install-timeout"] {
        let run = w.ensure(&["alpha"]).arg(flag).arg("NaN").run().code(2);
        assert!(run.stderr.contains(flag), "{}", run.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// Never a panic, whatever the arguments

mod arguments {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::finish_within;
    use crate::support::BIN;

    const WORDS: &[&str] = &[
        "ensure",
        "fingerprint",
        "status",
        "size",
        "platform",
        "install",
        "remove",
        "--json",
        "--verify",
        "-q",
        "-v",
        "--offline",
        "--allow-unlocked",
        "--refresh",
        "--help",
        "--version",
        "--dep",
        "-r",
        "--deps-json",
        "--penv",
        "--python",
        "--uv",
        "--uv-cache-dir",
        "--esptool-dir",
        "--lock-timeout",
        "--install-timeout",
        "--project-dir",
        "--env",
        "--core-dir",
        "",
        "-",
        "x",
        "1e19",
        "-1",
        "nan",
        "inf",
        "alpha",
        "alpha>=1",
        "0-!",
        "a ; platform_release >= '1'",
        "{\"a\": 1}",
        "penv",
        "missing.txt",
        ".",
    ];

    fn word() -> impl Strategy<Value = OsString> {
        prop_oneof![
            6 => proptest::sample::select(WORDS).prop_map(OsString::from),
            1 => "[^\\x00]{0,12}".prop_map(OsString::from),
            // An argv entry cannot hold a NUL byte.
            1 => proptest::collection::vec(1u8..=255, 0..8).prop_map(OsString::from_vec),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn the_binary_never_panics_on_any_argument_vector(
            args in proptest::collection::vec(word(), 0..7)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let empty = dir.path().join("empty-path");
            std::fs::create_dir_all(&empty).unwrap();
            // No Python, no uv, no network: a miss fails fast; nothing outside `dir` is touched.
            let mut child = Command::new(BIN)
                .args(&args)
                .current_dir(dir.path())
                .env_clear()
                .env("PATH", &empty)
                .env("HOME", dir.path())
                .env("PLATFORMIO_CORE_DIR", dir.path().join("core"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let run = finish_within(&mut child, Duration::from_secs(60));
            prop_assert_ne!(run.code, Some(101), "{:?}: {}", args, run.stderr);
            prop_assert!(run.code.is_some(), "{:?} died by a signal", args);
            prop_assert!(!run.stderr.contains("panicked"), "{:?}: {}", args, run.stderr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round three (issue 17)

#[test]
fn relative_file_urls_resolve_against_the_requirements_file_and_dep_ones_against_the_cwd() {
    let w = World::new();
    let project = w.dir.path().join("project");
    let local = project.join("w");
    let gamma = Wheel::new("gamma", "1.0").module("gamma", "").build(&local);
    let delta = Wheel::new("delta", "1.0").module("delta", "").build(&local);
    let file_name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let reqs = project.join("requirements.txt");
    fs::write(&reqs, format!("gamma @ file:./w/{}\n", file_name(&gamma))).unwrap();
    // Run from elsewhere: the URL is relative to the file, not to the current directory or `/`.
    let elsewhere = w.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let run = w.cmd("ensure").arg("-r").arg(&reqs).run_in(&elsewhere);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(w.site_packages().join("gamma").is_dir());
    let dep = format!("delta @ file:./w/{}", file_name(&delta));
    let run = w.ensure(&[&dep]).run_in(&project);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(w.site_packages().join("delta").is_dir());
    // Another directory names another file: a miss, and the error names the path it looked at.
    let run = w.ensure(&[&dep]).run_in(&elsewhere);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&*elsewhere.join("w").to_string_lossy()),
        "{}",
        run.stderr
    );
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_requirements_file_or_deps_json_is_accepted() {
    let w = World::new();
    let reqs = w.dir.path().join("requirements.txt");
    fs::write(&reqs, "\u{feff}alpha\n").unwrap();
    w.cmd("ensure").arg("-r").arg(&reqs).run().ok();
    let json = w.dir.path().join("deps.json");
    fs::write(&json, "\u{feff}{\"alpha\": \"\", \"single\": \"\"}").unwrap();
    w.cmd("ensure").arg("--deps-json").arg(&json).run().ok();
    assert!(w.site_packages().join("single_mod.py").is_file());
}

#[test]
fn a_deps_json_key_given_twice_with_different_specs_is_bad_input_naming_both() {
    let w = World::new();
    let json = w.dir.path().join("deps.json");
    fs::write(&json, r#"{"alpha": ">=1", "single": "", "alpha": "<1"}"#).unwrap();
    let run = w.cmd("ensure").arg("--deps-json").arg(&json).run().code(2);
    assert!(
        run.stderr.contains("\"alpha\"") && run.stderr.contains(">=1") && run.stderr.contains("<1"),
        "{}",
        run.stderr
    );
    assert_eq!(w.installs(), 0);
    // The same value twice says one thing.
    fs::write(&json, r#"{"alpha": ">=1", "alpha": ">=1"}"#).unwrap();
    w.cmd("ensure").arg("--deps-json").arg(&json).run().ok();
}

#[test]
fn an_editable_esptool_without_top_level_txt_is_validated_by_importing_its_package() {
    let w = World::new();
    let tool = editable_project(
        w.dir.path(),
        "esptool",
        "5.0",
        "raise ImportError('esptool broken on purpose')\n",
    );
    // hatchling, flit and uv_build editables have no top_level.txt; the project root also holds a
    // build script, which must not be imported.
    let pyproject = fs::read_to_string(tool.join("pyproject.toml")).unwrap();
    fs::write(
        tool.join("pyproject.toml"),
        format!("{pyproject}\n[tool.inplace]\ntop-level = false\n"),
    )
    .unwrap();
    let ensure = || {
        w.ensure(&["alpha"])
            .arg("--esptool-dir")
            .arg(&tool)
            .arg("--json")
            .run()
    };
    let run = ensure().code(3);
    assert!(
        run.stderr.contains("esptool") && run.stderr.contains("broken on purpose"),
        "{}",
        run.stderr
    );
    assert!(!w.state_path().exists(), "nothing recorded");
    fs::write(tool.join("esptool/__init__.py"), "VERSION = 5\n").unwrap();
    let run = ensure().ok();
    assert_eq!(
        run.json()["modules"]["esptool"],
        serde_json::json!(["esptool"])
    );
}

#[test]
fn a_required_distribution_with_no_module_found_is_a_validation_failure_naming_it() {
    let w = World::new();
    Wheel::new("datadist", "1.0")
        .file("datadist-notes.txt", "no code here\n")
        .build(&w.wheels);
    let run = w.ensure(&["alpha", "datadist"]).run().code(3);
    assert!(run.stderr.contains("datadist"), "{}", run.stderr);
    assert!(!w.state_path().exists(), "nothing recorded");
}

#[test]
fn output_of_imported_code_cannot_forge_the_validation_report() {
    let w = World::new();
    // A `.pth` runs at every start of the penv's Python: at exit it prints what looks like an
    // empty (all passed) report, after the real one.
    let fake = "import atexit; atexit.register(lambda: print('\\nPENV-GUARD-VALIDATION:[]') or \
                print('{\"implementation_name\": \"forged\"}'))";
    Wheel::new("forger", "1.0")
        .module("forger", "")
        .file("forger.pth", fake)
        .build(&w.wheels);
    let run = w.ensure(&["forger", "broken"]).run().code(3);
    assert!(
        run.stderr.contains("broken on purpose"),
        "the real report names the failed import: {}",
        run.stderr
    );
    assert!(!w.state_path().exists());
    let run = w.ensure(&["forger", "alpha"]).arg("--json").run().ok();
    assert_eq!(run.json()["installed"]["forger"], "1.0");
}

#[test]
fn offline_exit_4_is_only_for_what_is_not_available_offline() {
    let w = World::new();
    // A resolver conflict among the local wheels is not an offline problem.
    let run = w.ensure(&["alpha>=3"]).arg("--offline").run().code(1);
    assert!(
        !run.stderr.contains("local uv cache") && run.stderr.contains("alpha"),
        "{}",
        run.stderr
    );
    // Something neither cached nor local is.
    let run = w.ensure(&["nowhere-dist"]).arg("--offline").run().code(4);
    assert!(run.stderr.contains("local uv cache"), "{}", run.stderr);
    w.ensure(&["alpha"]).arg("--offline").run().ok();
    // A site-packages uv cannot write to (root ignores modes; the immutable flag stops it).
    let site = w.site_packages();
    if !chattr("+i", &site) {
        eprintln!("skipped the read-only part: chattr +i not supported here");
        return;
    }
    let run = w.ensure(&["alpha", "postpkg"]).arg("--offline").run();
    chattr("-i", &site);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(!run.stderr.contains("local uv cache"), "{}", run.stderr);
}

/// `ensure --offline` where no uv exists, with pip's index unreachable: pip must never be sent
/// there.
fn offline_without_uv(w: &World, find_links: &std::ffi::OsStr) -> TestCommand {
    w.ensure_without_uv()
        .args(["--offline", "--dep", "alpha<2", "--json"])
        .env("UV_FIND_LINKS", find_links)
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .env("PIP_RETRIES", "0")
        .env("PIP_TIMEOUT", "2")
}

#[test]
fn offline_with_no_uv_anywhere_uses_only_local_uv_or_fails_at_once_with_exit_4() {
    // Nothing local: exit 4 saying how to get uv, before the penv is made.
    let w = World::new();
    let run = offline_without_uv(&w, w.wheels.as_os_str()).run().code(4);
    assert!(
        run.stderr.contains("no uv found") && run.stderr.contains("--uv"),
        "{}",
        run.stderr
    );
    // (The lock inside the penv may have made its directory; no venv was made there.)
    assert!(!w.penv.join("pyvenv.cfg").exists(), "no venv was created");
    // A uv wheel in UV_FIND_LINKS: pip installs it from there, never from its index.
    let run = offline_without_uv(&w, &w.find_links()).run();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.status(), "installed");
    assert!(w.penv.join("bin/uv").is_file());
    // A uv the uv cache unpacked (a penv that once got uv through uv) is used as it is.
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    fs::remove_dir_all(&w.penv).unwrap();
    let run = offline_without_uv(&w, w.wheels.as_os_str()).run();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.json()["installed"]["alpha"], "1.0");
}

#[test]
fn uv_configuration_in_the_current_directory_cannot_redirect_the_penv_install() {
    let w = World::new();
    let elsewhere = w.dir.path().join("elsewhere");
    let user_config = w.dir.path().join("xdg");
    fs::create_dir_all(&user_config).unwrap();
    // A PlatformIO project whose uv.toml or pyproject.toml sends `uv pip install` elsewhere.
    let project = w.dir.path().join("project");
    fs::create_dir_all(project.join("w")).unwrap();
    let uv_toml = format!("[pip]\ntarget = \"{}\"\n", elsewhere.display());
    let pyproject = format!(
        "[project]\nname = \"fw\"\nversion = \"1\"\n\n[tool.uv.pip]\ntarget = \"{}\"\n",
        elsewhere.display()
    );
    // Relative paths the user gives still mean what they meant in the project directory.
    fs::write(project.join("reqs.txt"), "alpha<2\n").unwrap();
    let in_project = |w: &World| {
        w.cmd("ensure")
            .arg("-r")
            .arg("reqs.txt")
            .arg("--uv-cache-dir")
            .arg("uv-cache")
            .env_remove("UV_NO_CONFIG")
            .env("XDG_CONFIG_HOME", &user_config)
    };
    for (file, text) in [("uv.toml", &uv_toml), ("pyproject.toml", &pyproject)] {
        fs::write(project.join(file), text).unwrap();
        let run = in_project(&w).arg("--verify").run_in(&project);
        assert_eq!(run.code, Some(0), "{file}: {}", run.stderr);
        assert!(!elsewhere.exists(), "{file} redirected the install");
        assert!(w.site_packages().join("alpha").is_dir());
        assert!(project.join("uv-cache").is_dir(), "relative --uv-cache-dir");
        fs::remove_file(project.join(file)).unwrap();
    }
    // The user's own configuration still applies: here it is where the wheels are found.
    let user_uv = user_config.join("uv/uv.toml");
    fs::create_dir_all(user_uv.parent().unwrap()).unwrap();
    let links = w.find_links().into_string().unwrap();
    let quoted: Vec<String> = links.split(',').map(|l| format!("\"{l}\"")).collect();
    fs::write(&user_uv, format!("find-links = [{}]\n", quoted.join(", "))).unwrap();
    let run = in_project(&w)
        .arg("--dep")
        .arg("single")
        .env_remove("UV_FIND_LINKS")
        .run_in(&project);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(w.site_packages().join("single_mod.py").is_file());
    // A user configuration that sends the install elsewhere is named.
    fs::write(&user_uv, &uv_toml).unwrap();
    let run = in_project(&w)
        .arg("--dep")
        .arg("postpkg")
        .run_in(&project)
        .code(1);
    assert!(
        run.stderr.contains(&*user_uv.to_string_lossy()),
        "{}",
        run.stderr
    );
}

/// The penv's entries as `clear` sees them (in directory order), penv-guard's own files left out.
fn penv_entries(w: &World) -> Vec<std::ffi::OsString> {
    fs::read_dir(&w.penv)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with(".penv-guard"))
        .collect()
}

/// pyvenv.cfg claims another minor version of Python: the next miss must recreate the penv.
fn claim_another_python(w: &World) {
    let cfg = w.penv.join("pyvenv.cfg");
    let text = fs::read_to_string(&cfg).unwrap();
    let other: String = text
        .lines()
        .map(|l| {
            if l.starts_with("version_info") {
                "version_info = 3.1.0".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&cfg, other + "\n").unwrap();
}

#[test]
fn recreating_a_penv_that_cannot_be_cleared_leaves_it_as_it_was_naming_the_entry() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    // The last directory in the order a clear reads them: a clear that deletes as it goes has
    // removed everything before it when it fails there.
    let before = penv_entries(&w);
    let stuck = before
        .iter()
        .map(|n| w.penv.join(n))
        .rev()
        .find(|p| fs::symlink_metadata(p).unwrap().is_dir())
        .unwrap();
    if !chattr("+i", &stuck) {
        eprintln!("skipped: chattr +i not supported here");
        return;
    }
    claim_another_python(&w);
    let run = w.ensure(&["alpha"]).run();
    chattr("-i", &stuck);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&*stuck.to_string_lossy()) && run.stderr.contains("as it was"),
        "{}",
        run.stderr
    );
    assert_eq!(
        penv_entries(&w),
        before,
        "nothing removed, nothing left aside"
    );
    let import = Command::new(w.penv.join("bin/python"))
        .args(["-c", "import alpha"])
        .status()
        .unwrap();
    assert!(import.success(), "the penv still works");
    w.ensure(&["alpha"]).run().ok();
}

#[test]
fn recreating_a_penv_with_an_undeletable_file_builds_a_new_one_and_names_the_file_left() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let stuck = w.site_packages().join("alpha/__init__.py");
    if !chattr("+i", &stuck) {
        eprintln!("skipped: chattr +i not supported here");
        return;
    }
    claim_another_python(&w);
    let run = w.ensure(&["alpha"]).run();
    let aside: Vec<PathBuf> = fs::read_dir(&w.penv)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".penv-guard-old-"))
        .collect();
    for dir in &aside {
        for entry in walk(dir) {
            chattr("-i", &entry);
        }
    }
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("alpha/__init__.py") && run.stderr.contains("cannot be deleted"),
        "{}",
        run.stderr
    );
    assert_eq!(aside.len(), 1, "the old files are left aside in the penv");
    assert!(w.state_path().is_file(), "the new penv was validated");
    // The next recreation removes what was left.
    claim_another_python(&w);
    w.ensure(&["alpha"]).run().ok();
    assert!(!aside[0].exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(dir).unwrap() {
            out.extend(walk(&entry.unwrap().path()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Issue 17 items 12-13 (ux)

/// Item 13: a bad `PENV_GUARD_LOCK_TIMEOUT` is one line naming the variable and its value.
#[test]
fn a_bad_lock_timeout_variable_is_one_line_naming_it_and_its_value() {
    let w = World::new();
    for value in ["abc", "soon", "1e"] {
        let run = w
            .ensure(&["alpha"])
            .env("PENV_GUARD_LOCK_TIMEOUT", value)
            .run()
            .code(2);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("PENV_GUARD_LOCK_TIMEOUT=\"{value}\"")),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("--lock-timeout"), "{}", run.stderr);
    }
    let run = w
        .ensure(&["alpha"])
        .env("PENV_GUARD_LOCK_TIMEOUT", "-3")
        .run()
        .code(2);
    assert!(
        run.stderr
            .contains("PENV_GUARD_LOCK_TIMEOUT must be a non-negative number"),
        "{}",
        run.stderr
    );
    // The flag wins over the variable, as before.
    w.ensure(&["alpha"])
        .env("PENV_GUARD_LOCK_TIMEOUT", "abc")
        .args(["--lock-timeout", "5"])
        .run()
        .ok();
}

#[test]
fn status_escapes_control_characters_from_the_history() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    // A miss whose command line holds an escape sequence (a file name can).
    let req = w.dir.path().join("\u{1b}[31mreq.txt");
    fs::write(&req, "alpha\npostpkg\n").unwrap();
    w.cmd("ensure").arg("-r").arg(&req).run().ok();
    let human = w.cmd("status").arg("-r").arg(&req).run().ok();
    assert!(!human.stdout.contains('\u{1b}'), "{:?}", human.stdout);
    assert!(human.stdout.contains("\\u{1b}[31m"), "{}", human.stdout);
}

/// Item 12: the history is bounded by bytes, not only by count. A long "deps changed" reason is
/// cut, and one huge record (written by an older version) costs only itself, not every record
/// before it.
#[test]
fn the_miss_history_is_bounded_by_size_and_one_huge_record_costs_only_itself() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let history = w.penv.join(".penv-guard-history.jsonl");
    let mut text = fs::read_to_string(&history).unwrap();
    let first = text.clone();
    text.push_str(
        &first
            .replace("no_penv", "huge")
            .replace("the penv does not exist", &"y".repeat(5 << 20)),
    );
    fs::write(&history, &text).unwrap();
    // A miss whose reason lists hundreds of new names.
    let req = w.dir.path().join("many.txt");
    let names: Vec<String> = (0..400)
        .map(|i| format!("no-such-distribution-with-a-long-name-{i}"))
        .collect();
    fs::write(&req, format!("alpha\n{}\n", names.join("\n"))).unwrap();
    w.cmd("ensure").arg("-r").arg(&req).run().code(1);
    let written = fs::read_to_string(&history).unwrap();
    assert!(written.len() < 256 << 10, "{} bytes", written.len());
    let records: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["no_penv", "deps_changed"],
        "the first record survives"
    );
    let reason = records[1]["reason"].as_str().unwrap();
    assert!(
        reason.len() <= 2048 && reason.ends_with('…'),
        "{}",
        reason.len()
    );
    let status = w.cmd("status").arg("-r").arg(&req).run().ok();
    assert!(
        status.stdout.contains("failed with exit 1"),
        "{}",
        status.stdout
    );
}

/// Item 12: `status` ignores history records with impossible dates.
#[test]
fn status_ignores_history_records_with_impossible_dates() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let history = w.penv.join(".penv-guard-history.jsonl");
    let real = fs::read_to_string(&history).unwrap();
    let mut text = String::new();
    for at in ["-86400.0", "1e300", "253402300800.5"] {
        let forged = real.replacen("\"at\":", &format!("\"at\":{at},\"x\":"), 1);
        text.push_str(&forged.replace("penv-guard ensure", "forged"));
    }
    text.push_str(&real);
    fs::write(&history, text).unwrap();
    let run = w
        .cmd("status")
        .arg("--json")
        .args(["--dep", "alpha"])
        .run()
        .ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report["history"].as_array().unwrap().len(),
        1,
        "{}",
        report["history"]
    );
    assert!(
        report["misses"].as_str().unwrap().starts_with("1 miss "),
        "{}",
        report["misses"]
    );
}

// ---------------------------------------------------------------------------------------------
// Round three (issue 17), second part

#[test]
fn a_stamp_in_the_future_is_a_change_once_and_then_hits() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    // A penv restored from a cache built where the clock was an hour ahead.
    // (futimens through std, not `touch -d @SECS`, which BSD touch does not take.)
    let ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
    for part in [w.penv.join("pyvenv.cfg"), w.site_packages().join("alpha")] {
        fs::File::open(&part).unwrap().set_modified(ahead).unwrap();
    }
    let run = w.ensure(&["alpha"]).arg("--json").run().ok();
    assert_ne!(run.status(), "hit", "the stamps changed");
    let history = w.penv.join(".penv-guard-history.jsonl");
    let misses = fs::read_to_string(&history).unwrap().lines().count();
    for _ in 0..2 {
        let run = w.ensure(&["alpha"]).arg("--json").run().ok();
        assert_eq!(run.status(), "hit", "{}", run.stderr);
    }
    assert_eq!(
        fs::read_to_string(&history).unwrap().lines().count(),
        misses,
        "no miss recorded after the first"
    );
    let status = status_json(&w, &["alpha"]);
    assert_eq!(status["verdict"]["result"], "hit", "{status}");
}

/// A loop-mounted ext4 with 128-byte inodes, which store whole seconds (as ext3 and FAT do);
/// unmounted on drop. `None`, with the reason printed, where this machine cannot mount one.
struct WholeSecondMount {
    at: PathBuf,
}

impl WholeSecondMount {
    fn new(image: &Path, at: &Path) -> Option<WholeSecondMount> {
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            Command::new(program)
                .args(args)
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&o.stderr).into_owned())
                    }
                })
        };
        fs::File::create(image).unwrap().set_len(256 << 20).unwrap();
        fs::create_dir_all(at).unwrap();
        let made = run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-I".as_ref(),
                "128".as_ref(),
                image.as_os_str(),
            ],
        )
        .and_then(|()| {
            run(
                "mount",
                &[
                    "-o".as_ref(),
                    "loop".as_ref(),
                    image.as_os_str(),
                    at.as_os_str(),
                ],
            )
        });
        match made {
            Ok(()) => Some(WholeSecondMount {
                at: at.to_path_buf(),
            }),
            Err(reason) => {
                eprintln!("skipped: cannot loop-mount a whole-second ext4 here: {reason}");
                None
            }
        }
    }
}

impl Drop for WholeSecondMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

#[test]
fn a_penv_on_a_whole_second_filesystem_gets_its_racy_window_not_another_filesystems() {
    let w = World::new();
    let core = w.penv.parent().unwrap().to_path_buf();
    let Some(_mount) = WholeSecondMount::new(&w.dir.path().join("whole-seconds.img"), &core) else {
        return;
    };
    Wheel::new("zeta", "1.0")
        .module("zeta", "")
        .file("zeta/blob.bin", &"x".repeat(100))
        .build(&w.wheels);
    // Parts on another filesystem with nanosecond times: the esptool project's files (and on
    // many machines the base interpreter).
    let tool = editable_project(w.dir.path(), "esptool", "1.0", "VERSION = 1\n");
    let ensure = || {
        w.ensure(&["zeta"])
            .arg("--esptool-dir")
            .arg(&tool)
            .arg("--json")
    };
    ensure().run().ok();
    // Removed right after the record, most likely in the same second: the directory's stamp
    // (whole seconds, and ext4 keeps a directory's size) may not change at all.
    let blob = w.site_packages().join("zeta/blob.bin");
    fs::remove_file(&blob).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.state_path()).unwrap()).unwrap();
    assert_eq!(
        state["racy_window_ns"], 2_000_000_000_i64,
        "the penv's filesystem stores whole seconds; the esptool project's does not"
    );
    let run = ensure().run().ok();
    assert_ne!(run.status(), "hit", "{}", run.stderr);
    assert!(blob.is_file(), "repaired");
}

#[test]
fn a_fifo_or_a_directory_at_the_lock_path_is_one_exit_code_and_message_and_status_says_so() {
    for kind in ["a FIFO", "a directory"] {
        let w = World::new();
        fs::create_dir_all(w.penv.parent().unwrap()).unwrap();
        if kind == "a FIFO" {
            mkfifo(&w.lock_path());
        } else {
            fs::create_dir(w.lock_path()).unwrap();
        }
        let run = within(w.ensure(&["alpha"]), Duration::from_secs(60)).code(2);
        assert!(
            run.stderr.contains(&*w.lock_path().to_string_lossy())
                && run
                    .stderr
                    .contains(&format!("is {kind}, not a regular file")),
            "{kind}: {}",
            run.stderr
        );
        assert_eq!(w.installs(), 0);
        let status = status_json(&w, &["alpha"]);
        assert_eq!(status["lock"]["state"], "not_a_file", "{kind}: {status}");
        let human = w.cmd("status").args(["--dep", "alpha"]).run().ok();
        assert!(
            human.stdout.contains(&format!("is {kind}"))
                && !human.stdout.contains("lock          free"),
            "{}",
            human.stdout
        );
    }
}

#[test]
fn a_lock_holder_stopped_by_ctrl_z_is_named_as_stopped_in_the_wait_line_and_in_status() {
    let w = World::new();
    let mut holder = Command::new("sleep").arg("120").spawn().unwrap();
    signal(&holder, "STOP");
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let _lock = w.hold_lock(Some(&format!(
        r#"{{"pid": {}, "command": "penv-guard ensure", "since_unix": {since}}}"#,
        holder.id()
    )));
    let run = w.ensure(&["alpha"]).args(["--lock-timeout", "1"]).run();
    let status = status_json(&w, &["alpha"]);
    let human = w.cmd("status").args(["--dep", "alpha"]).run().ok();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(run.code, Some(75), "{}", run.stderr);
    let wait_line = run.stderr.lines().next().unwrap_or_default();
    assert!(
        wait_line.contains("waiting") && wait_line.contains("STOPPED"),
        "{}",
        run.stderr
    );
    assert_eq!(status["lock"]["holder"]["stopped"], true, "{status}");
    assert!(human.stdout.contains("STOPPED"), "{}", human.stdout);
}

// ---------------------------------------------------------------------------------------------
// Round three (issue 17 item 2): a penv shared by installers whose locks beside it differ

/// A peer installs another version while the import check runs (a second container on a shared
/// penv volume, or any installer without penv-guard's lock). The versions were read before the
/// imports and the stamps taken after them, so the peer's version was recorded as validated: the
/// next run was a hit for `alpha==1.0` with alpha 2.0 installed.
#[test]
fn a_peer_install_during_the_import_check_is_never_recorded_as_validated() {
    let w = World::new();
    let importing = w.dir.path().join("importing");
    Wheel::new("slowimp", "1.0")
        .module(
            "slowimp",
            &format!(
                "import time\nopen({:?}, 'w').close()\ntime.sleep(4)\n",
                importing.display().to_string()
            ),
        )
        .build(&w.wheels);
    let mut first = w.ensure(&["alpha==1.0", "slowimp"]).spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !importing.exists() {
        assert!(Instant::now() < deadline, "the import check never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The peer: the real uv, straight into the penv, while penv-guard imports slowimp.
    let peer = Command::new(crate::support::real_uv())
        .args(["pip", "install", "--python"])
        .arg(w.penv.join("bin/python"))
        .arg("alpha==2.0")
        .arg("--cache-dir")
        .arg(&w.cache)
        .env("UV_FIND_LINKS", w.find_links())
        .env("UV_DEFAULT_INDEX", w.empty_index_url())
        .env("UV_NO_CONFIG", "1")
        .output()
        .unwrap();
    assert!(
        peer.status.success(),
        "{}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let first = finish_within(&mut first, Duration::from_secs(120));
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("changed while penv-guard validated it")
            && first.stderr.contains("alpha was 1.0, now 2.0"),
        "{}",
        first.stderr
    );
    assert!(!w.state_path().exists(), "nothing may be recorded");
    let next = w
        .ensure(&["alpha==1.0", "slowimp"])
        .arg("--json")
        .run()
        .ok();
    assert_eq!(next.status(), "installed", "{}", next.stderr);
    assert_eq!(next.json()["installed"]["alpha"], "1.0");
}

/// `docker run -v pio-penv:/root/.platformio/penv` in two containers: only the penv directory is
/// shared, so each has its own lock beside it. Two mount namespaces (`unshare -m`) give each
/// ensure its own `core/` with the same volume mounted at `core/penv`. The lock inside the penv
/// is what they have in common: their installs never overlap.
#[cfg(target_os = "linux")]
#[test]
fn a_penv_shared_as_a_volume_between_mount_namespaces_is_never_installed_into_twice_at_once() {
    let w = World::new();
    let probe = Command::new("unshare").args(["-m", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare -m is not permitted here (needs root or user namespaces)");
        return;
    }
    let volume = w.dir.path().join("volume");
    let core = w.penv.parent().unwrap().to_path_buf();
    fs::create_dir_all(&volume).unwrap();
    fs::create_dir_all(&core).unwrap();
    write_overlap_shim(&w, "case \"$*\" in *'pip install'*) sleep 3;; esac");
    let in_container = |name: &str| {
        let own_core = w.dir.path().join(name);
        fs::create_dir_all(own_core.join("penv")).unwrap();
        let TestCommand { command } = w
            .ensure(&["alpha", "single"])
            .arg("--lock-timeout")
            .arg("120");
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["-m", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && mount --bind "$3" "$2/penv" && shift 3 && exec "$@""#)
            .arg("sh")
            .arg(&own_core)
            .arg(&core)
            .arg(&volume)
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        TestCommand { command: wrapped }.spawn()
    };
    let mut first = in_container("container-a");
    wait_for_installs(&w, 1);
    let mut second = in_container("container-b");
    let first = finish_within(&mut first, Duration::from_secs(180));
    let second = finish_within(&mut second, Duration::from_secs(180));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let log = fs::read_to_string(&w.uv_log).unwrap();
    assert!(!log.contains("OVERLAP"), "two installs ran at once:\n{log}");
    // Each container's lock beside the penv is its own; the second waited on the inner one.
    assert!(
        w.dir
            .path()
            .join("container-a/penv.penv-guard.lock")
            .is_file()
    );
    assert!(
        w.dir
            .path()
            .join("container-b/penv.penv-guard.lock")
            .is_file()
    );
    assert!(
        second.stderr.contains("waiting for the penv lock")
            && second.stderr.contains("core/penv/.penv-guard.lock"),
        "the second container did not wait on the lock inside the penv: {}",
        second.stderr
    );
    assert!(
        volume.join("pyvenv.cfg").is_file(),
        "the penv is on the volume"
    );
}

// ---------------------------------------------------------------------------------------------
// Found by the review of round three

/// What was moved aside from the state path is kept by a later recreation of the venv too (the
/// venv's clearing moved it out with everything else, then deleted it).
#[test]
fn what_was_moved_aside_from_the_state_path_survives_a_recreated_penv() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    fs::remove_file(w.state_path()).unwrap();
    fs::create_dir(w.state_path()).unwrap();
    fs::write(w.state_path().join("keep.txt"), "mine").unwrap();
    w.ensure(&["alpha"]).run().ok();
    let cfg = w.penv.join("pyvenv.cfg");
    let text = fs::read_to_string(&cfg).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("version_info = "))
        .unwrap()
        .to_owned();
    fs::write(&cfg, text.replace(&version, "2.7.18")).unwrap();
    let run = w.ensure(&["alpha"]).run().ok();
    assert!(run.stderr.contains("creating the penv"), "{}", run.stderr);
    let kept = fs::read_dir(&w.penv)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("displaced"))
        .expect("still beside the new venv");
    assert_eq!(
        fs::read_to_string(kept.path().join("keep.txt")).unwrap(),
        "mine"
    );
}

/// Something at the holder path that penv-guard did not write (it refuses to write over a
/// symlink there) is not removed when the lock goes either.
#[test]
fn a_symlink_at_the_holder_path_is_left_where_it_was() {
    let w = World::new();
    let target = w.dir.path().join("users-file");
    fs::write(&target, "keep").unwrap();
    fs::create_dir_all(w.holder_path().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&target, w.holder_path()).unwrap();
    w.ensure(&["alpha"]).run().ok();
    assert!(
        fs::symlink_metadata(w.holder_path()).is_ok_and(|m| m.file_type().is_symlink()),
        "the symlink at the holder path was removed"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
}
