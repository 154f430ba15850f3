//! Command-line interface.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

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
    },
    /// Print the effective configuration (built-in defaults, overlaid by the file) as
    /// TOML: a starting point for a configuration file, and a check of what herd will use.
    Config {
        /// Configuration file (TOML) to overlay on the defaults.
        #[arg(long, env = "HERD_CONFIG")]
        config: Option<PathBuf>,
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

/// Sets up `tracing` on stderr.
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
        } => {
            let mut cfg = HerdConfig::load(config.as_deref())?;
            if let Some(b) = budget {
                cfg.detect.false_alerts_per_container_day = b;
                cfg.detect.validate()?;
            }
            let progress = !quiet && std::io::stderr().is_terminal();
            let summary = crate::replay::replay(&cfg, &inputs, out.as_ref(), progress)?;
            if !quiet {
                eprint!("{}", crate::replay::render_summary(&summary));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            seed,
            out,
            hours,
            interval_s,
        } => {
            let s = crate::simulate::simulate(
                &crate::simulate::SimConfig {
                    seed,
                    hours,
                    interval_s,
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
            let cfg = HerdConfig::load(config.as_deref())?;
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
