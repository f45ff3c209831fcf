//! Children that cannot outlive penv-guard's lock, and stopping them all.
//!
//! Interface (the same on every OS):
//! - [`spawn`] starts a [`Contained`] child: its own process tree, its stdin chosen here.
//! - [`Contained::kill_tree`] kills the child and everything it started.
//! - [`stop_trees`] stops the trees of the children running now (the stop handler's part), and
//!   [`on_stop`] installs that handler: it runs once, on its own thread, with the [`Stop`] that
//!   came.
//!
//! How each OS keeps "no install outlives its lock":
//! - **Unix.** Every child leads a process group of its own; a tree kill is a kill of the group.
//!   A child that changes the penv gets the lock's open file as its stdin: an flock belongs to
//!   the open file description, so if penv-guard dies by SIGKILL the lock stays held until that
//!   child is gone (the install finishes under the lock). SIGTERM, SIGINT and SIGHUP stop the
//!   groups (TERM, then KILL after 3 s) and exit with 128 + the signal.
//! - **Windows.** A `LockFileEx` lock belongs to the process that took it and goes when that
//!   process dies, whoever inherited the handle, so the guarantee goes the other way: nothing
//!   outlives penv-guard. Before its first child, penv-guard puts itself into a Job object with
//!   `KILL_ON_JOB_CLOSE` and keeps the only handle: however it ends (`taskkill /F`, a crash, a
//!   normal exit), the kernel kills every process it started, grandchildren included. Each child
//!   also gets a nested job of its own (the tree kill for a timeout or for what an exited child
//!   left). The child's stdin is null: `LockFileEx` locks are mandatory, and a child reading the
//!   locked file would fail. Ctrl-C, Ctrl-Break and closing the console stop the trees and exit
//!   with 130. Left open: when penv-guard is killed, its lock and its job go in the same
//!   rundown, in no set order, so a waiter can take the lock while the killed install is being
//!   torn down (it runs no more code of its own); the next run repairs what it left.

use std::fs::File;
use std::io;
use std::process::{Child, Command, ExitStatus};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

pub use imp::Stop;

/// A running child in a process tree of its own.
pub struct Contained {
    child: Child,
}

/// Starts `command` contained. `hold` is the lock file, for the child to keep where the OS lets a
/// child keep a lock (Unix); stdout and stderr are the caller's.
pub fn spawn(command: &mut Command, hold: Option<&File>) -> io::Result<Contained> {
    imp::spawn(command, hold).map(|child| Contained { child })
}

impl Contained {
    /// The id [`stop_trees`] takes.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Kills the child and every process of its tree (a no-op for processes already gone).
    pub fn kill_tree(&mut self) {
        imp::kill_tree(&mut self.child);
    }
}

/// Stops the trees of these children (by [`Contained::id`]) and waits, bounded, until they are
/// gone.
pub fn stop_trees(ids: &[u32]) {
    imp::stop_trees(ids);
}

/// Calls `handler` on its own thread when penv-guard is asked to stop (see the module doc);
/// installed once, later calls do nothing.
pub fn on_stop(handler: impl FnOnce(Stop) + Send + 'static) {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| imp::on_stop(Box::new(handler)));
}
