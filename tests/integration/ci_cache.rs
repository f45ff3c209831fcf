//! The README's "CI example (GitHub Actions)", run as written on two fresh machines.
//!
//! The test reads the ```yaml block under that heading in README.md and runs its steps in order.
//! Every `run:` line runs with `sh -c`. `HOME` is the test's home (one path for both machines,
//! reached through a symlink, as `/home -> /var/home` on OSTree systems), and `PLATFORMIO_CORE_DIR`
//! is unset, so the README's `~/.platformio` is used. `GITHUB_OUTPUT` is a file. The environment is
//! otherwise cleared. Some steps are played by the test:
//! - `actions/setup-python`: the test's host `python3` is on PATH.
//! - `pip install …`: a new machine directory comes first on PATH. It holds `penv-guard` (the test
//!   binary) and `uv`: a logging shim in front of a fresh copy of the real uv binary, so each
//!   machine's uv has its own path, inode and mtime. `PENV_GUARD_UV` names that shim, because
//!   without it the restored penv's own uv would run and its calls would not be logged.
//! - `actions/cache`: tar of the `path:` entries under `HOME`, stored by the expanded `key:`.
//!   It restores at the step (an exact key, else the newest entry matching `restore-keys`) and
//!   saves at the end of a job that had no exact hit.
//! - `pio run` is skipped (`tests/integration/pio.rs` runs real `pio run`s).
//!
//! Any other step fails the test, so the README cannot drift from what is tested. The packages
//! are the embedded default list (`data/esp32-deps.json`), as tiny wheels of the lowest allowed
//! versions. They are served over HTTP through `UV_FIND_LINKS`, with the uv wheel, by a server
//! that logs every request. `UV_DEFAULT_INDEX` is an empty local directory.
//!
//! What the test can honestly assert on the new machine: the key is the same before the
//! restore, after it and after `ensure`; the cache hits exactly; `ensure --offline` exits 0
//! after exactly one `uv pip install --offline` and no `uv venv`; the server sees no request, so
//! nothing was downloaded; the next `ensure` is a hit that starts no uv. tar gives every file a
//! new inode and ctime, so the first run after a restore is a miss ("changed behind
//! penv-guard's back"). That run re-checks with uv offline, checks RECORDs, imports and records
//! again. A hit right away would need trusting stamps that did not match.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::{
    BIN, Run, Server, Wheel, host_python, real_uv, repo, set_executable, tool_wheels,
};

const HEADING: &str = "## CI example (GitHub Actions)";

/// One step of the workflow block, as written.
#[derive(Debug, Default)]
struct RawStep {
    fields: BTreeMap<String, String>,
    with: BTreeMap<String, String>,
}

/// A step as the test plays it.
#[derive(Debug)]
enum Step {
    SetupPython,
    /// The tools step (`pip install …`); the test has made the machine's directory instead.
    Tools,
    Run {
        id: Option<String>,
        command: String,
    },
    /// `pio run`: skipped.
    Build,
    Cache {
        paths: Vec<String>,
        key: String,
        restore_keys: Vec<String>,
    },
}

fn readme_ci_block() -> String {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find(HEADING)
        .unwrap_or_else(|| panic!("README.md has no `{HEADING}`"))..];
    let start = section.find("```yaml\n").expect("a ```yaml block") + "```yaml\n".len();
    let end = section[start..].find("```").expect("the block's end");
    section[start..start + end].to_owned()
}

/// The subset of YAML the block uses: `- key: value` steps, two-space keys, a `with:` map, and
/// `|` literal blocks in it. Anything else fails.
fn parse_steps(block: &str) -> Vec<RawStep> {
    let mut steps: Vec<RawStep> = Vec::new();
    let mut literal: Option<String> = None;
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (indent, text) = if let Some(rest) = line.strip_prefix("- ") {
            steps.push(RawStep::default());
            (2, rest)
        } else {
            let text = line.trim_start_matches(' ');
            (line.len() - text.len(), text)
        };
        let step = steps
            .last_mut()
            .unwrap_or_else(|| panic!("a line before the first step: {line}"));
        if indent >= 6 {
            let key = literal
                .as_ref()
                .unwrap_or_else(|| panic!("unexpected indentation: {line}"));
            let value = step.with.get_mut(key).unwrap();
            value.push_str(text);
            value.push('\n');
            continue;
        }
        literal = None;
        let (key, value) = text.split_once(':').map_or_else(
            || panic!("not `key: value`: {line}"),
            |(k, v)| (k.trim().to_owned(), v.trim().to_owned()),
        );
        match indent {
            2 => {
                step.fields.insert(key, value);
            }
            4 => {
                assert!(
                    step.fields.get("with").is_some_and(String::is_empty),
                    "a nested key outside `with:`: {line}"
                );
                if value == "|" {
                    literal = Some(key.clone());
                    step.with.insert(key, String::new());
                } else {
                    step.with.insert(key, value);
                }
            }
            _ => panic!("unexpected indentation: {line}"),
        }
    }
    steps
}

