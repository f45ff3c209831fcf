//! The cross-process lock around check-then-install: an exclusive advisory lock (flock on Unix,
//! `LockFileEx` on Windows, through `std::fs::File::try_lock`) on `<penv>.penv-guard.lock`,
//! beside the penv so that deleting the penv cannot delete the lock.
//!
//! Invariants:
//! - The lock file is never deleted and never written. Deleting it would let a waiter holding the
//!   old inode and a newcomer creating a new one both "hold" the lock (PlatformIO's race).
//! - It is opened without following a symlink and must be a regular file: a dangling symlink
//!   there never makes penv-guard create a file somewhere else.
//! - A child that changes the penv inherits the lock's open file (see `process`), so the lock is
//!   held until that child is gone, even if penv-guard itself is killed.
//! - It is not uv's `<venv>/.lock`: our child `uv pip install` takes that one itself.
//! - The kernel releases the lock when its holder dies, so there is no staleness heuristic.
//! - Who holds it (pid, command, since when) is kept in a separate file, `<penv>.penv-guard.holder`,
//!   written after the lock is taken and removed before it is released; it is only ever
//!   informational, and a record naming a process that no longer exists is ignored.
//! - The deadline is enforced outside the locking syscall (a helper thread blocks in flock, the
//!   caller waits on a channel), because flock on network filesystems can hang even when
//!   non-blocking, and because a blocked flock is woken at once when the holder releases.
//! - A filesystem that cannot lock is an error unless the caller opts out (`--allow-unlocked`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{self, Follow, ReadError};

#[derive(Debug)]
pub struct PenvLock {
    file: Option<File>,
    holder_path: PathBuf,
    pub waited: Duration,
}

impl PenvLock {
    /// The locked file, for a child that must keep the lock while it runs.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Makes this lock a companion of the one handed to children as stdin: every child that
    /// keeps the penv lock (see `process`) also inherits this file while it runs, so on Unix a
    /// killed penv-guard's `uv pip install` keeps both locks until it is gone. (Windows releases
    /// a `LockFileEx` lock with its process; there the children die with penv-guard instead.)
    pub fn keep_for_children(&self) {
        #[cfg(unix)]
        if let Some(file) = self.file.as_ref().and_then(|f| f.try_clone().ok()) {
            companions().push(file);
        }
    }
}

#[cfg(unix)]
fn companions() -> std::sync::MutexGuard<'static, Vec<File>> {
    static COMPANIONS: std::sync::Mutex<Vec<File>> = std::sync::Mutex::new(Vec::new());
    COMPANIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spawns a child that keeps the penv lock: the companion locks are inheritable only during this
/// spawn, so children that do not change the penv (the import check) never hold them.
pub fn spawn_holding(command: &mut std::process::Command) -> io::Result<std::process::Child> {
    #[cfg(unix)]
    {
        let companions = companions();
        for file in companions.iter() {
            rustix::io::fcntl_setfd(file, rustix::io::FdFlags::empty())?;
        }
        let child = command.spawn();
        for file in companions.iter() {
            let _ = rustix::io::fcntl_setfd(file, rustix::io::FdFlags::CLOEXEC);
        }
        child
    }
    #[cfg(not(unix))]
    command.spawn()
}

