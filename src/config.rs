//! `neronet.yaml` (SPEC §7): the project's file, laid over the user's defaults in the XDG config
//! dir (`~/.config/neronet/neronet.yaml`). Unknown keys and bad values are errors that name the key
//! and the line. The `local` cluster always exists.

use nerokid::report::{MetricFile, MetricsSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "neronet.yaml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The experiments workbook, relative to the project directory.
    #[serde(default)]
    pub workbook: Option<String>,
    /// Default command for rows without a `command` cell.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Default auto-termination rule.
    #[serde(default)]
    pub abort_when: Option<String>,
    /// `abort_when` is not evaluated before a run has run this long (`10m`): the noise of the
    /// first steps cannot end a run.
    #[serde(default)]
    pub min_runtime: Option<String>,
    #[serde(default)]
    pub email: Option<EmailConfig>,
    /// Chat webhooks (Slack, Mattermost, Discord, ntfy), beside or instead of e-mail.
    #[serde(default)]
    pub chat: Option<Vec<ChatConfig>>,
    /// The metric columns of the `status` table, in order (default: chosen, see
    /// `view::MetricColumns::Auto`).
    #[serde(default)]
    pub status_metrics: Option<Vec<String>>,
    /// Fields (`runtime`, a metric, `node`, ...) the watcher keeps in tool-owned columns
    /// `neronet.<field>` of the experiments sheet (docs/WORKBOOK.md).
    #[serde(default)]
    pub workbook_columns: Option<Vec<String>>,
    /// How `neroman watch` watches the workbook.
    #[serde(default)]
    pub watch: Option<WatchConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Poll the workbook's directory this often instead of inotify (for NFS, SMB or sync
    /// folders the watcher does not recognise itself), e.g. `2s`.
    #[serde(default)]
    pub poll: Option<String>,
    /// How long a burst of file events is let settle before the workbook is read (`300ms`).
    #[serde(default)]
    pub debounce: Option<String>,
}

impl WatchConfig {
    pub fn poll(&self) -> Option<std::time::Duration> {
        self.poll
            .as_deref()
            .and_then(|v| parse_duration(v).ok())
            .map(std::time::Duration::from_secs_f64)
    }
    pub fn debounce(&self) -> Option<std::time::Duration> {
        self.debounce
            .as_deref()
            .and_then(|v| parse_duration(v).ok())
            .map(std::time::Duration::from_secs_f64)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Host alias from ~/.ssh/config or user@host; none for `local`.
    #[serde(default)]
    pub ssh: Option<String>,
    /// An ssh config file passed as `ssh -F` (else ssh reads the user's own).
    #[serde(default)]
    pub ssh_config: Option<PathBuf>,
    /// `None` when not written, so that a project's `warden: local` overrides a user's
    /// `warden: slurm` (see [`ClusterConfig::warden`]).
    #[serde(default)]
    pub warden: Option<Warden>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub max_parallel: Option<u32>,
    #[serde(default)]
    pub poll_interval: Option<String>,
    #[serde(default)]
    pub requeue: Option<bool>,
    /// The most runs in one SLURM job array (the cluster's `MaxArraySize` may be lower).
    #[serde(default)]
    pub array_max: Option<u32>,
    #[serde(default)]
    pub slurm: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub sge: BTreeMap<String, Scalar>,
    /// `None` when not written (a user default may apply); `Some(vec![])` clears it.
    #[serde(default)]
    pub setup: Option<Vec<String>>,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped.
    #[serde(default)]
    pub grace: Option<String>,
    /// Where mum listens for its kids' reports (TCP): `auto`, `off`, an IP address of the
    /// login node, or the name of its interface the compute nodes reach.
    #[serde(default)]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Warden {
    #[default]
    Local,
    Slurm,
    Sge,
}

impl Warden {
    pub fn as_str(self) -> &'static str {
        match self {
            Warden::Local => "local",
            Warden::Slurm => "slurm",
            Warden::Sge => "sge",
        }
    }
}

