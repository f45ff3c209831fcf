//! The walk: what a build tree holds, counted as `du -s` counts it, in parallel.
//!
//! What is counted:
//! - **apparent** = Σ `len` of regular files.
//! - **allocated** = Σ `st_blocks × 512` of regular files and directories, the root included.
//!   This equals `du -s --block-size=1` on trees without symlinks.
//! - Hard links (`nlink > 1`) are counted once per walk, through a `(dev, ino)` set, also when two
//!   threads meet the same inode. Each walk also returns its linked inodes, so a project total can
//!   count them once across envs as well.
//! - Symlinks are never followed, except the root, which is resolved once (a build dir may be a
//!   symlink to a RAM disk). Symlinks and special files are `skipped`. Names are `OsStr`, so
//!   non-UTF-8 names are counted.
//!
//! How:
//! - Directories go through a shared queue served by up to 4 threads (`std::thread::scope`; a
//!   cold tree walks faster in parallel). Each thread counts into its own [`Walker`]; the results
//!   are merged at the end.
//! - Each directory is one `read_dir`, with `DirEntry::file_type()` (no syscall on ext4) and
//!   `DirEntry::metadata()` (an `lstat`). The type that counts is the `lstat`'s, in case the entry
//!   was replaced in between.
//! - **A walk never fails.** An entry that vanished (`ENOENT`) is counted in `vanished`, any other
//!   failure (`EACCES`, ...) in `errors`; either makes the totals [`WalkTotals::partial`], and a
//!   partial walk is never trusted as fresh (see `key.rs`).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Serialize};

use crate::os::fs::{allocated_bytes, hard_link_id};

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

    fn into_walked(self) -> Walked {
        Walked {
            totals: self.totals,
            links: self.links,
        }
    }

    /// Adds another thread's counts; its hard links already counted here are taken back out.
    fn merge(&mut self, other: Walker) {
        self.totals += other.totals;
        for link in other.links {
            if self.seen.insert((link.0, link.1)) {
                self.links.push(link);
            } else {
                self.totals.files -= 1;
                self.totals.apparent -= link.2;
                self.totals.allocated -= link.3;
            }
        }
    }
}

/// The walk itself (see the module doc): the root followed once, nothing below it.
pub fn walk_tree(root: &Path) -> Walked {
    let mut w = Walker::default();
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Walked::default(),
        Err(e) => {
            w.fail(&e);
            return w.into_walked();
        }
    };
    if !meta.is_dir() {
        if meta.is_file() {
            w.count_file(&meta);
        } else {
            w.totals.skipped += 1;
        }
        return w.into_walked();
    }
    w.count_dir(&meta);
    let queue = DirQueue::new(root.to_path_buf());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads)
            .map(|_| scope.spawn(|| walk_dirs(&queue, Walker::default())))
            .collect();
        let mut merged = walk_dirs(&queue, w);
        for worker in workers {
            merged.merge(worker.join().expect("walk thread"));
        }
        merged.into_walked()
    })
}

/// Directories still to read, and how many are being read (the walk ends when both are zero).
struct DirQueue {
    state: Mutex<(Vec<PathBuf>, usize)>,
    changed: Condvar,
}

impl DirQueue {
    fn new(root: PathBuf) -> DirQueue {
        DirQueue {
            state: Mutex::new((vec![root], 0)),
            changed: Condvar::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_counts_hard_links_once_and_skips_symlinks_and_fifos() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("big"), vec![0u8; 100_000]).unwrap();
        fs::write(root.join("a"), vec![1u8; 1000]).unwrap();
        fs::hard_link(root.join("a"), root.join("d").join("a2")).unwrap();
        // Symlinks need a privilege on Windows, and it has no FIFOs.
        #[cfg(unix)]
        let skipped = {
            use std::os::unix::fs::symlink;
            symlink(root.join("a"), root.join("to-file")).unwrap();
            symlink(&outside, root.join("to-outside")).unwrap();
            symlink(root.join("nowhere"), root.join("dangling")).unwrap();
            symlink(&root, root.join("d/loop")).unwrap();
            let status = std::process::Command::new("mkfifo")
                .arg(root.join("fifo"))
                .status();
            4 + u64::from(status.is_ok_and(|s| s.success()))
        };
        #[cfg(not(unix))]
        let skipped = 0;
        let w = walk_tree(&root);
        // Windows reads no link count (it would cost an open per file): every name counts.
        let names = if cfg!(unix) { 1 } else { 2 };
        assert_eq!(w.totals.apparent, 1000 * names);
        assert_eq!(w.totals.files, names);
        assert_eq!(w.totals.dirs, 2);
        assert_eq!(w.totals.skipped, skipped);
        assert!(!w.totals.partial());
        assert_eq!(w.links.len(), usize::from(cfg!(unix)));
        #[cfg(unix)]
        {
            // A symlinked root is followed once.
            let link_root = tmp.path().join("root-link");
            std::os::unix::fs::symlink(&root, &link_root).unwrap();
            assert_eq!(walk(&link_root), w.totals);
        }
        assert_eq!(walk(&tmp.path().join("missing")), WalkTotals::default());
    }

    #[test]
    fn walk_counts_non_utf8_names_and_sparse_files() {
        let tmp = tempfile::tempdir().unwrap();
        // A name that is not Unicode exists only on Linux here (Windows names are UTF-16, and
        // APFS refuses names that are not UTF-8).
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::ffi::OsStrExt;
            let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.o");
            fs::write(tmp.path().join(odd), b"12345").unwrap();
        }
        #[cfg(not(target_os = "linux"))]
        fs::write(tmp.path().join("caf\u{e9}.o"), b"12345").unwrap();
        let sparse = fs::File::create(tmp.path().join("sparse")).unwrap();
        sparse.set_len(50_000_000).unwrap();
        let w = walk(tmp.path());
        assert_eq!(w.files, 2);
        assert_eq!(w.apparent, 50_000_005);
        // Windows reports the apparent size for the allocated one (no `st_blocks`).
        #[cfg(unix)]
        assert!(w.allocated < 1_000_000, "sparse: {}", w.allocated);
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
    fn hard_links_met_by_two_threads_are_counted_once_when_merged() {
        let link = Link(1, 7, 1000, 4096);
        let one = |links: Vec<Link>| Walker {
            totals: WalkTotals {
                apparent: 1000,
                allocated: 4096,
                files: 1,
                ..WalkTotals::default()
            },
            seen: links.iter().map(|l| (l.0, l.1)).collect(),
            links,
        };
        let mut a = one(vec![link]);
        a.merge(one(vec![link]));
        assert_eq!((a.totals.files, a.totals.apparent), (1, 1000));
        assert_eq!(a.totals.allocated, 4096);
        assert_eq!(a.links, [link]);
    }
}
