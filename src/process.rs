//! Running a child (uv, the penv's Python) with a deadline that holds whatever the child starts,
//! and that never outlives penv-guard's lock.
//!
//! Invariants:
//! - Every child runs in a process group of its own. When it exits, when its deadline passes, or
//!   when penv-guard gets SIGTERM, SIGINT or SIGHUP, the whole group is killed before the lock
//!   can be released: no install outlives its lock, and no grandchild that keeps running holds
//!   the deadline hostage.
//! - Output goes to unnamed temp files, never to pipes: nothing waits for a pipe's end of file,
//!   which a grandchild could hold open forever.
//! - A child that changes the penv (`uv venv`, `uv pip install`) gets the lock's open file as its
//!   stdin. The kernel keeps an flock until every holder of that open file has closed it, so even
//!   if penv-guard dies by SIGKILL the lock is held until that child is gone.
//! - The signal handler is installed only on the miss path; a hit costs nothing for it.

use std::fs::File;
use std::io::{Read as _, Seek as _};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TAIL_LINES: usize = 25;
const OUTPUT_CAP: u64 = 8 << 20;

/// Process groups of the children running now, killed by the signal handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set by the signal handler before it stops the children: the thread that waited for a child
/// must not report the child's death as a failure, the handler ends the process.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// penv-guard's holder record, removed by the signal handler while the lock is still held.
static HOLDER: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

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

/// Runs `command` until it exits or `timeout` passes, then kills its process group. `hold` is
/// the lock file the child keeps while it runs (see the module invariants).
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
    command.stdin(match hold {
        Some(file) => Stdio::from(file.try_clone()?),
        None => Stdio::null(),
    });
    command.stdout(stdout_file.try_clone()?);
    command.stderr(match &stderr_file {
        Some(file) => Stdio::from(file.try_clone()?),
        None => Stdio::inherit(),
    });
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);

    let mut child = {
        // Held across spawn and registration, so a signal cannot slip in between.
        let mut children = CHILDREN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let child = if hold.is_some() {
            crate::lock::spawn_holding(&mut command)?
        } else {
            command.spawn()?
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
            kill_group(child.id());
            let _ = child.kill();
            break (child.wait().ok(), true);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    };
    if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
        // The signal handler is ending the process with 128 + the signal; wait for it.
        loop {
            std::thread::park();
        }
    }
    // Whatever the child left running in its group is an orphan of this run.
    kill_group(child.id());
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

#[cfg(unix)]
fn kill_group(pgid: u32) {
    use rustix::process::{Pid, Signal, kill_process_group};
    if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_: u32) {}

/// Records the holder file the signal handler removes while the lock is still held.
pub fn set_holder_record(path: Option<std::path::PathBuf>) {
    *HOLDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = path;
}

/// On SIGTERM, SIGINT or SIGHUP: stop every child's process group (TERM, then KILL after a
/// grace period), wait until the groups are gone, remove the holder record, and exit with
/// 128 + the signal number. Only then does the kernel release the lock.
#[cfg(unix)]
pub fn install_signal_handler() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
                let groups = CHILDREN
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                stop_groups(&groups);
                if let Some(holder) = HOLDER
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                {
                    let _ = std::fs::remove_file(holder);
                }
                crate::messages::say(format!(
                    "stopped by signal {signal}; the penv is left without a valid state and the \
                     next run repairs it"
                ));
                std::process::exit(128 + signal);
            }
        });
    });
}

#[cfg(not(unix))]
pub fn install_signal_handler() {}

#[cfg(unix)]
fn stop_groups(groups: &[u32]) {
    use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
    let pids: Vec<Pid> = groups
        .iter()
        .filter_map(|&g| i32::try_from(g).ok().and_then(Pid::from_raw))
        .collect();
    for &pid in &pids {
        let _ = kill_process_group(pid, Signal::TERM);
    }
    let alive = |pids: &[Pid]| pids.iter().any(|&p| test_kill_process_group(p).is_ok());
    let grace = Instant::now() + Duration::from_secs(3);
    while alive(&pids) && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &pids {
        let _ = kill_process_group(pid, Signal::KILL);
    }
    // The direct children are reaped by the thread waiting on them; members reparented to init
    // are reaped there. Wait until the groups are empty (bounded).
    let gone = Instant::now() + Duration::from_secs(5);
    while alive(&pids) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(10));
    }
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
