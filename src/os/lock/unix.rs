//! Unix: file identity by (device, inode), liveness by `kill(pid, 0)`, uids from metadata.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use rustix::process::{Pid, test_kill_process};

pub fn is_same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(open), Ok(at_path)) => (open.dev(), open.ino()) == (at_path.dev(), at_path.ino()),
        _ => false,
    }
}

/// Nothing to keep: the pid is enough.
#[derive(Debug)]
pub struct RecordMark;

pub fn mark_holder_record(_: &Path) -> RecordMark {
    RecordMark
}

pub fn holder_alive(pid: u32, _: &Path) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    // EPERM: it exists, under another user.
    !matches!(test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

/// State `T` (or `t` under a tracer) in `/proc/<pid>/stat`, on Linux.
#[cfg(target_os = "linux")]
pub fn holder_stopped(pid: u32) -> bool {
    crate::fsutil::read_capped(
        Path::new(&format!("/proc/{pid}/stat")),
        4096,
        crate::fsutil::Follow::Symlinks,
    )
    .ok()
    .and_then(|bytes| {
        // `pid (comm) S …`: the command may hold spaces and parentheses, the state follows the
        // last `)`.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let state = text.rsplit_once(')')?.1.trim_start().chars().next()?;
        Some(matches!(state, 'T' | 't'))
    })
    .unwrap_or(false)
}

/// macOS and the BSDs tell a process's state only through sysctl/libproc: never claimed there.
#[cfg(not(target_os = "linux"))]
pub fn holder_stopped(_: u32) -> bool {
    false
}

/// The close releases the flock once every holder of the open file (a child with it as stdin
/// included) has closed it; unlocking here would release it under a child still running.
pub fn release(_: &File) {}

pub const CHILDREN_KEEP_LOCKS: bool = true;

pub fn set_inherited(file: &File, inherited: bool) -> std::io::Result<()> {
    let flags = if inherited {
        rustix::io::FdFlags::empty()
    } else {
        rustix::io::FdFlags::CLOEXEC
    };
    rustix::io::fcntl_setfd(file, flags).map_err(std::io::Error::from)
}

pub fn owner_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .or_else(|| fs::metadata(path.parent()?).ok())
        .map(|m| m.uid())
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "one signature on every OS; Windows has no uid"
)]
pub fn current_uid() -> Option<u32> {
    Some(rustix::process::getuid().as_raw())
}