/// A YAML scalar given as an option value (`time: 2:00:00`, `mem: 4G`, `cpus: 4`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Scalar {
    /// The value of a Grid Engine option (`sge:`): `true`/`false` are qsub's `y`/`n`
    /// (`R: true` → `-R y`).
    pub fn option_text(&self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => (if *b { "y" } else { "n" }).to_string(),
            Scalar::Text(t) => t.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Scan stdout/stderr for `name=value` and `name: value` (default true).
    #[serde(default)]
    pub tokens: Option<bool>,
    /// Regexes with named groups.
    #[serde(default)]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub files: Vec<MetricFileConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricFileConfig {
    pub path: String,
    pub format: nerokid::report::MetricFileFormat,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub to: Option<String>,
    pub from: Option<String>,
    pub smtp: Option<SmtpConfig>,
    pub sendmail: Option<String>,
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub when: Vec<String>,
    pub digest: Option<String>,
    /// Alert kinds sent at once rather than in the digest (default: `crashed`, `rule`).
    pub immediate: Option<Vec<String>>,
    /// A running run with no output for this long raises a `stalled` alert (default `1h`;
    /// `off` for none). It is not stopped.
    pub stalled: Option<String>,
    /// A run queued longer than this raises a `queued` alert (default: none).
    pub queued_over: Option<String>,
}

