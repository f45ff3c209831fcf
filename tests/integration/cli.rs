use crate::support::World;

#[test]
fn unknown_flag_exits_2_naming_it() {
    let w = World::new();
    let run = w.cmd("ensure").arg("--frobnicate").run().code(2);
    assert!(run.stderr.contains("--frobnicate"), "{}", run.stderr);
}

#[test]
fn malformed_requirement_exits_2_naming_it() {
    let w = World::new();
    let run = w.ensure(&["alpha >= = 1"]).run().code(2);
    assert!(run.stderr.contains("alpha >= = 1"), "{}", run.stderr);
    let req = w.dir.path().join("req.txt");
    std::fs::write(&req, "alpha\n\nbeta (((\n").unwrap();
    let run = w.cmd("ensure").arg("-r").arg(&req).run().code(2);
    assert!(run.stderr.contains("req.txt:3"), "{}", run.stderr);
    assert!(run.stderr.contains("beta ((("), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
}

#[test]
fn bad_deps_json_exits_2_naming_the_value() {
    let w = World::new();
    let json = w.dir.path().join("deps.json");
    for (content, needle) in [
        ("{\"alpha\": 3}", "\"alpha\""),
        ("[\"alpha\"]", "array"),
        ("{}", "no dependencies"),
        ("{\"alpha\": \">=1\",", "not valid JSON"),
    ] {
        std::fs::write(&json, content).unwrap();
        let run = w.cmd("ensure").arg("--deps-json").arg(&json).run().code(2);
        assert!(run.stderr.contains(needle), "{content}: {}", run.stderr);
    }
}

#[test]
fn json_errors_go_to_stdout_as_json_and_messages_to_stderr() {
    let w = World::new();
    let run = w.ensure(&["broken"]).arg("--json").run().code(3);
    let report = run.json();
    assert_eq!(report["status"], "error");
    assert_eq!(report["exit_code"], 3);
    assert!(run.stderr.contains("error:"));
}

#[test]
fn missing_uv_is_a_clear_error() {
    let w = World::new();
    let uv = w.dir.path().join("no-such-uv");
    let run = w.ensure(&["alpha"]).arg("--uv").arg(&uv).run().code(1);
    // The penv does not exist yet, so the first uv call is `uv venv`: the message names the penv,
    // the uv path that was given and the OS error, on the last line.
    let expected = format!(
        "penv-guard: error: cannot create the penv {}: cannot run {}: No such file or directory (os error 2)",
        w.penv.display(),
        uv.display()
    );
    assert_eq!(
        run.stderr.lines().last(),
        Some(expected.as_str()),
        "{}",
        run.stderr
    );
    assert!(!w.state_path().exists());
}

#[test]
fn help_documents_exit_codes() {
    let run = World::new().cmd("ensure").arg("--help").run().ok();
    for code in ["75", "lock timeout", "offline", "validation"] {
        assert!(run.stdout.contains(code), "--help lacks {code}");
    }
}

#[test]
fn verbose_prints_one_line_per_phase_with_its_duration_and_no_span_detail() {
    let w = World::new();
    let run = w.ensure(&["alpha"]).arg("-v").run().ok();
    let lines: Vec<&str> = run.stderr.lines().collect();
    for phase in [
        "check",
        "lock wait",
        "venv",
        "install",
        "validate",
        "record",
        "total",
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("penv-guard: {phase} ")))
            .unwrap_or_else(|| panic!("no {phase} line:\n{}", run.stderr));
        let duration = line.rsplit(' ').next().unwrap();
        assert!(duration == "ms" || duration == "s", "{line}");
    }
    assert!(run.stderr.contains("penv-guard: miss: "), "{}", run.stderr);
    for detail in ["time.busy", "phase{", "INFO"] {
        assert!(!run.stderr.contains(detail), "{detail}:\n{}", run.stderr);
    }
    let hit = w.ensure(&["alpha"]).arg("-v").run().ok();
    assert!(
        hit.stderr.starts_with("penv-guard: check "),
        "{}",
        hit.stderr
    );
}

#[test]
fn each_help_shows_its_own_exit_codes_and_only_flags_that_matter() {
    let w = World::new();
    let help = w.cmd("fingerprint").arg("--help").run().ok().stdout;
    assert!(help.contains("0   the fingerprint was printed"), "{help}");
    for absent in ["75", "lock timeout", "validation failed", "--uv"] {
        assert!(
            !help.contains(absent),
            "fingerprint --help shows {absent}:\n{help}"
        );
    }
    // Still accepted, so a script can pass fingerprint the line it passes ensure.
    let fingerprint = w.cmd("fingerprint").args(["--dep", "alpha"]).run().ok();
    assert_eq!(
        fingerprint.stdout.trim().len(),
        64,
        "{}",
        fingerprint.stdout
    );
    let ensure = w.cmd("ensure").arg("--help").run().ok().stdout;
    assert!(ensure.contains("75  lock timeout"), "{ensure}");
    assert!(!ensure.contains("PENV_GUARD_LOCK_TIMEOUT=]"), "{ensure}");
    assert!(ensure.contains("PENV_GUARD_LOCK_TIMEOUT"), "{ensure}");
}

/// penv-guard run with `words` alone, no world around it.
fn bare(words: &[&str]) -> crate::support::Run {
    crate::support::Run::from(
        std::process::Command::new(crate::support::BIN)
            .args(words)
            .output()
            .unwrap(),
    )
}

#[test]
fn help_help_is_help() {
    for words in [&["help", "--help"][..], &["help", "-h"], &["--help"]] {
        let run = bare(words).ok();
        assert!(
            run.stdout.contains("Usage: penv-guard <COMMAND>"),
            "{words:?}: {}",
            run.stdout
        );
    }
    let run = bare(&["help", "ensure", "--help"]).ok();
    assert!(
        run.stdout.contains("Usage: penv-guard ensure"),
        "{}",
        run.stdout
    );
}
