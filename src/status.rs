//! `penv-guard status`: what `ensure` would decide now and why, read from files. It never
//! installs, never waits for the lock (it only probes it), and exits 0 whatever it finds; only
//! bad input (exit 2) fails it.
//!
//! `--json` prints one object of this stable shape (schema 1; fields are only ever added):
//! ```text
//! { "schema": 1,
//!   "penv":        { "path", "exists", "python", "python_version" },
//!   "host_python": { "path", "version" } | null,
//!   "uv":          { "path", "recorded_version" } | null,
//!   "state":       { "path", "condition": "valid"|"missing"|"corrupt"|"unknown_schema",
//!                    "detail", "age_seconds", "recorded_at_unix" },
//!   "verdict":     { "result": "hit"|"miss"|"stale", "reason": {"kind", ...} | null, "message" },
//!                  ("stale": the recorded stamps match, so `ensure` would hit, but the files
//!                   disagree with the table; the message names `ensure --verify`)
//!   "dependencies": [ { "requirement", "name", "origin", "applies", "installed", "satisfied",
//!                       "modules" } ],
//!   "lock":        { "path", "state": "free"|"held"|"unsupported"|"not_a_file", "holder", "detail" },
//!   "last_install": { "timings_ms", "uv_version", "installed_count" } | null,
//!   "last_write":  { "timings_ms" } | null   (the run that wrote the state: install or re-check),
//!   "build_sizes": <the `size` cache, as `size --json` reports it> | null,
//!   "uv_cache":    { "path", "exists", "apparent_bytes", "allocated_bytes", "files" },
//!   "hints":       [ "..." ],
//!   "platforms":   [ "platform espressif32 <version>: hooked|not hooked|replaced by an update…" ],
//!   "misses":      "3 misses in the last 24 h: 2× … at 12:03, 12:40 UTC; …" | null,
//!   "history":     [ { "at", "kind", "reason", "status", "timings_ms", "command" } ] (newest last) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::distinfo;
use crate::error::Result;
use crate::lock::{self, Holder};
use crate::messages::{human_age, human_bytes};
use crate::penv;
use crate::requirements::DepSet;
use crate::state::{self, Loaded};
use crate::verdict::{self, Context, MissReason, Verdict};

#[derive(Serialize)]
struct Report {
    schema: u32,
    penv: PenvReport,
    host_python: Option<HostReport>,
    uv: Option<UvReport>,
    state: StateReport,
    verdict: VerdictReport,
    dependencies: Vec<DepReport>,
    lock: LockReport,
    last_install: Option<LastInstall>,
    last_write: Option<LastWrite>,
    build_sizes: Option<crate::size::SizeReport>,
    uv_cache: UvCacheReport,
    hints: Vec<String>,
    /// One line per pioarduino platform under the core dir: hooked or not, and what to do.
    platforms: Vec<String>,
    /// The last 24 h of misses in one line, or null.
    misses: Option<String>,
    /// The miss history, newest last (see `history`).
    history: Vec<crate::history::Miss>,
}

#[derive(Serialize)]
struct PenvReport {
    path: PathBuf,
    exists: bool,
    python: PathBuf,
    python_version: Option<String>,
}

#[derive(Serialize)]
struct HostReport {
    path: PathBuf,
    version: Option<String>,
}

#[derive(Serialize)]
struct UvReport {
    path: PathBuf,
    recorded_version: Option<String>,
}

#[derive(Serialize)]
struct StateReport {
    path: PathBuf,
    condition: &'static str,
    detail: Option<String>,
    age_seconds: Option<f64>,
    recorded_at_unix: Option<f64>,
    #[serde(skip)]
    age_ns: Option<i64>,
}

#[derive(Serialize)]
struct VerdictReport {
    result: &'static str,
    reason: Option<MissReason>,
    message: String,
}

#[derive(Serialize)]
struct DepReport {
    requirement: String,
    name: String,
    origin: String,
    applies: bool,
    installed: Option<String>,
    satisfied: bool,
    modules: Vec<String>,
}

#[derive(Serialize)]
struct LockReport {
    path: PathBuf,
    state: &'static str,
    holder: Option<Holder>,
    detail: Option<String>,
}

#[derive(Serialize)]
struct LastInstall {
    timings_ms: std::collections::BTreeMap<String, f64>,
    uv_version: Option<String>,
    installed_count: usize,
}

