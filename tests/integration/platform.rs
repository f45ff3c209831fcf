//! `penv-guard platform install|remove|status` on a core dir holding pioarduino's espressif32
//! platform with upstream's builder/penv_setup.py (tests/fixtures/upstream, HEAD dd01e49e), and
//! the patch in platform-integration/ checked against what `install` writes.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{BIN, Run, repo, succeed};

/// Upstream's builder/penv_setup.py at dd01e49e.
pub fn upstream_head() -> PathBuf {
    repo().join("tests/fixtures/upstream/penv_setup.py")
}

/// Every distinct upstream file `platform install` hooks, by the release that ships it
/// (tests/fixtures/upstream-releases; 55.03.311 is HEAD, tests/fixtures/upstream).
pub const HOOKED_RELEASES: &[&str] = &[
    "55.03.32",
    "55.03.33",
    "55.03.31-2",
    "55.03.35",
    "55.03.36",
    "55.03.37",
    "55.03.38",
    "55.03.311",
    "develop",
];

/// Upstream's builder/penv_setup.py as release `name` ships it.
pub fn release_fixture(name: &str) -> PathBuf {
    if name == "55.03.311" {
        return upstream_head();
    }
    repo().join(format!("tests/fixtures/upstream-releases/{name}.py"))
}

/// What `platform install` writes for `original`, hooked in a core dir of its own under `dir`.
pub fn hooked_by_install(dir: &Path, original: &Path) -> Vec<u8> {
    let core = dir.join(format!(
        "install-{}",
        original.file_stem().unwrap().to_string_lossy()
    ));
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    fs::copy(original, plat.join("builder/penv_setup.py")).unwrap();
    platform_cmd(&core, &["install"]).ok();
    fs::read(plat.join("builder/penv_setup.py")).unwrap()
}

pub fn patch_file() -> PathBuf {
    repo().join("platform-integration/penv_setup.patch")
}

pub const PIOARDUINO_JSON: &str = r#"{"name": "espressif32", "title": "Espressif 32", "version": "55.03.311", "repository": {"type": "git", "url": "https://github.com/pioarduino/platform-espressif32.git"}}"#;

/// `<core>/platforms/<name>/` with `platform.json` and upstream's `builder/penv_setup.py`.
pub fn add_platform(core: &Path, name: &str, platform_json: &str) -> PathBuf {
    let dir = core.join("platforms").join(name);
    fs::create_dir_all(dir.join("builder")).unwrap();
    fs::write(dir.join("platform.json"), platform_json).unwrap();
    fs::copy(upstream_head(), dir.join("builder/penv_setup.py")).unwrap();
    dir
}

pub fn platform_cmd(core: &Path, args: &[&str]) -> Run {
    let output = Command::new(BIN)
        .arg("platform")
        .args(args)
        .arg("--core-dir")
        .arg(core)
        .output()
        .expect("penv-guard runs");
    Run::from(output)
}

fn status_json(core: &Path) -> Vec<Value> {
    let run = platform_cmd(core, &["status", "--json"]).ok();
    run.json()["platforms"].as_array().unwrap().clone()
}

