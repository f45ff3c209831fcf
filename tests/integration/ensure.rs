use std::fs;

use crate::support::{Server, Wheel, World, tool_wheels};

#[test]
fn first_run_installs_and_validates_then_second_run_is_a_hit_without_uv() {
    let w = World::new();
    let first = w
        .ensure(&["alpha>=1,<2", "Odd_Name", "postpkg", "single"])
        .arg("--json")
        .run()
        .ok();
    let report = first.json();
    assert_eq!(report["status"], "installed");
    assert_eq!(report["installed"]["alpha"], "1.0");
    assert_eq!(report["installed"]["odd-name"], "3.1");
    // The import name comes from RECORD; top_level.txt's unimportable `wrapper` is not used.
    assert_eq!(
        report["modules"]["odd-name"],
        serde_json::json!(["oddimport"])
    );
    assert_eq!(
        report["modules"]["single"],
        serde_json::json!(["single_mod"])
    );
    assert_eq!(w.installs(), 1);
    assert!(w.state_path().is_file());

    // The run right after the install is already a hit: the racy window is the filesystem's
    // timestamp granularity (milliseconds here), not two seconds.
    let second = w
        .ensure(&["alpha>=1,<2", "Odd_Name", "postpkg", "single"])
        .arg("--json")
        .run()
        .ok();
    assert_eq!(second.status(), "hit");
    // ...and so is every later one: no uv, nothing printed.
    let third = w
        .ensure(&["alpha>=1,<2", "Odd_Name", "postpkg", "single"])
        .run()
        .ok();
    assert_eq!(third.stdout, "");
    assert_eq!(third.stderr, "");
    let calls_before = std::fs::read_to_string(&w.uv_log).unwrap();
    let fourth = w
        .ensure(&["single", "postpkg", "odd-name", "alpha<2,>=1"])
        .arg("--json")
        .run()
        .ok();
    assert_eq!(
        fourth.status(),
        "hit",
        "input order and spelling do not matter"
    );
    assert_eq!(
        std::fs::read_to_string(&w.uv_log).unwrap(),
        calls_before,
        "a hit runs no uv"
    );
    assert_eq!(w.installs(), 1);
}

#[test]
fn changed_dependency_list_is_a_miss_that_installs() {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    let run = w.ensure(&["alpha>=2"]).arg("--json").arg("-v").run().ok();
    assert_eq!(run.status(), "installed");
    assert_eq!(run.json()["installed"]["alpha"], "2.0");
    assert!(
        run.stderr.contains("dependency list changed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("alpha>=2"), "{}", run.stderr);
    assert_eq!(w.installs(), 2);
}

#[test]
fn recreated_penv_is_a_miss() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let state = fs::read(w.state_path()).unwrap();
    // Recreate the venv behind our back, keeping the old state file.
    crate::support::succeed(
        std::process::Command::new(crate::support::real_uv())
            .env("UV_CACHE_DIR", &w.cache)
            .args(["venv", "--clear", "--python"])
            .arg(crate::support::host_python())
            .arg(&w.penv),
    );
    fs::write(w.state_path(), state).unwrap();
    let run = w.ensure(&["alpha"]).arg("--json").arg("-v").run().ok();
    assert_eq!(run.status(), "installed");
    assert!(
        run.stderr.contains("changed behind penv-guard's back"),
        "{}",
        run.stderr
    );
    assert_eq!(w.installs(), 2);
}

#[test]
fn package_uninstalled_behind_our_back_is_repaired() {
    let w = World::new();
    w.ensure(&["alpha", "postpkg"]).run().ok();
    crate::support::succeed(
        std::process::Command::new(crate::support::real_uv())
            .env("UV_CACHE_DIR", &w.cache)
            .args(["pip", "uninstall", "--python"])
            .arg(w.penv.join("bin/python"))
            .arg("postpkg"),
    );
    let run = w
        .ensure(&["alpha", "postpkg"])
        .arg("--json")
        .arg("-v")
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    assert!(run.stderr.contains("site-packages"), "{}", run.stderr);
    assert!(w.site_packages().join("postpkg/__init__.py").is_file());
}

#[test]
fn post_release_satisfies_lower_bound_without_reinstall() {
    let w = World::new();
    w.ensure(&["postpkg>=1.0"]).run().ok();
    w.ensure(&["postpkg>=1.0"]).run().ok();
    let run = w.ensure(&["postpkg>=1.0"]).arg("--json").run().ok();
    assert_eq!(run.status(), "hit");
    assert_eq!(run.json()["installed"]["postpkg"], "1.0.post1");
    assert_eq!(w.installs(), 1);
}

#[test]
fn failing_import_exits_3_and_writes_no_state() {
    let w = World::new();
    let run = w.ensure(&["alpha", "broken"]).run().code(3);
    assert!(run.stderr.contains("import broken"), "{}", run.stderr);
    assert!(run.stderr.contains("broken on purpose"), "{}", run.stderr);
    assert!(!w.state_path().exists());
    // Still no state next time: the failure is not cached as success.
    w.ensure(&["alpha", "broken"]).run().code(3);
    assert!(!w.state_path().exists());
}

fn edit_state(w: &World, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(w.state_path()).unwrap()).unwrap();
    edit(state["request"].as_object_mut().unwrap());
    fs::write(w.state_path(), serde_json::to_vec_pretty(&state).unwrap()).unwrap();
}

