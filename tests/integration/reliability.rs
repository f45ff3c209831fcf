//! Races, crashes, faults and bad input. Every scenario asserts the promise: never an install
//! without the lock, never a state that claims more than was validated, and a clear one-line
//! error with its documented exit code.

use std::fs;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::support::{Run, Wheel, World};

/// `(pid, start, end)` of every `pip install` the shim saw.
fn install_intervals(w: &World) -> Vec<(String, f64, f64)> {
    let log = fs::read_to_string(&w.uv_log).unwrap_or_default();
    let mut open: Vec<(String, f64)> = Vec::new();
    let mut done = Vec::new();
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (pid, kind, ts) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let ts: f64 = ts.parse().unwrap();
        let rest = parts.next().unwrap_or("");
        if kind == "start" && rest.contains("pip install") {
            open.push((pid.to_owned(), ts));
        } else if kind == "end"
            && let Some(i) = open.iter().position(|(p, _)| p == pid)
        {
            let (pid, start) = open.remove(i);
            done.push((pid, start, ts));
        }
    }
    assert!(open.is_empty(), "installs that never ended: {open:?}");
    done.sort_by(|a, b| a.1.total_cmp(&b.1));
    done
}

fn assert_no_overlap(intervals: &[(String, f64, f64)]) {
    for pair in intervals.windows(2) {
        assert!(pair[0].2 <= pair[1].1, "installs overlap: {pair:?}");
    }
}

fn wait_all(children: Vec<Child>) -> Vec<Run> {
    children
        .into_iter()
        .map(|c| Run::from(c.wait_with_output().unwrap()))
        .collect()
}

fn rounds() -> usize {
    std::env::var("PENV_GUARD_RACE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
}

// Linux only: install_intervals parses the shim's `date +%s.%N` (GNU date; BSD date has no %N).
#[cfg(target_os = "linux")]
#[test]
fn sixteen_concurrent_ensures_on_a_cold_penv_install_exactly_once() {
    for round in 0..rounds() {
        let w = World::new();
        let children: Vec<Child> = (0..16)
            .map(|_| w.ensure(&["alpha<2", "needs-alpha"]).arg("--json").spawn())
            .collect();
        let runs = wait_all(children);
        for run in &runs {
            assert_eq!(run.code, Some(0), "round {round}: {}", run.stderr);
            assert_eq!(run.json()["installed"]["alpha"], "1.0");
        }
        let intervals = install_intervals(&w);
        assert_eq!(
            intervals.len(),
            1,
            "round {round}: exactly one install: {intervals:?}"
        );
        assert_eq!(w.uv_calls("venv"), 1, "round {round}: one venv creation");
        let statuses: Vec<String> = runs.iter().map(Run::status).collect();
        assert_eq!(
            statuses.iter().filter(|s| *s == "installed").count(),
            1,
            "{statuses:?}"
        );
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(w.state_path()).unwrap()).unwrap();
        assert!(
            state["installed"]["alpha"] == "1.0",
            "round {round}: valid state at the end"
        );
    }
}

// Linux only: install_intervals parses the shim's `date +%s.%N` (GNU date; BSD date has no %N).
#[cfg(target_os = "linux")]
#[test]
fn concurrent_ensures_with_different_lists_serialise_and_each_ends_satisfied() {
    let lists: [&[&str]; 3] = [&["alpha<2"], &["postpkg"], &["alpha<2", "single"]];
    for round in 0..rounds().div_ceil(2) {
        let w = World::new();
        let children: Vec<(usize, Child)> = (0..12)
            .map(|i| (i % 3, w.ensure(lists[i % 3]).arg("--json").spawn()))
            .collect();
        for (list, child) in children {
            let run = Run::from(child.wait_with_output().unwrap());
            assert_eq!(run.code, Some(0), "round {round}: {}", run.stderr);
            let installed = &run.json()["installed"];
            for dep in lists[list] {
                let name = dep.split('<').next().unwrap();
                assert!(
                    installed.get(name).is_some(),
                    "round {round}: {name} in {installed}"
                );
            }
        }
        let intervals = install_intervals(&w);
        assert!(!intervals.is_empty());
        assert_no_overlap(&intervals);
    }
}

