//! End to end with the real PlatformIO Core (`scripts/setup --pio`): a core dir holding a local
//! dev-platform named espressif32 (tests/fixtures/pio/platform) whose builder/penv_setup.py is
//! pioarduino's own upstream file, called from `configure_default_packages` as pioarduino does;
//! `penv-guard platform install` hooks it. A fixture project is built with `pio run`, offline.
//! Each test has its own PLATFORMIO_CORE_DIR holding the platform under `platforms/`,
//! `packages/tool-scons` (a symlink to .tools/pio-core), wheels from a local directory, and the
//! uv logging shim as penv-guard's uv. penv-guard is found on PATH, as users install it.
//!
//! The platform appends one JSON line per penv setup to a log: `{"source": "fixture", "process",
//! "elapsed_ms", "python", "esptool", "certifi", "calls": [{argv, status, ms}], "connects"}`,
//! where `calls` are penv_setup's subprocesses and `connects` every `socket.create_connection`
//! (answered by the fixture: $PENV_GUARD_FIXTURE_NETWORK, "down" unless a test says otherwise).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::penv_setup::tools_python;
use crate::pio_world::Pio;
use crate::platform::upstream_head;
use crate::support::{Run, editable_project, succeed};

#[test]
fn pio_hooked_platform_installs_once_then_warm_runs_start_no_uv_python_or_connection() {
    let p = Pio::new();
    let original = p.penv_setup();
    assert_eq!(original, fs::read(upstream_head()).unwrap());
    p.platform_cmd("install");
    assert_ne!(p.penv_setup(), original, "hooked");

    let first = p.run(&[]).ok();
    // pio itself configures the platform twice, the SCons child once: three penv setups.
    assert_eq!(
        first.paths(),
        ["guard", "guard", "guard"],
        "{:#?}",
        first.log
    );
    assert_eq!(first.statuses()[0], "installed", "{:#?}", first.log);
    assert_eq!(
        first.connects(),
        0,
        "even the install probes nothing: {:#?}",
        first.log
    );
    let state: Value =
        serde_json::from_str(&fs::read_to_string(p.w.state_path()).unwrap()).unwrap();
    assert_eq!(
        state["installed"]["alpha"], "2.0",
        "alpha>=1.0: the newest wheel"
    );
    assert_eq!(state["installed"]["certifi"], "2025.8.3");
    assert_eq!(p.w.installs(), 1, "{}", p.uv_log());
    // certifi's bundle came from penv-guard's report, not from a Python subprocess.
    let bundle = p.w.site_packages().join("certifi/cacert.pem");
    for setup in first.setups() {
        assert_eq!(setup["certifi"], bundle.to_str().unwrap(), "{setup}");
        assert_eq!(
            setup["python"],
            p.w.penv.join("bin/python").to_str().unwrap()
        );
        assert_eq!(
            setup["esptool"],
            p.w.penv.join("bin/esptool").to_str().unwrap()
        );
    }
    assert!(p.build_dir("first").join("firmware.bin").is_file());

    // The run right after the install is all hits: no re-check, no uv, no Python.
    let uv_before = p.uv_log();
    let second = p.run(&[]).ok();
    assert!(
        second.statuses().iter().all(|s| s == "hit"),
        "{:#?}",
        second.log
    );
    // penv_setup.py itself starts only penv-guard and opens no connection.
    assert_eq!(
        second.programs(),
        ["penv-guard", "penv-guard", "penv-guard"],
        "{:#?}",
        second.log
    );
    assert_eq!(second.connects(), 0, "{:#?}", second.log);
    let state_before = fs::read(p.w.state_path()).unwrap();
    let mut warm = Vec::new();
    for _ in 0..2 {
        let run = p.run(&[]).ok();
        assert_eq!(run.statuses(), ["hit", "hit", "hit"], "{:#?}", run.log);
        assert_eq!(
            run.programs(),
            ["penv-guard", "penv-guard", "penv-guard"],
            "penv_setup.py starts no Python and no uv: {:#?}",
            run.log
        );
        assert_eq!(run.connects(), 0, "no connection: {:#?}", run.log);
        warm.push(run.penv_ms());
    }
    assert_eq!(p.uv_log(), uv_before, "warm runs start no uv");
    assert_eq!(p.w.installs(), 1);
    assert_eq!(
        fs::read(p.w.state_path()).unwrap(),
        state_before,
        "a hit writes nothing"
    );
    for (ensure_ms, setup_ms) in &warm {
        eprintln!(
            "penv time per warm `pio run` (debug binary): ensure calls {ensure_ms:.1} ms, whole penv setups {setup_ms:.1} ms"
        );
    }

    p.platform_cmd("remove");
    assert_eq!(p.penv_setup(), original, "restored byte for byte");
}