fn interpret(raw: &RawStep) -> Step {
    if let Some(uses) = raw.fields.get("uses") {
        if uses.starts_with("actions/setup-python@") {
            return Step::SetupPython;
        }
        assert!(
            uses.starts_with("actions/cache@"),
            "a step the test cannot play: uses: {uses}"
        );
        let lines = |key: &str| -> Vec<String> {
            raw.with
                .get(key)
                .map(|v| v.lines().map(|l| l.trim().to_owned()).collect())
                .unwrap_or_default()
        };
        let key = raw
            .with
            .get("key")
            .expect("actions/cache has a key")
            .clone();
        return Step::Cache {
            paths: lines("path"),
            key,
            restore_keys: lines("restore-keys"),
        };
    }
    let command = raw
        .fields
        .get("run")
        .unwrap_or_else(|| panic!("a step with neither uses nor run: {raw:?}"))
        .clone();
    if command.starts_with("pip install ") {
        Step::Tools
    } else if command.starts_with("pio ") {
        Step::Build
    } else {
        Step::Run {
            id: raw.fields.get("id").cloned(),
            command,
        }
    }
}

/// The packages of the embedded default list: a tiny wheel of the lowest version each allows.
fn build_default_list_wheels(dir: &Path) {
    let text = fs::read_to_string(repo().join("data/esp32-deps.json")).unwrap();
    let deps: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    assert!(!deps.is_empty());
    for (name, spec) in &deps {
        let version = if spec.is_empty() {
            "1.0"
        } else {
            spec.strip_prefix(">=")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("{name}: `{spec}` has no `>=` lower bound to build"))
        };
        let module = name.replace(['-', '.'], "_").to_lowercase();
        Wheel::new(name, version).module(&module, "").build(dir);
    }
    let uv_wheel = fs::read_dir(tool_wheels())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("uv-"))
        .expect("the uv wheel in .tools/wheels");
    std::os::unix::fs::symlink(uv_wheel.path(), dir.join(uv_wheel.file_name())).unwrap();
}

struct Ci {
    root: tempfile::TempDir,
    /// `HOME`: a symlink to `home_real`, the same path on both machines.
    home: PathBuf,
    home_real: PathBuf,
    server: Server,
    server_log: PathBuf,
    uv_log: PathBuf,
    /// actions/cache's storage: `<key>.tar`.
    store: PathBuf,
}

impl Ci {
    fn new() -> Ci {
        let root = tempfile::Builder::new()
            .prefix("penv-guard-ci-")
            .tempdir()
            .unwrap();
        let served = root.path().join("served");
        fs::create_dir_all(&served).unwrap();
        build_default_list_wheels(&served);
        let server_log = root.path().join("server-requests.log");
        let http = Server::serve_logged(&served, Some(&server_log));
        let home_real = root.path().join("home-real");
        let home = root.path().join("home");
        fs::create_dir_all(&home_real).unwrap();
        std::os::unix::fs::symlink(&home_real, &home).unwrap();
        let store = root.path().join("actions-cache");
        fs::create_dir_all(&store).unwrap();
        fs::create_dir_all(root.path().join("empty-index")).unwrap();
        Ci {
            uv_log: root.path().join("uv-calls.log"),
            root,
            home,
            home_real,
            server: http,
            server_log,
            store,
        }
    }

    fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.server_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") || l.contains("\"HEAD "))
            .map(str::to_owned)
            .collect()
    }

    /// The uv calls `machine` made, as the shim logged their arguments.
    fn uv_calls(&self, machine: &Machine) -> Vec<String> {
        let marker = format!(" {} start ", machine.name);
        fs::read_to_string(&self.uv_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(&marker))
            .map(|(_, rest)| rest.split_once(' ').map_or("", |(_, args)| args).to_owned())
            .collect()
    }

    fn uv_exit_codes(&self, machine: &Machine) -> Vec<String> {
        let marker = format!(" {} end ", machine.name);
        fs::read_to_string(&self.uv_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&marker))
            .filter_map(|l| l.rsplit(' ').next().map(str::to_owned))
            .collect()
    }

    fn state(&self) -> serde_json::Value {
        let path = self.home.join(".platformio/penv/.penv-guard-state.json");
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Plays the tools step on a new machine: `penv-guard` and a freshly copied uv, whose file
    /// gets `uv_mtime`.
    fn install_tools(&self, name: &str, uv_mtime: SystemTime) -> Machine {
        let dir = self.root.path().join(name);
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("penv-guard")).unwrap();
        let uv_binary = dir.join("uv-dist/uv");
        fs::create_dir_all(uv_binary.parent().unwrap()).unwrap();
        fs::copy(real_uv(), &uv_binary).unwrap();
        set_executable(&uv_binary);
        fs::File::options()
            .write(true)
            .open(&uv_binary)
            .unwrap()
            .set_modified(uv_mtime)
            .unwrap();
        let shim = bin.join("uv");
        fs::write(
            &shim,
            format!(
                "#!/bin/sh\necho \"$$ {name} start $(date +%s.%N) $*\" >> '{log}'\n'{uv}' \"$@\"\nrc=$?\necho \"$$ {name} end $(date +%s.%N) rc=$rc\" >> '{log}'\nexit $rc\n",
                log = self.uv_log.display(),
                uv = uv_binary.display(),
            ),
        )
        .unwrap();
        set_executable(&shim);
        let workspace = dir.join("workspace");
        fs::create_dir_all(&workspace).unwrap();
        Machine {
            name: name.to_owned(),
            dir,
            bin,
            shim,
            uv_binary,
            workspace,
        }
    }

    /// `sh -c command` on `machine`, in the job's environment.
    fn sh(&self, machine: &Machine, command: &str) -> Run {
        let python_dir = host_python().parent().unwrap().to_path_buf();
        let path = std::env::join_paths([
            machine.bin.clone(),
            python_dir,
            PathBuf::from("/usr/local/bin"),
            PathBuf::from("/usr/bin"),
            PathBuf::from("/bin"),
        ])
        .unwrap();
        let output = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", path)
            .env("GITHUB_OUTPUT", machine.github_output())
            .env("UV_FIND_LINKS", &self.server.url)
            .env(
                "UV_DEFAULT_INDEX",
                format!("file://{}", self.root.path().join("empty-index").display()),
            )
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("PENV_GUARD_UV", &machine.shim)
            .current_dir(&machine.workspace)
            .output()
            .unwrap();
        Run::from(output)
    }

    /// Runs the workflow's steps on `machine`, then the cache's post-job save.
    fn job(&self, machine: &Machine, steps: &[Step]) -> Job {
        let mut job = Job::default();
        let mut cache_save: Option<(String, Vec<String>)> = None;
        for step in steps {
            match step {
                Step::SetupPython | Step::Tools | Step::Build => {}
                Step::Run { id, command } => {
                    let run = self.sh(machine, command).code(0);
                    if let Some(id) = id {
                        for line in fs::read_to_string(machine.github_output())
                            .unwrap_or_default()
                            .lines()
                        {
                            let (name, value) = line.split_once('=').unwrap();
                            job.outputs
                                .insert(format!("steps.{id}.outputs.{name}"), value.to_owned());
                        }
                    }
                    job.runs.push((command.clone(), run));
                }
                Step::Cache {
                    paths,
                    key,
                    restore_keys,
                } => {
                    let key = job.expand(key);
                    let exact = self.store.join(format!("{key}.tar"));
                    job.cache_key = Some(key.clone());
                    if exact.is_file() {
                        self.restore(&exact);
                        job.cache_hit = true;
                        job.restored = Some(key);
                    } else {
                        let prefixes: Vec<String> =
                            restore_keys.iter().map(|k| job.expand(k)).collect();
                        if let Some((name, archive)) = self.newest_matching(&prefixes) {
                            self.restore(&archive);
                            job.restored = Some(name);
                        }
                        cache_save = Some((key, paths.clone()));
                    }
                }
            }
        }
        if let Some((key, paths)) = cache_save {
            self.save(&key, &paths);
        }
        job
    }

    fn relative_paths(paths: &[String]) -> Vec<String> {
        paths
            .iter()
            .map(|p| {
                p.strip_prefix("~/")
                    .unwrap_or_else(|| panic!("cache path {p} is not under ~/"))
                    .to_owned()
            })
            .collect()
    }

    fn save(&self, key: &str, paths: &[String]) {
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "key {key}"
        );
        let status = Command::new("tar")
            .arg("-cf")
            .arg(self.store.join(format!("{key}.tar")))
            .arg("-C")
            .arg(&self.home)
            .args(Ci::relative_paths(paths))
            .status()
            .unwrap();
        assert!(status.success(), "tar -c");
    }

    fn restore(&self, archive: &Path) {
        let status = Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&self.home)
            .status()
            .unwrap();
        assert!(status.success(), "tar -x");
    }

    fn newest_matching(&self, prefixes: &[String]) -> Option<(String, PathBuf)> {
        let mut entries: Vec<(SystemTime, String, PathBuf)> = fs::read_dir(&self.store)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".tar")?
                    .to_owned();
                prefixes
                    .iter()
                    .any(|p| name.starts_with(p.as_str()))
                    .then(|| (e.metadata().unwrap().modified().unwrap(), name, e.path()))
            })
            .collect();
        entries.sort();
        entries.pop().map(|(_, name, path)| (name, path))
    }

    /// A new machine starts with an empty home at the same path.
    fn wipe_home(&self) {
        fs::remove_dir_all(&self.home_real).unwrap();
        fs::create_dir_all(&self.home_real).unwrap();
    }
}

