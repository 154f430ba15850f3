//! `herd feedback INCIDENT_ID benign|malicious` and `herd policy from-incident
//! INCIDENT_ID`: an analyst's verdict on an incident, and the standing rule an
//! investigation leaves behind.
//!
//! Both start from the incident's alert lines: from `herd.alerts` (read to its current
//! end), or from a file of alert lines (`herd replay --out`, `herd consume` output, or
//! `herd backtest` output). `herd feedback` publishes the verdict to `herd.feedback`
//! keyed by the image's repository, so the worker that owns the group applies it
//! (`Task::apply_feedback` in `src/stream/task.rs`, then `Engine::apply_feedback`); with
//! `--out`, it writes the record for `herd replay --feedback` instead.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use herd_baseline::Verdict;
use herd_detect::{Alert, Feedback};
use rdkafka::message::Message as _;
use rdkafka::producer::BaseRecord;

use crate::config::HerdConfig;
use crate::input::{Line, LineReader};

/// How long reading a topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The alert in a line of alert lines, `herd consume` output (`payload`) or `herd
/// backtest` output (`alert`); `None` for any other line.
fn alert_of(line: &[u8]) -> Option<Alert> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let v = match (v.get("payload"), v.get("alert")) {
        (Some(p), _) => p.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => v,
    };
    serde_json::from_value(v).ok()
}

/// Every alert line of `incident` (in the order read), from the file `from` or else
/// the alerts topic of `cfg`. Fails when there is none.
pub fn incident_alerts(
    cfg: &HerdConfig,
    from: Option<&Path>,
    incident: &str,
) -> anyhow::Result<Vec<Alert>> {
    let mut found = Vec::new();
    let mut keep = |bytes: &[u8]| {
        // A cheap test before parsing: the id must appear in the line.
        if memchr::memmem::find(bytes, incident.as_bytes()).is_some()
            && let Some(a) = alert_of(bytes)
            && a.incident_id == incident
        {
            found.push(a);
        }
    };
    let place = crate::consume::lines_or_topic(
        &cfg.kafka,
        from,
        &cfg.stream.topics.alerts,
        cfg.limits.max_line_bytes,
        &mut keep,
    )?;
    anyhow::ensure!(
        !found.is_empty(),
        "incident {incident}: no alert line of it in {place}"
    );
    Ok(found)
}

/// Every feedback record in a file of JSON lines (`herd feedback --out`, or `herd
/// consume` output of `herd.feedback`), checked. Fails on the first unreadable one,
/// naming its line.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<Feedback>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = LineReader::new(BufReader::new(f), herd_detect::feedback::MAX_RECORD_BYTES);
    let mut out = Vec::new();
    let mut n = 0;
    while let Some(line) = r.next_line()? {
        n += 1;
        let bytes = match line {
            Line::Ok(b) if b.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Ok(b) => b,
            Line::TooLong(len) => {
                anyhow::bail!("{}:{n}: a line of {len} bytes", path.display())
            }
        };
        let record = match serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("payload").cloned())
        {
            Some(p) => Feedback::parse(p.to_string().as_bytes()),
            None => Feedback::parse(bytes),
        };
        out.push(record.with_context(|| format!("{}:{n}", path.display()))?);
    }
    Ok(out)
}

