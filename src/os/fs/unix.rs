//! [`super`] on Unix: rustix for open flags and `statat`, `MetadataExt` for stamps and modes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{
    FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;

use rustix::fs::OFlags;

use crate::stamp::Stamp;

fn flags(follow_symlinks: bool) -> i32 {
    let mut flags = OFlags::NONBLOCK | OFlags::CLOEXEC;
    if !follow_symlinks {
        flags |= OFlags::NOFOLLOW;
    }
    i32::try_from(flags.bits()).unwrap_or(0)
}

/// Read-only, non-blocking (a FIFO's open does not wait for a writer), close-on-exec, and
/// without following a symlink unless `follow_symlinks`.
pub fn read_options(follow_symlinks: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(flags(follow_symlinks));
    options
}

/// A lock file's options on Unix: created following the umask, never through a symlink, never
/// blocking.
pub(super) fn lock_flags(options: &mut OpenOptions) {
    options.mode(0o666).custom_flags(flags(false));
}

pub(super) fn new_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true).mode(0o666);
    options
}

/// What an open's error says is at `path`, when it is not a regular file: a symlink refused
/// (`ELOOP` without following), or a directory opened for writing (`EISDIR`).
pub fn refusal(e: &io::Error, _path: &Path, follow_symlinks: bool) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() && !follow_symlinks => {
            Some("a symlink")
        }
        Some(code) if code == rustix::io::Errno::ISDIR.raw_os_error() => Some("a directory"),
        _ => None,
    }
}

/// A FIFO, a device or a socket.
pub fn special_kind(kind: fs::FileType) -> Option<&'static str> {
    if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

pub fn is_fifo(kind: fs::FileType) -> bool {
    kind.is_fifo()
}

/// Makes reads of a file opened non-blocking block again (a pipe's writer is waited for).
pub fn set_blocking(file: &File) -> io::Result<()> {
    rustix::fs::fcntl_setfl(file, OFlags::empty()).map_err(Into::into)
}

pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    super::seconds_and_nanos(m.mtime(), m.mtime_nsec())
}

/// The stamp of what `path` names, following symlinks.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime_ns: mtime_ns(&m),
        ctime_ns: super::seconds_and_nanos(m.ctime(), m.ctime_nsec()),
    })
}

/// A directory opened once (`O_PATH`, Linux) so that its parts are stat'ed relative to it.
#[cfg(target_os = "linux")]
pub struct DirHandle(std::os::fd::OwnedFd);

#[cfg(not(target_os = "linux"))]
pub enum DirHandle {}

pub fn open_dir(path: &Path) -> Option<DirHandle> {
    #[cfg(target_os = "linux")]
    {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rustix::fs::open(path, flags, rustix::fs::Mode::empty())
            .ok()
            .map(DirHandle)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// The stamp of `relative` inside `dir`, following symlinks: what [`stamp`] gives for the
/// joined path.
pub fn stamp_at(dir: &DirHandle, relative: &str) -> Option<Stamp> {
    #[cfg(target_os = "linux")]
    {
        // `st_*time_nsec` is a u64 on 64-bit Linux and a u32 on 32-bit (armv7).
        fn ns(seconds: i64, nanos: impl TryInto<i64>) -> i64 {
            super::seconds_and_nanos(seconds, nanos.try_into().unwrap_or(0))
        }
        let stat = rustix::fs::statat(&dir.0, relative, rustix::fs::AtFlags::empty()).ok()?;
        Some(Stamp {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime_ns: ns(stat.st_mtime, stat.st_mtime_nsec),
            ctime_ns: ns(stat.st_ctime, stat.st_ctime_nsec),
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = relative;
        match *dir {}
    }
}

/// Blocks on disk (`st_blocks` × 512).
pub fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// `(dev, ino)` of a file with more than one name, so that it is counted once.
pub fn hard_link_id(meta: &fs::Metadata) -> Option<(u64, u64)> {
    (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()))
}

/// The permission bits (and setuid, setgid, sticky) of `path` itself, not following a symlink.
pub fn mode(path: &Path) -> Option<u32> {
    fs::symlink_metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The clock tick the kernel stamps file times with: on Linux the coarse realtime clock's
/// resolution (the jiffy, 1 to 10 ms), elsewhere 10 ms, coarser than macOS's and the BSDs' own.
#[cfg(target_os = "linux")]
pub fn timestamp_tick_ns() -> i64 {
    let res = rustix::time::clock_getres(rustix::time::ClockId::RealtimeCoarse);
    res.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(res.tv_nsec)
}

#[cfg(not(target_os = "linux"))]
pub fn timestamp_tick_ns() -> i64 {
    10_000_000
}

/// Runs `op` once: a rename or removal on Unix does not fail because a reader has the file open.
pub fn retrying<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    op()
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    fs::remove_file(path)
}

/// Sets the mtime of a file or directory (tests age what they stamp).
#[cfg(test)]
pub fn set_modified(path: &Path, t: std::time::SystemTime) -> io::Result<()> {
    File::open(path)?.set_modified(t)
}
