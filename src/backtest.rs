//! `herd backtest --policy FILE INPUT...`: recorded input through detection and the
//! response policies, touching nothing. A policy change is judged on last week's data
//! before it goes live.
//!
//! The input goes through the same pipeline as `herd replay` (the stream service's, in
//! event-time order), and every alert line through the same [`Decider`] a worker runs
//! (`src/stream/respond.rs`): with the group's live replicas at that moment, so the
//! quorum guard, the per-group rate limit, once-per-incident issuing and the
//! containments in force are applied as they would have been. What it decided is
//! printed, one JSON object per alert line (the alert, the commands it would have
//! issued, the ones a guard refused and why), with a summary on stderr. No command is
//! published and no container touched.
//!
//! The input is recorded files, or the stream service's input topics read from their
//! start (`--from-topics`), merged in event time the same way; `--since`/`--until`
//! bound the event-time range judged.
//!
//! A worker owns its groups and their decider state, so one decider over every group
//! decides what the workers together would have. What it does not show: the `attach`
//! addendum a worker sends two minutes after each `capture` (a delivery of the
//! capture, not a decision), and what the agents then made of the commands (an agent
//! can still fail one).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use herd_detect::Alert;
use herd_respond::command::Command;
use herd_respond::policy::{Decider, PolicyFile};
use serde::Serialize;

use crate::config::HerdConfig;
use crate::input::run_ordered;
use crate::pipeline::{Counters, Pipeline};
use crate::replay::open_sources;

/// What a backtest found.
#[derive(Debug)]
pub struct Summary {
    /// The pipeline's counters.
    pub counters: Counters,
    /// Distinct incidents alerted.
    pub incidents: usize,
    /// Commands that would have been issued, by action (`dry_run` steps counted apart,
    /// as `NAME (dry run)`).
    pub issued: BTreeMap<String, u64>,
    /// Commands a guard would have refused, by action and reason (`pause: quorum`).
    pub refused: BTreeMap<String, u64>,
    /// Seconds spent.
    pub elapsed_s: f64,
    /// Rejected lines and ordering.
    pub report: crate::input::RunReport,
}

/// One alert line and what the policies made of it: one JSON object of the output.
#[derive(Debug, Serialize)]
pub struct Decided<'a> {
    /// The alert line as a worker would have published it (its `evidence` set when a
    /// capture was decided).
    pub alert: &'a Alert,
    /// Commands that would have been issued, in order.
    pub commands: Vec<Act<'a>>,
    /// Commands a guard refused.
    pub refused: Vec<Refused<'a>>,
}

/// A command, as the backtest reports it.
#[derive(Debug, Serialize)]
pub struct Act<'a> {
    /// Its idempotency key (the one the agent would have seen).
    pub id: &'a str,
    /// The action's name.
    pub action: &'static str,
    /// The policy that asked for it (empty for the agent's `focus`).
    pub policy: &'a str,
    /// Whether the step is a dry run (the agent would only have reported it).
    pub dry_run: bool,
    /// The host whose agent would have acted.
    pub host: &'a str,
    /// The container.
    pub container_id: &'a str,
}

/// A refused command and why.
#[derive(Debug, Serialize)]
pub struct Refused<'a> {
    /// The command.
    #[serde(flatten)]
    pub command: Act<'a>,
    /// `quorum`, `rate_limit` or `no_host`.
    pub reason: &'static str,
    /// The numbers behind it.
    pub detail: &'a str,
}

impl<'a> Act<'a> {
    fn of(c: &'a Command) -> Self {
        Self {
            id: &c.id,
            action: c.action.name(),
            policy: &c.policy,
            dry_run: c.dry_run,
            host: &c.host,
            container_id: &c.container_id,
        }
    }
}

/// What a backtest reads.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Recorded files (`-` for stdin).
    Files(&'a [PathBuf]),
    /// The input topics of the stream service (`stream.topics.inputs`), every partition
    /// from its start to its end when the backtest starts.
    Topics,
}

