//! The decision a hit rests on: what was asked for (`Context`), compared with an already-loaded
//! state and the stamps of the parts it recorded. Reads nothing but the dependency input and the
//! stamps' metadata: no PATH search, no symlink resolution (unless the penv path is spelled
//! differently than when recorded), no subprocess, no lock. The dependency list is parsed only
//! when the digest of its input differs from the recorded one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{DepArgs, PenvArgs};
use crate::dep_input::DepInput;
use crate::error::{Error, Result};
use crate::penv::{self, Penv};
use crate::requirements::{Dep, DepSet};
use crate::stamp::{self, ESPTOOL_PREFIX, Stamp, StampRoot, Stamps};
use crate::state::{
    HostPythonOf, Loaded, Recorded, Request, RequestOf, State, StateFile, StateOf, StateText,
    path_text,
};

/// The editable esptool project's files whose change (PlatformIO updating tool-esptoolpy in
/// place) must be a miss.
pub const ESPTOOL_PROJECT_FILES: [&str; 4] =
    ["pyproject.toml", "setup.py", "setup.cfg", "package.json"];

/// What is known before any subprocess: the inputs of the decision.
pub struct Context {
    pub penv: Penv,
    deps_input: DepInput,
    /// [`DepInput::digest`], taken once.
    deps_digest: Option<String>,
    /// Parsed on first use: a hit whose recorded input digest matches never parses the list.
    deps: std::cell::OnceCell<DepSet>,
    pub explicit_uv: Option<PathBuf>,
    /// `--python` as given (made absolute when it is a path).
    pub explicit_python: Option<PathBuf>,
    pub cache_dir: PathBuf,
    /// `--esptool-dir`, absolute.
    pub esptool_dir: Option<PathBuf>,
}

impl Context {
    pub fn resolve(penv_args: &PenvArgs, dep_args: &DepArgs) -> Result<Context> {
        let penv = Penv::resolve(penv_args.penv.as_deref())?;
        let deps_input = DepInput::read(dep_args)?;
        let deps_digest = deps_input.digest();
        let cache_dir = match &penv_args.uv_cache_dir {
            Some(dir) => dir.clone(),
            None => penv::core_dir()?.join(".cache").join("uv"),
        };
        let esptool_dir = match &dep_args.esptool_dir {
            Some(dir) if dir.is_dir() => Some(crate::uv::absolute(dir)),
            Some(dir) => {
                return Err(Error::Usage(format!(
                    "--esptool-dir {} is not a directory",
                    dir.display()
                )));
            }
            None => None,
        };
        let explicit_python = penv_args.python.as_deref().map(|p| {
            if p.components().count() > 1 {
                crate::uv::absolute(p)
            } else {
                p.to_path_buf()
            }
        });
        Ok(Context {
            esptool_dir,
            explicit_python,
            explicit_uv: penv_args.uv.clone(),
            penv,
            deps_input,
            deps_digest,
            deps: std::cell::OnceCell::new(),
            cache_dir,
        })
    }

    /// The parsed dependency list (parsed on the first call; a bad list is an error then).
    pub fn deps(&self) -> Result<&DepSet> {
        if let Some(deps) = self.deps.get() {
            return Ok(deps);
        }
        let parsed = self.deps_input.parse()?;
        Ok(self.deps.get_or_init(|| parsed))
    }

    pub fn request(&self) -> Result<Request> {
        let deps = self.deps()?;
        Ok(Request {
            deps: deps.canonical_lines(),
            // Parsing a URL expands `${VAR}` and relative paths, so the same bytes can name
            // another list tomorrow: a list with a URL is compared parsed, every time.
            deps_input: self
                .deps_digest
                .clone()
                .filter(|_| !deps.iter().any(Dep::is_url)),
            esptool_dir: self.esptool_dir_text(),
            penv: path_text(&self.penv.root),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        })
    }

    fn esptool_dir_text(&self) -> Option<String> {
        self.esptool_dir.as_deref().map(path_text)
    }

    /// How the dependency list differs from the recorded one, if it does. Equal input digests
    /// settle it without parsing.
    fn deps_change<T: StateText>(&self, recorded: &RequestOf<T>) -> Result<Option<MissReason>> {
        if let (Some(old), Some(now)) = (&recorded.deps_input, &self.deps_digest)
            && old.as_ref() == now
        {
            return Ok(None);
        }
        let old: Vec<&str> = recorded.deps.iter().map(AsRef::as_ref).collect();
        let new = self.deps()?.canonical_lines();
        if old == new {
            return Ok(None);
        }
        Ok(Some(MissReason::DepsChanged {
            added: new
                .iter()
                .filter(|d| !old.contains(&d.as_str()))
                .cloned()
                .collect(),
            removed: old
                .iter()
                .filter(|d| !new.iter().any(|n| n == *d))
                .map(|d| (*d).to_owned())
                .collect(),
        }))
    }

