//! Windows only: the process and lock guarantees, with `penv-guard.exe` under Wine (or on a
//! Windows runner) and stand-in `python.exe`/`uv.exe` (`examples/stand_in.rs`), which log when
//! each process runs. There is no Windows CPython here, so nothing in this file validates a real
//! install; it checks who runs when, who dies with whom, and what a waiter is told.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::Run;
use crate::support::stand_in::{StandIns, exe};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes the lock at `path` as another penv-guard would; held until the file is dropped.
fn hold(path: &Path) -> File {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    file.try_lock().unwrap();
    file
}

/// `(pid, first, last)` of each `uv pip install`, in the order they started.
fn installs(w: &StandIns) -> Vec<(u32, f64, f64)> {
    let mut installs = w.intervals("uv", "pip install");
    installs.sort_by(|a, b| a.1.total_cmp(&b.1));
    installs
}

#[test]
fn a_waiter_times_out_with_75_naming_the_holder_and_a_patient_one_gets_a_hit() {
    let w = StandIns::new();
    let holder = w
        .ensure(&["alpha"])
        .arg("--json")
        .env("PENV_GUARD_STAND_IN_SLEEP", "6")
        .spawn();
    wait_until("the holder's install", || !installs(&w).is_empty());

    let start = Instant::now();
    let impatient = w
        .ensure(&["alpha"])
        .args(["--lock-timeout", "1"])
        .run()
        .code(75);
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert!(
        impatient.stderr.contains("waiting for the penv lock"),
        "{}",
        impatient.stderr
    );
    let named = format!("pid {}", holder.id());
    assert!(impatient.stderr.contains(&named), "{}", impatient.stderr);
    assert!(impatient.stderr.contains("PENV_GUARD_LOCK_TIMEOUT"));

    let patient = w
        .ensure(&["alpha"])
        .args(["--lock-timeout", "60", "--json"])
        .run()
        .ok();
    assert!(patient.stderr.contains("waiting for the penv lock"));
    assert_eq!(patient.status(), "hit", "{}", patient.stderr);
    let first = Run::from(holder.wait_with_output().unwrap()).ok();
    assert_eq!(first.status(), "installed");
    assert_eq!(installs(&w).len(), 1, "one install under the lock");
}

#[test]
fn killing_penv_guard_mid_install_kills_its_uv_and_the_next_ensure_never_runs_beside_it() {
    let w = StandIns::new();
    let mut first = w
        .ensure(&["alpha"])
        .env("PENV_GUARD_STAND_IN_SLEEP", "10")
        .spawn();
    wait_until("the first install", || !installs(&w).is_empty());
    // TerminateProcess, as `taskkill /F` or a CI cancellation does.
    first.kill().unwrap();
    let killed_at = now();
    first.wait().unwrap();

    let next = w.ensure(&["alpha"]).arg("--json").run().ok();
    assert_eq!(next.status(), "installed", "{}", next.stderr);
    // A uv that survived would tick on for the rest of its 10 s.
    std::thread::sleep(Duration::from_secs(1));
    let all = installs(&w);
    assert_eq!(all.len(), 2, "{all:?}");
    let (orphan, repair) = (all[0], all[1]);
    assert!(
        orphan.2 < repair.1,
        "the killed penv-guard's uv ran until {}, beside the next install (from {})",
        orphan.2,
        repair.1
    );
    assert!(
        orphan.2 < killed_at + 0.5,
        "its uv outlived it: ran until {}, killed at {killed_at}",
        orphan.2
    );
    let ended = w
        .events()
        .iter()
        .any(|e| e.pid == orphan.0 && e.kind == "end");
    assert!(!ended, "the killed install ran to its end");
}

#[test]
fn an_install_timeout_kills_the_whole_tree() {
    let w = StandIns::new();
    let start = Instant::now();
    let run = w
        .ensure(&["alpha"])
        .args(["--install-timeout", "3"])
        .env("PENV_GUARD_STAND_IN_SLEEP", "30")
        .env("PENV_GUARD_STAND_IN_GRANDCHILD", "pip")
        .run()
        .code(1);
    let ended = now();
    assert!(
        run.stderr.contains("killed after the 3s timeout"),
        "{}",
        run.stderr
    );
    assert!(start.elapsed() < Duration::from_secs(25));
    std::thread::sleep(Duration::from_secs(1));
    let grandchildren = w.intervals("grandchild", "--stand-in-hang");
    assert_eq!(grandchildren.len(), 1, "{grandchildren:?}");
    assert!(
        grandchildren[0].2 < ended,
        "the grandchild outlived the timeout: ran until {}, penv-guard ended at {ended}",
        grandchildren[0].2
    );
    assert!(installs(&w)[0].2 < ended);
}

#[test]
fn what_an_exited_child_left_running_is_killed_before_the_next_step() {
    let w = StandIns::new();
    let run = w
        .ensure(&["alpha"])
        .arg("--json")
        .env("PENV_GUARD_STAND_IN_GRANDCHILD", "venv")
        .run()
        .ok();
    assert_eq!(run.status(), "installed", "{}", run.stderr);
    let grandchildren = w.intervals("grandchild", "--stand-in-hang");
    assert_eq!(grandchildren.len(), 1, "{grandchildren:?}");
    let install = installs(&w)[0];
    assert!(
        grandchildren[0].2 < install.1,
        "what `uv venv` left ran until {}, after the install began at {}",
        grandchildren[0].2,
        install.1
    );
}

#[test]
fn a_lock_file_replaced_while_waiting_is_not_taken() {
    let w = StandIns::new();
    let old = hold(&w.lock_path());
    let mut waiter = w.ensure(&["alpha"]).args(["--lock-timeout", "5"]).spawn();
    let mut stderr = BufReader::new(waiter.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for the penv lock"), "{line}");

    // The file the waiter waits on moves away; a newcomer's file takes its path and its lock.
    let aside = w.lock_path().with_extension("lock-old");
    if let Err(e) = std::fs::rename(w.lock_path(), &aside) {
        // The waiter's handle may refuse renaming (no FILE_SHARE_DELETE): then it cannot happen.
        assert_eq!(e.raw_os_error(), Some(32), "{e}");
        drop(old);
        assert!(waiter.wait().unwrap().success());
        return;
    }
    let newcomer = hold(&w.lock_path());
    drop(old);
    let status = waiter.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(
        status.code(),
        Some(75),
        "the waiter took the moved file's lock while the newcomer held the lock: {rest}"
    );
    assert!(
        installs(&w).is_empty(),
        "installed beside the lock's holder"
    );
    drop(newcomer);
}

#[test]
fn a_holder_record_of_a_dead_process_names_an_unknown_process() {
    let w = StandIns::new();
    let _held = hold(&w.lock_path());
    let mut gone = Command::new(exe())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(
        w.holder_path(),
        format!(r#"{{"pid": {pid}, "command": "pio run -e gone", "since_unix": 0}}"#),
    )
    .unwrap();
    let run = w
        .ensure(&["alpha"])
        .args(["--lock-timeout", "1"])
        .run()
        .code(75);
    assert!(
        run.stderr.contains("held by an unknown process"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("pio run -e gone"), "{}", run.stderr);
}