/// One chat webhook: a JSON POST (ntfy: a plain-text POST) with the same alerts, short.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// The webhook address; or `url_env`, the environment variable that holds it (a Slack
    /// webhook address is a secret).
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// `slack`, `mattermost`, `discord` or `ntfy`; guessed from the address when left out.
    pub kind: Option<String>,
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub when: Vec<String>,
    pub digest: Option<String>,
    pub immediate: Option<Vec<String>>,
    pub stalled: Option<String>,
    pub queued_over: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: Option<u16>,
    pub tls: Option<SmtpTls>,
    pub user: Option<String>,
    /// Name of the environment variable holding the password (never the password itself).
    pub password_env: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's (a private relay).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for SmtpConfig {
    /// Names the password's variable, never a value read from it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password_env", &self.password_env)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Tls,
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// The project's config over the user's defaults.
    pub fn load(project_dir: &Path) -> Result<Config, ConfigError> {
        let user = user_config_path()
            .map(|p| load_file(&p))
            .transpose()?
            .flatten();
        let project = load_file(&project_dir.join(CONFIG_FILE))?;
        let mut cfg = match (user, project) {
            (Some(u), Some(p)) => u.overlay(p),
            (u, p) => p.or(u).unwrap_or_default(),
        };
        cfg.clusters.entry("local".into()).or_default();
        cfg.validate(&project_dir.join(CONFIG_FILE))?;
        Ok(cfg)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        // serde_path_to_error adds the key path (`clusters.local.max_parallel`) that the YAML
        // error's line and column point at.
        let mut key = String::new();
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                key = e.path().to_string();
                e.into_inner()
            })
        })
        .map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: if key.is_empty() || key == "." {
                e.to_string()
            } else {
                format!("{key}: {e}")
            },
        })
    }

    /// `other` wins key by key; clusters merge by name.
    fn overlay(mut self, other: Config) -> Config {
        for (name, project) in other.clusters {
            let merged = match self.clusters.remove(&name) {
                Some(user) => user.overlay(project),
                None => project,
            };
            self.clusters.insert(name, merged);
        }
        Config {
            workbook: other.workbook.or(self.workbook),
            command: other.command.or(self.command),
            clusters: self.clusters,
            metrics: other.metrics.or(self.metrics),
            abort_when: other.abort_when.or(self.abort_when),
            min_runtime: other.min_runtime.or(self.min_runtime),
            email: other.email.or(self.email),
            chat: other.chat.or(self.chat),
            status_metrics: other.status_metrics.or(self.status_metrics),
            workbook_columns: other.workbook_columns.or(self.workbook_columns),
            watch: other.watch.or(self.watch),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if let Some(d) = &self.min_runtime {
            parse_duration(d).map_err(|e| bad(format!("min_runtime: {d:?}: {e}")))?;
        }
        if let Some(rule) = &self.abort_when {
            nerokid::expr::parse_rule(rule)
                .map_err(|e| bad(format!("abort_when: {rule:?}: {e}")))?;
        }
        for (name, c) in &self.clusters {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(bad(format!(
                    "clusters.{name}: a cluster name is letters, digits, '-' and '_'"
                )));
            }
            if c.max_parallel == Some(0) {
                return Err(bad(format!(
                    "clusters.{name}.max_parallel: must be at least 1"
                )));
            }
            if c.array_max == Some(0) {
                return Err(bad(format!(
                    "clusters.{name}.array_max: must be at least 1"
                )));
            }
            for (key, value) in &c.slurm {
                let text = match value {
                    Scalar::Text(t) => t.clone(),
                    _ => String::new(),
                };
                crate::cluster::mum::slurm::check_option(key, &text)
                    .map_err(|m| bad(format!("clusters.{name}.{m}")))?;
            }
            for (key, value) in &c.sge {
                crate::cluster::mum::sge::check_option(key, &value.option_text())
                    .map_err(|m| bad(format!("clusters.{name}.{m}")))?;
            }
            if let Some(l) = &c.listen {
                crate::cluster::mum::kids::check_listen(l)
                    .map_err(|m| bad(format!("clusters.{name}.listen: {m}")))?;
            }
            for (key, value) in [("poll_interval", &c.poll_interval), ("grace", &c.grace)] {
                if let Some(v) = value {
                    parse_duration(v)
                        .map_err(|e| bad(format!("clusters.{name}.{key}: {v:?}: {e}")))?;
                }
            }
        }
        // One agent serves a workdir, with one warden: two clusters on one login node need
        // workdirs of their own (a remote workdir defaults to `neronet`).
        let mut agents: BTreeMap<(String, String, String), (&str, Warden)> = BTreeMap::new();
        for (name, c) in &self.clusters {
            let Some(host) = &c.ssh else { continue };
            let key = (
                host.clone(),
                c.ssh_config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                c.workdir.clone().unwrap_or_else(|| "neronet".into()),
            );
            match agents.get(&key) {
                Some((other, w)) if *w != c.warden() => {
                    return Err(bad(format!(
                        "clusters.{name}: its agent would share the workdir {:?} on {host} with cluster {other}, which uses another warden ({} and {}); give one of them its own `workdir:`",
                        key.2,
                        c.warden().as_str(),
                        w.as_str()
                    )))
                }
                _ => {
                    agents.insert(key, (name.as_str(), c.warden()));
                }
            }
        }
        if let Some(w) = &self.watch {
            for (key, value) in [("poll", &w.poll), ("debounce", &w.debounce)] {
                if let Some(v) = value {
                    parse_duration(v).map_err(|e| bad(format!("watch.{key}: {v:?}: {e}")))?;
                }
            }
        }
        for f in self.workbook_columns.iter().flatten() {
            if f.trim().is_empty() || f.contains(['\n', '\r']) {
                return Err(bad(format!("workbook_columns: {f:?} is not a field name")));
            }
        }
        // email: and chat: read as the notifier reads them (src/notify/channel.rs): the error
        // names the key (`email.stalled`, `chat[1].kind`). A `password_env` or `url_env`
        // naming an unset variable is reported when sending, not here.
        crate::notify::channel::channels(self).map_err(bad)?;
        if let Some(m) = &self.metrics {
            nerokid::metrics::Extractor::new(true, &m.patterns)
                .map_err(|e| bad(format!("metrics.patterns: {e}")))?;
        }
        Ok(())
    }

    /// `min_runtime` in seconds (0 when not set).
    pub fn min_runtime_secs(&self) -> f64 {
        self.min_runtime
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
            .unwrap_or(0.0)
    }

    pub fn metrics_spec(&self) -> MetricsSpec {
        match &self.metrics {
            None => MetricsSpec::default(),
            Some(m) => MetricsSpec {
                tokens: m.tokens.unwrap_or(true),
                patterns: m.patterns.clone(),
                files: m
                    .files
                    .iter()
                    .map(|f| MetricFile {
                        path: f.path.clone(),
                        format: f.format,
                    })
                    .collect(),
            },
        }
    }

    pub fn workbook_path(&self, project_dir: &Path) -> PathBuf {
        project_dir.join(self.workbook.as_deref().unwrap_or("experiments.xlsx"))
    }
}

