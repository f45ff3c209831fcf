//! `penv-guard platform install|remove|status`: hook the `builder/penv_setup.py` of every
//! pioarduino espressif32 platform under `<core>/platforms/` so that it asks penv-guard first.
//!
//! - A platform is a real directory (not a symlink) under `<core>/platforms/` whose
//!   `platform.json` has the name `espressif32` and a pioarduino repository URL.
//! - A `penv_setup.py` is recognised by content: a known upstream revision (sha256), or a file
//!   where every anchor of [`platform_edits::EDITS`] occurs exactly once. Anything else is left
//!   untouched (exit 2).
//! - `install` writes, in this order and each atomically: a byte-for-byte copy of the original
//!   (`penv_setup.py.penv-guard-orig`), a record with the sha256 of the original and of the hooked
//!   file (`penv_setup.py.penv-guard.json`), then the hooked file with the original's mode. A
//!   crash between two steps leaves the original in place, and `status` and `install` read it
//!   as not hooked. Nothing is written through a symlink; a symlinked `builder/` or
//!   `penv_setup.py` is refused.
//! - `remove` restores the copy only while the file is still exactly what `install` wrote; a file
//!   a platform update replaced is left alone and only penv-guard's two files are deleted.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cli::{PlatformAction, PlatformArgs};
use crate::error::{Error, Result};
use crate::fsutil::{self, Follow};
use crate::messages;
use crate::platform_edits;

mod lock;
mod status;

use lock::lock_platforms;
use status::status;
pub use status::status_lines;

const BACKUP_SUFFIX: &str = ".penv-guard-orig";
const RECORD_SUFFIX: &str = ".penv-guard.json";
const RECORD_SCHEMA: u32 = 1;
/// In the core dir: serializes `install` and `remove`. Never deleted, never written.
const PLATFORM_LOCK: &str = ".penv-guard-platform.lock";
/// Edits take milliseconds; a wait this long means something is stuck.
const PLATFORM_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str = "run `penv-guard platform install`";
const HOOKED: &str = platform_edits::HOOKED_RELEASES;

/// What `install` remembers next to the file.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    schema: u32,
    original_sha256: String,
    hooked_sha256: String,
    platform_version: String,
    penv_guard_version: String,
}

/// The state of one platform's `penv_setup.py`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// Hooked by `install`; the copy of the original is there.
    Hooked,
    /// Hooked with these edits but without penv-guard's copy (e.g. `git apply` of the patch).
    HookedByPatch,
    /// Hooked by `install` with edits this penv-guard no longer makes.
    Outdated,
    /// Recognised and not hooked (`upstream`: the releases of the known file, if it is one).
    NotHooked { upstream: Option<&'static str> },
    /// penv-guard's copy is there, but the file is neither it nor what `install` wrote: a
    /// platform update (`pio pkg update`) replaced it.
    Replaced { recognised: bool },
    /// The anchors cannot be placed exactly: an upstream file penv-guard does not hook (its
    /// releases), or one it does not know.
    Unrecognised { upstream: Option<&'static str> },
    /// The platform directory is a symlink (a development checkout, say): never edited.
    Linked(PathBuf),
    /// Missing, a symlink, not a regular file, or unreadable.
    Unusable(String),
}

impl Hook {
    fn name(&self) -> &'static str {
        match self {
            Hook::Hooked => "hooked",
            Hook::HookedByPatch => "hooked-by-patch",
            Hook::Outdated => "outdated",
            Hook::NotHooked { .. } => "not-hooked",
            Hook::Replaced { .. } => "replaced-by-update",
            Hook::Unrecognised { .. } => "unrecognised",
            Hook::Linked(_) => "linked",
            Hook::Unusable(_) => "unusable",
        }
    }

    fn detail(&self) -> String {
        match self {
            Hook::Hooked => "hooked: penv_setup.py asks penv-guard first".into(),
            Hook::HookedByPatch => {
                "hooked by penv_setup.patch (no penv-guard copy of the original)".into()
            }
            Hook::Outdated => format!("hooked by an older penv-guard; {INSTALL_HINT} to update"),
            Hook::NotHooked { upstream } => format!(
                "not hooked ({}); {INSTALL_HINT}",
                upstream.map_or_else(|| "anchors fit".to_owned(), |r| format!("upstream {r}"))
            ),
            Hook::Replaced { recognised: true } => format!(
                "not hooked: a platform update (pio pkg update) replaced the hooked file; \
                 {INSTALL_HINT} to hook it again"
            ),
            Hook::Replaced { recognised: false } => {
                "not hooked: a platform update (pio pkg update) replaced the hooked file with one \
                 penv-guard does not recognise; it stays unhooked"
                    .into()
            }
            Hook::Unrecognised {
                upstream: Some(releases),
            } => format!(
                "not hooked: the first {releases} penv_setup.py (SCons only) is not one \
                 penv-guard hooks; pin 55.03.31-2 (the same version) or 55.03.32+ and \
                 {INSTALL_HINT} again"
            ),
            Hook::Unrecognised { upstream: None } => format!(
                "not hooked: not a penv_setup.py penv-guard knows (it hooks pioarduino \
                 {HOOKED}); update penv-guard or the platform and {INSTALL_HINT} again"
            ),
            Hook::Linked(target) => format!(
                "left alone: the platform directory is a symlink (to {}); penv-guard edits only \
                 platforms PlatformIO installed, never a linked checkout",
                target.display()
            ),
            Hook::Unusable(why) => format!("cannot be hooked: {why}"),
        }
    }
}