#[test]
fn a_bad_dependency_list_is_exit_2_even_when_the_penv_is_warm() {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    assert_eq!(
        w.ensure(&["alpha<2"]).arg("--json").run().ok().status(),
        "hit"
    );
    let run = w.ensure(&["alpha<2", "beta >>> 1"]).run().code(2);
    assert!(run.stderr.contains("beta >>> 1"), "{}", run.stderr);
    let json = w.dir.path().join("deps.json");
    fs::write(&json, "[\"alpha\"]").unwrap();
    let run = w.cmd("ensure").arg("--deps-json").arg(&json).run().code(2);
    assert!(run.stderr.contains("deps.json"), "{}", run.stderr);
    assert_eq!(w.installs(), 1);
}

#[test]
fn an_unchanged_input_is_not_parsed_again_on_a_hit() {
    let w = World::new();
    let stdin_json = |w: &World| {
        w.cmd("ensure")
            .args(["--deps-json", "-", "--json"])
            .run_with_stdin(r#"{"alpha": "<2", "single": ""}"#)
    };
    assert_eq!(stdin_json(&w).ok().status(), "installed");
    assert_eq!(stdin_json(&w).ok().status(), "hit");
    // The digest of the input as given decides: a state whose parsed list says otherwise but
    // whose digest matches is a hit, so the list was not parsed.
    edit_state(&w, |request| {
        request.insert("deps".into(), serde_json::json!(["something-else"]));
    });
    assert_eq!(stdin_json(&w).ok().status(), "hit");
    assert_eq!(w.installs(), 1);
}

#[test]
fn a_state_recorded_by_another_binary_has_its_list_parsed_again() {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    edit_state(&w, |request| {
        request.insert("deps".into(), serde_json::json!(["something-else"]));
    });
    assert_eq!(
        w.ensure(&["alpha<2"]).arg("--json").run().ok().status(),
        "hit"
    );
    // A rebuilt or upgraded penv-guard may parse the same bytes differently.
    let copy = w.dir.path().join("penv-guard-copy");
    fs::copy(env!("CARGO_BIN_EXE_penv-guard"), &copy).unwrap();
    let run = w
        .cmd_of(&copy, "ensure")
        .args(["--dep", "alpha<2", "--json", "-v"])
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    assert!(
        run.stderr.contains("dependency list changed"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_url_requirement_with_a_variable_is_parsed_again_on_every_run() {
    // pep508 expands `${VAR}` in URLs: the same bytes name another wheel when VAR changes.
    let w = World::new();
    let wheel = |version: &str| w.wheels.join(format!("alpha-{version}-py3-none-any.whl"));
    assert!(wheel("1.0").is_file() && wheel("2.0").is_file());
    let dep = "alpha @ file://${PENV_GUARD_TEST_WHEEL}";
    let run = |version: &str| {
        w.ensure(&[dep])
            .arg("--json")
            .env("PENV_GUARD_TEST_WHEEL", wheel(version))
            .run()
            .ok()
    };
    assert_eq!(run("1.0").json()["installed"]["alpha"], "1.0");
    assert_eq!(run("1.0").status(), "hit");
    let changed = run("2.0");
    assert_eq!(changed.status(), "installed");
    assert_eq!(changed.json()["installed"]["alpha"], "2.0");
}

#[test]
fn a_state_recorded_without_an_input_digest_compares_the_parsed_list() {
    let w = World::new();
    w.ensure(&["alpha<2"]).run().ok();
    edit_state(&w, |request| {
        assert!(request.remove("deps_input").unwrap().is_string());
    });
    assert_eq!(
        w.ensure(&["alpha<2"]).arg("--json").run().ok().status(),
        "hit"
    );
    let run = w.ensure(&["alpha>=2"]).arg("--json").run().ok();
    assert_eq!(run.status(), "installed");
    assert_eq!(w.installs(), 2);
}

#[test]
fn corrupt_state_files_are_misses_not_crashes() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let valid = fs::read_to_string(w.state_path()).unwrap();
    let edited = |field: &str, value: serde_json::Value| {
        let mut state: serde_json::Value = serde_json::from_str(&valid).unwrap();
        state[field] = value;
        state.to_string()
    };
    for (label, content) in [
        ("empty", String::new()),
        ("truncated", valid[..valid.len() / 2].to_owned()),
        ("not json", "\u{0}\u{1}garbage".to_owned()),
        ("unknown schema", edited("schema", serde_json::json!(999))),
        // A hit reads every field with its type, also those it neither compares nor reports.
        ("wrong types", edited("installed", serde_json::json!([1]))),
        (
            "wrong marker types",
            edited("marker_env", serde_json::json!(5)),
        ),
        (
            "wrong timing types",
            edited("timings_ms", serde_json::json!({"x": "y"})),
        ),
        ("missing timings", {
            let mut state: serde_json::Value = serde_json::from_str(&valid).unwrap();
            state.as_object_mut().unwrap().remove("timings_ms");
            state.to_string()
        }),
    ] {
        fs::write(w.state_path(), &content).unwrap();
        let run = w.ensure(&["alpha"]).arg("--json").arg("-v").run().ok();
        assert_eq!(run.status(), "installed", "{label}");
        assert!(run.stderr.contains("miss:"), "{label}: {}", run.stderr);
    }
}

#[test]
fn offline_with_local_wheels_succeeds_and_without_them_exits_4() {
    let w = World::new();
    let run = w
        .ensure(&["alpha", "needs-alpha"])
        .arg("--offline")
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    assert!(w.uv_calls("--offline") >= 1, "uv was told to stay offline");

    let run = w
        .ensure(&["not-available-anywhere"])
        .env("PLATFORMIO_OFFLINE", "1")
        .run()
        .code(4);
    assert!(run.stderr.contains("offline"), "{}", run.stderr);
    assert!(!w.state_path().exists());
}

#[test]
fn offline_installs_what_the_uv_cache_already_holds() {
    let w = World::new();
    let server = Server::serve(&w.wheels);
    let url = format!("{},{}", server.url, tool_wheels().display());
    w.ensure(&["alpha<2"]).env("UV_FIND_LINKS", &url).run().ok();
    drop(server);
    // A fresh penv, the same uv cache, the package source gone: only the cache can satisfy it.
    let w2 = World::new();
    let run = w2
        .ensure(&["alpha<2"])
        .arg("--uv-cache-dir")
        .arg(&w.cache)
        .env("UV_FIND_LINKS", &url)
        .env("PLATFORMIO_OFFLINE", "1")
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.json()["installed"]["alpha"], "1.0");
    assert!(w2.uv_calls("--offline") >= 1);
}

#[test]
fn url_requirement_to_a_local_wheel_installs() {
    let w = World::new();
    let wheel = Wheel::new("urlpkg", "0.5")
        .module("urlpkg_mod", "")
        .build(&w.dir.path().join("elsewhere"));
    let url = format!("urlpkg @ file://{}", wheel.display());
    let run = w.ensure(&[&url]).arg("--json").run().ok();
    assert_eq!(run.json()["installed"]["urlpkg"], "0.5");
    assert_eq!(
        run.json()["modules"]["urlpkg"],
        serde_json::json!(["urlpkg_mod"])
    );
}

#[test]
fn deps_json_like_pioarduino_python_deps() {
    let w = World::new();
    let json = w.dir.path().join("deps.json");
    fs::write(
        &json,
        r#"{"alpha": ">=1.0,<2", "postpkg": ">=1.0", "Odd-Name": ""}"#,
    )
    .unwrap();
    let run = w
        .cmd("ensure")
        .arg("--deps-json")
        .arg(&json)
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.json()["installed"]["postpkg"], "1.0.post1");
    let req = w.dir.path().join("requirements.txt");
    fs::write(
        &req,
        "# same list\nalpha<2,>=1.0\npostpkg >= 1.0  # post release\n\nodd_name\n",
    )
    .unwrap();
    w.cmd("ensure").arg("-r").arg(&req).run().ok();
    let run = w.cmd("ensure").arg("-r").arg(&req).arg("--json").run().ok();
    assert_eq!(
        run.status(),
        "hit",
        "the same list from a requirements file is the same fingerprint"
    );
}

#[test]
fn transitive_requirements_are_installed_and_validated() {
    let w = World::new();
    let run = w.ensure(&["needs-alpha"]).arg("--json").run().ok();
    assert_eq!(run.json()["installed"]["needs-alpha"], "1.0");
    assert!(w.site_packages().join("alpha/__init__.py").is_file());
}

#[test]
fn verify_reinstalls_and_validates_even_on_a_hit() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let run = w
        .ensure(&["alpha"])
        .arg("--verify")
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    assert_eq!(w.installs(), 2);
}

