//! `penv-guard size` against real trees laid out like PlatformIO's `.pio/build/<env>/`: the
//! freshness key (hits do not walk, every PlatformIO write pattern misses), what is counted
//! (links, sparse files, unreadable and vanishing entries), the cache's robustness and
//! build-dir resolution. `--json`'s `walked` says whether this call walked.

// Product names (PlatformIO, SCons, ESPHome) are prose here, not code.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::{BIN, Run, TestCommand};

const VANISH_HOOK: &str = "PENV_GUARD_TEST_SIZE_VANISH";

struct Project {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Project {
    fn new(ini: &str) -> Project {
        let tmp = tempfile::Builder::new()
            .prefix("penv-guard-size-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("proj");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("platformio.ini"), ini).unwrap();
        Project { tmp, dir }
    }

    /// A project with `[env:NAME]` for each name.
    fn with_envs(names: &[&str]) -> Project {
        let ini: String = names
            .iter()
            .map(|n| format!("[env:{n}]\nplatform = native\n\n"))
            .collect::<Vec<_>>()
            .concat();
        Project::new(&format!(
            "[platformio]\ndefault_envs = {}\n\n{ini}",
            names[0]
        ))
    }

    fn env_dir(&self, name: &str) -> PathBuf {
        self.dir.join(".pio/build").join(name)
    }

    fn cache_path(&self) -> PathBuf {
        self.dir.join(".pio/.penv-guard/build-size.json")
    }

    /// What a PlatformIO build leaves, with old mtimes (outside the racy window).
    fn build(&self, name: &str) -> PathBuf {
        let env = self.env_dir(name);
        fake_build(&env);
        age(&env);
        env
    }

    fn size(&self) -> TestCommand {
        size_cmd(&self.dir)
    }

    fn json(&self) -> Value {
        self.size().arg("--json").run().ok().json()
    }

    fn cache_identity(&self) -> (u64, SystemTime) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(self.cache_path()).unwrap();
        (meta.ino(), meta.modified().unwrap())
    }
}

fn size_cmd(project_dir: &Path) -> TestCommand {
    let mut command = Command::new(BIN);
    command
        .arg("size")
        .arg("--project-dir")
        .arg(project_dir)
        .env_remove("PLATFORMIO_BUILD_DIR")
        .env_remove("PLATFORMIO_WORKSPACE_DIR")
        .env_remove(VANISH_HOOK);
    TestCommand { command }
}

fn fake_build(env: &Path) {
    let lib = env.join("lib8a3/Foo");
    fs::create_dir_all(&lib).unwrap();
    fs::create_dir_all(env.join("src")).unwrap();
    let files: [(&str, usize); 8] = [
        (".sconsign311.dblite", 4_000),
        ("firmware.elf", 300_000),
        ("firmware.bin", 120_000),
        ("idedata.json", 620),
        ("src/main.o", 1_232),
        ("src/x.o", 800),
        ("lib8a3/libFoo.a", 2_000),
        ("lib8a3/Foo/foo.o", 1_500),
    ];
    for (path, len) in files {
        fs::write(env.join(path), pattern(len)).unwrap();
    }
}

const FAKE_BUILD_BYTES: u64 = 4_000 + 300_000 + 120_000 + 620 + 1_232 + 800 + 2_000 + 1_500;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

/// Sets every mtime under `root` an hour back (children before their directory; symlinks
/// themselves with `touch -h -r`, from a reference file: GNU and BSD touch both take that, where
/// only GNU's takes `-d @SECS`), so the key is out of the racy window.
fn age(root: &Path) {
    let then = SystemTime::now() - Duration::from_secs(3600);
    age_to(root, then);
}

fn age_to(path: &Path, t: SystemTime) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        let reference = tempfile::NamedTempFile::new().unwrap();
        reference.as_file().set_modified(t).unwrap();
        let status = Command::new("touch")
            .arg("-h")
            .arg("-r")
            .arg(reference.path())
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
        return;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            age_to(&entry.unwrap().path(), t);
        }
    }
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

fn env<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["envs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {report}"))
}

fn walked(report: &Value, name: &str) -> bool {
    env(report, name)["walked"].as_bool().unwrap()
}

fn num(report: &Value, name: &str, field: &str) -> u64 {
    env(report, name)[field].as_u64().unwrap()
}