impl ClusterConfig {
    /// Whether this version can run jobs there: the `local`, `slurm` or `sge` warden, with the
    /// mum on this machine or on the login node named by `ssh:`.
    pub fn is_supported(&self) -> bool {
        matches!(self.warden(), Warden::Local | Warden::Slurm | Warden::Sge)
    }

    /// How often the SLURM warden asks squeue (`poll_interval`, default 5 s).
    pub fn poll_interval_secs(&self) -> f64 {
        self.poll_interval
            .as_deref()
            .and_then(|g| parse_duration(g).ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(5.0)
    }

    /// The warden in effect: as written, else `local`.
    pub fn warden(&self) -> Warden {
        self.warden.unwrap_or_default()
    }

    /// The project's settings for a cluster over the user's: key by key, the project's wins
    /// where it says something (so `max_parallel: 2` in a project keeps the user's `setup`).
    fn overlay(self, p: ClusterConfig) -> ClusterConfig {
        let mut slurm = self.slurm;
        slurm.extend(p.slurm);
        let mut sge = self.sge;
        sge.extend(p.sge);
        ClusterConfig {
            ssh_config: p.ssh_config.or(self.ssh_config),
            ssh: p.ssh.or(self.ssh),
            warden: p.warden.or(self.warden),
            workdir: p.workdir.or(self.workdir),
            max_parallel: p.max_parallel.or(self.max_parallel),
            poll_interval: p.poll_interval.or(self.poll_interval),
            requeue: p.requeue.or(self.requeue),
            array_max: p.array_max.or(self.array_max),
            slurm,
            sge,
            setup: p.setup.or(self.setup),
            grace: p.grace.or(self.grace),
            listen: p.listen.or(self.listen),
        }
    }

    pub fn grace_secs(&self) -> f64 {
        self.grace
            .as_deref()
            .and_then(|g| parse_duration(g).ok())
            .unwrap_or(10.0)
    }
}

/// A value error (`email.when[0]: "loss >> 2": column 7: ...`) with the line of its key in the
/// file, as serde's errors have: `email.when[0]: line 12: "loss >> 2": ...`.
fn with_line(e: ConfigError, text: &str) -> ConfigError {
    match e {
        ConfigError::Invalid { path, message } => {
            let message = match message.split_once(": ") {
                Some((key, rest))
                    if !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_alphanumeric() || "._-[]".contains(c)) =>
                {
                    match line_of(text, key) {
                        Some(n) => format!("{key}: line {n}: {rest}"),
                        None => message,
                    }
                }
                _ => message,
            };
            ConfigError::Invalid { path, message }
        }
        other => other,
    }
}

