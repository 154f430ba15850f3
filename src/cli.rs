//! Command-line interface.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::HerdConfig;

/// Behavioural anomaly detection for containers, per image across replicas.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about)]
pub struct Cli {
    /// Log format on stderr (`RUST_LOG` sets the level, default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "HERD_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Kafka connection settings shared by the commands that talk to a broker.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "HERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bootstrap brokers (overrides `kafka."bootstrap.servers"`).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Any librdkafka property, `KEY=VALUE`; repeatable (overrides the file and
    /// the environment).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

impl KafkaArgs {
    /// The configuration: file, then environment, then these flags.
    pub fn load(&self) -> anyhow::Result<HerdConfig> {
        let mut cfg = HerdConfig::load(self.config.as_deref())?;
        if let Some(b) = &self.brokers {
            cfg.kafka.insert("bootstrap.servers".into(), b.clone());
        }
        for p in &self.properties {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--kafka {p}: expected KEY=VALUE"))?;
            cfg.kafka.insert(k.trim().to_owned(), v.to_owned());
        }
        Ok(cfg)
    }
}

/// An analyst's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictArg {
    /// Expected behaviour: teach it to the group's baseline.
    Benign,
    /// A compromise: keep it anomalous, and mark it for `herd policy from-incident`.
    Malicious,
}

impl From<VerdictArg> for herd_baseline::Verdict {
    fn from(v: VerdictArg) -> Self {
        match v {
            VerdictArg::Benign => herd_baseline::Verdict::Benign,
            VerdictArg::Malicious => herd_baseline::Verdict::Malicious,
        }
    }
}

