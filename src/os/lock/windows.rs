//! Windows: file identity by (volume serial, file index) through same-file, holder liveness by
//! a share mode, an explicit unlock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::fs::OpenOptionsExt as _;
use std::path::Path;

/// `FILE_SHARE_READ`: readers may open the record, writers and deleters may not.
const FILE_SHARE_READ: u32 = 0x1;
/// `ERROR_SHARING_VIOLATION`.
const SHARING_VIOLATION: i32 = 32;

pub fn is_same_file(file: &File, path: &Path) -> bool {
    let Ok(open) = file.try_clone().and_then(same_file::Handle::from_file) else {
        return false;
    };
    same_file::Handle::from_path(path).is_ok_and(|at_path| at_path == open)
}

/// The holder's record, open with [`FILE_SHARE_READ`] until the mark is dropped (or the holder
/// dies and the kernel closes it).
#[derive(Debug)]
pub struct RecordMark {
    _record: Option<File>,
}

pub fn mark_holder_record(path: &Path) -> RecordMark {
    let open = OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ)
        .open(path);
    RecordMark { _record: open.ok() }
}

/// Opening the record for writing fails with a sharing violation while its holder keeps it
/// (see [`mark_holder_record`]); it opens when no process has it so, and a record that is gone
/// names nobody. Anything else (no write permission) says nothing: the holder may live.
pub fn holder_alive(_: u32, record: &Path) -> bool {
    match OpenOptions::new().write(true).open(record) {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) if e.raw_os_error() == Some(SHARING_VIOLATION) => true,
        Err(e) => {
            tracing::debug!(
                "cannot tell whether the holder of {} lives: {e}",
                record.display()
            );
            true
        }
    }
}

pub fn release(file: &File) {
    let _ = file.unlock();
}

pub const CHILDREN_KEEP_LOCKS: bool = false;

#[allow(
    clippy::unnecessary_wraps,
    reason = "one signature on every OS; Windows children never keep the lock"
)]
pub fn set_inherited(_: &File, _: bool) -> std::io::Result<()> {
    Ok(())
}

/// Windows has no job-control stop that keeps a lock: never claimed.
pub fn holder_stopped(_: u32) -> bool {
    false
}

pub fn owner_of(_: &Path) -> Option<u32> {
    None
}

pub fn current_uid() -> Option<u32> {
    None
}
