//! `herd report BUNDLE`: an evidence bundle as one self-contained HTML page, for the
//! analyst who opens an incident and for the ticket it is attached to.
//!
//! The page holds, from the bundle alone (`respond/src/evidence.rs` lists its files):
//! - the alert that caused the capture: its explanation, severity, detectors, ATT&CK;
//! - a plot per deviating feature of the container's observations before and after the
//!   alert (`observations-before.jsonl`, `observations-after.jsonl`), with the group's
//!   baseline range (its 1st to 99th percentile) and the live peers' band (median ±
//!   spread) as the alert recorded them. The bundle holds this replica's series, not its
//!   peers': the peers' band is the one measured at the alert, drawn across the window;
//! - the novel items with their replica support;
//! - every artifact with its SHA-256, checked again here against what was read, and the
//!   addendum's chain to the first manifest; what could not be collected, and why;
//! - the actions taken (from `herd.responses` lines, `--responses` or the topic), and a
//!   timeline of the runtime events, the alert, the capture and the actions.
//!
//! The plots are SVG, drawn by plotters and inlined: the page loads nothing and runs no
//! script, and its Content-Security-Policy says so. Everything in a bundle may have been
//! chosen by whoever controlled the container (its name, its processes, a metric's
//! name), so every text is escaped, and none of it reaches the plotting code.
//!
//! Reading is bounded: the manifests and the observation files have size limits, lines
//! are read with the configured line limit and decoded by the same decoders as any
//! input; a line that cannot be read is counted on the page, not dropped in silence.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use herd_detect::Alert;
use herd_ingest::{Decoder, Event, Normalizer, Observation, Payload};
use herd_respond::command::Response;
use herd_respond::evidence::{Manifest, Store, safe_name, sha256_hex, sha256_hex_reader};
use plotters::prelude::*;
use serde::Deserialize;

use crate::config::HerdConfig;
use crate::input::{Line, LineReader};

/// Largest manifest read (`manifest.json`, `manifest-after.json`).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest observation file read; a worker's ring holds a few hundred kilobytes.
const MAX_OBSERVATION_BYTES: u64 = 64 << 20;
/// Most plots on a page.
const MAX_PLOTS: usize = 8;
/// Most points per plot: a longer series is thinned evenly.
const MAX_POINTS: usize = 4000;
/// Most runtime events listed in the timeline (the alert, the capture and the actions
/// are always listed).
const MAX_TIMELINE_EVENTS: usize = 400;
/// Most characters of one event's details in the timeline.
const MAX_DETAIL_CHARS: usize = 240;
/// The series' colour; the browser test looks for it in the screenshot.
pub const SERIES_RGB: (u8, u8, u8) = (0xd6, 0x27, 0x28);

/// Where a bundle is read from.
#[derive(Debug)]
enum Source {
    /// A bundle folder on this machine.
    Dir(PathBuf),
    /// A bundle in an evidence store (`file://` or `s3://`).
    Store { store: Store, incident: String },
}

impl Source {
    /// `what` is a bundle folder, a bundle's URL (`s3://bucket/evidence/<incident>/`),
    /// or an incident id in the configured store (`agent.evidence_url`).
    fn open(cfg: &HerdConfig, what: &str) -> anyhow::Result<Self> {
        let options = || {
            cfg.agent
                .evidence_options
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
        };
        // A local path is only read: nothing is created for a mistyped one.
        let local = |url: &str| {
            (!url.contains("://") || url.starts_with("file://"))
                .then(|| PathBuf::from(url.strip_prefix("file://").unwrap_or(url)))
        };
        let missing = |d: &Path| {
            anyhow::anyhow!(
                "{}: no such bundle folder (give a folder, a bundle URL, or an incident id)",
                d.display()
            )
        };
        if let Some(dir) = local(what)
            && (dir.is_dir() || what.contains('/'))
        {
            return match dir.is_dir() {
                true => Ok(Source::Dir(dir)),
                false => Err(missing(&dir)),
            };
        }
        if let Some((url, incident)) = what.trim_end_matches('/').rsplit_once('/') {
            let store = Store::open(url, options())
                .with_context(|| format!("opening the evidence store {url}"))?;
            return Ok(Source::Store {
                store,
                incident: incident.to_owned(),
            });
        }
        // An incident id, in the configured store.
        let incident = herd_respond::evidence::bundle_name(what);
        if let Some(store_dir) = local(&cfg.agent.evidence_url) {
            let dir = store_dir.join(&incident);
            return match dir.is_dir() {
                true => Ok(Source::Dir(dir)),
                false => Err(missing(&dir)),
            };
        }
        let store = Store::open(&cfg.agent.evidence_url, options())
            .context("opening the evidence store (agent.evidence_url)")?;
        Ok(Source::Store { store, incident })
    }

