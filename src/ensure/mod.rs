//! `ensure`: the hot path (load the state, compare the request, stat the recorded parts; no lock,
//! no subprocess, no network) and the miss path (refuse a foreign directory, lock, re-check,
//! invalidate, create or repair the penv, install, check every RECORD, check versions, import,
//! record). Recording and the racy re-check are in `record`, what it prints in `report`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod record;
mod report;

use crate::cli::EnsureArgs;
use crate::distinfo;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::history;
use crate::lock::{self, LockRequest, PenvLock};
use crate::messages;
use crate::penv::{self, Occupant};
use crate::phases::Phases;
use crate::process::{self, Stderr};
use crate::stamp::Stamp;
use crate::state::{self, HostPython, State, path_text};
use crate::uv::{self, InstallRequest};
use crate::validate;
use crate::verdict::{self, Context, MissReason, Verdict};

/// Durations above this (about a century) mean "no limit" rather than an overflow.
const MAX_SECONDS: f64 = 3.2e9;

pub fn ensure(args: &EnsureArgs, start: Instant) -> Result<()> {
    let (lock_timeout, given_as) = args.lock_timeout()?;
    let lock_timeout = seconds(lock_timeout, given_as)?;
    let install_timeout = seconds(args.install_timeout, "--install-timeout")?;
    // An unknown `--env` is bad input before anything else happens, as it is for `size`.
    let build_size = match (&args.project_dir, &args.env) {
        (Some(project), Some(env)) => crate::size::cached_entry(project, env)?,
        _ => None,
    };
    let run = Run {
        args,
        build_size,
        ctx: Context::resolve(&args.penv, &args.deps)?,
        offline: args.offline || penv::platformio_offline(),
        install_timeout,
    };
    let mut phases = Phases::new(start);
    let file = state::read(&run.ctx.penv.state_path());
    if !args.verify
        && let Some(recorded) = verdict::hit(&run.ctx, &file)?
    {
        phases.end("check");
        run.report("hit", None, &recorded, phases);
        return Ok(());
    }
    let verdict = verdict::decide(&run.ctx, file.load())?;
    phases.end("check");
    let reason = match verdict {
        Verdict::Hit(_) if args.verify => MissReason::Verify,
        // A file that parses as a `State` also parses as its `Recorded` (a state test checks
        // it), so `verdict::hit` has answered this already; handled all the same.
        Verdict::Hit(state) => {
            run.report("hit", None, &*state, phases);
            return Ok(());
        }
        Verdict::Miss(reason, _) => reason,
    };
    tracing::info!("miss: {reason}");
    // A bad dependency list is bad input before anything changes.
    run.ctx.deps()?;

    uv::check_penv_is_ours(&run.ctx.penv)?;
    if let Some(parent) = run.ctx.penv.root.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("create the directory of", &run.ctx.penv.root, e))?;
    }
    process::install_signal_handler();
    let lock_started = Instant::now();
    let (lock_path, holder_path) = (run.ctx.penv.lock_path(), run.ctx.penv.holder_path());
    let mut request = LockRequest {
        lock_path: &lock_path,
        holder_path: &holder_path,
        timeout: lock_timeout,
        allow_unlocked: args.allow_unlocked,
        second: false,
        quiet: args.quiet,
    };
    let mut lock = lock::acquire(&request)?;
    // Another process held the lock: most likely it just did this very work. The lock goes at
    // once and the check is a hit's (no lock), so a crowd of waiters checks side by side, not
    // one after another under the lock; only a miss locks again.
    if !lock.waited.is_zero() && !args.verify {
        drop(lock);
        if let Some(recorded) = verdict::hit(&run.ctx, &state::read(&run.ctx.penv.state_path()))? {
            phases.end("lock_wait");
            tracing::info!("hit after waiting for the lock");
            run.report("hit", None, &recorded, phases);
            return Ok(());
        }
        request.timeout = lock_timeout.saturating_sub(lock_started.elapsed());
        lock = lock::acquire(&request)?;
    }
    // Then the lock inside the penv: a peer that shares only the penv directory (a volume
    // mounted at the penv path in another container) has its own lock beside it, but this one
    // in common. Always in this order, so two penv-guards never wait for each other in a cycle.
    std::fs::create_dir_all(&run.ctx.penv.root)
        .map_err(|e| Error::io("create the directory", &run.ctx.penv.root, e))?;
    let mut inner = lock::acquire(&LockRequest {
        lock_path: &run.ctx.penv.inner_lock_path(),
        holder_path: &run.ctx.penv.inner_holder_path(),
        timeout: lock_timeout.saturating_sub(lock_started.elapsed()),
        allow_unlocked: args.allow_unlocked,
        second: true,
        quiet: args.quiet,
    })?;
    // Children that change the penv keep both locks, as they keep the outer one (see `process`).
    inner.keep_for_children();
    phases.end("lock_wait");
    fsutil::sweep_temp_files(&run.ctx.penv.root);
    let budget = lock_timeout.saturating_sub(lock_started.elapsed());
    let outcome = run.locked(reason.clone(), &lock, budget, &mut phases);
    run.remember(&reason, &outcome, &phases);
    drop(inner);
    drop(lock);
    let (status, reason, state) = outcome?;
    run.report(status, reason.as_ref(), &state, phases);
    Ok(())
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    // `f64::min` would turn NaN into the cap: NaN is bad input, not "no limit".
    let checked = if value.is_nan() {
        -1.0
    } else {
        value.min(MAX_SECONDS)
    };
    Duration::try_from_secs_f64(checked).map_err(|_| {
        Error::Usage(format!(
            "{flag} must be a non-negative number of seconds, not {value}"
        ))
    })
}