fn wait_for_log(w: &World, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&w.uv_log)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            Instant::now() < deadline,
            "never saw `{needle}` in the uv log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// After penv-guard is killed with SIGKILL, the child that was changing the penv keeps the lock
/// (it inherited the lock's open file) until it is gone: the next run waits for it instead of
/// installing beside it, then repairs and validates.
fn assert_repaired_after_the_orphan(w: &World, deps: &[&str]) {
    assert!(
        !w.state_path().exists(),
        "a crash left a state file claiming validity"
    );
    let run = w
        .ensure(deps)
        .arg("--json")
        .arg("--lock-timeout")
        .arg("60")
        .run()
        .ok();
    assert!(
        run.stderr.contains("waiting for the penv lock"),
        "the orphan still held the lock: {}",
        run.stderr
    );
    assert_eq!(run.status(), "installed");
    assert_no_overlap(&install_intervals(w));
}

// Linux only: install_intervals parses the shim's `date +%s.%N` (GNU date; BSD date has no %N).
#[cfg(target_os = "linux")]
#[test]
fn kill_9_during_install_keeps_the_lock_until_uv_is_gone_and_the_next_run_repairs() {
    let w = World::new();
    w.write_shim("case \"$*\" in *'pip install'*) sleep 3;; esac");
    let mut holder = w.ensure(&["alpha"]).spawn();
    wait_for_log(&w, "pip install");
    kill_9(&mut holder);
    assert_repaired_after_the_orphan(&w, &["alpha"]);
}

// Linux only: install_intervals parses the shim's `date +%s.%N` (GNU date; BSD date has no %N).
#[cfg(target_os = "linux")]
#[test]
fn kill_9_while_creating_the_venv_keeps_the_lock_until_uv_venv_is_gone() {
    let w = World::new();
    w.write_shim("case \"$*\" in venv*) sleep 3;; esac");
    let mut holder = w.ensure(&["alpha"]).spawn();
    wait_for_log(&w, "start");
    kill_9(&mut holder);
    assert_repaired_after_the_orphan(&w, &["alpha"]);
}

#[test]
fn kill_9_during_validation() {
    let w = World::new();
    let marker = w.dir.path().join("importing");
    Wheel::new("slowimport", "1.0")
        .module(
            "slowimport",
            &format!(
                "import os, time\nif not os.environ.get('FAST'):\n    open({:?}, 'w').close()\n    time.sleep(30)",
                marker.display().to_string()
            ),
        )
        .build(&w.wheels);
    let mut holder = w.ensure(&["slowimport"]).spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "validation never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_9(&mut holder);
    assert!(!w.state_path().exists());
    // The next run proves itself: the import it validates now finishes.
    w.write_shim("");
    let run = w
        .ensure(&["slowimport"])
        .arg("--json")
        .env("FAST", "1")
        .arg("--lock-timeout")
        .arg("0")
        .run();
    // `-I` keeps FAST out of the penv Python only for PYTHON* variables; FAST passes through.
    let run = run.ok();
    assert_eq!(run.status(), "installed");
}

#[test]
fn crash_between_state_write_and_rename_leaves_no_torn_state_and_is_swept() {
    let w = World::new();
    let run = w
        .ensure(&["alpha"])
        .env(
            "PENV_GUARD_TEST_CRASH_BEFORE_RENAME",
            ".penv-guard-state.json",
        )
        .run();
    assert_eq!(run.code, Some(99), "{}", run.stderr);
    assert!(!w.state_path().exists(), "the state appears only by rename");
    let temps: Vec<_> = fs::read_dir(&w.penv)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".penv-guard-tmp-")
        })
        .collect();
    assert_eq!(temps.len(), 1, "the interrupted write left its temp file");
    // Age the temp file past the sweep threshold; the next miss sweeps it and repairs.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(temps[0].path())
        .unwrap()
        .set_modified(old)
        .unwrap();
    let run = w.ensure(&["alpha"]).arg("--json").run().ok();
    assert_eq!(run.status(), "installed");
    assert!(!temps[0].path().exists(), "stale temp file swept");
    // An old state survives an interrupted rewrite intact.
    let before = fs::read(w.state_path()).unwrap();
    let run = w
        .ensure(&["alpha"])
        .arg("--verify")
        .env(
            "PENV_GUARD_TEST_CRASH_BEFORE_RENAME",
            ".penv-guard-state.json",
        )
        .run();
    assert_eq!(run.code, Some(99));
    assert!(
        !w.state_path().exists() || fs::read(w.state_path()).unwrap() == before,
        "either the old state or none, never a torn one"
    );
}