    fn location(&self) -> String {
        match self {
            Source::Dir(d) => format!("file://{}/", d.display()),
            Source::Store { store, incident } => store.location(incident),
        }
    }

    /// Reads a file of the bundle, at most `max` bytes (`Ok(None)`: it is not there).
    async fn read(&self, name: &str, max: u64) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Source::Dir(d) => {
                let f = match std::fs::File::open(d.join(name)) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e).with_context(|| format!("reading {name}")),
                };
                let mut b = Vec::new();
                f.take(max + 1)
                    .read_to_end(&mut b)
                    .with_context(|| format!("reading {name}"))?;
                anyhow::ensure!(b.len() as u64 <= max, "{name} is over {max} bytes");
                Ok(Some(b))
            }
            Source::Store { store, incident } => {
                if !store.exists(incident, name).await? {
                    return Ok(None);
                }
                let b = store.read(incident, name).await?;
                anyhow::ensure!(b.len() as u64 <= max, "{name} is over {max} bytes");
                Ok(Some(b))
            }
        }
    }

    /// The SHA-256 and size of a file of the bundle (streamed from a folder).
    async fn hash(&self, name: &str) -> anyhow::Result<(String, u64)> {
        match self {
            Source::Dir(d) => Ok(sha256_hex_reader(std::fs::File::open(d.join(name))?)?),
            Source::Store { store, incident } => {
                let b = store.read(incident, name).await?;
                Ok((sha256_hex(&b), b.len() as u64))
            }
        }
    }
}

/// What reading an artifact again said of its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Its bytes hash to what the manifest says.
    Verified,
    /// They do not (hash and size read).
    Mismatch {
        /// The SHA-256 of what was read.
        sha256: String,
        /// Its size.
        size: u64,
    },
    /// It could not be read (why).
    Unreadable(String),
}

/// One artifact of a manifest, and its check.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The manifest's entry.
    pub artifact: herd_respond::evidence::Artifact,
    /// The check.
    pub check: Check,
}

/// A bundle, read and checked.
#[derive(Debug)]
pub struct Bundle {
    /// Where it was read.
    pub location: String,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// `manifest-after.json`, when the after-window was attached.
    pub after: Option<Manifest>,
    /// Whether the addendum names `manifest.json`'s hash (`None`: no addendum).
    pub chained: Option<bool>,
    /// The alert of the manifest, when it has one that reads.
    pub alert: Option<Alert>,
    /// Why the manifest's alert could not be read.
    pub alert_error: Option<String>,
    /// Every artifact of both manifests, checked.
    pub artifacts: Vec<Checked>,
    /// The container's observations, before and after, in event-time order.
    pub observations: Vec<Observation>,
    /// Lines of the observation files that could not be read, and the first reason.
    pub unreadable: (usize, Option<String>),
}

impl Bundle {
    /// Artifacts that are not verified (changed, or unreadable).
    pub fn unverified(&self) -> usize {
        self.artifacts
            .iter()
            .filter(|c| c.check != Check::Verified)
            .count()
    }
}

