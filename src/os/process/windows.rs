//! Windows: penv-guard's own kill-on-close Job object, a nested kill-on-close job per child
//! (win32job), a null stdin, and the console's stop events through ctrlc.
//!
//! A per-child job is assigned right after the spawn (std cannot start a child suspended), so a
//! grandchild started in those microseconds would escape the per-child tree kill; it is still in
//! penv-guard's own job and dies with penv-guard. If the self-job cannot be set up (an old
//! parent job that forbids nesting), penv-guard goes on as Cargo does and says so at `-v`.

use std::fs::File;
use std::io;
use std::os::windows::io::AsRawHandle as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use win32job::{ExtendedLimitInfo, Job, JobError};

/// Ctrl-C, Ctrl-Break, closing the console, logoff or shutdown (ctrlc does not say which).
#[derive(Debug, Clone, Copy)]
pub struct Stop;

impl Stop {
    /// 130, as for an interrupted command (128 + SIGINT) on Unix.
    pub fn exit_code(self) -> i32 {
        130
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ctrl-C, Ctrl-Break or closing the console")
    }
}

/// How long a killed tree may take to leave the job lists.
const GONE_WITHIN: Duration = Duration::from_secs(5);

fn kill_on_close_job() -> Result<Job, JobError> {
    Job::create_with_limit_info(ExtendedLimitInfo::new().limit_kill_on_job_close())
}

/// penv-guard's own job, joined before the first child starts; its handle is never closed
/// before the process ends (a static is never dropped), and is not inheritable.
fn self_job() -> Option<&'static Job> {
    static SELF_JOB: OnceLock<Option<Job>> = OnceLock::new();
    SELF_JOB
        .get_or_init(|| {
            match kill_on_close_job().and_then(|job| job.assign_current_process().map(|()| job)) {
                Ok(job) => Some(job),
                Err(e) => {
                    tracing::info!(
                        "cannot put penv-guard into a kill-on-close job ({e}); children of a \
                         killed penv-guard may outlive it"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Each running child's job, by child pid; only this table holds a job's handle, so dropping it
/// from here is the tree kill.
static JOBS: Mutex<Vec<(u32, Job)>> = Mutex::new(Vec::new());

fn take_job(id: u32) -> Option<Job> {
    let mut jobs = JOBS.lock().unwrap_or_else(PoisonError::into_inner);
    let at = jobs.iter().position(|(pid, _)| *pid == id)?;
    Some(jobs.swap_remove(at).1)
}

pub fn spawn(command: &mut Command, _hold: Option<&File>) -> io::Result<Child> {
    let _ = self_job();
    command.stdin(Stdio::null());
    let child = command.spawn()?;
    // `as isize`: win32job takes the raw HANDLE value; the child owns it and outlives the call.
    let handle = child.as_raw_handle() as isize;
    match kill_on_close_job().and_then(|job| job.assign_process(handle).map(|()| job)) {
        Ok(job) => JOBS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((child.id(), job)),
        Err(e) => tracing::info!("cannot give child {} a job of its own: {e}", child.id()),
    }
    Ok(child)
}

/// Closes the child's job (the kernel kills every process in it) and waits, bounded, until
/// those processes have left penv-guard's own job, i.e. are gone.
fn kill_job(id: u32) {
    let Some(job) = take_job(id) else {
        return;
    };
    let pids = job.query_process_id_list().unwrap_or_default();
    drop(job);
    let Some(own) = self_job() else {
        return;
    };
    let deadline = Instant::now() + GONE_WITHIN;
    while Instant::now() < deadline {
        let left = own.query_process_id_list().unwrap_or_default();
        if !pids.iter().any(|pid| left.contains(pid)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The job first, then the child itself (`TerminateProcess`, for a child without a job).
pub fn kill_tree(child: &mut Child) {
    kill_job(child.id());
    let _ = child.kill();
}

pub fn stop_trees(ids: &[u32]) {
    for &id in ids {
        kill_job(id);
    }
}

/// ctrlc's `termination` feature: `CTRL_C_EVENT`, `CTRL_BREAK_EVENT`, `CTRL_CLOSE_EVENT`,
/// `CTRL_LOGOFF_EVENT`, `CTRL_SHUTDOWN_EVENT`. On close, logoff and shutdown Windows may end the
/// process before the handler is done; the self-job then kills the children all the same.
pub fn on_stop(handler: Box<dyn FnOnce(Stop) + Send>) {
    let mut handler = Some(handler);
    let installed = ctrlc::set_handler(move || {
        if let Some(handler) = handler.take() {
            handler(Stop);
        }
    });
    if let Err(e) = installed {
        tracing::info!("cannot install the Ctrl-C handler: {e}");
    }
}