#[test]
fn size_missing_env_dir_is_never_walked_and_never_rewrites_the_cache() {
    let p = Project::with_envs(&["a", "b"]);
    for _ in 0..3 {
        let r = p.json();
        assert_eq!(env(&r, "a")["state"], "missing");
        assert!(!walked(&r, "a") && !walked(&r, "b"));
        assert_eq!(r["cache_written"], false);
    }
    assert!(!p.cache_path().exists(), "nothing was ever worth storing");

    p.build("a");
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(r["cache_written"], true);
    let identity = p.cache_identity();
    for _ in 0..3 {
        let r = p.json();
        assert!(!walked(&r, "a") && !walked(&r, "b"));
        assert_eq!(env(&r, "b")["state"], "missing");
        assert_eq!(env(&r, "b")["exists"], false);
        assert_eq!(num(&r, "b", "apparent_bytes"), 0);
        assert_eq!(r["cache_written"], false);
    }
    assert_eq!(
        p.cache_identity(),
        identity,
        "no churn: the cache was not rewritten"
    );
}

#[test]
fn size_clean_clears_to_zero_once_then_hits() {
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES);
    assert_eq!(env(&r, "a")["state"], "walked");
    let r = p.json();
    assert!(!walked(&r, "a"));
    assert_eq!(env(&r, "a")["state"], "fresh");
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES);

    fs::remove_dir_all(&dir).unwrap(); // `pio run -t clean`
    let r = p.json();
    assert!(!walked(&r, "a"), "a missing dir is never walked");
    assert_eq!(env(&r, "a")["state"], "missing");
    assert_eq!(num(&r, "a", "apparent_bytes"), 0);
    assert_eq!(r["cache_written"], true, "cleared to 0 once");
    let identity = p.cache_identity();
    for _ in 0..2 {
        let r = p.json();
        assert_eq!(env(&r, "a")["state"], "missing");
        assert_eq!(r["cache_written"], false);
    }
    assert_eq!(p.cache_identity(), identity);

    p.build("a"); // rebuilt
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES);
}

#[test]
fn size_noop_build_replacing_the_sconsign_is_a_miss() {
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    assert!(walked(&p.json(), "a"));
    assert!(!walked(&p.json(), "a"));
    // SCons' dblite sync(): write .tmp, then os.replace over the db. Same bytes.
    fs::write(dir.join(".sconsign311.tmp"), pattern(4_000)).unwrap();
    fs::rename(
        dir.join(".sconsign311.tmp"),
        dir.join(".sconsign311.dblite"),
    )
    .unwrap();
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES);
}

#[test]
fn size_same_length_in_place_rewrite_of_idedata_is_a_miss() {
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    assert!(walked(&p.json(), "a"));
    assert!(!walked(&p.json(), "a"));
    let before = fs::metadata(dir.join("idedata.json")).unwrap().len();
    fs::write(dir.join("idedata.json"), vec![b'x'; 620]).unwrap(); // `-t idedata`, again
    assert_eq!(
        fs::metadata(dir.join("idedata.json")).unwrap().len(),
        before
    );
    assert!(walked(&p.json(), "a"));
}

#[test]
fn size_deleting_an_object_at_depth_one_is_a_miss() {
    // `build_cache_dir` mode plus a compile error: only `src/` moves.
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    assert!(walked(&p.json(), "a"));
    assert!(!walked(&p.json(), "a"));
    fs::remove_file(dir.join("src/x.o")).unwrap();
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES - 800);
}

#[test]
fn size_change_at_depth_two_only_is_a_known_miss() {
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    assert!(walked(&p.json(), "a"));
    // Rewritten in place two levels down, longer: nothing at depth 0 or 1 moves.
    fs::write(dir.join("lib8a3/Foo/foo.o"), pattern(9_500)).unwrap();
    let r = p.json();
    assert!(
        !walked(&r, "a"),
        "documented known miss: the key is shallow"
    );
    assert_eq!(
        num(&r, "a", "apparent_bytes"),
        FAKE_BUILD_BYTES,
        "stale size"
    );
    // --refresh walks anyway.
    let r = p.size().arg("--json").arg("--refresh").run().ok().json();
    assert!(walked(&r, "a"));
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES + 8_000);
}

#[test]
fn size_mtime_set_backwards_is_a_miss() {
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    assert!(walked(&p.json(), "a"));
    assert!(!walked(&p.json(), "a"));
    age_to(
        &dir.join("firmware.elf"),
        SystemTime::now() - Duration::from_secs(86_400 * 30),
    );
    assert!(walked(&p.json(), "a"));
}