impl Drop for PenvLock {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(file) = &self.file {
            companions().retain(|c| !same_open_file(c, file));
        }
        // Still locked here: the record goes before the lock does.
        if self.file.is_some() {
            crate::process::set_holder_record(None);
            let _ = std::fs::remove_file(&self.holder_path);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub since_unix: u64,
    /// Not recorded: found when the record is read (a holder stopped by Ctrl-Z or SIGSTOP keeps
    /// the lock until it is continued or killed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

impl Holder {
    fn current() -> Holder {
        Holder {
            pid: std::process::id(),
            command: crate::messages::command_line(),
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            stopped: false,
        }
    }

    /// The recorded holder, if the record is readable and names a process that still exists.
    pub fn read(path: &Path) -> Option<Holder> {
        let bytes = fsutil::read_capped(path, 64 << 10, Follow::Never).ok()?;
        let mut holder: Holder = serde_json::from_slice(&bytes).ok()?;
        holder.stopped = process_stopped(holder.pid);
        process_exists(holder.pid).then_some(holder)
    }

    pub fn describe(holder: Option<&Holder>) -> String {
        match holder {
            Some(h) => {
                let since_ns = i64::try_from(h.since_unix)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000_000);
                let age = crate::messages::human_age(fsutil::now_ns().saturating_sub(since_ns));
                let stopped = if h.stopped {
                    format!(
                        "; it is STOPPED (Ctrl-Z or SIGSTOP) and keeps the lock until it is \
                         continued (`fg`, `kill -CONT {}`) or ended",
                        h.pid
                    )
                } else {
                    String::new()
                };
                format!("pid {} `{}` (taken {age}{stopped})", h.pid, h.command)
            }
            None => "an unknown process".to_owned(),
        }
    }
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    use rustix::process::{Pid, test_kill_process};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    // EPERM: it exists, under another user.
    !matches!(test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

#[cfg(not(unix))]
fn process_exists(_: u32) -> bool {
    true
}

/// Whether the process is stopped (state `T`, or `t` under a tracer, in `/proc/<pid>/stat`).
/// Only Linux tells this without privileges; elsewhere it is never claimed.
#[cfg(target_os = "linux")]
fn process_stopped(pid: u32) -> bool {
    fsutil::read_capped(
        Path::new(&format!("/proc/{pid}/stat")),
        4096,
        Follow::Symlinks,
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

#[cfg(not(target_os = "linux"))]
fn process_stopped(_: u32) -> bool {
    false
}

pub enum Probe {
    Free,
    Held(Option<Holder>),
    Unsupported(io::Error),
    /// Something other than a regular file is at the lock path (the next miss fails on it).
    NotAFile(String),
}

/// Whether the lock is free now, without keeping it.
pub fn probe(lock_path: &Path, holder_path: &Path) -> Probe {
    if let Some(kind) = not_a_file(lock_path) {
        return Probe::NotAFile(not_a_file_message(lock_path, kind));
    }
    let Ok(file) = fsutil::open_regular(lock_path, Follow::Never) else {
        return Probe::Free;
    };
    match file.try_lock() {
        Ok(()) => Probe::Free,
        Err(std::fs::TryLockError::WouldBlock) => Probe::Held(Holder::read(holder_path)),
        Err(std::fs::TryLockError::Error(e)) => Probe::Unsupported(e),
    }
}

pub struct LockRequest<'a> {
    pub lock_path: &'a Path,
    pub holder_path: &'a Path,
    pub timeout: Duration,
    pub allow_unlocked: bool,
    pub quiet: bool,
}

pub fn acquire(request: &LockRequest<'_>) -> Result<PenvLock> {
    let start = Instant::now();
    let mut announced = false;
    let file = loop {
        let Some(file) = lock_once(request, start, &mut announced)? else {
            return Ok(PenvLock {
                file: None,
                holder_path: request.holder_path.to_path_buf(),
                waited: Duration::ZERO,
            });
        };
        // A lock file deleted (and perhaps recreated) while we waited is not the lock the next
        // process will take: only the file that is still at the path counts.
        if is_still_at(&file, request.lock_path) {
            break file;
        }
    };
    // Informational only; a failure to record the holder must not fail the install, and
    // something else at its path (a FIFO, a directory) is never replaced.
    let foreign = fs::symlink_metadata(request.holder_path).is_ok_and(|m| !m.is_file());
    if !foreign
        && let Ok(bytes) = serde_json::to_vec(&Holder::current())
        && fsutil::write_atomic(request.holder_path, &bytes, false).is_ok()
    {
        crate::process::set_holder_record(Some(request.holder_path.to_path_buf()));
    }
    Ok(PenvLock {
        file: Some(file),
        holder_path: request.holder_path.to_path_buf(),
        waited: start.elapsed(),
    })
}

/// One attempt: open the file at the lock path and lock it within what is left of the timeout.
/// `None`: the filesystem cannot lock and the caller allowed that (`--allow-unlocked`).
fn lock_once(
    request: &LockRequest<'_>,
    start: Instant,
    announced: &mut bool,
) -> Result<Option<File>> {
    let file = open(request.lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::Error(e)) => unsupported(request, e),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = Holder::read(request.holder_path);
            if !request.quiet && !*announced {
                crate::messages::say(format_args!(
                    "waiting for the penv lock {} held by {}; timeout {}s (PENV_GUARD_LOCK_TIMEOUT)",
                    request.lock_path.display(),
                    Holder::describe(holder.as_ref()),
                    request.timeout.as_secs_f64()
                ));
                *announced = true;
            }
            match wait_for(file, request.timeout.saturating_sub(start.elapsed())) {
                Ok(file) => Ok(Some(file)),
                Err(WaitError::Timeout) => {
                    let holder = Holder::read(request.holder_path).or(holder);
                    Err(Error::LockTimeout {
                        path: request.lock_path.to_path_buf(),
                        seconds: request.timeout.as_secs_f64(),
                        holder: Holder::describe(holder.as_ref()),
                    })
                }
                Err(WaitError::Io(e)) => unsupported(request, e),
            }
        }
    }
}

#[cfg(unix)]
fn same_open_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(unix)]
fn is_still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(open), Ok(at_path)) => (open.dev(), open.ino()) == (at_path.dev(), at_path.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_still_at(_: &File, path: &Path) -> bool {
    path.is_file()
}

/// What is at `path` when it exists and is not a regular file (a FIFO, a directory, a symlink).
fn not_a_file(path: &Path) -> Option<&'static str> {
    fs::symlink_metadata(path)
        .ok()
        .map(|m| m.file_type())
        .filter(|kind| !kind.is_file())
        .map(fsutil::kind_name)
}