#[test]
fn uv_failure_exits_1_with_its_output_and_no_state() {
    let w = World::new();
    w.write_shim("case \"$*\" in *'pip install'*) echo 'resolver exploded' >&2; exit 7;; esac");
    let run = w.ensure(&["alpha"]).run().code(1);
    assert!(run.stderr.contains("exit code 7"), "{}", run.stderr);
    assert!(run.stderr.contains("resolver exploded"), "{}", run.stderr);
    assert!(!w.state_path().exists());
}

#[test]
fn uv_hanging_past_install_timeout_is_killed() {
    let w = World::new();
    w.write_shim("case \"$*\" in *'pip install'*) sleep 30;; esac");
    let start = Instant::now();
    let run = w
        .ensure(&["alpha"])
        .arg("--install-timeout")
        .arg("1")
        .run()
        .code(1);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(run.stderr.contains("timeout"), "{}", run.stderr);
    assert!(!w.state_path().exists());
}

#[test]
fn missing_or_broken_python_is_a_clear_error() {
    let w = World::new();
    let missing = w.dir.path().join("no/python3");
    let run = w
        .ensure(&["alpha"])
        .arg("--python")
        .arg(&missing)
        .run()
        .code(1);
    assert!(run.stderr.contains("no/python3"), "{}", run.stderr);
    let not_exec = w.dir.path().join("python3");
    fs::write(&not_exec, "not a program").unwrap();
    let run = w
        .ensure(&["alpha"])
        .arg("--python")
        .arg(&not_exec)
        .run()
        .code(1);
    assert!(
        run.stderr.contains(&*not_exec.to_string_lossy()),
        "{}",
        run.stderr
    );
    assert!(!w.state_path().exists());
}

#[test]
fn penv_python_removed_unrunnable_or_penv_deleted_is_repaired() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    fs::remove_file(w.penv.join("bin/python")).unwrap();
    let run = w.ensure(&["alpha"]).arg("--json").arg("-v").run().ok();
    assert_eq!(run.status(), "installed");
    assert!(run.stderr.contains("creating the penv"), "{}", run.stderr);
    // An interpreter that exists but cannot run is a broken penv: recreated, not handed to uv.
    let python = w.penv.join("bin/python");
    fs::remove_file(&python).unwrap();
    fs::write(&python, "not a program").unwrap();
    let run = w.ensure(&["alpha"]).arg("--json").arg("-v").run().ok();
    assert!(run.stderr.contains("creating the penv"), "{}", run.stderr);
    assert_eq!(run.status(), "installed");
    fs::remove_dir_all(&w.penv).unwrap();
    let run = w.ensure(&["alpha"]).arg("--json").run().ok();
    assert_eq!(run.status(), "installed");
    assert!(w.penv.join("bin/python").exists());
}

