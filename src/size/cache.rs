//! The cache file `build-size.json`: its entries, how it is read, parsed and stored, and its lock.
//!
//! Invariants:
//! - **The cache is penv-guard's own file, read like one**: [`fsutil::read_capped`] with
//!   [`Follow::Never`], non-blocking, regular files only, capped at [`fsutil::OWN_FILE_CAP`]. A
//!   FIFO, a symlink (to `/dev/zero` or anywhere), a directory or a device at the cache path is a
//!   miss, never a hang or an error, and it is left alone: the cache is then not written (a note
//!   says why), because penv-guard never replaces what it did not create.
//! - **A cache or an entry that is unreadable, unparsable, wrongly typed or of an unknown schema
//!   is a miss**, recomputed and rewritten, never an error. Each entry is checked on its own: one
//!   bad entry does not cost the others.
//! - **It is never written inside an env directory** (it would move the key it measures), so
//!   penv-guard's own writes never change any env's key.
//! - **Bookkeeping never blocks and never fails the command.** Writes are atomic
//!   ([`fsutil::write_atomic`], without fsync: a lost cache is only a miss). They are made under a
//!   non-blocking `try_lock` of `build-size.lock`, which is opened without following a symlink,
//!   without blocking (`O_NONBLOCK`), must be a regular file, and is never deleted and never
//!   written. If another process holds the lock, or anything fails, the sizes are printed but not
//!   stored. Under the lock the file is read again and merged, so two concurrent `size` calls
//!   for different envs do not lose each other's entries.
//! - Reading the cache takes no lock and writes nothing: the cached path of `size` is one read.
//! - **A cached call reads only what it reports.** The hard-linked inodes a walk finds (needed
//!   only to count an inode shared by two envs once in the project total) are kept apart, in
//!   `build-size-links.json`, each env's list under the key it was walked with; the main file
//!   keeps only their number (`linked`). The links file is read only when two or more of the
//!   reported envs have links (only then can one inode be in two of them), so a tree with
//!   thousands of hard links costs a cached call nothing more. A links list whose key is not
//!   its entry's (a crash between the two writes, an older file) is not used: that env is then
//!   counted without deduplication, never with another walk's links.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::key::resolve_env_dir;
use super::walk::{Link, WalkTotals};
use crate::fsutil::{self, Follow, ReadError};

/// Schema number of `build-size.json` (and of `build-size-links.json`); any other number is a
/// miss. 3: the links moved to their own file.
pub const CACHE_SCHEMA: u64 = 3;
const LOCK_FILE: &str = "build-size.lock";
/// Beside the cache: each env's hard-linked inodes, read only for a project total across envs.
const LINKS_FILE: &str = "build-size-links.json";

/// One env's cached size, as stored in `build-size.json` (its `links` in the links file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredEntry")]
pub struct Entry {
    /// The resolved env dir (`key::encode_os`); a different path is a miss.
    pub path: String,
    /// The key's digest ([`super::EnvKey::digest`]); `None`: the env dir did not exist.
    pub key: Option<String>,
    /// Stored flat: `apparent`, `allocated`, `files`, ... beside `path` and `key`.
    #[serde(flatten)]
    pub totals: WalkTotals,
    /// A stamp was younger than the racy window at capture: the next call walks again.
    pub racy: bool,
    /// The key captured after the walk differed from the one before it.
    pub changed_during_walk: bool,
    pub walked_at_ns: i64,
    /// How many hard-linked inodes the walk found: stored here, the list in the links file.
    pub linked: u64,
    /// Those inodes, for the cross-env project total: filled by a walk, or from the links file
    /// by [`attach_links`]; empty as the main file is read.
    #[serde(skip)]
    pub links: Vec<Link>,
}