#[test]
fn size_racy_result_is_walked_again_then_settles() {
    let p = Project::with_envs(&["a"]);
    fake_build(&p.env_dir("a")); // just written: inside the racy window
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(env(&r, "a")["racy"], true);
    let r = p.json();
    assert!(walked(&r, "a"), "a racy result is not trusted");
    age(&p.env_dir("a"));
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(env(&r, "a")["racy"], false);
    assert!(!walked(&p.json(), "a"));
}

#[test]
fn size_own_cache_writes_do_not_change_the_key() {
    let p = Project::with_envs(&["a", "b"]);
    p.build("a");
    p.build("b");
    let r = p.json();
    assert!(walked(&r, "a") && walked(&r, "b"));
    let r = p.json();
    assert!(!walked(&r, "a") && !walked(&r, "b"));

    // Even with the build dir and the workspace dir the same, so that the cache dir sits in
    // the build dir next to the envs. It is no orphan there either.
    let p =
        Project::new("[platformio]\nbuild_dir = ${platformio.workspace_dir}\n[env:a]\n[env:b]\n");
    fake_build(&p.dir.join(".pio/a"));
    age(&p.dir.join(".pio/a"));
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(r["cache_written"], true);
    let r = p.json();
    assert!(!walked(&r, "a"));
    assert_eq!(r["orphans"], serde_json::json!([]));
    assert!(p.dir.join(".pio/.penv-guard/build-size.json").is_file());
}

#[test]
fn size_never_writes_its_cache_inside_an_env_dir() {
    let p = Project::new("[platformio]\nbuild_dir = out\nworkspace_dir = out/a/ws\n[env:a]\n");
    let dir = p.dir.join("out/a");
    fake_build(&dir);
    age(&dir);
    let run = p.size().arg("--json").run().ok();
    assert!(
        run.stderr.contains("inside an env directory"),
        "{}",
        run.stderr
    );
    let r = run.json();
    assert_eq!(r["cache_written"], false);
    assert!(!dir.join("ws").exists());
    assert!(walked(&p.json(), "a"), "nothing stored, so walked again");
}

#[test]
fn size_two_sconsign_files_are_both_in_the_key() {
    let p = Project::with_envs(&["a"]);
    let dir = p.env_dir("a");
    fake_build(&dir);
    fs::write(dir.join(".sconsign313.dblite"), pattern(3_000)).unwrap(); // Python upgraded
    let then = SystemTime::now() - Duration::from_secs(3600);
    age_to(&dir, then);
    assert!(walked(&p.json(), "a"));
    assert!(!walked(&p.json(), "a"));
    // Either one rewritten in place, same length (only its mtime moves, and not into the racy
    // window): seen.
    for (name, seconds) in [(".sconsign313.dblite", 1), (".sconsign311.dblite", 2)] {
        let file = dir.join(name);
        let len = usize::try_from(fs::metadata(&file).unwrap().len()).unwrap();
        fs::write(&file, vec![0u8; len]).unwrap();
        age_to(&file, then + Duration::from_secs(seconds));
        assert!(walked(&p.json(), "a"), "{name}");
        assert!(!walked(&p.json(), "a"), "{name}");
    }
}

#[test]
fn size_counts_hard_links_once_within_and_across_envs() {
    let p = Project::with_envs(&["a", "b"]);
    let a = p.env_dir("a");
    let b = p.env_dir("b");
    fs::create_dir_all(a.join("src")).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("big.bin"), pattern(1_000_000)).unwrap();
    fs::hard_link(a.join("big.bin"), a.join("src/big-again.bin")).unwrap();
    fs::hard_link(a.join("big.bin"), b.join("shared.bin")).unwrap();
    fs::write(b.join("own.bin"), pattern(10_000)).unwrap();
    // A hard link to a file outside every env: counted once, in the env that has it.
    fs::write(p.tmp.path().join("outside.bin"), pattern(5_000)).unwrap();
    fs::hard_link(p.tmp.path().join("outside.bin"), b.join("from-outside.bin")).unwrap();
    age(&a);
    age(&b);
    let r = p.json();
    assert_eq!(num(&r, "a", "apparent_bytes"), 1_000_000);
    assert_eq!(num(&r, "a", "files"), 1);
    assert_eq!(num(&r, "b", "apparent_bytes"), 1_015_000);
    assert_eq!(
        r["total_apparent_bytes"], 1_015_000,
        "the shared inode once"
    );
    let total_allocated = r["total_allocated_bytes"].as_u64().unwrap();
    assert!(total_allocated < num(&r, "a", "allocated_bytes") + num(&r, "b", "allocated_bytes"));
    // Also from the cache (no walk).
    let r = p.json();
    assert!(!walked(&r, "a") && !walked(&r, "b"));
    assert_eq!(r["total_apparent_bytes"], 1_015_000);
    assert_eq!(r["total_allocated_bytes"], total_allocated);
}

