//! Fingerprint, penv stamp and the state file `<penv>/.penv-guard-state.json`.
//!
//! Invariants:
//! - A hit needs all of: a readable state file of the current schema, an equal fingerprint, an
//!   equal stamp (exact equality of inode, size, mtime and ctime in ns; never "newer than"), and a
//!   stamp that was not racy when recorded. Anything else is a miss, with a reason.
//! - Missing, truncated, unparsable or unknown-schema state is a miss, never an error.
//! - The state is deleted before an install starts and written only after validation passed, so
//!   a crash at any point leaves no state, and the next run repairs the penv.
//! - Writes are atomic: a temp file in the same directory, fsync, rename. A crash leaves the old
//!   file or the new one, never a torn one; leftover temp files are swept.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::{self, Follow, ReadError, mtime_ns};

pub const SCHEMA: u32 = 1;

/// A stamp changed less than this long before it was recorded cannot be trusted: another write
/// in the same timestamp tick would leave it unchanged (git's "racy clean" entries).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(path: &Path) -> Option<Stamp> {
        fs::metadata(path).ok().map(|m| Stamp::from_metadata(&m))
    }

    #[cfg(unix)]
    pub fn from_metadata(m: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: mtime_ns(m),
            ctime_ns: fsutil::ctime_ns(m),
        }
    }

    #[cfg(not(unix))]
    pub fn from_metadata(m: &fs::Metadata) -> Stamp {
        Stamp {
            ino: 0,
            size: m.len(),
            mtime_ns: mtime_ns(m),
            ctime_ns: fsutil::ctime_ns(m),
        }
    }

    fn newest_ns(&self) -> i64 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// What must not change behind our back: `pyvenv.cfg`, the interpreter and site-packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PenvStamp {
    pub pyvenv_cfg: Option<Stamp>,
    pub interpreter: Option<Stamp>,
    pub site_packages: Option<Stamp>,
}

impl PenvStamp {
    pub fn capture(pyvenv_cfg: &Path, interpreter: &Path, site_packages: &Path) -> PenvStamp {
        PenvStamp {
            pyvenv_cfg: Stamp::of(pyvenv_cfg),
            interpreter: Stamp::of(interpreter),
            site_packages: Stamp::of(site_packages),
        }
    }

    fn parts(&self) -> [(&'static str, Option<Stamp>); 3] {
        [
            ("pyvenv.cfg", self.pyvenv_cfg),
            ("interpreter", self.interpreter),
            ("site-packages", self.site_packages),
        ]
    }

    /// Names of the parts that differ from `other`.
    pub fn differences(&self, other: &PenvStamp) -> Vec<&'static str> {
        self.parts()
            .into_iter()
            .zip(other.parts())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((name, _), _)| name)
            .collect()
    }

    /// Parts that changed within [`RACY_WINDOW`] before `at_ns`.
    pub fn racy_parts(&self, at_ns: i64) -> Vec<&'static str> {
        let window = i64::try_from(RACY_WINDOW.as_nanos()).unwrap_or(i64::MAX);
        self.parts()
            .into_iter()
            .filter(|(_, stamp)| stamp.is_some_and(|s| s.newest_ns() > at_ns - window))
            .map(|(name, _)| name)
            .collect()
    }
}

/// Everything the fingerprint hashes, in a fixed order (also printed by `fingerprint --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintInput {
    pub schema: u32,
    pub deps: Vec<String>,
    pub python_version: Option<String>,
    pub interpreter: Option<PathBuf>,
    pub uv: Option<UvIdentity>,
    pub os: String,
    pub arch: String,
    pub extra: BTreeMap<String, String>,
}

/// uv's identity without running it: path, size and mtime of the binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UvIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

impl UvIdentity {
    pub fn of(path: &Path) -> Option<UvIdentity> {
        let stamp = Stamp::of(path)?;
        Some(UvIdentity {
            path: path.to_path_buf(),
            size: stamp.size,
            mtime_ns: stamp.mtime_ns,
        })
    }
}

impl FingerprintInput {
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("fingerprint input serializes");
        hex(&Sha256::digest(&canonical))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The host Python the penv was checked against, so a hit needs no `python --version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPython {
    pub path: PathBuf,
    pub stamp: Option<Stamp>,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema: u32,
    pub fingerprint: String,
    pub fingerprint_input: FingerprintInput,
    pub stamp: PenvStamp,
    pub recorded_at_ns: i64,
    pub host_python: Option<HostPython>,
    pub python_version: String,
    pub uv_version: Option<String>,
    /// Normalized name → installed version.
    pub installed: BTreeMap<String, String>,
    /// Normalized name → validated top-level modules.
    pub modules: BTreeMap<String, Vec<String>>,
    /// Phase → milliseconds, of the run that wrote this state (an install or a revalidation).
    pub timings_ms: BTreeMap<String, f64>,
    /// Phase → milliseconds of the last install; a revalidation carries it over.
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

/// Removes the state so that nothing claims the penv is valid while it is being changed.
pub fn invalidate(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove the stale state file", path, e)),
    }
}

pub fn store(path: &Path, state: &State) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    bytes.push(b'\n');
    fsutil::write_atomic(path, &bytes, true).map_err(|e| Error::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> State {
        let input = FingerprintInput {
            schema: SCHEMA,
            deps: vec!["rich>=14".into()],
            python_version: Some("3.11.7".into()),
            interpreter: Some("/usr/bin/python3.11".into()),
            uv: None,
            os: "linux".into(),
            arch: "x86_64".into(),
            extra: BTreeMap::new(),
        };
        State {
            schema: SCHEMA,
            fingerprint: input.hash(),
            fingerprint_input: input,
            stamp: PenvStamp {
                pyvenv_cfg: Some(Stamp {
                    ino: 1,
                    size: 2,
                    mtime_ns: 3,
                    ctime_ns: 4,
                }),
                interpreter: None,
                site_packages: None,
            },
            recorded_at_ns: 5,
            host_python: None,
            python_version: "3.11.7".into(),
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
        assert!(matches!(parse(b"{\"schema\": 1"), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"[1,2]"), Loaded::Corrupt(_)));
        assert!(matches!(parse(b"{\"schema\": 1}"), Loaded::Corrupt(_)));
        assert_eq!(parse(b"{\"schema\": 99}"), Loaded::UnknownSchema(99));
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
        assert_eq!(base.hash(), base.clone().hash());
        assert_eq!(base.hash().len(), 64);
    }

    #[test]
    fn racy_parts_are_those_changed_within_the_window() {
        let stamp = sample().stamp;
        assert!(stamp.racy_parts(3).contains(&"pyvenv.cfg"));
        assert!(stamp.racy_parts(10_000_000_000).is_empty());
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