fn chattr(flag: &str, path: &std::path::Path) -> bool {
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn unwritable_site_packages_or_penv_fails_clearly_without_valid_state() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let site = w.site_packages();
    // Root ignores permission bits; the immutable attribute stops root too (where supported).
    if !chattr("+i", &site) {
        eprintln!("skipped: chattr +i not supported here");
        return;
    }
    let run = w.ensure(&["alpha", "postpkg"]).run();
    chattr("-i", &site);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let ours: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("penv-guard: error:"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one line of ours, then uv's tail: {}",
        run.stderr
    );
    assert!(
        !w.state_path().exists(),
        "invalidated before the install that failed"
    );

    w.ensure(&["alpha"]).run().ok();
    assert!(chattr("+i", &w.penv));
    let run = w.ensure(&["alpha", "postpkg"]).run();
    chattr("-i", &w.penv);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&*w.penv.to_string_lossy()),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_input_exits_2_naming_the_offending_value() {
    let w = World::new();
    let dir = w.dir.path();
    let empty = dir.join("empty.txt");
    fs::write(&empty, "# nothing\n\n").unwrap();
    let run = w.cmd("ensure").arg("-r").arg(&empty).run().code(2);
    assert!(run.stderr.contains("empty.txt"), "{}", run.stderr);

    let dup = dir.join("dup.txt");
    fs::write(&dup, "alpha>=1\nAlpha<1\n").unwrap();
    let run = w.cmd("ensure").arg("-r").arg(&dup).run().code(2);
    assert!(run.stderr.contains("conflicts"), "{}", run.stderr);

    let huge = dir.join("huge.txt");
    let mut text: String = (0..5000).fold(String::new(), |mut text, i| {
        use std::fmt::Write as _;
        let _ = writeln!(text, "pkg{i}>=1.{i}");
        text
    });
    text.push_str("bad line ((\n");
    fs::write(&huge, text).unwrap();
    let run = w.cmd("ensure").arg("-r").arg(&huge).run().code(2);
    assert!(run.stderr.contains("huge.txt:5001"), "{}", run.stderr);

    let latin1 = dir.join("latin1.txt");
    fs::write(&latin1, b"caf\xe9>=1\n").unwrap();
    let run = w.cmd("ensure").arg("-r").arg(&latin1).run().code(2);
    assert!(run.stderr.contains("UTF-8"), "{}", run.stderr);

    let json = dir.join("deps.json");
    fs::write(&json, r#"{"alpha": {"version": ">=1"}}"#).unwrap();
    let run = w.cmd("ensure").arg("--deps-json").arg(&json).run().code(2);
    assert!(run.stderr.contains("\"alpha\""), "{}", run.stderr);

    let file = dir.join("penv-is-a-file");
    fs::write(&file, "").unwrap();
    let run = w.ensure(&["alpha"]).arg("--penv").arg(&file).run().code(2);
    assert!(run.stderr.contains("penv-is-a-file"), "{}", run.stderr);

    let run = w.ensure(&["alpha"]).arg("--lock-timeout=-1").run().code(2);
    assert!(run.stderr.contains("--lock-timeout"), "{}", run.stderr);
    {
        let run = &run;
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    }
    assert_eq!(w.installs(), 0);
}

// Linux only: APFS (macOS) refuses file names that are not UTF-8.
#[cfg(target_os = "linux")]
#[test]
fn non_utf8_and_relative_paths() {
    use std::os::unix::ffi::OsStrExt;
    let w = World::new();
    // uv cannot make a venv at a non-UTF-8 path: bad input, said up front.
    let odd = w.dir.path().join(std::ffi::OsStr::from_bytes(b"penv-\xff"));
    let run = w.ensure(&["alpha"]).arg("--penv").arg(&odd).run().code(2);
    assert!(
        run.stderr.contains("penv-\u{fffd}") && run.stderr.contains("UTF-8"),
        "{}",
        run.stderr
    );
    assert!(!odd.exists());
    // A requirements file at a non-UTF-8 path is read fine.
    let req = w
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"req-\xfe.txt"));
    fs::write(&req, "alpha\n").unwrap();
    let run = w.cmd("ensure").arg("-r").arg(&req).arg("--json").run().ok();
    assert_eq!(run.status(), "installed");

    let run = w
        .ensure(&["alpha"])
        .arg("--penv")
        .arg("relative-penv")
        .arg("--json")
        .run_in(w.dir.path())
        .ok();
    assert_eq!(
        run.json()["penv"],
        w.dir.path().join("relative-penv").to_str().unwrap()
    );
}
