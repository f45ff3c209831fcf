//! The state file `<penv>/.penv-guard-state.json`: what the last validated install proved, and
//! the stamps a hit compares.
//!
//! Invariants:
//! - A hit needs all of: a readable state file of the current schema, the same request (the
//!   dependency list, by the digest of its input bytes or else by its canonical form; the
//!   `--esptool-dir`, the penv's place, OS and architecture), the same host Python when
//!   `--python` names one, equal stamps (exact equality of inode, size, mtime and ctime in ns;
//!   never "newer than") of every recorded part, and no part changed within the racy window
//!   before the state was recorded. Anything else is a miss, with a reason.
//! - Missing, truncated, unparsable, special (FIFO, directory, symlink) or unknown-schema state is
//!   a miss, never an error or a hang.
//! - The state is deleted before an install starts and written only after validation passed, so
//!   a crash at any point leaves no state, and the next run repairs the penv.
//! - Writes are atomic (temp file, fsync, rename); leftover temp files are swept.
//! - uv is not part of what a hit compares: which uv installed the packages does not change
//!   whether they satisfy the list.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::{self, Follow, ReadError};
use crate::markers::MarkerValues;

pub const SCHEMA: u32 = 2;

/// The window used where the filesystem's timestamp granularity cannot be measured (FAT).
pub const COARSE_RACY_WINDOW_NS: i64 = 2_000_000_000;

/// The build-size cache's racy window (see `size`): FAT's granularity, the coarsest there is. A
/// racy size only costs one more walk, so it is not measured as the penv's window is.
pub const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    /// The stamp of what `path` names, following symlinks (an interpreter link is stamped by the
    /// binary it points to).
    pub fn of(path: &Path) -> Option<Stamp> {
        fs::metadata(path).ok().map(|m| Stamp::from_metadata(&m))
    }

    pub fn from_metadata(m: &fs::Metadata) -> Stamp {
        Stamp {
            ino: inode(m),
            size: m.len(),
            mtime_ns: fsutil::mtime_ns(m),
            ctime_ns: fsutil::ctime_ns(m),
        }
    }

    fn newest_ns(&self) -> i64 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// A directory whose parts are stamped by their path relative to it. On Linux it is opened once
/// (`O_PATH`) and each part is stat'ed relative to it, which spares joining and walking the
/// directory's own path for each of a hit's dozens of parts; elsewhere, or where it cannot be
/// opened, paths are joined. Either way a stamp is what [`Stamp::of`] gives for the joined path.
pub struct StampRoot<'a> {
    path: &'a Path,
    #[cfg(target_os = "linux")]
    dir: Option<std::os::fd::OwnedFd>,
}