#[test]
fn pio_clean_removes_the_env_and_size_reports_zero() {
    let p = Pio::hooked();
    p.run(&["-e", "first", "-e", "second"]).ok();
    for env in ["first", "second"] {
        let dir = p.build_dir(env);
        assert!(dir.join("firmware.elf").is_file(), "{env}");
        assert!(
            fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".sconsign")),
            "{env}: SCons left its .sconsign*.dblite"
        );
    }
    // The size hook (pre: extra script) recorded the sizes when SCons exited.
    assert!(
        p.project.join(".pio/.penv-guard/build-size.json").is_file(),
        "penv_guard_size.py wrote the cache"
    );
    let built = p.size_json("first");
    assert!(built["apparent_bytes"].as_u64().unwrap() > 0, "{built}");

    p.run(&["-e", "first", "-t", "clean"]).ok();
    assert!(!p.build_dir("first").exists(), "clean removes the env dir");
    let cleaned = p.size_json("first");
    assert_eq!(cleaned["apparent_bytes"], 0, "{cleaned}");
    assert_eq!(cleaned["exists"], false, "{cleaned}");
    let other = p.size_json("second");
    assert!(other["apparent_bytes"].as_u64().unwrap() > 0, "{other}");
}

#[test]
fn pio_rebuilds_a_removed_penv() {
    let p = Pio::hooked();
    p.run(&[]).ok();
    assert_eq!(p.w.installs(), 1);
    fs::remove_dir_all(&p.w.penv).unwrap();
    let run = p.run(&[]).ok();
    assert_eq!(run.statuses()[0], "installed", "{:#?}", run.log);
    assert_eq!(run.paths(), ["guard", "guard", "guard"]);
    assert!(p.w.penv.join("bin/python").exists());
    assert!(p.w.state_path().is_file());
    assert!(p.w.site_packages().join("alpha/__init__.py").is_file());
    assert_eq!(p.w.installs(), 2, "{}", p.uv_log());
}

#[test]
fn pio_unhooked_or_without_the_binary_runs_upstreams_code_then_the_hook_adopts_its_penv() {
    let mut p = Pio::new();
    // Upstream's own install path needs uv inside the penv (`penv/bin/uv pip install`).
    succeed(
        Command::new(crate::support::real_uv())
            .env("UV_CACHE_DIR", &p.w.cache)
            .args(["venv", "--quiet", "--python"])
            .arg(tools_python())
            .arg(&p.w.penv),
    );
    std::os::unix::fs::symlink(&p.w.shim, p.w.penv.join("bin/uv")).unwrap();
    p.network = "up";
    let run = p.run(&[]).ok();
    assert_eq!(
        run.paths(),
        ["upstream", "upstream", "upstream"],
        "{:#?}",
        run.log
    );
    assert!(
        run.connects() > 0,
        "upstream probes at load: {:#?}",
        run.log
    );
    assert!(
        run.programs().iter().any(|a| a == "python"),
        "{:#?}",
        run.log
    );
    assert!(
        p.w.site_packages().join("alpha/__init__.py").is_file(),
        "upstream installed"
    );
    let bundle = p.w.site_packages().join("certifi/cacert.pem");
    assert_eq!(run.setups()[0]["certifi"], bundle.to_str().unwrap());
    assert!(!p.w.state_path().exists(), "penv-guard never ran");

    // Hooked, but the binary is not installed: upstream's code, unchanged.
    p.platform_cmd("install");
    p.hide_binary = true;
    let run = p.run(&[]).ok();
    assert_eq!(
        run.paths(),
        ["upstream", "upstream", "upstream"],
        "{:#?}",
        run.log
    );
    assert!(!p.w.state_path().exists());

    // With the binary on PATH, penv-guard takes over the penv upstream's code made.
    p.hide_binary = false;
    let run = p.run(&[]).ok();
    assert_eq!(run.paths(), ["guard", "guard", "guard"], "{:#?}", run.log);
    assert_eq!(run.statuses()[0], "installed");
    assert!(p.w.state_path().is_file());
}

