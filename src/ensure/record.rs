//! Recording a validated penv, and re-checking a racy one from its files.
//!
//! Invariants (git's racy rule, "stat, then read"):
//! - The stamps are taken first, then the files they vouch for are read again
//!   ([`Run::confirm_unchanged`]): a change by a peer without this lock (a penv shared by
//!   containers whose locks beside it differ) between the check and the stamps shows there, and
//!   any change after the stamps shows in them on the next run. Nothing is recorded otherwise.
//! - A re-check ([`Run::recheck_files`]) first invalidates the state, so a crash in it leaves a
//!   miss, never the old state standing for files that were not read.

use std::collections::BTreeMap;
use std::path::Path;

use crate::distinfo;
use crate::error::{Error, Result};
use crate::fingerprint;
use crate::fsutil;
use crate::phases::Phases;
use crate::stamp;
use crate::state::{self, HostPython, State};
use crate::validate::{self, Checked};
use crate::verdict;

use super::Run;

impl Run<'_> {
    /// For a state whose only fault is a racy stamp: the files must still say what was validated
    /// (versions in dist-info, every RECORD file present). No uv, no Python.
    pub(super) fn recheck_files(&self, old: &State, phases: &mut Phases) -> Result<State> {
        state::invalidate(&self.ctx.penv.state_path())?;
        let site_packages = self.site_packages()?;
        let dists = distinfo::installed_distributions(&site_packages);
        if let Some(problem) = distinfo::record_problems(&dists).into_iter().next() {
            return Err(Error::Broken {
                path: problem.path,
                dist: problem.dist,
                problem: problem.problem,
            });
        }
        let checked = validate::check_installed(&self.ctx, old.marker_env.clone(), &dists)?;
        if checked.installed != old.installed {
            return Err(Error::Install {
                message: "installed versions differ from the validated ones".into(),
                tail: String::new(),
            });
        }
        phases.end("recheck");
        let state = self.record(
            Some(old.install_timings_ms.clone()),
            old.host_python.clone(),
            old.uv_version.clone(),
            checked,
            phases,
        )?;
        tracing::info!(
            "re-checked {} distributions from their files (no uv, no imports); recorded again",
            state.installed.len()
        );
        Ok(state)
    }

    /// Writes the state for the penv as it is now. Only called after validation passed.
    /// `install_timings` is `None` when this run installed (its own phases are the install's).
    pub(super) fn record(
        &self,
        install_timings: Option<BTreeMap<String, f64>>,
        host_python: Option<HostPython>,
        uv_version: Option<String>,
        checked: Checked,
        phases: &mut Phases,
    ) -> Result<State> {
        let ctx = &self.ctx;
        let site_packages = self.site_packages()?;
        let all_modules: Vec<String> = checked.modules.values().flatten().cloned().collect();
        let mut entries = distinfo::module_entries(&site_packages, &all_modules);
        // The required distributions' dist-info directories: a METADATA or RECORD removed or
        // replaced there changes them.
        let dists = distinfo::installed_distributions(&site_packages);
        entries.extend(
            checked
                .installed
                .keys()
                .filter_map(|name| dists.get(name)?.dist_info.file_name())
                .filter_map(|name| name.to_str().map(str::to_owned))
                .filter(|name| !name.contains('/')),
        );
        let recorded = verdict::stamp_keys(ctx, &site_packages, &entries)
            .into_iter()
            .map(|key| (key, None))
            .collect();
        let stamps = ctx.stamps_like(&recorded);
        let recorded_at_ns = fsutil::now_ns();
        // Stat, then read (git's racy rule): the stamps above vouch for what the files say from
        // now on, so the files are read again after them. A peer that changed the penv between
        // the check and the stamps (another installer without this lock: a penv shared by
        // containers whose locks beside it differ) shows here; after the stamps, any change
        // shows in them on the next run.
        self.confirm_unchanged(&site_packages, &checked)?;
        let fingerprint_input =
            fingerprint::input(ctx, Some(checked.python_version.clone()), None)?;
        phases.end("record");
        let state = State {
            schema: state::SCHEMA,
            fingerprint: fingerprint_input.hash(),
            fingerprint_input,
            request: ctx.request()?,
            racy_window_ns: stamp::racy_window_ns(&stamps),
            stamps,
            recorded_at_ns,
            host_python,
            python_version: checked.python_version,
            marker_env: checked.marker_env,
            uv_version,
            installed: checked.installed,
            modules: checked.modules,
            install_timings_ms: install_timings.unwrap_or_else(|| phases.ended()),
            timings_ms: phases.ended(),
            facts: checked.facts,
        };
        state::store(&ctx.penv.state_path(), &state)?;
        Ok(state)
    }

    /// The distributions as the files say after the stamps were taken: the same versions, the
    /// same modules, and every RECORD file still present, or nothing is recorded.
    fn confirm_unchanged(&self, site_packages: &Path, checked: &Checked) -> Result<()> {
        let dists = distinfo::installed_distributions(site_packages);
        let changed = |detail: String| Error::Install {
            message: format!(
                "the penv {} changed while penv-guard validated it ({detail}): another installer \
                 is working on it without penv-guard's lock; nothing was recorded, and the next \
                 run checks it again",
                self.ctx.penv.root.display()
            ),
            tail: String::new(),
        };
        if let Some(problem) = distinfo::record_problems(&dists).into_iter().next() {
            return Err(changed(format!(
                "{}: {}",
                problem.path.display(),
                problem.problem
            )));
        }
        for (name, version) in &checked.installed {
            let found = dists.get(name).map(|d| d.version.as_str());
            if found != Some(version.as_str()) {
                let found = found.unwrap_or("not installed");
                return Err(changed(format!("{name} was {version}, now {found}")));
            }
        }
        let now = validate::check_installed(&self.ctx, checked.marker_env.clone(), &dists)
            .map_err(|e| changed(format!("the list no longer checks: {e}")))?;
        if now.modules != checked.modules {
            return Err(changed(
                "the modules of the required distributions differ".into(),
            ));
        }
        Ok(())
    }
}