#[test]
fn fingerprint_is_stable_and_matches_the_state() {
    let w = World::new();
    let before = w.cmd("fingerprint").arg("--dep").arg("alpha").run().ok();
    let fp = before.stdout.trim().to_owned();
    assert_eq!(fp.len(), 64);
    let run = w.ensure(&["alpha"]).arg("--json").run().ok();
    assert_eq!(
        run.json()["fingerprint"],
        fp.as_str(),
        "the CI key predicts the penv's fingerprint"
    );
    let after = w.cmd("fingerprint").arg("--dep").arg("alpha").run().ok();
    assert_eq!(after.stdout.trim(), fp);
    let other = w.cmd("fingerprint").arg("--dep").arg("alpha>=1").run().ok();
    assert_ne!(other.stdout.trim(), fp);
}

#[test]
fn python_version_mismatch_recreates_the_penv() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    let cfg = w.penv.join("pyvenv.cfg");
    let text = fs::read_to_string(&cfg).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("version_info = "))
        .unwrap()
        .to_owned();
    fs::write(&cfg, text.replace(&version, "2.7.18")).unwrap();
    let run = w.ensure(&["alpha"]).arg("-v").arg("--json").run().ok();
    assert!(run.stderr.contains("creating the penv"), "{}", run.stderr);
    assert_eq!(run.json()["python_version"], version.as_str());
    assert!(
        w.lock_path().is_file(),
        "the lock lives beside the penv and survives recreation"
    );
    assert!(
        w.penv.join(".penv-guard.lock").is_file(),
        "the lock inside the penv (shared volumes) is kept when the venv is cleared"
    );
}