/// The 1-based line of a key path (`clusters.local.grace`, `chat[1].kind`, `email.when[0]`)
/// in a YAML text written in block style; for a list written inline, the line of its key.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let all: Vec<&str> = text.lines().collect();
    let lines = &all[..];
    let indent_of = |l: &str| (l.len() - l.trim_start().len()) as isize;
    let content = |l: &str| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#')
    };
    // The block of the parent: lines after `from` indented deeper than `parent`.
    let block = |from: usize, parent: isize| {
        (from..lines.len())
            .take_while(move |&i| !content(lines[i]) || indent_of(lines[i]) > parent)
            .filter(move |&i| content(lines[i]))
    };
    let has_key = |i: usize, key: &str| {
        let t = lines[i].trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        t.strip_prefix(key).is_some_and(|r| r.starts_with(':'))
    };
    let (mut from, mut parent, mut found) = (0usize, -1isize, None);
    // A list item just chosen: its first key is on its own `- ` line.
    let mut item: Option<usize> = None;
    for seg in path.split('.') {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        if !key.is_empty() {
            let i = item
                .filter(|&j| has_key(j, key))
                .or_else(|| block(from, parent).find(|&i| has_key(i, key)))?;
            item = None;
            found = Some(i);
            parent = indent_of(lines[i])
                + if lines[i].trim_start().starts_with("- ") {
                    2
                } else {
                    0
                };
            from = i + 1;
        }
        if let Some(n) = index {
            if let Some(j) = block(from, parent)
                .filter(|&j| lines[j].trim_start().starts_with("- "))
                .nth(n)
            {
                found = Some(j);
                parent = indent_of(lines[j]) + 1;
                from = j + 1;
                item = Some(j);
            }
        }
    }
    found.map(|i| i + 1)
}

/// Read and check one file, so a mistake is reported against the file that holds it.
fn load_file(path: &Path) -> Result<Option<Config>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let cfg = Config::parse(&text, path)?;
            cfg.validate(path).map_err(|e| with_line(e, &text))?;
            Ok(Some(cfg))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            err,
        }),
    }
}

/// `~/.config/neronet/neronet.yaml` (honours XDG_CONFIG_HOME).
pub fn user_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "neronet").map(|d| d.config_dir().join(CONFIG_FILE))
}

