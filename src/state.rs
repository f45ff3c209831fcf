//! The state file `<penv>/.penv-guard-state.json`: what the last validated install proved, and
//! the stamps a hit compares.
//!
//! Invariants:
//! - A hit needs all of: a readable state file of the current schema, the same request (the
//!   dependency list, by the digest of its input bytes or else by its canonical form; the
//!   `--esptool-dir`, the penv's place, OS and architecture), the same host Python (the same
//!   file, however spelled, by its stamp) when `--python` names one, equal stamps (exact
//!   equality of device, inode, size, mtime and ctime in ns; on Windows of volume, file index,
//!   size and mtime; never "newer than") of every recorded part, and no part changed within the
//!   racy window before the state was recorded. Anything else is a miss, with a reason.
//! - Missing, truncated, unparsable, special (FIFO, directory, symlink) or unknown-schema state is
//!   a miss, never an error or a hang.
//! - The state is deleted before an install starts and written only after validation passed, so
//!   a crash at any point leaves no state, and the next run repairs the penv.
//! - Writes are atomic (temp file, fsync, rename); leftover temp files are swept.
//! - uv is not part of what a hit compares: which uv installed the packages does not change
//!   whether they satisfy the list.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::{self, Follow, ReadError};
use crate::stamp::Stamp;

/// The state file's format. 4: stamps as `[dev, ino, size, mtime_ns, ctime_ns]` arrays (3 had
/// no `dev`, and Windows no file identity), the file compact (a hit reads it all); a state of
/// another schema is a miss.
pub const SCHEMA: u32 = 4;

/// The fingerprint input's format, which a changed state format need not change (the
/// fingerprint is a CI cache key).
pub const FINGERPRINT_SCHEMA: u32 = 2;

/// A path as text for the state, the fingerprint and reports: as the OS spells it, losslessly
/// ([`crate::os::path::text`]).
pub fn path_text(path: &Path) -> String {
    crate::os::path::text(path)
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

/// The state's types are generic over how they hold their strings, `T`: `String` ([`State`]:
/// built by an install, loaded by a miss and by `status`) or [`Text`] borrowed from the file's
/// bytes ([`Recorded`]: what a hit reads, without allocating its strings). One definition, so
/// both accept exactly the same files.
pub trait StateText: AsRef<str> + Ord + std::borrow::Borrow<str> + Serialize {}

impl StateText for String {}
impl StateText for Text<'_> {}

/// The CI cache key's inputs: the same on every machine with the same dependency list, Python
/// version and OS, and the same core dir path. Nothing machine-local (no uv, no inode, no time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintInputOf<T> {
    pub schema: u32,
    pub deps: Vec<T>,
    pub python_version: Option<T>,
    /// Real path of the penv's base interpreter.
    pub interpreter: Option<T>,
    /// Real path of the penv.
    pub penv: T,
    pub esptool_dir: Option<T>,
    pub os: T,
    pub arch: T,
}

pub type FingerprintInput = FingerprintInputOf<String>;

impl FingerprintInput {
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&canonical))
    }
}

/// What was asked for, compared field by field on the hot path (no hashing of files needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOf<T> {
    pub deps: Vec<T>,
    /// The digest of the dependency list as given ([`crate::dep_input::DepInput::digest`]):
    /// when it is unchanged, a hit does not parse the list again. Absent for a list from `-r`
    /// files or with a URL (parsing expands `${VAR}` and relative paths in it).
    #[serde(default = "Option::default")]
    pub deps_input: Option<T>,
    pub esptool_dir: Option<T>,
    /// The penv path as given (absolute, not resolved); a different spelling is resolved once.
    pub penv: T,
    pub os: T,
    pub arch: T,
}

pub type Request = RequestOf<String>;

/// The host Python the penv was checked against (only with an explicit `--python`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPythonOf<T> {
    pub path: T,
    pub stamp: Option<Stamp>,
    pub version: T,
}

pub type HostPython = HostPythonOf<String>;

