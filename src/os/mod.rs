//! The platform layer: what penv-guard's logic needs from the operating system, behind one small
//! interface per concern, each with one implementation file per OS family (`unix.rs`,
//! `windows.rs`). Code outside `os` never names `std::os::unix`, `std::os::windows`, `rustix`,
//! `signal-hook`, `win32job` or `ctrlc`; a platform difference is a function here, never a
//! `#[cfg]` in the logic, and never a silent no-op.
//!
//! - [`process`]: children contained so that none outlives penv-guard's lock (process groups on
//!   Unix, Job objects on Windows), tree kill, and the stop handler (signals, Ctrl-C).
//! - [`lock`]: the lock file's identity, whether a recorded holder still lives, who owns a file.
//! - [`fs`]: how files are opened, stamped and atomically replaced.
//! - [`path`]: canonical paths without `\\?\`, and paths as text, losslessly.

#[cfg(not(any(unix, windows)))]
compile_error!("penv-guard supports Unix and Windows: src/os has no implementation for this OS");

pub mod fs;
pub mod lock;
pub mod path;
pub mod process;