impl<'a> StampRoot<'a> {
    pub fn open(path: &'a Path) -> StampRoot<'a> {
        StampRoot {
            path,
            #[cfg(target_os = "linux")]
            dir: {
                use rustix::fs::{Mode, OFlags};
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                rustix::fs::open(path, flags, Mode::empty()).ok()
            },
        }
    }

    /// The stamp of `relative` (following symlinks, as [`Stamp::of`] does).
    pub fn stamp(&self, relative: &str) -> Option<Stamp> {
        #[cfg(target_os = "linux")]
        if let Some(dir) = &self.dir
            && !relative.is_empty()
        {
            let stat = rustix::fs::statat(dir, relative, rustix::fs::AtFlags::empty()).ok()?;
            let ns = |seconds: i64, nanos: u64| {
                fsutil::seconds_and_nanos(seconds, i64::try_from(nanos).unwrap_or(0))
            };
            return Some(Stamp {
                ino: stat.st_ino,
                size: u64::try_from(stat.st_size).unwrap_or(0),
                mtime_ns: ns(stat.st_mtime, stat.st_mtime_nsec),
                ctime_ns: ns(stat.st_ctime, stat.st_ctime_nsec),
            });
        }
        Stamp::of(&self.path.join(relative))
    }
}

#[cfg(unix)]
fn inode(m: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &fs::Metadata) -> u64 {
    0
}

/// The stamped parts, by name: a path relative to the penv (`pyvenv.cfg`, `bin/python`,
/// `lib/python3.11/site-packages/yaml`), or `esptool-dir:<file>` for the editable esptool
/// project's files. `None` records that the part did not exist.
pub type Stamps = BTreeMap<String, Option<Stamp>>;

pub const ESPTOOL_PREFIX: &str = "esptool-dir:";

/// Parts that changed within `window_ns` before `at_ns`: a later change in the same timestamp
/// tick would leave their stamp unchanged (git's "racy clean" entries).
pub fn racy_parts(stamps: &Stamps, at_ns: i64, window_ns: i64) -> Vec<String> {
    stamps
        .iter()
        .filter(|(_, stamp)| stamp.is_some_and(|s| is_racy(s.newest_ns(), at_ns, window_ns)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Whether a timestamp `changed_ns` lies within `window_ns` before `at_ns` (or after it): the
/// one racy rule, for the penv's stamps and the build-size keys alike.
pub fn is_racy(changed_ns: i64, at_ns: i64, window_ns: i64) -> bool {
    changed_ns > at_ns.saturating_sub(window_ns)
}

/// The racy window for these stamps: twice the coarser of the kernel's timestamp tick and the
/// granularity the filesystem showed in the timestamps just read (all whole seconds on FAT or
/// ext3, nanoseconds on ext4, btrfs, xfs, tmpfs, APFS).
pub fn racy_window_ns(stamps: &Stamps) -> i64 {
    let times: Vec<i64> = stamps
        .values()
        .flatten()
        .flat_map(|s| [s.mtime_ns, s.ctime_ns])
        .collect();
    if times.is_empty() {
        return COARSE_RACY_WINDOW_NS;
    }
    let mut granularity: i64 = 1;
    while granularity < 1_000_000_000 && times.iter().all(|t| t % (granularity * 10) == 0) {
        granularity *= 10;
    }
    if granularity >= 1_000_000_000 {
        return COARSE_RACY_WINDOW_NS;
    }
    2 * granularity.max(timestamp_tick_ns())
}

#[cfg(target_os = "linux")]
fn timestamp_tick_ns() -> i64 {
    let res = rustix::time::clock_getres(rustix::time::ClockId::RealtimeCoarse);
    res.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(res.tv_nsec)
        .clamp(1, COARSE_RACY_WINDOW_NS)
}

#[cfg(not(target_os = "linux"))]
fn timestamp_tick_ns() -> i64 {
    10_000_000
}

/// A path as text for the state and the fingerprint. Valid UTF-8 stays as it is; other bytes are
/// written as `\xNN` (and a backslash as `\\`), so distinct paths stay distinct and serializing
/// never fails.
pub fn path_text(path: &Path) -> String {
    if let Some(text) = path.to_str()
        && !text.contains('\\')
    {
        return text.to_owned();
    }
    escape_bytes(&os_bytes(path))
}

fn escape_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(unix)]
fn os_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(path: &Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

/// Serde for paths in reports: lossless text via [`path_text`], never a serialization error.
pub mod path_serde {
    use std::path::{Path, PathBuf};

    pub fn serialize<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::path_text(path))
    }

    pub fn option<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match path {
            Some(path) => s.serialize_str(&super::path_text(path)),
            None => s.serialize_none(),
        }
    }
}

/// The CI cache key's inputs: the same on every machine with the same dependency list, Python
/// version and OS, and the same core dir path. Nothing machine-local (no uv, no inode, no time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintInput {
    pub schema: u32,
    pub deps: Vec<String>,
    pub python_version: Option<String>,
    /// Real path of the penv's base interpreter.
    pub interpreter: Option<String>,
    /// Real path of the penv.
    pub penv: String,
    pub esptool_dir: Option<String>,
    pub os: String,
    pub arch: String,
}

impl FingerprintInput {
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&canonical))
    }
}

/// What was asked for, compared field by field on the hot path (no hashing of files needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub deps: Vec<String>,
    /// The digest of the dependency list as given ([`crate::requirements::DepInput::digest`]):
    /// when it is unchanged, a hit does not parse the list again. Absent for a list from `-r`
    /// files or with a URL (parsing expands `${VAR}` and relative paths in it).
    #[serde(default)]
    pub deps_input: Option<String>,
    pub esptool_dir: Option<String>,
    /// The penv path as given (absolute, not resolved); a different spelling is resolved once.
    pub penv: String,
    pub os: String,
    pub arch: String,
}

/// The host Python the penv was checked against (only with an explicit `--python`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPython {
    pub path: String,
    pub stamp: Option<Stamp>,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema: u32,
    pub fingerprint: String,
    pub fingerprint_input: FingerprintInput,
    pub request: Request,
    pub stamps: Stamps,
    pub racy_window_ns: i64,
    pub recorded_at_ns: i64,
    pub host_python: Option<HostPython>,
    pub python_version: String,
    /// The penv interpreter's own PEP 508 marker values; markers are evaluated with these.
    pub marker_env: MarkerValues,
    pub uv_version: Option<String>,
    /// Normalized name → installed version, for every requirement that applies.
    pub installed: BTreeMap<String, String>,
    /// Normalized name → validated top-level modules.
    pub modules: BTreeMap<String, Vec<String>>,
    /// Phase → milliseconds, of the run that wrote this state (an install or a re-check).
    pub timings_ms: BTreeMap<String, f64>,
    /// Phase → milliseconds of the last install; a re-check carries it over.
    #[serde(default)]
    pub install_timings_ms: BTreeMap<String, f64>,
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Missing,
    Corrupt(String),
    UnknownSchema(u64),
    Valid(Box<State>),
}

