//! Fault injection for the integration tests, compiled only with the `test-hooks` feature (the
//! test build enables it through a dev-dependency on this crate; release builds never have it).

use std::path::Path;

/// `PENV_GUARD_TEST_CRASH_BEFORE_RENAME=<file name>`: a write of that file stops between the
/// temp file and the rename, leaving the temp file behind, as a crash there would.
/// `PENV_GUARD_TEST_PAUSE_BEFORE_RENAME=<file name>`: a write of that file waits half a second
/// before the rename, to widen a race window for a concurrent process.
pub fn before_rename(path: &Path, temp: tempfile::NamedTempFile) -> std::io::Result<()> {
    if let Ok(name) = std::env::var("PENV_GUARD_TEST_PAUSE_BEFORE_RENAME")
        && path.ends_with(name)
    {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    if let Ok(name) = std::env::var("PENV_GUARD_TEST_CRASH_BEFORE_RENAME")
        && path.ends_with(name)
    {
        let (_, temp_path) = temp.keep().map_err(|e| e.error)?;
        eprintln!(
            "penv-guard: test hook: exiting before rename of {}",
            temp_path.display()
        );
        std::process::exit(99);
    }
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `PENV_GUARD_TEST_SIZE_VANISH=<path>`: the size walk deletes that path just before it reads
/// it, to produce a real `ENOENT` in the middle of a walk.
pub fn size_vanish(path: &Path) {
    if std::env::var_os("PENV_GUARD_TEST_SIZE_VANISH").is_some_and(|p| Path::new(&p) == path) {
        let _ = std::fs::remove_file(path);
    }
}
