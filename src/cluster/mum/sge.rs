//! The `sge` warden (Grid Engine: OGE, SGE, Son of Grid Engine). Being written: see issue 10.

use super::warden::{Found, JobRequest, JobState, Warden};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// How the Grid Engine warden is set up (from `neromum --poll-interval --array-max`).
#[derive(Debug, Clone)]
pub struct SgeSettings {
    pub workdir: PathBuf,
    pub poll_interval: Duration,
    pub array_max: u32,
}

pub struct SgeWarden {
    _settings: SgeSettings,
}

impl SgeWarden {
    pub fn new(settings: SgeSettings) -> SgeWarden {
        SgeWarden {
            _settings: settings,
        }
    }
}

impl Warden for SgeWarden {
    fn name(&self) -> &'static str {
        "Grid Engine"
    }
    fn submit(&mut self, jobs: &[JobRequest]) -> Vec<Result<String, String>> {
        jobs.iter()
            .map(|_| Err("the Grid Engine warden is not in this version yet".into()))
            .collect()
    }
    fn poll(&mut self, jobs: &[(String, JobRequest)]) -> HashMap<String, JobState> {
        jobs.iter()
            .map(|(j, _)| (j.clone(), JobState::Gone))
            .collect()
    }
    fn cancel(&mut self, _job: &str, _req: &JobRequest) -> bool {
        false
    }
    fn find(&mut self, _req: &JobRequest) -> Found {
        Found::Never
    }
    fn clean_up(&mut self, _req: &JobRequest, _job_pgid: Option<i32>) {}
}