impl<T> HostPythonOf<T> {
    /// Whether `path` names the recorded interpreter: the same file however it is spelled
    /// (another case, a symlink, `..`), by its stamp, which holds the file's identity (device and
    /// inode, or volume and file index), and unchanged since.
    pub fn is_at(&self, path: &Path) -> bool {
        self.stamp.is_some() && self.stamp == Stamp::of(path)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + Ord"))]
pub struct StateOf<T> {
    pub schema: u32,
    pub fingerprint: T,
    pub fingerprint_input: FingerprintInputOf<T>,
    pub request: RequestOf<T>,
    pub stamps: BTreeMap<T, Option<Stamp>>,
    pub racy_window_ns: i64,
    pub recorded_at_ns: i64,
    pub host_python: Option<HostPythonOf<T>>,
    pub python_version: T,
    /// The penv interpreter's own PEP 508 marker values; markers are evaluated with these.
    pub marker_env: BTreeMap<T, T>,
    pub uv_version: Option<T>,
    /// Normalized name → installed version, for every requirement that applies.
    pub installed: BTreeMap<T, T>,
    /// Normalized name → validated top-level modules.
    pub modules: BTreeMap<T, Vec<T>>,
    /// Phase → milliseconds, of the run that wrote this state (an install or a re-check).
    pub timings_ms: BTreeMap<T, f64>,
    /// Phase → milliseconds of the last install; a re-check carries it over.
    #[serde(default = "BTreeMap::new")]
    pub install_timings_ms: BTreeMap<T, f64>,
    #[serde(default = "BTreeMap::new")]
    pub facts: BTreeMap<T, T>,
}

pub type State = StateOf<String>;

/// A state as a hit reads it: its strings borrowed from the file's bytes.
pub type Recorded<'a> = StateOf<Text<'a>>;

/// A string of the state file: borrowed from its bytes unless it holds an escape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
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

/// The state file as read: its bytes, or why there are none.
pub enum StateFile {
    Missing,
    Unreadable(String),
    Read(Vec<u8>),
}

/// Reads the state file as penv-guard's own file: no symlink followed, nothing but a regular
/// file read, at most [`fsutil::OWN_FILE_CAP`] bytes. Anything else is a miss.
pub fn read(path: &Path) -> StateFile {
    match fsutil::read_capped(path, fsutil::OWN_FILE_CAP, Follow::Never) {
        Ok(bytes) => StateFile::Read(bytes),
        Err(ReadError::Missing) => StateFile::Missing,
        Err(e) => StateFile::Unreadable(e.to_string()),
    }
}

impl StateFile {
    /// What a hit reads, straight from the bytes; `None` when they are not this schema's state
    /// ([`StateFile::load`] says why).
    pub fn recorded(&self) -> Option<Recorded<'_>> {
        let StateFile::Read(bytes) = self else {
            return None;
        };
        // Checked as UTF-8 once, not string by string.
        let text = std::str::from_utf8(bytes).ok()?;
        serde_json::from_str::<Recorded>(text)
            .ok()
            .filter(|recorded| recorded.schema == SCHEMA)
    }

    /// The whole state.
    pub fn load(&self) -> Loaded {
        match self {
            StateFile::Missing => Loaded::Missing,
            StateFile::Unreadable(why) => Loaded::Corrupt(why.clone()),
            StateFile::Read(bytes) => parse(bytes),
        }
    }
}

pub fn load(path: &Path) -> Loaded {
    read(path).load()
}

pub fn parse(bytes: &[u8]) -> Loaded {
    // One pass straight into `State`, as a hit reads `Recorded`: the same derive, so both accept
    // the same files. Only a file that fails is read a second time, to say why; that reading
    // never accepts it (a `Value` would take the last of two equal keys, which serde refuses).
    let error = match serde_json::from_slice::<State>(bytes) {
        Ok(state) if state.schema == SCHEMA => return Loaded::Valid(Box::new(state)),
        Ok(state) => return Loaded::UnknownSchema(u64::from(state.schema)),
        Err(e) => e,
    };
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return Loaded::Corrupt(format!("not valid JSON: {e}")),
    };
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(schema) if schema == u64::from(SCHEMA) => {
            Loaded::Corrupt(format!("unexpected content: {error}"))
        }
        Some(schema) => Loaded::UnknownSchema(schema),
        None => Loaded::Corrupt("no schema number".to_owned()),
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
        return match crate::os::fs::remove_file(path) {
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
    let mut bytes = serde_json::to_vec(state).map_err(|e| {
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
    use crate::stamp::tests::stamp;
    use proptest::prelude::*;

    fn sample() -> State {
        let input = FingerprintInput {
            schema: FINGERPRINT_SCHEMA,
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
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        store(&path, &sample()).unwrap();
        assert_eq!(load(&path), Loaded::Valid(Box::new(sample())));
    }

    #[test]
    fn corrupt_or_foreign_state_is_a_miss_not_an_error() {
        assert!(matches!(parse(b""), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"{\"schema\": 4"), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"[1,2]"), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"{\"schema\": 4}"), Loaded::Corrupt(_)));
        assert_eq!(parse(b"{\"schema\": 99}"), Loaded::UnknownSchema(99));
        assert_eq!(parse(b"{\"schema\": 3}"), Loaded::UnknownSchema(3));
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
    fn a_host_python_is_the_same_file_however_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let python = dir.path().join("python.exe");
        fs::write(&python, b"interpreter").unwrap();
        let recorded = HostPython {
            path: path_text(&python),
            stamp: Stamp::of(&python),
            version: "3.11.7".into(),
        };
        assert!(recorded.is_at(&python));
        // Another spelling: `.` and `..` in it (and on Windows another case).
        let spelled = dir
            .path()
            .join(".")
            .join("sub")
            .join("..")
            .join("python.exe");
        fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(recorded.is_at(&spelled));
        #[cfg(windows)]
        assert!(recorded.is_at(&dir.path().join("PYTHON.EXE")));
        let other = dir.path().join("python3.exe");
        fs::write(&other, b"interpreter").unwrap();
        assert!(!recorded.is_at(&other));
        assert!(!recorded.is_at(&dir.path().join("gone.exe")));
    }

    fn json(state: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(state).unwrap()
    }

    #[test]
    fn a_hit_reads_the_file_as_the_state_it_was_written_from_with_its_strings_borrowed() {
        let mut state = sample();
        state
            .facts
            .insert("certifi_bundle".into(), "/p/cacert.pem".into());
        state.request.esptool_dir = Some("C:\\esptool \"dir\"".into());
        let file = StateFile::Read(serde_json::to_vec_pretty(&state).unwrap());
        let recorded = file.recorded().unwrap();
        assert_eq!(json(&recorded), json(&state));
        assert!(matches!(recorded.request.penv.0, Cow::Borrowed(_)));
        assert!(matches!(recorded.fingerprint.0, Cow::Borrowed(_)));
        let esptool_dir = recorded.request.esptool_dir.as_ref().unwrap();
        assert_eq!(esptool_dir.as_ref(), "C:\\esptool \"dir\"");
        assert!(
            matches!(esptool_dir.0, Cow::Owned(_)),
            "an escape is unescaped"
        );
    }

    #[test]
    fn a_state_with_a_field_twice_is_corrupt_on_both_readings() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value.as_object_mut().unwrap().remove("uv_version");
        let text = value.to_string();
        let twice = text.replacen('{', "{\"uv_version\":\"a\",\"uv_version\":\"b\",", 1);
        let file = StateFile::Read(twice.into_bytes());
        assert!(file.recorded().is_none());
        assert!(matches!(file.load(), Loaded::Corrupt(why) if why.contains("duplicate")));
    }

