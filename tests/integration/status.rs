use std::fs;

use crate::support::World;

fn status(w: &World, deps: &[&str]) -> serde_json::Value {
    status_with(w, deps, &[])
}

fn status_with(w: &World, deps: &[&str], extra: &[&std::ffi::OsStr]) -> serde_json::Value {
    let mut cmd = w.cmd("status").arg("--json").args(extra);
    for dep in deps {
        cmd = cmd.arg("--dep").arg(dep);
    }
    let run = cmd.run().ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn reason(report: &serde_json::Value) -> String {
    report["verdict"]["reason"]["kind"]
        .as_str()
        .unwrap_or("none")
        .to_owned()
}

#[test]
fn status_explains_each_miss_reason() {
    let w = World::new();
    assert_eq!(reason(&status(&w, &["alpha"])), "no_penv");

    w.ensure(&["alpha<2", "postpkg>=1.0"]).run().ok();
    let report = status(&w, &["alpha<2", "postpkg>=1.0"]);
    assert_eq!(report["verdict"]["result"], "hit");
    assert_eq!(report["state"]["condition"], "valid");
    assert_eq!(
        report["uv"]["recorded_version"]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("uv")
    );
    assert!(
        report["last_install"]["timings_ms"]["install"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let report = status(&w, &["alpha<2", "postpkg>=1.0", "single"]);
    assert_eq!(reason(&report), "deps_changed");
    assert_eq!(
        report["verdict"]["reason"]["added"],
        serde_json::json!(["single"])
    );

    let other_uv = w.dir.path().join("bin2/uv");
    fs::create_dir_all(other_uv.parent().unwrap()).unwrap();
    fs::copy(&w.shim, &other_uv).unwrap();
    let report = status_with(
        &w,
        &["alpha<2", "postpkg>=1.0"],
        &["--uv".as_ref(), other_uv.as_os_str()],
    );
    // Which uv would install does not change whether the penv satisfies the list.
    assert_eq!(report["verdict"]["result"], "hit");

    // Another spelling of the same interpreter (a symlink to it) is the same host Python;
    // another file is not.
    let python_link = w.dir.path().join("py/python3");
    fs::create_dir_all(python_link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(crate::support::host_python(), &python_link).unwrap();
    let report = status_with(
        &w,
        &["alpha<2", "postpkg>=1.0"],
        &["--python".as_ref(), python_link.as_os_str()],
    );
    assert_eq!(report["verdict"]["result"], "hit");
    let python_copy = w.dir.path().join("py/python3-copy");
    fs::copy(crate::support::host_python(), &python_copy).unwrap();
    let report = status_with(
        &w,
        &["alpha<2", "postpkg>=1.0"],
        &["--python".as_ref(), python_copy.as_os_str()],
    );
    assert_eq!(reason(&report), "host_python_changed");

    let state = w.state_path();
    let valid = fs::read_to_string(&state).unwrap();
    fs::write(&state, &valid[..20]).unwrap();
    assert_eq!(
        reason(&status(&w, &["alpha<2", "postpkg>=1.0"])),
        "corrupt_state"
    );
    let mut other_schema: serde_json::Value = serde_json::from_str(&valid).unwrap();
    other_schema["schema"] = serde_json::json!(7);
    fs::write(&state, other_schema.to_string()).unwrap();
    let report = status(&w, &["alpha<2", "postpkg>=1.0"]);
    assert_eq!(reason(&report), "unknown_schema");
    assert_eq!(report["state"]["condition"], "unknown_schema");
    fs::remove_file(&state).unwrap();
    assert_eq!(
        reason(&status(&w, &["alpha<2", "postpkg>=1.0"])),
        "no_state"
    );
    fs::write(&state, &valid).unwrap();
    assert_eq!(
        status(&w, &["alpha<2", "postpkg>=1.0"])["verdict"]["result"],
        "hit"
    );

    fs::write(w.site_packages().join("stray.py"), "").unwrap();
    let report = status(&w, &["alpha<2", "postpkg>=1.0"]);
    assert_eq!(reason(&report), "stamp_changed");
    let site_packages = w.site_packages();
    let relative = site_packages.strip_prefix(&w.penv).unwrap();
    assert_eq!(
        report["verdict"]["reason"]["parts"],
        serde_json::json!([relative.to_str().unwrap()])
    );

    // The interpreter now resolves to another file (a copy of the same Python).
    w.ensure(&["alpha<2", "postpkg>=1.0"]).run().ok();
    let copy = w.dir.path().join("copied-python3");
    fs::copy(crate::support::host_python(), &copy).unwrap();
    let link = w.penv.join("bin/python");
    let original = fs::read_link(&link).unwrap();
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&copy, &link).unwrap();
    let report = status(&w, &["alpha<2", "postpkg>=1.0"]);
    assert_eq!(reason(&report), "stamp_changed");
    assert_eq!(
        report["verdict"]["reason"]["parts"],
        serde_json::json!(["bin/python"])
    );
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&original, &link).unwrap();

    // Same inputs but a state written for another OS (or schema): the fingerprint differs only there.
    let state_text = fs::read_to_string(&state).unwrap();
    let mut foreign: serde_json::Value = serde_json::from_str(&state_text).unwrap();
    foreign["fingerprint"] = serde_json::json!("0".repeat(64));
    foreign["request"]["os"] = serde_json::json!("plan9");
    fs::write(&state, foreign.to_string()).unwrap();
    assert_eq!(
        reason(&status(&w, &["alpha<2", "postpkg>=1.0"])),
        "platform_changed"
    );
    fs::write(&state, state_text).unwrap();

    let cfg = w.penv.join("pyvenv.cfg");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, text.replace("version_info = 3.", "version_info = 2.")).unwrap();
    let report = status(&w, &["alpha<2", "postpkg>=1.0"]);
    assert_eq!(reason(&report), "stamp_changed");
    assert_eq!(
        report["verdict"]["reason"]["parts"],
        serde_json::json!(["pyvenv.cfg"])
    );
    assert!(
        report["hints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().contains("recreate")),
        "{report}"
    );
}

#[test]
fn status_dependency_table_uses_pep_440() {
    let w = World::new();
    w.ensure(&["alpha<2", "postpkg>=1.0", "Odd_Name"])
        .run()
        .ok();
    let report = status(&w, &["alpha>=2", "postpkg>=1.0", "Odd_Name"]);
    let deps = report["dependencies"].as_array().unwrap();
    let by_name = |n: &str| deps.iter().find(|d| d["name"] == n).unwrap().clone();
    assert_eq!(by_name("postpkg")["installed"], "1.0.post1");
    assert_eq!(
        by_name("postpkg")["satisfied"],
        true,
        "1.0.post1 satisfies >=1.0"
    );
    assert_eq!(by_name("alpha")["installed"], "1.0");
    assert_eq!(by_name("alpha")["satisfied"], false);
    assert_eq!(
        by_name("odd-name")["modules"],
        serde_json::json!(["oddimport"])
    );
    assert!(report["uv_cache"]["files"].as_u64().unwrap() > 0);
    // Human output names the same things, and status never installs.
    let human = w.cmd("status").args(["--dep", "alpha>=2"]).run().ok();
    assert!(human.stdout.contains("alpha>=2"), "{}", human.stdout);
    assert!(human.stdout.contains("NO"), "{}", human.stdout);
    assert_eq!(w.installs(), 1);
}

#[test]
fn status_reports_a_held_lock_with_its_holder_and_does_not_wait() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let file = w.hold_lock(Some(&format!(
        r#"{{"pid": {}, "command": "esphome compile kitchen.yaml", "since_unix": 1}}"#,
        std::process::id()
    )));
    let report = status(&w, &["alpha"]);
    assert_eq!(report["lock"]["state"], "held");
    assert_eq!(report["lock"]["holder"]["pid"], std::process::id());
    let human = w.cmd("status").args(["--dep", "alpha"]).run().ok();
    let held_by = format!("held by pid {}", std::process::id());
    assert!(human.stdout.contains(&held_by), "{}", human.stdout);
    drop(file);
    assert_eq!(status(&w, &["alpha"])["lock"]["state"], "free");
}

#[test]
fn status_offline_hint_agrees_with_what_ensure_treats_as_offline() {
    let w = World::new();
    let hints = |value: &str| {
        let run = w
            .cmd("status")
            .arg("--json")
            .env("PLATFORMIO_OFFLINE", value)
            .run()
            .ok();
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        report["hints"].to_string()
    };
    assert!(hints("yes").contains("PLATFORMIO_OFFLINE"));
    // `ensure` goes online for these values, so status must not claim otherwise.
    assert!(!hints("no").contains("PLATFORMIO_OFFLINE"));
    assert!(!hints("false").contains("PLATFORMIO_OFFLINE"));
}

#[test]
fn status_bad_input_exits_2() {
    let w = World::new();
    w.cmd("status").args(["--dep", "((("]).run().code(2);
    let file = w.dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    let run = w.cmd("status").arg("--penv").arg(&file).run().code(2);
    assert!(run.stderr.contains("a-file"), "{}", run.stderr);
}

#[test]
fn status_shows_the_miss_history_and_hits_write_none() {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    w.ensure(&["alpha<2"]).run().ok();
    fs::write(w.site_packages().join("stray.py"), "").unwrap();
    w.ensure(&["alpha<2"]).run().ok();
    let report = status(&w, &["alpha<2"]);
    let history = report["history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        2,
        "two misses, the hit wrote nothing: {report}"
    );
    assert_eq!(history[0]["kind"], "no_penv");
    assert_eq!(history[1]["kind"], "stamp_changed");
    assert_eq!(history[1]["status"], "installed");
    assert!(history[1]["timings_ms"]["install"].as_f64().unwrap() > 0.0);
    assert!(history[1]["command"].as_str().unwrap().contains("ensure"));
    let misses = report["misses"].as_str().unwrap();
    assert!(
        misses.starts_with("2 misses in the last 24 h: "),
        "{misses}"
    );
    assert!(
        misses.contains("1× changed behind penv-guard's back"),
        "{misses}"
    );
    let human = w.cmd("status").args(["--dep", "alpha<2"]).run().ok();
    assert!(
        human.stdout.contains("misses        2 misses"),
        "{}",
        human.stdout
    );
}

#[test]
fn status_reads_for_people_phases_in_run_order_outcomes_in_words_and_an_aligned_table() {
    let w = World::new();
    let wheel = fs::read_dir(&w.wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("alpha-1.0")
        })
        .unwrap();
    let url = format!("alpha @ file://{}", wheel.display());
    assert!(url.len() > 40, "{url}");
    w.ensure(&[&url, "postpkg"]).run().ok();
    let human = w
        .cmd("status")
        .args(["--dep", &url, "--dep", "postpkg"])
        .run()
        .ok();
    let out = &human.stdout;
    let last = out
        .lines()
        .find_map(|l| l.strip_prefix("last install  "))
        .unwrap_or_else(|| panic!("{out}"));
    // The order the phases ran in, with the total last.
    let order: Vec<&str> = last
        .split([',', ';'])
        .map(|p| p.trim().split(' ').next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "check", "lock", "venv", "install", "RECORD", "validate", "record", "total"
        ],
        "{out}"
    );
    // The history line says what happened in words, with no internal code.
    let miss = out
        .lines()
        .skip_while(|l| !l.starts_with("misses "))
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        miss.trim_start().starts_with("installed in ")
            && miss.contains(" (the penv does not exist): "),
        "{miss}"
    );
    assert!(!out.contains("no_penv"), "{out}");
    // The long URL does not push the other columns out of line.
    let header = out.lines().find(|l| l.starts_with("requirement ")).unwrap();
    let column = header.find("installed").unwrap();
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("requirement "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(
        rows.contains(&url.as_str()),
        "the URL whole on its own line: {out}"
    );
    for row in rows.iter().filter(|r| **r != url) {
        assert_eq!(row.find("1.0"), Some(column), "{out}");
    }
}

#[test]
fn waiters_that_find_the_work_done_check_as_a_hit_does_and_add_no_history() {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    // Past the racy window, so that the state, once back, is a plain hit.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let aside = w.dir.path().join("state-aside.json");
    fs::rename(w.state_path(), &aside).unwrap();
    let held = w.hold_lock(None);
    // Each misses (no state) and waits for the lock, as racers wait for an installer.
    let children: Vec<std::process::Child> = (0..6)
        .map(|_| w.ensure(&["alpha<2"]).arg("--json").spawn())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The "installer" records its state and lets the lock go.
    fs::rename(&aside, w.state_path()).unwrap();
    drop(held);
    for child in children {
        let run = crate::support::Run::from(child.wait_with_output().unwrap()).ok();
        assert_eq!(run.status(), "hit", "{}", run.stderr);
    }
    assert_eq!(w.installs(), 1);
    // Each waiter let the lock go at once and checked without it, as a hit does: none is a
    // miss that took the lock (each used to check under it, one after another, and write a
    // history record).
    let history = status(&w, &["alpha<2"])["history"].clone();
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["installed"], "{history}");
}