#[test]
fn esptool_editable_from_the_platform_dir_is_installed_checked_and_reported() {
    let w = World::new();
    let tool =
        crate::support::editable_project(w.dir.path(), "esptool", "5.6.0", "VERSION = '5.6.0'");
    let run = w
        .ensure(&["alpha"])
        .arg("--esptool-dir")
        .arg(&tool)
        .arg("--json")
        .run()
        .ok();
    let report = run.json();
    assert_eq!(report["installed"]["esptool"], "5.6.0");
    assert_eq!(report["modules"]["esptool"], serde_json::json!(["esptool"]));
    assert_eq!(
        report["facts"]["esptool_dir"],
        tool.canonicalize().unwrap().to_str().unwrap()
    );
    // A different esptool dir is a different fingerprint: a miss that reinstalls from it.
    let other = crate::support::editable_project(&w.dir.path().join("v2"), "esptool", "5.7.0", "");
    let run = w
        .ensure(&["alpha"])
        .arg("--esptool-dir")
        .arg(&other)
        .arg("--json")
        .run()
        .ok();
    assert_eq!(run.status(), "installed");
    assert_eq!(run.json()["installed"]["esptool"], "5.7.0");
}

#[test]
fn certifi_bundle_path_is_answered_from_record_without_python() {
    let w = World::new();
    Wheel::new("certifi", "2026.10.18")
        .module("certifi", "def where():\n    return __file__")
        .file("certifi/cacert.pem", "-----BEGIN CERTIFICATE-----")
        .build(&w.wheels);
    let run = w.ensure(&["certifi>=2025.8.3"]).arg("--json").run().ok();
    let bundle = w.site_packages().join("certifi/cacert.pem");
    assert_eq!(
        run.json()["facts"]["certifi_bundle"],
        bundle.to_str().unwrap()
    );
    w.ensure(&["certifi>=2025.8.3"]).run().ok();
    let hit = w.ensure(&["certifi>=2025.8.3"]).arg("--json").run().ok();
    assert_eq!(hit.status(), "hit");
    assert_eq!(
        hit.json()["facts"]["certifi_bundle"],
        bundle.to_str().unwrap()
    );
}

