//! pioarduino's builder/penv_setup.py itself, run by PlatformIO's Python (.tools/venv, which has
//! `platformio` and `semantic_version`) through tests/fixtures/penv_setup_harness.py: loaded by
//! path as platform.py loads it, with a fake platform, a recording `socket.create_connection`
//! (network up or down) and recording subprocess functions. The hooked file is upstream's HEAD
//! with platform-integration/penv_setup.patch applied by `git apply`; every case is compared
//! with the unpatched upstream file on the same penv. python_deps is replaced by tiny wheels.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::platform::{
    HOOKED_RELEASES, git_applied, hooked_by_install, release_fixture, upstream_head,
};
use crate::support::{BIN, Run, Wheel, World, editable_project, repo, tools_path};

/// The tools venv's Python, which has PlatformIO (upstream's penv_setup.py imports it).
pub fn tools_python() -> PathBuf {
    tools_path("venv/bin/python")
}

#[derive(Clone, Copy, PartialEq)]
enum Binary {
    /// penv-guard on PATH (the glue looks next to sys.executable, then PATH).
    OnPath,
    /// Not next to sys.executable and not on PATH.
    Missing,
    /// On PATH, but PENV_GUARD_BIN=off.
    OptedOut,
}

struct Harness {
    w: World,
    core: PathBuf,
    hooked: PathBuf,
    bin_dir: PathBuf,
    esptool: PathBuf,
    gdb: PathBuf,
}

impl Harness {
    fn new() -> Harness {
        Harness::in_core("core")
    }

    /// A harness whose PlatformIO core dir (and so the penv) is `<tmp>/<core>`.
    fn in_core(core: &str) -> Harness {
        let mut w = World::new();
        w.penv = w.dir.path().join(core).join("penv");
        crate::support::certifi_wheel().build(&w.wheels);
        Wheel::new("freertos-gdb", "1.0.4")
            .module("freertos_gdb", "")
            .build(&w.wheels);
        let core = w.dir.path().join(core);
        let hooked_dir = w.dir.path().join("hooked");
        fs::create_dir_all(&hooked_dir).unwrap();
        let hooked = hooked_dir.join("penv_setup.py");
        fs::write(&hooked, git_applied(w.dir.path())).unwrap();
        let bin_dir = w.dir.path().join("guard-bin");
        fs::create_dir_all(&bin_dir).unwrap();
        std::os::unix::fs::symlink(BIN, bin_dir.join("penv-guard")).unwrap();
        let made = editable_project(w.dir.path(), "esptool", "5.6.0", "VERSION = '5.6.0'");
        // The packages sit beside the core dir: the editable esptool's .pth names its directory,
        // and site.addsitedir reads .pth files in the locale's encoding (an ASCII locale cannot
        // read a non-ASCII name there, hooked or not).
        let packages = w.dir.path().join("packages");
        let esptool = packages.join("tool-esptoolpy");
        fs::create_dir_all(esptool.parent().unwrap()).unwrap();
        fs::rename(made, &esptool).unwrap();
        // A GDB package whose freertos-gdb is already there (the warm case).
        let gdb = packages.join("tool-xtensa-esp-elf-gdb");
        fs::create_dir_all(gdb.join("share/gdb/python/freertos_gdb")).unwrap();
        Harness {
            w,
            core,
            hooked,
            bin_dir,
            esptool,
            gdb,
        }
    }

    fn config(&self, file: &Path, network: &str, call: &str) -> Value {
        json!({
            "file": file,
            "core_dir": self.core,
            "packages": {
                "tool-esptoolpy": self.esptool,
                "tool-xtensa-esp-elf-gdb": self.gdb,
                "tool-riscv32-esp-elf-gdb": null,
            },
            "python_deps": {"alpha": ">=1.0", "certifi": ">=2025.8.3"},
            "network": network,
            "call": call,
            "freertos": call != "load",
        })
    }

