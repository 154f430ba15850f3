//! `herd replay FILE... | -`: recorded input through the same pipeline as the stream
//! service, in event-time order, alerts as JSON lines on stdout (or `--out`), a summary
//! on stderr. Exit 0 whenever the input could be read, bad lines included.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use herd_respond::{AlertSink, FileSink, WriterSink};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::HerdConfig;
use crate::input::{LineReader, Source, run_ordered};
use crate::pipeline::{Counters, Pipeline};

/// What a replay did.
#[derive(Debug)]
pub struct Summary {
    /// The pipeline's counters.
    pub counters: Counters,
    /// Distinct incidents alerted.
    pub incidents: usize,
    /// Seconds spent.
    pub elapsed_s: f64,
    /// Report of rejected lines and ordering.
    pub report: crate::input::RunReport,
    /// What went to the archive (`[archive] url`).
    pub archived: crate::archive::Written,
}

/// Opens the inputs (`-` is stdin) and the total size of the files, for progress.
pub fn open_sources(inputs: &[PathBuf], max_line: usize) -> anyhow::Result<(Vec<Source>, u64)> {
    let mut total = 0u64;
    let mut sources = Vec::new();
    for p in inputs {
        let (name, reader): (String, Box<dyn io::BufRead>) = if p.as_os_str() == "-" {
            (
                "-".into(),
                Box::new(BufReader::with_capacity(1 << 16, io::stdin())),
            )
        } else {
            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            total += f.metadata().map(|m| m.len()).unwrap_or(0);
            (
                p.display().to_string(),
                Box::new(BufReader::with_capacity(1 << 16, f)),
            )
        };
        sources.push(Source {
            name,
            reader: LineReader::new(reader, max_line),
        });
    }
    Ok((sources, total))
}

/// What a replay applies at its time, beside the input.
#[derive(Debug, Default)]
pub struct Schedule {
    /// Retrained snapshots, each adopted when event time reaches the end of its window.
    pub retrained: Vec<crate::retrain::Retrained>,
    /// Feedback records, each applied when event time reaches it.
    pub feedback: Vec<herd_detect::Feedback>,
    /// Score only from this time on (earlier records teach who is who).
    pub score_from_ms: Option<i64>,
}

/// Runs a replay with `cfg` over `inputs`, writing alerts to `out` (stdout if `None`),
/// with what `schedule` holds applied at its time.
pub fn replay(
    cfg: &HerdConfig,
    inputs: &[PathBuf],
    out: Option<&PathBuf>,
    progress: bool,
    schedule: Schedule,
) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let (sources, total) = open_sources(inputs, cfg.limits.max_line_bytes)?;
    let mut pipeline = Pipeline::new(cfg.limits, cfg.normalizer.clone(), cfg.detect.clone())?;
    for r in schedule.retrained {
        pipeline.schedule_retrained(r);
    }
    for fb in schedule.feedback {
        pipeline.schedule_feedback(fb)?;
    }
    if let Some(t) = schedule.score_from_ms {
        pipeline.score_from(t);
    }
    let mut sink: Box<dyn AlertSink> = match out {
        Some(p) => Box::new(FileSink::open(p)?),
        None => Box::new(WriterSink::new(io::stdout().lock(), "stdout")),
    };
    let bar = if progress && total > 0 {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} replay [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut incidents = BTreeSet::new();
    // With `[archive] url`, the scored observations go to the archive too (a backfill
    // from recorded files); files are named after the record count where they begin.
    let archive = crate::archive::Writer::open(&cfg.archive)?;
    let mut buf = crate::archive::Buffer::default();
    let (mut seq, mut archived) = (0i64, crate::archive::Written::default());
    let mut write = |buf: &mut crate::archive::Buffer| -> anyhow::Result<()> {
        if let Some(w) = &archive {
            let n = w.write(buf.take_files(0)?)?;
            archived.files += n.files;
            archived.rows += n.rows;
            archived.bytes += n.bytes;
            archived.skipped += n.skipped;
        }
        Ok(())
    };
    let report = run_ordered(
        sources,
        &mut pipeline,
        &cfg.replay,
        |alerts, p| {
            for a in alerts {
                incidents.insert(a.incident_id.clone());
                sink.send(a)?;
            }
            if archive.is_some() {
                let group_by = &p.engine().config().group_by;
                for o in p.observations() {
                    buf.push(&group_by.key(&o.container), o, (0, seq));
                }
                seq += 1;
                if buf.rows() >= cfg.archive.max_file_rows {
                    write(&mut buf)?;
                }
            }
            Ok(())
        },
        |bytes| bar.set_position(bytes),
    )?;
    write(&mut buf)?;
    // Verdicts given after the last record still count (a group they name is held).
    pipeline.apply_feedback_due(i64::MAX)?;
    sink.flush()?;
    bar.finish_and_clear();
    Ok(Summary {
        counters: pipeline.counters,
        incidents: incidents.len(),
        elapsed_s: start.elapsed().as_secs_f64(),
        report,
        archived,
    })
}

/// The human summary for stderr.
pub fn render_summary(s: &Summary) -> String {
    let c = &s.counters;
    let mut out = String::new();
    let rate = c.lines as f64 / s.elapsed_s.max(1e-9);
    out.push_str(&format!(
        "herd replay: {} lines in {:.2} s ({:.0} lines/s); {} observations scored; {} alert lines, {} incidents\n",
        c.lines, s.elapsed_s, rate, c.observations, c.alerts, s.incidents
    ));
    let join = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if s.archived.files + s.archived.skipped > 0 {
        out.push_str(&format!(
            "  archived: {} rows in {} files ({} identical files already there)\n",
            s.archived.rows, s.archived.files, s.archived.skipped
        ));
    }
    if !c.decoded.is_empty() {
        out.push_str(&format!("  decoded: {}\n", join(&c.decoded)));
    }
    if !c.filtered.is_empty() {
        out.push_str(&format!("  filtered: {}\n", join(&c.filtered)));
    }
    if !c.feedback.is_empty() {
        out.push_str(&format!("  feedback: {}\n", join(&c.feedback)));
    }
    if !c.rejected.is_empty() {
        out.push_str(&format!(
            "  rejected: {} ({})\n",
            c.rejected_total(),
            join(&c.rejected)
        ));
        for e in &s.report.examples {
            out.push_str(&format!("    {}:{}: {}\n", e.source, e.line, e.what));
        }
    }
    if s.report.out_of_order > 0 {
        out.push_str(&format!(
            "  {} records arrived later than the reorder window and were processed late\n",
            s.report.out_of_order
        ));
    }
    out
}