#[test]
fn size_does_not_follow_symlinks_to_files_dirs_dangling_or_loops() {
    use std::os::unix::fs::symlink;
    let p = Project::with_envs(&["a"]);
    let dir = p.env_dir("a");
    fake_build(&dir);
    let outside = p.tmp.path().join("huge");
    fs::create_dir_all(&outside).unwrap();
    fs::File::create(outside.join("300M"))
        .unwrap()
        .set_len(300_000_000)
        .unwrap();
    symlink(dir.join("firmware.elf"), dir.join("firmware-link.elf")).unwrap();
    symlink(&outside, dir.join("src/huge")).unwrap();
    symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
    symlink(&dir, dir.join("lib8a3/loop")).unwrap();
    age(&dir);
    let r = p.json();
    let a = env(&r, "a");
    assert_eq!(a["apparent_bytes"], FAKE_BUILD_BYTES);
    assert_eq!(a["skipped"], 4);
    assert_eq!(a["errors"], 0);
    assert_eq!(a["partial"], false);
    assert!(!walked(&p.json(), "a"));

    // A build dir that is itself a symlink (to a RAM disk, say) is followed, once.
    let q = Project::new("[platformio]\nbuild_dir = linked\n[env:a]\n");
    symlink(p.dir.join(".pio/build"), q.dir.join("linked")).unwrap();
    let r = q.json();
    assert_eq!(env(&r, "a")["apparent_bytes"], FAKE_BUILD_BYTES);
    assert_eq!(env(&r, "a")["exists"], true);
}

// Linux only: compares with GNU du's --block-size=1 (BSD du has no such flag).
#[cfg(target_os = "linux")]
#[test]
fn size_sparse_file_is_apparent_len_and_allocated_near_zero() {
    let p = Project::with_envs(&["a"]);
    let dir = p.env_dir("a");
    fs::create_dir_all(&dir).unwrap();
    fs::File::create(dir.join("sparse.bin"))
        .unwrap()
        .set_len(50_000_000)
        .unwrap();
    fs::create_dir_all(dir.join("empty/deeper")).unwrap();
    age(&dir);
    let r = p.json();
    assert_eq!(num(&r, "a", "apparent_bytes"), 50_000_000);
    assert_eq!(num(&r, "a", "dirs"), 3);
    assert_eq!(num(&r, "a", "allocated_bytes"), du_allocated(&dir));
    assert!(num(&r, "a", "allocated_bytes") < 100_000);
}

// Linux only: APFS (macOS) refuses file names that are not UTF-8.
#[cfg(target_os = "linux")]
#[test]
fn size_non_utf8_names_are_counted() {
    use std::os::unix::ffi::OsStrExt;
    let p = Project::with_envs(&["a"]);
    let dir = p.env_dir("a");
    fs::create_dir_all(dir.join(std::ffi::OsStr::from_bytes(b"d\xff"))).unwrap();
    fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.o")),
        b"12345",
    )
    .unwrap();
    fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"d\xff/x\xfe.o")),
        b"123",
    )
    .unwrap();
    age(&dir);
    let r = p.json();
    assert_eq!(num(&r, "a", "apparent_bytes"), 8);
    assert_eq!(num(&r, "a", "files"), 2);
    assert!(
        !walked(&p.json(), "a"),
        "non-UTF-8 names round-trip through the cache"
    );
}

#[test]
fn size_vanishing_file_is_partial_and_not_stored_fresh() {
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    // Deleted between readdir and lstat, two levels down (so the key itself does not move).
    let r = p
        .size()
        .arg("--json")
        .env(VANISH_HOOK, dir.join("lib8a3/Foo/foo.o"))
        .run()
        .ok()
        .json();
    let a = env(&r, "a");
    assert_eq!(a["vanished"], 1);
    assert_eq!(a["partial"], true);
    assert_eq!(a["state"], "partial");
    assert_eq!(a["changed_during_walk"], false);
    assert_eq!(a["apparent_bytes"], FAKE_BUILD_BYTES - 1_500);
    let r = p.json();
    assert!(
        walked(&r, "a"),
        "a partial result is never served from the cache"
    );
    assert_eq!(env(&r, "a")["partial"], false);
    assert!(!walked(&p.json(), "a"));
}

