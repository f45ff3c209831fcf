//! Proof that the penv works: every requirement that applies is installed in a version it allows
//! (PEP 440, markers evaluated with the interpreter's own values), and every top-level module of
//! every required distribution is imported
//! in one penv-Python subprocess (`-I`: the project directory and PYTHON* variables cannot mask a
//! module). Module names come from the dist-info RECORD (see `penv::top_level_modules`). The same
//! interpreter reports its PEP 508 marker environment, so markers are never evaluated on guesses.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::distinfo::{self, Installed};
use crate::error::{Error, Result};
use crate::markers::{self, MarkerValues};
use crate::process::{self, Stderr};
use crate::requirements::DepSet;
use crate::state::path_text;
use crate::verdict::Context;

/// The report goes to a file named only to this script, opened (and taken off `sys.argv`)
/// before anything is imported, and written once after the last import: what the imported code
/// prints, at import or at exit (`atexit` from a `.pth`), cannot pass for it.
const IMPORTS: &str = r#"
import importlib, json, sys
report = open(sys.argv.pop(), "w")
failures = []
for dist, module in json.loads(sys.argv.pop()):
    try:
        importlib.import_module(module)
    except BaseException as e:
        failures.append([dist, module, "%s: %s" % (type(e).__name__, e)])
report.write(json.dumps(failures))
report.close()
"#;

/// `(distribution, module)` pairs to import.
pub fn validate_imports(
    python: &Path,
    pairs: &[(String, String)],
    timeout: Duration,
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let all = |error: String| Error::Validation {
        dist: "(all)".into(),
        module: "(all)".into(),
        error,
    };
    let pairs = serde_json::to_string(pairs).unwrap_or_default();
    let (out, report) = run_reporting(python, IMPORTS, Some(&pairs), timeout).map_err(all)?;
    let failures: Vec<(String, String, String)> = match report.as_deref().map(serde_json::from_str)
    {
        Some(Ok(failures)) if !out.timed_out => failures,
        _ => {
            return Err(all(format!(
                "the validation process {}: {}",
                out.describe_status(timeout),
                process::tail(&out.output_tail, 3).replace('\n', " | ")
            )));
        }
    };
    match failures.into_iter().next() {
        None => Ok(()),
        Some((dist, module, error)) => Err(Error::Validation {
            dist,
            module,
            error: error.lines().next().unwrap_or_default().to_owned(),
        }),
    }
}

/// Runs `python -I -c script [arg] REPORT` and returns what the script wrote to REPORT, a file
/// in a fresh temporary directory whose path only the script's last argument names. The script
/// must `open(sys.argv.pop(), "w")` before it imports anything, so the code it imports never
/// sees the path, and whatever that code prints (at import, or from an `atexit` handler a
/// `.pth` registered) cannot pass for the report.
pub(crate) fn run_reporting(
    python: &Path,
    script: &str,
    arg: Option<&str>,
    timeout: Duration,
) -> std::result::Result<(process::Output, Option<String>), String> {
    let dir =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let report_path = dir.path().join("report.json");
    let mut command = Command::new(python);
    command
        .args(["-I", "-c", script])
        .args(arg)
        .arg(&report_path);
    let out = process::run(command, timeout, Stderr::Captured, None)
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let report = std::fs::read_to_string(&report_path)
        .ok()
        .filter(|text| !text.is_empty());
    Ok((out, report))
}

/// What a validated install proved, before it is recorded.
pub struct Checked {
    pub python_version: String,
    pub marker_env: MarkerValues,
    pub installed: BTreeMap<String, String>,
    pub modules: BTreeMap<String, Vec<String>>,
    pub facts: BTreeMap<String, String>,
}

impl Checked {
    pub fn import_pairs(&self) -> Vec<(String, String)> {
        self.modules
            .iter()
            .flat_map(|(dist, modules)| modules.iter().map(move |m| (dist.clone(), m.clone())))
            .collect()
    }
}