    fn run(&self, config: &Value, binary: Binary, env: &[(&str, &str)]) -> (Value, Run) {
        let mut cmd = Command::new(tools_python());
        cmd.arg(repo().join("tests/fixtures/penv_setup_harness.py"))
            .arg(config.to_string())
            .env("UV_FIND_LINKS", self.w.find_links())
            .env("UV_DEFAULT_INDEX", self.w.empty_index_url())
            .env("UV_NO_CONFIG", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("PENV_GUARD_UV", &self.w.shim)
            // Releases before 55.03.37 (and penv-guard hooked into them) use uv's default cache.
            .env("UV_CACHE_DIR", &self.w.cache)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for var in [
            "PENV_GUARD_BIN",
            "GITHUB_ACTIONS",
            "PLATFORMIO_OFFLINE",
            "PLATFORMIO_CORE_DIR",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "VIRTUAL_ENV",
            "PENV_GUARD_LOCK_TIMEOUT",
        ] {
            cmd.env_remove(var);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path)
            .filter(|d| !d.join("penv-guard").exists())
            .collect();
        if binary != Binary::Missing {
            dirs.insert(0, self.bin_dir.clone());
        }
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
        if binary == Binary::OptedOut {
            cmd.env("PENV_GUARD_BIN", "off");
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        let run = Run::from(cmd.output().expect("the harness runs"));
        let line = run
            .stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("HARNESS-REPORT "))
            .unwrap_or_else(|| panic!("no report\nstdout: {}\nstderr: {}", run.stdout, run.stderr));
        (serde_json::from_str(line).unwrap(), run)
    }

    fn hooked(&self, network: &str, call: &str, binary: Binary) -> (Value, Run) {
        self.run(&self.config(&self.hooked, network, call), binary, &[])
    }

    fn upstream(&self, network: &str, call: &str) -> (Value, Run) {
        self.run(
            &self.config(&upstream_head(), network, call),
            Binary::OnPath,
            &[],
        )
    }

    /// A satisfied penv that both files see as warm: installed by the hooked file (penv-guard
    /// puts uv into the penv, which upstream's install path runs as `penv/bin/uv`), then hit.
    /// Returns the report of the first (installing) pass.
    fn warm(&self) -> Value {
        let (cold, run) = self.hooked("down", "minimal", Binary::OnPath);
        assert_eq!(cold["exit"], Value::Null, "{}", run.stderr);
        assert_eq!(cold["calls"][0]["status"], "installed", "{cold}");
        assert!(
            self.w.penv.join("bin/uv").is_file(),
            "penv-guard put uv into the penv"
        );
        // The very next pass is a hit.
        let (report, _) = self.hooked("down", "minimal", Binary::OnPath);
        assert_eq!(report["calls"][0]["status"], "hit", "{report}");
        cold
    }

    fn uv_log(&self) -> String {
        fs::read_to_string(&self.w.uv_log).unwrap_or_default()
    }
}

/// What a caller of penv_setup.py gets: must be equal, hooked or not.
const OUTPUTS: &[&str] = &[
    "exit",
    "result",
    "ca_vars",
    "sys_path_head",
    "sys_path_added",
    "freertos_dirs",
    "has_network",
    "has_network_again",
    "scons",
];

#[track_caller]
fn assert_same_outputs(hooked: &Value, upstream: &Value) {
    for key in OUTPUTS {
        assert_eq!(
            hooked[key], upstream[key],
            "{key} differs\nhooked: {hooked:#}\nupstream: {upstream:#}"
        );
    }
}

fn argv0s(report: &Value) -> Vec<String> {
    report["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let argv0 = c["argv"][0].as_str().unwrap_or_default();
            Path::new(argv0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn penv_setup_hooked_warm_pass_opens_no_connection_runs_only_penv_guard_and_matches_upstream() {
    let h = Harness::new();
    // Cold: penv-guard creates the penv and installs; even that needs no probe.
    let cold = h.warm();
    assert_eq!(argv0s(&cold), ["penv-guard"], "{cold:#}");
    assert_eq!(cold["connects_before_has_network"], json!([]), "{cold:#}");

    for network in ["up", "down"] {
        let uv_before = h.uv_log();
        let (hooked, run) = h.hooked(network, "minimal", Binary::OnPath);
        assert_eq!(hooked["calls"][0]["status"], "hit", "{hooked:#}");
        assert_eq!(
            argv0s(&hooked),
            ["penv-guard"],
            "no Python, no uv: {hooked:#}"
        );
        assert_eq!(hooked["connects_at_load"], json!([]));
        assert_eq!(
            hooked["connects_before_has_network"],
            json!([]),
            "a warm pass opens no connection ({network})"
        );
        assert_eq!(h.uv_log(), uv_before, "penv-guard ran no uv either");
        assert!(!run.stdout.contains("Warning"), "{}", run.stdout);

        let (upstream, _) = h.upstream(network, "minimal");
        assert_ne!(
            upstream["connects_at_load"],
            json!([]),
            "upstream probes at load"
        );
        assert!(
            argv0s(&upstream).iter().any(|a| a == "python"),
            "upstream asks the penv's Python: {upstream:#}"
        );
        assert_same_outputs(&hooked, &upstream);
        let bundle = h.w.site_packages().join("certifi/cacert.pem");
        assert_eq!(
            hooked["ca_vars"]["GIT_SSL_CAINFO"],
            bundle.to_str().unwrap()
        );
        assert_eq!(hooked["has_network"], network == "up");
        assert_eq!(
            hooked["result"],
            json!([h.w.penv.join("bin/python"), h.w.penv.join("bin/esptool")])
        );
    }

    // The SCons path (setup_python_environment): PYTHONEXE and the SCons ENV as upstream sets them.
    let (hooked, _) = h.hooked("up", "scons", Binary::OnPath);
    assert_eq!(argv0s(&hooked), ["penv-guard"], "{hooked:#}");
    let (upstream, _) = h.upstream("up", "scons");
    assert_same_outputs(&hooked, &upstream);
    assert_eq!(
        hooked["scons"]["ENV"]["SSL_CERT_FILE"],
        hooked["ca_vars"]["SSL_CERT_FILE"]
    );
}

#[test]
fn penv_setup_hooked_without_the_binary_or_opted_out_is_upstream() {
    let h = Harness::new();
    h.warm();
    for binary in [Binary::Missing, Binary::OptedOut] {
        for network in ["up", "down"] {
            let (hooked, _) = h.hooked(network, "minimal", binary);
            let (upstream, _) = h.upstream(network, "minimal");
            assert_same_outputs(&hooked, &upstream);
            assert_eq!(
                hooked["calls"], upstream["calls"],
                "the same subprocesses, in order"
            );
            assert_eq!(
                hooked["connects"], upstream["connects"],
                "the same probes (hooked: when first read)"
            );
            assert!(!argv0s(&hooked).iter().any(|a| a == "penv-guard"));
        }
    }
}

/// (network, environment, has_network as upstream computes it)
type NetworkCase<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

#[test]
fn penv_setup_has_network_keeps_upstreams_meaning() {
    let h = Harness::new();
    let cases: &[NetworkCase] = &[
        ("down", &[], false),
        ("up", &[], true),
        ("down", &[("PLATFORMIO_OFFLINE", "1")], false),
        ("up", &[("PLATFORMIO_OFFLINE", "true")], false),
        ("down", &[("GITHUB_ACTIONS", "1")], true),
        (
            "down",
            &[("GITHUB_ACTIONS", "1"), ("PLATFORMIO_OFFLINE", "1")],
            true,
        ),
    ];
    for (network, env, expected) in cases {
        let (hooked, _) = h.run(&h.config(&h.hooked, network, "load"), Binary::OnPath, env);
        let (upstream, _) = h.run(
            &h.config(&upstream_head(), network, "load"),
            Binary::OnPath,
            env,
        );
        let case = format!("network {network}, env {env:?}");
        assert_eq!(upstream["has_network"], *expected, "{case}");
        assert_eq!(hooked["has_network"], *expected, "{case}");
        assert_eq!(hooked["has_network_again"], *expected, "{case}");
        assert_eq!(hooked["connects_at_load"], json!([]), "lazy: {case}");
        assert_eq!(
            hooked["connects"], upstream["connects"],
            "probed once, the same hosts: {case}"
        );
    }
}

#[test]
fn penv_setup_missing_freertos_gdb_probes_then_installs_like_upstream() {
    let h = Harness::new();
    h.warm();
    for network in ["up", "down"] {
        let mut listings = Vec::new();
        for (file, name) in [(h.hooked.clone(), "hooked"), (upstream_head(), "upstream")] {
            let gdb = h.core.join(format!("packages/gdb-{name}-{network}"));
            fs::create_dir_all(&gdb).unwrap();
            let mut config = h.config(&file, network, "minimal");
            config["packages"]["tool-xtensa-esp-elf-gdb"] = json!(gdb);
            let (report, run) = h.run(&config, Binary::OnPath, &[]);
            assert_eq!(report["exit"], Value::Null, "{}", run.stderr);
            listings.push(report["freertos_dirs"]["tool-xtensa-esp-elf-gdb"].clone());
            if name == "hooked" {
                // Something is missing, so the network is needed and probed, as upstream.
                assert_ne!(
                    report["connects_before_has_network"],
                    json!([]),
                    "{network}"
                );
            }
        }
        assert_eq!(listings[0], listings[1], "network {network}");
        let installed = listings[0]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n == "freertos_gdb"));
        assert_eq!(installed, network == "up", "{listings:?}");
    }
}

#[test]
fn penv_setup_failed_ensure_exits_1_online_and_carries_on_like_upstream_offline() {
    let h = Harness::new();
    h.warm();
    let deps = json!({"alpha": ">=1.0", "certifi": ">=2025.8.3", "no-such-dist": ">=1"});
    let mut config = h.config(&h.hooked, "up", "minimal");
    config["python_deps"] = deps.clone();
    let (report, run) = h.run(&config, Binary::OnPath, &[]);
    assert_eq!(report["exit"], 1, "{report:#}");
    assert_eq!(argv0s(&report), ["penv-guard"]);
    assert_eq!(
        run.stderr.matches("penv-guard: error:").count(),
        1,
        "penv-guard's one line reaches the user unfiltered: {}",
        run.stderr
    );
    assert!(run.stderr.contains("no-such-dist"), "{}", run.stderr);

    // Without network upstream warns, skips the dependency install and carries on: so does the
    // hooked file, through upstream's code.
    config["network"] = json!("down");
    let (hooked, run) = h.run(&config, Binary::OnPath, &[]);
    let mut up_config = h.config(&upstream_head(), "down", "minimal");
    up_config["python_deps"] = deps;
    let (upstream, _) = h.run(&up_config, Binary::OnPath, &[]);
    assert_same_outputs(&hooked, &upstream);
    assert!(
        run.stdout.contains("No internet connection detected"),
        "{}",
        run.stdout
    );
}

#[test]
fn penv_setup_tool_esptoolpy_not_a_directory_is_handled_as_upstream() {
    let h = Harness::new();
    h.warm();
    let not_dir = h.w.dir.path().join("tool-esptoolpy-file");
    fs::write(&not_dir, "").unwrap();
    for call in ["minimal", "scons"] {
        let mut reports = Vec::new();
        for file in [h.hooked.clone(), upstream_head()] {
            let mut config = h.config(&file, "down", call);
            config["packages"]["tool-esptoolpy"] = json!(not_dir);
            reports.push(h.run(&config, Binary::OnPath, &[]));
        }
        let ((hooked, hooked_run), (upstream, upstream_run)) = (&reports[0], &reports[1]);
        assert_same_outputs(hooked, upstream);
        if call == "minimal" {
            // The minimal path carries on without esptool; penv-guard is asked without it.
            assert_eq!(hooked["exit"], Value::Null);
            let argv = hooked["calls"][0]["argv"].as_array().unwrap();
            assert!(!argv.iter().any(|a| a == "--esptool-dir"), "{argv:?}");
        } else {
            // SCons: upstream's install_esptool exits 1 with its message, and so does the hook.
            assert_eq!(hooked["exit"], 1);
            let message = "Error: 'tool-esptoolpy' package directory not found";
            assert!(hooked_run.stderr.contains(message), "{}", hooked_run.stderr);
            assert!(upstream_run.stderr.contains(message));
        }
    }
}

/// Whether release `name`'s module has a module-level `has_network` (55.03.38 and later).
fn has_module_network(name: &str) -> bool {
    !matches!(
        name,
        "55.03.32" | "55.03.33" | "55.03.31-2" | "55.03.35" | "55.03.36" | "55.03.37"
    )
}

#[test]
fn penv_setup_every_hooked_release_warm_pass_runs_only_penv_guard_and_unhooked_is_that_release() {
    let h = Harness::new();
    h.warm();
    for &name in HOOKED_RELEASES {
        let upstream = release_fixture(name);
        let hooked = h.w.dir.path().join(format!("hooked-{name}.py"));
        fs::write(&hooked, hooked_by_install(h.w.dir.path(), &upstream)).unwrap();
        let config = |file: &Path, network: &str, call: &str| {
            let mut config = h.config(file, network, call);
            config["has_network"] = json!(has_module_network(name));
            config
        };
        for (network, call) in [("up", "minimal"), ("down", "minimal"), ("up", "scons")] {
            let case = format!("{name}, network {network}, {call}");
            let (hooked_report, run) = h.run(&config(&hooked, network, call), Binary::OnPath, &[]);
            assert_eq!(
                hooked_report["calls"][0]["status"], "hit",
                "{case}: {hooked_report:#}\n{}",
                run.stderr
            );
            assert_eq!(
                argv0s(&hooked_report),
                ["penv-guard"],
                "{case}: {hooked_report:#}"
            );
            assert_eq!(
                hooked_report["connects_before_has_network"],
                json!([]),
                "{case}"
            );
            assert!(!run.stdout.contains("Warning"), "{case}: {}", run.stdout);
            let (upstream_report, _) =
                h.run(&config(&upstream, network, call), Binary::OnPath, &[]);
            assert!(
                argv0s(&upstream_report).iter().any(|a| a == "python"),
                "{case}: upstream asks the penv's Python: {upstream_report:#}"
            );
            assert_same_outputs(&hooked_report, &upstream_report);
        }
        for network in ["up", "down"] {
            let case = format!("{name} without the binary, network {network}");
            let (hooked_report, _) =
                h.run(&config(&hooked, network, "minimal"), Binary::Missing, &[]);
            let (upstream_report, _) =
                h.run(&config(&upstream, network, "minimal"), Binary::Missing, &[]);
            assert_same_outputs(&hooked_report, &upstream_report);
            assert_eq!(hooked_report["calls"], upstream_report["calls"], "{case}");
            assert_eq!(
                hooked_report["connects"], upstream_report["connects"],
                "{case}"
            );
        }
    }
}

#[test]
fn penv_setup_hooked_reads_a_non_ascii_core_dir_in_a_non_utf8_locale() {
    // A user folder like C:\Users\Jürgen Ä: on Windows the hook decoded penv-guard's UTF-8 JSON
    // with the console code page (cp1252 mangled it, cp932 failed). Here the locale is ASCII and
    // Python's UTF-8 mode is off, so `text=True` decodes with ASCII, and file names are
    // surrogate escapes.
    let h = Harness::in_core("J\u{fc}rgen \u{c4}/core");
    h.warm();
    let ascii: &[(&str, &str)] = &[
        ("LC_ALL", "C"),
        ("LANG", "C"),
        ("PYTHONUTF8", "0"),
        ("PYTHONCOERCECLOCALE", "0"),
        ("PYTHONIOENCODING", "ascii"),
    ];
    for call in ["minimal", "scons"] {
        let (report, run) = h.run(&h.config(&h.hooked, "down", call), Binary::OnPath, ascii);
        assert_eq!(report["exit"], Value::Null, "{call}: {}", run.stderr);
        assert_eq!(report["calls"][0]["status"], "hit", "{call}: {report:#}");
        assert_eq!(argv0s(&report), ["penv-guard"], "{call}: {report:#}");
        assert_eq!(
            report["result"],
            json!([h.w.penv.join("bin/python"), h.w.penv.join("bin/esptool")]),
            "{call}"
        );
        let bundle = h.w.site_packages().join("certifi/cacert.pem");
        assert_eq!(
            report["ca_vars"]["SSL_CERT_FILE"],
            bundle.to_str().unwrap(),
            "{call}"
        );
        // The same as in a UTF-8 locale.
        let (utf8, _) = h.run(&h.config(&h.hooked, "down", call), Binary::OnPath, &[]);
        assert_same_outputs(&report, &utf8);
    }
}

#[test]
fn ensure_json_with_a_non_ascii_penv_is_ascii_and_parses_back_to_the_penv() {
    let mut w = World::new();
    w.penv = w
        .dir
        .path()
        .join("J\u{fc}rgen \u{c4} \u{65e5}\u{1f600}/penv");
    let run = w.ensure(&["alpha"]).arg("--json").run().ok();
    let line = run.stdout.trim_end();
    assert!(line.is_ascii(), "{line}");
    assert!(
        line.contains(r"J\u00fcrgen \u00c4 \u65e5\ud83d\ude00"),
        "{line}"
    );
    let report: Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["python"], json!(w.penv.join("bin/python")));
    // An error's report too (main.rs), here naming a missing file under the same folder.
    let missing = w.penv.with_file_name("d\u{e9}ps.json");
    let run = w
        .cmd("ensure")
        .arg("--json")
        .arg("--deps-json")
        .arg(&missing)
        .run()
        .code(2);
    let line = run.stdout.trim_end();
    assert!(line.is_ascii(), "{line}");
    let report: Value = serde_json::from_str(line).unwrap();
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains(missing.to_str().unwrap()),
        "{report}"
    );
}