/// `herd policy …`.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Write a policy stanza that matches an incident's behaviour on its image (its
    /// detectors, deviating features and novel items), with a capture and a dry-run
    /// pause: a bookmark that turns one investigation into a standing rule. Review it,
    /// backtest it, then add it to the policy file. Refused for an incident judged
    /// benign.
    FromIncident {
        /// The incident.
        incident_id: String,
        /// Read the incident's alert lines from this file instead of the alerts topic.
        #[arg(long, value_name = "FILE")]
        alerts: Option<PathBuf>,
        /// Read verdicts from this file (`herd feedback --out`) instead of the feedback
        /// topic (which is read only when the alerts come from Kafka too).
        #[arg(long, value_name = "FILE")]
        feedback: Option<PathBuf>,
        /// Write the stanza to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay recorded input (any mix of formats, one JSON object per line) through
    /// detection; alerts go to stdout as JSON lines, a summary to stderr.
    Replay {
        /// Input files; `-` reads stdin.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Configuration file (TOML).
        #[arg(long, env = "HERD_CONFIG")]
        config: Option<PathBuf>,
        /// Write alerts to this file (appending) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// False-alert budget: chance alerts per container per day (overrides the file).
        #[arg(long)]
        budget: Option<f64>,
        /// No summary on stderr.
        #[arg(long)]
        quiet: bool,
        /// Adopt the retrained snapshots in this directory (`herd retrain --out`), each
        /// when the replay reaches the end of its window, as workers adopt a nightly
        /// retrain from `herd.retrained`: to see what a retrain changes on recorded data
        /// before publishing it.
        #[arg(long, value_name = "DIR")]
        retrained: Option<PathBuf>,
        /// Score only records at or after this time (RFC 3339 or epoch ms), starting
        /// from empty baselines there, as a worker deployed then would; earlier records
        /// only teach who is who.
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// Apply the feedback records in this file (`herd feedback --out`), each when
        /// the replay reaches its time: what a verdict changes on the data after it.
        #[arg(long, value_name = "FILE")]
        feedback: Option<PathBuf>,
    },
    /// Give a verdict on an incident: `benign` teaches the group's baseline (the
    /// behaviour is expected from now on), `malicious` keeps it anomalous on every
    /// replica. Reads the incident's alert lines from `herd.alerts` (or `--alerts`),
    /// publishes the record to `herd.feedback` (or writes it to `--out`), and prints it.
    Feedback {
        /// The incident (`incident_id` of its alert lines).
        incident_id: String,
        /// The verdict.
        verdict: VerdictArg,
        /// Why, for the audit record.
        #[arg(long)]
        note: Option<String>,
        /// Who gives it, for the audit record (default: the login name).
        #[arg(long)]
        by: Option<String>,
        /// Read the incident's alert lines from this file instead of the alerts topic.
        #[arg(long, value_name = "FILE")]
        alerts: Option<PathBuf>,
        /// Write the record to this file (appending; `-` for stdout) instead of
        /// publishing it: for `herd replay --feedback`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// When the verdict takes effect (RFC 3339 or epoch ms; default now). With
        /// `--out`, place it in recorded data's time.
        #[arg(long, value_parser = parse_time)]
        at: Option<i64>,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Response policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Backtest response policies on recorded input: detection and the policies' every
    /// guard (quorum, rate limit, once per incident) as the workers would have applied
    /// them, touching nothing. One JSON line per alert line (the alert, the commands it
    /// would have issued, the refused ones and why) to stdout, a summary to stderr.
    Backtest {
        /// Input files; `-` reads stdin.
        #[arg(
            required_unless_present = "from_topics",
            conflicts_with = "from_topics"
        )]
        inputs: Vec<PathBuf>,
        /// Read the stream service's input topics (`stream.topics.inputs`) instead of
        /// files: every partition from its start to its end now, in event-time order.
        #[arg(long)]
        from_topics: bool,
        /// Judge from this event time on (RFC 3339 or epoch ms): earlier records are
        /// still scored, so the baselines learn from them as the workers' did, but
        /// their alerts are not decided on.
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Judge only records before this event time (RFC 3339 or epoch ms).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// The policy file to judge (TOML, as `respond.policy_file`).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Write the decisions to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// No summary on stderr.
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Run one worker of the stream service: a member of the Kafka consumer group that
    /// scores the input topics and produces alerts, until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Consumer group (overrides `stream.group_id`).
        #[arg(long)]
        group_id: Option<String>,
    },
    /// Run the node agent on this Docker host: publish stats samples and Docker events,
    /// execute the commands of `herd.actions` for this host (capture, pause, isolate,
    /// …) and publish their outcomes, until SIGTERM or SIGINT.
    Agent {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// This host's name (overrides `agent.host`).
        #[arg(long)]
        host: Option<String>,
    },
    /// Prove that detection, response and evidence work end to end: start a labelled
    /// canary replica beside a real group (or in a throwaway group), make it misbehave
    /// harmlessly (a marker file, an unexpected process, a CPU burn), wait for its
    /// alert, its policy's actions and its evidence bundle, report the time to each,
    /// and remove what it started. Exits non-zero when a step never comes.
    Drill {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Start the canary beside this running container's group (same image, its
        /// labels but Kubernetes' own).
        #[arg(long, conflicts_with = "image", required_unless_present = "image")]
        like: Option<String>,
        /// Or drill a throwaway group of this image (it needs a shell).
        #[arg(long)]
        image: Option<String>,
        /// Idle siblings of the throwaway group.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// How long the canary behaves before it misbehaves (`0s` beside a real group;
        /// the workers' warm-up and 30 s in a throwaway group).
        #[arg(long, value_parser = parse_duration)]
        settle: Option<std::time::Duration>,
        /// How long each step may take.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// The whole stream service in one process, with nothing to set up: an in-process
    /// Kafka, a simulated fleet produced to it on an accelerated clock, one worker.
    /// Prints alerts as they come and a summary at the end.
    Demo {
        /// Simulation seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// How long the demo runs (`90s`, `2m`).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: std::time::Duration,
    },
    /// Produce recorded lines (any input format) to a topic, keyed the way herd routes
    /// them. Several files are merged in event time.
    Produce {
        /// Input files; `-` reads stdin.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Destination topic. Without it, records go to the input topics by kind
        /// (`stream.topics.inputs`: samples, events, metrics), as the agent publishes.
        #[arg(long)]
        topic: Option<String>,
        /// How records are keyed.
        #[arg(long, value_enum, default_value_t = crate::produce::KeyBy::Route)]
        key_by: crate::produce::KeyBy,
        /// At most this many records per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Send only records at or after this time (RFC 3339 or epoch ms); earlier ones
        /// are read to learn containers, not sent.
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// Send only records before this time (RFC 3339 or epoch ms).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Render an evidence bundle as one self-contained HTML page: plots of the
    /// deviating features before and after the alert with the baseline range and the
    /// peers' band, the novel items, every artifact with its hash checked again, the
    /// actions and the timeline.
    Report {
        /// The bundle: its folder, its URL (`s3://bucket/evidence/<incident>/`), or an
        /// incident id in `agent.evidence_url`.
        bundle: String,
        /// Write the page here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// List the incident's actions from this file of `herd.responses` lines (as
        /// published, or `herd consume` output).
        #[arg(long, value_name = "FILE", conflicts_with = "responses_topic")]
        responses: Option<PathBuf>,
        /// List the incident's actions from the responses topic (read to its end).
        #[arg(long)]
        responses_topic: bool,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Print every record of a topic (payload, key, headers) as JSON lines, from its
    /// start to its current end.
    Consume {
        /// The topic.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Write a labelled synthetic fleet in the real input formats.
    Simulate {
        /// Random seed: the same seed gives the same fleet, byte for byte.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        /// Hours of fleet time to simulate (attacks need at least 48).
        #[arg(long, default_value_t = 48)]
        hours: u32,
        /// Seconds between stats samples.
        #[arg(long, default_value_t = 20)]
        interval_s: u32,
        /// Every attack happens again this many hours later on the same containers (a
        /// fleet to judge an analyst's verdict on the first episode with).
        #[arg(long)]
        recur_after_h: Option<u32>,
    },
    /// Print the effective configuration (built-in defaults, overlaid by the file) as
    /// TOML: a starting point for a configuration file, and a check of what herd will use.
    Config {
        /// Configuration file (TOML) to overlay on the defaults.
        #[arg(long, env = "HERD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Retrain baselines from the observation archive with DataFusion: per group and
    /// feature, robust quantiles, median and MAD, hour-of-day and day-of-week profiles,
    /// and the spread between replicas. Writes a versioned snapshot per group
    /// (`--out`) and publishes it to the retrained topic (`--publish`); prints a
    /// summary table.
    Retrain {
        /// The archive (`file:///…`, a directory, `s3://bucket/prefix`); default
        /// `archive.url`.
        #[arg(long)]
        archive: Option<String>,
        /// How far back from `--until` (`14d`, `36h`, `90m`).
        #[arg(long, value_parser = parse_span)]
        since: std::time::Duration,
        /// End of the window (RFC 3339 or epoch ms); default now.
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Write `<group>.json` snapshots here (and compare with those already there).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Publish the snapshots to `stream.topics.retrained`.
        #[arg(long)]
        publish: bool,
        /// Memory for the queries' aggregations before they spill to disk.
        #[arg(long, default_value_t = 1024)]
        memory_mb: usize,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Probe an HTTP endpoint of a herd process (`http://127.0.0.1:9720/readyz`): exit
    /// 0 on HTTP 200, 1 otherwise. For container health checks in an image without curl.
    Probe {
        /// The URL (plain http).
        url: String,
        /// Give up after this long (`3s`, `500ms`).
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Score alerts against a simulation's labels: recall, precision, false alarms and
    /// detection delay.
    Evaluate {
        /// The labels.json written by `herd simulate`.
        #[arg(long)]
        labels: PathBuf,
        /// The alert lines (`herd replay` output).
        alerts: PathBuf,
        /// Print the evaluation as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .ok()
        .or_else(|| herd_ingest::time::parse_rfc3339_ms(s))
        .ok_or_else(|| format!("{s:?}: expected RFC 3339 or epoch milliseconds"))
}

/// A span of history: `90s`, `45m`, `36h`, `14d` (up to a year).
fn parse_span(s: &str) -> Result<std::time::Duration, String> {
    let unit = s.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let num = &s[..s.len() - unit.len()];
    let mult = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("{s:?}: expected a span such as 36h or 14d")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a span such as 36h or 14d"))?;
    if !(v.is_finite() && v > 0.0 && v * mult <= 366.0 * 86_400.0) {
        return Err(format!("{s:?}: out of range (up to a year)"));
    }
    Ok(std::time::Duration::from_secs_f64(v * mult))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, mult) = match s.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 60.0),
            None => (s.strip_suffix('s').unwrap_or(s), 1.0),
        },
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 90s or 2m"))?;
    if !(v.is_finite() && v > 0.0 && v * mult <= 86_400.0) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(v * mult))
}

/// Sets up `tracing` on stderr, one line per event ([`crate::logs`]).
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal as _;
    let colours = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(crate::logs::Stderr { colours });
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Replay {
            inputs,
            config,
            out,
            budget,
            quiet,
            retrained,
            from,
            feedback,
        } => {
            let mut cfg = HerdConfig::load(config.as_deref())?;
            let feedback = match &feedback {
                Some(path) => crate::feedback::read_records(path)?,
                None => Vec::new(),
            };
            let snapshots = match &retrained {
                Some(dir) => crate::retrain::read_dir(dir)?,
                None => Vec::new(),
            };
            if let Some(b) = budget {
                cfg.detect.false_alerts_per_container_day = b;
                cfg.detect.validate()?;
            }
            let progress = !quiet && std::io::stderr().is_terminal();
            let summary = crate::replay::replay(
                &cfg,
                &inputs,
                out.as_ref(),
                progress,
                crate::replay::Schedule {
                    retrained: snapshots,
                    feedback,
                    score_from_ms: from,
                },
            )?;
            if !quiet {
                eprint!("{}", crate::replay::render_summary(&summary));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backtest {
            inputs,
            from_topics,
            since,
            until,
            policy,
            out,
            quiet,
            kafka,
        } => {
            let cfg = kafka.load()?;
            let policies = herd_respond::policy::PolicyFile::load(&policy)?;
            let input = match from_topics {
                true => crate::backtest::Input::Topics,
                false => crate::backtest::Input::Files(&inputs),
            };
            let range = crate::backtest::Range { since, until };
            let summary = crate::backtest::backtest(&cfg, policies, input, range, out.as_ref())?;
            if !quiet {
                eprint!("{}", crate::backtest::render_summary(&summary));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Feedback {
            incident_id,
            verdict,
            note,
            by,
            alerts,
            out,
            at,
            kafka,
        } => {
            let cfg = kafka.load()?;
            let lines = crate::feedback::incident_alerts(&cfg, alerts.as_deref(), &incident_id)?;
            let at = at.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            let fb = herd_detect::Feedback::from_alerts(
                &lines,
                verdict.into(),
                &crate::feedback::author(by)?,
                note.as_deref(),
                at,
            )?;
            match &out {
                Some(path) => crate::feedback::write_record(path, &fb)?,
                None => crate::feedback::publish(&cfg, &fb)?,
            }
            if out.as_deref().is_none_or(|p| p.as_os_str() != "-") {
                println!("{}", fb.to_line());
            }
            eprintln!(
                "herd feedback: incident {incident_id} judged {} by {}: {} feature range(s), {} item(s) → {}",
                fb.verdict.as_str(),
                fb.by,
                fb.features.len(),
                fb.items.len(),
                out.as_ref()
                    .map_or(cfg.stream.topics.feedback.clone(), |p| p
                        .display()
                        .to_string())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command:
                PolicyCommand::FromIncident {
                    incident_id,
                    alerts,
                    feedback,
                    out,
                    kafka,
                },
        } => {
            let cfg = kafka.load()?;
            let lines = crate::feedback::incident_alerts(&cfg, alerts.as_deref(), &incident_id)?;
            let verdicts =
                crate::feedback::verdicts(feedback.as_deref(), alerts.is_none().then_some(&cfg))?;
            let stanza = crate::feedback::policy_from_incident(&lines, &verdicts)?;
            match &out {
                Some(p) => std::fs::write(p, &stanza)
                    .with_context(|| format!("writing {}", p.display()))?,
                None => print!("{stanza}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            bundle,
            out,
            responses,
            responses_topic,
            kafka,
        } => {
            let cfg = kafka.load()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let b = rt.block_on(crate::report::load(&cfg, &bundle))?;
            let (acts, from) = match responses.is_some() || responses_topic {
                true => {
                    let id = &b.manifest.incident_id;
                    let (acts, place) =
                        crate::report::incident_responses(&cfg, responses.as_deref(), id)?;
                    (acts, Some(place))
                }
                false => (Vec::new(), None),
            };
            let page = crate::report::render(&b, &acts, from.as_deref());
            match &out {
                Some(p) => {
                    std::fs::write(p, &page).with_context(|| format!("writing {}", p.display()))?
                }
                None => std::io::Write::write_all(&mut std::io::stdout().lock(), page.as_bytes())?,
            }
            let unverified = b.unverified();
            eprintln!(
                "herd report: incident {}: {} observation(s), {} artifact(s), {} not verified, {} action(s){}",
                b.manifest.incident_id,
                b.observations.len(),
                b.artifacts.len(),
                unverified,
                acts.len(),
                out.as_ref()
                    .map_or(String::new(), |p| format!(" → {}", p.display()))
            );
            // A page is made even of a tampered bundle (it says so); the exit code
            // tells a script.
            Ok(if unverified == 0 && b.chained != Some(false) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Agent { kafka, host } => {
            let mut cfg = kafka.load()?;
            if host.is_some() {
                cfg.agent.host = host;
            }
            crate::agent::serve(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { kafka, group_id } => {
            let mut cfg = kafka.load()?;
            if let Some(g) = group_id {
                cfg.stream.group_id = g;
            }
            let s = crate::stream::serve(cfg)?;
            eprintln!(
                "herd run: {} records, {} observations, {} alerts, {} dead-lettered, {} re-keyed, {} checkpoints, {} out of order, {} waited for their start event",
                s.counters.lines,
                s.counters.observations,
                s.counters.alerts,
                s.dead_lettered,
                s.forwarded,
                s.checkpoints,
                s.out_of_order,
                s.identity_waits
            );
            if !s.counters.rejected.is_empty() {
                eprintln!("herd run: dead-letter reasons: {:?}", s.counters.rejected);
            }
            if s.restarts > 0 {
                eprintln!(
                    "herd run: went back to the last commit {} times after the broker refused \
                     deliveries (the input after each was processed, and is counted, again)",
                    s.restarts
                );
            }
            // Every record taken from an input has exactly one outcome.
            for (topic, t) in s.topics.iter().zip(&s.tally) {
                eprintln!(
                    "herd run: input {topic}: {} records = {} scored + {} filtered + {} dead-lettered + {} forwarded",
                    t.iter().sum::<u64>(),
                    t[0],
                    t[1],
                    t[2],
                    t[3]
                );
            }
            for (topic, n) in s.topics.iter().zip(&s.skipped).filter(|(_, n)| **n > 0) {
                eprintln!(
                    "herd run: input {topic}: {n} offsets skipped with no record (deleted by \
                     retention before they were read, unless the topic is compacted)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retrain {
            archive,
            since,
            until,
            out,
            publish,
            memory_mb,
            kafka,
        } => {
            let cfg = kafka.load()?;
            let archive = archive
                .or_else(|| cfg.archive.url.clone())
                .ok_or_else(|| anyhow::anyhow!("no archive: --archive or archive.url"))?;
            let until_ms = until.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            let opts = crate::retrain::Options {
                archive,
                store_options: cfg.archive.options.clone(),
                since_ms: until_ms - since.as_millis() as i64,
                until_ms,
                memory_bytes: memory_mb.max(64) << 20,
                progress: std::io::stderr().is_terminal(),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if publish {
                // Like `herd run`: missing topics are created, partition counts checked.
                rt.block_on(crate::stream::kafka::prepare_topics(
                    &cfg.kafka,
                    &cfg.stream,
                ))?;
            }
            let outcome = rt.block_on(crate::retrain::retrain(&opts))?;
            let sinks = crate::retrain::Sinks {
                out_dir: out,
                publish: publish.then(|| (cfg.stream.topics.retrained.clone(), cfg.kafka.clone())),
            };
            if outcome.rows == 0 {
                // A nightly job that found nothing must not look like one that worked.
                eprintln!("herd retrain: no archive rows in the window; nothing written");
                return Ok(ExitCode::FAILURE);
            }
            let changes = crate::retrain::deliver(&outcome, &sinks)?;
            eprint!("{}", crate::retrain::render(&outcome, &changes));
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { url, timeout } => Ok(match crate::http::probe(&url, timeout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herd probe: {e}");
                ExitCode::FAILURE
            }
        }),
        Command::Consume { topic, kafka } => {
            let cfg = kafka.load()?;
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            let n = crate::consume::consume(
                &cfg.kafka,
                &topic,
                std::time::Duration::from_secs(60),
                &mut stdout,
            )?;
            std::io::Write::flush(&mut stdout)?;
            eprintln!("herd consume: {n} records from {topic}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            kafka,
            like,
            image,
            replicas,
            settle,
            timeout,
        } => {
            let cfg = kafka.load()?;
            let opts = crate::drill::DrillOptions {
                like,
                image,
                replicas,
                settle,
                timeout,
            };
            let mut stdout = std::io::stdout().lock();
            let report = crate::drill::drill(&cfg, &opts, &mut stdout)?;
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Demo { seed, duration } => {
            let mut stdout = std::io::stdout().lock();
            let e = crate::demo::demo(&crate::demo::DemoOptions { seed, duration }, &mut stdout)?;
            Ok(if e.detected > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Produce {
            inputs,
            topic,
            key_by,
            rate,
            from,
            until,
            kafka,
        } => {
            let cfg = kafka.load()?;
            anyhow::ensure!(
                cfg.kafka.contains_key("bootstrap.servers"),
                "kafka.\"bootstrap.servers\": required (--brokers)"
            );
            let pace = rate.map_or(crate::produce::Pace::Fast, crate::produce::Pace::Rate);
            let never = std::sync::atomic::AtomicBool::new(false);
            let dest = match topic {
                Some(t) => crate::produce::Dest::Topic(t),
                None => {
                    let i = &cfg.stream.topics.inputs;
                    anyhow::ensure!(
                        i.len() >= 3,
                        "--topic is required when stream.topics.inputs has fewer than three topics"
                    );
                    crate::produce::Dest::ByKind {
                        samples: i[0].clone(),
                        events: i[1].clone(),
                        metrics: i[2].clone(),
                    }
                }
            };
            if matches!(dest, crate::produce::Dest::ByKind { .. }) && cfg.stream.create_topics {
                // herd's own input topics: create them as the workers would.
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(crate::stream::kafka::prepare_topics(
                        &cfg.kafka,
                        &cfg.stream,
                    ))?;
            }
            let window = crate::produce::Window {
                from_ms: from,
                until_ms: until,
            };
            let p =
                crate::produce::produce(&cfg.kafka, &inputs, &dest, key_by, pace, window, &never)?;
            eprintln!(
                "herd produce: {} records ({} without a key)",
                p.records, p.unkeyed
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            seed,
            out,
            hours,
            interval_s,
            recur_after_h,
        } => {
            let s = crate::simulate::simulate(
                &crate::simulate::SimConfig {
                    seed,
                    hours,
                    interval_s,
                    recur_after_h,
                },
                &out,
            )?;
            eprintln!(
                "herd simulate: seed {seed}: {} lines in {} files, {} attacks, {} benign windows → {}",
                s.lines,
                s.files,
                s.attacks,
                s.benign,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { config } => {
            // Secrets never leave the process: printed as `<redacted>`.
            let cfg = HerdConfig::load(config.as_deref())?.redacted();
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Evaluate {
            labels,
            alerts,
            json,
        } => {
            let e = crate::evaluate::evaluate_files(&labels, &alerts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", crate::evaluate::render(&e));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