    /// The host Python that creates the penv: `--python`, else `python3` on PATH (miss path only).
    pub fn host_python(&self) -> Option<PathBuf> {
        crate::uv::find_python(self.explicit_python.as_deref())
    }

    pub fn uv(&self) -> Option<PathBuf> {
        crate::uv::find_uv(
            self.explicit_uv.as_deref(),
            &self.penv,
            self.explicit_python.as_deref(),
        )
    }

    /// The stamp, now, of the part a stamp key names: a path relative to the penv, or an
    /// `esptool-dir:` file.
    fn stamp_now(&self, penv: &StampRoot, key: &str) -> Option<Stamp> {
        match key.strip_prefix(ESPTOOL_PREFIX) {
            Some(file) => Stamp::of(&self.esptool_dir.as_ref()?.join(file)),
            None => penv.stamp(key),
        }
    }

    /// The stamps of the same parts `recorded` names, as they are now.
    pub fn stamps_like(&self, recorded: &Stamps) -> Stamps {
        let penv = StampRoot::open(&self.penv.root);
        recorded
            .keys()
            .map(|key| (key.clone(), self.stamp_now(&penv, key)))
            .collect()
    }

    /// The recorded parts whose stamps differ now.
    fn changed_parts<T: StateText>(&self, recorded: &BTreeMap<T, Option<Stamp>>) -> Vec<String> {
        let penv = StampRoot::open(&self.penv.root);
        recorded
            .iter()
            .filter(|(key, stamp)| self.stamp_now(&penv, key.as_ref()) != **stamp)
            .map(|(key, _)| key.as_ref().to_owned())
            .collect()
    }

    /// The penv's real path as text (resolved; for the fingerprint and a moved-penv check).
    /// Resolved also before the penv exists, so the key `fingerprint` prints before an install
    /// equals the one recorded after it when the core dir is reached through a symlink.
    pub fn penv_real_text(&self) -> String {
        path_text(&crate::fsutil::real_path(&self.penv.root))
    }

    /// Whether an explicit `--python` still names the recorded interpreter.
    fn same_host_python<T: StateText>(&self, recorded: Option<&HostPythonOf<T>>) -> bool {
        let Some(python) = &self.explicit_python else {
            return true;
        };
        let path = if python.components().count() > 1 {
            python.clone()
        } else {
            match which::which(python) {
                Ok(path) => path,
                Err(_) => return false,
            }
        };
        recorded.is_some_and(|h| h.is_at(&path))
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
    EsptoolDirChanged {
        recorded: Option<String>,
        now: Option<String>,
    },
    PenvMoved {
        recorded: String,
        now: String,
    },
    PlatformChanged,
    HostPythonChanged,
    EsptoolProjectChanged {
        files: Vec<String>,
    },
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
                write!(f, "the state file is unusable ({detail})")
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
            MissReason::EsptoolDirChanged { recorded, now } => write!(
                f,
                "the --esptool-dir changed ({} -> {})",
                recorded.as_deref().unwrap_or("none"),
                now.as_deref().unwrap_or("none")
            ),
            MissReason::PenvMoved { recorded, now } => write!(
                f,
                "the penv was moved or copied (recorded at {recorded}, now at {now}); \
                 venvs are not relocatable, so it is recreated"
            ),
            MissReason::PlatformChanged => f.write_str("the OS or architecture changed"),
            MissReason::HostPythonChanged => f.write_str("the host Python (--python) changed"),
            MissReason::EsptoolProjectChanged { files } => write!(
                f,
                "the editable esptool project changed in place (tool-esptoolpy updated): {}",
                files.join(", ")
            ),
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

/// The verdict on a loaded state. An error only when the dependency list has to be parsed (its
/// input differs from the recorded one) and is bad.
pub fn decide(ctx: &Context, loaded: Loaded) -> Result<Verdict> {
    let state = match loaded {
        Loaded::Missing if !ctx.penv.pyvenv_cfg().exists() => {
            return Ok(Verdict::Miss(MissReason::NoPenv, None));
        }
        Loaded::Missing => return Ok(Verdict::Miss(MissReason::NoState, None)),
        Loaded::Corrupt(detail) => {
            return Ok(Verdict::Miss(MissReason::CorruptState { detail }, None));
        }
        Loaded::UnknownSchema(schema) => {
            return Ok(Verdict::Miss(MissReason::UnknownSchema { schema }, None));
        }
        Loaded::Valid(state) => state,
    };
    Ok(match explain(ctx, &*state)? {
        Some(reason) => Verdict::Miss(reason, Some(state)),
        None => Verdict::Hit(state),
    })
}

/// The state, read the cheap way ([`StateFile::recorded`]), when it makes a hit: the same
/// decision as [`decide`], without building the whole state. `None` also when the file does not
/// parse that way; [`decide`] then says why.
pub fn hit<'f>(ctx: &Context, file: &'f StateFile) -> Result<Option<Recorded<'f>>> {
    match file.recorded() {
        Some(recorded) if explain(ctx, &recorded)?.is_none() => Ok(Some(recorded)),
        _ => Ok(None),
    }
}