/// One pioarduino espressif32 platform and its hook state.
#[derive(Debug, Clone)]
pub struct Platform {
    pub dir: PathBuf,
    pub version: String,
    pub file: PathBuf,
    pub hook: Hook,
}

impl Platform {
    fn backup(&self) -> PathBuf {
        sibling(&self.file, BACKUP_SUFFIX)
    }

    fn record_path(&self) -> PathBuf {
        sibling(&self.file, RECORD_SUFFIX)
    }

    /// `espressif32 55.03.311 (<dir>)`: how messages name the platform.
    fn label(&self) -> String {
        format!("espressif32 {} ({})", self.version, self.dir.display())
    }
}

fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    file.with_file_name(name)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn run(args: &PlatformArgs) -> Result<()> {
    match &args.action {
        PlatformAction::Install(a) => install(&core_dir(a.core_dir.as_deref())?),
        PlatformAction::Remove(a) => remove(&core_dir(a.core_dir.as_deref())?),
        PlatformAction::Status(a) => status(&core_dir(a.dir.core_dir.as_deref())?, a.json),
    }
}

fn core_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let dir = match explicit {
        Some(dir) => dir.to_path_buf(),
        None => crate::penv::core_dir()?,
    };
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "--core-dir {}: not a directory (PlatformIO's core dir, default $PLATFORMIO_CORE_DIR or ~/.platformio)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Every pioarduino espressif32 platform under `<core_dir>/platforms/`, sorted by directory.
pub fn platforms(core_dir: &Path) -> Result<Vec<Platform>> {
    let root = core_dir.join("platforms");
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", &root, e)),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        // DirEntry::file_type does not follow a symlink: a linked platform is not ours to edit,
        // but it is named (`Hook::Linked`) when it is pioarduino's.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let dir = entry.path();
        let linked = kind.is_symlink() && dir.is_dir();
        if !kind.is_dir() && !linked {
            continue;
        }
        let Some(version) = pioarduino_version(&dir.join("platform.json")) else {
            continue;
        };
        let file = dir.join("builder").join("penv_setup.py");
        let mut platform = Platform {
            dir,
            version,
            file,
            hook: Hook::Unrecognised { upstream: None },
        };
        platform.hook = if linked {
            Hook::Linked(fs::read_link(&platform.dir).unwrap_or_default())
        } else {
            classify(&platform).0
        };
        found.push(platform);
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

/// The version of a pioarduino espressif32 `platform.json`, `None` for any other platform.
fn pioarduino_version(path: &Path) -> Option<String> {
    let text = fsutil::read_foreign_text(path)?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json["repository"]["url"].as_str()?.to_ascii_lowercase();
    let ours =
        json["name"] == "espressif32" && url.contains("github.com/pioarduino/platform-espressif32");
    ours.then(|| {
        json["version"]
            .as_str()
            .unwrap_or("(no version)")
            .to_owned()
    })
}

/// What `classify` read, for the action that follows.
struct Seen {
    current: Option<String>,
    record: Option<Record>,
    /// The copy, when its sha256 is the recorded original's.
    backup: Option<String>,
}

fn classify(p: &Platform) -> (Hook, Seen) {
    let mut seen = Seen {
        current: None,
        record: None,
        backup: None,
    };
    if let Some(why) = unsafe_path(p) {
        return (Hook::Unusable(why), seen);
    }
    let current = match fsutil::read_capped(&p.file, fsutil::FOREIGN_FILE_CAP, Follow::Never) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => return (Hook::Unrecognised { upstream: None }, seen),
        },
        Err(e) => return (Hook::Unusable(format!("{}: {e}", p.file.display())), seen),
    };
    let sum = sha256_hex(current.as_bytes());
    seen.record = read_record(&p.record_path());
    if let Some(record) = &seen.record {
        seen.backup = fsutil::read_capped(&p.backup(), fsutil::FOREIGN_FILE_CAP, Follow::Never)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|text| sha256_hex(text.as_bytes()) == record.original_sha256);
    }
    let hook = match (&seen.record, &seen.backup) {
        (Some(record), Some(backup)) if sum == record.hooked_sha256 => {
            if platform_edits::apply(backup).as_deref() == Some(current.as_str()) {
                Hook::Hooked
            } else {
                Hook::Outdated
            }
        }
        (Some(record), _) if sum != record.original_sha256 && sum != record.hooked_sha256 => {
            if platform_edits::unapply(&current).is_some() {
                Hook::HookedByPatch
            } else {
                Hook::Replaced {
                    recognised: platform_edits::apply(&current).is_some(),
                }
            }
        }
        _ => fresh(&current),
    };
    seen.current = Some(current);
    (hook, seen)
}