fn state_of(core: &Path, dir: &Path) -> String {
    status_json(core)
        .iter()
        .find(|p| p["dir"] == dir.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not in status", dir.display()))["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Applies platform-integration/penv_setup.patch with plain `git apply` to a copy of upstream's
/// file; returns the patched bytes.
pub fn git_applied(dir: &Path) -> Vec<u8> {
    let root = dir.join("git-apply");
    fs::create_dir_all(root.join("builder")).unwrap();
    fs::copy(upstream_head(), root.join("builder/penv_setup.py")).unwrap();
    succeed(
        Command::new("git")
            .arg("apply")
            .arg(patch_file())
            .current_dir(&root),
    );
    fs::read(root.join("builder/penv_setup.py")).unwrap()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("penv-guard-platform-")
        .tempdir()
        .unwrap()
}

#[test]
fn platform_patch_applies_to_head_and_equals_what_install_writes() {
    let t = tempdir();
    let patched = git_applied(t.path());
    let core = t.path().join("core");
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    platform_cmd(&core, &["install"]).ok();
    let installed = fs::read(plat.join("builder/penv_setup.py")).unwrap();
    assert!(
        installed == patched,
        "`platform install` and `git apply penv_setup.patch` must give the same file; \
         regenerate the patch with scripts/make-penv-setup-patch"
    );
    assert_ne!(installed, fs::read(upstream_head()).unwrap());

    let patch = fs::read_to_string(patch_file()).unwrap();
    let added = patch
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .count();
    assert!(
        added <= 40,
        "the glue is at most 40 added lines, not {added}"
    );
    assert!(
        patch.contains(&format!("{added} added lines")),
        "the header states the count"
    );
    assert!(
        !repo()
            .join("platform-integration/penv_guard_integration.py")
            .exists(),
        "no separate module to copy"
    );
}

#[test]
fn platform_install_is_idempotent_keeps_the_mode_and_remove_restores_byte_for_byte() {
    let t = tempdir();
    let core = t.path().join("core");
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    let file = plat.join("builder/penv_setup.py");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let original = fs::read(&file).unwrap();
    assert_eq!(state_of(&core, &plat), "not-hooked");

    let first = platform_cmd(&core, &["install"]).ok();
    assert!(first.stderr.contains("hooked"), "{}", first.stderr);
    let hooked = fs::read(&file).unwrap();
    assert_ne!(hooked, original);
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    let backup = plat.join("builder/penv_setup.py.penv-guard-orig");
    assert_eq!(fs::read(&backup).unwrap(), original);
    assert_eq!(state_of(&core, &plat), "hooked");
    let text = platform_cmd(&core, &["status"]).ok();
    assert!(text.stdout.contains("55.03.311"), "{}", text.stdout);
    // `penv-guard status` names the hook too.
    let status = crate::support::Run::from(
        std::process::Command::new(crate::support::BIN)
            .args(["status", "--dep", "alpha", "--penv"])
            .arg(t.path().join("no-penv"))
            .env("PLATFORMIO_CORE_DIR", &core)
            .output()
            .unwrap(),
    )
    .ok();
    assert!(
        status
            .stdout
            .contains("platform      platform espressif32 55.03.311: hooked"),
        "{}",
        status.stdout
    );

    let second = platform_cmd(&core, &["install"]).ok();
    assert!(
        second.stderr.contains("already hooked"),
        "{}",
        second.stderr
    );
    assert_eq!(fs::read(&file).unwrap(), hooked, "install twice = once");
    assert_eq!(fs::read(&backup).unwrap(), original);

    platform_cmd(&core, &["remove"]).ok();
    assert_eq!(fs::read(&file).unwrap(), original, "restored byte for byte");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert!(!backup.exists());
    assert!(!plat.join("builder/penv_setup.py.penv-guard.json").exists());
    let left: Vec<_> = fs::read_dir(plat.join("builder"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["penv_setup.py"], "nothing of penv-guard's is left");
    assert_eq!(state_of(&core, &plat), "not-hooked");
    platform_cmd(&core, &["remove"]).ok();
    assert_eq!(fs::read(&file).unwrap(), original, "remove twice = once");
}

#[test]
fn platform_install_leaves_an_unrecognised_file_untouched_and_exits_2() {
    let t = tempdir();
    let core = t.path().join("core");
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    let file = plat.join("builder/penv_setup.py");
    // A future upstream revision where one anchor moved: not known, and not placeable.
    let changed = fs::read_to_string(&file).unwrap().replace(
        "def _setup_certifi_env(env, python_exe):",
        "def _setup_certifi_env(env, exe):",
    );
    fs::write(&file, &changed).unwrap();
    // A platform that is not pioarduino's is never looked at.
    let other = add_platform(
        &core,
        "espressif32@6.0.0",
        r#"{"name": "espressif32", "version": "6.0.0", "repository": {"type": "git", "url": "https://github.com/platformio/platform-espressif32.git"}}"#,
    );

    let run = platform_cmd(&core, &["install"]).code(2);
    let error: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("error:"))
        .collect();
    assert_eq!(error.len(), 1, "{}", run.stderr);
    assert!(error[0].contains(file.to_str().unwrap()), "{}", error[0]);
    assert!(error[0].contains("55.03.311"), "{}", error[0]);
    assert_eq!(fs::read_to_string(&file).unwrap(), changed);
    assert_eq!(
        fs::read_dir(plat.join("builder")).unwrap().count(),
        1,
        "no backup for a file it does not hook"
    );
    assert_eq!(
        fs::read(other.join("builder/penv_setup.py")).unwrap(),
        fs::read(upstream_head()).unwrap()
    );
    assert_eq!(state_of(&core, &plat), "unrecognised");
    assert_eq!(status_json(&core).len(), 1, "only pioarduino's platform");

    // A symlinked penv_setup.py is refused, and the link and its target stay as they are.
    let target = t.path().join("elsewhere.py");
    fs::copy(upstream_head(), &target).unwrap();
    fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&target, &file).unwrap();
    let run = platform_cmd(&core, &["install"]).code(2);
    assert!(run.stderr.contains("symlink"), "{}", run.stderr);
    assert!(fs::symlink_metadata(&file).unwrap().is_symlink());
    assert_eq!(
        fs::read(&target).unwrap(),
        fs::read(upstream_head()).unwrap()
    );
}

#[test]
fn platform_status_tells_when_an_update_replaced_the_hooked_file() {
    let t = tempdir();
    let core = t.path().join("core");
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    let file = plat.join("builder/penv_setup.py");
    platform_cmd(&core, &["install"]).ok();
    assert_eq!(state_of(&core, &plat), "hooked");

    // `pio pkg update`: a newer upstream file (here: one more line), unhooked.
    let newer = format!(
        "{}\n# a newer upstream revision\n",
        fs::read_to_string(upstream_head()).unwrap()
    );
    fs::write(&file, &newer).unwrap();
    let entry = status_json(&core)[0].clone();
    assert_eq!(entry["state"], "replaced-by-update", "{entry}");
    assert!(
        entry["message"]
            .as_str()
            .unwrap()
            .contains("penv-guard platform install"),
        "{entry}"
    );
    let lines = penv_guard::platform::status_lines(&core);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains("55.03.311") && lines[0].contains("update"),
        "{lines:?}"
    );

    // Re-applying hooks the new file; remove then restores the new file, not the old one.
    platform_cmd(&core, &["install"]).ok();
    assert_eq!(state_of(&core, &plat), "hooked");
    platform_cmd(&core, &["remove"]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), newer);

    // An update after which the user removes: the new file is left alone, penv-guard's copy goes.
    platform_cmd(&core, &["install"]).ok();
    fs::write(&file, "# replaced\n").unwrap();
    assert_eq!(state_of(&core, &plat), "replaced-by-update");
    platform_cmd(&core, &["remove"]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), "# replaced\n");
    assert!(!plat.join("builder/penv_setup.py.penv-guard-orig").exists());
}