    #[test]
    fn a_state_of_another_schema_or_missing_a_field_is_no_hit() {
        let mut state = sample();
        state.schema = SCHEMA + 1;
        let bytes = serde_json::to_vec(&state).unwrap();
        assert_eq!(StateFile::Read(bytes).recorded(), None);
        for field in ["installed", "marker_env", "timings_ms", "stamps", "request"] {
            let mut value = serde_json::to_value(sample()).unwrap();
            value.as_object_mut().unwrap().remove(field);
            let file = StateFile::Read(serde_json::to_vec(&value).unwrap());
            assert_eq!(file.recorded(), None, "{field}");
            assert!(matches!(file.load(), Loaded::Corrupt(_)), "{field}");
        }
        assert_eq!(StateFile::Missing.recorded(), None);
    }

    proptest! {
        #[test]
        fn arbitrary_state_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn written_state_reads_back_unchanged(version in "[0-9]{1,3}(\\.[0-9]{1,3}){0,3}", ms in 0.0f64..1e6, text in any::<String>()) {
            let mut state = sample();
            state.installed.insert("x".into(), version);
            state.stamps.insert(text.clone(), None);
            state.request.penv.clone_from(&text);
            state.timings_ms.insert("validate".into(), ms);
            let bytes = serde_json::to_vec(&state).unwrap();
            let file = StateFile::Read(bytes.clone());
            prop_assert_eq!(file.recorded().map(|r| json(&r)), Some(json(&state)));
            prop_assert_eq!(parse(&bytes), Loaded::Valid(Box::new(state)));
        }
    }
}