/// The hook state of a file read without penv-guard's record.
fn fresh(current: &str) -> Hook {
    let upstream = platform_edits::known_revision(current).map(|r| r.releases);
    if platform_edits::unapply(current).is_some() {
        Hook::HookedByPatch
    } else if platform_edits::apply(current).is_some() {
        Hook::NotHooked { upstream }
    } else {
        Hook::Unrecognised { upstream }
    }
}

/// Why the path to `penv_setup.py` may not be written: `builder/` or the file is a symlink or
/// not what it should be. Missing is reported the same way.
fn unsafe_path(p: &Platform) -> Option<String> {
    let builder = p.file.parent()?;
    for (path, want_dir) in [(builder, true), (p.file.as_path(), false)] {
        match fs::symlink_metadata(path) {
            Ok(m) if want_dir && m.file_type().is_dir() => {}
            Ok(m) if !want_dir && m.file_type().is_file() => {}
            Ok(m) => {
                return Some(format!(
                    "{} is {}",
                    path.display(),
                    fsutil::kind_name(m.file_type())
                ));
            }
            Err(e) => return Some(format!("{}: {e}", path.display())),
        }
    }
    for own in [p.backup(), p.record_path()] {
        if fs::symlink_metadata(&own).is_ok_and(|m| !m.file_type().is_file()) {
            return Some(format!("{} is not a regular file", own.display()));
        }
    }
    None
}

fn read_record(path: &Path) -> Option<Record> {
    let bytes = fsutil::read_capped(path, fsutil::OWN_FILE_CAP, Follow::Never).ok()?;
    serde_json::from_slice::<Record>(&bytes)
        .ok()
        .filter(|r| r.schema == RECORD_SCHEMA)
}

/// Writes `bytes` to `path` atomically, with `mode` (the original's) on Unix.
fn write_file(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    fsutil::write_atomic(path, bytes, true).map_err(|e| Error::io("write", path, e))?;
    if let Some(mode) = mode {
        crate::os::fs::set_mode(path, mode).map_err(|e| Error::io("set the mode of", path, e))?;
    }
    Ok(())
}

fn file_mode(path: &Path) -> Option<u32> {
    crate::os::fs::mode(path)
}

