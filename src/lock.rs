//! The cross-process lock around check-then-install: an exclusive advisory lock (flock on Unix,
//! `LockFileEx` on Windows, through `std::fs::File::try_lock`) on `<penv>/.penv-guard.lock`.
//!
//! Invariants:
//! - The lock file is never deleted and never written. Deleting it would let a waiter holding the
//!   old inode and a newcomer creating a new one both "hold" the lock (PlatformIO's race).
//! - It is not uv's `<venv>/.lock`: our child `uv pip install` takes that one itself.
//! - The kernel releases the lock when its holder dies, so there is no staleness heuristic.
//! - Who holds it (pid, command, since when) is kept in a separate file, `.penv-guard.holder`,
//!   written after the lock is taken; it is only ever informational.
//! - The deadline is enforced outside the locking syscall (a helper thread polls, the caller waits
//!   on a channel), because flock on network filesystems can hang even when non-blocking.
//! - A filesystem that cannot lock is an error unless the caller opts out (`--allow-unlocked`).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

#[derive(Debug)]
pub struct PenvLock {
    _file: Option<File>,
    pub waited: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub since_unix: u64,
}

impl Holder {
    fn current() -> Holder {
        Holder {
            pid: std::process::id(),
            // args_os: a non-UTF-8 argument (a --penv path) must not panic here.
            command: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    pub fn read(path: &Path) -> Option<Holder> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn describe(holder: Option<&Holder>) -> String {
        match holder {
            Some(h) => {
                let since_ns = i64::try_from(h.since_unix)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000_000);
                let age = crate::messages::human_age(fsutil::now_ns().saturating_sub(since_ns));
                format!("pid {} `{}` (taken {age})", h.pid, h.command)
            }
            None => "an unknown process".to_owned(),
        }
    }
}

pub enum Probe {
    Free,
    Held(Option<Holder>),
    Unsupported(io::Error),
}

/// Whether the lock is free now, without keeping it.
pub fn probe(lock_path: &Path, holder_path: &Path) -> Probe {
    let Ok(file) = OpenOptions::new().read(true).write(true).open(lock_path) else {
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
    let file = open(request.lock_path)?;
    let file = match file.try_lock() {
        Ok(()) => file,
        Err(std::fs::TryLockError::Error(e)) => return unsupported(request, e),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = Holder::read(request.holder_path);
            if !request.quiet {
                eprintln!(
                    "penv-guard: waiting for the penv lock {} held by {}; timeout {}s (PENV_GUARD_LOCK_TIMEOUT)",
                    request.lock_path.display(),
                    Holder::describe(holder.as_ref()),
                    request.timeout.as_secs_f64()
                );
            }
            match wait_for(file, request.timeout) {
                Ok(file) => file,
                Err(WaitError::Timeout) => {
                    let holder = Holder::read(request.holder_path).or(holder);
                    return Err(Error::LockTimeout {
                        path: request.lock_path.to_path_buf(),
                        seconds: request.timeout.as_secs_f64(),
                        holder: Holder::describe(holder.as_ref()),
                    });
                }
                Err(WaitError::Io(e)) => return unsupported(request, e),
            }
        }
    };
    // Informational only; a failure to record the holder must not fail the install.
    let _ = fsutil::write_atomic(
        request.holder_path,
        &serde_json::to_vec(&Holder::current()).expect("holder serializes"),
        false,
    );
    Ok(PenvLock {
        _file: Some(file),
        waited: start.elapsed(),
    })
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open the lock file", path, e))
}

fn unsupported(request: &LockRequest<'_>, e: io::Error) -> Result<PenvLock> {
    if request.allow_unlocked {
        if !request.quiet {
            eprintln!(
                "penv-guard: warning: cannot lock {} ({e}); continuing unlocked (--allow-unlocked)",
                request.lock_path.display()
            );
        }
        return Ok(PenvLock {
            _file: None,
            waited: Duration::ZERO,
        });
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

fn wait_for(file: File, timeout: Duration) -> Result<File, WaitError> {
    if timeout.is_zero() {
        return Err(WaitError::Timeout);
    }
    let (sender, receiver) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_poller = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut delay = Duration::from_millis(5);
        loop {
            if stop_poller.load(Ordering::Relaxed) {
                return;
            }
            match file.try_lock() {
                Ok(()) => {
                    // If the waiter already gave up, the file (and lock) drops with the message.
                    let _ = sender.send(Ok(file));
                    return;
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    });
    let result = match receiver.recv_timeout(timeout) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(WaitError::Io(e)),
        Err(_) => Err(WaitError::Timeout),
    };
    stop.store(true, Ordering::Relaxed);
    result
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
        };
        assert_eq!(
            Holder::describe(Some(&holder)),
            "pid 777 `pio run` (taken 5 min ago)"
        );
        assert_eq!(Holder::describe(None), "an unknown process");
    }
}
