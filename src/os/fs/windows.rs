//! [`super`] on Windows: std's `OpenOptionsExt` for sharing and open flags, winapi-util for the
//! volume serial number and file index (stable std has neither), and retries where a rename or a
//! removal meets a file that someone else holds open.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::windows::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::stamp::Stamp;

const FILE_SHARE_READ: u32 = 0x1;
const FILE_SHARE_WRITE: u32 = 0x2;
const FILE_SHARE_DELETE: u32 = 0x4;
/// Opens a directory too (it is then refused as one, as on Unix, instead of "access denied").
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
/// Opens a symlink (a reparse point) itself instead of what it points to.
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;

const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SHARING_VIOLATION: i32 = 32;
const ERROR_LOCK_VIOLATION: i32 = 33;

/// Read-only, shared for reading, writing and deleting (a writer may replace the file while it
/// is read), a directory opened so that it can be refused as one, and a symlink opened itself
/// unless `follow_symlinks` (its metadata then says it is a symlink).
pub fn read_options(follow_symlinks: bool) -> OpenOptions {
    let mut flags = FILE_FLAG_BACKUP_SEMANTICS;
    if !follow_symlinks {
        flags |= FILE_FLAG_OPEN_REPARSE_POINT;
    }
    let mut options = OpenOptions::new();
    options
        .read(true)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(flags);
    options
}

/// A lock file's options on Windows: a symlink opened itself (and then refused), shared for
/// reading and writing but not deleting, so nobody deletes or renames a lock file while it is
/// open.
pub(super) fn lock_flags(options: &mut OpenOptions) {
    options
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
}

pub(super) fn new_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    options
}

/// What an open's error says is at `path`, when it is not a regular file: Windows answers
/// "access denied" for a directory opened for writing.
pub fn refusal(e: &io::Error, path: &Path, _follow_symlinks: bool) -> Option<&'static str> {
    (e.kind() == io::ErrorKind::PermissionDenied
        && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()))
    .then_some("a directory")
}

/// Windows has no FIFOs, devices or sockets in the file system.
pub fn special_kind(_kind: fs::FileType) -> Option<&'static str> {
    None
}

pub fn is_fifo(_kind: fs::FileType) -> bool {
    false
}

/// Files are opened blocking on Windows already.
pub fn set_blocking(_file: &File) -> io::Result<()> {
    Ok(())
}

pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.modified().map_or(0, super::system_time_ns)
}

/// 100 ns ticks since 1601 (a FILETIME) as nanoseconds since 1970.
fn filetime_ns(ticks: u64) -> i64 {
    const TICKS_1601_TO_1970: i64 = 116_444_736_000_000_000;
    i64::try_from(ticks)
        .unwrap_or(i64::MAX)
        .saturating_sub(TICKS_1601_TO_1970)
        .saturating_mul(100)
}

fn stamp_of_file(file: &File) -> Option<Stamp> {
    let info = winapi_util::file::information(file).ok()?;
    Some(Stamp {
        dev: info.volume_serial_number(),
        ino: info.file_index(),
        size: info.file_size(),
        mtime_ns: info.last_write_time().map_or(0, filetime_ns),
        ctime_ns: 0,
    })
}

/// The stamp of what `path` names, following symlinks: one open with no access rights (so no
/// other process's sharing mode stands in the way), as `fs::metadata` does.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let file = OpenOptions::new()
        .access_mode(0)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
        .ok()?;
    stamp_of_file(&file)
}

/// No relative stat on Windows: parts are stamped by their joined path.
pub enum DirHandle {}

pub fn open_dir(_path: &Path) -> Option<DirHandle> {
    None
}

pub fn stamp_at(dir: &DirHandle, _relative: &str) -> Option<Stamp> {
    match *dir {}
}

/// The apparent size stands in for the allocated one (no `st_blocks`).
pub fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    if meta.is_file() { meta.len() } else { 0 }
}

/// Every name counts, as in Explorer: a link count costs an open per file.
pub fn hard_link_id(_meta: &fs::Metadata) -> Option<(u64, u64)> {
    None
}

pub fn mode(_path: &Path) -> Option<u32> {
    None
}

pub fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Windows runs any regular file it can read as a program; the name decides, not a mode.
pub fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Whether another process holding the file explains the error (access denied while it is open
/// without delete sharing or pending deletion, a sharing or a lock violation).
fn is_held_elsewhere(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(ERROR_ACCESS_DENIED | ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION)
    )
}

/// The clock tick NTFS stamps last-write times with: the system time's update interval, 15.6 ms
/// by default (1 ms when a program raised the timer resolution). 10 ms, doubled by the racy
/// window, still covers the default tick.
pub fn timestamp_tick_ns() -> i64 {
    10_000_000
}

/// Runs `op`, again after 10 ms, 20 ms, … (ten retries, about 10 s in all) while it fails because
/// another process holds the file: an antivirus scan, or a reader that does not share deletion.
pub fn retrying<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut delay = Duration::from_millis(10);
    for _ in 0..10 {
        match op() {
            Err(e) if is_held_elsewhere(&e) => {
                tracing::debug!("{e}; retrying in {} ms", delay.as_millis());
                std::thread::sleep(delay);
                delay *= 2;
            }
            other => return other,
        }
    }
    op()
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    retrying(|| fs::remove_file(path))
}

/// Sets the mtime of a file or directory (tests age what they stamp).
#[cfg(test)]
pub fn set_modified(path: &Path, t: std::time::SystemTime) -> io::Result<()> {
    const FILE_WRITE_ATTRIBUTES: u32 = 0x100;
    OpenOptions::new()
        .access_mode(FILE_WRITE_ATTRIBUTES)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)?
        .set_modified(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_ticks_become_unix_nanoseconds() {
        assert_eq!(filetime_ns(116_444_736_000_000_000), 0);
        assert_eq!(filetime_ns(116_444_736_000_000_001), 100);
        assert_eq!(filetime_ns(0), i64::MIN);
        assert_eq!(filetime_ns(u64::MAX), i64::MAX);
    }

    /// Holds `path` open for reading without delete sharing (as an antivirus scan or Python's
    /// `open()` does) for a while, then lets go.
    fn held_for_a_while(path: &Path) -> std::thread::JoinHandle<()> {
        let file = OpenOptions::new()
            .read(true)
            .share_mode(FILE_SHARE_READ)
            .open(path)
            .unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(file);
        })
    }

    #[test]
    fn a_replace_or_removal_waits_for_a_reader_that_does_not_share_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state");
        fs::write(&target, b"old").unwrap();
        let reader = held_for_a_while(&target);
        let temp = super::super::temp_file(dir.path(), ".t-").unwrap();
        fs::write(temp.path(), b"new").unwrap();
        super::super::replace(temp.into_temp_path(), &target).unwrap();
        reader.join().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");

        let reader = held_for_a_while(&target);
        remove_file(&target).unwrap();
        reader.join().unwrap();
        assert!(!target.exists());
    }
}