/// Every feedback record on the feedback topic.
fn topic_records(cfg: &HerdConfig) -> anyhow::Result<Vec<Feedback>> {
    let mut out = Vec::new();
    crate::consume::read_to_end(&cfg.kafka, &cfg.stream.topics.feedback, READ_TIMEOUT, |m| {
        // The workers dead-letter what cannot be read; here it is only skipped.
        if let Some(fb) = m.payload().and_then(|p| Feedback::parse(p).ok()) {
            out.push(fb);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Publishes a record to the feedback topic, keyed by the image's repository (the
/// routing key: the partition of the worker that owns the group), and waits until the
/// broker has it.
pub fn publish(cfg: &HerdConfig, fb: &Feedback) -> anyhow::Result<()> {
    let producer = crate::stream::kafka::producer(&cfg.kafka)?;
    let line = fb.to_line();
    let topic = &cfg.stream.topics.feedback;
    crate::stream::kafka::send(
        &producer,
        BaseRecord::to(topic)
            .key(fb.routing_key().as_bytes())
            .payload(line.as_bytes()),
    )?;
    crate::stream::kafka::flush(&producer, crate::stream::kafka::FLUSH_STALL)
        .with_context(|| format!("publishing to {topic} (do the workers run? they create it)"))
}

/// Appends a record as one line to `path` (`-`: stdout).
pub fn write_record(path: &Path, fb: &Feedback) -> anyhow::Result<()> {
    let line = fb.to_line() + "\n";
    if path.as_os_str() == "-" {
        std::io::stdout().lock().write_all(line.as_bytes())?;
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(line.as_bytes())?;
    Ok(())
}

/// The latest verdict on `incident` among `records`.
fn latest_verdict<'a>(records: &'a [Feedback], incident: &str) -> Option<&'a Feedback> {
    records
        .iter()
        .filter(|f| f.incident_id == incident)
        .max_by_key(|f| f.ts_ms().unwrap_or(i64::MIN))
}

/// The policy stanza for review: a `[[policy]]` that matches this behaviour (the
/// incident's detectors, deviating features and novel items) on this image, with
/// a capture and a dry-run pause, headed by comments that say where it came from.
/// Refused for an incident whose latest verdict is benign.
pub fn policy_from_incident(alerts: &[Alert], verdicts: &[Feedback]) -> anyhow::Result<String> {
    let last = alerts
        .iter()
        .max_by_key(|a| a.seq)
        .context("no alert line of the incident")?;
    let id = &last.incident_id;
    let verdict = latest_verdict(verdicts, id);
    if let Some(v) = verdict.filter(|v| v.verdict == Verdict::Benign) {
        anyhow::bail!(
            "incident {id} was judged benign by {} at {}: a standing rule would act on \
             behaviour the group now expects",
            v.by,
            v.ts
        );
    }
    let mut detectors: Vec<String> = Vec::new();
    let mut features: Vec<String> = Vec::new();
    let mut items: Vec<String> = Vec::new();
    for a in alerts {
        for d in &a.detectors {
            let d = d.as_str().to_owned();
            if !detectors.contains(&d) {
                detectors.push(d);
            }
        }
        for f in &a.features {
            if !features.contains(&f.name) {
                features.push(f.name.clone());
            }
        }
        for n in &a.novel {
            let item = format!("{}:{}", n.kind, glob_escape(&n.value));
            if !items.contains(&item) {
                items.push(item);
            }
        }
    }
    let quote = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter().map(|x| quote(x)).collect::<Vec<_>>().join(", ")
        )
    };
    let repository = herd_ingest::model::repository_of(&last.image);
    let mut matcher = vec![format!("repository = {}", quote(repository))];
    for (key, v) in [
        ("detectors", &detectors),
        ("features", &features),
        ("items", &items),
    ] {
        if !v.is_empty() {
            matcher.push(format!("{key} = {}", list(v)));
        }
    }
    let name = format!("incident-{}", id.get(..12).unwrap_or(id));
    let mut out = String::new();
    out.push_str(&format!(
        "# From incident {id}: {} ({}), {} alert line(s), last at {}.\n",
        comment(&last.container_name),
        comment(&last.image),
        alerts.len(),
        last.ts
    ));
    match verdict {
        Some(v) => out.push_str(&format!(
            "# Judged {} by {} at {}{}.\n",
            v.verdict.as_str(),
            comment(&v.by),
            v.ts,
            v.note
                .as_deref()
                .map(|n| format!(": {}", comment(n)))
                .unwrap_or_default()
        )),
        None => out.push_str("# No verdict on it was found.\n"),
    }
    out.push_str(&format!("# {}\n", comment(&last.explanation)));
    out.push_str(
        "# Review before loading: it acts on every replica of this image that shows this\n\
         # behaviour from now on. Put it before broader policies (the first match wins),\n\
         # and make the pause real (remove `dry_run`) once a backtest agrees with it.\n",
    );
    out.push_str(&format!(
        "[[policy]]\nname = {}\nmatch = {{ {} }}\nactions = [\n  {{ action = \"capture\" }},\n  {{ action = \"pause\", dry_run = true }},\n]\n",
        quote(&name),
        matcher.join(", ")
    ));
    // What it says must load as it is.
    herd_respond::policy::PolicyFile::parse(&out)
        .context("the policy written does not load (a bug: please report it)")?;
    Ok(out)
}

/// Text for a comment line: control characters (a line break would end the comment
/// and let a name or a note write policy) become spaces.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `value` as a glob that matches it: the glob language has no escape, so a `*` or
/// `?` in the item becomes `?` (any one character): never narrower than the item, and
/// the reviewer sees it.
fn glob_escape(value: &str) -> String {
    value.replace(['*', '?'], "?")
}

/// The verdicts recorded for an incident: from a file, or the feedback topic.
pub fn verdicts(from: Option<&Path>, cfg: Option<&HerdConfig>) -> anyhow::Result<Vec<Feedback>> {
    match (from, cfg) {
        (Some(p), _) => read_records(p),
        (None, Some(cfg)) => topic_records(cfg),
        (None, None) => Ok(Vec::new()),
    }
}

/// Who gives a verdict: `--by`, else the login name.
pub fn author(by: Option<String>) -> anyhow::Result<String> {
    by.or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.is_empty())
        .context("who gives this verdict? say it with --by NAME")
}
