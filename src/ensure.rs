//! `ensure` and `fingerprint`: the hot path (read state, stat three files, hash; no lock, no
//! subprocess, no network) and the miss path (lock, re-check, invalidate, install, validate,
//! write state).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{DepArgs, EnsureArgs, FingerprintArgs, PenvArgs};
use crate::error::{Error, Result};
use crate::install::{self, InstallRequest};
use crate::lock::{self, LockRequest};
use crate::penv::{self, Penv};
use crate::requirements::DepSet;
use crate::state::{
    self, FingerprintInput, HostPython, Loaded, PenvStamp, Stamp, State, UvIdentity,
};
use crate::validate;

/// What is known before any subprocess: the inputs of the decision.
pub struct Context {
    pub penv: Penv,
    pub deps: DepSet,
    pub explicit_uv: Option<PathBuf>,
    pub explicit_python: Option<PathBuf>,
    pub host_python: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub esptool_dir: Option<PathBuf>,
}

impl Context {
    pub fn resolve(penv_args: &PenvArgs, dep_args: &DepArgs) -> Result<Context> {
        let penv = Penv::resolve(penv_args.penv.as_deref())?;
        let deps = DepSet::from_args(dep_args)?;
        let cache_dir = match &penv_args.uv_cache_dir {
            Some(dir) => dir.clone(),
            None => penv::core_dir()?.join(".cache").join("uv"),
        };
        let esptool_dir = match &dep_args.esptool_dir {
            Some(dir) => Some(
                std::fs::canonicalize(dir)
                    .ok()
                    .filter(|d| d.is_dir())
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "--esptool-dir {} is not a directory",
                            dir.display()
                        ))
                    })?,
            ),
            None => None,
        };
        Ok(Context {
            esptool_dir,
            host_python: install::find_python(penv_args.python.as_deref()),
            explicit_python: penv_args.python.clone(),
            explicit_uv: penv_args.uv.clone(),
            penv,
            deps,
            cache_dir,
        })
    }

    pub fn uv(&self) -> Option<PathBuf> {
        install::find_uv(
            self.explicit_uv.as_deref(),
            &self.penv,
            self.explicit_python.as_deref(),
        )
    }

    fn requirements_txt(&self) -> String {
        let mut text = self.deps.requirements_txt();
        if let Some(dir) = &self.esptool_dir {
            let _ = writeln!(text, "-e {}", dir.display());
        }
        text
    }

    fn host_python_identity(&self) -> Option<(PathBuf, Option<Stamp>)> {
        let path = self.host_python.clone()?;
        let stamp = Stamp::of(&path);
        Some((path, stamp))
    }
}

/// The penv as it is now, read from files only.
pub struct Snapshot {
    pub python_version: Option<String>,
    pub site_packages: Option<PathBuf>,
    pub input: FingerprintInput,
    pub fingerprint: String,
    pub stamp: PenvStamp,
}