#[test]
fn platform_recognises_a_file_patched_by_hand_and_remove_undoes_it() {
    let t = tempdir();
    let core = t.path().join("core");
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    let file = plat.join("builder/penv_setup.py");
    fs::write(&file, git_applied(t.path())).unwrap();
    assert_eq!(state_of(&core, &plat), "hooked-by-patch");
    let run = platform_cmd(&core, &["install"]).ok();
    assert!(run.stderr.contains("already hooked"), "{}", run.stderr);
    platform_cmd(&core, &["remove"]).ok();
    assert_eq!(fs::read(&file).unwrap(), fs::read(upstream_head()).unwrap());
}

#[test]
fn platform_bad_core_dir_is_exit_2_naming_it() {
    let t = tempdir();
    let missing = t.path().join("no-such-core");
    let run = platform_cmd(&missing, &["status"]).code(2);
    assert!(
        run.stderr.contains(missing.to_str().unwrap()),
        "{}",
        run.stderr
    );
    let empty = t.path().join("empty-core");
    fs::create_dir_all(&empty).unwrap();
    let run = platform_cmd(&empty, &["install"]).ok();
    assert!(run.stderr.contains("no pioarduino"), "{}", run.stderr);
}

/// Writes penv-guard's record as `install` does, for states an older or interrupted run left.
fn write_record(builder: &Path, original: &[u8], hooked: &[u8]) {
    let sha = |b: &[u8]| penv_guard::platform::sha256_hex(b);
    fs::write(builder.join("penv_setup.py.penv-guard-orig"), original).unwrap();
    let record = serde_json::json!({"schema": 1, "original_sha256": sha(original),
        "hooked_sha256": sha(hooked), "platform_version": "55.03.311", "penv_guard_version": "0.0.1"});
    fs::write(
        builder.join("penv_setup.py.penv-guard.json"),
        record.to_string(),
    )
    .unwrap();
}

