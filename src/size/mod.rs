//! `penv-guard size`: the size of each PlatformIO environment's build directory
//! (`<build_dir>/<env>`), walked only when a cheap freshness key says it may have changed.
//!
//! Invariants:
//! - **The key is compared with `==` only, never "newer than".** An env's key is the
//!   (kind, len, mtime in ns) stamp of the env directory itself and of each direct child, from one
//!   `read_dir` and one `lstat` per child, sorted by name. SCons replaces `.sconsign*.dblite`
//!   (tmp + rename) at the end of every build run of the env, including no-op and failed runs, so
//!   every build moves the key, and so does clean (the directory disappears). An mtime set
//!   backwards (a restored backup, `touch -d`) is a change too.
//! - **The key is captured before and again after the walk.** If the two differ, the result is
//!   reported but not stored as fresh (`changed_during_walk`), so the next call walks again.
//! - **Racy rule (git's "racy clean").** If any stamp is younger than [`RACY_WINDOW`] (2 s, which
//!   also covers FAT's 2 s mtimes) when the key is captured, a second write in the same timestamp
//!   tick could leave the key unchanged. Such a result is stored with `racy: true`, and the next
//!   call walks again.
//! - **A partial walk is never stored as fresh.** An entry that vanished mid-walk (`ENOENT`,
//!   `vanished`) or could not be read (`EACCES` and the rest, `errors`) makes the result
//!   `partial`. It is reported but never served from the cache.
//! - **Missing is its own key.** A missing env directory has the key `None`. It is never walked.
//!   A cached size is cleared to 0 once, then the missing state is a hit with no writes; an env
//!   that never existed is never written at all.
//! - **Known miss.** A change at depth ≥ 2 that moves nothing at depth 0 or 1 is not seen until
//!   the next build or `--refresh`. Examples: a file two levels down rewritten in place, or one
//!   created or deleted inside `src/sub/`. PlatformIO never does this on its own: every build
//!   replaces the sconsign.
//! - **The cache lives outside the build dir**, at `<workspace_dir>/.penv-guard/build-size.json`.
//!   PlatformIO rmtree's `<build_dir>` after any `platformio.ini` edit, and a file inside an env
//!   dir would move the key it measures. If the cache path would fall inside an env directory,
//!   it is not written. So penv-guard's own writes never change any env's key.
//! - **Bookkeeping never blocks and never fails the command.** Writes are atomic
//!   ([`fsutil::write_atomic`]: a lost cache is only a miss). They are made under a non-blocking `try_lock` of
//!   `build-size.lock`, which is never deleted and never written. If another process holds the
//!   lock, or the write fails, the sizes are printed but not stored. A cache or cache entry that
//!   is unreadable, unparsable, wrongly typed or of an unknown schema is a miss (recomputed and
//!   rewritten), never an error.
//!
//! What is counted by the walk ([`walk`]):
//! - **apparent** = Σ `len` of regular files.
//! - **allocated** = Σ `st_blocks × 512` of regular files and directories, the root included.
//!   This equals `du -s --block-size=1` on trees without symlinks.
//! - Hard links (`nlink > 1`) are counted once per walk, through a `(dev, ino)` set. Each env also
//!   records its linked inodes, so the project total counts them once across envs as well.
//! - Symlinks are never followed, except the root, which is resolved once (a build dir may be a
//!   symlink to a RAM disk). Symlinks and special files are `skipped`. Names are `OsStr`, so
//!   non-UTF-8 names are counted.
//! - Everything is sequential `std::fs::read_dir`, with `DirEntry::file_type()` (no syscall on
//!   ext4) and `DirEntry::metadata()` (an `lstat`).
//!
//! Environments:
//! - From `platformio.ini`: each `[env:NAME]` section, at `<build_dir>/NAME`.
//! - Directories and files in `<build_dir>` that match no env are listed as orphans, except
//!   `project.checksum` and penv-guard's own `.penv-guard`.
//! - ESPHome layout: each `<project>/.esphome/build/<name>/` that holds
//!   `.pioenvs/<name>/` or a `platformio.ini` is an env named `<name>`, at
//!   `.esphome/build/<name>/.pioenvs/<name>`. On a name clash with an ini env it is named
//!   `esphome:<name>`.
//! - A project with no `platformio.ini` but with an ESPHome build dir (an ESPHome config
//!   directory) keeps its cache in `<project>/.esphome/.penv-guard/`, unless
//!   `PLATFORMIO_WORKSPACE_DIR` is set.
//!
//! `size --json` prints one line, a document of this shape:
//! ```text
//! { "project_dir": str, "ini": str|null, "build_dir": str,
//!   "build_dir_source": "env" (PLATFORMIO_BUILD_DIR) | "ini" ([platformio] build_dir) | "default",
//!   "workspace_dir": str, "cache_path": str, "cache_written": bool,
//!   "envs": [ { "name": str, "layout": "platformio"|"esphome", "path": str, "exists": bool,
//!               "apparent_bytes": u64, "allocated_bytes": u64, "files": u64, "dirs": u64,
//!               "skipped": u64, "vanished": u64, "errors": u64, "partial": bool, "racy": bool,
//!               "changed_during_walk": bool, "walked": bool (walked by this call),
//!               "state": "fresh" (cache hit) | "walked" | "partial" | "missing",
//!               "walked_at": unix seconds (f64) | null, "age_seconds": f64 | null } ],
//!   "orphans": [ { "name": str, "path": str } ],
//!   "total_apparent_bytes": u64, "total_allocated_bytes": u64 }
//! ```
//! `dirs` includes the env directory itself. The totals cover the listed envs, with hard links
//! shared between envs counted once. [`cached_report`] returns the same shape from the cache
//! alone: `walked` is always false and `cache_written` false. There, `state` is `fresh` (the key
//! still matches), `stale` (the next `size` walks), `missing`, or `unsized` (never sized: the
//! sizes are null).