/// Durations in `neronet.yaml` (`grace: 10s`, `digest: 1h30m`) are read exactly as a rule
/// reads them (`runtime>1h30m`): one grammar, in the kid crate's expression module. Never
/// negative or infinite (an endless grace never ends a run).
pub use nerokid::expr::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "command: python3 train.py\nclusters:\n  local:\n    max_paralel: 2\n";
        let e = Config::parse(text, Path::new("neronet.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_paralel"), "{e}");
        assert!(e.contains('4'), "line number missing: {e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::parse(
            "clusters:\n  local:\n    max_parallel: lots\n",
            Path::new("n.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("clusters.local.max_parallel: ") && e.contains("line 3"),
            "{e}"
        );
        let cfg = Config::parse("abort_when: 'loss>>1'\n", Path::new("n.yaml")).unwrap();
        assert!(cfg
            .validate(Path::new("n.yaml"))
            .unwrap_err()
            .to_string()
            .contains("abort_when"));
    }

    /// Regression: `grace: inf` (and any duration that parses to infinity) was accepted, and a
    /// run's SIGTERM→SIGKILL grace became endless.
    #[test]
    fn an_infinite_or_negative_duration_is_refused() {
        for key in ["grace", "poll_interval"] {
            for v in ["inf", "infs", "-inf", "nan", "1e400", "1e308d", "-1", "-2s"] {
                let yaml = format!("clusters:\n  local:\n    {key}: '{v}'\n");
                let path = Path::new("dir/neronet.yaml");
                let cfg = Config::parse(&yaml, path).unwrap();
                let e = cfg
                    .validate(path)
                    .expect_err(&format!("{key}: {v} accepted"))
                    .to_string();
                assert!(
                    e.contains("dir/neronet.yaml")
                        && e.contains(&format!("clusters.local.{key}: "))
                        && e.contains(&format!("{v:?}")),
                    "{e}"
                );
            }
        }
        for v in ["inf", "1e400s"] {
            assert!(parse_duration(v).is_err(), "{v}");
        }
        assert_eq!(parse_duration("0"), Ok(0.0));
        assert_eq!(parse_duration("1.5m"), Ok(90.0));
    }

    /// Regression: neronet.yaml had a duration parser of its own, with other forms than a
    /// rule's (`1w` and `1h30m` were refused here; `10 s` was taken). Every duration key now
    /// reads exactly what `runtime>…` reads.
    #[test]
    fn config_durations_take_the_rule_forms() {
        for (v, secs) in [
            ("1w", 604800.0),
            ("1h30m", 5400.0),
            ("2e1s", 20.0),
            ("90", 90.0),
        ] {
            let yaml = format!(
                "clusters:\n  local:\n    grace: '{v}'\n    poll_interval: '{v}'\nemail:\n  to: a@b.c\n  sendmail: /usr/sbin/sendmail\n  digest: '{v}'\n"
            );
            let cfg = Config::parse(&yaml, Path::new("n.yaml")).unwrap();
            cfg.validate(Path::new("n.yaml"))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(cfg.clusters["local"].grace_secs(), secs, "{v}");
            let rule = nerokid::expr::parse(&format!("runtime>{v}")).unwrap();
            assert_eq!(rule.comparisons()[0].value.as_number(), Some(secs), "{v}");
        }
        let cfg = Config::parse(
            "clusters:\n  local:\n    grace: '10 s'\n",
            Path::new("n.yaml"),
        )
        .unwrap();
        let e = cfg.validate(Path::new("n.yaml")).unwrap_err().to_string();
        assert!(
            e.contains("clusters.local.grace: \"10 s\"") && e.contains("like 90s"),
            "{e}"
        );
    }

    #[test]
    fn project_config_lies_over_user_defaults() {
        let user = Config::parse(
            "command: user-cmd {x}\nabort_when: loss>9\nclusters:\n  local:\n    max_parallel: 8\n    grace: 3s\n  other:\n    max_parallel: 1\n",
            Path::new("user.yaml"),
        )
        .unwrap();
        let project = Config::parse(
            "command: project-cmd {x}\nclusters:\n  local:\n    max_parallel: 2\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let merged = user.overlay(project);
        assert_eq!(merged.command.as_deref(), Some("project-cmd {x}"));
        assert_eq!(
            merged.abort_when.as_deref(),
            Some("loss>9"),
            "kept from the user's defaults"
        );
        assert_eq!(merged.clusters["local"].max_parallel, Some(2));
        assert_eq!(
            merged.clusters["local"].grace.as_deref(),
            Some("3s"),
            "the user's grace survives"
        );
        assert_eq!(merged.clusters["other"].max_parallel, Some(1));
    }

    /// Regression: `warden: local` in a project could not override a user default of
    /// `warden: slurm`: an unwritten warden and `warden: local` were the same value, so the
    /// overlay kept the user's. The cluster stayed a SLURM one and its rows were refused.
    #[test]
    fn two_clusters_with_other_wardens_cannot_share_a_login_nodes_workdir() {
        let check = |yaml: &str| {
            let cfg = Config::parse(yaml, Path::new("n.yaml")).unwrap();
            cfg.validate(Path::new("n.yaml"))
                .err()
                .map(|e| e.to_string())
        };
        let e = check(
            "clusters:\n  a:\n    ssh: login\n    warden: sge\n  b:\n    ssh: login\n    warden: slurm\n",
        )
        .expect("refused");
        assert!(
            e.contains("clusters.b") && e.contains("\"neronet\"") && e.contains("cluster a"),
            "{e}"
        );
        // Their own workdirs, another host, or the same warden: fine.
        assert_eq!(check("clusters:\n  a:\n    ssh: login\n    warden: sge\n  b:\n    ssh: login\n    warden: slurm\n    workdir: nn-slurm\n"), None);
        assert_eq!(check("clusters:\n  a:\n    ssh: login\n    warden: sge\n  b:\n    ssh: other\n    warden: slurm\n"), None);
        assert_eq!(check("clusters:\n  a:\n    ssh: login\n    warden: slurm\n  b:\n    ssh: login\n    warden: slurm\n"), None);
    }

    #[test]
    fn a_project_warden_local_overrides_a_user_default() {
        let user = Config::parse(
            "clusters:\n  local:\n    warden: slurm\n  gpu:\n    ssh: gpu-box\n    warden: slurm\n    max_parallel: 4\n",
            Path::new("user.yaml"),
        )
        .unwrap();
        let project = Config::parse(
            "clusters:\n  local:\n    warden: local\n  gpu:\n    warden: local\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let merged = user.clone().overlay(project);
        assert_eq!(merged.clusters["local"].warden(), Warden::Local);
        assert!(merged.clusters["local"].is_supported());
        let gpu = &merged.clusters["gpu"];
        assert_eq!(gpu.warden(), Warden::Local, "plain processes on gpu-box");
        assert_eq!(gpu.ssh.as_deref(), Some("gpu-box"));
        assert_eq!(gpu.max_parallel, Some(4));
        // A project that says nothing keeps the user's warden; one never written is local.
        let silent = Config::parse(
            "clusters:\n  local:\n    max_parallel: 2\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let merged = user.overlay(silent);
        assert_eq!(merged.clusters["local"].warden(), Warden::Slurm);
        assert_eq!(ClusterConfig::default().warden(), Warden::Local);
    }

    /// A SLURM cluster runs (through a mum on this machine); its `slurm:` keys and
    /// `array_max` are checked, naming the key.
    #[test]
    fn slurm_cluster_settings_are_checked() {
        let check = |yaml: &str| {
            let cfg = Config::parse(yaml, Path::new("n.yaml")).unwrap();
            cfg.validate(Path::new("n.yaml"))
                .err()
                .map(|e| e.to_string())
        };
        let ok = "clusters:\n  hpc:\n    warden: slurm\n    array_max: 500\n    slurm: {partition: debug, time: '1:00:00'}\n";
        assert!(check(ok).is_none());
        let cfg = Config::parse(ok, Path::new("n.yaml")).unwrap();
        assert!(cfg.clusters["hpc"].is_supported());
        assert_eq!(cfg.clusters["hpc"].poll_interval_secs(), 5.0);
        let e = check("clusters:\n  hpc:\n    warden: slurm\n    array_max: 0\n").unwrap();
        assert!(
            e.contains("clusters.hpc.array_max: must be at least 1"),
            "{e}"
        );
        let e = check("clusters:\n  hpc:\n    warden: slurm\n    slurm: {Partition: x}\n").unwrap();
        assert!(
            e.contains("clusters.hpc.slurm.Partition: an option name"),
            "{e}"
        );
        let e = check("clusters:\n  hpc:\n    warden: slurm\n    slurm: {array: 0-9}\n").unwrap();
        assert!(
            e.contains("clusters.hpc.slurm.array: neronet sets --array itself"),
            "{e}"
        );
        let remote = Config::parse(
            "clusters:\n  hpc:\n    ssh: login\n    warden: slurm\n  sge:\n    ssh: login\n    warden: sge\n",
            Path::new("n.yaml"),
        )
        .unwrap();
        assert!(remote.clusters["hpc"].is_supported(), "SLURM over ssh runs");
        assert!(remote.clusters["sge"].is_supported(), "so does Grid Engine");
    }

    /// A Grid Engine cluster runs; its `sge:` keys are checked, naming the key.
    #[test]
    fn sge_cluster_settings_are_checked() {
        let check = |yaml: &str| {
            let cfg = Config::parse(yaml, Path::new("n.yaml")).unwrap();
            cfg.validate(Path::new("n.yaml"))
                .err()
                .map(|e| e.to_string())
        };
        let ok = "clusters:\n  ge:\n    warden: sge\n    sge: {q: all.q, l: 'h_rt=0:10:00,mem_free=1G', l.s_rt: '0:09:00', pe: smp 4, R: true}\n";
        assert!(check(ok).is_none(), "{:?}", check(ok));
        let e = check("clusters:\n  ge:\n    warden: sge\n    sge: {t: 1-5}\n").unwrap();
        assert!(
            e.contains("clusters.ge.sge.t: neronet sets -t itself"),
            "{e}"
        );
        let e = check("clusters:\n  ge:\n    warden: sge\n    sge: {'-q': x}\n").unwrap();
        assert!(e.contains("clusters.ge.sge.-q: an option name"), "{e}");
        let e = check("clusters:\n  ge:\n    warden: sge\n    sge: {q: \"a\\nb\"}\n").unwrap();
        assert!(
            e.contains("clusters.ge.sge.q: ") && e.contains("line break"),
            "{e}"
        );
        assert_eq!(Scalar::Bool(true).option_text(), "y");
    }

    #[test]
    fn value_errors_name_the_line_of_their_key() {
        let text = "command: x\nabort_when: 'loss>>1'\nemail:\n  to: a@b.c\n  when:\n    - 'loss>1'\n    - 'loss >> 2'\nchat:\n  - url: http://a\n  - url: http://b\n    kind: irc\n";
        assert_eq!(line_of(text, "abort_when"), Some(2));
        assert_eq!(line_of(text, "email.when[1]"), Some(7));
        assert_eq!(line_of(text, "email.to"), Some(4));
        assert_eq!(line_of(text, "chat[1].kind"), Some(11));
        assert_eq!(line_of(text, "chat[1].url"), Some(10));
        assert_eq!(line_of(text, "email.from"), None);
        let dir = std::env::temp_dir().join(format!("neronet-cfg-line-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("neronet.yaml");
        std::fs::write(&path, "command: x\nmin_runtime: '5 sec'\n").unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(e.contains("min_runtime: line 2: \"5 sec\""), "{e}");
    }

    #[test]
    fn email_settings_are_checked() {
        let check = |yaml: &str| {
            let cfg = Config::parse(yaml, Path::new("n.yaml")).unwrap();
            cfg.validate(Path::new("n.yaml"))
                .err()
                .map(|e| e.to_string())
        };
        assert!(check("email: {to: a@b.c, on: [crashed], digest: 10m}").is_none());
        assert!(check("email: {to: a@b.c, digest: banana}")
            .unwrap()
            .contains("email.digest"));
        assert!(check("email: {to: not-an-address}")
            .unwrap()
            .contains("email.to"));
        assert!(check("email: {to: a@b.c, on: [crashd]}")
            .unwrap()
            .contains("email.on"));
        assert!(check("email: {to: a@b.c, when: ['los>>1']}")
            .unwrap()
            .contains("email.when"));
        assert!(check("email: {on: [crashed]}")
            .unwrap()
            .contains("email.to: missing"));
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
workbook: experiments.xlsx
command: python3 train.py --lr {lr}
abort_when: epoch>=3 && loss>3
clusters:
  local:
    max_parallel: 2
    setup: ["echo hi"]
metrics:
  patterns: ['acc (?P<acc>[0-9.]+)']
  files: [{path: metrics.csv, format: csv}]
email:
  to: me@example.org
  smtp: {host: localhost, port: 2525, tls: none}
  on: [crashed, finished]
"#;
        let cfg = Config::parse(text, Path::new("n.yaml")).unwrap();
        cfg.validate(Path::new("n.yaml")).unwrap();
        assert_eq!(cfg.clusters["local"].max_parallel, Some(2));
        assert_eq!(cfg.metrics_spec().files.len(), 1);
        assert_eq!(parse_duration("30m"), Ok(1800.0));
    }
}