#[test]
fn platform_install_updates_an_older_hook_and_recovers_an_interrupted_install() {
    let t = tempdir();
    let core = t.path().join("core");
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    let builder = plat.join("builder");
    let file = builder.join("penv_setup.py");
    let head = fs::read(upstream_head()).unwrap();

    // An older penv-guard hooked the file with other edits.
    let old_hook = [head.as_slice(), b"# an older penv-guard's hook\n"].concat();
    fs::write(&file, &old_hook).unwrap();
    write_record(&builder, &head, &old_hook);
    assert_eq!(state_of(&core, &plat), "outdated");
    platform_cmd(&core, &["install"]).ok();
    assert_eq!(state_of(&core, &plat), "hooked");
    assert_eq!(fs::read(&file).unwrap(), git_applied(t.path()));
    platform_cmd(&core, &["remove"]).ok();
    assert_eq!(fs::read(&file).unwrap(), head);

    // Interrupted after the copy and the record, before the hooked file was written.
    write_record(&builder, &head, b"whatever was to be written");
    assert_eq!(state_of(&core, &plat), "not-hooked");
    platform_cmd(&core, &["install"]).ok();
    assert_eq!(state_of(&core, &plat), "hooked");
    platform_cmd(&core, &["remove"]).ok();
    assert_eq!(fs::read(&file).unwrap(), head);
}

/// `platform.json` of release `version`.
fn release_json(version: &str) -> String {
    PIOARDUINO_JSON.replace("55.03.311", version)
}

#[test]
fn platform_install_hooks_every_release_since_55_03_31_in_one_core_dir_and_remove_restores_each() {
    let t = tempdir();
    let core = t.path().join("core");
    let mut hooked = Vec::new();
    for &name in HOOKED_RELEASES {
        let plat = add_platform(&core, &format!("espressif32-{name}"), &release_json(name));
        fs::copy(release_fixture(name), plat.join("builder/penv_setup.py")).unwrap();
        assert_eq!(state_of(&core, &plat), "not-hooked", "{name}");
        hooked.push((name, plat));
    }
    // Left alone: the first 55.03.31 file, and one nobody knows.
    let first = add_platform(&core, "espressif32-55.03.31", &release_json("55.03.31"));
    fs::copy(
        release_fixture("55.03.31"),
        first.join("builder/penv_setup.py"),
    )
    .unwrap();
    let unknown = add_platform(&core, "espressif32-future", &release_json("56.0.0"));
    let unknown_file = unknown.join("builder/penv_setup.py");
    let changed = fs::read_to_string(&unknown_file).unwrap().replace(
        "def _setup_certifi_env(env, python_exe):",
        "def _setup_certifi_env(env, exe):",
    );
    fs::write(&unknown_file, &changed).unwrap();

    let run = platform_cmd(&core, &["install"]).code(2);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("error:"))
        .collect();
    assert_eq!(
        errors.len(),
        3,
        "one line per platform left alone, then the count: {}",
        run.stderr
    );
    // Short lines: a version, a path, and at most 200 characters of why and what to do.
    assert!(
        errors
            .iter()
            .all(|l| l.rsplit("penv_setup.py: ").next().unwrap().len() < 200),
        "{}",
        run.stderr
    );
    let line_31 = errors.iter().find(|l| l.contains("55.03.31:")).unwrap();
    for needle in [
        "55.03.31-2",
        "55.03.32",
        "pin",
        "penv-guard platform install",
    ] {
        assert!(line_31.contains(needle), "{needle}: {line_31}");
    }
    let line_unknown = errors.iter().find(|l| l.contains("56.0.0")).unwrap();
    assert!(
        line_unknown.contains(unknown_file.to_str().unwrap()),
        "{line_unknown}"
    );
    assert!(
        line_unknown.contains("55.03.32 to 55.03.311"),
        "{line_unknown}"
    );
    assert!(errors[2].contains("2 of 11"), "{}", errors[2]);
    assert_eq!(
        fs::read(first.join("builder/penv_setup.py")).unwrap(),
        fs::read(release_fixture("55.03.31")).unwrap()
    );
    assert_eq!(fs::read_to_string(&unknown_file).unwrap(), changed);
    assert_eq!(state_of(&core, &first), "unrecognised");

    for (name, plat) in &hooked {
        assert_eq!(state_of(&core, plat), "hooked", "{name}");
        let file = fs::read_to_string(plat.join("builder/penv_setup.py")).unwrap();
        assert!(file.contains("def _penv_guard("), "{name}");
        assert!(
            run.stderr.contains(&format!("espressif32 {name} (")),
            "{name}: {}",
            run.stderr
        );
    }
    platform_cmd(&core, &["remove"]).ok();
    for (name, plat) in &hooked {
        assert_eq!(
            fs::read(plat.join("builder/penv_setup.py")).unwrap(),
            fs::read(release_fixture(name)).unwrap(),
            "{name} restored byte for byte"
        );
        assert_eq!(
            fs::read_dir(plat.join("builder")).unwrap().count(),
            1,
            "{name}"
        );
    }
}

