//! File access with the rules every path penv-guard opens must follow.
//!
//! - Reads never block and never exhaust memory: files are opened non-blocking, must be regular
//!   files (a FIFO, device, socket or directory is refused before any read), and are read up to a
//!   cap. penv-guard's own files are also opened without following a symlink.
//! - Writes are atomic: a temp file in the same directory, then rename. The rename replaces a
//!   symlink at the destination instead of writing through it. New files follow the umask, as
//!   uv's own files do, so a penv shared by several users stays readable by them.
//! - Timestamps are read in nanoseconds and saturate instead of overflowing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The prefix of penv-guard's temp files; [`sweep_temp_files`] removes stale ones.
pub const TEMP_PREFIX: &str = ".penv-guard-tmp-";

/// Caps for what penv-guard reads: its own small files, and metadata files of a distribution.
pub const OWN_FILE_CAP: u64 = 4 << 20;
pub const FOREIGN_FILE_CAP: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// penv-guard's own files: a symlink there is refused, never followed.
    Never,
    /// Files of the venv or a distribution: a symlink is followed to a regular file.
    Symlinks,
}

#[derive(Debug)]
pub enum ReadError {
    Missing,
    NotRegular(&'static str),
    TooLarge(u64),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => f.write_str("missing"),
            ReadError::NotRegular(kind) => write!(f, "not a regular file but {kind}"),
            ReadError::TooLarge(cap) => write!(f, "larger than {cap} bytes"),
            ReadError::Io(e) => write!(f, "unreadable: {e}"),
        }
    }
}

#[cfg(unix)]
fn open_flags(follow: Follow) -> i32 {
    use rustix::fs::OFlags;
    let mut flags = OFlags::NONBLOCK | OFlags::CLOEXEC;
    if follow == Follow::Never {
        flags |= OFlags::NOFOLLOW;
    }
    i32::try_from(flags.bits()).unwrap_or(0)
}

/// Opens `path` for reading without blocking; `Err(NotRegular)` for anything but a regular file.
pub fn open_regular(path: &Path, follow: Follow) -> Result<File, ReadError> {
    open_regular_sized(path, follow).map(|(file, _)| file)
}

/// [`open_regular`], and the file's length when it was opened.
fn open_regular_sized(path: &Path, follow: Follow) -> Result<(File, u64), ReadError> {
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    options.custom_flags(open_flags(follow));
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) if is_symlink_refusal(&e, follow) => return Err(ReadError::NotRegular("a symlink")),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let meta = file.metadata().map_err(ReadError::Io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(kind_name(kind)));
    }
    Ok((file, meta.len()))
}

fn is_symlink_refusal(e: &io::Error, follow: Follow) -> bool {
    #[cfg(unix)]
    {
        follow == Follow::Never && e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = (e, follow);
        false
    }
}

pub fn kind_name(kind: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symlink"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Opens (creating it if needed) one of penv-guard's lock files for reading and writing: never
/// through a symlink (`NotRegular("a symlink")`), never blocking, only a regular file, new files
/// following the umask. The file is never written; it only carries an flock.
pub fn open_lock_file(path: &Path) -> Result<File, ReadError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o666).custom_flags(open_flags(Follow::Never));
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if is_symlink_refusal(&e, Follow::Never) => {
            return Err(ReadError::NotRegular("a symlink"));
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    let kind = file.metadata().map_err(ReadError::Io)?.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(kind_name(kind)));
    }
    Ok(file)
}

/// The whole content of a regular file, at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64, follow: Follow) -> Result<Vec<u8>, ReadError> {
    let (file, len) = open_regular_sized(path, follow)?;
    // Sized from the length (plus one byte to see the end, or growth past the cap): one read
    // instead of a doubling series of small ones.
    let expected = usize::try_from(len.min(cap)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(expected.saturating_add(1));
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(bytes)
}

