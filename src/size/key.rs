//! The freshness key, the racy rule, and the decision "walk or serve the cache" ([`refresh`]).
//!
//! Invariants:
//! - **The key is compared with `==` only, never "newer than".** An env's key is the
//!   (kind, len, mtime in ns) stamp of the env directory itself and of each direct child, from one
//!   `read_dir` and one `lstat` per child, sorted by name. SCons replaces `.sconsign*.dblite`
//!   (tmp + rename) at the end of every build run of the env, including no-op and failed runs, so
//!   every build moves the key, and so does clean (the directory disappears). An mtime set
//!   backwards (a restored backup, `touch -d`) is a change too. The cache stores the key's
//!   SHA-256 ([`EnvKey::digest`]): the cached path reads one short string, not every stamp.
//! - **The key is captured before and again after the walk.** If the two differ, the result is
//!   reported but not trusted (`changed_during_walk`), so the next call walks again.
//! - **Racy rule (git's "racy clean").** If any stamp is younger than [`RACY_WINDOW`] (2 s, which
//!   also covers FAT's 2 s mtimes) when the key is captured, a second write in the same timestamp
//!   tick could leave the key unchanged. Such a result is stored with `racy: true`, and the next
//!   call walks again.
//! - **A partial walk is never trusted.** An entry that vanished mid-walk or could not be read
//!   makes the result `partial`: reported, stored, but never served as fresh.
//! - **Missing is its own key.** A missing env directory has the key `None`. It is never walked.
//!   A cached size is cleared to 0 once, then the missing state is a hit with no writes; an env
//!   that never existed is never written at all.
//! - **Known miss.** A change at depth ≥ 2 that moves nothing at depth 0 or 1 is not seen until
//!   the next build or `--refresh`. Examples: a file two levels down rewritten in place, or one
//!   created or deleted inside `src/sub/`. PlatformIO never does this on its own: every build
//!   replaces the sconsign.
//! - A hit costs one `realpath` of the env dir, one `stat` of it, one `read_dir` and one `lstat`
//!   per direct child; nothing below depth 1 is touched.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::Entry;
use super::walk::{Walked, walk_tree};
use crate::fsutil;
use crate::stamp::RACY_WINDOW;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
    /// The `lstat` failed: the entry vanished or is unreadable.
    Error,
}

/// One entry's stamp. Compared with `==` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub kind: Kind,
    pub len: u64,
    pub mtime_ns: i64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        let t = meta.file_type();
        let kind = if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Stamp {
            kind,
            len: meta.len(),
            mtime_ns: fsutil::mtime_ns(meta),
        }
    }

    fn error() -> Stamp {
        Stamp {
            kind: Kind::Error,
            len: 0,
            mtime_ns: 0,
        }
    }
}

/// A direct child of the env dir: its name (see [`encode_os`]) and stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildStamp {
    pub name: String,
    pub kind: Kind,
    pub len: u64,
    pub mtime_ns: i64,
}

/// The freshness key of an existing env dir (a missing one has the key `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvKey {
    pub dir: Stamp,
    pub children: Vec<ChildStamp>,
}

impl EnvKey {
    /// What the cache stores: a SHA-256 of every stamp, in order (equal digests, equal keys).
    pub fn digest(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        let mut stamp = |name: &str, kind: Kind, len: u64, mtime_ns: i64| {
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update([kind as u8]);
            hasher.update(len.to_le_bytes());
            hasher.update(mtime_ns.to_le_bytes());
        };
        stamp("", self.dir.kind, self.dir.len, self.dir.mtime_ns);
        for child in &self.children {
            stamp(&child.name, child.kind, child.len, child.mtime_ns);
        }
        hex::encode(hasher.finalize())
    }

    fn newest_mtime_ns(&self) -> i64 {
        self.children
            .iter()
            .map(|c| c.mtime_ns)
            .fold(self.dir.mtime_ns, i64::max)
    }

    /// Whether a stamp changed within [`RACY_WINDOW`] before `at_ns` (or after it).
    pub fn is_racy(&self, at_ns: i64) -> bool {
        let window = i64::try_from(RACY_WINDOW.as_nanos()).unwrap_or(i64::MAX);
        crate::stamp::is_racy(self.newest_mtime_ns(), at_ns, window)
    }
}

