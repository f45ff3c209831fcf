//! What `ensure` says when it ends: the build size line on stderr, and with `--json` one line of
//! JSON on stdout (ASCII only, so any caller's decoding reads it) naming the penv's Python,
//! esptool, certifi bundle and uv as the OS spells their paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fsutil;
use crate::messages;
use crate::phases::Phases;
use crate::state::{StateOf, StateText, path_serde};
use crate::verdict::MissReason;

use super::Run;

impl Run<'_> {
    pub(super) fn report<T: StateText>(
        &self,
        status: &'static str,
        reason: Option<&MissReason>,
        state: &StateOf<T>,
        phases: Phases,
    ) {
        let timings_ms = phases.total();
        let args = self.args;
        let ctx = &self.ctx;
        if status == "hit" {
            tracing::info!(
                "hit: {} requirements satisfied in {}",
                state.installed.len(),
                ctx.penv.root.display()
            );
        }
        if let Some(size) = &self.build_size
            && !args.quiet
        {
            messages::say(size.summary(fsutil::now_ns()));
        }
        if !args.json {
            return;
        }
        let uv = ctx.penv.uv();
        let report = EnsureReport {
            status,
            reason: reason.map(ToString::to_string),
            fingerprint: state.fingerprint.as_ref(),
            penv: &ctx.penv.root,
            python: ctx.penv.python(),
            esptool: ctx.penv.esptool(),
            certifi: state.facts.get("certifi_bundle"),
            uv: uv.is_file().then_some(uv),
            offline: self.offline,
            python_version: state.python_version.as_ref(),
            installed: &state.installed,
            modules: &state.modules,
            facts: &state.facts,
            build_size: self.build_size.as_ref(),
            timings_ms,
        };
        messages::println(&messages::json(&report, false));
    }
}

#[derive(Debug, Serialize)]
struct EnsureReport<'a, T> {
    status: &'static str,
    reason: Option<String>,
    fingerprint: &'a str,
    #[serde(serialize_with = "path_serde::serialize")]
    penv: &'a Path,
    #[serde(serialize_with = "path_serde::serialize")]
    python: PathBuf,
    /// `<penv>/bin/esptool`, as pioarduino's setup returns it.
    #[serde(serialize_with = "path_serde::serialize")]
    esptool: PathBuf,
    certifi: Option<&'a T>,
    #[serde(serialize_with = "path_serde::option")]
    uv: Option<PathBuf>,
    offline: bool,
    python_version: &'a str,
    installed: &'a BTreeMap<T, T>,
    modules: &'a BTreeMap<T, Vec<T>>,
    facts: &'a BTreeMap<T, T>,
    /// With `--project-dir` and `--env`: that environment's entry of the size cache (no walk).
    #[serde(skip_serializing_if = "Option::is_none")]
    build_size: Option<&'a crate::size::EnvReport>,
    timings_ms: BTreeMap<String, f64>,
}