#[test]
fn regression_relative_uv_path_is_the_same_uv_as_its_absolute_path() {
    let w = World::new();
    w.ensure(&["alpha"]).run().ok();
    w.ensure(&["alpha"]).run().ok();
    let relative = w.shim.strip_prefix(w.dir.path()).unwrap();
    let run = w
        .ensure(&["alpha"])
        .arg("--uv")
        .arg(relative)
        .arg("--json")
        .run_in(w.dir.path())
        .ok();
    assert_eq!(run.status(), "hit", "{}", run.stderr);
}

#[test]
fn ensure_with_project_and_env_prints_the_cached_build_size_line() {
    let w = World::new();
    let project = w.dir.path().join("project");
    fs::create_dir_all(project.join(".pio/build/esp32dev")).unwrap();
    fs::write(
        project.join("platformio.ini"),
        "[env:esp32dev]\nplatform = x\n",
    )
    .unwrap();
    fs::write(
        project.join(".pio/build/esp32dev/firmware.bin"),
        vec![0u8; 3 * 1024 * 1024],
    )
    .unwrap();
    let size = std::process::Command::new(crate::support::BIN)
        .args(["size", "--json", "--project-dir"])
        .arg(&project)
        .output()
        .unwrap();
    assert!(size.status.success());
    let run = w
        .ensure(&["alpha"])
        .arg("--project-dir")
        .arg(&project)
        .args(["--env", "esp32dev"])
        .run()
        .ok();
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("esp32dev"))
        .unwrap_or_else(|| {
            panic!("no build size line: {}", run.stderr);
        });
    assert!(line.contains("3.0 MiB"), "{line}");
    let run = w
        .ensure(&["alpha"])
        .arg("--project-dir")
        .arg(&project)
        .args(["--env", "esp32dev", "--json", "-q"])
        .run()
        .ok();
    assert_eq!(run.json()["build_size"]["apparent_bytes"], 3 * 1024 * 1024);
    assert_eq!(run.stderr, "", "-q keeps the size line off stderr");
    // An unknown environment or project is bad input, as it is for `size --env`.
    let run = w
        .ensure(&["alpha"])
        .arg("--project-dir")
        .arg(&project)
        .args(["--env", "bogus"])
        .run()
        .code(2);
    assert!(
        run.stderr.contains("bogus") && run.stderr.contains("esp32dev"),
        "names the bad env and the known ones: {}",
        run.stderr
    );
    let size = crate::support::Run::from(
        std::process::Command::new(crate::support::BIN)
            .args(["size", "--env", "bogus", "--project-dir"])
            .arg(&project)
            .output()
            .unwrap(),
    )
    .code(2);
    assert_eq!(size.stderr, run.stderr, "size and ensure say the same");
    let nowhere = w.dir.path().join("nowhere");
    let run = w
        .ensure(&["alpha"])
        .arg("--project-dir")
        .arg(&nowhere)
        .args(["--env", "x"])
        .run()
        .code(2);
    assert!(run.stderr.contains("nowhere"), "{}", run.stderr);
}

