//! What a kid writes to its run directory: the job spec it reads (`kid.json`) and the durable
//! event log it appends (`events.jsonl`, one JSON object per line). mum tails the event log; a
//! format change here is a format change on disk, so snapshot tests pin it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// File names inside a run directory.
pub const EVENTS_FILE: &str = "events.jsonl";
pub const SPEC_FILE: &str = "kid.json";
pub const STDOUT_FILE: &str = "stdout.log";
pub const STDERR_FILE: &str = "stderr.log";

/// What the kid needs to know beyond the command line (written by mum as `kid.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KidSpec {
    /// Experiment id, for messages and the `id` field of rules.
    #[serde(default)]
    pub id: String,
    /// This row's parameters, available to the rule as fields.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Auto-termination rule (SPEC §5 expression); empty = none.
    #[serde(default)]
    pub abort_when: Option<String>,
    /// Metric names that other runs of the project printed and that match a field of the rule
    /// ignoring case: the rule's names resolve against them too, so `loss` waits for this run's
    /// own `loss` instead of taking its `Loss` meanwhile, and `LOSS` is ambiguous from the start
    /// where the project knows `Loss` and `loss`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_metrics: Vec<String>,
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// SIGTERM → SIGKILL grace, seconds.
    #[serde(default = "default_grace")]
    pub grace_secs: f64,
    /// Resource sample period, seconds.
    #[serde(default = "default_sample")]
    pub sample_secs: f64,
    /// The rule is not evaluated before the run has run this long (seconds): early noise in
    /// the first steps cannot end a run (`min_runtime:` in neronet.yaml).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_runtime_secs: f64,
    /// Sample the GPUs the job uses through `nvidia-smi` (when one is on PATH).
    #[serde(default = "yes")]
    pub gpu: bool,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// What an empty `kid.json` means (a derived default would have zero periods, which are invalid).
impl Default for KidSpec {
    fn default() -> Self {
        KidSpec {
            id: String::new(),
            params: BTreeMap::new(),
            abort_when: None,
            known_metrics: Vec::new(),
            metrics: MetricsSpec::default(),
            grace_secs: default_grace(),
            sample_secs: default_sample(),
            min_runtime_secs: 0.0,
            gpu: true,
        }
    }
}

impl KidSpec {
    /// What serde cannot check: the periods must be usable as durations (a negative or endless
    /// one would panic in `Duration::from_secs_f64` or never end a run). Names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.sample_secs.is_finite() && self.sample_secs > 0.0) {
            return Err(format!(
                "sample_secs: {} is not a number of seconds above 0",
                self.sample_secs
            ));
        }
        if !(self.grace_secs.is_finite() && self.grace_secs >= 0.0) {
            return Err(format!(
                "grace_secs: {} is not a finite, non-negative number of seconds",
                self.grace_secs
            ));
        }
        Ok(())
    }
}

fn default_grace() -> f64 {
    10.0
}
fn default_sample() -> f64 {
    5.0
}

/// How the kid finds numbers (SPEC §7 `metrics:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Read `name=value` / `name: value` numeric tokens from stdout and stderr.
    #[serde(default = "yes")]
    pub tokens: bool,
    /// Regexes with one named group per metric, tried on every stdout/stderr line.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Files in the run directory (relative) or absolute, tailed while the job runs.
    #[serde(default)]
    pub files: Vec<MetricFile>,
}