/// The one message for anything but a regular file at the lock path, for `ensure` (exit 2) and
/// `status` alike.
pub fn not_a_file_message(path: &Path, kind: &str) -> String {
    format!(
        "the lock file {} is {kind}, not a regular file; penv-guard does not follow or replace \
         it (remove it)",
        path.display()
    )
}

/// Opens (creating if needed) the lock file: never through a symlink, never a special file,
/// never blocking on open. New files follow the umask. Whatever is at the path instead (a FIFO,
/// a directory, which opening for writing refuses with its own error) is bad input, exit 2.
fn open(path: &Path) -> Result<File> {
    if let Some(kind) = not_a_file(path) {
        return Err(Error::Usage(not_a_file_message(path, kind)));
    }
    fsutil::open_lock_file(path).map_err(|e| match e {
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Error::LockPermission {
                path: path.to_path_buf(),
                owner: owner_of(path),
            }
        }
        ReadError::NotRegular(kind) => Error::Usage(not_a_file_message(path, kind)),
        ReadError::Io(e) => Error::io("open the lock file", path, e),
        other => Error::io(
            "open the lock file",
            path,
            std::io::Error::other(other.to_string()),
        ),
    })
}

#[cfg(unix)]
fn owner_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path)
        .ok()
        .or_else(|| fs::metadata(path.parent()?).ok())
        .map(|m| m.uid())
}

#[cfg(not(unix))]
fn owner_of(_: &Path) -> Option<u32> {
    None
}

fn unsupported(request: &LockRequest<'_>, e: io::Error) -> Result<Option<File>> {
    if request.allow_unlocked {
        if !request.quiet {
            crate::messages::say(format_args!(
                "warning: cannot lock {} ({e}); continuing unlocked (--allow-unlocked)",
                request.lock_path.display()
            ));
        }
        return Ok(None);
    }
    Err(Error::LockUnsupported {
        path: PathBuf::from(request.lock_path),
        source: e,
    })
}

enum WaitError {
    Timeout,
    Io(io::Error),
}

/// Waits for the lock with a blocking `flock` on a helper thread (the kernel wakes it the moment
/// the holder releases: no polling delay when many waiters queue up), while this thread waits at
/// most `timeout` for it. A waiter that gives up leaves the helper blocked until the process
/// exits; if it gets the lock after all, the file (and the lock) drops with the unsent message.
fn wait_for(file: File, timeout: Duration) -> Result<File, WaitError> {
    if timeout.is_zero() {
        return Err(WaitError::Timeout);
    }
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(file.lock().map(|()| file));
    });
    match receiver.recv_timeout(timeout) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(WaitError::Io(e)),
        Err(_) => Err(WaitError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_described_with_its_age_in_words() {
        let since_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 300;
        let holder = Holder {
            pid: 777,
            command: "pio run".to_owned(),
            since_unix,
            stopped: false,
        };
        assert_eq!(
            Holder::describe(Some(&holder)),
            "pid 777 `pio run` (taken 5 min ago)"
        );
        assert_eq!(Holder::describe(None), "an unknown process");
    }
}