/// Reads a bundle and checks every artifact's hash. `what` is a bundle folder, a
/// bundle's URL (`s3://bucket/evidence/<incident>/`), or an incident id in the
/// configured store (`agent.evidence_url`).
pub async fn load(cfg: &HerdConfig, what: &str) -> anyhow::Result<Bundle> {
    let src = Source::open(cfg, what)?;
    let location = src.location();
    let Some(first) = src.read("manifest.json", MAX_MANIFEST_BYTES).await? else {
        anyhow::bail!("{location}: no manifest.json (not a bundle, or not complete)");
    };
    let manifest: Manifest = serde_json::from_slice(&first).context("manifest.json")?;
    let first_sha = sha256_hex(&first);
    let after: Option<Manifest> = match src.read("manifest-after.json", MAX_MANIFEST_BYTES).await? {
        Some(b) => Some(serde_json::from_slice(&b).context("manifest-after.json")?),
        None => None,
    };
    let chained = after
        .as_ref()
        .map(|a| a.previous_manifest_sha256.as_deref() == Some(first_sha.as_str()));
    let (alert, alert_error) = match &manifest.alert {
        Some(v) => match Alert::deserialize(v) {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };

    // The observation files are read once: decoded here, hashed below.
    const OBSERVATION_FILES: [&str; 2] = ["observations-before.jsonl", "observations-after.jsonl"];
    let mut held = Vec::new();
    for name in OBSERVATION_FILES {
        if let Some(bytes) = src.read(name, MAX_OBSERVATION_BYTES).await? {
            held.push((name, bytes));
        }
    }

    let mut artifacts = Vec::new();
    for a in [Some(&manifest), after.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|m| &m.artifacts)
    {
        // A name the agent would not have written is not followed.
        let check = if a.name != safe_name(&a.name) {
            Check::Unreadable("not a bundle file name; not read".into())
        } else {
            let hashed = match held.iter().find(|(n, _)| *n == a.name) {
                Some((_, b)) => Ok((sha256_hex(b), b.len() as u64)),
                None => src.hash(&a.name).await,
            };
            match hashed {
                Ok((sha, _)) if sha == a.sha256 => Check::Verified,
                Ok((sha256, size)) => Check::Mismatch { sha256, size },
                Err(e) => Check::Unreadable(format!("{e:#}")),
            }
        };
        artifacts.push(Checked {
            artifact: a.clone(),
            check,
        });
    }

    let mut observations = Vec::new();
    let mut unreadable = (0, None);
    let decoder = Decoder::new(cfg.limits);
    let mut normalizer = Normalizer::new(cfg.normalizer.clone());
    for (name, bytes) in &held {
        let mut lines = LineReader::new(bytes.as_slice(), cfg.limits.max_line_bytes);
        let mut n = 0usize;
        let mut bad = |why: String| {
            unreadable.0 += 1;
            unreadable.1.get_or_insert(why);
        };
        while let Some(line) = lines.next_line()? {
            n += 1;
            let bytes = match line {
                Line::Ok(b) if b.iter().all(u8::is_ascii_whitespace) => continue,
                Line::Ok(b) => b,
                Line::TooLong(len) => {
                    bad(format!("{name}:{n}: a line of {len} bytes"));
                    continue;
                }
            };
            let rec = match decoder.decode(bytes) {
                Ok(r) => r,
                Err(r) => {
                    bad(format!("{name}:{n}: {}", r.reason.as_str()));
                    continue;
                }
            };
            if let Err(r) = normalizer.normalize(rec, &mut observations) {
                bad(format!("{name}:{n}: {}", r.reason.as_str()));
            }
        }
    }
    // The ring holds this container's observations only; anything else is not its.
    observations.retain(|o| *o.container.id == *manifest.container_id);
    observations.sort_by_key(|o| o.ts_ms);
    // The after-window starts where the capture's ended; a sample in both is one sample.
    observations.dedup_by(|a, b| a.ts_ms == b.ts_ms && a.payload == b.payload);

    Ok(Bundle {
        location,
        manifest,
        after,
        chained,
        alert,
        alert_error,
        artifacts,
        observations,
        unreadable,
    })
}

/// The response records of `incident`: from a file of `herd.responses` lines (as
/// published, or `herd consume` output), or from the topic when `from` is `None`; and
/// where they were read, for the page.
pub fn incident_responses(
    cfg: &HerdConfig,
    from: Option<&Path>,
    incident: &str,
) -> anyhow::Result<(Vec<Response>, String)> {
    let mut found = Vec::new();
    let mut keep = |bytes: &[u8]| {
        if memchr::memmem::find(bytes, incident.as_bytes()).is_none() {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return;
        };
        let v = v.get("payload").cloned().unwrap_or(v);
        if let Ok(r) = Response::deserialize(&v)
            && r.incident_id == incident
        {
            found.push(r);
        }
    };
    let place = crate::consume::lines_or_topic(
        &cfg.kafka,
        from,
        &cfg.stream.topics.responses,
        cfg.limits.max_line_bytes,
        &mut keep,
    )?;
    found.sort_by(|a, b| a.started.cmp(&b.started));
    Ok((found, place))
}

/// HTML-escapes untrusted text.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A number for people: 3 significant digits, SI prefixes for large magnitudes.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    let (scaled, unit) = match a {
        a if a >= 1e12 => (v / 1e12, "T"),
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits: usize = match scaled.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 1.0 || a == 0.0 => 2,
        _ => 3,
    };
    format!("{scaled:.digits$}{unit}")
}

/// One plot's data.
#[derive(Debug)]
struct Plot<'a> {
    feature: &'a str,
    /// (seconds from the alert, value).
    points: Vec<(f64, f64)>,
    expected: Option<[f64; 2]>,
    peers: Option<herd_detect::PeerEvidence>,
}

/// The features to plot: the alert's deviating features, else (a novelty or rule
/// alert) CPU and memory for context.
fn plotted(b: &Bundle) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(a) = &b.alert {
        for f in &a.features {
            if !names.contains(&f.name.as_str()) {
                names.push(&f.name);
            }
        }
    }
    if names.is_empty() {
        names = vec![
            herd_ingest::model::metric::CPU_CORES,
            herd_ingest::model::metric::MEM_BYTES,
        ];
    }
    names.truncate(MAX_PLOTS);
    names
}