#[test]
fn platform_install_hooks_a_crlf_checkout_keeping_crlf_and_remove_restores_byte_for_byte() {
    let t = tempdir();
    let core = t.path().join("core");
    let mut plats = Vec::new();
    for &name in HOOKED_RELEASES {
        let plat = add_platform(&core, &format!("espressif32-{name}"), &release_json(name));
        // Git for Windows' core.autocrlf checks the file out with CRLF line endings.
        let crlf = fs::read_to_string(release_fixture(name))
            .unwrap()
            .replace('\n', "\r\n");
        fs::write(plat.join("builder/penv_setup.py"), &crlf).unwrap();
        assert_eq!(state_of(&core, &plat), "not-hooked", "{name}");
        plats.push((name, plat, crlf));
    }
    let run = platform_cmd(&core, &["install"]).ok();
    for (name, plat, crlf) in &plats {
        assert_eq!(state_of(&core, plat), "hooked", "{name}: {}", run.stderr);
        let hooked = fs::read_to_string(plat.join("builder/penv_setup.py")).unwrap();
        assert!(hooked.contains("def _penv_guard("), "{name}");
        assert_eq!(
            hooked.matches('\n').count(),
            hooked.matches("\r\n").count(),
            "{name}: CRLF throughout"
        );
        let lf = fs::read_to_string(release_fixture(name)).unwrap();
        let hooked_lf = hooked_by_install(&t.path().join(name), &release_fixture(name));
        assert_eq!(hooked.replace("\r\n", "\n").as_bytes(), hooked_lf, "{name}");
        assert_eq!(
            fs::read_to_string(plat.join("builder/penv_setup.py.penv-guard-orig")).unwrap(),
            *crlf
        );
        assert_ne!(lf, *crlf);
    }
    platform_cmd(&core, &["install"]).ok();
    platform_cmd(&core, &["remove"]).ok();
    for (name, plat, crlf) in &plats {
        assert_eq!(
            fs::read_to_string(plat.join("builder/penv_setup.py")).unwrap(),
            *crlf,
            "{name} restored byte for byte"
        );
        assert_eq!(
            fs::read_dir(plat.join("builder")).unwrap().count(),
            1,
            "{name}"
        );
    }
}

/// The platform is hooked with penv-guard's copy and record, or pristine with neither.
#[track_caller]
fn assert_consistent(core: &Path, plat: &Path, original: &[u8]) {
    let builder = plat.join("builder");
    let file = fs::read(builder.join("penv_setup.py")).unwrap();
    let backup = builder.join("penv_setup.py.penv-guard-orig");
    let record = builder.join("penv_setup.py.penv-guard.json");
    if file == original {
        assert!(
            !backup.exists() && !record.exists(),
            "pristine, but penv-guard's files are left"
        );
        assert_eq!(state_of(core, plat), "not-hooked");
    } else {
        let copy = fs::read(&backup).unwrap_or_else(|e| panic!("hooked, but no copy ({e})"));
        assert_eq!(copy, original);
        assert!(record.is_file(), "hooked, but no record");
        assert_eq!(state_of(core, plat), "hooked");
    }
}