#[test]
fn size_unreadable_subdir_counts_an_error_and_is_partial() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::with_envs(&["a"]);
    let dir = p.build("a");
    let locked = dir.join("lib8a3/Foo");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let root = id_u() == 0;
    let run_size = || {
        let mut cmd = p.size().arg("--json");
        if root {
            // Root reads everything: drop to nobody for the run.
            let mut command = Command::new("setpriv");
            command.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            command.args(cmd.command.get_args());
            for (key, value) in cmd.command.get_envs() {
                match value {
                    Some(value) => command.env(key, value),
                    None => command.env_remove(key),
                };
            }
            cmd = TestCommand { command };
        }
        cmd.run()
    };
    if root {
        let nobody_can_run = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "--version",
            ])
            .output()
            .is_ok_and(|out| out.status.success());
        if !nobody_can_run {
            eprintln!("skipped: running as root, and nobody cannot run {BIN} through setpriv");
            return;
        }
        fs::set_permissions(p.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // Let nobody store the cache, so that the second run is a real test of the rule.
        let cache_dir = p.cache_path().parent().unwrap().to_path_buf();
        fs::create_dir_all(&cache_dir).unwrap();
        fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let run: Run = run_size().ok();
    let r = run.json();
    assert_eq!(r["cache_written"], true, "{}", run.stderr);
    let a = env(&r, "a");
    assert!(a["errors"].as_u64().unwrap() >= 1, "{a}");
    assert_eq!(a["partial"], true);
    assert_eq!(a["apparent_bytes"], FAKE_BUILD_BYTES - 1_500);
    let r = run_size().ok().json();
    assert!(walked(&r, "a"), "a partial result is walked again");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
}

fn id_u() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn size_corrupt_caches_are_misses_rewritten_without_panic() {
    let p = Project::with_envs(&["a"]);
    p.build("a");
    assert!(walked(&p.json(), "a"));
    let good = fs::read(p.cache_path()).unwrap();
    let good_json: Value = serde_json::from_slice(&good).unwrap();
    let with_apparent = |v: Value| {
        let mut doc = good_json.clone();
        doc["envs"]["a"]["apparent"] = v;
        doc.to_string().into_bytes()
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", vec![0xff, 0x00, 0x13, 0x37]),
        ("null document", b"null".to_vec()),
        ("list document", b"[1, 2]".to_vec()),
        ("unknown schema", {
            let mut doc = good_json.clone();
            doc["schema"] = 99.into();
            doc.to_string().into_bytes()
        }),
        ("schema as string", {
            let mut doc = good_json.clone();
            doc["schema"] = "2".into();
            doc.to_string().into_bytes()
        }),
        ("envs as list", {
            let mut doc = good_json.clone();
            doc["envs"] = serde_json::json!([good_json["envs"]["a"]]);
            doc.to_string().into_bytes()
        }),
        ("key as a number", {
            let mut doc = good_json.clone();
            doc["envs"]["a"]["key"] = 7.into();
            doc.to_string().into_bytes()
        }),
    ];
    for (label, v) in [
        ("string", serde_json::json!("1002152")),
        ("float", serde_json::json!(1_002_152.7)),
        ("string float", serde_json::json!("12.7")),
        ("negative", serde_json::json!(-1)),
        ("null", Value::Null),
        ("list", serde_json::json!([1_002_152])),
    ] {
        cases.push((label, with_apparent(v)));
    }
    for (label, bytes) in cases {
        fs::write(p.cache_path(), &bytes).unwrap();
        let r = p.json();
        assert!(walked(&r, "a"), "{label}: a miss");
        assert_eq!(r["cache_written"], true, "{label}: rewritten");
        assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES, "{label}");
        let rewritten: Value = serde_json::from_slice(&fs::read(p.cache_path()).unwrap()).unwrap();
        assert_eq!(rewritten["schema"], 3, "{label}");
        assert_eq!(
            rewritten["envs"]["a"]["apparent"], FAKE_BUILD_BYTES,
            "{label}"
        );
        assert!(!walked(&p.json(), "a"), "{label}: then a hit");
    }
    // An unwritable cache path (a directory in its place) is not an error either.
    fs::remove_file(p.cache_path()).unwrap();
    fs::create_dir(p.cache_path()).unwrap();
    let run = p.size().arg("--json").run().ok();
    assert_eq!(run.json()["cache_written"], false);
}