fn explain<T: StateText>(ctx: &Context, state: &StateOf<T>) -> Result<Option<MissReason>> {
    let old = &state.request;
    if let Some(reason) = ctx.deps_change(old)? {
        return Ok(Some(reason));
    }
    let esptool_dir = ctx.esptool_dir_text();
    let recorded_esptool_dir = old.esptool_dir.as_ref().map(AsRef::as_ref);
    if recorded_esptool_dir != esptool_dir.as_deref() {
        return Ok(Some(MissReason::EsptoolDirChanged {
            recorded: recorded_esptool_dir.map(str::to_owned),
            now: esptool_dir,
        }));
    }
    if (old.os.as_ref(), old.arch.as_ref()) != (std::env::consts::OS, std::env::consts::ARCH) {
        return Ok(Some(MissReason::PlatformChanged));
    }
    if old.penv.as_ref() != path_text(&ctx.penv.root) {
        // Another spelling of the same place is fine; another place is a moved or copied penv.
        let real = ctx.penv_real_text();
        let recorded = state.fingerprint_input.penv.as_ref();
        if real != recorded {
            return Ok(Some(MissReason::PenvMoved {
                recorded: recorded.to_owned(),
                now: real,
            }));
        }
    }
    if !ctx.same_host_python(state.host_python.as_ref()) {
        return Ok(Some(MissReason::HostPythonChanged));
    }
    let changed = ctx.changed_parts(&state.stamps);
    if !changed.is_empty() {
        let (esptool, other): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|part| part.starts_with(ESPTOOL_PREFIX));
        return Ok(Some(if other.is_empty() {
            MissReason::EsptoolProjectChanged {
                files: esptool
                    .iter()
                    .map(|p| p.trim_start_matches(ESPTOOL_PREFIX).to_owned())
                    .collect(),
            }
        } else {
            MissReason::StampChanged {
                parts: other.into_iter().chain(esptool).collect(),
            }
        }));
    }
    let racy = stamp::racy_parts(
        state
            .stamps
            .iter()
            .map(|(key, stamp)| (key.as_ref(), stamp)),
        state.recorded_at_ns,
        state.racy_window_ns,
    );
    if !racy.is_empty() {
        return Ok(Some(MissReason::RacyStamp { parts: racy }));
    }
    Ok(None)
}

/// The parts a new state stamps: `pyvenv.cfg`, the interpreter, site-packages, the site-packages
/// entry of every validated module, the penv's uv, and the esptool project's files.
pub fn stamp_keys(ctx: &Context, site_packages: &Path, module_entries: &[String]) -> Vec<String> {
    let relative = site_packages
        .strip_prefix(&ctx.penv.root)
        .map_or_else(|_| path_text(site_packages), path_text);
    let bin = |name: &Path| {
        name.strip_prefix(&ctx.penv.root)
            .map_or_else(|_| path_text(name), path_text)
    };
    let mut keys = vec![
        "pyvenv.cfg".to_owned(),
        bin(&ctx.penv.python()),
        bin(&ctx.penv.uv()),
        relative.clone(),
    ];
    keys.extend(module_entries.iter().map(|e| format!("{relative}/{e}")));
    if ctx.esptool_dir.is_some() {
        keys.extend(
            ESPTOOL_PROJECT_FILES
                .iter()
                .map(|f| format!("{ESPTOOL_PREFIX}{f}")),
        );
    }
    keys
}