/// [`Entry`] as stored, the totals flat beside the other fields. Read through this rather than
/// `#[serde(flatten)]`, which buffers the whole entry (its key included) before reading it: on
/// the cached path that doubled the cost of reading the cache.
#[derive(Deserialize)]
struct StoredEntry {
    path: String,
    key: Option<String>,
    apparent: u64,
    allocated: u64,
    files: u64,
    dirs: u64,
    skipped: u64,
    vanished: u64,
    errors: u64,
    racy: bool,
    changed_during_walk: bool,
    walked_at_ns: i64,
    linked: u64,
}

impl From<StoredEntry> for Entry {
    fn from(e: StoredEntry) -> Entry {
        Entry {
            path: e.path,
            key: e.key,
            totals: WalkTotals {
                apparent: e.apparent,
                allocated: e.allocated,
                files: e.files,
                dirs: e.dirs,
                skipped: e.skipped,
                vanished: e.vanished,
                errors: e.errors,
            },
            racy: e.racy,
            changed_during_walk: e.changed_during_walk,
            walked_at_ns: e.walked_at_ns,
            links: Vec::new(),
            linked: e.linked,
        }
    }
}

impl Entry {
    pub fn partial(&self) -> bool {
        self.totals.partial()
    }

    /// Whether this entry may be served without a walk when its key still matches.
    pub fn trusted(&self) -> bool {
        !self.racy && !self.changed_during_walk && !self.partial()
    }

    /// The entry of an env dir that is gone: size 0, key `None`.
    pub fn cleared(path: String, now_ns: i64) -> Entry {
        Entry {
            path,
            key: None,
            totals: WalkTotals::default(),
            racy: false,
            changed_during_walk: false,
            walked_at_ns: now_ns,
            linked: 0,
            links: Vec::new(),
        }
    }
}

pub type Entries = BTreeMap<String, Entry>;

/// What is at the cache path.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Nothing yet.
    Missing,
    /// The usable entries, and whether anything in the file was unusable (then it is rewritten).
    File { entries: Entries, dirty: bool },
    /// Not penv-guard's file (a FIFO, symlink, directory, ...), or unreadable: a miss, and the
    /// reason it must not be written.
    Foreign(String),
}

impl Loaded {
    /// The usable entries (none unless it is a file).
    pub fn into_entries(self) -> Entries {
        match self {
            Loaded::File { entries, .. } => entries,
            Loaded::Missing | Loaded::Foreign(_) => Entries::new(),
        }
    }

    /// Whether the file on disk should be rewritten even without new entries.
    pub fn dirty(&self) -> bool {
        matches!(self, Loaded::File { dirty: true, .. })
    }
}

/// Reads the cache at `path`. Never fails and never blocks.
pub fn load(path: &Path) -> Loaded {
    match fsutil::read_capped(path, fsutil::OWN_FILE_CAP, Follow::Never) {
        Ok(bytes) => {
            let (entries, dirty) = parse(&bytes);
            Loaded::File { entries, dirty }
        }
        Err(ReadError::Missing) => Loaded::Missing,
        // Too large or unreadable: still a regular file of ours, so it is rewritten.
        Err(ReadError::TooLarge(_)) => Loaded::File {
            entries: Entries::new(),
            dirty: true,
        },
        Err(why @ (ReadError::NotRegular(_) | ReadError::Io(_))) => {
            Loaded::Foreign(format!("{} is {why}", path.display()))
        }
    }
}

/// A well-formed cache, read in one typed pass (no `Value` tree).
#[derive(Deserialize)]
struct Document {
    schema: u64,
    envs: Entries,
}

/// Parses `build-size.json`: an unknown schema, a non-object or a wrongly typed entry is
/// dropped (a miss), never an error. Returns the usable entries and whether anything was dropped.
///
/// A well-formed file (the cached path, every time) is read straight into the typed entries,
/// without building a `Value` tree first. Anything else takes the tolerant path, which keeps the
/// usable entries one by one; both agree on every input (see the tests).
pub fn parse(bytes: &[u8]) -> (Entries, bool) {
    // `{`: a derived struct would also accept a JSON array, which the tolerant path rejects.
    if bytes.trim_ascii_start().starts_with(b"{")
        && let Ok(doc) = serde_json::from_slice::<Document>(bytes)
        && doc.schema == CACHE_SCHEMA
    {
        return (doc.envs, false);
    }
    parse_tolerant(bytes)
}