// Product names (PlatformIO, SCons, ESPHome) are prose here, not code.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::SizeArgs;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::state::RACY_WINDOW;

/// Schema number of `build-size.json`; any other number is a miss.
pub const CACHE_SCHEMA: u64 = 1;
const CACHE_DIR: &str = ".penv-guard";
const CACHE_FILE: &str = "build-size.json";
const LOCK_FILE: &str = "build-size.lock";
const CHECKSUM_FILE: &str = "project.checksum";

// ---------------------------------------------------------------------------------------------
// The walk

/// What a walk counted. `partial()` when anything vanished or failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalkTotals {
    /// Σ `len` of regular files (hard links once).
    pub apparent: u64,
    /// Σ `st_blocks × 512` of regular files and directories (hard links once), as `du -s`.
    pub allocated: u64,
    /// Regular files (hard links once).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symlinks and special files: not followed, not counted.
    pub skipped: u64,
    /// Entries listed but gone before they could be read (`ENOENT`).
    pub vanished: u64,
    /// Entries that could not be read for another reason (`EACCES`, ...).
    pub errors: u64,
}

impl std::ops::AddAssign for WalkTotals {
    fn add_assign(&mut self, other: WalkTotals) {
        self.apparent += other.apparent;
        self.allocated += other.allocated;
        self.files += other.files;
        self.dirs += other.dirs;
        self.skipped += other.skipped;
        self.vanished += other.vanished;
        self.errors += other.errors;
    }
}

impl WalkTotals {
    pub fn partial(&self) -> bool {
        self.vanished > 0 || self.errors > 0
    }
}

/// A hard-linked inode met by a walk: `(dev, ino, len, allocated)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link(pub u64, pub u64, pub u64, pub u64);

/// A walk's totals plus its hard-linked inodes, for the cross-env project total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walked {
    pub totals: WalkTotals,
    pub links: Vec<Link>,
}

/// Sizes the tree at `path` (see the module doc for what is counted). A missing `path` is all
/// zeros. Never fails: problems are counted in `vanished` and `errors`.
pub fn walk(path: &Path) -> WalkTotals {
    walk_tree(path).totals
}

#[derive(Default)]
struct Walker {
    totals: WalkTotals,
    seen: HashSet<(u64, u64)>,
    links: Vec<Link>,
}

impl Walker {
    fn fail(&mut self, error: &io::Error) {
        if error.kind() == io::ErrorKind::NotFound {
            self.totals.vanished += 1;
        } else {
            self.totals.errors += 1;
        }
    }

    fn count_dir(&mut self, meta: &fs::Metadata) {
        self.totals.dirs += 1;
        self.totals.allocated += allocated_bytes(meta);
    }

    fn count_file(&mut self, meta: &fs::Metadata) {
        let allocated = allocated_bytes(meta);
        if let Some((dev, ino)) = hard_link_id(meta) {
            if !self.seen.insert((dev, ino)) {
                return;
            }
            self.links.push(Link(dev, ino, meta.len(), allocated));
        }
        self.totals.files += 1;
        self.totals.apparent += meta.len();
        self.totals.allocated += allocated;
    }
}

/// The walk itself: symlinks never followed below the root. Directories go through a shared
/// queue served by a few threads (a cold tree walks faster in parallel; the research note measured
/// diskus at 0.63x of `du -sb`); each thread counts into its own [`Walker`], and hard links seen
/// by more than one thread are counted once when the results are merged.
pub fn walk_tree(root: &Path) -> Walked {
    let mut w = Walker::default();
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Walked::default(),
        Err(e) => {
            w.fail(&e);
            return Walked {
                totals: w.totals,
                links: w.links,
            };
        }
    };
    if meta.is_file() {
        w.count_file(&meta);
    } else if !meta.is_dir() {
        w.totals.skipped += 1;
    }
    if !meta.is_dir() {
        return Walked {
            totals: w.totals,
            links: w.links,
        };
    }
    w.count_dir(&meta);
    let queue = DirQueue::new(root.to_path_buf());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut walkers: Vec<Walker> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads)
            .map(|_| scope.spawn(|| walk_dirs(&queue, Walker::default())))
            .collect();
        let mut all = vec![walk_dirs(&queue, w)];
        all.extend(workers.into_iter().map(|h| h.join().expect("walk thread")));
        all
    });
    let mut merged = walkers.remove(0);
    for other in walkers {
        merged.totals += other.totals;
        for link in other.links {
            if merged.seen.insert((link.0, link.1)) {
                merged.links.push(link);
            } else {
                merged.totals.files -= 1;
                merged.totals.apparent -= link.2;
                merged.totals.allocated -= link.3;
            }
        }
    }
    Walked {
        totals: merged.totals,
        links: merged.links,
    }
}

/// Directories still to read, and how many are being read (the walk ends when both are zero).
struct DirQueue {
    state: std::sync::Mutex<(Vec<PathBuf>, usize)>,
    changed: std::sync::Condvar,
}

impl DirQueue {
    fn new(root: PathBuf) -> DirQueue {
        DirQueue {
            state: std::sync::Mutex::new((vec![root], 0)),
            changed: std::sync::Condvar::new(),
        }
    }

    fn next(&self) -> Option<PathBuf> {
        let mut state = self.state.lock().expect("walk queue");
        loop {
            if let Some(dir) = state.0.pop() {
                state.1 += 1;
                return Some(dir);
            }
            if state.1 == 0 {
                self.changed.notify_all();
                return None;
            }
            state = self.changed.wait(state).expect("walk queue");
        }
    }

    fn finished(&self, found: Vec<PathBuf>) {
        let mut state = self.state.lock().expect("walk queue");
        state.0.extend(found);
        state.1 -= 1;
        self.changed.notify_all();
    }
}

fn walk_dirs(queue: &DirQueue, mut w: Walker) -> Walker {
    while let Some(dir) = queue.next() {
        let mut found = Vec::new();
        read_one_dir(&dir, &mut w, &mut found);
        queue.finished(found);
    }
    w
}