#[test]
fn size_skips_storing_while_another_process_holds_the_lock() {
    let p = Project::with_envs(&["a"]);
    p.build("a");
    fs::create_dir_all(p.cache_path().parent().unwrap()).unwrap();
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p.cache_path().with_file_name("build-size.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let started = std::time::Instant::now();
    let r = p.json();
    assert!(walked(&r, "a"));
    assert_eq!(r["cache_written"], false);
    assert!(started.elapsed() < Duration::from_secs(5), "never blocks");
    assert!(!p.cache_path().exists());
    drop(lock);
    assert_eq!(p.json()["cache_written"], true);
    assert!(!walked(&p.json(), "a"));
}

#[test]
fn size_build_dir_resolution_env_var_over_ini_over_workspace() {
    let p = Project::new("[env:a]\n");
    let r = p.json();
    let proj = fs::canonicalize(&p.dir).unwrap();
    assert_eq!(r["build_dir_source"], "default");
    assert_eq!(r["build_dir"], proj.join(".pio/build").to_str().unwrap());
    assert_eq!(
        r["cache_path"],
        proj.join(".pio/.penv-guard/build-size.json")
            .to_str()
            .unwrap()
    );

    // workspace_dir from the ini, interpolated; build_dir defaults under it.
    let p = Project::new("[platformio]\nworkspace_dir = ${PROJECT_DIR}/ws ; comment\n[env:a]\n");
    let proj = fs::canonicalize(&p.dir).unwrap();
    fake_build(&p.dir.join("ws/build/a"));
    let r = p.json();
    assert_eq!(r["build_dir_source"], "default");
    assert_eq!(r["build_dir"], proj.join("ws/build").to_str().unwrap());
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES);
    assert!(p.dir.join("ws/.penv-guard/build-size.json").is_file());

    // PLATFORMIO_WORKSPACE_DIR overrides the ini's workspace_dir.
    let other = p.tmp.path().join("other-ws");
    let r = p
        .size()
        .arg("--json")
        .env("PLATFORMIO_WORKSPACE_DIR", &other)
        .run()
        .ok()
        .json();
    assert_eq!(r["build_dir"], other.join("build").to_str().unwrap());
    assert_eq!(env(&r, "a")["exists"], false);

    // build_dir in the ini, with ${platformio.X} for any key of the section, relative paths
    // taken from the project dir, continuation lines and comments around it.
    let p = Project::new(
        "; a comment\n[platformio]\nflavour = fast\n# another\nbuild_dir = \
         out/${platformio.flavour}\nextra_configs =\n    extra.ini\n[env:a]\nboard = x\n",
    );
    let proj = fs::canonicalize(&p.dir).unwrap();
    fake_build(&p.dir.join("out/fast/a"));
    let r = p.json();
    assert_eq!(r["build_dir_source"], "ini");
    assert_eq!(r["build_dir"], proj.join("out/fast").to_str().unwrap());
    assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES);

    // PLATFORMIO_BUILD_DIR overrides the ini's build_dir.
    let elsewhere = p.tmp.path().join("elsewhere");
    fs::create_dir_all(elsewhere.join("a")).unwrap();
    fs::write(elsewhere.join("a/only.o"), pattern(77)).unwrap();
    let r = p
        .size()
        .arg("--json")
        .env("PLATFORMIO_BUILD_DIR", &elsewhere)
        .run()
        .ok()
        .json();
    assert_eq!(r["build_dir_source"], "env");
    assert_eq!(num(&r, "a", "apparent_bytes"), 77);

    // build_dir = ${platformio.workspace_dir}/... follows PLATFORMIO_WORKSPACE_DIR.
    let p = Project::new("[platformio]\nbuild_dir = ${platformio.workspace_dir}/b2\n[env:a]\n");
    let ws = p.tmp.path().join("ws-env");
    let r = p
        .size()
        .arg("--json")
        .env("PLATFORMIO_WORKSPACE_DIR", &ws)
        .run()
        .ok()
        .json();
    assert_eq!(r["build_dir"], ws.join("b2").to_str().unwrap());
    assert_eq!(
        r["cache_path"],
        ws.join(".penv-guard/build-size.json").to_str().unwrap()
    );
}