#[test]
fn platform_install_and_remove_running_at_once_are_serialized_by_the_platform_lock() {
    let t = tempdir();
    let core = t.path().join("core");
    let plats: Vec<(PathBuf, Vec<u8>)> = ["55.03.35", "55.03.37", "55.03.311"]
        .iter()
        .map(|name| {
            let plat = add_platform(&core, &format!("espressif32-{name}"), &release_json(name));
            fs::copy(release_fixture(name), plat.join("builder/penv_setup.py")).unwrap();
            (plat, fs::read(release_fixture(name)).unwrap())
        })
        .collect();
    // An install that pauses before writing the hooked file, after its copy and record: a
    // remove started meanwhile must wait for it, not delete the two and leave a hooked file
    // with neither.
    let paused = Command::new(BIN)
        .args(["platform", "install", "--core-dir"])
        .arg(&core)
        .env(
            "PENV_GUARD_TEST_PAUSE_BEFORE_RENAME",
            "55.03.311/builder/penv_setup.py",
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(250));
    platform_cmd(&core, &["remove"]).ok();
    let done = paused.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    for (plat, original) in &plats {
        assert_consistent(&core, plat, original);
    }

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let loops: Vec<_> = ["install", "install", "remove"]
        .into_iter()
        .map(|action| {
            let core = core.clone();
            std::thread::spawn(move || {
                let mut runs = 0;
                while std::time::Instant::now() < deadline {
                    let run = platform_cmd(&core, &[action]);
                    assert_eq!(run.code, Some(0), "{action}: {}", run.stderr);
                    runs += 1;
                }
                runs
            })
        })
        .collect();
    let runs: usize = loops.into_iter().map(|l| l.join().unwrap()).sum();
    assert!(runs >= 6, "{runs} runs");
    for (plat, original) in &plats {
        assert_consistent(&core, plat, original);
    }
    assert!(
        core.join(".penv-guard-platform.lock").is_file(),
        "the lock stays"
    );
    platform_cmd(&core, &["remove"]).ok();
    for (plat, original) in &plats {
        assert_eq!(
            &fs::read(plat.join("builder/penv_setup.py")).unwrap(),
            original
        );
    }
}

#[test]
fn platform_install_waits_for_the_platform_lock_then_times_out_with_exit_75() {
    let t = tempdir();
    let core = t.path().join("core");
    let plat = add_platform(&core, "espressif32", PIOARDUINO_JSON);
    let lock = fs::File::create(core.join(".penv-guard-platform.lock")).unwrap();
    lock.lock().unwrap();
    let output = Command::new(BIN)
        .args(["platform", "install", "--core-dir"])
        .arg(&core)
        .env("PENV_GUARD_LOCK_TIMEOUT", "0.3")
        .output()
        .unwrap();
    let run = Run::from(output).code(75);
    assert!(run.stderr.contains("waiting for another"), "{}", run.stderr);
    assert!(
        run.stderr.contains("PENV_GUARD_LOCK_TIMEOUT"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read(plat.join("builder/penv_setup.py")).unwrap(),
        fs::read(upstream_head()).unwrap()
    );
    drop(lock);
    platform_cmd(&core, &["install"]).ok();
    assert_eq!(state_of(&core, &plat), "hooked");
}

#[test]
fn platform_symlinked_platform_is_named_and_left_alone() {
    let t = tempdir();
    let core = t.path().join("core");
    let checkout = t.path().join("checkout");
    let plat = add_platform(&t.path().join("elsewhere"), "espressif32", PIOARDUINO_JSON);
    fs::rename(&plat, &checkout).unwrap();
    fs::create_dir_all(core.join("platforms")).unwrap();
    std::os::unix::fs::symlink(&checkout, core.join("platforms/espressif32")).unwrap();
    for action in ["install", "remove"] {
        let run = platform_cmd(&core, &[action]).ok();
        assert!(!run.stderr.contains("no pioarduino"), "{}", run.stderr);
        assert!(
            run.stderr.contains("55.03.311") && run.stderr.contains("symlink"),
            "{action}: {}",
            run.stderr
        );
    }
    assert_eq!(
        fs::read(checkout.join("builder/penv_setup.py")).unwrap(),
        fs::read(upstream_head()).unwrap()
    );
    assert_eq!(fs::read_dir(checkout.join("builder")).unwrap().count(), 1);
    let entry = &status_json(&core)[0];
    assert_eq!(entry["state"], "linked", "{entry}");
}