impl Loaded {
    pub fn valid(&self) -> Option<&State> {
        match self {
            Loaded::Valid(state) => Some(state),
            _ => None,
        }
    }
}

/// Reads the state file as penv-guard's own file: no symlink followed, nothing but a regular
/// file read, at most [`fsutil::OWN_FILE_CAP`] bytes. Anything else is a miss.
pub fn load(path: &Path) -> Loaded {
    match fsutil::read_capped(path, fsutil::OWN_FILE_CAP, Follow::Never) {
        Ok(bytes) => parse(&bytes),
        Err(ReadError::Missing) => Loaded::Missing,
        Err(e) => Loaded::Corrupt(e.to_string()),
    }
}

pub fn parse(bytes: &[u8]) -> Loaded {
    // The hit path: one pass straight into `State`. Only a file that does not parse as this
    // schema's state is read a second time, to say why.
    if let Ok(state) = serde_json::from_slice::<State>(bytes)
        && state.schema == SCHEMA
    {
        return Loaded::Valid(Box::new(state));
    }
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return Loaded::Corrupt(format!("not valid JSON: {e}")),
    };
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(schema) if schema == u64::from(SCHEMA) => {}
        Some(schema) => return Loaded::UnknownSchema(schema),
        None => return Loaded::Corrupt("no schema number".to_owned()),
    }
    match serde_json::from_value::<State>(value) {
        Ok(state) => Loaded::Valid(Box::new(state)),
        Err(e) => Loaded::Corrupt(format!("unexpected content: {e}")),
    }
}

/// Removes the state so that nothing claims the penv is valid while it is being changed. A
/// regular file or symlink at the state path is removed (the name is penv-guard's); anything
/// else there (a directory, a FIFO) is moved aside, never deleted, and its new name returned.
pub fn invalidate(path: &Path) -> Result<Option<PathBuf>> {
    let kind = match fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("inspect the state file", path, e)),
    };
    if kind.is_file() || kind.is_symlink() {
        return match fs::remove_file(path) {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("remove the stale state file", path, e)),
        };
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".displaced-{}", fsutil::now_ns()));
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside).map_err(|e| Error::io("move aside", path, e))?;
    Ok(Some(aside))
}

