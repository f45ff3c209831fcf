//! The `pio run` world of tests/integration/pio.rs: a core dir with the fixture platform, the
//! fixture project, and the log the platform writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{BIN, Run, World, repo, tools_path};

pub fn pio_bin() -> PathBuf {
    tools_path("venv/bin/pio")
}

/// The offline tool-scons package (its `.piopm` makes PlatformIO take it as installed).
pub fn tool_scons() -> PathBuf {
    tools_path("pio-core/packages/tool-scons/.piopm")
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Copies a directory tree, following symlinks (the fixtures link to platform-integration/).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if fs::metadata(entry.path()).unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub struct PioRun {
    pub run: Run,
    pub log: Vec<Value>,
}

impl PioRun {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.run.code,
            Some(0),
            "pio run failed\nstdout: {}\nstderr: {}\nlog: {:#?}",
            self.run.stdout,
            self.run.stderr,
            self.log
        );
        self
    }

    /// The penv setups the platform logged, one per `configure_default_packages`.
    pub fn setups(&self) -> Vec<&Value> {
        self.log
            .iter()
            .filter(|r| r["source"] == "fixture")
            .collect()
    }

    /// The programs penv_setup.py started, by file name, over all setups.
    pub fn programs(&self) -> Vec<String> {
        self.setups()
            .iter()
            .flat_map(|s| s["calls"].as_array().unwrap().iter())
            .map(|c| {
                let argv0 = c["argv"][0].as_str().unwrap_or_default();
                Path::new(argv0)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Per setup: "guard" when penv_setup.py asked penv-guard, else "upstream".
    pub fn paths(&self) -> Vec<String> {
        self.setups()
            .iter()
            .map(|s| {
                let asked = s["calls"].as_array().unwrap().iter().any(|c| {
                    c["argv"][0]
                        .as_str()
                        .is_some_and(|a| a.ends_with("penv-guard"))
                });
                if asked { "guard" } else { "upstream" }.to_owned()
            })
            .collect()
    }

    pub fn ensure_calls(&self) -> Vec<&Value> {
        self.setups()
            .into_iter()
            .flat_map(|s| s["calls"].as_array().unwrap().iter())
            .filter(|c| {
                c["argv"][0]
                    .as_str()
                    .is_some_and(|a| a.ends_with("penv-guard"))
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<String> {
        self.ensure_calls()
            .iter()
            .map(|r| r["status"].as_str().unwrap_or("none").to_owned())
            .collect()
    }

    pub fn connects(&self) -> usize {
        self.setups()
            .iter()
            .map(|s| s["connects"].as_array().unwrap().len())
            .sum()
    }

    /// Milliseconds spent on the penv per `pio run`: (the `penv-guard ensure` calls, the whole
    /// penv setups including the certifi variables and install_freertos_gdb).
    pub fn penv_ms(&self) -> (f64, f64) {
        let ensure = self
            .ensure_calls()
            .iter()
            .map(|c| c["ms"].as_f64().unwrap())
            .sum();
        let setups = self
            .setups()
            .iter()
            .map(|r| r["elapsed_ms"].as_f64().unwrap())
            .sum();
        (ensure, setups)
    }
}

pub struct Pio {
    pub w: World,
    pub core: PathBuf,
    /// `<core>/platforms/espressif32`, the project's platform.
    pub platform: PathBuf,
    pub project: PathBuf,
    pub log: PathBuf,
    /// A directory holding only `penv-guard` (a link to the test binary), put first on PATH.
    pub bin_dir: PathBuf,
    pub hide_binary: bool,
    pub network: &'static str,
}

impl Pio {
    pub fn new() -> Pio {
        let w = World::new();
        crate::support::certifi_wheel().build(&w.wheels);
        let core = w.dir.path().join("core");
        assert_eq!(
            core.join("penv"),
            w.penv,
            "penv-guard's default penv is <core>/penv"
        );
        fs::create_dir_all(core.join("packages")).unwrap();
        std::os::unix::fs::symlink(tool_scons(), core.join("packages/tool-scons")).unwrap();

        let fixtures = repo().join("tests/fixtures/pio");
        let platform = core.join("platforms/espressif32");
        copy_tree(&fixtures.join("platform"), &platform);
        let bin_dir = w.dir.path().join("guard-bin");
        fs::create_dir_all(&bin_dir).unwrap();
        std::os::unix::fs::symlink(BIN, bin_dir.join("penv-guard")).unwrap();
        let project = w.dir.path().join("project");
        copy_tree(&fixtures.join("project"), &project);
        let ini = project.join("platformio.ini");
        let text = fs::read_to_string(&ini).unwrap().replace(
            "platform = symlink://../platform",
            &format!("platform = symlink://{}", platform.display()),
        );
        fs::write(&ini, text).unwrap();
        Pio {
            log: w.dir.path().join("pio-log.jsonl"),
            core,
            platform,
            project,
            bin_dir,
            w,
            hide_binary: false,
            network: "down",
        }
    }

    /// A core dir whose platform `penv-guard platform install` has hooked.
    pub fn hooked() -> Pio {
        let p = Pio::new();
        p.platform_cmd("install");
        p
    }

    pub fn platform_cmd(&self, action: &str) -> Run {
        Run::from(
            Command::new(BIN)
                .args(["platform", action, "--core-dir"])
                .arg(&self.core)
                .output()
                .unwrap(),
        )
        .ok()
    }

    pub fn penv_setup(&self) -> Vec<u8> {
        fs::read(self.platform.join("builder/penv_setup.py")).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(pio_bin());
        cmd.args(args)
            .current_dir(&self.project)
            .env("PLATFORMIO_CORE_DIR", &self.core)
            .env("PLATFORMIO_SETTING_ENABLE_TELEMETRY", "No")
            .env("PLATFORMIO_DISABLE_UPGRADE_CHECK", "true")
            .env("PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL", "9999")
            .env("PLATFORMIO_DISABLE_PROGRESSBAR", "true")
            .env("PENV_GUARD_UV", &self.w.shim)
            .env("UV_FIND_LINKS", self.w.find_links())
            // uv has no env var for --no-index: an empty local default index keeps it off PyPI.
            .env("UV_DEFAULT_INDEX", self.w.empty_index_url())
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("PENV_GUARD_FIXTURE_LOG", &self.log)
            .env("PENV_GUARD_FIXTURE_NETWORK", self.network)
            // Timings as users see them: bytecode caches on.
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .env_remove("PLATFORMIO_OFFLINE")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("PLATFORMIO_BUILD_DIR")
            .env_remove("PLATFORMIO_WORKSPACE_DIR")
            .env_remove("PENV_GUARD_BIN")
            .env_remove("PENV_GUARD_LOCK_TIMEOUT")
            .env_remove("PENV_GUARD_FIXTURE_DEPS")
            .env_remove("VIRTUAL_ENV");
        // penv-guard is found on PATH (pio's Python has none next to it); hidden, nowhere.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path)
            .filter(|dir| !dir.join("penv-guard").exists())
            .collect();
        if !self.hide_binary {
            dirs.insert(0, self.bin_dir.clone());
        }
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
        cmd
    }

    /// `pio run ARGS` with a fresh log.
    pub fn run(&self, args: &[&str]) -> PioRun {
        let _ = fs::remove_file(&self.log);
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let output = self.command(&full).output().expect("pio runs");
        let log = fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        PioRun {
            run: Run::from(output),
            log,
        }
    }

    pub fn build_dir(&self, env: &str) -> PathBuf {
        self.project.join(".pio/build").join(env)
    }

    pub fn uv_log(&self) -> String {
        fs::read_to_string(&self.w.uv_log).unwrap_or_default()
    }

    pub fn size_json(&self, env: &str) -> Value {
        let run = Run::from(
            Command::new(BIN)
                .args(["size", "--project-dir"])
                .arg(&self.project)
                .args(["--env", env, "--json"])
                .output()
                .unwrap(),
        );
        assert_eq!(run.code, Some(0), "size failed: {}", run.stderr);
        let report = run.json();
        report["envs"]
            .as_array()
            .unwrap_or_else(|| panic!("no envs in {report}"))
            .iter()
            .find(|e| e["name"] == env)
            .unwrap_or_else(|| panic!("no env {env} in {report}"))
            .clone()
    }
}
