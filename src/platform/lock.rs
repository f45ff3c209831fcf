//! The platform lock (`<core>/.penv-guard-platform.lock`): `install` and `remove` run one after
//! another, each reading what the previous one wrote. The file is never deleted and never
//! written; anything but a regular file at its path is refused (exit 2), and a wait past the
//! timeout is exit 75.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::messages;

use super::{PLATFORM_LOCK, PLATFORM_LOCK_TIMEOUT};

/// Takes the platform lock (`<core>/.penv-guard-platform.lock`), so that concurrent `install`s
/// and `remove`s run one after another, each reading what the previous one wrote. Waits up to
/// `PENV_GUARD_LOCK_TIMEOUT` seconds (default 60), then exit 75. Held until the file is dropped.
pub(super) fn lock_platforms(core_dir: &Path) -> Result<fs::File> {
    let path = core_dir.join(PLATFORM_LOCK);
    let timeout = match std::env::var("PENV_GUARD_LOCK_TIMEOUT") {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "PENV_GUARD_LOCK_TIMEOUT={text:?} is not a number of seconds"
                ))
            })?,
        _ => PLATFORM_LOCK_TIMEOUT,
    };
    let file = fsutil::open_lock_file(&path).map_err(|e| match e {
        fsutil::ReadError::Io(e) => Error::io("open the platform lock", &path, e),
        other => Error::Usage(format!(
            "the platform lock {} is {other}; penv-guard does not follow or replace it (remove it)",
            path.display()
        )),
    })?;
    let start = Instant::now();
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        if start.elapsed() >= timeout {
            return Err(Error::PlatformLockTimeout {
                path,
                seconds: timeout.as_secs_f64(),
            });
        }
        if !announced {
            messages::say(format_args!(
                "waiting for another `penv-guard platform install` or `remove` (lock {})",
                path.display()
            ));
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