/// The key of `dir` as it is now: `None` when it does not exist. The root is followed if it is
/// a symlink; its children are not.
pub fn capture_key(dir: &Path) -> Option<EnvKey> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => {
            return Some(EnvKey {
                dir: Stamp::error(),
                children: Vec::new(),
            });
        }
    };
    let mut key = EnvKey {
        dir: Stamp::of(&meta),
        children: Vec::new(),
    };
    if !meta.is_dir() {
        return Some(key);
    }
    let Ok(entries) = fs::read_dir(dir) else {
        key.dir.kind = Kind::Error;
        return Some(key);
    };
    let mut children: Vec<(OsString, Stamp)> = entries
        .map(|entry| match entry {
            Ok(entry) => {
                let stamp = entry
                    .metadata()
                    .map_or_else(|_| Stamp::error(), |m| Stamp::of(&m));
                (entry.file_name(), stamp)
            }
            Err(_) => (OsString::new(), Stamp::error()),
        })
        .collect();
    children.sort_by(|a, b| a.0.cmp(&b.0));
    key.children = children
        .into_iter()
        .map(|(name, stamp)| ChildStamp {
            name: encode_os(&name),
            kind: stamp.kind,
            len: stamp.len,
            mtime_ns: stamp.mtime_ns,
        })
        .collect();
    Some(key)
}

/// A name or path as a JSON string: itself when it is UTF-8, else `"\0hex:"` and its bytes in
/// hex (a NUL never occurs in a Unix name, so the two forms cannot collide).
pub fn encode_os(s: &OsStr) -> String {
    if let Some(s) = s.to_str() {
        return s.to_owned();
    }
    format!("\0hex:{}", hex::encode(s.as_encoded_bytes()))
}