pub fn snapshot(ctx: &Context) -> Snapshot {
    let python_version = ctx.penv.read_cfg().and_then(|cfg| cfg.version);
    let interpreter = std::fs::canonicalize(ctx.penv.python()).ok();
    let site_packages = python_version.as_deref().map(|v| ctx.penv.site_packages(v));
    let input = FingerprintInput {
        schema: state::SCHEMA,
        deps: ctx.deps.canonical_lines(),
        python_version: python_version.clone(),
        interpreter,
        uv: ctx.uv().as_deref().and_then(UvIdentity::of),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        extra: ctx
            .esptool_dir
            .iter()
            .map(|dir| ("esptool_dir".to_owned(), dir.display().to_string()))
            .collect(),
    };
    let stamp = PenvStamp::capture(
        &ctx.penv.pyvenv_cfg(),
        &ctx.penv.python(),
        site_packages.as_deref().unwrap_or(Path::new("")),
    );
    Snapshot {
        fingerprint: input.hash(),
        python_version,
        site_packages,
        input,
        stamp,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MissReason {
    NoPenv,
    NoState,
    CorruptState {
        detail: String,
    },
    UnknownSchema {
        schema: u64,
    },
    DepsChanged {
        added: Vec<String>,
        removed: Vec<String>,
    },
    PythonChanged {
        recorded: Option<String>,
        now: Option<String>,
    },
    InterpreterChanged,
    UvChanged,
    PlatformChanged,
    HostPythonChanged,
    StampChanged {
        parts: Vec<String>,
    },
    RacyStamp {
        parts: Vec<String>,
    },
    Verify,
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissReason::NoPenv => f.write_str("the penv does not exist"),
            MissReason::NoState => f.write_str("no state recorded yet"),
            MissReason::CorruptState { detail } => {
                write!(f, "the state file is corrupt ({detail})")
            }
            MissReason::UnknownSchema { schema } => {
                write!(f, "the state file has unknown schema {schema}")
            }
            MissReason::DepsChanged { added, removed } => {
                write!(f, "the dependency list changed")?;
                if !added.is_empty() {
                    write!(f, "; new: {}", added.join(", "))?;
                }
                if !removed.is_empty() {
                    write!(f, "; dropped: {}", removed.join(", "))?;
                }
                Ok(())
            }
            MissReason::PythonChanged { recorded, now } => write!(
                f,
                "the penv Python changed ({} -> {})",
                recorded.as_deref().unwrap_or("none"),
                now.as_deref().unwrap_or("none")
            ),
            MissReason::InterpreterChanged => f.write_str("the penv interpreter path changed"),
            MissReason::UvChanged => f.write_str("the uv binary changed"),
            MissReason::PlatformChanged => f.write_str("the OS, architecture or schema changed"),
            MissReason::HostPythonChanged => f.write_str("the host Python (--python) changed"),
            MissReason::StampChanged { parts } => {
                write!(f, "changed behind penv-guard's back: {}", parts.join(", "))
            }
            MissReason::RacyStamp { parts } => write!(
                f,
                "the recorded stamp is too recent to trust (racy): {}",
                parts.join(", ")
            ),
            MissReason::Verify => f.write_str("--verify"),
        }
    }
}

pub enum Verdict {
    Hit(Box<State>),
    Miss(MissReason, Option<Box<State>>),
}

pub fn decide(ctx: &Context, snap: &Snapshot) -> Verdict {
    if snap.python_version.is_none() || snap.stamp.interpreter.is_none() {
        return Verdict::Miss(MissReason::NoPenv, None);
    }
    let state = match state::load(&ctx.penv.state_path()) {
        Loaded::Missing => return Verdict::Miss(MissReason::NoState, None),
        Loaded::Corrupt(detail) => return Verdict::Miss(MissReason::CorruptState { detail }, None),
        Loaded::UnknownSchema(schema) => {
            return Verdict::Miss(MissReason::UnknownSchema { schema }, None);
        }
        Loaded::Valid(state) => state,
    };
    if let Some(reason) = explain_fingerprint(&state, snap) {
        return Verdict::Miss(reason, Some(state));
    }
    if let Some((path, stamp)) = ctx.host_python_identity() {
        let same = state
            .host_python
            .as_ref()
            .is_some_and(|h| h.path == path && h.stamp == stamp);
        if !same {
            return Verdict::Miss(MissReason::HostPythonChanged, Some(state));
        }
    }
    let changed = state.stamp.differences(&snap.stamp);
    if !changed.is_empty() {
        let parts = changed.into_iter().map(str::to_owned).collect();
        return Verdict::Miss(MissReason::StampChanged { parts }, Some(state));
    }
    let racy = state.stamp.racy_parts(state.recorded_at_ns);
    if !racy.is_empty() {
        let parts = racy.into_iter().map(str::to_owned).collect();
        return Verdict::Miss(MissReason::RacyStamp { parts }, Some(state));
    }
    Verdict::Hit(state)
}

