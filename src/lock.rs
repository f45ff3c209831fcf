//! The cross-process lock around check-then-install: an exclusive advisory lock (flock on Unix,
//! `LockFileEx` on Windows, through `std::fs::File::try_lock`) on `<penv>.penv-guard.lock`,
//! beside the penv so that deleting the penv cannot delete the lock.
//!
//! Invariants:
//! - The lock file is never deleted and never written. Deleting it would let a waiter holding the
//!   old inode and a newcomer creating a new one both "hold" the lock (PlatformIO's race).
//! - It is opened without following a symlink and must be a regular file: a dangling symlink
//!   there never makes penv-guard create a file somewhere else.
//! - If penv-guard is killed, no install goes on without the lock (`os::process`): on Unix the
//!   child that changes the penv inherits the lock's open file and keeps the lock until it is
//!   gone; on Windows, where a lock dies with the process that took it, every child dies with
//!   penv-guard.
//! - It is not uv's `<venv>/.lock`: our child `uv pip install` takes that one itself.
//! - The kernel releases the lock when its holder dies, so there is no staleness heuristic.
//! - Who holds it (pid, command, since when) is kept in a separate file, `<penv>.penv-guard.holder`,
//!   written after the lock is taken and removed before it is released; it is only ever
//!   informational, and a record whose holder is gone is ignored (`os::lock::holder_alive`).
//! - A lock file deleted or replaced while a waiter waited is noticed by identity
//!   (`os::lock::is_same_file`): only the file still at the path is the lock.
//! - On a normal exit the lock is released explicitly after the record is removed
//!   (`os::lock::release`: Windows may delay the release at process end).
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
use crate::os;

#[derive(Debug)]
pub struct PenvLock {
    file: Option<File>,
    holder_path: PathBuf,
    /// Whether this process wrote the holder record (only then is it removed: whatever else is
    /// at that path is not penv-guard's).
    recorded: bool,
    /// Its entry among the locks children inherit with the one they get as stdin.
    companion: Option<usize>,
    /// How long another holder kept it; zero when it was free at once.
    pub waited: Duration,
}

impl PenvLock {
    /// The locked file, for a child that must keep the lock while it runs.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Makes this lock a companion of the one handed to children as stdin: every child that
    /// keeps the penv lock (see `process`) also inherits this file while it runs, so on Unix a
    /// killed penv-guard's `uv pip install` keeps both locks until it is gone. Windows releases a
    /// `LockFileEx` lock with the process that took it, whoever else has the file; there the
    /// children die with penv-guard instead (`os::process`), and nothing is registered.
    pub fn keep_for_children(&mut self) {
        if !os::lock::CHILDREN_KEEP_LOCKS || self.companion.is_some() {
            return;
        }
        if let Some(file) = self.file.as_ref().and_then(|f| f.try_clone().ok()) {
            let mut companions = companions();
            let token = companions.iter().map(|(t, _)| t + 1).max().unwrap_or(0);
            companions.push((token, file));
            self.companion = Some(token);
        }
    }
}

fn companions() -> std::sync::MutexGuard<'static, Vec<(usize, File)>> {
    static COMPANIONS: std::sync::Mutex<Vec<(usize, File)>> = std::sync::Mutex::new(Vec::new());
    COMPANIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `spawn` (a child that keeps the penv lock) with the companion locks inheritable, and
/// only then: children that do not change the penv (the import check) never hold them.
pub fn spawning_with_companions<T>(spawn: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let companions = companions();
    for (_, file) in companions.iter() {
        os::lock::set_inherited(file, true)?;
    }
    let spawned = spawn();
    for (_, file) in companions.iter() {
        let _ = os::lock::set_inherited(file, false);
    }
    spawned
}