/// The event-time range judged. Records before `since` are scored as a worker scored
/// them (the baselines learn from them), but their alerts are neither printed nor
/// decided on; records at or after `until` are not scored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// Start (epoch ms), inclusive.
    pub since: Option<i64>,
    /// End (epoch ms), exclusive.
    pub until: Option<i64>,
}

/// Runs a backtest of `policies` with `cfg` over `input` in `range`, writing one JSON
/// line per alert line to `out` (stdout if `None`).
pub fn backtest(
    cfg: &HerdConfig,
    policies: PolicyFile,
    input: Input<'_>,
    range: Range,
    out: Option<&PathBuf>,
) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let sources = match input {
        Input::Files(inputs) => open_sources(inputs, cfg.limits.max_line_bytes)?.0,
        Input::Topics => crate::consume::topic_sources(
            &cfg.kafka,
            &cfg.stream.topics.inputs,
            cfg.limits.max_line_bytes,
            std::time::Duration::from_secs(30),
        )?,
    };
    let mut pipeline = Pipeline::new(cfg.limits, cfg.normalizer.clone(), cfg.detect.clone())?;
    if let Some(t) = range.until {
        pipeline.score_until(t);
    }
    let mut decider = Decider::new(policies, cfg.respond.evidence_url.clone());
    let mut w: Box<dyn Write> = match out {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let mut incidents = BTreeSet::new();
    let mut issued = BTreeMap::<String, u64>::new();
    let mut refused = BTreeMap::<String, u64>::new();
    let report = run_ordered(
        sources,
        &mut pipeline,
        &cfg.replay,
        |alerts, p| {
            for a in alerts {
                if let Some(since) = range.since
                    && herd_ingest::time::parse_rfc3339_ms(&a.ts).is_some_and(|t| t < since)
                {
                    continue;
                }
                let mut alert = a.clone();
                let live = p.engine().live_replicas(&alert.group);
                let d = decider.decide(&mut alert, &live);
                incidents.insert(alert.incident_id.clone());
                for c in &d.commands {
                    let name = match c.dry_run {
                        true => format!("{} (dry run)", c.action.name()),
                        false => c.action.name().to_owned(),
                    };
                    *issued.entry(name).or_default() += 1;
                }
                for r in &d.refusals {
                    let key = format!("{}: {}", r.command.action.name(), r.reason);
                    *refused.entry(key).or_default() += 1;
                }
                let line = Decided {
                    alert: &alert,
                    commands: d.commands.iter().map(Act::of).collect(),
                    refused: d
                        .refusals
                        .iter()
                        .map(|r| Refused {
                            command: Act::of(&r.command),
                            reason: r.reason,
                            detail: &r.detail,
                        })
                        .collect(),
                };
                serde_json::to_writer(&mut w, &line)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        },
        |_| {},
    )?;
    w.flush()?;
    Ok(Summary {
        counters: pipeline.counters,
        incidents: incidents.len(),
        issued,
        refused,
        elapsed_s: start.elapsed().as_secs_f64(),
        report,
    })
}

/// The human summary for stderr.
pub fn render_summary(s: &Summary) -> String {
    let c = &s.counters;
    let list = |m: &BTreeMap<String, u64>| match m.is_empty() {
        true => "none".to_owned(),
        false => m
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut out = format!(
        "herd backtest: {} lines in {:.2} s; {} observations scored; {} alert lines, {} incidents\n  would issue: {}\n  would refuse: {}\n",
        c.lines,
        s.elapsed_s,
        c.observations,
        c.alerts,
        s.incidents,
        list(&s.issued),
        list(&s.refused),
    );
    if c.rejected_total() > 0 {
        out.push_str(&format!(
            "  rejected: {} lines (herd replay lists them)\n",
            c.rejected_total()
        ));
    }
    if s.report.out_of_order > 0 {
        out.push_str(&format!(
            "  {} records arrived later than the reorder window and were decided late\n",
            s.report.out_of_order
        ));
    }
    out
}
