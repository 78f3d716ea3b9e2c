//! The warden seam: what mum asks of whatever runs its jobs (plain processes here; SLURM and
//! Grid Engine later). Submit takes a batch, poll is one call for every job of the warden per
//! round, cancel stops one job, and `find` answers "did a launch that mum journaled as intent
//! happen?" after a crash, so replay reconciles instead of launching twice. mum never calls a
//! warden while holding its state lock. Job ids are the warden's strings (a pid, a SLURM job id).

use std::collections::HashMap;
use std::path::PathBuf;

/// One job to hand over: the run and its directory (holding `job.sh`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub run: String,
    pub run_dir: PathBuf,
}

/// What a warden knows of a job it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Queued or running under the warden.
    Alive,
    /// The warden no longer has it (ended, or never there).
    Gone,
}

/// After a crash between journaling "launching" and "launched": what became of the launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The job is there, under this id.
    Running(String),
    /// It ran and is gone (its kid left an event log): follow the log, launch nothing.
    Ended,
    /// It never started: launch it.
    Never,
}

pub trait Warden: Send {
    /// Hand jobs over, in order; one result per job (its id, or why it could not start).
    fn submit(&mut self, jobs: &[JobRequest]) -> Vec<Result<String, String>>;
    /// The state of each job (by id), in one query for all of them.
    fn poll(&mut self, jobs: &[(String, JobRequest)]) -> HashMap<String, JobState>;
    /// Ask a job to stop (its kid then stops the job's group gracefully). Whether it was sent.
    fn cancel(&mut self, job: &str, req: &JobRequest) -> bool;
    /// Reconcile a launch journaled as intent only.
    fn find(&mut self, req: &JobRequest) -> Found;
    /// A job's kid is gone without an exit record: stop whatever of the job is left.
    fn clean_up(&mut self, req: &JobRequest, job_pgid: Option<i32>);
}