#[derive(Serialize)]
struct LastWrite {
    timings_ms: std::collections::BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct UvCacheReport {
    path: PathBuf,
    exists: bool,
    apparent_bytes: Option<u64>,
    allocated_bytes: Option<u64>,
    files: Option<u64>,
}

pub fn run(args: &StatusArgs) -> Result<()> {
    let ctx = Context::resolve(&args.penv, &args.deps)?;
    let deps = ctx.deps()?;
    let loaded = state::load(&ctx.penv.state_path());
    let python_version = ctx.penv.read_cfg().and_then(|cfg| cfg.version);
    let site_packages = python_version.as_deref().map(|v| ctx.penv.site_packages(v));
    let decision = verdict::decide(&ctx, loaded.clone())?;
    let recorded = loaded.valid();

    // The table and the verdict come from one decision: a hit whose files disagree is reported
    // as such, with the command that repairs it.
    let marker_env = recorded.map(|s| s.marker_env.clone()).or_else(|| {
        ctx.penv
            .python()
            .is_file()
            .then(|| crate::markers::capture(&ctx.penv.python(), Duration::from_secs(10)).ok())
            .flatten()
    });
    let dependencies = dependency_table(deps, marker_env.as_ref(), site_packages.as_deref());
    let disagreement = dependencies
        .iter()
        .find(|d| d.applies && !d.satisfied)
        .map(|d| {
            format!(
                "`{}` is not satisfied by the files (installed: {})",
                d.requirement,
                d.installed.as_deref().unwrap_or("nothing")
            )
        });
    let verdict = match (&decision, &disagreement) {
        (Verdict::Hit(_), None) => VerdictReport {
            result: "hit",
            reason: None,
            message: "satisfied: `ensure` would exit 0 at once (no lock, no subprocess)".into(),
        },
        (Verdict::Hit(_), Some(why)) => VerdictReport {
            result: "stale",
            reason: None,
            message: format!(
                "stale: the recorded stamps match, so `ensure` would exit 0, but {why}; \
                 `penv-guard ensure --verify` repairs it"
            ),
        },
        (Verdict::Miss(reason, _), _) => VerdictReport {
            result: "miss",
            message: match reason {
                MissReason::RacyStamp { .. } => format!(
                    "miss: {reason}; `ensure` would lock the penv and re-check the files (no uv, \
                     no imports)"
                ),
                _ => format!("miss: {reason}; `ensure` would lock the penv and install"),
            },
            reason: Some(reason.clone()),
        },
    };

    let state_report = match &loaded {
        Loaded::Missing => state_report(&ctx, "missing", None, None),
        Loaded::Corrupt(detail) => state_report(&ctx, "corrupt", Some(detail.clone()), None),
        Loaded::UnknownSchema(n) => {
            state_report(&ctx, "unknown_schema", Some(format!("schema {n}")), None)
        }
        Loaded::Valid(state) => state_report(&ctx, "valid", None, Some(state.recorded_at_ns)),
    };

    // The lock beside the penv, then the one inside it (a peer sharing only the penv directory,
    // such as another container on the same volume, holds that one alone).
    let probe = match lock::probe(&ctx.penv.lock_path(), &ctx.penv.holder_path()) {
        lock::Probe::Free => {
            lock::probe(&ctx.penv.inner_lock_path(), &ctx.penv.inner_holder_path())
        }
        other => other,
    };
    let lock = match probe {
        lock::Probe::Free => ("free", None, None),
        lock::Probe::Held(holder) => ("held", holder, None),
        lock::Probe::Unsupported(e) => ("unsupported", None, Some(e.to_string())),
        lock::Probe::NotAFile(message) => ("not_a_file", None, Some(message)),
    };

    let host_python = ctx.host_python().map(|path| {
        let recorded_version = recorded
            .and_then(|s| s.host_python.as_ref())
            .filter(|h| h.is_at(&path))
            .map(|h| h.version.clone());
        let version = recorded_version.or_else(|| {
            crate::uv::query_python(&path, Duration::from_secs(10))
                .ok()
                .map(|(v, _)| v)
        });
        HostReport { path, version }
    });

    let uv = ctx.uv().map(|path| UvReport {
        path,
        recorded_version: recorded.and_then(|s| s.uv_version.clone()),
    });

    let uv_cache = {
        let exists = ctx.cache_dir.is_dir();
        let totals = exists.then(|| crate::size::walk(&ctx.cache_dir));
        UvCacheReport {
            path: ctx.cache_dir.clone(),
            exists,
            apparent_bytes: totals.as_ref().map(|t| t.apparent),
            allocated_bytes: totals.as_ref().map(|t| t.allocated),
            files: totals.as_ref().map(|t| t.files),
        }
    };

    let mut hints = Vec::new();
    if penv::platformio_offline() {
        hints.push("PLATFORMIO_OFFLINE is set: installs use only the local uv cache".to_owned());
    }
    if uv.is_none() {
        hints.push(
            "no uv found: on a miss `ensure` installs uv into the penv with the penv's pip"
                .to_owned(),
        );
    }
    if let (Some(host), Some(penv_version)) = (
        host_python.as_ref().and_then(|h| h.version.as_deref()),
        python_version.as_deref(),
    ) && penv::major_minor(host) != penv::major_minor(penv_version)
    {
        hints.push(format!(
            "the penv has Python {penv_version} but the host Python is {host}: \
                 `ensure` will recreate the penv"
        ));
    }
    match (&decision, &disagreement) {
        (Verdict::Hit(_), Some(why)) => hints.push(format!(
            "{why}, yet nothing a hit compares changed (an edit in place keeps sizes and \
             stamps): run `penv-guard ensure --verify` to reinstall and validate"
        )),
        (Verdict::Miss(..), Some(why)) => {
            hints.push(format!("{why}: `ensure` will install it"));
        }
        _ => {}
    }
    if let Verdict::Miss(MissReason::RacyStamp { .. }, _) = &decision {
        hints.push(
            "the last install changed files within the filesystem's timestamp granularity \
             before it was recorded; the next `ensure` re-checks the files once and then hits"
                .to_owned(),
        );
    }

    let history = crate::history::load(&ctx.penv);
    #[allow(clippy::cast_precision_loss)]
    let now = crate::fsutil::now_ns() as f64 / 1e9;
    let misses = crate::history::summary(&history, now);
    let platforms = penv::core_dir()
        .map(|dir| crate::platform::status_lines(&dir))
        .unwrap_or_default();

    let report = Report {
        schema: 1,
        platforms,
        misses,
        history,
        penv: PenvReport {
            exists: ctx.penv.root.is_dir(),
            python: ctx.penv.python(),
            python_version: python_version.clone(),
            path: ctx.penv.root.clone(),
        },
        host_python,
        uv,
        state: state_report,
        verdict,
        dependencies,
        lock: LockReport {
            path: ctx.penv.lock_path(),
            state: lock.0,
            holder: lock.1,
            detail: lock.2,
        },
        last_install: recorded.map(|s| LastInstall {
            timings_ms: s.install_timings_ms.clone(),
            uv_version: s.uv_version.clone(),
            installed_count: s.installed.len(),
        }),
        last_write: recorded.map(|s| LastWrite {
            timings_ms: s.timings_ms.clone(),
        }),
        build_sizes: args
            .project_dir
            .as_deref()
            .and_then(crate::size::cached_reports),
        uv_cache,
        hints,
    };

    if args.json {
        crate::messages::println(&crate::messages::json(&report, true));
    } else {
        print_human(&report);
    }
    Ok(())
}

fn state_report(
    ctx: &Context,
    condition: &'static str,
    detail: Option<String>,
    recorded_at_ns: Option<i64>,
) -> StateReport {
    #[allow(clippy::cast_precision_loss)]
    let seconds = |ns: i64| ns as f64 / 1e9;
    StateReport {
        path: ctx.penv.state_path(),
        condition,
        detail,
        age_seconds: recorded_at_ns.map(|at| seconds(crate::fsutil::now_ns() - at)),
        age_ns: recorded_at_ns.map(|at| crate::fsutil::now_ns() - at),
        recorded_at_unix: recorded_at_ns.map(seconds),
    }
}

fn dependency_table(
    deps: &DepSet,
    marker_env: Option<&crate::markers::MarkerValues>,
    site_packages: Option<&std::path::Path>,
) -> Vec<DepReport> {
    let dists = site_packages
        .map(distinfo::installed_distributions)
        .unwrap_or_default();
    let env = marker_env.and_then(crate::markers::environment);
    deps.iter()
        .map(|dep| {
            let dist = dists.get(dep.name());
            let applies = dep.applies_to(env.as_ref());
            DepReport {
                requirement: dep.canonical.clone(),
                name: dep.name().to_owned(),
                origin: dep.origin.clone(),
                applies,
                installed: dist.map(|d| d.version.clone()),
                satisfied: !applies || dist.is_some_and(|d| dep.satisfied_by(&d.version)),
                modules: dist
                    .map(|d| distinfo::top_level_modules(&d.dist_info))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The requirement column's width in the human table.
const REQUIREMENT: usize = 40;

/// One miss for people, newest first in `status`: `installed in 19.1 s (the penv does not
/// exist): penv-guard ensure …`. The text came from a file, so control characters are escaped.
fn history_line(miss: &crate::history::Miss) -> String {
    use crate::messages::printable;
    let outcome = match miss.status.as_str() {
        "hit" => "another run had just done it".to_owned(),
        "revalidated" => "re-checked the files".to_owned(),
        "installed" => "installed".to_owned(),
        other => match other
            .strip_prefix("error: ")
            .and_then(|e| e.split_once(": "))
        {
            Some((code, message)) => format!(
                "failed with exit {}: {}",
                printable(code),
                printable(message)
            ),
            None => printable(other),
        },
    };
    let took = miss
        .timings_ms
        .get("total")
        .map(|ms| format!(" in {}", crate::messages::human_ms(*ms)))
        .unwrap_or_default();
    format!(
        "{outcome}{took} ({}): {}",
        printable(&miss.reason),
        printable(&miss.command)
    )
}

fn print_human(r: &Report) {
    use std::fmt::Write as _;
    let mut text = String::new();
    macro_rules! out {
        ($($arg:tt)*) => {{
            let _ = writeln!(text, $($arg)*);
        }};
    }
    out!("penv          {}", r.penv.path.display());
    match (&r.penv.exists, &r.penv.python_version) {
        (true, Some(v)) => out!("python        {v} ({})", r.penv.python.display()),
        (true, None) => out!("python        unknown (no version in pyvenv.cfg)"),
        (false, _) => out!("python        (the penv does not exist)"),
    }
    if let Some(host) = &r.host_python {
        out!(
            "host python   {} ({})",
            host.version.as_deref().unwrap_or("?"),
            host.path.display()
        );
    }
    match &r.uv {
        Some(uv) => out!(
            "uv            {} ({})",
            uv.recorded_version
                .as_deref()
                .unwrap_or("version not recorded yet"),
            uv.path.display()
        ),
        None => out!("uv            not found"),
    }
    let age = r
        .state
        .age_ns
        .map(|ns| format!(", recorded {}", human_age(ns)))
        .unwrap_or_default();
    let detail = r
        .state
        .detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    out!(
        "state         {}{detail}{age} ({})",
        r.state.condition,
        r.state.path.display()
    );
    out!("verdict       {}", r.verdict.message);
    match (r.lock.state, &r.lock.holder) {
        ("held", holder) => out!(
            "lock          held by {}",
            Holder::describe(holder.as_ref())
        ),
        ("unsupported", _) => out!(
            "lock          unsupported here: {}",
            r.lock.detail.as_deref().unwrap_or("")
        ),
        ("not_a_file", _) => out!(
            "lock          unusable: {}",
            r.lock.detail.as_deref().unwrap_or("")
        ),
        _ => out!("lock          free"),
    }
    if let Some(last) = &r.last_install {
        out!(
            "last install  {}",
            crate::phases::in_order(&last.timings_ms)
        );
    }
    out!();
    out!(
        "{:<REQUIREMENT$} {:<16} {:<4} modules",
        "requirement",
        "installed",
        "ok"
    );
    for dep in &r.dependencies {
        let ok = match (dep.applies, dep.satisfied) {
            (false, _) => "n/a",
            (true, true) => "yes",
            (true, false) => "NO",
        };
        // A requirement wider than its column (a URL) gets a line of its own, whole, and the
        // columns follow on the next line, aligned.
        let requirement = if dep.requirement.chars().count() > REQUIREMENT {
            out!("{}", dep.requirement);
            ""
        } else {
            dep.requirement.as_str()
        };
        out!(
            "{requirement:<REQUIREMENT$} {:<16} {:<4} {}",
            dep.installed.as_deref().unwrap_or("-"),
            ok,
            dep.modules.join(", ")
        );
    }
    out!();
    if let (Some(apparent), Some(files)) = (r.uv_cache.apparent_bytes, r.uv_cache.files) {
        out!(
            "uv cache      {} in {files} files ({})",
            human_bytes(apparent),
            r.uv_cache.path.display()
        );
    } else {
        out!("uv cache      (none at {})", r.uv_cache.path.display());
    }
    for env in r.build_sizes.iter().flat_map(|sizes| &sizes.envs) {
        let bytes = env.apparent_bytes.unwrap_or(0);
        out!(
            "build size    {}: {} (cached)",
            env.name,
            human_bytes(bytes)
        );
    }
    if let Some(misses) = &r.misses {
        out!("misses        {misses}");
        for miss in r.history.iter().rev().take(3) {
            out!("              {}", history_line(miss));
        }
    }
    for line in &r.platforms {
        out!("platform      {line}");
    }
    for hint in &r.hints {
        out!("hint          {hint}");
    }
    crate::messages::print(&text);
}