fn plot_of<'a>(b: &'a Bundle, feature: &'a str, origin_ms: i64) -> Plot<'a> {
    let mut points: Vec<(f64, f64)> = b
        .observations
        .iter()
        .filter_map(|o| match &o.payload {
            Payload::Metrics(m) => m
                .iter()
                .find(|(n, _)| n == feature)
                .map(|(_, v)| ((o.ts_ms - origin_ms) as f64 / 1000.0, *v)),
            Payload::Event(_) => None,
        })
        .filter(|(_, v)| v.is_finite())
        .collect();
    if points.len() > MAX_POINTS {
        let step = points.len().div_ceil(MAX_POINTS);
        points = points.into_iter().step_by(step).collect();
    }
    let evidence = b
        .alert
        .as_ref()
        .and_then(|a| a.features.iter().find(|f| f.name == feature));
    Plot {
        feature,
        points,
        expected: evidence.and_then(|f| f.expected),
        peers: evidence.and_then(|f| f.peers),
    }
}

/// The plot as an SVG element: the series, the baseline range, the peers' band, and
/// the alert's time. No untrusted text is drawn: the feature's name is the caption's.
fn svg(p: &Plot<'_>) -> anyhow::Result<String> {
    let (w, h) = (900u32, 280u32);
    let xs = p.points.iter().map(|q| q.0);
    let x0 = xs.clone().fold(0.0f64, f64::min);
    let x1 = xs.fold(0.0f64, f64::max);
    let (x0, x1) = if x1 - x0 < 1.0 {
        (x0 - 1.0, x1 + 1.0)
    } else {
        (x0, x1)
    };
    let mut ys: Vec<f64> = p.points.iter().map(|q| q.1).collect();
    if let Some([lo, hi]) = p.expected {
        ys.extend([lo, hi]);
    }
    if let Some(pe) = p.peers {
        ys.extend([pe.median - pe.spread, pe.median + pe.spread]);
    }
    ys.retain(|v| v.is_finite());
    let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) if hi > lo => {
            let pad = (hi - lo) * 0.08;
            (lo - pad, hi + pad)
        }
        (true, true) => (lo - lo.abs().max(1.0) * 0.1, hi + hi.abs().max(1.0) * 0.1),
        _ => (0.0, 1.0),
    };
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing a plot: {e}");
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, lo..hi)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_desc("seconds from the alert")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| num(*v))
            .draw()
            .map_err(|e| draw(&e))?;
        let baseline = RGBColor(44, 160, 44);
        let peers = RGBColor(31, 119, 180);
        let series = RGBColor(SERIES_RGB.0, SERIES_RGB.1, SERIES_RGB.2);
        if let Some([a, b]) = p.expected {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, a.max(lo)), (x1, b.min(hi))],
                    baseline.mix(0.18).filled(),
                )))
                .map_err(|e| draw(&e))?
                .label("baseline p1–p99")
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], baseline.mix(0.4).filled())
                });
        }
        if let Some(pe) = p.peers {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (x0, (pe.median - pe.spread).max(lo)),
                        (x1, (pe.median + pe.spread).min(hi)),
                    ],
                    peers.mix(0.15).filled(),
                )))
                .map_err(|e| draw(&e))?
                .label("peers at the alert: median ± spread")
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], peers.mix(0.35).filled())
                });
            chart
                .draw_series(LineSeries::new(
                    [(x0, pe.median), (x1, pe.median)],
                    peers.stroke_width(1),
                ))
                .map_err(|e| draw(&e))?;
        }
        chart
            .draw_series(LineSeries::new(
                p.points.iter().copied(),
                series.stroke_width(2),
            ))
            .map_err(|e| draw(&e))?
            .label("this replica")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], series.stroke_width(2)));
        chart
            .draw_series(p.points.iter().map(|q| Circle::new(*q, 2, series.filled())))
            .map_err(|e| draw(&e))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, lo), (0.0, hi)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| draw(&e))?
            .label("the alert")
            .legend(|(x, y)| PathElement::new([(x + 8, y - 6), (x + 8, y + 6)], BLACK));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    // Inline in HTML: no XML declaration.
    if let Some(at) = out.find("<svg") {
        out.drain(..at);
    }
    Ok(out)
}

/// One line of the timeline.
#[derive(Debug)]
struct Moment {
    ts_ms: i64,
    /// `event time` (the observations' and the alert's clock) or `wall clock` (the
    /// capture's and the actions').
    clock: &'static str,
    what: String,
    detail: String,
}