/// Every requirement that applies to the penv's interpreter must be installed in a version
/// it allows (PEP 440); the esptool must be the editable one from `--esptool-dir`.
pub fn check_installed(
    ctx: &Context,
    marker_env: MarkerValues,
    dists: &BTreeMap<String, Installed>,
) -> Result<Checked> {
    let python_version = ctx
        .penv
        .read_cfg()
        .and_then(|cfg| cfg.version)
        .unwrap_or_default();
    let env = markers::environment(&marker_env);
    let mut installed = BTreeMap::new();
    let mut modules = BTreeMap::new();
    for dep in ctx.deps()?.iter().filter(|d| d.applies_to(env.as_ref())) {
        let Some(dist) = dists.get(dep.name()) else {
            // uv said it installed it: its configuration may have sent it elsewhere.
            let configs: Vec<String> = crate::uv::config_files(&ctx.penv)
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            let hint = if configs.is_empty() {
                String::new()
            } else {
                format!(
                    "; uv read its configuration from {}: a `target` or `prefix` there installs \
                     elsewhere",
                    configs.join(", ")
                )
            };
            return Err(Error::Install {
                message: format!(
                    "`{}` ({}) is not installed in {} after uv finished{hint}",
                    dep.canonical,
                    dep.origin,
                    ctx.penv.root.display()
                ),
                tail: String::new(),
            });
        };
        if !dep.satisfied_by(&dist.version) {
            return Err(Error::Install {
                message: format!(
                    "{} {} is installed but does not satisfy `{}` ({})",
                    dist.name, dist.version, dep.canonical, dep.origin
                ),
                tail: String::new(),
            });
        }
        installed.insert(dep.name().to_owned(), dist.version.clone());
        modules.insert(dep.name().to_owned(), modules_to_import(dep.name(), dist)?);
    }
    let mut facts = BTreeMap::new();
    if let Some(dir) = &ctx.esptool_dir {
        let real = crate::os::path::canonical(dir).unwrap_or_else(|_| dir.clone());
        let from_dir = dists.get("esptool").filter(|dist| {
            distinfo::direct_url(&dist.dist_info).is_some_and(|d| {
                d.editable
                    && d.dir.as_deref().is_some_and(|d| {
                        d == dir || crate::os::path::canonical(d).is_ok_and(|d| d == real)
                    })
            })
        });
        let Some(esptool) = from_dir else {
            return Err(Error::Install {
                message: format!("esptool is not installed editable from {}", dir.display()),
                tail: String::new(),
            });
        };
        installed.insert("esptool".to_owned(), esptool.version.clone());
        modules.insert("esptool".to_owned(), modules_to_import("esptool", esptool)?);
        facts.insert("esptool_dir".to_owned(), path_text(dir));
    }
    if let Some(bundle) = dists
        .get("certifi")
        .and_then(|certifi| distinfo::recorded_file(&certifi.dist_info, "certifi/cacert.pem"))
    {
        facts.insert("certifi_bundle".to_owned(), path_text(&bundle));
    }
    Ok(Checked {
        python_version,
        marker_env,
        installed,
        modules,
        facts,
    })
}

/// The modules whose import proves a required distribution works: its top-level modules
/// ([`distinfo::top_level_modules`]), else the module its normalized name spells (`esp-idf-size`
/// is `esp_idf_size`), which must then import. A distribution is never validated by importing
/// nothing.
fn modules_to_import(name: &str, dist: &Installed) -> Result<Vec<String>> {
    let modules = distinfo::top_level_modules(&dist.dist_info);
    if !modules.is_empty() {
        return Ok(modules);
    }
    let guess = name.replace(['-', '.'], "_");
    if distinfo::is_module_name(&guess) {
        return Ok(vec![guess]);
    }
    Err(Error::NothingToImport {
        dist: format!("{} {}", dist.name, dist.version),
    })
}

/// Normalized names of distributions to reinstall: a RECORD file missing or of another size,
/// or a requirement that applies and is not met by what METADATA says.
pub fn damaged(
    deps: &DepSet,
    dists: &BTreeMap<String, Installed>,
    marker_env: &MarkerValues,
) -> Vec<String> {
    let env = markers::environment(marker_env);
    let unmet = deps
        .iter()
        .filter(|dep| dep.applies_to(env.as_ref()) && !dep.is_url())
        .filter(|dep| {
            dists
                .get(dep.name())
                .is_some_and(|dist| !dep.satisfied_by(&dist.version))
        })
        .map(|dep| dep.name().to_owned());
    let mut names: Vec<String> = distinfo::record_problems(dists)
        .into_iter()
        .map(|p| p.normalized)
        .chain(unmet)
        .collect();
    names.sort();
    names.dedup();
    names
}