#[test]
fn penv_guard_log_shows_each_phase_with_its_duration_and_a_quiet_hit_prints_nothing() {
    let w = World::new();
    let run = w
        .ensure(&["alpha"])
        .env("PENV_GUARD_LOG", "debug")
        .run()
        .ok();
    for phase in [
        "check",
        "lock_wait",
        "venv",
        "install",
        "record_check",
        "validate",
        "record",
    ] {
        let line = format!("phase{{name=\"{phase}\"}}: close time.busy=");
        assert!(
            run.stderr.contains(&line),
            "no {phase} span:\n{}",
            run.stderr
        );
    }
    let hit = w.ensure(&["alpha"]).run().ok();
    assert_eq!(hit.stderr, "", "a hit with logging off prints nothing");
    for off in ["off", " OFF "] {
        let hit = w
            .ensure(&["alpha"])
            .arg("-v")
            .env("PENV_GUARD_LOG", off)
            .run()
            .ok();
        assert_eq!(hit.stderr, "", "PENV_GUARD_LOG={off:?} wins over -v");
    }
    let hit = w.ensure(&["alpha"]).arg("-v").run().ok();
    assert!(
        hit.stderr.contains("hit: 1 requirements satisfied"),
        "{}",
        hit.stderr
    );
}

#[test]
fn with_no_uv_anywhere_the_penv_gets_uv_through_its_own_pip() {
    let w = World::new();
    // No --uv, no PENV_GUARD_UV, no uv on PATH or next to Python: only python3 is found.
    let run = w
        .ensure_without_uv()
        .args(["--dep", "alpha<2", "--json"])
        // pip finds uv where uv finds everything else, and never the index.
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", crate::support::tool_wheels())
        .run()
        .ok();
    assert!(run.stderr.contains("no uv found"), "{}", run.stderr);
    assert_eq!(run.status(), "installed");
    assert_eq!(run.json()["uv"], w.penv.join("bin/uv").to_str().unwrap());
    assert_eq!(run.json()["installed"]["alpha"], "1.0");
}

#[test]
fn creating_the_penv_writes_nothing_into_home() {
    let w = World::new();
    let home = w.dir.path().join("home");
    fs::create_dir(&home).unwrap();
    w.ensure(&["alpha"])
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .run()
        .ok();
    let left: Vec<_> = fs::read_dir(&home)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "uv wrote into HOME: {left:?}");
}