fn explain_fingerprint(state: &State, snap: &Snapshot) -> Option<MissReason> {
    if state.fingerprint == snap.fingerprint {
        return None;
    }
    let (old, new) = (&state.fingerprint_input, &snap.input);
    Some(if old.deps != new.deps {
        MissReason::DepsChanged {
            added: new
                .deps
                .iter()
                .filter(|d| !old.deps.contains(d))
                .cloned()
                .collect(),
            removed: old
                .deps
                .iter()
                .filter(|d| !new.deps.contains(d))
                .cloned()
                .collect(),
        }
    } else if old.python_version != new.python_version {
        MissReason::PythonChanged {
            recorded: old.python_version.clone(),
            now: new.python_version.clone(),
        }
    } else if old.interpreter != new.interpreter {
        MissReason::InterpreterChanged
    } else if old.uv != new.uv {
        MissReason::UvChanged
    } else {
        MissReason::PlatformChanged
    })
}

#[derive(Debug, Serialize)]
struct EnsureReport<'a> {
    status: &'static str,
    reason: Option<String>,
    fingerprint: &'a str,
    penv: &'a Path,
    python: PathBuf,
    /// `<penv>/bin/esptool`, what pioarduino's penv setup returns next to the Python.
    esptool: PathBuf,
    /// certifi's CA bundle (`facts.certifi_bundle`), or null: penv_setup.py sets its variables.
    certifi: Option<&'a String>,
    python_version: &'a str,
    installed: &'a BTreeMap<String, String>,
    modules: &'a BTreeMap<String, Vec<String>>,
    facts: &'a BTreeMap<String, String>,
    /// With `--project-dir` and `--env`: that environment's entry of the size cache (no walk).
    #[serde(skip_serializing_if = "Option::is_none")]
    build_size: Option<serde_json::Value>,
    timings_ms: BTreeMap<String, f64>,
}

struct Phases {
    start: Instant,
    last: Instant,
    ms: BTreeMap<String, f64>,
}

impl Phases {
    fn new(start: Instant) -> Phases {
        Phases {
            start,
            last: start,
            ms: BTreeMap::new(),
        }
    }

    fn end(&mut self, phase: &str) {
        let now = Instant::now();
        *self.ms.entry(phase.to_owned()).or_default() += ms(now - self.last);
        self.last = now;
    }

    fn total(mut self) -> BTreeMap<String, f64> {
        self.ms.insert("total".into(), ms(self.start.elapsed()));
        self.ms
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        Error::Usage(format!(
            "{flag} must be a non-negative number of seconds, not {value}"
        ))
    })
}

pub fn ensure(args: &EnsureArgs, start: Instant) -> Result<()> {
    let lock_timeout = seconds(args.lock_timeout, "--lock-timeout")?;
    let install_timeout = seconds(args.install_timeout, "--install-timeout")?;
    let offline = args.offline || penv::platformio_offline();
    let ctx = Context::resolve(&args.penv, &args.deps)?;
    let mut phases = Phases::new(start);
    let snap = snapshot(&ctx);
    let verdict = decide(&ctx, &snap);
    phases.end("check");
    let reason = match verdict {
        Verdict::Hit(state) if !args.verify => {
            report_hit(args, &ctx, &state, phases, None);
            return Ok(());
        }
        Verdict::Hit(_) => MissReason::Verify,
        Verdict::Miss(reason, _) => reason,
    };
    let say = |message: &str| {
        if !args.quiet {
            eprintln!("penv-guard: {message}");
        }
    };
    if args.verbose {
        say(&format!("miss: {reason}"));
    }

    std::fs::create_dir_all(&ctx.penv.root)
        .map_err(|e| Error::io("create the penv directory", &ctx.penv.root, e))?;
    crate::fsutil::sweep_temp_files(&ctx.penv.root);
    let lock_started = Instant::now();
    let lock = lock::acquire(&LockRequest {
        lock_path: &ctx.penv.lock_path(),
        holder_path: &ctx.penv.holder_path(),
        timeout: lock_timeout,
        allow_unlocked: args.allow_unlocked,
        quiet: args.quiet,
    })?;
    phases.end("lock_wait");

    // Another process may have finished the same work while we waited.
    let snap = snapshot(&ctx);
    let verdict = decide(&ctx, &snap);
    phases.end("recheck");
    let reason = match verdict {
        Verdict::Hit(state) if !args.verify => {
            report_hit(args, &ctx, &state, phases, Some(lock.waited));
            return Ok(());
        }
        Verdict::Hit(_) => reason,
        Verdict::Miss(MissReason::RacyStamp { .. }, Some(old)) if !args.verify => {
            match revalidate(&ctx, &snap, &old, install_timeout, &mut phases) {
                Ok(state) => {
                    if args.verbose {
                        say(&format!(
                            "re-checked {} distributions without uv; the stamp is recorded again",
                            state.installed.len()
                        ));
                    }
                    report(args, "revalidated", Some(&reason), &ctx, &state, phases);
                    return Ok(());
                }
                Err(e) => {
                    if args.verbose {
                        say(&format!("revalidation failed ({e}); reinstalling"));
                    }
                    reason
                }
            }
        }
        Verdict::Miss(reason, _) => reason,
    };
    let budget = lock_timeout.saturating_sub(lock_started.elapsed());
    let state = install_and_validate(
        &ctx,
        &reason,
        offline,
        install_timeout,
        budget,
        &mut phases,
        &say,
    )?;
    drop(lock);
    report(args, "installed", Some(&reason), &ctx, &state, phases);
    Ok(())
}