/// Deletes one of penv-guard's own files next to `penv_setup.py` (a regular file or nothing).
fn delete_own(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {
            fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
        }
        Ok(_) => Err(Error::Usage(format!(
            "{} is not a regular file; penv-guard did not create it and leaves it alone",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspect", path, e)),
    }
}

/// The platforms `install` and `remove` act on; says so when there are none.
fn platforms_or_say_none(core_dir: &Path) -> Result<Vec<Platform>> {
    let found = platforms(core_dir)?;
    if found.is_empty() {
        messages::say(format_args!(
            "no pioarduino espressif32 platform under {}",
            core_dir.join("platforms").display()
        ));
    }
    Ok(found)
}

/// What `install` and `remove` share: under the platform lock, every platform once (a linked one
/// is only named), then exit 2 if some were left alone. `act` returns the line saying why it left
/// a platform alone, if it did.
fn for_each_platform(
    core_dir: &Path,
    mut act: impl FnMut(&Platform, Hook, Seen) -> Result<Option<String>>,
) -> Result<()> {
    let _lock = lock_platforms(core_dir)?;
    let found = platforms_or_say_none(core_dir)?;
    let mut refused = Vec::new();
    for p in &found {
        if let Hook::Linked(_) = &p.hook {
            messages::say(format_args!("{}: {}", p.label(), p.hook.detail()));
            continue;
        }
        let (hook, seen) = classify(p);
        refused.extend(act(p, hook, seen)?);
    }
    left_alone(refused, found.len())
}

pub fn install(core_dir: &Path) -> Result<()> {
    for_each_platform(core_dir, |p, hook, seen| {
        let original = match (&hook, seen.current) {
            (Hook::Hooked | Hook::HookedByPatch, _) => {
                messages::say(format_args!("{}: already hooked", p.label()));
                return Ok(None);
            }
            (Hook::Outdated, _) => seen.backup.unwrap_or_default(),
            (Hook::NotHooked { .. } | Hook::Replaced { recognised: true }, Some(current)) => {
                current
            }
            _ => String::new(),
        };
        let Some(hooked) = platform_edits::apply(&original) else {
            let why = match hook {
                Hook::Unusable(why) => format!("cannot be hooked: {why}"),
                other => {
                    let detail = other.detail();
                    let why = detail.strip_prefix("not hooked: ").unwrap_or(&detail);
                    format!("{}: {why}", p.file.display())
                }
            };
            return Ok(Some(format!(
                "espressif32 {}: {why}; left untouched",
                p.version
            )));
        };
        let record = Record {
            schema: RECORD_SCHEMA,
            original_sha256: sha256_hex(original.as_bytes()),
            hooked_sha256: sha256_hex(hooked.as_bytes()),
            platform_version: p.version.clone(),
            penv_guard_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let mode = file_mode(&p.file);
        write_file(&p.backup(), original.as_bytes(), mode)?;
        write_file(
            &p.record_path(),
            messages::json(&record, true).as_bytes(),
            None,
        )?;
        write_file(&p.file, hooked.as_bytes(), mode)?;
        messages::say(format_args!("{}: hooked {}", p.label(), p.file.display()));
        Ok(None)
    })
}

/// Exit 2 when some platforms were left alone (after every other one was handled): one line
/// for one, else one line each and a count.
fn left_alone(mut refused: Vec<String>, of: usize) -> Result<()> {
    match refused.len() {
        0 => Ok(()),
        1 => Err(Error::Usage(refused.remove(0))),
        n => {
            for line in &refused {
                messages::say(format_args!("error: {line}"));
            }
            Err(Error::Usage(format!(
                "{n} of {of} pioarduino platforms left alone (each named above)"
            )))
        }
    }
}

pub fn remove(core_dir: &Path) -> Result<()> {
    for_each_platform(core_dir, |p, hook, seen| {
        match hook {
            Hook::Hooked | Hook::Outdated => {
                let original = seen.backup.unwrap_or_default();
                write_file(&p.file, original.as_bytes(), file_mode(&p.file))?;
                messages::say(format_args!("{}: restored {}", p.label(), p.file.display()));
            }
            Hook::HookedByPatch => {
                let current = seen.current.unwrap_or_default();
                let original = platform_edits::unapply(&current).unwrap_or_default();
                write_file(&p.file, original.as_bytes(), file_mode(&p.file))?;
                messages::say(format_args!(
                    "{}: removed the patch's edits from {}",
                    p.label(),
                    p.file.display()
                ));
            }
            Hook::Replaced { .. } => messages::say(format_args!(
                "{}: {} was replaced by a platform update; left as it is",
                p.label(),
                p.file.display()
            )),
            Hook::Unusable(why) => return Ok(Some(format!("{}: {why}", p.label()))),
            Hook::NotHooked { .. } | Hook::Unrecognised { .. } | Hook::Linked(_) => {
                messages::say(format_args!("{}: not hooked", p.label()));
            }
        }
        if seen.record.is_some() || p.backup().exists() {
            delete_own(&p.record_path())?;
            delete_own(&p.backup())?;
        }
        Ok(None)
    })
}