impl Drop for PenvLock {
    fn drop(&mut self) {
        if let Some(token) = self.companion {
            companions().retain(|(t, _)| *t != token);
        }
        // Still locked here: the record goes before the lock does.
        if let Some(file) = &self.file {
            if self.recorded {
                crate::process::forget_holder_record(&self.holder_path);
                let _ = std::fs::remove_file(&self.holder_path);
            }
            os::lock::release(file);
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

    /// The recorded holder, if the record is readable and its holder is not known to be gone.
    pub fn read(path: &Path) -> Option<Holder> {
        let bytes = fsutil::read_capped(path, 64 << 10, Follow::Never).ok()?;
        let mut holder: Holder = serde_json::from_slice(&bytes).ok()?;
        holder.stopped = os::lock::holder_stopped(holder.pid);
        os::lock::holder_alive(holder.pid, path).then_some(holder)
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
        Ok(()) => {
            os::lock::release(&file);
            Probe::Free
        }
        Err(std::fs::TryLockError::WouldBlock) => Probe::Held(Holder::read(holder_path)),
        Err(std::fs::TryLockError::Error(e)) => Probe::Unsupported(e),
    }
}

pub struct LockRequest<'a> {
    pub lock_path: &'a Path,
    pub holder_path: &'a Path,
    pub timeout: Duration,
    pub allow_unlocked: bool,
    /// The lock inside the penv: where its filesystem cannot lock, the lock beside the penv
    /// still guards (as before that second lock existed), so that is a warning, not an error.
    pub second: bool,
    pub quiet: bool,
}

pub fn acquire(request: &LockRequest<'_>) -> Result<PenvLock> {
    let start = Instant::now();
    // Whether another process held the lock (and this one waited for it).
    let mut blocked = false;
    let file = loop {
        let Some(file) = lock_once(request, start, &mut blocked)? else {
            return Ok(PenvLock {
                file: None,
                holder_path: request.holder_path.to_path_buf(),
                recorded: false,
                companion: None,
                waited: Duration::ZERO,
            });
        };
        // A lock file deleted (and perhaps recreated) while we waited is not the lock the next
        // process will take: only the file that is still at the path counts.
        if os::lock::is_same_file(&file, request.lock_path) {
            break file;
        }
    };
    // Informational only; a failure to record the holder must not fail the install, and
    // something else at its path (a FIFO, a directory) is never replaced.
    let foreign = fs::symlink_metadata(request.holder_path).is_ok_and(|m| !m.is_file());
    let recorded = !foreign
        && serde_json::to_vec(&Holder::current())
            .is_ok_and(|bytes| fsutil::write_atomic(request.holder_path, &bytes, false).is_ok());
    if recorded {
        let mark = os::lock::mark_holder_record(request.holder_path);
        crate::process::add_holder_record(request.holder_path.to_path_buf(), mark);
    }
    Ok(PenvLock {
        file: Some(file),
        holder_path: request.holder_path.to_path_buf(),
        recorded,
        companion: None,
        waited: if blocked {
            start.elapsed()
        } else {
            Duration::ZERO
        },
    })
}

/// One attempt: open the file at the lock path and lock it within what is left of the timeout.
/// `None`: the filesystem cannot lock and the caller allowed that (`--allow-unlocked`).
fn lock_once(
    request: &LockRequest<'_>,
    start: Instant,
    blocked: &mut bool,
) -> Result<Option<File>> {
    let file = open(request.lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::Error(e)) => unsupported(request, e),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = Holder::read(request.holder_path);
            if !*blocked {
                if !request.quiet {
                    crate::messages::say(format_args!(
                        "waiting for the penv lock {} held by {}; timeout {}s \
                         (PENV_GUARD_LOCK_TIMEOUT)",
                        request.lock_path.display(),
                        Holder::describe(holder.as_ref()),
                        request.timeout.as_secs_f64()
                    ));
                }
                *blocked = true;
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
                owner: os::lock::owner_of(path),
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

fn unsupported(request: &LockRequest<'_>, e: io::Error) -> Result<Option<File>> {
    if request.second && !request.allow_unlocked {
        if !request.quiet {
            crate::messages::say(format_args!(
                "warning: cannot lock {} ({e}); only the lock beside the penv guards this \
                 install, so a peer sharing just the penv directory (another container) is not \
                 kept out",
                request.lock_path.display()
            ));
        }
        return Ok(None);
    }
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