#[test]
fn pio_installs_esptool_editable_from_the_platform_package() {
    let p = Pio::hooked();
    // tool-esptoolpy as the platform would have installed it (optional in platform.json, so
    // PlatformIO never fetches it): an editable project plus PlatformIO's package files.
    let made = editable_project(p.w.dir.path(), "esptool", "5.6.0", "VERSION = '5.6.0'");
    let tool = p.core.join("packages/tool-esptoolpy");
    fs::rename(&made, &tool).unwrap();
    fs::write(
        tool.join("package.json"),
        r#"{"name": "tool-esptoolpy", "version": "5.6.0"}"#,
    )
    .unwrap();
    fs::write(
        tool.join(".piopm"),
        r#"{"type": "tool", "name": "tool-esptoolpy", "version": "5.6.0", "spec": {"owner": "penv-guard", "id": null, "name": "tool-esptoolpy", "requirements": null, "uri": null}}"#,
    )
    .unwrap();

    let run = p.run(&[]).ok();
    assert_eq!(run.paths(), ["guard", "guard", "guard"], "{:#?}", run.log);
    for call in run.ensure_calls() {
        let argv: Vec<&str> = call["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let at = argv
            .iter()
            .position(|a| *a == "--esptool-dir")
            .expect("--esptool-dir");
        assert_eq!(Path::new(argv[at + 1]), tool, "{argv:?}");
    }
    let state: Value =
        serde_json::from_str(&fs::read_to_string(p.w.state_path()).unwrap()).unwrap();
    assert_eq!(state["installed"]["esptool"], "5.6.0");
    p.run(&[]).ok();
    let warm = p.run(&[]).ok();
    assert_eq!(warm.statuses(), ["hit", "hit", "hit"], "{:#?}", warm.log);
    assert_eq!(p.w.installs(), 1, "{}", p.uv_log());
}

#[test]
fn pio_fails_with_penv_guards_message_when_the_install_fails() {
    let mut p = Pio::hooked();
    // With network (as upstream decides it), a failed install fails the build, as upstream's
    // failed dependency install does.
    p.network = "up";
    let output = p
        .command(&["run"])
        .env(
            "PENV_GUARD_FIXTURE_DEPS",
            r#"{"alpha": ">=1.0", "no-such-dist": ">=1"}"#,
        )
        .output()
        .unwrap();
    let run = Run::from(output);
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(
        all.matches("penv-guard: error: ").count(),
        1,
        "penv-guard's one line, once: {all}"
    );
    assert!(
        all.contains("no-such-dist"),
        "uv's reason reaches the user: {all}"
    );
    assert!(
        !p.w.state_path().exists(),
        "no state after a failed install"
    );
    assert!(!p.build_dir("first").join("firmware.elf").exists());
}

#[test]
fn pio_lock_timeout_fails_the_build_naming_the_lock() {
    let mut p = Pio::hooked();
    p.network = "up";
    let lock = p.w.hold_lock(None);
    let output = p
        .command(&["run"])
        .env("PENV_GUARD_LOCK_TIMEOUT", "1")
        .output()
        .unwrap();
    drop(lock);
    let run = Run::from(output);
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("penv-guard: error: timed out"), "{all}");
    assert!(all.contains("PENV_GUARD_LOCK_TIMEOUT"), "{all}");
}