/// A file the user named (`-r FILE`, `--deps-json FILE`): a regular file, or a pipe or FIFO
/// (`-r <(…)` works; a FIFO nobody writes to reads as empty instead of blocking the open), at
/// most `cap` bytes. A directory, a device (`/dev/zero`) or a socket is refused.
pub fn read_user_file(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    options.custom_flags(open_flags(Follow::Symlinks));
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let kind = file.metadata().map_err(ReadError::Io)?.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if !(kind.is_file() || kind.is_fifo()) {
            return Err(ReadError::NotRegular(kind_name(kind)));
        }
        // Opened without blocking; read blocking, so a pipe's writer is waited for.
        rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
            .map_err(|e| ReadError::Io(e.into()))?;
    }
    #[cfg(not(unix))]
    if !kind.is_file() {
        return Err(ReadError::NotRegular(kind_name(kind)));
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(bytes)
}

/// A venv or distribution file as text (lossy), `None` when it cannot be read as a regular file.
pub fn read_foreign_text(path: &Path) -> Option<String> {
    read_capped(path, FOREIGN_FILE_CAP, Follow::Symlinks)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes `bytes` to `path` atomically. `durable` adds an fsync before the rename (the state);
/// caches whose loss only costs a recomputation skip it.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut temp = builder.tempfile_in(dir)?;
    temp.write_all(bytes)?;
    if durable {
        temp.as_file().sync_all()?;
    }
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::before_rename(path, temp)?;
    #[cfg(not(feature = "test-hooks"))]
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes temp files a crashed writer left in `dir` (older than a minute, so a live writer's
/// file is never taken). Only regular files with penv-guard's prefix are touched.
pub fn sweep_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let cutoff = SystemTime::now() - Duration::from_secs(60);
    for entry in entries.flatten() {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        let old_file = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.modified().is_ok_and(|t| t < cutoff));
        if is_temp && old_file {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Modification time in nanoseconds since the epoch (saturating; never panics on odd times).
#[cfg(unix)]
pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    seconds_and_nanos(m.mtime(), m.mtime_nsec())
}

#[cfg(not(unix))]
pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.modified().map_or(0, system_time_ns)
}

#[cfg(unix)]
pub fn ctime_ns(m: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    seconds_and_nanos(m.ctime(), m.ctime_nsec())
}

#[cfg(not(unix))]
pub fn ctime_ns(m: &fs::Metadata) -> i64 {
    m.created().map_or(0, system_time_ns)
}

#[cfg(unix)]
pub fn seconds_and_nanos(seconds: i64, nanos: i64) -> i64 {
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

pub fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub fn now_ns() -> i64 {
    system_time_ns(SystemTime::now())
}

/// `path` with every symlink resolved, also when it does not exist yet: the deepest existing
/// ancestor is resolved and the missing rest appended. So a path names the same real place
/// before and after it is created (`fs::canonicalize` alone fails until then).
pub fn real_path(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            return missing
                .iter()
                .rev()
                .fold(real, |real, name| real.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(matches!(
            read_capped(&fifo, 10, Follow::Symlinks),
            Err(ReadError::NotRegular("a FIFO"))
        ));
        assert!(matches!(
            read_capped(dir.path(), 10, Follow::Symlinks),
            Err(ReadError::NotRegular("a directory"))
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(
            read_capped(&link, 10, Follow::Never),
            Err(ReadError::NotRegular("a symlink"))
        ));
        assert!(matches!(
            read_capped(&link, 10, Follow::Symlinks),
            Err(ReadError::NotRegular("a device"))
        ));
        let big = dir.path().join("big");
        fs::write(&big, [0u8; 11]).unwrap();
        assert!(matches!(
            read_capped(&big, 10, Follow::Never),
            Err(ReadError::TooLarge(10))
        ));
        assert_eq!(read_capped(&big, 11, Follow::Never).unwrap().len(), 11);
    }

    #[test]
    fn real_path_resolves_symlinks_before_the_path_exists() {
        let dir = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(dir.path()).unwrap().join("real-home");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("home");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let penv = link.join(".platformio/penv");
        let before = real_path(&penv);
        assert_eq!(before, real.join(".platformio/penv"));
        fs::create_dir_all(&penv).unwrap();
        assert_eq!(real_path(&penv), before);
        assert_eq!(fs::canonicalize(&penv).unwrap(), before);
    }

    #[test]
    fn atomic_writes_replace_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "keep").unwrap();
        let link = dir.path().join("state");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new", false).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(fs::read_to_string(&link).unwrap(), "new");
        assert!(!fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}