fn read_one_dir(dir: &Path, w: &mut Walker, found: &mut Vec<PathBuf>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            w.fail(&e);
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                w.fail(&e);
                continue;
            }
        };
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) => {
                w.fail(&e);
                continue;
            }
        };
        if !(file_type.is_dir() || file_type.is_file()) {
            w.totals.skipped += 1;
            continue;
        }
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::size_vanish(&entry.path());
        // `DirEntry::metadata` does not follow symlinks; the type is taken from it, not
        // from d_type, in case the entry was replaced in between.
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => {
                w.count_dir(&meta);
                found.push(entry.path());
            }
            Ok(meta) if meta.is_file() => w.count_file(&meta),
            Ok(_) => w.totals.skipped += 1,
            Err(e) => w.fail(&e),
        }
    }
}

#[cfg(unix)]
fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks().saturating_mul(512)
}

/// Without `st_blocks` (Windows), the apparent size stands in for the allocated one.
#[cfg(not(unix))]
fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    if meta.is_file() { meta.len() } else { 0 }
}

#[cfg(unix)]
fn hard_link_id(meta: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()))
}

/// No stable link count on Windows: every name counts (like Explorer).
#[cfg(not(unix))]
fn hard_link_id(_meta: &fs::Metadata) -> Option<(u64, u64)> {
    None
}

// ---------------------------------------------------------------------------------------------
// The freshness key

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
    fn newest_mtime_ns(&self) -> i64 {
        self.children
            .iter()
            .map(|c| c.mtime_ns)
            .fold(self.dir.mtime_ns, i64::max)
    }

    /// Whether a stamp changed within [`RACY_WINDOW`] before `at_ns` (or after it).
    pub fn is_racy(&self, at_ns: i64) -> bool {
        let window = i64::try_from(RACY_WINDOW.as_nanos()).unwrap_or(i64::MAX);
        self.newest_mtime_ns() > at_ns.saturating_sub(window)
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
    let bytes = s.as_encoded_bytes();
    let mut out = String::with_capacity(5 + bytes.len() * 2);
    out.push_str("\0hex:");
    for b in bytes {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The pure refresh

/// One env's cached size, as stored in `build-size.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The resolved env dir ([`encode_os`]); a different path is a miss.
    pub path: String,
    /// `None`: the env dir did not exist.
    pub key: Option<EnvKey>,
    /// Stored flat: `apparent`, `allocated`, `files`, ... beside `path` and `key`.
    #[serde(flatten)]
    pub totals: WalkTotals,
    /// A stamp was younger than [`RACY_WINDOW`] at capture: the next call walks again.
    pub racy: bool,
    /// The key captured after the walk differed from the one before it.
    pub changed_during_walk: bool,
    pub walked_at_ns: i64,
    /// Hard-linked inodes in the tree, for the cross-env project total.
    pub links: Vec<Link>,
}

impl Entry {
    pub fn partial(&self) -> bool {
        self.totals.partial()
    }

    /// Whether this entry may be served without a walk when its key still matches.
    pub fn trusted(&self) -> bool {
        !self.racy && !self.changed_during_walk && !self.partial()
    }

    fn cleared(path: String, now_ns: i64) -> Entry {
        Entry {
            path,
            key: None,
            totals: WalkTotals::default(),
            racy: false,
            changed_during_walk: false,
            walked_at_ns: now_ns,
            links: Vec::new(),
        }
    }
}

/// `env_dir` resolved once: the real path if it exists (a symlinked build dir is followed),
/// else the path itself.
pub fn resolve_env_dir(env_dir: &Path) -> PathBuf {
    fs::canonicalize(env_dir).unwrap_or_else(|_| env_dir.to_path_buf())
}

/// Whether `cached` is still right for `env_dir`, without walking.
pub fn is_fresh(env_dir: &Path, cached: &Entry) -> bool {
    let resolved = resolve_env_dir(env_dir);
    cached.path == encode_os(resolved.as_os_str())
        && cached.trusted()
        && cached.key == capture_key(&resolved)
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
    let same = cached.is_some_and(|c| c.path == path && c.key == before && c.trusted());
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
    let t = result.totals;
    Some(Entry {
        path,
        changed_during_walk: after.as_ref() != Some(&key),
        key: Some(key),
        totals: t,
        racy,
        walked_at_ns: now_ns,
        links: result.links,
    })
}

// ---------------------------------------------------------------------------------------------
// platformio.ini

/// Just enough of configparser: sections, `key = value` (or `key: value`), full-line and inline
/// (`  ;`, `  #`) comments, and indented continuation lines. Keys are lowercased; a repeated key
/// or section overrides the earlier one (PlatformIO's `strict=False`).
#[derive(Debug, Default, Clone)]
pub struct Ini {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Ini {
    pub fn parse(text: &str) -> Ini {
        let mut ini = Ini::default();
        let mut key_open = false;
        for raw in text.trim_start_matches('\u{feff}').lines() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            let indented = raw.starts_with([' ', '\t']);
            if indented && key_open {
                let more = strip_inline_comment(trimmed);
                if let Some((_, options)) = ini.sections.last_mut()
                    && let Some((_, value)) = options.last_mut()
                    && !more.is_empty()
                {
                    if !value.is_empty() {
                        value.push('\n');
                    }
                    value.push_str(more);
                }
                continue;
            }
            let line = strip_inline_comment(trimmed);
            if let Some(name) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                ini.sections.push((name.trim().to_owned(), Vec::new()));
                key_open = false;
                continue;
            }
            let split = line.find(['=', ':']);
            match (split, ini.sections.last_mut()) {
                (Some(at), Some((_, options))) => {
                    let key = line[..at].trim().to_lowercase();
                    let value = line[at + 1..].trim().to_owned();
                    options.push((key, value));
                    key_open = true;
                }
                _ => key_open = false,
            }
        }
        ini
    }

    /// The last value of `key` in `section`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .iter()
            .filter(|(name, _)| name == section)
            .flat_map(|(_, options)| options.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .next_back()
    }

    /// `NAME` of each `[env:NAME]`, in file order, without repeats.
    pub fn env_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (section, _) in &self.sections {
            if let Some(name) = section.strip_prefix("env:") {
                let name = name.trim();
                if !name.is_empty() && !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
        }
        names
    }
}

fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if (*b == b';' || *b == b'#') && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return value[..i].trim_end();
        }
    }
    value
}

// ---------------------------------------------------------------------------------------------
// The project: build dir, envs, cache location

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Env,
    Ini,
    Default,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Env => "env",
            Source::Ini => "ini",
            Source::Default => "default",
        }
    }
}

/// A PlatformIO project's directories, resolved as PlatformIO resolves them.
#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    pub ini_path: Option<PathBuf>,
    pub ini: Ini,
    pub build_dir: PathBuf,
    build_dir_source: Source,
    pub workspace_dir: PathBuf,
    pub cache_path: PathBuf,
}

/// One environment to size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub name: String,
    pub layout: &'static str,
    pub path: PathBuf,
}

impl Project {
    /// Resolves `dir`: it must exist and hold a `platformio.ini` or an ESPHome build dir.
    pub fn open(dir: &Path) -> Result<Project> {
        let dir = match fs::canonicalize(dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Usage(format!(
                    "project directory {} does not exist",
                    dir.display()
                )));
            }
            Err(e) => return Err(Error::io("open the project directory", dir, e)),
        };
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "project directory {} is not a directory",
                dir.display()
            )));
        }
        let ini_file = dir.join("platformio.ini");
        let (ini, ini_path) = match fs::read(&ini_file) {
            Ok(bytes) => (Ini::parse(&String::from_utf8_lossy(&bytes)), Some(ini_file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !dir.join(".esphome/build").is_dir() {
                    return Err(Error::Usage(format!(
                        "no platformio.ini in {} (and no ESPHome build directory .esphome/build)",
                        dir.display()
                    )));
                }
                (Ini::default(), None)
            }
            Err(e) => return Err(Error::io("read", &ini_file, e)),
        };
        let mut project = Project {
            dir,
            ini_path,
            ini,
            build_dir: PathBuf::new(),
            build_dir_source: Source::Default,
            workspace_dir: PathBuf::new(),
            cache_path: PathBuf::new(),
        };
        let (workspace_dir, workspace_source) = project.option_path("workspace_dir");
        let (build_dir, build_source) = project.option_path("build_dir");
        let cache_dir = if project.ini_path.is_none() && workspace_source != Source::Env {
            project.dir.join(".esphome").join(CACHE_DIR)
        } else {
            workspace_dir.join(CACHE_DIR)
        };
        project.workspace_dir = workspace_dir;
        project.build_dir = build_dir;
        project.build_dir_source = build_source;
        project.cache_path = cache_dir.join(CACHE_FILE);
        Ok(project)
    }

    /// `[platformio] KEY` before interpolation: `PLATFORMIO_<KEY>` for `*_dir` keys (it
    /// overrides the ini, as in PlatformIO), the ini, or PlatformIO's default.
    fn option_raw(&self, key: &str) -> Option<(OsString, Source)> {
        if key.ends_with("_dir") {
            let var = format!("PLATFORMIO_{}", key.to_uppercase());
            if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                return Some((value, Source::Env));
            }
        }
        if let Some(value) = self.ini.get("platformio", key).filter(|v| !v.is_empty()) {
            return Some((value.into(), Source::Ini));
        }
        match key {
            "workspace_dir" => Some(("${PROJECT_DIR}/.pio".into(), Source::Default)),
            "build_dir" => Some(("${platformio.workspace_dir}/build".into(), Source::Default)),
            _ => None,
        }
    }

    fn option_path(&self, key: &str) -> (PathBuf, Source) {
        let (raw, source) = self
            .option_raw(key)
            .expect("workspace_dir and build_dir have defaults");
        let value = self.interpolate(&raw, 0);
        (self.absolute(&value), source)
    }

    /// `~` expanded, relative paths taken from the project dir (PlatformIO's cwd).
    fn absolute(&self, value: &OsStr) -> PathBuf {
        let path = Path::new(value);
        let path = match (path.strip_prefix("~"), std::env::var_os("HOME")) {
            (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => path.to_path_buf(),
        };
        self.dir.join(path)
    }

    /// Replaces `${PROJECT_DIR}`, `${platformio.KEY}` and `${sysenv.VAR}`; anything else is left
    /// as written.
    fn interpolate(&self, raw: &OsStr, depth: u32) -> OsString {
        let Some(mut rest) = raw.to_str() else {
            return raw.to_owned();
        };
        let mut out = OsString::new();
        while let Some(start) = rest.find("${") {
            out.push(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push(&rest[start..]);
                rest = "";
                break;
            };
            let name = &after[..end];
            match self.lookup(name.trim(), depth) {
                Some(value) => out.push(value),
                None => out.push(&rest[start..start + 3 + end]),
            }
            rest = &after[end + 1..];
        }
        out.push(rest);
        out
    }

    fn lookup(&self, name: &str, depth: u32) -> Option<OsString> {
        if depth > 8 {
            return None;
        }
        if name == "PROJECT_DIR" {
            return Some(self.dir.clone().into_os_string());
        }
        if let Some(key) = name.strip_prefix("platformio.") {
            let (raw, _) = self.option_raw(key)?;
            return Some(self.interpolate(&raw, depth + 1));
        }
        if let Some(var) = name.strip_prefix("sysenv.") {
            return Some(std::env::var_os(var).unwrap_or_default());
        }
        None
    }

    /// The ini's envs (file order), then ESPHome's (by name).
    pub fn envs(&self) -> Vec<EnvSpec> {
        let mut envs: Vec<EnvSpec> = self
            .ini
            .env_names()
            .into_iter()
            .map(|name| EnvSpec {
                path: self.build_dir.join(&name),
                name,
                layout: "platformio",
            })
            .collect();
        let mut esphome = Vec::new();
        if let Ok(entries) = fs::read_dir(self.dir.join(".esphome/build")) {
            for entry in entries.flatten() {
                let device = entry.path();
                let name = entry.file_name();
                let env_dir = device.join(".pioenvs").join(&name);
                if env_dir.is_dir() || device.join("platformio.ini").is_file() {
                    esphome.push((name.to_string_lossy().into_owned(), env_dir));
                }
            }
        }
        esphome.sort();
        for (name, path) in esphome {
            let name = if envs.iter().any(|e| e.name == name) {
                format!("esphome:{name}")
            } else {
                name
            };
            envs.push(EnvSpec {
                name,
                layout: "esphome",
                path,
            });
        }
        envs
    }

    /// Entries of the build dir that belong to no ini env (only when there is an ini).
    pub fn orphans(&self, envs: &[EnvSpec]) -> Vec<(String, PathBuf)> {
        if self.ini_path.is_none() {
            return Vec::new();
        }
        let Ok(entries) = fs::read_dir(&self.build_dir) else {
            return Vec::new();
        };
        let mut orphans: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                name != CHECKSUM_FILE
                    && name != CACHE_DIR
                    && !envs
                        .iter()
                        .any(|e| e.layout == "platformio" && OsStr::new(&e.name) == name)
            })
            .map(|entry| {
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    entry.path(),
                )
            })
            .collect();
        orphans.sort();
        orphans
    }

    fn lock_path(&self) -> PathBuf {
        self.cache_path.with_file_name(LOCK_FILE)
    }
}

