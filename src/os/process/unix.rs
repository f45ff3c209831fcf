//! Unix: a process group per child (rustix), the lock file as stdin, signals through
//! signal-hook's iterator thread.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};

/// The signal that stopped penv-guard.
#[derive(Debug, Clone, Copy)]
pub struct Stop(i32);

impl Stop {
    /// 128 + the signal, as shells report a death by signal.
    pub fn exit_code(self) -> i32 {
        128 + self.0
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "signal {}", self.0)
    }
}

pub fn spawn(command: &mut Command, hold: Option<&File>) -> io::Result<Child> {
    command.stdin(match hold {
        Some(file) => Stdio::from(file.try_clone()?),
        None => Stdio::null(),
    });
    command.process_group(0).spawn()
}

fn group(id: u32) -> Option<Pid> {
    i32::try_from(id).ok().and_then(Pid::from_raw)
}

/// SIGKILL to the group, then to the child itself (in case it left the group). Once the child
/// is reaped, std sends it nothing: its pid may belong to another process by then.
pub fn kill_tree(child: &mut Child) {
    if let Some(pid) = group(child.id()) {
        let _ = kill_process_group(pid, Signal::KILL);
    }
    let _ = child.kill();
}

/// TERM to every group, KILL after a 3 s grace period, then a bounded wait until the groups are
/// empty. The direct children are reaped by the threads waiting on them; members reparented to
/// init are reaped there.
pub fn stop_trees(ids: &[u32]) {
    let pids: Vec<Pid> = ids.iter().filter_map(|&id| group(id)).collect();
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
    let gone = Instant::now() + Duration::from_secs(5);
    while alive(&pids) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM, SIGINT and SIGHUP.
pub fn on_stop(handler: Box<dyn FnOnce(Stop) + Send>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            handler(Stop(signal));
        }
    });
}