#[test]
fn size_esphome_layout_envs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let build = config.join(".esphome/build");
    fake_build(&build.join("kitchen/.pioenvs/kitchen"));
    fs::write(build.join("kitchen/platformio.ini"), "[env:kitchen]\n").unwrap();
    fs::create_dir_all(build.join("garage")).unwrap();
    fs::write(build.join("garage/platformio.ini"), "[env:garage]\n").unwrap(); // never built
    fs::create_dir_all(build.join("stray")).unwrap(); // neither: not a device
    age(&build.join("kitchen/.pioenvs/kitchen"));

    let r = size_cmd(&config).arg("--json").run().ok().json();
    let names: Vec<&str> = r["envs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["garage", "kitchen"]);
    assert_eq!(env(&r, "kitchen")["layout"], "esphome");
    assert_eq!(num(&r, "kitchen", "apparent_bytes"), FAKE_BUILD_BYTES);
    assert_eq!(env(&r, "garage")["state"], "missing");
    assert_eq!(r["ini"], Value::Null);
    assert!(
        config
            .join(".esphome/.penv-guard/build-size.json")
            .is_file()
    );
    assert!(
        !config.join(".pio").exists(),
        "no .pio made in an ESPHome config dir"
    );
    let r = size_cmd(&config)
        .args(["--json", "--env", "kitchen"])
        .run()
        .ok()
        .json();
    assert_eq!(r["envs"].as_array().unwrap().len(), 1);
    assert!(!walked(&r, "kitchen"));

    // Next to a platformio.ini with the same env name, the ESPHome one is `esphome:<name>`.
    fs::write(config.join("platformio.ini"), "[env:kitchen]\n").unwrap();
    let r = size_cmd(&config).arg("--json").run().ok().json();
    assert_eq!(env(&r, "kitchen")["layout"], "platformio");
    assert_eq!(env(&r, "esphome:kitchen")["layout"], "esphome");
    assert_eq!(
        num(&r, "esphome:kitchen", "apparent_bytes"),
        FAKE_BUILD_BYTES
    );
}

#[test]
fn size_orphans_are_listed_and_project_checksum_ignored() {
    let p = Project::with_envs(&["a"]);
    p.build("a");
    let build = p.dir.join(".pio/build");
    fs::write(build.join("project.checksum"), "abc").unwrap();
    fs::create_dir_all(build.join("renamed-env")).unwrap();
    let r = p.json();
    let orphans: Vec<&str> = r["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(orphans, ["renamed-env"]);
    let run = p.size().run().ok();
    assert!(run.stdout.contains("renamed-env"), "{}", run.stdout);
}

#[test]
fn size_prints_a_table_on_stdout() {
    let p = Project::with_envs(&["a", "b"]);
    p.build("a");
    let run = p.size().run().ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("ENV"), "{}", run.stdout);
    for column in ["PATH", "APPARENT", "ALLOCATED", "FILES", "STATE"] {
        assert!(lines[0].contains(column), "{}", run.stdout);
    }
    assert!(
        lines[1].starts_with("a ") && lines[1].ends_with("walked"),
        "{}",
        run.stdout
    );
    assert!(lines[1].contains(".pio/build/a"), "{}", run.stdout);
    assert!(lines[2].starts_with("b ") && lines[2].ends_with("missing"));
    assert!(lines[3].starts_with("total"));
    let run = p.size().args(["--env", "a"]).run().ok();
    assert!(
        run.stdout.lines().nth(1).unwrap().ends_with("fresh"),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 3);
}