// ---------------------------------------------------------------------------------------------
// The cache file

/// The usable entries of the cache at `path`, and whether anything in it was unusable (then it
/// is rewritten). Never fails.
fn load_cache(path: &Path) -> (BTreeMap<String, Entry>, bool) {
    match fs::read(path) {
        Ok(bytes) => parse_cache(&bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (BTreeMap::new(), false),
        Err(_) => (BTreeMap::new(), true),
    }
}

/// Parses `build-size.json`: an unknown schema, a non-object or a wrongly typed entry is
/// dropped (a miss), never an error.
pub fn parse_cache(bytes: &[u8]) -> (BTreeMap<String, Entry>, bool) {
    let mut entries = BTreeMap::new();
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return (entries, true);
    };
    if value.get("schema").and_then(Value::as_u64) != Some(CACHE_SCHEMA) {
        return (entries, true);
    }
    let Some(envs) = value.get("envs").and_then(Value::as_object) else {
        return (entries, true);
    };
    let mut dirty = false;
    for (name, entry) in envs {
        match Entry::deserialize(entry) {
            Ok(entry) => {
                entries.insert(name.clone(), entry);
            }
            Err(_) => dirty = true,
        }
    }
    (entries, dirty)
}

fn cache_bytes(entries: &BTreeMap<String, Entry>) -> Vec<u8> {
    let doc = json!({
        "schema": CACHE_SCHEMA,
        "tool": concat!("penv-guard ", env!("CARGO_PKG_VERSION")),
        "envs": entries,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("cache serializes");
    bytes.push(b'\n');
    bytes
}

/// Stores `updates` (merged into what is on disk now, pruned to `known` env names) under a
/// non-blocking lock. Returns whether the file was written, or why not (a busy lock is not
/// worth a message).
fn store_cache(
    project: &Project,
    env_dirs: &[PathBuf],
    known: &[String],
    updates: &BTreeMap<String, Entry>,
) -> std::result::Result<bool, String> {
    let cache_dir = project
        .cache_path
        .parent()
        .expect("the cache path has a parent");
    if env_dirs
        .iter()
        .any(|dir| cache_dir.starts_with(resolve_env_dir(dir)))
    {
        return Err(format!(
            "the cache {} would be inside an env directory",
            project.cache_path.display()
        ));
    }
    fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let lock_path = project.lock_path();
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(false),
        Err(fs::TryLockError::Error(e)) => return Err(format!("{}: {e}", lock_path.display())),
    }
    fsutil::sweep_temp_files(cache_dir);
    let (mut entries, _) = load_cache(&project.cache_path);
    entries.retain(|name, _| known.contains(name));
    for (name, entry) in updates {
        entries.insert(name.clone(), entry.clone());
    }
    fsutil::write_atomic(&project.cache_path, &cache_bytes(&entries), false)
        .map_err(|e| e.to_string())?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Reports

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowState {
    Fresh,
    Walked,
    Partial,
    Missing,
    Stale,
    Unsized,
}

impl RowState {
    fn as_str(self) -> &'static str {
        match self {
            RowState::Fresh => "fresh",
            RowState::Walked => "walked",
            RowState::Partial => "partial",
            RowState::Missing => "missing",
            RowState::Stale => "stale",
            RowState::Unsized => "unsized",
        }
    }
}

struct Row {
    env: EnvSpec,
    entry: Option<Entry>,
    state: RowState,
    walked: bool,
}

fn row_json(row: &Row, now_ns: i64) -> Value {
    let entry = row.entry.as_ref();
    let exists = entry.map_or_else(|| row.env.path.is_dir(), |e| e.key.is_some());
    let path = entry.map_or_else(
        || row.env.path.to_string_lossy().into_owned(),
        |e| display_encoded(&e.path),
    );
    let sized = row.state != RowState::Unsized;
    let totals = entry.map(|e| e.totals).unwrap_or_default();
    let num = |n: u64| if sized { json!(n) } else { Value::Null };
    #[allow(clippy::cast_precision_loss)]
    let seconds = |ns: i64| ns as f64 / 1e9;
    let walked_at = entry.filter(|_| sized).map(|e| e.walked_at_ns);
    json!({
        "name": row.env.name,
        "layout": row.env.layout,
        "path": path,
        "exists": exists,
        "apparent_bytes": num(totals.apparent),
        "allocated_bytes": num(totals.allocated),
        "files": num(totals.files),
        "dirs": num(totals.dirs),
        "skipped": num(totals.skipped),
        "vanished": num(totals.vanished),
        "errors": num(totals.errors),
        "partial": totals.partial(),
        "racy": entry.is_some_and(|e| e.racy),
        "changed_during_walk": entry.is_some_and(|e| e.changed_during_walk),
        "walked": row.walked,
        "state": row.state.as_str(),
        "walked_at": walked_at.map(seconds),
        "age_seconds": walked_at.map(|t| seconds(now_ns.saturating_sub(t)).max(0.0)),
    })
}

/// Σ over the rows, with hard-linked inodes shared between envs counted once.
fn project_totals(rows: &[Row]) -> (u64, u64) {
    let mut apparent = 0u64;
    let mut allocated = 0u64;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    for entry in rows.iter().filter_map(|r| r.entry.as_ref()) {
        apparent += entry.totals.apparent;
        allocated += entry.totals.allocated;
        for link in &entry.links {
            if !seen.insert((link.0, link.1)) {
                apparent = apparent.saturating_sub(link.2);
                allocated = allocated.saturating_sub(link.3);
            }
        }
    }
    (apparent, allocated)
}

fn report_json(
    project: &Project,
    rows: &[Row],
    orphans: &[(String, PathBuf)],
    cache_written: bool,
    now_ns: i64,
) -> Value {
    let (total_apparent, total_allocated) = project_totals(rows);
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    json!({
        "project_dir": lossy(&project.dir),
        "ini": project.ini_path.as_deref().map(lossy),
        "build_dir": lossy(&project.build_dir),
        "build_dir_source": project.build_dir_source.as_str(),
        "workspace_dir": lossy(&project.workspace_dir),
        "cache_path": lossy(&project.cache_path),
        "cache_written": cache_written,
        "envs": rows.iter().map(|r| row_json(r, now_ns)).collect::<Vec<_>>(),
        "orphans": orphans
            .iter()
            .map(|(name, path)| json!({"name": name, "path": lossy(path)}))
            .collect::<Vec<_>>(),
        "total_apparent_bytes": total_apparent,
        "total_allocated_bytes": total_allocated,
    })
}

/// An encoded path back to something printable.
fn display_encoded(encoded: &str) -> String {
    match encoded.strip_prefix("\0hex:") {
        Some(hex) => {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        None => encoded.to_owned(),
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `90 s` → `1 min ago`.
pub fn human_age(ns: i64) -> String {
    let secs = ns / 1_000_000_000;
    match secs {
        i64::MIN..=0 => "just now".to_owned(),
        1..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// The human table, written to stdout in one piece.
fn print_table(project: &Project, rows: &[Row], orphans: &[(String, PathBuf)]) {
    use std::fmt::Write as _;
    let shown = |p: &Path| {
        p.strip_prefix(&project.dir)
            .map_or_else(|_| p.display().to_string(), |r| r.display().to_string())
    };
    let mut lines = vec![[
        "ENV".to_owned(),
        "PATH".to_owned(),
        "APPARENT".to_owned(),
        "ALLOCATED".to_owned(),
        "FILES".to_owned(),
        "STATE".to_owned(),
    ]];
    for row in rows {
        let t = row.entry.as_ref().map(|e| e.totals).unwrap_or_default();
        let mut state = row.state.as_str().to_owned();
        if row
            .entry
            .as_ref()
            .is_some_and(|e| e.racy && e.key.is_some())
        {
            state.push_str(" (racy)");
        }
        lines.push([
            row.env.name.clone(),
            shown(&row.env.path),
            human_bytes(t.apparent),
            human_bytes(t.allocated),
            t.files.to_string(),
            state,
        ]);
    }
    let (apparent, allocated) = project_totals(rows);
    lines.push([
        "total".to_owned(),
        String::new(),
        human_bytes(apparent),
        human_bytes(allocated),
        String::new(),
        String::new(),
    ]);
    let mut widths = [0usize; 6];
    let mut out = String::new();
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in &lines {
        let text = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {}",
            line[0],
            line[1],
            line[2],
            line[3],
            line[4],
            line[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        out.push_str(text.trim_end());
        out.push('\n');
    }
    if !orphans.is_empty() {
        let names: Vec<&str> = orphans.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(
            out,
            "orphans in {} (no [env:NAME] in platformio.ini): {}",
            shown(&project.build_dir),
            names.join(", ")
        );
    }
    crate::messages::print(&out);
}

fn select(project: &Project, envs: &[EnvSpec], wanted: &[String]) -> Result<Vec<EnvSpec>> {
    for name in wanted {
        if !envs.iter().any(|e| &e.name == name) {
            let known: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
            let source = project
                .ini_path
                .as_deref()
                .unwrap_or(&project.dir)
                .display();
            return Err(Error::Usage(format!(
                "unknown environment `{name}` in {source} (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(envs
        .iter()
        .filter(|e| wanted.is_empty() || wanted.contains(&e.name))
        .cloned()
        .collect())
}

/// `penv-guard size`.
pub fn run(args: &SizeArgs) -> Result<()> {
    let project = Project::open(&args.project_dir)?;
    let all = project.envs();
    let selected = select(&project, &all, &args.env)?;
    let orphans = project.orphans(&all);
    let (cached, dirty) = load_cache(&project.cache_path);
    let mut updates = BTreeMap::new();
    let mut rows = Vec::with_capacity(selected.len());
    for env in selected {
        let old = cached.get(&env.name);
        let row = match refresh(&env.path, old, args.refresh) {
            Some(entry) => {
                updates.insert(env.name.clone(), entry.clone());
                let state = match &entry.key {
                    None => RowState::Missing,
                    Some(_) if entry.partial() => RowState::Partial,
                    Some(_) => RowState::Walked,
                };
                Row {
                    walked: entry.key.is_some(),
                    entry: Some(entry),
                    env,
                    state,
                }
            }
            None => Row {
                state: if old.is_some_and(|e| e.key.is_some()) {
                    RowState::Fresh
                } else {
                    RowState::Missing
                },
                entry: old.cloned(),
                walked: false,
                env,
            },
        };
        rows.push(row);
    }
    let pruned = cached
        .keys()
        .any(|name| !all.iter().any(|e| &e.name == name));
    let cache_written = if updates.is_empty() && !dirty && !pruned {
        false
    } else {
        let known: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
        let dirs: Vec<PathBuf> = all.iter().map(|e| e.path.clone()).collect();
        match store_cache(&project, &dirs, &known, &updates) {
            Ok(written) => written,
            Err(why) => {
                crate::messages::say(format!("note: build sizes not cached ({why})"));
                false
            }
        }
    };
    let now = fsutil::now_ns();
    if args.json {
        crate::messages::println(
            &report_json(&project, &rows, &orphans, cache_written, now).to_string(),
        );
    } else {
        print_table(&project, &rows, &orphans);
    }
    Ok(())
}

/// One line about `env`'s cached build size, from the cache alone (no walk, no key capture),
/// e.g. `build size of env esp32dev: 12.3 MiB (cached 5 min ago)`. `None` when there is no
/// usable cache entry or the project cannot be resolved.
pub fn cached_summary(project_dir: &Path, env: &str) -> Option<String> {
    let project = Project::open(project_dir).ok()?;
    let (entries, _) = load_cache(&project.cache_path);
    let entry = entries.get(env)?;
    let age = human_age(fsutil::now_ns().saturating_sub(entry.walked_at_ns));
    if entry.key.is_none() {
        return Some(format!(
            "build size of env {env}: not built (checked {age})"
        ));
    }
    let partial = if entry.partial() { "partial, " } else { "" };
    Some(format!(
        "build size of env {env}: {} ({partial}cached {age})",
        human_bytes(entry.totals.apparent)
    ))
}

/// The project's build sizes as `size --json` reports them, but from the cache alone (no walk;
/// one key capture per env says whether each entry is still `fresh`). `None` when the project
/// cannot be resolved.
pub fn cached_report(project_dir: &Path) -> Option<Value> {
    let project = Project::open(project_dir).ok()?;
    let envs = project.envs();
    let orphans = project.orphans(&envs);
    let (entries, _) = load_cache(&project.cache_path);
    let rows: Vec<Row> = envs
        .into_iter()
        .map(|env| {
            let entry = entries.get(&env.name).cloned();
            let state = match &entry {
                None if env.path.exists() => RowState::Unsized,
                None => RowState::Missing,
                Some(e) if !is_fresh(&env.path, e) => RowState::Stale,
                Some(e) if e.key.is_none() => RowState::Missing,
                Some(_) => RowState::Fresh,
            };
            Row {
                env,
                entry,
                state,
                walked: false,
            }
        })
        .collect();
    Some(report_json(
        &project,
        &rows,
        &orphans,
        false,
        fsutil::now_ns(),
    ))
}

#[cfg(test)]
mod tests {
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

    fn env_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join(".pio/build/esp32dev");
        fs::create_dir_all(env.join("src")).unwrap();
        fs::write(env.join(".sconsign311.dblite"), b"db").unwrap();
        fs::write(env.join("firmware.elf"), vec![1u8; 5000]).unwrap();
        fs::write(env.join("src/main.o"), vec![2u8; 300]).unwrap();
        (tmp, env)
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        fs::File::open(path).unwrap().set_modified(t).unwrap();
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
        let settled = refresh_with(&env, Some(&again), false, now + 3_000_000_000, &mut walker);
        let settled = settled.unwrap();
        assert!(!settled.racy);
        assert_eq!(
            refresh_with(
                &env,
                Some(&settled),
                false,
                now + 3_000_000_000,
                &mut walker
            ),
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

    #[cfg(unix)]
    #[test]
    fn walk_counts_hard_links_once_and_skips_symlinks_and_fifos() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("big"), vec![0u8; 100_000]).unwrap();
        fs::write(root.join("a"), vec![1u8; 1000]).unwrap();
        fs::hard_link(root.join("a"), root.join("d/a2")).unwrap();
        symlink(root.join("a"), root.join("to-file")).unwrap();
        symlink(&outside, root.join("to-outside")).unwrap();
        symlink(root.join("nowhere"), root.join("dangling")).unwrap();
        symlink(&root, root.join("d/loop")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(root.join("fifo"))
            .status();
        let fifo = status.is_ok_and(|s| s.success());
        let w = walk_tree(&root);
        assert_eq!(w.totals.apparent, 1000);
        assert_eq!(w.totals.files, 1);
        assert_eq!(w.totals.dirs, 2);
        assert_eq!(w.totals.skipped, 4 + u64::from(fifo));
        assert!(!w.totals.partial());
        assert_eq!(w.links.len(), 1);
        // A symlinked root is followed once.
        let link_root = tmp.path().join("root-link");
        symlink(&root, &link_root).unwrap();
        assert_eq!(walk(&link_root), w.totals);
        assert_eq!(walk(&tmp.path().join("missing")), WalkTotals::default());
    }

    #[cfg(unix)]
    #[test]
    fn walk_counts_non_utf8_names_and_sparse_files() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let odd = OsStr::from_bytes(b"caf\xe9.o");
        fs::write(tmp.path().join(odd), b"12345").unwrap();
        let sparse = fs::File::create(tmp.path().join("sparse")).unwrap();
        sparse.set_len(50_000_000).unwrap();
        let w = walk(tmp.path());
        assert_eq!(w.files, 2);
        assert_eq!(w.apparent, 50_000_005);
        assert!(w.allocated < 1_000_000, "sparse: {}", w.allocated);
        let key = capture_key(tmp.path()).unwrap();
        assert!(key.children.iter().any(|c| c.name == "\0hex:636166e92e6f"));
        assert_eq!(display_encoded("\0hex:636166e92e6f"), "caf\u{fffd}.o");
    }

    #[test]
    fn a_vanishing_entry_is_counted_as_vanished() {
        let mut w = Walker::default();
        w.fail(&io::Error::from(io::ErrorKind::NotFound));
        w.fail(&io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!((w.totals.vanished, w.totals.errors), (1, 1));
        assert!(w.totals.partial());
    }

    #[test]
    fn ini_sections_comments_and_continuations() {
        let ini = Ini::parse(
            "\u{feff}; comment\n[platformio]\nbuild_dir = out ; trailing\n# more\n\
             default_envs =\n    a\n    b\n[env:a]\nboard = x\n[env:b] ; trailing\n[env]\n[env:a]\n\
             Build_Flags: -DX=1#not-a-comment\n",
        );
        assert_eq!(ini.get("platformio", "build_dir"), Some("out"));
        assert_eq!(ini.get("platformio", "default_envs"), Some("a\nb"));
        assert_eq!(ini.get("env:a", "build_flags"), Some("-DX=1#not-a-comment"));
        assert_eq!(ini.env_names(), ["a", "b"]);
        assert_eq!(ini.get("platformio", "nothing"), None);
    }

    #[test]
    fn cache_round_trips_and_rejects_bad_content() {
        let (_tmp, env) = env_dir();
        let entry = refresh_with(&env, None, false, later(), &mut walk_tree).unwrap();
        let entries = BTreeMap::from([("esp32dev".to_owned(), entry)]);
        assert_eq!(
            parse_cache(&cache_bytes(&entries)),
            (entries.clone(), false)
        );
        let good = serde_json::to_value(&entries["esp32dev"]).unwrap();
        let bad_values = [
            json!("12"),
            json!(12.7),
            json!("12.7"),
            json!(-1),
            json!(null),
            json!([1]),
        ];
        for bad in bad_values {
            let mut e = good.clone();
            e["apparent"] = bad.clone();
            let doc = json!({"schema": 1, "envs": {"esp32dev": e}});
            let (parsed, dirty) = parse_cache(doc.to_string().as_bytes());
            assert!(parsed.is_empty() && dirty, "{bad}");
        }
        for doc in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"schema\": 2, \"envs\": {}}",
            b"{\"schema\": \"1\", \"envs\": {}}",
            b"{\"schema\": 1, \"envs\": []}",
        ] {
            let (parsed, dirty) = parse_cache(doc);
            assert!(parsed.is_empty() && dirty);
        }
        let bytes = cache_bytes(&entries);
        assert!(parse_cache(&bytes[..bytes.len() / 2]).0.is_empty());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12_897_485), "12.3 MiB");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_age(0), "just now");
        assert_eq!(human_age(300_000_000_000), "5 min ago");
        assert_eq!(human_age(7_200_000_000_000), "2 h ago");
    }

    #[test]
    fn project_total_counts_shared_links_once() {
        let mk = |apparent, links: Vec<Link>| Row {
            env: EnvSpec {
                name: "x".into(),
                layout: "platformio",
                path: PathBuf::new(),
            },
            entry: Some(Entry {
                totals: WalkTotals {
                    apparent,
                    allocated: apparent,
                    ..WalkTotals::default()
                },
                links,
                ..Entry::cleared(String::new(), 0)
            }),
            state: RowState::Fresh,
            walked: false,
        };
        let rows = [
            mk(1500, vec![Link(1, 7, 1000, 1000)]),
            mk(1200, vec![Link(1, 7, 1000, 1000)]),
        ];
        assert_eq!(project_totals(&rows), (1700, 1700));
    }

    #[test]
    fn cached_summary_and_report_read_the_cache_without_walking() {
        let (tmp, env) = env_dir();
        let project_dir = tmp.path();
        fs::write(
            project_dir.join("platformio.ini"),
            "[env:esp32dev]\n[env:other]\n",
        )
        .unwrap();
        assert_eq!(
            cached_summary(project_dir, "esp32dev"),
            None,
            "no cache yet"
        );
        let report = cached_report(project_dir).unwrap();
        assert_eq!(report["envs"][0]["state"], "unsized");
        assert_eq!(report["envs"][0]["apparent_bytes"], Value::Null);
        assert_eq!(report["envs"][1]["state"], "missing");

        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for path in [
            env.join("src/main.o"),
            env.join("src"),
            env.join("firmware.elf"),
            env.join(".sconsign311.dblite"),
            env.clone(),
        ] {
            set_mtime(&path, hour_ago);
        }
        let args = SizeArgs {
            project_dir: project_dir.to_path_buf(),
            env: Vec::new(),
            refresh: false,
            json: true,
        };
        run(&args).unwrap();
        let summary = cached_summary(project_dir, "esp32dev").unwrap();
        assert_eq!(
            summary,
            "build size of env esp32dev: 5.2 KiB (cached just now)"
        );
        assert_eq!(cached_summary(project_dir, "other"), None);
        assert_eq!(cached_summary(project_dir, "nope"), None);
        let report = cached_report(project_dir).unwrap();
        let first = &report["envs"][0];
        assert_eq!(first["state"], "fresh");
        assert_eq!(first["walked"], false);
        assert_eq!(first["apparent_bytes"], 5302);
        assert_eq!(report["total_apparent_bytes"], 5302);

        fs::remove_file(env.join("firmware.elf")).unwrap();
        let report = cached_report(project_dir).unwrap();
        assert_eq!(report["envs"][0]["state"], "stale");
        assert_eq!(
            report["envs"][0]["apparent_bytes"], 5302,
            "still the cached number"
        );
        assert!(cached_summary(project_dir, "esp32dev").is_some());
        assert_eq!(cached_summary(&project_dir.join("gone"), "esp32dev"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_cache_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse_cache(&bytes);
        }

        #[test]
        fn arbitrary_ini_text_never_panics(text in ".{0,300}") {
            let ini = Ini::parse(&text);
            let _ = ini.env_names();
        }
    }
}