struct Machine {
    name: String,
    dir: PathBuf,
    bin: PathBuf,
    shim: PathBuf,
    uv_binary: PathBuf,
    workspace: PathBuf,
}

impl Machine {
    fn github_output(&self) -> PathBuf {
        self.dir.join("github-output")
    }

    /// (path, inode, mtime) of the uv binary behind the shim.
    fn uv_identity(&self) -> (PathBuf, u64, SystemTime) {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(&self.uv_binary).unwrap();
        (self.uv_binary.clone(), meta.ino(), meta.modified().unwrap())
    }
}

#[derive(Default)]
struct Job {
    outputs: BTreeMap<String, String>,
    runs: Vec<(String, Run)>,
    cache_key: Option<String>,
    cache_hit: bool,
    restored: Option<String>,
}

impl Job {
    /// `${{ runner.os }}` and `${{ steps.<id>.outputs.<name> }}`.
    fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("`}}`") + start;
            let expression = rest[start + 3..end].trim();
            let value = if expression == "runner.os" {
                "Linux"
            } else {
                self.outputs
                    .get(expression)
                    .unwrap_or_else(|| panic!("no value for `{expression}`"))
            };
            out.push_str(value);
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    /// The output of the one `run:` step whose command contains `needle`.
    fn run(&self, needle: &str) -> &Run {
        let mut found = self.runs.iter().filter(|(c, _)| c.contains(needle));
        let (_, run) = found
            .next()
            .unwrap_or_else(|| panic!("no run step with `{needle}`"));
        assert!(found.next().is_none(), "several run steps with `{needle}`");
        run
    }

    fn key(&self) -> String {
        let key = self
            .outputs
            .get("steps.fp.outputs.key")
            .expect("the fingerprint step writes key= to GITHUB_OUTPUT")
            .clone();
        assert!(
            key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()),
            "a SHA-256 key: {key}"
        );
        key
    }
}

