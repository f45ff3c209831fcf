//! Files, per OS: how penv-guard opens what it reads (never blocking; a symlink refused where it
//! must be; on Windows shared for reading, writing and deleting, so no reader blocks a writer), a
//! file's identity and times for stamps, Unix modes, sizes on disk, and replacing a file
//! atomically.
//!
//! Invariants:
//! - [`replace`] is a rename onto the target: readers see the old or the new file, never a mix.
//!   On Windows a rename fails while another process (a reader, an antivirus scan) holds the
//!   target without delete sharing; it is retried on access-denied, sharing and lock violations
//!   for about 10 s (uv's budget), as is [`remove_file`].
//! - A stamp is `[dev, ino, size, mtime_ns, ctime_ns]`: on Unix `st_dev`, `st_ino`, `st_size`,
//!   `st_mtime` and `st_ctime`; on Windows the volume serial number, the file index, the size
//!   and the last write time, with `ctime_ns` 0 (Windows has no change time a safe API reads, and
//!   its creation time is none: writes do not move it, and a file recreated under the same name
//!   within seconds gets the old one back, "tunnelling").
//! - Without Unix modes (Windows) a mode reads as `None` and setting one does nothing.

#[cfg_attr(unix, path = "fs/unix.rs")]
#[cfg_attr(windows, path = "fs/windows.rs")]
mod imp;

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub use imp::{
    DirHandle, allocated_bytes, hard_link_id, is_executable, is_fifo, mode, mtime_ns, open_dir,
    read_options, refusal, remove_file, retrying, set_blocking, set_mode, special_kind, stamp,
    stamp_at, timestamp_tick_ns,
};

#[cfg(test)]
pub use imp::set_modified;

/// Whether a stamp's device number belongs to a file's identity across runs: Windows' volume
/// serial does; a Unix `st_dev` need not (overlayfs gives every mount a new one).
pub const DEVICE_IDENTIFIES_FILES: bool = cfg!(windows);

/// A lock file: read and write, created but never truncated (see `lock_flags` per OS).
pub fn lock_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    imp::lock_flags(&mut options);
    options
}

/// A new temp file in `dir` whose name starts with `prefix`, for [`replace`]. New files follow
/// the umask on Unix; on Windows it is a plain file (no `FILE_ATTRIBUTE_TEMPORARY`, which a
/// rename would carry over to the target).
pub fn temp_file(dir: &Path, prefix: &str) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .make_in(dir, |path| imp::new_file_options().open(path))
}

/// Renames `temp` onto `target` (see the module's invariants); the temp file is removed if that
/// fails.
pub fn replace(mut temp: tempfile::TempPath, target: &Path) -> io::Result<()> {
    retrying(|| fs::rename(&temp, target))?;
    temp.disable_cleanup(true);
    Ok(())
}

pub fn seconds_and_nanos(seconds: i64, nanos: i64) -> i64 {
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Nanoseconds since the epoch (saturating; never panics on odd times).
pub fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_names_the_file_not_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"12345").unwrap();
        let first = stamp(&a).unwrap();
        assert_eq!(first.size, 5);
        assert_ne!(first.ino, 0, "a file has an identity");
        assert_eq!(stamp(&a), Some(first));
        // Another file of the same size and time at the same name is another file.
        let b = dir.path().join("b");
        fs::write(&b, b"54321").unwrap();
        let modified = fs::metadata(&a).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(&b)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        fs::rename(&b, &a).unwrap();
        let second = stamp(&a).unwrap();
        assert_eq!((second.size, second.mtime_ns), (first.size, first.mtime_ns));
        assert_ne!(second, first);
        assert_eq!(stamp(&dir.path().join("gone")), None);
    }

    #[test]
    fn replace_puts_the_new_content_in_place_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"old").unwrap();
        let temp = temp_file(dir.path(), ".t-").unwrap();
        fs::write(temp.path(), b"new").unwrap();
        replace(temp.into_temp_path(), &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