pub fn store(path: &Path, state: &State) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| {
        Error::io(
            "serialize the state for",
            path,
            std::io::Error::other(e.to_string()),
        )
    })?;
    bytes.push(b'\n');
    fsutil::write_atomic(path, &bytes, true).map_err(|e| Error::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[allow(clippy::unnecessary_wraps)] // a recorded part, which may be None
    fn stamp(mtime_ns: i64) -> Option<Stamp> {
        Some(Stamp {
            ino: 1,
            size: 2,
            mtime_ns,
            ctime_ns: mtime_ns,
        })
    }

    fn sample() -> State {
        let input = FingerprintInput {
            schema: SCHEMA,
            deps: vec!["rich>=14".into()],
            python_version: Some("3.11.7".into()),
            interpreter: Some("/usr/bin/python3.11".into()),
            penv: "/home/u/.platformio/penv".into(),
            esptool_dir: None,
            os: "linux".into(),
            arch: "x86_64".into(),
        };
        State {
            schema: SCHEMA,
            fingerprint: input.hash(),
            request: Request {
                deps: input.deps.clone(),
                deps_input: None,
                esptool_dir: None,
                penv: input.penv.clone(),
                os: input.os.clone(),
                arch: input.arch.clone(),
            },
            fingerprint_input: input,
            stamps: BTreeMap::from([("pyvenv.cfg".to_owned(), stamp(3_123_456_789))]),
            racy_window_ns: 8_000_000,
            recorded_at_ns: 5,
            host_python: None,
            python_version: "3.11.7".into(),
            marker_env: BTreeMap::from([("sys_platform".into(), "linux".into())]),
            uv_version: Some("uv 0.13.9".into()),
            installed: BTreeMap::from([("rich".into(), "15.0.0".into())]),
            modules: BTreeMap::from([("rich".into(), vec!["rich".into()])]),
            timings_ms: BTreeMap::from([("install".into(), 12.5)]),
            install_timings_ms: BTreeMap::from([("install".into(), 12.5)]),
            facts: BTreeMap::new(),
        }
    }

    #[test]
    fn a_stamp_relative_to_a_stamp_root_is_the_stamp_of_the_joined_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("lib/site")).unwrap();
        fs::write(root.join("lib/site/mod.py"), b"x = 1").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("site/mod.py", root.join("lib/link")).unwrap();
        let stamps = StampRoot::open(root);
        for relative in [
            "lib/site/mod.py",
            "lib/site",
            "lib/link",
            "lib/../lib/site",
            "gone",
            "",
        ] {
            assert_eq!(
                stamps.stamp(relative),
                Stamp::of(&root.join(relative)),
                "{relative:?}"
            );
        }
        assert!(stamps.stamp("lib/link").is_some_and(|s| s.size == 5));
        let missing = StampRoot::open(Path::new("/nonexistent/penv-guard"));
        assert_eq!(missing.stamp("pyvenv.cfg"), None);
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        store(&path, &sample()).unwrap();
        assert_eq!(load(&path), Loaded::Valid(Box::new(sample())));
    }

    #[test]
    fn corrupt_or_foreign_state_is_a_miss_not_an_error() {
        assert!(matches!(parse(b""), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"{\"schema\": 2"), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"[1,2]"), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"{\"schema\": 2}"), Loaded::Corrupt(_)));
        assert_eq!(parse(b"{\"schema\": 99}"), Loaded::UnknownSchema(99));
        assert_eq!(parse(b"{\"schema\": 1}"), Loaded::UnknownSchema(1));
        let full = serde_json::to_vec(&sample()).unwrap();
        assert!(matches!(parse(&full[..full.len() / 2]), Loaded::Corrupt(_)));
    }

    #[test]
    fn fingerprint_depends_on_every_input() {
        let base = sample().fingerprint_input;
        let mut other = base.clone();
        other.deps.push("x".into());
        assert_ne!(base.hash(), other.hash());
        let mut other = base.clone();
        other.python_version = Some("3.12.0".into());
        assert_ne!(base.hash(), other.hash());
        let mut other = base.clone();
        other.penv = "/elsewhere/penv".into();
        assert_ne!(base.hash(), other.hash());
        assert_eq!(base.hash(), base.clone().hash());
        assert_eq!(base.hash().len(), 64);
    }

    #[test]
    fn racy_parts_are_those_changed_within_the_window() {
        let stamps = sample().stamps;
        assert_eq!(
            racy_parts(&stamps, 3_130_000_000, 8_000_000),
            ["pyvenv.cfg"]
        );
        assert!(racy_parts(&stamps, 3_200_000_000, 8_000_000).is_empty());
    }

    #[test]
    fn racy_window_follows_the_filesystems_granularity() {
        let fine: Stamps = [
            ("a", 1_700_000_000_123_456_789),
            ("b", 1_700_000_001_987_654_321),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), stamp(t)))
        .collect();
        let window = racy_window_ns(&fine);
        assert!(
            window < 100_000_000,
            "ns timestamps: a tick-sized window, got {window}"
        );
        let whole_seconds: Stamps = [
            ("a", 1_700_000_000_000_000_000),
            ("b", 1_700_000_002_000_000_000),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), stamp(t)))
        .collect();
        assert_eq!(racy_window_ns(&whole_seconds), COARSE_RACY_WINDOW_NS);
        assert_eq!(racy_window_ns(&Stamps::new()), COARSE_RACY_WINDOW_NS);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_keep_distinct_text() {
        use std::os::unix::ffi::OsStrExt as _;
        let a = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/b\xff/uv"));
        let b = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/b\xfe/uv"));
        assert_eq!(path_text(a), "/tmp/b\\xff/uv");
        assert_ne!(path_text(a), path_text(b));
        assert_ne!(path_text(Path::new("/tmp/b\\xff/uv")), path_text(a));
    }

    proptest! {
        #[test]
        fn arbitrary_state_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn written_state_reads_back_unchanged(version in "[0-9]{1,3}(\\.[0-9]{1,3}){0,3}", ms in 0.0f64..1e6) {
            let mut state = sample();
            state.installed.insert("x".into(), version);
            state.timings_ms.insert("validate".into(), ms);
            let bytes = serde_json::to_vec(&state).unwrap();
            prop_assert_eq!(parse(&bytes), Loaded::Valid(Box::new(state)));
        }
    }
}