#[test]
fn penv_setup_before_55_03_38_installs_the_platformio_core_url_under_its_real_name() {
    // Releases before 55.03.38 list `"platformio": <a pioarduino/platformio-core tag archive>`,
    // which builds a distribution named pioarduino-core; uv refuses `platformio @ <url>`.
    let h = Harness::new();
    let tree = h.w.dir.path().join("src/platformio-core-6.1.19");
    fs::create_dir_all(tree.join("platformio")).unwrap();
    fs::write(
        tree.join("platformio/__init__.py"),
        "VERSION = (6, 1, 19)\n",
    )
    .unwrap();
    fs::copy(
        repo().join("tests/fixtures/inplace_backend.py"),
        tree.join("inplace_backend.py"),
    )
    .unwrap();
    fs::write(
        tree.join("pyproject.toml"),
        "[build-system]\nrequires = []\nbuild-backend = \"inplace_backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"pioarduino-core\"\nversion = \"6.1.19\"\n",
    )
    .unwrap();
    let archive =
        h.w.dir
            .path()
            .join("pioarduino/platformio-core/archive/refs/tags");
    fs::create_dir_all(&archive).unwrap();
    crate::support::succeed(
        Command::new(tools_python())
            .arg("-c")
            .arg("import shutil, sys; shutil.make_archive(sys.argv[1], 'zip', sys.argv[2], 'platformio-core-6.1.19')")
            .arg(archive.join("v6.1.19"))
            .arg(tree.parent().unwrap()),
    );
    let url = format!("file://{}", archive.join("v6.1.19.zip").display());
    let upstream = release_fixture("55.03.37");
    let hooked = h.w.dir.path().join("hooked-55.03.37.py");
    fs::write(&hooked, hooked_by_install(h.w.dir.path(), &upstream)).unwrap();
    let mut config = h.config(&hooked, "down", "minimal");
    config["python_deps"] = json!({"platformio": url, "alpha": ">=1.0", "certifi": ">=2025.8.3"});
    config["has_network"] = json!(false);
    let (report, run) = h.run(&config, Binary::OnPath, &[]);
    assert_eq!(report["exit"], Value::Null, "{}", run.stderr);
    assert_eq!(
        report["calls"][0]["status"], "installed",
        "{report:#}\n{}",
        run.stderr
    );
    assert!(
        h.w.site_packages()
            .join("pioarduino_core-6.1.19.dist-info")
            .is_dir(),
        "{}",
        run.stderr
    );
    let (report, _) = h.run(&config, Binary::OnPath, &[]);
    assert_eq!(report["calls"][0]["status"], "hit", "{report:#}");
    assert_eq!(argv0s(&report), ["penv-guard"]);
}