fn parse_tolerant(bytes: &[u8]) -> (Entries, bool) {
    let mut entries = Entries::new();
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Map<String, Value>>(bytes) else {
        return (entries, true);
    };
    if doc.get("schema").and_then(Value::as_u64) != Some(CACHE_SCHEMA) {
        return (entries, true);
    }
    let Some(Value::Object(envs)) = doc.remove("envs") else {
        return (entries, true);
    };
    let mut dirty = false;
    for (name, entry) in envs {
        match Entry::deserialize(entry) {
            Ok(entry) => {
                entries.insert(name, entry);
            }
            Err(_) => dirty = true,
        }
    }
    (entries, dirty)
}

#[derive(Serialize)]
struct DocumentOut<'a> {
    schema: u64,
    tool: &'static str,
    envs: &'a Entries,
}

pub fn to_bytes(entries: &Entries) -> Vec<u8> {
    let doc = DocumentOut {
        schema: CACHE_SCHEMA,
        tool: concat!("penv-guard ", env!("CARGO_PKG_VERSION")),
        envs: entries,
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("the cache serializes");
    bytes.push(b'\n');
    bytes
}

/// The links file beside the cache at `cache_path`.
fn links_path(cache_path: &Path) -> PathBuf {
    cache_path.with_file_name(LINKS_FILE)
}

/// One env's links as the links file keeps them, with the key of the walk that found them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredLinks {
    key: Option<String>,
    links: Vec<Link>,
}

#[derive(Serialize, Deserialize)]
struct LinksDocument {
    schema: u64,
    envs: BTreeMap<String, StoredLinks>,
}

/// The links file's lists; anything unreadable or of another schema is none (a miss of the
/// deduplication only, never an error).
fn load_links(cache_path: &Path) -> BTreeMap<String, StoredLinks> {
    fsutil::read_capped(&links_path(cache_path), fsutil::OWN_FILE_CAP, Follow::Never)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<LinksDocument>(&bytes).ok())
        .filter(|doc| doc.schema == CACHE_SCHEMA)
        .map(|doc| doc.envs)
        .unwrap_or_default()
}

/// Fills in the links of `entries` (name and entry) read from the cache, from the links file,
/// when two or more of them have links: only then can one inode be counted twice in a total.
/// A list walked under another key than its entry's is not used.
pub fn attach_links<'a>(
    cache_path: &Path,
    entries: impl IntoIterator<Item = (&'a str, &'a mut Entry)>,
) {
    let mut missing: Vec<(&str, &mut Entry)> =
        entries.into_iter().filter(|(_, e)| e.linked > 0).collect();
    if missing.len() < 2 || missing.iter().all(|(_, e)| !e.links.is_empty()) {
        return;
    }
    let mut stored = load_links(cache_path);
    for (name, entry) in &mut missing {
        if entry.links.is_empty()
            && let Some(found) = stored.remove(*name)
            && found.key == entry.key
        {
            entry.links = found.links;
        }
    }
}