fn event_detail(e: &Event) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
    }
    let s = match &v {
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        v => v.to_string(),
    };
    match s.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn timeline(b: &Bundle, responses: &[Response]) -> (Vec<Moment>, usize) {
    let mut events = b.observations.iter().filter_map(|o| match &o.payload {
        Payload::Event(e) => Some((o.ts_ms, e)),
        Payload::Metrics(_) => None,
    });
    let mut out: Vec<Moment> = events
        .by_ref()
        .take(MAX_TIMELINE_EVENTS)
        .map(|(ts_ms, e)| Moment {
            ts_ms,
            clock: "event time",
            what: format!("event: {}", e.kind()),
            detail: event_detail(e),
        })
        .collect();
    let left_out = events.count();
    if let Some(a) = &b.alert
        && let Some(ts) = herd_ingest::time::parse_rfc3339_ms(&a.ts)
    {
        out.push(Moment {
            ts_ms: ts,
            clock: "event time",
            what: format!("alert (update {})", a.seq),
            detail: format!(
                "{} · score {} over {} · {}",
                a.severity.as_str(),
                num(a.score),
                num(a.threshold),
                a.explanation
            ),
        });
    }
    for (m, what) in [
        (Some(&b.manifest), "evidence captured"),
        (b.after.as_ref(), "after-window attached"),
    ] {
        if let Some(m) = m
            && let Some(ts) = herd_ingest::time::parse_rfc3339_ms(&m.created)
        {
            out.push(Moment {
                ts_ms: ts,
                clock: "wall clock",
                what: what.into(),
                detail: format!(
                    "{} artifact(s), {} missing · trigger {} · by {} on {}",
                    m.artifacts.len(),
                    m.missing.len(),
                    m.trigger,
                    m.collector,
                    m.host
                ),
            });
        }
    }
    for r in responses {
        if let Some(ts) = herd_ingest::time::parse_rfc3339_ms(&r.started) {
            out.push(Moment {
                ts_ms: ts,
                clock: "wall clock",
                what: format!("action {}: {}", r.action, r.outcome.as_str()),
                detail: response_detail(r),
            });
        }
    }
    out.sort_by_key(|m| (m.clock == "wall clock", m.ts_ms));
    (out, left_out)
}

