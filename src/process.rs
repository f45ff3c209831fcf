//! Running a child (uv, the penv's Python) with a deadline that holds whatever the child starts,
//! and that never outlives penv-guard's lock.
//!
//! Invariants:
//! - Every child runs in a process tree of its own (`os::process`: a process group on Unix, a
//!   Job object on Windows). When it exits, when its deadline passes, or when penv-guard is
//!   asked to stop (SIGTERM, SIGINT, SIGHUP; Ctrl-C, Ctrl-Break, closing the console), the whole
//!   tree is killed before the lock can be released: no install outlives its lock, and no
//!   grandchild that keeps running holds the deadline hostage.
//! - Output goes to unnamed temp files, never to pipes: nothing waits for a pipe's end of file,
//!   which a grandchild could hold open forever.
//! - If penv-guard itself is killed, `os::process` says what still holds: on Unix the child that
//!   changes the penv keeps the lock (it has the lock's open file as its stdin) until it is gone;
//!   on Windows every child dies with penv-guard.
//! - The stop handler is installed only on the miss path; a hit costs nothing for it.

use std::fs::File;
use std::io::{Read as _, Seek as _};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;

use crate::os;
use std::time::{Duration, Instant};

const TAIL_LINES: usize = 25;
const OUTPUT_CAP: u64 = 8 << 20;

/// The children running now ([`os::process::Contained::id`]), stopped by the stop handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set by the stop handler before it stops the children: the thread that waited for a child
/// must not report the child's death as a failure, the handler ends the process.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// penv-guard's holder records (and their marks), one per lock it holds (beside the penv and
/// inside it), removed by the stop handler while the locks are still held.
static HOLDER: Mutex<Vec<(std::path::PathBuf, os::lock::RecordMark)>> = Mutex::new(Vec::new());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Straight to penv-guard's stderr (uv's progress on a terminal, its lines in a CI log).
    Live,
    Captured,
}

pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub output_tail: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn describe_status(&self, timeout: Duration) -> String {
        if self.timed_out {
            return format!("killed after the {}s timeout", timeout.as_secs_f64());
        }
        match self.status.and_then(|s| s.code()) {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        }
    }
}

/// Runs `command` until it exits or `timeout` passes, then kills its tree. `hold` is the lock
/// file, for the child to keep where the OS lets it (see `os::process`).
pub fn run(
    mut command: Command,
    timeout: Duration,
    stderr: Stderr,
    hold: Option<&File>,
) -> std::io::Result<Output> {
    let stdout_file = tempfile::tempfile()?;
    let stderr_file = match stderr {
        Stderr::Live => None,
        Stderr::Captured => Some(tempfile::tempfile()?),
    };
    command.stdout(stdout_file.try_clone()?);
    command.stderr(match &stderr_file {
        Some(file) => Stdio::from(file.try_clone()?),
        None => Stdio::inherit(),
    });

    let mut child = {
        // Held across spawn and registration, so a signal cannot slip in between.
        let mut children = CHILDREN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A stop that came in between two children has already stopped those it saw: no new
        // one may start after it (the handler is ending the process).
        if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
            drop(children);
            loop {
                std::thread::park();
            }
        }
        let child = if hold.is_some() {
            crate::lock::spawning_with_companions(|| os::process::spawn(&mut command, hold))?
        } else {
            os::process::spawn(&mut command, hold)?
        };
        children.push(child.id());
        child
    };
    drop(command);
    let deadline = Instant::now().checked_add(timeout);
    let mut delay = Duration::from_millis(1);
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (Some(status), false);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            child.kill_tree();
            break (child.wait().ok(), true);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    };
    if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
        // The stop handler is ending the process; wait for it.
        loop {
            std::thread::park();
        }
    }
    // Whatever the child left running in its tree is an orphan of this run.
    child.kill_tree();
    CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|&pid| pid != child.id());

    let stdout = read_all(stdout_file);
    let captured = stderr_file.map(read_all).unwrap_or_default();
    let combined = format!("{captured}{}", if stdout.is_empty() { "" } else { "\n" }) + &stdout;
    Ok(Output {
        status: if timed_out { None } else { status },
        output_tail: tail(&combined, TAIL_LINES),
        stdout,
        timed_out,
    })
}

fn read_all(mut file: File) -> String {
    let mut bytes = Vec::new();
    let _ = file.rewind();
    let _ = file.take(OUTPUT_CAP).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Records the holder file the stop handler removes while the lock is still held, with the
/// mark that tells readers its holder lives (`os::lock`); `None` drops both.
pub fn add_holder_record(path: std::path::PathBuf, mark: os::lock::RecordMark) {
    HOLDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((path, mark));
}

/// Forgets the record at `path` (its mark is dropped); the caller removes the file.
pub fn forget_holder_record(path: &std::path::Path) {
    HOLDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|(p, _)| p != path);
}

/// When penv-guard is asked to stop (see `os::process`): stop every child's tree, wait until
/// the trees are gone, remove the holder record, and exit (Unix: 128 + the signal number;
/// Windows: 130). Only then does the lock go.
pub fn install_signal_handler() {
    os::process::on_stop(|stop| {
        STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
        let trees = CHILDREN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        os::process::stop_trees(&trees);
        // The mark is dropped before the removal (on Windows it keeps the record open).
        let records: Vec<std::path::PathBuf> = std::mem::take(
            &mut *HOLDER
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .map(|(path, _mark)| path)
        .collect();
        for path in records {
            let _ = std::fs::remove_file(path);
        }
        crate::messages::say(format!(
            "stopped by {stop}; the penv is left without a valid state and the next run \
             repairs it"
        ));
        std::process::exit(stop.exit_code());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "");
    }

    #[cfg(unix)]
    #[test]
    fn the_deadline_holds_when_a_grandchild_keeps_the_output_open() {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & echo started; sleep 30"]);
        let start = Instant::now();
        let out = run(command, Duration::from_millis(300), Stderr::Captured, None).unwrap();
        assert!(out.timed_out);
        assert!(!out.success());
        assert_eq!(out.stdout.trim(), "started");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[cfg(unix)]
    #[test]
    fn an_exited_child_does_not_wait_for_its_grandchildren() {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & echo done"]);
        let start = Instant::now();
        let out = run(command, Duration::from_secs(20), Stderr::Captured, None).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.trim(), "done");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