/// Stores `updates` at `cache_path`, merged into what is on disk now and pruned to the `known`
/// env names, under a non-blocking lock. `env_dirs` are all the project's env dirs: the cache is
/// never written inside one. Returns whether the file was written (a busy lock is `Ok(false)`,
/// not worth a message), or why not.
pub fn store(
    cache_path: &Path,
    env_dirs: &[PathBuf],
    known: &[String],
    updates: &Entries,
) -> Result<bool, String> {
    let cache_dir = cache_path.parent().expect("the cache path has a parent");
    if env_dirs
        .iter()
        .any(|dir| cache_dir.starts_with(resolve_env_dir(dir)))
    {
        return Err(format!(
            "the cache {} would be inside an env directory",
            cache_path.display()
        ));
    }
    fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let lock_path = cache_dir.join(LOCK_FILE);
    let lock = fsutil::open_lock_file(&lock_path)
        .map_err(|why| format!("{}: {why}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(false),
        Err(fs::TryLockError::Error(e)) => return Err(format!("{}: {e}", lock_path.display())),
    }
    let mut entries = match load(cache_path) {
        Loaded::Foreign(why) => return Err(why),
        loaded => loaded.into_entries(),
    };
    fsutil::sweep_temp_files(cache_dir);
    entries.retain(|name, _| known.contains(name));
    for (name, entry) in updates {
        entries.insert(name.clone(), entry.clone());
    }
    // The links first: a crash between the two writes leaves lists whose keys the old entries
    // do not have, which are then not used.
    let old_links = load_links(cache_path);
    let mut links: BTreeMap<String, StoredLinks> = old_links
        .iter()
        .filter(|(name, l)| {
            entries
                .get(*name)
                .is_some_and(|e| e.linked > 0 && e.key == l.key)
        })
        .map(|(name, l)| (name.clone(), l.clone()))
        .collect();
    for (name, entry) in updates.iter().filter(|(_, e)| !e.links.is_empty()) {
        let list = StoredLinks {
            key: entry.key.clone(),
            links: entry.links.clone(),
        };
        links.insert(name.clone(), list);
    }
    if links != old_links {
        let doc = LinksDocument {
            schema: CACHE_SCHEMA,
            envs: links,
        };
        let path = links_path(cache_path);
        let bytes = serde_json::to_vec(&doc).expect("the links serialize");
        fsutil::write_atomic(&path, &bytes, false)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    fsutil::write_atomic(cache_path, &to_bytes(&entries), false)
        .map_err(|e| format!("{}: {e}", cache_path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::key::{refresh_with, tests::env_dir};
    use crate::size::walk::walk_tree;
    use serde_json::json;

    #[test]
    fn cache_round_trips_and_rejects_bad_content() {
        let (_tmp, env) = env_dir();
        let now = fsutil::now_ns() + 3_600_000_000_000;
        let entry = refresh_with(&env, None, false, now, &mut walk_tree).unwrap();
        let entries = BTreeMap::from([("esp32dev".to_owned(), entry)]);
        assert_eq!(parse(&to_bytes(&entries)), (entries.clone(), false));
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
            let doc = json!({"schema": CACHE_SCHEMA, "envs": {"esp32dev": e, "other": good}});
            let (parsed, dirty) = parse(doc.to_string().as_bytes());
            assert!(dirty, "{bad}");
            assert_eq!(parsed.keys().collect::<Vec<_>>(), ["other"], "{bad}");
        }
        for doc in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"schema\": 1, \"envs\": {}}",
            b"{\"schema\": 2, \"envs\": {}}",
            b"{\"schema\": 4, \"envs\": {}}",
            b"{\"schema\": \"1\", \"envs\": {}}",
            b"{\"schema\": 3, \"envs\": []}",
            b"{\"envs\": {}}",
        ] {
            let (parsed, dirty) = parse(doc);
            assert!(parsed.is_empty() && dirty);
        }
        let bytes = to_bytes(&entries);
        assert!(parse(&bytes[..bytes.len() / 2]).0.is_empty());
    }

    #[test]
    fn the_typed_and_the_tolerant_parse_agree() {
        let (_tmp, env) = env_dir();
        let now = fsutil::now_ns() + 3_600_000_000_000;
        let entry = refresh_with(&env, None, false, now, &mut walk_tree).unwrap();
        let good = serde_json::to_value(&entry).unwrap();
        let docs = [
            to_bytes(&BTreeMap::from([("a".to_owned(), entry)])),
            json!({"schema": CACHE_SCHEMA, "envs": {"a": good, "b": good}, "extra": [1]})
                .to_string()
                .into_bytes(),
            json!({"schema": CACHE_SCHEMA, "envs": {}})
                .to_string()
                .into_bytes(),
            json!({"schema": 3.0, "envs": {"a": good}})
                .to_string()
                .into_bytes(),
            json!([1, {"a": good}]).to_string().into_bytes(),
            json!({"envs": {"a": good}, "schema": 3, "schema ": 4})
                .to_string()
                .into_bytes(),
            br#"{"schema": 3, "envs": {"a": 1}, "schema": 3}"#.to_vec(),
            b"  {\"schema\": 2, \"envs\": {}} trailing".to_vec(),
        ];
        for doc in docs {
            assert_eq!(
                parse(&doc),
                parse_tolerant(&doc),
                "{}",
                String::from_utf8_lossy(&doc)
            );
        }
    }

    fn linked_entry(key: &str, links: Vec<Link>) -> Entry {
        let mut entry = Entry::cleared("/p".into(), 1);
        entry.key = Some(key.into());
        entry.linked = links.len() as u64;
        entry.links = links;
        entry
    }

    #[test]
    fn the_main_file_keeps_only_the_number_of_links_and_they_are_attached_under_their_key() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("build-size.json");
        let many: Vec<Link> = (0..1000).map(|i| Link(1, i, 4096, 4096)).collect();
        let updates = Entries::from([
            ("a".to_owned(), linked_entry("ka", many.clone())),
            (
                "b".to_owned(),
                linked_entry("kb", vec![Link(1, 7, 10, 4096)]),
            ),
            ("c".to_owned(), linked_entry("kc", Vec::new())),
        ]);
        let known = ["a", "b", "c"].map(str::to_owned);
        assert_eq!(store(&cache, &[], &known, &updates), Ok(true));
        let main = fs::read(&cache).unwrap();
        assert!(main.len() < 2048, "{} bytes", main.len());
        let mut entries = load(&cache).into_entries();
        assert_eq!(entries["a"].linked, 1000);
        assert!(entries.values().all(|e| e.links.is_empty()));
        // One linked env alone needs no links: none are read.
        attach_links(
            &cache,
            entries
                .iter_mut()
                .filter(|(n, _)| *n != "b")
                .map(|(n, e)| (n.as_str(), e)),
        );
        assert!(entries["a"].links.is_empty());
        attach_links(&cache, entries.iter_mut().map(|(n, e)| (n.as_str(), e)));
        assert_eq!(entries["a"].links, many);
        assert_eq!(entries["b"].links, [Link(1, 7, 10, 4096)]);
        // A list walked under another key (a crash between the writes) is not used.
        let mut stale = load(&cache).into_entries();
        stale.get_mut("b").unwrap().key = Some("other".into());
        attach_links(&cache, stale.iter_mut().map(|(n, e)| (n.as_str(), e)));
        assert_eq!(stale["a"].links, many);
        assert!(stale["b"].links.is_empty());
        // Pruned with its env.
        store(&cache, &[], &known[..1], &Entries::new()).unwrap();
        assert_eq!(load_links(&cache).keys().collect::<Vec<_>>(), ["a"]);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_at_the_cache_and_lock_paths_are_foreign_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("build-size.json");
        assert_eq!(load(&cache), Loaded::Missing);
        std::os::unix::fs::symlink("/dev/zero", &cache).unwrap();
        assert!(matches!(load(&cache), Loaded::Foreign(why) if why.contains("a symlink")));
        let stored = store(&cache, &[], &[], &Entries::new());
        assert!(stored.unwrap_err().contains("a symlink"));
        assert!(fs::symlink_metadata(&cache).unwrap().is_symlink(), "kept");

        let lock = tmp.path().join(LOCK_FILE);
        fs::remove_file(&cache).unwrap();
        fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink("/dev/null", &lock).unwrap();
        assert!(store(&cache, &[], &[], &Entries::new()).is_err());
        assert!(!cache.exists(), "not written without the lock");
        fs::remove_file(&lock).unwrap();
        assert_eq!(store(&cache, &[], &[], &Entries::new()), Ok(true));
        assert!(matches!(load(&cache), Loaded::File { dirty: false, .. }));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_cache_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            proptest::prop_assert_eq!(parse(&bytes), parse_tolerant(&bytes));
        }
    }
}
