use std::time::{Duration, Instant};

use crate::support::World;

fn hold_lock(w: &World) -> std::fs::File {
    w.hold_lock(Some(&format!(
        r#"{{"pid": {}, "command": "pio run -e esp32dev", "since_unix": 0}}"#,
        std::process::id()
    )))
}

#[test]
fn held_lock_prints_a_wait_line_then_times_out_with_75() {
    let w = World::new();
    let _held = hold_lock(&w);
    let start = Instant::now();
    let run = w
        .ensure(&["alpha"])
        .arg("--lock-timeout")
        .arg("1")
        .run()
        .code(75);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "waited {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "exit 75 within 1.5 s, took {elapsed:?}"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines[0].contains("waiting for the penv lock"),
        "{}",
        run.stderr
    );
    let pid = format!("pid {}", std::process::id());
    assert!(lines[0].contains(&pid), "{}", run.stderr);
    assert!(run.stderr.contains(".penv-guard.lock"), "{}", run.stderr);
    assert!(
        run.stderr.contains("PENV_GUARD_LOCK_TIMEOUT"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("pio run -e esp32dev"), "{}", run.stderr);
    assert_eq!(w.installs(), 0, "never installs without the lock");
}

#[test]
fn lock_timeout_zero_tries_once_and_env_var_sets_it() {
    let w = World::new();
    let _held = hold_lock(&w);
    w.ensure(&["alpha"])
        .env("PENV_GUARD_LOCK_TIMEOUT", "0")
        .run()
        .code(75);
}

#[test]
fn waiter_proceeds_once_the_holder_releases() {
    let w = World::new();
    let held = hold_lock(&w);
    let child = w.ensure(&["alpha"]).arg("--json").spawn();
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    let run = crate::support::Run::from(child.wait_with_output().unwrap()).ok();
    assert!(
        run.stderr.contains("waiting for the penv lock"),
        "{}",
        run.stderr
    );
    assert_eq!(run.status(), "installed");
}

#[test]
fn a_hit_does_not_wait_for_the_lock() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    w.ensure(&["alpha"]).run().ok();
    let _held = hold_lock(&w);
    let run = w
        .ensure(&["alpha"])
        .arg("--lock-timeout")
        .arg("30")
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.status(), "hit");
    assert!(!run.stderr.contains("waiting"), "{}", run.stderr);
}