fn yes() -> bool {
    true
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec {
            tokens: true,
            patterns: Vec::new(),
            files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricFile {
    pub path: String,
    pub format: MetricFileFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricFileFormat {
    /// Comma-separated, header row first; numeric cells become metrics.
    Csv,
    /// One JSON object per line; numeric members become metrics.
    Jsonl,
}

/// One line of `events.jsonl`. `t` is seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum KidEvent {
    /// The job process is running; `pid` is the kid, `job_pid` the job (its process group).
    Started {
        t: f64,
        pid: u32,
        job_pid: u32,
        host: String,
    },
    Environment {
        t: f64,
        report: EnvReport,
    },
    /// The numbers found on one log line (or one metrics-file row).
    Metrics {
        t: f64,
        step: Option<f64>,
        /// Non-finite values (a diverged `loss=nan`) are kept: written as "nan", "inf", "-inf".
        #[serde(with = "metric_values")]
        values: Vec<(String, f64)>,
    },
    Resources {
        t: f64,
        cpu_percent: f64,
        rss_bytes: u64,
        processes: u32,
        /// Mean utilisation (%) of the GPUs the job's processes use, as nvidia-smi reports it
        /// for those devices; absent without nvidia-smi or when the job uses no GPU.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu_percent: Option<f64>,
        /// GPU memory the job's processes hold, summed over its GPUs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu_mem_bytes: Option<u64>,
        /// The GPUs in use (nvidia-smi's index and name, e.g. `0: NVIDIA H100 80GB HBM3`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gpus: Vec<String>,
        /// Bytes the job has written to stdout and stderr so far (the daemon's `silent` field:
        /// a run whose output stops growing is stalled).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_bytes: Option<u64>,
    },
    /// The auto-termination rule matched; the kid is stopping the job.
    RuleFired {
        t: f64,
        rule: String,
        /// The values of the rule's fields when it fired (`runtime` included), in the rule's
        /// order: what the researcher reads as the reason.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "metric_values")]
        values: Vec<(String, f64)>,
    },
    /// The rule cannot be evaluated as written (a field name matching two metrics that differ
    /// only in case); written once per problem, the job goes on. Readers older than this event
    /// skip the line (mum logs "unreadable kid event").
    RuleProblem {
        t: f64,
        message: String,
    },
    /// The last event of a run.
    Exited {
        t: f64,
        outcome: Outcome,
        /// Why it ended, in plain words, found by the kid: the last line of a Python traceback
        /// (`torch.OutOfMemoryError: CUDA out of memory. ...`), a shell's `Segmentation fault`,
        /// the rule and the values that fired it. Absent when there is nothing to say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The last lines of stderr (at most 20, each at most 300 characters) of a run that
        /// did not finish cleanly, for the alert e-mail.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stderr_tail: Vec<String>,
    },
    /// An event of a kind this version does not know (written by a newer kid): read, then
    /// skipped, so that adding an event never again breaks an older reader.
    #[serde(other)]
    Unknown,
}

impl KidEvent {
    pub fn time(&self) -> Option<f64> {
        Some(match self {
            KidEvent::Started { t, .. }
            | KidEvent::Environment { t, .. }
            | KidEvent::Metrics { t, .. }
            | KidEvent::Resources { t, .. }
            | KidEvent::RuleFired { t, .. }
            | KidEvent::RuleProblem { t, .. }
            | KidEvent::Exited { t, .. } => *t,
            KidEvent::Unknown => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum Outcome {
    /// The job exited by itself with this code.
    Exit { code: i32 },
    /// The job died from a signal nobody in Neronet sent.
    Signal { signal: i32 },
    /// Stopped by the user (SIGTERM to the kid) or by the rule.
    Aborted {
        by: AbortCause,
        signal: Option<i32>,
        code: Option<i32>,
    },
    /// The command could not be started at all.
    FailedToStart { error: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", content = "detail", rename_all = "snake_case")]
pub enum AbortCause {
    User,
    Rule(String),
}

/// Where and on what the job ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvReport {
    pub host: String,
    pub cpus: usize,
    pub mem_total_bytes: u64,
    pub gpus: Vec<String>,
    pub git_commit: Option<String>,
    pub cwd: String,
    pub user: String,
    pub kid_version: String,
    pub started_at: f64,
    /// Scheduler variables seen (SLURM_JOB_ID, JOB_ID, ...).
    pub scheduler: BTreeMap<String, String>,
}

/// JSON has no NaN or infinity (serde_json would write `null` and fail to read it back), so
/// metric values travel as numbers when finite and as the strings "nan", "inf", "-inf" otherwise.
pub mod metric_values {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Num(f64),
        Text(String),
    }

    /// One value as it travels (borrowed on the way out: this runs for every metric line).
    struct Out(f64);

    impl Serialize for Out {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let v = self.0;
            if v.is_finite() {
                s.serialize_f64(v)
            } else if v.is_nan() {
                s.serialize_str("nan")
            } else if v > 0.0 {
                s.serialize_str("inf")
            } else {
                s.serialize_str("-inf")
            }
        }
    }

    pub fn serialize<S: Serializer>(values: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(values.len()))?;
        for (name, v) in values {
            seq.serialize_element(&(name.as_str(), Out(*v)))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
        let wire: Vec<(String, Wire)> = Vec::deserialize(d)?;
        wire.into_iter()
            .map(|(n, w)| match w {
                Wire::Num(v) => Ok((n, v)),
                Wire::Text(t) => match t.as_str() {
                    "nan" => Ok((n, f64::NAN)),
                    "inf" => Ok((n, f64::INFINITY)),
                    "-inf" => Ok((n, f64::NEG_INFINITY)),
                    other => Err(D::Error::custom(format!(
                        "metric {n}: {other:?} is not a number"
                    ))),
                },
            })
            .collect()
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kid event this version does not know (a newer kid's) is skipped, not an error that
    /// stops a whole batch (protocol 2 readers failed on `rule_problem`).
    #[test]
    fn an_unknown_kid_event_is_read_as_unknown() {
        let e: KidEvent =
            serde_json::from_str(r#"{"event":"gpu_sample","t":1.5,"gpus":[{"util":90}]}"#).unwrap();
        assert_eq!(e, KidEvent::Unknown);
        assert_eq!(e.time(), None);
        let known: KidEvent =
            serde_json::from_str(r#"{"event":"rule_problem","t":2.0,"message":"m"}"#).unwrap();
        assert_eq!(known.time(), Some(2.0));
    }

    #[test]
    fn spec_periods_are_checked() {
        let spec = |sample_secs, grace_secs| KidSpec {
            sample_secs,
            grace_secs,
            ..KidSpec::default()
        };
        assert!(KidSpec::default().validate().is_ok());
        assert_eq!(
            serde_json::from_str::<KidSpec>("{}").unwrap(),
            KidSpec::default()
        );
        assert!(spec(5.0, 10.0).validate().is_ok());
        assert!(spec(0.1, 0.0).validate().is_ok());
        for (s, g, key) in [
            (-1.0, 10.0, "sample_secs"),
            (0.0, 10.0, "sample_secs"),
            (f64::NAN, 10.0, "sample_secs"),
            (f64::INFINITY, 10.0, "sample_secs"),
            (5.0, -0.5, "grace_secs"),
            (5.0, f64::NAN, "grace_secs"),
            (5.0, f64::INFINITY, "grace_secs"),
        ] {
            let e = spec(s, g).validate().unwrap_err();
            assert!(e.starts_with(key), "{s} {g}: {e}");
        }
    }

    /// Snapshot: the on-disk event format. A change here breaks old run directories.
    #[test]
    fn event_log_format_is_stable() {
        let events = [
            KidEvent::Started {
                t: 1.5,
                pid: 10,
                job_pid: 11,
                host: "n1".into(),
            },
            KidEvent::Metrics {
                t: 2.0,
                step: Some(3.0),
                values: vec![("loss".into(), 0.25)],
            },
            KidEvent::Resources {
                t: 3.0,
                cpu_percent: 99.5,
                rss_bytes: 1024,
                processes: 2,
                gpu_percent: None,
                gpu_mem_bytes: None,
                gpus: Vec::new(),
                output_bytes: None,
            },
            KidEvent::RuleFired {
                t: 4.0,
                rule: "loss>1".into(),
                values: Vec::new(),
            },
            KidEvent::Resources {
                t: 3.5,
                cpu_percent: 12.5,
                rss_bytes: 2048,
                processes: 1,
                gpu_percent: Some(14.0),
                gpu_mem_bytes: Some(1388 << 20),
                gpus: vec!["0: NVIDIA H100 80GB HBM3".into()],
                output_bytes: Some(4096),
            },
            KidEvent::RuleFired {
                t: 4.2,
                rule: "loss>1".into(),
                values: vec![("loss".into(), 3.1), ("runtime".into(), 45.25)],
            },
            KidEvent::RuleProblem {
                t: 4.5,
                message: "field \"LOSS\" is ambiguous".into(),
            },
            KidEvent::Exited {
                t: 5.0,
                outcome: Outcome::Aborted {
                    by: AbortCause::Rule("loss>1".into()),
                    signal: Some(15),
                    code: None,
                },
                reason: None,
                stderr_tail: Vec::new(),
            },
            KidEvent::Exited {
                t: 6.0,
                outcome: Outcome::Exit { code: 0 },
                reason: None,
                stderr_tail: Vec::new(),
            },
            KidEvent::Exited {
                t: 6.5,
                outcome: Outcome::Exit { code: 1 },
                reason: Some("torch.OutOfMemoryError: CUDA out of memory.".into()),
                stderr_tail: vec![
                    "Traceback (most recent call last):".into(),
                    "torch.OutOfMemoryError: CUDA out of memory.".into(),
                ],
            },
            KidEvent::Metrics {
                t: 7.0,
                step: None,
                values: vec![
                    ("loss".into(), f64::NAN),
                    ("grad".into(), f64::INFINITY),
                    ("acc".into(), 0.5),
                ],
            },
        ];
        let text: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        assert_eq!(
            text,
            [
                r#"{"event":"started","t":1.5,"pid":10,"job_pid":11,"host":"n1"}"#,
                r#"{"event":"metrics","t":2.0,"step":3.0,"values":[["loss",0.25]]}"#,
                r#"{"event":"resources","t":3.0,"cpu_percent":99.5,"rss_bytes":1024,"processes":2}"#,
                r#"{"event":"rule_fired","t":4.0,"rule":"loss>1"}"#,
                r#"{"event":"resources","t":3.5,"cpu_percent":12.5,"rss_bytes":2048,"processes":1,"gpu_percent":14.0,"gpu_mem_bytes":1455423488,"gpus":["0: NVIDIA H100 80GB HBM3"],"output_bytes":4096}"#,
                r#"{"event":"rule_fired","t":4.2,"rule":"loss>1","values":[["loss",3.1],["runtime",45.25]]}"#,
                r#"{"event":"rule_problem","t":4.5,"message":"field \"LOSS\" is ambiguous"}"#,
                r#"{"event":"exited","t":5.0,"outcome":{"how":"aborted","by":{"by":"rule","detail":"loss>1"},"signal":15,"code":null}}"#,
                r#"{"event":"exited","t":6.0,"outcome":{"how":"exit","code":0}}"#,
                r#"{"event":"exited","t":6.5,"outcome":{"how":"exit","code":1},"reason":"torch.OutOfMemoryError: CUDA out of memory.","stderr_tail":["Traceback (most recent call last):","torch.OutOfMemoryError: CUDA out of memory."]}"#,
                r#"{"event":"metrics","t":7.0,"step":null,"values":[["loss","nan"],["grad","inf"],["acc",0.5]]}"#,
            ]
        );
        for line in &text {
            let back: KidEvent = serde_json::from_str(line).unwrap();
            assert_eq!(&serde_json::to_string(&back).unwrap(), line);
        }
    }
}