#[test]
fn readme_ci_example_gives_the_same_key_and_restores_offline_on_a_new_machine() {
    let steps: Vec<Step> = parse_steps(&readme_ci_block())
        .into_iter()
        .map(|raw| interpret(&raw))
        .collect();
    // The block has the shape the README explains: tools, key, cache, ensure, build.
    let order: Vec<&str> = steps
        .iter()
        .map(|s| match s {
            Step::SetupPython => "setup-python",
            Step::Tools => "tools",
            Step::Run { command, .. } if command.contains("penv-guard fingerprint") => "key",
            Step::Run { command, .. } if command.contains("penv-guard ensure") => "ensure",
            Step::Run { .. } => "run",
            Step::Build => "build",
            Step::Cache { .. } => "cache",
        })
        .collect();
    assert_eq!(
        order,
        ["setup-python", "tools", "key", "cache", "ensure", "build"]
    );
    // What the assertions below rely on: offline from the cache first, online only as fallback.
    let commands: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Run { command, .. } => Some(command.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        commands[1],
        "penv-guard ensure --offline || penv-guard ensure"
    );

    let ci = Ci::new();

    // Machine 1: a cold cache. The key is computed before the penv exists.
    let m1 = ci.install_tools(
        "machine-1",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let job1 = ci.job(&m1, &steps);
    let key = job1.key();
    assert!(
        !job1.cache_hit && job1.restored.is_none(),
        "the store was empty"
    );
    // The offline attempt fails (nothing cached yet), the online one installs.
    let calls = ci.uv_calls(&m1);
    let installs: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("pip install"))
        .collect();
    assert_eq!(installs.len(), 2, "{calls:#?}");
    assert!(installs[0].contains("--offline") && !installs[1].contains("--offline"));
    assert!(
        !ci.requests().is_empty(),
        "machine 1 downloaded through the server"
    );
    let after_install = ci.sh(&m1, "penv-guard fingerprint").code(0);
    assert_eq!(
        after_install.stdout.trim(),
        key,
        "the key before the install equals the key after it"
    );
    assert_eq!(
        ci.state()["fingerprint"],
        key.as_str(),
        "ensure recorded the key"
    );
    let archive = ci
        .store
        .join(format!("{}.tar", job1.cache_key.clone().unwrap()));
    assert!(archive.is_file(), "the post-job step saved the cache");

    // Machine 2: uv installed afresh at another path, at another time; the same home path.
    let m2 = ci.install_tools("machine-2", SystemTime::now());
    let (uv1, uv2) = (m1.uv_identity(), m2.uv_identity());
    assert!(
        uv1.0 != uv2.0 && uv1.1 != uv2.1 && uv1.2 != uv2.2,
        "{uv1:?} {uv2:?}"
    );
    fs::remove_dir_all(&m1.dir).unwrap();
    ci.wipe_home();
    assert!(!ci.home.join(".platformio").exists());
    let requests_before = ci.requests();

    let job2 = ci.job(&m2, &steps);
    assert_eq!(job2.key(), key, "a new machine computes the same key");
    assert!(job2.cache_hit, "the cache is restored by its exact key");
    let ensure = job2.run("penv-guard ensure");
    assert!(
        ensure.stderr.contains("changed behind penv-guard's back"),
        "tar gives new inodes, so the first run re-checks: {}",
        ensure.stderr
    );
    let calls = ci.uv_calls(&m2);
    let installs: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("pip install"))
        .collect();
    assert_eq!(installs.len(), 1, "one re-check, no fallback: {calls:#?}");
    assert!(installs[0].contains("--offline"), "{}", installs[0]);
    assert!(
        !calls.iter().any(|c| c.starts_with("venv")),
        "the restored penv is kept: {calls:#?}"
    );
    assert!(
        ci.uv_exit_codes(&m2).iter().all(|rc| rc == "rc=0"),
        "{:?}",
        ci.uv_exit_codes(&m2)
    );
    assert_eq!(ci.requests(), requests_before, "nothing was downloaded");
    let after_restore = ci.sh(&m2, "penv-guard fingerprint").code(0);
    assert_eq!(after_restore.stdout.trim(), key);
    assert_eq!(ci.state()["fingerprint"], key.as_str());

    // The next run is a pure hit: no uv at all.
    let calls_before = fs::read_to_string(&ci.uv_log).unwrap();
    let next = ci.sh(&m2, "penv-guard ensure --offline --json").code(0);
    assert_eq!(next.status(), "hit", "{}", next.stderr);
    assert_eq!(next.json()["fingerprint"], key.as_str());
    assert_eq!(fs::read_to_string(&ci.uv_log).unwrap(), calls_before);
    assert_eq!(ci.requests(), requests_before);
}
