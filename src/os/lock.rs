//! What the penv lock needs from the OS besides `File::try_lock` (flock on Unix, `LockFileEx` on
//! Windows, both through std): whether an open lock file is still the one at its path, whether a
//! recorded holder still lives, releasing the lock, and who owns a file.
//!
//! Interface:
//! - [`is_same_file`]: the open file is the file at the path now (not deleted, not replaced).
//! - [`mark_holder_record`] → [`RecordMark`]: kept by the holder while it holds the lock;
//!   [`holder_alive`] is what a reader concludes from a record. Unix asks the kernel about the
//!   pid (`kill(pid, 0)`). Windows has no safe call for that, so the holder keeps its record open
//!   with a share mode that refuses writers; a reader that can open it for writing knows no
//!   holder has it open any more, i.e. the holder is gone (however it ended).
//! - [`release`]: before the lock file is closed on a normal exit. Unix leaves the flock to the
//!   close (a child that inherited the open file keeps it); Windows unlocks explicitly, since the
//!   release at process end "can be delayed" (`LockFileEx`'s documentation).
//! - [`set_inherited`]: a second locked file (the lock inside the penv) that children changing
//!   the penv inherit as they inherit the first as stdin.
//! - [`owner_of`], [`current_uid`]: for the message of a lock penv-guard may not open (Unix uids;
//!   `None` on Windows).

use std::fs::File;
use std::path::Path;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

/// What the holder keeps while it holds the lock, so that readers can tell it lives.
#[derive(Debug)]
pub struct RecordMark {
    _held: imp::RecordMark,
}

pub fn is_same_file(file: &File, path: &Path) -> bool {
    imp::is_same_file(file, path)
}

/// Called by the holder once its record at `path` is written; dropped before it is removed.
pub fn mark_holder_record(path: &Path) -> RecordMark {
    RecordMark {
        _held: imp::mark_holder_record(path),
    }
}

/// Whether the holder a record at `record` names (`pid`) may still be alive; `false` only when
/// it is known to be gone.
pub fn holder_alive(pid: u32, record: &Path) -> bool {
    imp::holder_alive(pid, record)
}

/// Whether the holder's process is stopped (Ctrl-Z, SIGSTOP): it keeps the lock until it is
/// continued. Only Linux tells this without privileges (`/proc/<pid>/stat`); elsewhere `false`.
pub fn holder_stopped(pid: u32) -> bool {
    imp::holder_stopped(pid)
}

pub fn release(file: &File) {
    imp::release(file);
}

/// Whether a child that inherits a locked file keeps the lock past penv-guard's death: Unix yes
/// (an flock belongs to the open file description); Windows no (a `LockFileEx` lock belongs to
/// the process that took it).
pub const CHILDREN_KEEP_LOCKS: bool = imp::CHILDREN_KEEP_LOCKS;

/// Whether children spawned from now on inherit `file` (Unix: its close-on-exec flag; Windows:
/// nothing to do, see [`CHILDREN_KEEP_LOCKS`]).
pub fn set_inherited(file: &File, inherited: bool) -> std::io::Result<()> {
    imp::set_inherited(file, inherited)
}

/// The uid owning `path` (or, when it does not exist, its directory).
pub fn owner_of(path: &Path) -> Option<u32> {
    imp::owner_of(path)
}

pub fn current_uid() -> Option<u32> {
    imp::current_uid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaced_or_removed_at_its_path_is_not_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("penv.penv-guard.lock");
        std::fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        assert!(is_same_file(&file, &path));
        // Moved away, and a new file at its path (Wine refuses to rename over an open file).
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(!is_same_file(&file, &path), "replaced");
        std::fs::remove_file(&path).unwrap();
        assert!(!is_same_file(&file, &path), "removed");
    }

    #[test]
    fn a_record_kept_by_a_live_holder_names_it_and_one_left_by_a_dead_process_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("penv.penv-guard.holder");
        std::fs::write(&record, b"{}").unwrap();
        {
            let _mark = mark_holder_record(&record);
            assert!(holder_alive(std::process::id(), &record));
        }
        // A process that has exited (and been waited for): the test binary listing its tests.
        let mut gone = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--list")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        assert!(!holder_alive(pid, &record));
        std::fs::remove_file(&record).unwrap();
        assert!(!holder_alive(pid, &record), "no record");
    }
}