#[test]
fn size_bad_input_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-project");
    let run = size_cmd(&missing).run().code(2);
    assert!(run.stderr.contains("no-such-project"), "{}", run.stderr);
    let run = size_cmd(tmp.path()).run().code(2);
    assert!(run.stderr.contains("no platformio.ini"), "{}", run.stderr);
    let p = Project::with_envs(&["a"]);
    let run = p.size().args(["--env", "nope"]).run().code(2);
    assert!(run.stderr.contains("`nope`"), "{}", run.stderr);
    assert!(run.stderr.contains("known: a"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

// Linux only: compares with GNU du's --block-size=1 (BSD du has no such flag).
#[cfg(target_os = "linux")]
#[test]
fn size_matches_du_and_a_plain_sum_on_a_generated_tree() {
    let p = Project::with_envs(&["gen"]);
    let dir = p.env_dir("gen");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut files = 0;
    for d in 0..12 {
        for s in 0..(next() % 4) {
            let sub = dir.join(format!("lib{d}/part{s}"));
            fs::create_dir_all(&sub).unwrap();
            for f in 0..(next() % 30) {
                let len = match next() % 10 {
                    0 => 0,
                    1..=6 => next() % 8_192,
                    7 | 8 => next() % 200_000,
                    _ => next() % 1_500_000,
                };
                fs::write(
                    sub.join(format!("f{f}.o")),
                    pattern(usize::try_from(len).unwrap()),
                )
                .unwrap();
                files += 1;
            }
        }
        fs::create_dir_all(dir.join(format!("empty{d}"))).unwrap();
    }
    assert!(files > 50, "{files}");
    let r = p.json();
    assert_eq!(num(&r, "gen", "allocated_bytes"), du_allocated(&dir));
    assert_eq!(num(&r, "gen", "apparent_bytes"), python_apparent(&dir));
    assert_eq!(num(&r, "gen", "files"), files);
}

/// `du -s --block-size=1`.
fn du_allocated(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Σ `st_size` of regular files, by Python's `os.walk` + `lstat`.
fn python_apparent(dir: &Path) -> u64 {
    let script = "import os, stat, sys\n\
        print(sum(st.st_size for d, _, fs in os.walk(sys.argv[1]) for f in fs\n\
                  for st in [os.lstat(os.path.join(d, f))] if stat.S_ISREG(st.st_mode)))";
    let out = crate::support::succeed(
        Command::new(crate::support::host_python())
            .args(["-c", script])
            .arg(dir),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs `command`, failing the test (instead of hanging it) if it has not exited within 20 s.
fn run_without_hanging(command: TestCommand) -> Run {
    let mut child = command.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("penv-guard size hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Run::from(child.wait_with_output().unwrap())
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Something penv-guard did not create sits at its cache path: every call is a miss that walks
/// and prints the sizes, none hangs or fails, and the thing is left as it was.
fn assert_foreign_cache_path_is_a_miss_left_alone(p: &Project, what: &str) {
    for _ in 0..2 {
        let run = run_without_hanging(p.size().arg("--json")).code(0);
        let r = run.json();
        assert!(walked(&r, "a"), "{what}: a miss");
        assert_eq!(num(&r, "a", "apparent_bytes"), FAKE_BUILD_BYTES, "{what}");
        assert_eq!(r["cache_written"], false, "{what}: not replaced");
        assert!(
            run.stderr.contains("not cached") && run.stderr.contains(what),
            "{what}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    let run = run_without_hanging(p.size()).code(0);
    assert!(run.stdout.contains("walked"), "{}", run.stdout);
}

#[test]
fn size_fifo_at_the_cache_path_is_a_miss_never_a_hang() {
    let p = Project::with_envs(&["a"]);
    p.build("a");
    fs::create_dir_all(p.cache_path().parent().unwrap()).unwrap();
    mkfifo(&p.cache_path());
    assert_foreign_cache_path_is_a_miss_left_alone(&p, "a FIFO");
    let kind = fs::symlink_metadata(p.cache_path()).unwrap().file_type();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&kind),
        "the FIFO is still there"
    );
}

#[test]
fn size_symlink_to_dev_zero_at_the_cache_path_is_a_miss_never_read() {
    let p = Project::with_envs(&["a"]);
    p.build("a");
    fs::create_dir_all(p.cache_path().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", p.cache_path()).unwrap();
    assert_foreign_cache_path_is_a_miss_left_alone(&p, "a symlink");
    assert_eq!(
        fs::read_link(p.cache_path()).unwrap(),
        Path::new("/dev/zero"),
        "the symlink is still there"
    );
}

#[test]
fn size_directory_at_the_cache_path_is_a_miss_left_alone() {
    let p = Project::with_envs(&["a"]);
    p.build("a");
    fs::create_dir_all(p.cache_path()).unwrap();
    fs::write(p.cache_path().join("keep"), "not penv-guard's").unwrap();
    assert_foreign_cache_path_is_a_miss_left_alone(&p, "a directory");
    assert_eq!(
        fs::read_to_string(p.cache_path().join("keep")).unwrap(),
        "not penv-guard's"
    );
}

#[test]
fn size_symlink_or_fifo_at_the_lock_path_is_not_followed_nor_blocking() {
    let p = Project::with_envs(&["a"]);
    p.build("a");
    let lock = p.cache_path().with_file_name("build-size.lock");
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let target = p.tmp.path().join("lock-target");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let run = run_without_hanging(p.size().arg("--json")).code(0);
    assert_eq!(run.json()["cache_written"], false);
    assert!(run.stderr.contains("build-size.lock"), "{}", run.stderr);
    assert!(!target.exists(), "the symlink was not followed");
    assert!(!p.cache_path().exists());

    fs::remove_file(&lock).unwrap();
    mkfifo(&lock);
    let run = run_without_hanging(p.size().arg("--json")).code(0);
    assert_eq!(run.json()["cache_written"], false);
    assert!(run.stderr.contains("a FIFO"), "{}", run.stderr);
    assert!(!p.cache_path().exists());
}

#[test]
fn size_fifo_platformio_ini_exits_2_naming_it_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let ini = tmp.path().join("platformio.ini");
    mkfifo(&ini);
    let run = run_without_hanging(size_cmd(tmp.path())).code(2);
    assert!(
        run.stderr.contains("platformio.ini") && run.stderr.contains("a FIFO"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}