struct Run<'a> {
    args: &'a EnsureArgs,
    ctx: Context,
    /// With `--project-dir` and `--env`: that environment's cached build size (no walk).
    build_size: Option<crate::size::EnvReport>,
    offline: bool,
    install_timeout: Duration,
}

impl Run<'_> {
    fn say(&self, message: impl std::fmt::Display) {
        if !self.args.quiet {
            messages::say(message);
        }
    }

    /// Under the lock: re-check (another process may have just finished the same work), re-check
    /// a racy state from its files, or install and validate.
    fn locked(
        &self,
        reason: MissReason,
        lock: &PenvLock,
        budget: Duration,
        phases: &mut Phases,
    ) -> Result<(&'static str, Option<MissReason>, State)> {
        let verify = self.args.verify;
        let reason = match verdict::decide(&self.ctx, state::load(&self.ctx.penv.state_path()))? {
            Verdict::Hit(state) if !verify => {
                tracing::info!(
                    "hit after waiting {:.1}s for the lock",
                    lock.waited.as_secs_f64()
                );
                return Ok(("hit", None, *state));
            }
            Verdict::Miss(racy @ MissReason::RacyStamp { .. }, Some(old)) if !verify => {
                match self.recheck_files(&old, phases) {
                    Ok(state) => return Ok(("revalidated", Some(racy), state)),
                    Err(e) => {
                        tracing::info!("re-check failed ({e}); reinstalling");
                        racy
                    }
                }
            }
            Verdict::Hit(_) => reason,
            Verdict::Miss(reason, _) => reason,
        };
        let state = self.install_and_validate(&reason, lock, budget, phases)?;
        Ok(("installed", Some(reason), state))
    }

    /// Appends this miss to the history (see `history`); hits never come here.
    fn remember(
        &self,
        reason: &MissReason,
        outcome: &Result<(&'static str, Option<MissReason>, State)>,
        phases: &Phases,
    ) {
        let status = match outcome {
            Ok((status, ..)) => (*status).to_owned(),
            Err(e) => format!("error: {}: {e}", e.exit_code()),
        };
        let kind = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.get("kind")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        #[allow(clippy::cast_precision_loss)]
        let at = fsutil::now_ns() as f64 / 1e9;
        history::append(
            &self.ctx.penv,
            &history::Miss {
                at,
                kind,
                reason: reason.to_string(),
                status,
                timings_ms: phases.so_far(),
                command: messages::command_line(),
            },
        );
    }

    fn install_and_validate(
        &self,
        reason: &MissReason,
        lock: &PenvLock,
        lock_budget: Duration,
        phases: &mut Phases,
    ) -> Result<State> {
        let ctx = &self.ctx;
        let timeout = self.install_timeout;
        // Nothing may claim the penv is valid while it changes.
        if let Some(aside) = state::invalidate(&ctx.penv.state_path())? {
            self.say(format_args!(
                "moved what was at the state path aside to {}",
                aside.display()
            ));
        }
        let host = self.host_python(timeout)?;
        let mut uv = ctx.uv();
        // Offline, the bootstrap below may use only what is here: a uv the cache unpacked, else
        // a uv wheel in UV_FIND_LINKS; with neither, stop before anything changes.
        if uv.is_none() && self.offline {
            uv = uv::uv_in_cache(&ctx.cache_dir);
            if uv.is_none() && uv::offline_uv_wheels().is_empty() {
                return Err(Error::UvUnavailableOffline);
            }
        }
        let moved = matches!(reason, MissReason::PenvMoved { .. }).then(|| reason.to_string());
        if let Some(why) = moved.or_else(|| self.needs_new_venv(host.as_ref().map(|(_, h)| h))) {
            let Some((python, host)) = &host else {
                return Err(Error::PythonNotFound {
                    python: ctx
                        .explicit_python
                        .clone()
                        .unwrap_or_else(|| "python3".into()),
                    message: "not found on PATH; pass --python".into(),
                });
            };
            self.say(format_args!(
                "{why}: creating the penv {} with Python {}",
                ctx.penv.root.display(),
                host.version
            ));
            // The path itself, not its recorded text: uv gets the interpreter as the OS spells it.
            if let Some(warning) = uv::create_venv(
                uv.as_deref(),
                python,
                &ctx.penv,
                &ctx.cache_dir,
                timeout,
                lock.file(),
            )? {
                self.say(warning);
            }
            phases.end("venv");
        }
        let uv = if let Some(uv) = uv.take() {
            uv
        } else {
            self.say("no uv found: installing uv into the penv with its pip");
            let uv = uv::bootstrap_uv(&ctx.penv, self.offline, timeout, lock.file())?;
            phases.end("uv_bootstrap");
            uv
        };

        self.say(format_args!(
            "{reason}; installing {} requirements into {}",
            ctx.deps()?.len(),
            ctx.penv.root.display()
        ));
        let requirements = self.requirements_file()?;
        let site_packages = self.site_packages()?;
        // Damage uv cannot see (a RECORD file or METADATA missing) is reinstalled right away.
        let mut already_damaged: Vec<String> =
            distinfo::record_problems(&distinfo::installed_distributions(&site_packages))
                .into_iter()
                .map(|p| p.normalized)
                .collect();
        already_damaged.dedup();
        let mut request = InstallRequest {
            uv: &uv,
            penv: &ctx.penv,
            python: &ctx.penv.python(),
            requirements_file: &requirements.1,
            reinstall: &already_damaged,
            cache_dir: &ctx.cache_dir,
            offline: self.offline,
            timeout,
            lock_budget,
            stderr: if self.args.quiet {
                Stderr::Captured
            } else {
                Stderr::Live
            },
            hold: lock.file(),
        };
        uv::pip_install(&request)?;
        phases.end("install");

        // What uv called satisfied must also be whole: every RECORD file present with its size,
        // every requirement's version allowed. Damaged distributions are reinstalled once.
        let marker_env = crate::markers::capture(&ctx.penv.python(), timeout)?;
        let mut dists = distinfo::installed_distributions(&site_packages);
        let damaged = validate::damaged(ctx.deps()?, &dists, &marker_env);
        if !damaged.is_empty() {
            self.say(format_args!(
                "{} damaged or not as required (files listed in RECORD missing or changed, or \
                 a version that does not satisfy the list); reinstalling",
                damaged.join(", ")
            ));
            request.reinstall = &damaged;
            uv::pip_install(&request)?;
            dists = distinfo::installed_distributions(&site_packages);
            if let Some(problem) = distinfo::record_problems(&dists).into_iter().next() {
                return Err(Error::Broken {
                    path: problem.path,
                    dist: problem.dist,
                    problem: problem.problem,
                });
            }
        }
        phases.end("record_check");
        let checked = validate::check_installed(ctx, marker_env, &dists)?;
        validate::validate_imports(&ctx.penv.python(), &checked.import_pairs(), timeout)?;
        phases.end("validate");
        let state = self.record(
            None,
            host.map(|(_, h)| h)
                .filter(|_| ctx.explicit_python.is_some()),
            uv::uv_version(&uv),
            checked,
            phases,
        )?;
        self.say(format_args!(
            "installed and validated {} distributions in {:.2}s",
            state.installed.len(),
            phases.start.elapsed().as_secs_f64()
        ));
        Ok(state)
    }

    /// The host Python's path and what the state records of it.
    fn host_python(&self, timeout: Duration) -> Result<Option<(PathBuf, HostPython)>> {
        let Some(path) = self.ctx.host_python() else {
            return Ok(None);
        };
        let (version, _) = uv::query_python(&path, timeout)?;
        let host = HostPython {
            path: path_text(&path),
            stamp: Stamp::of(&path),
            version,
        };
        Ok(Some((path, host)))
    }

    /// Why the penv must be (re)created, if it must.
    fn needs_new_venv(&self, host: Option<&HostPython>) -> Option<String> {
        let penv = &self.ctx.penv;
        if penv.occupant() != Occupant::Venv {
            return Some("the penv does not exist".into());
        }
        if !is_executable(&penv.python()) {
            return Some("the penv's interpreter cannot run".into());
        }
        let Some(version) = penv.read_cfg().and_then(|cfg| cfg.version) else {
            return Some("pyvenv.cfg names no Python version".into());
        };
        if let Some(host) = host
            && penv::major_minor(&host.version) != penv::major_minor(&version)
        {
            return Some(format!(
                "the penv has Python {version} but the host Python is {}",
                host.version
            ));
        }
        if let Some(created_at) = penv.created_at()
            && path_text(&created_at) != path_text(&penv.root)
            && crate::os::path::canonical(&created_at).ok()
                != crate::os::path::canonical(&penv.root).ok()
        {
            return Some(format!(
                "the venv was created at {} and moved here (venvs are not relocatable)",
                created_at.display()
            ));
        }
        None
    }

    fn site_packages(&self) -> Result<PathBuf> {
        let version = self
            .ctx
            .penv
            .read_cfg()
            .and_then(|cfg| cfg.version)
            .ok_or_else(|| Error::VenvCreate {
                penv: self.ctx.penv.root.clone(),
                message: "pyvenv.cfg names no Python version".into(),
            })?;
        Ok(self.ctx.penv.site_packages(&version))
    }

    /// The requirements for uv, in a temp dir that lives as long as the returned guard; `uv` is
    /// added when the penv has none (and this run is online), as pioarduino's own setup does.
    fn requirements_file(&self) -> Result<(tempfile::TempDir, PathBuf)> {
        use std::fmt::Write as _;
        let deps = self.ctx.deps()?;
        let mut text = deps.requirements_txt();
        if let Some(dir) = &self.ctx.esptool_dir {
            let _ = writeln!(text, "-e {}", dir.display());
        }
        // Offline, uv may be in no index uv can read (a uv from the uv cache runs this install):
        // the penv then stays without one rather than failing.
        if !self.ctx.penv.uv().is_file() && !self.offline && !deps.iter().any(|d| d.name() == "uv")
        {
            text.push_str("uv\n");
        }
        let dir = tempfile::tempdir()
            .map_err(|e| Error::io("create a temporary directory in", &std::env::temp_dir(), e))?;
        let file = dir.path().join("requirements.txt");
        std::fs::write(&file, text).map_err(|e| Error::io("write", &file, e))?;
        Ok((dir, file))
    }
}

/// A penv whose interpreter is missing or cannot be run is recreated, not handed to uv.
fn is_executable(path: &Path) -> bool {
    crate::os::fs::is_executable(path)
}