/// An [`encode_os`] string back to something printable (lossy).
pub fn display_encoded(encoded: &str) -> String {
    // A damaged encoding is shown as it is, never silently shortened.
    match encoded.strip_prefix("\0hex:").map(hex::decode) {
        Some(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => encoded.to_owned(),
    }
}

/// `env_dir` resolved once: the real path if it exists (a symlinked build dir is followed),
/// else the path itself.
pub fn resolve_env_dir(env_dir: &Path) -> PathBuf {
    crate::os::path::canonical(env_dir).unwrap_or_else(|_| env_dir.to_path_buf())
}

/// Whether `cached` is still right for `env_dir`, without walking.
pub fn is_fresh(env_dir: &Path, cached: &Entry) -> bool {
    let resolved = resolve_env_dir(env_dir);
    cached.path == encode_os(resolved.as_os_str())
        && cached.trusted()
        && cached.key == capture_key(&resolved).as_ref().map(EnvKey::digest)
}

/// The size of `env_dir`, walked only when `cached` is not right for it any more.
/// - `None`: `cached` is still right, or the dir is missing and nothing was ever cached.
///   Nothing to store.
/// - `Some(entry)`: store it. Its `key` is `None` when the dir is missing (no walk, size 0);
///   otherwise the dir was walked.
///
/// `force` walks even on a hit (`--refresh`). Persistence is the caller's.
pub fn refresh(env_dir: &Path, cached: Option<&Entry>, force: bool) -> Option<Entry> {
    refresh_with(env_dir, cached, force, fsutil::now_ns(), &mut walk_tree)
}

/// [`refresh`] with the clock reading and the walker injected (the tests count walks).
pub fn refresh_with(
    env_dir: &Path,
    cached: Option<&Entry>,
    force: bool,
    now_ns: i64,
    walker: &mut dyn FnMut(&Path) -> Walked,
) -> Option<Entry> {
    let resolved = resolve_env_dir(env_dir);
    let path = encode_os(resolved.as_os_str());
    let before = capture_key(&resolved);
    let digest = before.as_ref().map(EnvKey::digest);
    let same = cached.is_some_and(|c| c.path == path && c.key == digest && c.trusted());
    let Some(key) = before else {
        // Missing: never walked, cleared to 0 once.
        return match cached {
            Some(_) if same => None,
            Some(_) => Some(Entry::cleared(path, now_ns)),
            None => None,
        };
    };
    if same && !force {
        return None;
    }
    let racy = key.is_racy(now_ns);
    let result = walker(&resolved);
    let after = capture_key(&resolved);
    Some(Entry {
        path,
        changed_during_walk: after.as_ref() != Some(&key),
        key: digest,
        totals: result.totals,
        racy,
        walked_at_ns: now_ns,
        linked: result.links.len() as u64,
        links: result.links,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::{Duration, SystemTime};

    /// A clock reading an hour ahead: nothing just written counts as racy.
    fn later() -> i64 {
        fsutil::now_ns() + 3_600_000_000_000
    }

    fn counting(walks: &Cell<u32>) -> impl FnMut(&Path) -> Walked + '_ {
        move |p: &Path| {
            walks.set(walks.get() + 1);
            walk_tree(p)
        }
    }

    pub(crate) fn env_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join(".pio/build/esp32dev");
        fs::create_dir_all(env.join("src")).unwrap();
        fs::write(env.join(".sconsign311.dblite"), b"db").unwrap();
        fs::write(env.join("firmware.elf"), vec![1u8; 5000]).unwrap();
        fs::write(env.join("src/main.o"), vec![2u8; 300]).unwrap();
        (tmp, env)
    }

    pub(crate) fn set_mtime(path: &Path, t: SystemTime) {
        crate::os::fs::set_modified(path, t).unwrap();
    }

    #[test]
    fn missing_dir_with_no_cache_is_never_walked_nor_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let walks = Cell::new(0);
        let mut walker = counting(&walks);
        for _ in 0..3 {
            let r = refresh_with(&tmp.path().join("nope"), None, false, later(), &mut walker);
            assert_eq!(r, None);
        }
        assert_eq!(walks.get(), 0);
    }

    #[test]
    fn walked_once_then_hits_without_walking() {
        let (_tmp, env) = env_dir();
        let walks = Cell::new(0);
        let mut walker = counting(&walks);
        let entry = refresh_with(&env, None, false, later(), &mut walker).unwrap();
        assert_eq!(walks.get(), 1);
        assert_eq!(entry.totals.apparent, 5302);
        assert_eq!(entry.totals.files, 3);
        assert_eq!(entry.totals.dirs, 2);
        assert!(entry.trusted());
        for _ in 0..5 {
            assert_eq!(
                refresh_with(&env, Some(&entry), false, later(), &mut walker),
                None
            );
        }
        assert_eq!(walks.get(), 1, "hits do not walk");
        assert!(is_fresh(&env, &entry));
        // --refresh walks anyway.
        assert!(refresh_with(&env, Some(&entry), true, later(), &mut walker).is_some());
        assert_eq!(walks.get(), 2);
    }

    #[test]
    fn a_racy_result_is_walked_again_until_it_settles() {
        let (_tmp, env) = env_dir();
        let walks = Cell::new(0);
        let mut walker = counting(&walks);
        let now = fsutil::now_ns();
        let entry = refresh_with(&env, None, false, now, &mut walker).unwrap();
        assert!(entry.racy, "files written just now are racy");
        let again = refresh_with(&env, Some(&entry), false, now, &mut walker).unwrap();
        assert_eq!(walks.get(), 2);
        assert_eq!(again.key, entry.key);
        // Three seconds later the same stamps are no longer racy: one more walk, then hits.
        let later = now + 3_000_000_000;
        let settled = refresh_with(&env, Some(&again), false, later, &mut walker).unwrap();
        assert!(!settled.racy);
        assert_eq!(
            refresh_with(&env, Some(&settled), false, later, &mut walker),
            None
        );
        assert_eq!(walks.get(), 3);
    }

    #[test]
    fn a_future_mtime_is_racy() {
        let (_tmp, env) = env_dir();
        set_mtime(
            &env.join("firmware.elf"),
            SystemTime::now() + Duration::from_secs(600),
        );
        let key = capture_key(&env).unwrap();
        assert!(key.is_racy(fsutil::now_ns()));
    }

    #[test]
    fn a_partial_walk_is_never_served_from_the_cache() {
        let (_tmp, env) = env_dir();
        let walks = Cell::new(0);
        let mut partial = |p: &Path| {
            walks.set(walks.get() + 1);
            let mut w = walk_tree(p);
            w.totals.vanished = 1;
            w
        };
        let entry = refresh_with(&env, None, false, later(), &mut partial).unwrap();
        assert!(entry.partial() && !entry.trusted());
        let again = refresh_with(&env, Some(&entry), false, later(), &mut partial);
        assert!(again.is_some());
        assert_eq!(walks.get(), 2);
        let mut errors = |p: &Path| {
            let mut w = walk_tree(p);
            w.totals.errors = 2;
            w
        };
        let entry = refresh_with(&env, None, false, later(), &mut errors).unwrap();
        assert!(!entry.trusted());
    }

    #[test]
    fn a_write_during_the_walk_is_not_stored_as_fresh() {
        let (_tmp, env) = env_dir();
        let writer_env = env.clone();
        let mut meddling = move |p: &Path| {
            let w = walk_tree(p);
            fs::write(writer_env.join("late.o"), b"x").unwrap();
            w
        };
        let entry = refresh_with(&env, None, false, later(), &mut meddling).unwrap();
        assert!(entry.changed_during_walk && !entry.trusted());
        let walks = Cell::new(0);
        let mut walker = counting(&walks);
        let next = refresh_with(&env, Some(&entry), false, later(), &mut walker).unwrap();
        assert_eq!(walks.get(), 1);
        assert_eq!(next.totals.files, 4);
        assert!(next.trusted());
    }

    #[test]
    fn a_removed_dir_is_cleared_once_then_hits() {
        let (_tmp, env) = env_dir();
        let walks = Cell::new(0);
        let mut walker = counting(&walks);
        let entry = refresh_with(&env, None, false, later(), &mut walker).unwrap();
        fs::remove_dir_all(&env).unwrap();
        let cleared = refresh_with(&env, Some(&entry), false, later(), &mut walker).unwrap();
        assert_eq!((cleared.key.as_ref(), cleared.totals.apparent), (None, 0));
        for force in [false, true] {
            assert_eq!(
                refresh_with(&env, Some(&cleared), force, later(), &mut walker),
                None
            );
        }
        assert_eq!(walks.get(), 1);
    }

    #[test]
    fn key_moves_on_sconsign_replace_and_same_length_rewrite_but_not_at_depth_two() {
        let (_tmp, env) = env_dir();
        fs::create_dir_all(env.join("src/sub")).unwrap();
        fs::write(env.join("idedata.json"), b"{\"a\": 1}").unwrap();
        fs::write(env.join("src/sub/deep.o"), b"deep").unwrap();
        let k0 = capture_key(&env).unwrap();
        assert_eq!(
            capture_key(&env).unwrap(),
            k0,
            "stable when nothing changes"
        );
        let names: Vec<&str> = k0.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [".sconsign311.dblite", "firmware.elf", "idedata.json", "src"]
        );

        // Same length, in place: only the ns mtime moves.
        std::thread::sleep(Duration::from_millis(5));
        fs::write(env.join("idedata.json"), b"{\"a\": 2}").unwrap();
        let k1 = capture_key(&env).unwrap();
        assert_ne!(k1, k0);

        // tmp + rename of the sconsign.
        std::thread::sleep(Duration::from_millis(5));
        fs::write(env.join(".sconsign311.tmp"), b"db").unwrap();
        fs::rename(
            env.join(".sconsign311.tmp"),
            env.join(".sconsign311.dblite"),
        )
        .unwrap();
        let k2 = capture_key(&env).unwrap();
        assert_ne!(k2, k1);

        // Depth 2, in place: the known miss.
        fs::write(env.join("src/sub/deep.o"), b"DEEP, and longer").unwrap();
        assert_eq!(capture_key(&env).unwrap(), k2);

        // A backwards mtime is a change too.
        set_mtime(
            &env.join("firmware.elf"),
            SystemTime::now() - Duration::from_secs(86_400),
        );
        assert_ne!(capture_key(&env).unwrap(), k2);
    }

    #[test]
    fn non_utf8_names_are_encoded_in_the_key_and_decoded_for_display() {
        // A name that is not Unicode exists only on Linux here (Windows names are UTF-16, and
        // APFS refuses names that are not UTF-8).
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::ffi::OsStrExt;
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join(OsStr::from_bytes(b"caf\xe9.o")), b"12345").unwrap();
            let key = capture_key(tmp.path()).unwrap();
            assert!(key.children.iter().any(|c| c.name == "\0hex:636166e92e6f"));
        }
        assert_eq!(encode_os(OsStr::new("caf\u{e9}.o")), "caf\u{e9}.o");
        assert_eq!(display_encoded("\0hex:636166e92e6f"), "caf\u{fffd}.o");
        assert_eq!(display_encoded("plain"), "plain");
    }
}