/// A penv whose interpreter is missing or cannot be run is recreated, not handed to uv.
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

fn report_hit(
    args: &EnsureArgs,
    ctx: &Context,
    state: &State,
    phases: Phases,
    waited: Option<Duration>,
) {
    if args.verbose {
        let waited = waited.map(|w| format!(" after waiting {:.1}s for the lock", w.as_secs_f64()));
        eprintln!(
            "penv-guard: hit: {} requirements satisfied in {}{}",
            state.installed.len(),
            ctx.penv.root.display(),
            waited.unwrap_or_default()
        );
    }
    report(args, "hit", None, ctx, state, phases);
}

fn report(
    args: &EnsureArgs,
    status: &'static str,
    reason: Option<&MissReason>,
    ctx: &Context,
    state: &State,
    phases: Phases,
) {
    let mut build_size = None;
    if let (Some(project), Some(env)) = (&args.project_dir, &args.env) {
        if !args.quiet
            && let Some(line) = crate::size::cached_summary(project, env)
        {
            eprintln!("penv-guard: {line}");
        }
        if args.json {
            build_size = crate::size::cached_report(project).and_then(|report| {
                report["envs"]
                    .as_array()?
                    .iter()
                    .find(|e| e["name"] == env.as_str())
                    .cloned()
            });
        }
    }
    if !args.json {
        return;
    }
    let report = EnsureReport {
        status,
        reason: reason.map(ToString::to_string),
        fingerprint: &state.fingerprint,
        penv: &ctx.penv.root,
        python: ctx.penv.python(),
        esptool: ctx.penv.bin_dir().join(if cfg!(windows) {
            "esptool.exe"
        } else {
            "esptool"
        }),
        certifi: state.facts.get("certifi_bundle"),
        python_version: &state.python_version,
        installed: &state.installed,
        modules: &state.modules,
        facts: &state.facts,
        build_size,
        timings_ms: phases.total(),
    };
    crate::messages::println(&crate::messages::json(&report, false));
}

/// For a state whose only fault is a racy stamp: check versions from dist-info and import again,
/// without uv. Success rewrites the state with the current (older) stamp.
fn revalidate(
    ctx: &Context,
    snap: &Snapshot,
    old: &State,
    timeout: Duration,
    phases: &mut Phases,
) -> Result<State> {
    state::invalidate(&ctx.penv.state_path())?;
    let checked = check_installed(ctx, snap)?;
    validate::validate_imports(&ctx.penv.python(), &checked.import_pairs(), timeout)?;
    phases.end("validate");
    let state = record(
        ctx,
        Some(old.install_timings_ms.clone()),
        old.host_python.clone(),
        old.uv_version.clone(),
        checked,
        phases,
    )?;
    Ok(state)
}