fn response_detail(r: &Response) -> String {
    let mut s = match r.policy.as_str() {
        // The worker's own `focus` on a new incident: no policy asked for it.
        "" => format!("by {} on {}", r.by, r.host),
        p => format!("policy {p} · by {} on {}", r.by, r.host),
    };
    if r.dry_run {
        s.push_str(" · dry run");
    }
    if let Some(reason) = &r.reason {
        let _ = write!(s, " · {reason}");
    }
    if let Some(d) = &r.detail {
        let _ = write!(s, ": {d}");
    }
    s
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.explanation{font-size:1.1em;background:#f5f5f0;border-left:4px solid #888;padding:.6em .9em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{color:#666}dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #eee;vertical-align:top}
th{color:#555;font-weight:600}code,.mono{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
figure{margin:1em 0}figcaption{color:#444;margin-top:.3em}
.ok{color:#1a7f37}.bad{color:#8250df;font-weight:700}.note{color:#666}
.sev{display:inline-block;padding:0 .5em;border-radius:3px;background:#333;color:#fff;font-size:.85em;vertical-align:middle}
";

/// The page.
pub fn render(b: &Bundle, responses: &[Response], responses_from: Option<&str>) -> String {
    let m = &b.manifest;
    let mut h = String::with_capacity(64 << 10);
    let title = format!("herd incident {}", m.incident_id);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <meta name=\"generator\" content=\"herd {}\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&title)
    );
    let _ = write!(h, "<header><h1>{}</h1>", esc(&title));
    match &b.alert {
        Some(a) => {
            let _ = write!(
                h,
                "<p><span class=\"sev\">{}</span> score {} over a threshold of {} · {}</p>\
                 <p class=\"explanation\">{}</p>",
                esc(a.severity.as_str()),
                num(a.score),
                num(a.threshold),
                esc(&a
                    .detectors
                    .iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")),
                esc(&a.explanation)
            );
        }
        None => {
            let why = b.alert_error.as_deref().map_or(
                "The bundle holds no alert: it was captured on the container's exit, before any policy ran.".to_owned(),
                |e| format!("The manifest's alert could not be read: {e}"),
            );
            let _ = write!(h, "<p class=\"explanation\">{}</p>", esc(&why));
        }
    }
    h.push_str("<dl>");
    let mut dl = |k: &str, v: &str| {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    };
    dl(
        "container",
        &format!("{} ({})", m.container_name, m.container_id),
    );
    if let Some(a) = &b.alert {
        dl("image", &a.image);
        dl("peer group", &a.group);
        dl("alert time", &a.ts);
        if !a.attack.is_empty() {
            dl("ATT&CK", &a.attack.join(", "));
        }
        for (k, v) in &a.labels {
            dl(&format!("label {k}"), v);
        }
    }
    dl("host", &m.host);
    dl(
        "captured",
        &format!("{} by {} ({})", m.created, m.collector, m.trigger),
    );
    dl("bundle", &b.location);
    h.push_str("</dl></header>\n");

    // Plots.
    let origin = b
        .alert
        .as_ref()
        .and_then(|a| herd_ingest::time::parse_rfc3339_ms(&a.ts))
        .or_else(|| b.observations.first().map(|o| o.ts_ms))
        .unwrap_or(0);
    h.push_str("<section id=\"plots\"><h2>Behaviour before and after the alert</h2>");
    let mut drawn = 0;
    for feature in plotted(b) {
        let p = plot_of(b, feature, origin);
        if p.points.is_empty() {
            let _ = write!(
                h,
                "<p class=\"note\">No sample of <code>{}</code> in the bundle.</p>",
                esc(feature)
            );
            continue;
        }
        match svg(&p) {
            Ok(svg) => {
                drawn += 1;
                let mut caption = format!("{} · {} samples", p.feature, p.points.len());
                if let Some([lo, hi]) = p.expected {
                    let _ = write!(caption, " · baseline {} to {}", num(lo), num(hi));
                }
                if let Some(pe) = p.peers {
                    let _ = write!(
                        caption,
                        " · {} live peers at {} ± {}",
                        pe.n,
                        num(pe.median),
                        num(pe.spread)
                    );
                }
                let _ = write!(
                    h,
                    "<figure class=\"plot\" data-feature=\"{}\">{svg}<figcaption>{}</figcaption></figure>",
                    esc(feature),
                    esc(&caption)
                );
            }
            Err(e) => {
                let _ = write!(h, "<p class=\"note\">{}</p>", esc(&format!("{e:#}")));
            }
        }
    }
    if drawn == 0 {
        h.push_str("<p class=\"note\">The bundle holds no observations to plot.</p>");
    }
    if b.unreadable.0 > 0 {
        let _ = write!(
            h,
            "<p class=\"bad\">{} observation line(s) could not be read (first: {}).</p>",
            b.unreadable.0,
            esc(b.unreadable.1.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</section>\n");

    if let Some(a) = &b.alert {
        if !a.features.is_empty() {
            h.push_str(
                "<section id=\"features\"><h2>Deviating features</h2><table><tr><th>feature</th>\
                 <th>value</th><th>baseline (p1–p99)</th><th>peers (median ± spread, n)</th>\
                 <th>surprise</th></tr>",
            );
            for f in &a.features {
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&f.name),
                    num(f.value),
                    f.expected.map_or("–".into(), |[lo, hi]| format!(
                        "{} to {}",
                        num(lo),
                        num(hi)
                    )),
                    f.peers.map_or("–".into(), |p| format!(
                        "{} ± {} ({})",
                        num(p.median),
                        num(p.spread),
                        p.n
                    )),
                    num(f.surprise)
                );
            }
            h.push_str("</table></section>\n");
        }
        h.push_str("<section id=\"novel\"><h2>Novel items</h2>");
        if a.novel.is_empty() {
            h.push_str("<p class=\"note\">None: the alert is on behaviour, not on new items.</p>");
        } else {
            h.push_str(
                "<table><tr><th>kind</th><th>item</th><th>replica support</th><th>baseline</th>\
                 <th>verdict</th></tr>",
            );
            for n in &a.novel {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{} of {} other replicas</td>\
                     <td>{}</td><td>{}</td></tr>",
                    esc(&n.kind),
                    esc(&n.value),
                    n.replica_support,
                    n.replicas.saturating_sub(1),
                    esc(&n.phase),
                    n.marked
                        .as_deref()
                        .map_or(String::new(), |i| format!("judged malicious in {}", esc(i)))
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</section>\n");
    }

    // Artifacts.
    h.push_str("<section id=\"artifacts\"><h2>Artifacts</h2>");
    let bad = b.unverified();
    let _ = write!(
        h,
        "<p class=\"{}\">{} artifact(s); {} verified against the manifest's SHA-256 when this page was made.{}</p>",
        if bad == 0 { "ok" } else { "bad" },
        b.artifacts.len(),
        b.artifacts.len() - bad,
        match b.chained {
            Some(true) => " The after-window's manifest names the first manifest's hash.",
            Some(false) => " The after-window's manifest does NOT name the first manifest's hash.",
            None => "",
        }
    );
    h.push_str(
        "<table><tr><th>file</th><th>size</th><th>SHA-256</th><th>collected</th><th>source</th>\
         <th>check</th></tr>",
    );
    for c in &b.artifacts {
        let a = &c.artifact;
        let check = match &c.check {
            Check::Verified => "<span class=\"ok\">verified</span>".to_owned(),
            Check::Mismatch { sha256, size } => format!(
                "<span class=\"bad\">MISMATCH: read {size} bytes hashing to <code>{}</code></span>",
                esc(sha256)
            ),
            Check::Unreadable(e) => format!("<span class=\"bad\">unreadable: {}</span>", esc(e)),
        };
        let _ = write!(
            h,
            "<tr><td><code>{}</code>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{check}</td></tr>",
            esc(&a.name),
            if a.truncated {
                " (cut at its limit)"
            } else {
                ""
            },
            a.size,
            esc(&a.sha256),
            esc(&a.collected_at),
            esc(&a.source)
        );
    }
    h.push_str("</table>");
    let missing: Vec<_> = b
        .manifest
        .missing
        .iter()
        .chain(b.after.iter().flat_map(|a| &a.missing))
        .collect();
    if !missing.is_empty() {
        h.push_str("<h3>Not collected</h3><table><tr><th>file</th><th>why</th></tr>");
        for x in missing {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                esc(&x.name),
                esc(&x.error)
            );
        }
        h.push_str("</table>");
    }
    if !b.manifest.notes.is_null() {
        let _ = write!(
            h,
            "<p>Notes: <code>{}</code></p>",
            esc(&b.manifest.notes.to_string())
        );
    }
    h.push_str("</section>\n");

    // Actions.
    h.push_str("<section id=\"actions\"><h2>Actions</h2>");
    match responses_from {
        None => h.push_str(
            "<p class=\"note\">The bundle shows its own capture only; give <code>--responses</code> \
             to list every action of the incident.</p>",
        ),
        Some(from) if responses.is_empty() => {
            let _ = write!(
                h,
                "<p class=\"note\">No response record of this incident in {}.</p>",
                esc(from)
            );
        }
        Some(from) => {
            let _ = write!(h, "<p class=\"note\">From {}.</p>", esc(from));
            h.push_str(
                "<table><tr><th>started</th><th>action</th><th>outcome</th><th>took</th>\
                 <th>details</th></tr>",
            );
            for r in responses {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td></tr>",
                    esc(&r.started),
                    esc(&r.action),
                    esc(r.outcome.as_str()),
                    r.duration_ms,
                    esc(&response_detail(r))
                );
            }
            h.push_str("</table>");
        }
    }
    h.push_str("</section>\n");

    // Timeline.
    let (moments, left_out) = timeline(b, responses);
    h.push_str(
        "<section id=\"timeline\"><h2>Timeline</h2><p class=\"note\">Observations and the alert \
         are in event time (the samples' clock); the capture and the actions in the wall clock of \
         the processes that ran them.</p><table><tr><th>time</th><th>clock</th><th>what</th>\
         <th>details</th></tr>",
    );
    for mo in &moments {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            esc(&herd_ingest::time::format_ms(mo.ts_ms)),
            mo.clock,
            esc(&mo.what),
            esc(&mo.detail)
        );
    }
    h.push_str("</table>");
    if left_out > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">{left_out} more event(s) not listed.</p>"
        );
    }
    h.push_str("</section>\n");

    let kinds: BTreeSet<&str> = b
        .observations
        .iter()
        .filter_map(|o| match &o.payload {
            Payload::Event(e) => Some(e.kind()),
            Payload::Metrics(_) => None,
        })
        .collect();
    let _ = write!(
        h,
        "<footer class=\"note\"><p>{} observation(s) read{}. Made by herd {} from {}.</p></footer>\n</body></html>\n",
        b.observations.len(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(
                ", events: {}",
                esc(&kinds.into_iter().collect::<Vec<_>>().join(", "))
            )
        },
        env!("CARGO_PKG_VERSION"),
        esc(&b.location)
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_container_chooses() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"\u{1b}[31m"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\u{fffd}[31m"
        );
    }

    /// A bundle folder: a hostile container name, a CPU series that leaves its band at
    /// the alert, one unreadable line, and the manifest's hashes.
    fn bundle(dir: &Path) -> String {
        let hostile = "<img src=x onerror=alert(1)>";
        let t0 = 1_793_577_600_000i64;
        let mut before = String::new();
        for i in 0..40 {
            let cpu = if i < 30 { 0.2 } else { 1.9 };
            before.push_str(
                &serde_json::json!({
                    "ts": t0 + i * 10_000, "container_id": "c1", "container_name": hostile,
                    "image": "shop/web:1", "metrics": {"cpu_cores": cpu, "mem_bytes": 1.0e8}
                })
                .to_string(),
            );
            before.push('\n');
        }
        before.push_str(
            &serde_json::json!({
                "ts": t0 + 305_000, "container_id": "c1", "image": "shop/web:1",
                "event": {"kind": "exec", "process": "/bin/sh", "args": ["-c", "<b>x</b>"]}
            })
            .to_string(),
        );
        before.push_str("\n{\"not\": \"a line herd reads\"}\n");
        std::fs::write(dir.join("observations-before.jsonl"), &before).expect("write");
        let alert = serde_json::json!({
            "incident_id": "inc-1", "ts": herd_ingest::time::format_ms(t0 + 300_000), "seq": 0,
            "container_id": "c1", "container_name": hostile, "group": "shop/web:1",
            "image": "shop/web:1", "host": "node-1", "severity": "high", "score": 9.5,
            "threshold": 6.0, "detectors": ["peer"],
            "explanation": "cpu_cores 1.9 while its 5 peers run 0.2 <script>",
            "features": [{"name": "cpu_cores", "value": 1.9, "expected": [0.1, 0.4],
                "peers": {"median": 0.2, "spread": 0.05, "n": 5}, "surprise": 9.5}],
            "novel": [{"kind": "executable", "value": "/tmp/.x/<i>miner</i>",
                "replica_support": 0, "replicas": 6, "phase": "locked"}],
            "events": [], "attack": ["T1496"], "labels": {}
        });
        let m = Manifest {
            format: 1,
            incident_id: "inc-1".into(),
            trigger: "policy:capture-web".into(),
            container_id: "c1".into(),
            container_name: hostile.into(),
            host: "node-1".into(),
            collector: "herd-agent/test".into(),
            created: "2026-12-05T10:00:00Z".into(),
            alert: Some(alert),
            artifacts: vec![herd_respond::evidence::Artifact {
                name: "observations-before.jsonl".into(),
                sha256: sha256_hex(before.as_bytes()),
                size: before.len() as u64,
                collected_at: "2026-12-05T10:00:00Z".into(),
                source: "herd worker ring buffer".into(),
                truncated: false,
            }],
            missing: vec![herd_respond::evidence::Missing {
                name: "inspect.json".into(),
                error: "not_found: <gone>".into(),
            }],
            previous_manifest_sha256: None,
            notes: serde_json::Value::Null,
        };
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
        hostile.into()
    }

    fn load_dir(dir: &Path) -> Bundle {
        let cfg = HerdConfig::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(load(&cfg, &dir.display().to_string()))
            .expect("a readable bundle")
    }

    #[test]
    fn renders_plots_and_escapes_everything_the_bundle_says() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let hostile = bundle(tmp.path());
        let b = load_dir(tmp.path());
        assert_eq!(b.observations.len(), 41);
        assert_eq!(b.unreadable.0, 1, "{:?}", b.unreadable);
        assert_eq!(b.artifacts[0].check, Check::Verified);
        let page = render(&b, &[], None);
        assert!(!page.contains(&hostile) && !page.contains("<script") && !page.contains("<b>x"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(page.contains("default-src 'none'"));
        let fig = "<figure class=\"plot\" data-feature=\"cpu_cores\"><svg";
        assert_eq!(
            page.matches(fig).count(),
            1,
            "one plot per deviating feature"
        );
        assert!(page.contains("<polyline"), "the series is drawn");
        assert!(page.contains("5 live peers at 0.200 ± 0.050"));
        assert!(page.contains("1 observation line(s) could not be read"));
        assert!(page.contains("0 of 5 other replicas"));
        assert!(page.contains("event: exec"));
        assert!(page.contains("not_found: &lt;gone&gt;"));
        assert!(page.contains("give <code>--responses</code>"));
    }

    #[test]
    fn a_changed_artifact_is_reported_as_a_mismatch() {
        let tmp = tempfile::tempdir().expect("tempdir");
        bundle(tmp.path());
        let p = tmp.path().join("observations-before.jsonl");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[10] ^= 1;
        std::fs::write(&p, bytes).expect("write");
        let b = load_dir(tmp.path());
        assert!(matches!(b.artifacts[0].check, Check::Mismatch { .. }));
        assert!(render(&b, &[], None).contains("MISMATCH"));
    }

    #[test]
    fn finds_a_bundle_by_folder_url_or_incident_id_and_creates_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("evidence");
        let folder = store.join("inc-1");
        std::fs::create_dir_all(&folder).expect("mkdir");
        bundle(&folder);
        let mut cfg = HerdConfig::default();
        cfg.agent.evidence_url = format!("file://{}", store.display());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for what in [
            folder.display().to_string(),
            format!("file://{}/", folder.display()),
            "inc-1".to_owned(),
        ] {
            let b = rt.block_on(load(&cfg, &what)).expect(&what);
            assert_eq!(b.manifest.incident_id, "inc-1");
        }
        for what in [
            "inc-2".to_owned(),
            format!("{}/typo/inc-1", store.display()),
        ] {
            let e = rt.block_on(load(&cfg, &what)).expect_err(&what);
            assert!(e.to_string().contains("no such bundle folder"), "{e:#}");
        }
        assert!(!store.join("inc-2").exists() && !store.join("typo").exists());
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(num(0.0), "0.00");
        assert_eq!(num(0.4213), "0.421");
        assert_eq!(num(3.5), "3.50");
        assert_eq!(num(42.0), "42.0");
        assert_eq!(num(1.3e8), "130M");
        assert_eq!(num(-2.5e9), "-2.50G");
        assert_eq!(num(12_345.0), "12.3k");
    }
}