struct Checked {
    python_version: String,
    installed: BTreeMap<String, String>,
    modules: BTreeMap<String, Vec<String>>,
    facts: BTreeMap<String, String>,
}

impl Checked {
    fn import_pairs(&self) -> Vec<(String, String)> {
        self.modules
            .iter()
            .flat_map(|(dist, modules)| modules.iter().map(move |m| (dist.clone(), m.clone())))
            .collect()
    }
}

/// Reads every required distribution's version and modules from site-packages and checks the
/// version against the requirement (PEP 440). An error names the requirement.
fn check_installed(ctx: &Context, snap: &Snapshot) -> Result<Checked> {
    let (Some(python_version), Some(site_packages)) = (&snap.python_version, &snap.site_packages)
    else {
        return Err(Error::VenvCreate {
            penv: ctx.penv.root.clone(),
            message: "pyvenv.cfg names no Python version".into(),
        });
    };
    let dists = penv::installed_distributions(site_packages);
    let mut installed = BTreeMap::new();
    let mut modules = BTreeMap::new();
    for dep in ctx.deps.iter().filter(|d| d.applies_to(python_version)) {
        let Some(dist) = dists.get(dep.name()) else {
            return Err(Error::Install {
                message: format!(
                    "`{}` ({}) is not installed in {} after uv finished",
                    dep.canonical,
                    dep.origin,
                    site_packages.display()
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
        modules.insert(
            dep.name().to_owned(),
            penv::top_level_modules(&dist.dist_info),
        );
    }
    let mut facts = BTreeMap::new();
    if let Some(dir) = &ctx.esptool_dir {
        let from_dir = dists.get("esptool").filter(|dist| {
            penv::direct_url(&dist.dist_info)
                .is_some_and(|d| d.editable && d.dir.as_deref() == Some(dir.as_path()))
        });
        let Some(esptool) = from_dir else {
            return Err(Error::Install {
                message: format!("esptool is not installed editable from {}", dir.display()),
                tail: String::new(),
            });
        };
        installed.insert("esptool".to_owned(), esptool.version.clone());
        modules.insert(
            "esptool".to_owned(),
            penv::top_level_modules(&esptool.dist_info),
        );
        facts.insert("esptool_dir".to_owned(), dir.display().to_string());
    }
    if let Some(bundle) = dists
        .get("certifi")
        .and_then(|certifi| penv::recorded_file(&certifi.dist_info, "certifi/cacert.pem"))
    {
        facts.insert("certifi_bundle".to_owned(), bundle.display().to_string());
    }
    Ok(Checked {
        python_version: python_version.clone(),
        installed,
        modules,
        facts,
    })
}

fn install_and_validate(
    ctx: &Context,
    reason: &MissReason,
    offline: bool,
    timeout: Duration,
    lock_budget: Duration,
    phases: &mut Phases,
    say: &dyn Fn(&str),
) -> Result<State> {
    // Nothing may claim the penv is valid while it changes.
    state::invalidate(&ctx.penv.state_path())?;

    let host = match &ctx.host_python {
        Some(path) => {
            let (version, _) = install::query_python(path, timeout)?;
            Some(HostPython {
                stamp: Stamp::of(path),
                path: path.clone(),
                version,
            })
        }
        None => None,
    };
    let penv_version = ctx.penv.read_cfg().and_then(|cfg| cfg.version);
    let python_differs = match (&host, &penv_version) {
        (Some(host), Some(penv)) => penv::major_minor(&host.version) != penv::major_minor(penv),
        _ => false,
    };
    let uv = ctx.uv().ok_or(Error::UvNotFound)?;
    if !is_executable(&ctx.penv.python()) || penv_version.is_none() || python_differs {
        let Some(host) = &host else {
            return Err(Error::PythonNotFound {
                python: ctx
                    .explicit_python
                    .clone()
                    .unwrap_or_else(|| "python3".into()),
                message: "not found on PATH; pass --python".into(),
            });
        };
        say(&format!(
            "creating the penv {} with Python {}",
            ctx.penv.root.display(),
            host.version
        ));
        install::create_venv(&uv, &host.path, &ctx.penv, timeout)?;
        phases.end("venv");
    }

    say(&format!(
        "{reason}; installing {} requirements into {}",
        ctx.deps.len(),
        ctx.penv.root.display()
    ));
    let requirements_dir = tempfile::tempdir()
        .map_err(|e| Error::io("create a temporary directory in", &std::env::temp_dir(), e))?;
    let requirements_file = requirements_dir.path().join("requirements.txt");
    std::fs::write(&requirements_file, ctx.requirements_txt())
        .map_err(|e| Error::io("write", &requirements_file, e))?;
    install::pip_install(&InstallRequest {
        uv: &uv,
        python: &ctx.penv.python(),
        requirements_file: &requirements_file,
        cache_dir: &ctx.cache_dir,
        offline,
        timeout,
        lock_budget,
    })?;
    phases.end("install");

    let snap = snapshot(ctx);
    let checked = check_installed(ctx, &snap)?;
    validate::validate_imports(&ctx.penv.python(), &checked.import_pairs(), timeout)?;
    phases.end("validate");
    let uv_version = install::uv_version(&uv);
    let state = record(ctx, None, host, uv_version, checked, phases)?;
    say(&format!(
        "installed and validated {} distributions in {:.2}s",
        state.installed.len(),
        phases.start.elapsed().as_secs_f64()
    ));
    Ok(state)
}

/// Writes the state for the penv as it is now. Only called after validation passed.
/// `install_timings` is `None` when this run installed (its own phases are the install's).
fn record(
    ctx: &Context,
    install_timings: Option<BTreeMap<String, f64>>,
    host_python: Option<HostPython>,
    uv_version: Option<String>,
    checked: Checked,
    phases: &mut Phases,
) -> Result<State> {
    let snap = snapshot(ctx);
    let recorded_at_ns = crate::fsutil::now_ns();
    phases.end("record");
    let state = State {
        schema: state::SCHEMA,
        fingerprint: snap.fingerprint,
        fingerprint_input: snap.input,
        stamp: snap.stamp,
        recorded_at_ns,
        host_python,
        python_version: checked.python_version,
        uv_version,
        installed: checked.installed,
        modules: checked.modules,
        install_timings_ms: install_timings.unwrap_or_else(|| phases.ms.clone()),
        timings_ms: phases.ms.clone(),
        facts: checked.facts,
    };
    state::store(&ctx.penv.state_path(), &state)?;
    Ok(state)
}

#[derive(Serialize)]
struct FingerprintReport<'a> {
    fingerprint: &'a str,
    input: &'a FingerprintInput,
    penv_exists: bool,
}

pub fn fingerprint(args: &FingerprintArgs) -> Result<()> {
    let ctx = Context::resolve(&args.penv, &args.deps)?;
    let mut snap = snapshot(&ctx);
    let penv_exists = snap.input.python_version.is_some();
    if !penv_exists {
        // What the penv would be: created from the host Python.
        let python = ctx
            .host_python
            .clone()
            .ok_or_else(|| Error::PythonNotFound {
                python: ctx
                    .explicit_python
                    .clone()
                    .unwrap_or_else(|| "python3".into()),
                message: "not found on PATH; pass --python".into(),
            })?;
        let (version, real) = install::query_python(&python, Duration::from_secs(30))?;
        snap.input.python_version = Some(version);
        snap.input.interpreter = Some(real);
        snap.fingerprint = snap.input.hash();
    }
    if args.json {
        let report = FingerprintReport {
            fingerprint: &snap.fingerprint,
            input: &snap.input,
            penv_exists,
        };
        crate::messages::println(&crate::messages::json(&report, true));
    } else {
        crate::messages::println(&snap.fingerprint);
    }
    Ok(())
}
