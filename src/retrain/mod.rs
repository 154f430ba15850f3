//! `herd retrain`: baselines from the archive's history, with DataFusion SQL.
//!
//! For every group and feature in the window: robust quantiles, the median and the
//! median absolute deviation; medians by hour of day and by day of week (so a daily
//! peak is expected); the spread between replicas sampled in the same minute. Every
//! quantile comes from herd's own sketch ([`quantiles`]), so the same rows give the
//! same baseline however the work is split among threads and files. Each
//! group's result is a versioned [`Retrained`] snapshot, written as a file and/or
//! published to `herd.retrained` (key: the group's routing key, its repository).
//! With linfa, each group's feature vectors also get a multivariate [`Structure`]
//! (probabilistic PCA with a Gaussian mixture over its scores, [`model`]) that the
//! stream scorer evaluates.
//!
//! Memory: the queries stream the Parquet files; aggregations are bounded by a memory
//! pool (`--memory-mb`) and spill to disk beyond it, so an archive larger than memory
//! is read in one pass per query, never collected.

pub mod model;
pub mod quantiles;
pub mod snapshot;
pub mod sql;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use datafusion::arrow::array::{Array, ArrayRef, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures_util::TryStreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use herd_baseline::structure::Structure;
pub use snapshot::{FeatureProfile, Quantiles, Retrained, Seasonal};
use sql::{Dialect, Window};

/// What to retrain from, and where the results go.
#[derive(Debug, Clone)]
pub struct Options {
    /// The archive: `file:///…`, a directory, or `s3://bucket/prefix`.
    pub archive: String,
    /// Options of an S3-compatible store.
    pub store_options: BTreeMap<String, String>,
    /// Event-time window, epoch ms, `[since, until)`.
    pub since_ms: i64,
    /// End of the window.
    pub until_ms: i64,
    /// Memory for the queries' aggregations before they spill to disk.
    pub memory_bytes: usize,
    /// A progress bar on stderr.
    pub progress: bool,
}

/// One step's counts, for the summary.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The snapshots, by group.
    pub snapshots: BTreeMap<String, Retrained>,
    /// Archive rows in the window.
    pub rows: u64,
    /// Seconds spent in the queries.
    pub elapsed_s: f64,
}

/// Opens a DataFusion session over the archive as table `obs` (with its hive columns
/// `date` and `hour`).
pub async fn session(opts: &Options) -> anyhow::Result<SessionContext> {
    // Several operators of one query spill (the partial and final aggregations of each
    // partition): a fair pool gives each its share instead of letting the first take all.
    let pool = datafusion::execution::memory_pool::TrackConsumersPool::new(
        datafusion::execution::memory_pool::FairSpillPool::new(opts.memory_bytes),
        std::num::NonZeroUsize::MIN.saturating_add(4),
    );
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .build_arc()?;
    let config = SessionConfig::new()
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_udaf(quantiles::udaf());
    let opened = herd_respond::evidence::open_object_store(
        &opts.archive,
        opts.store_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        "archive directory",
    )?;
    let table_url = if let Some(dir) = &opened.local {
        format!("{}/", dir.display())
    } else {
        let u = url::Url::parse(&opened.url)?;
        ctx.register_object_store(&u, Arc::clone(&opened.store));
        format!("{}/", opened.url)
    };
    let schema = crate::archive::schema();
    let read = ParquetReadOptions::default()
        .table_partition_cols(vec![
            ("date".to_owned(), DataType::Utf8),
            ("hour".to_owned(), DataType::Utf8),
        ])
        .schema(&schema);
    ctx.register_parquet("obs", &table_url, read)
        .await
        .with_context(|| format!("reading the archive at {}", opts.archive))?;
    Ok(ctx)
}

/// Runs a query to the end, batch by batch.
async fn collect(ctx: &SessionContext, q: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let df = ctx
        .sql(q)
        .await
        .with_context(|| format!("planning:\n{q}"))?;
    let stream = df.execute_stream().await?;
    Ok(stream.try_collect().await?)
}

/// Column `name` of a batch as f64 (casting whatever numeric type the engine chose).
fn f64s(b: &RecordBatch, name: &str) -> anyhow::Result<Float64Array> {
    let c: &ArrayRef = b
        .column_by_name(name)
        .with_context(|| format!("no column {name}"))?;
    let c = cast(c, &DataType::Float64)?;
    Ok(c.as_any()
        .downcast_ref::<Float64Array>()
        .context("cast to f64")?
        .clone())
}

/// Column `name` of a batch as strings.
fn strs(b: &RecordBatch, name: &str) -> anyhow::Result<StringArray> {
    let c: &ArrayRef = b
        .column_by_name(name)
        .with_context(|| format!("no column {name}"))?;
    let c = cast(c, &DataType::Utf8)?;
    Ok(c.as_any()
        .downcast_ref::<StringArray>()
        .context("cast to string")?
        .clone())
}

fn opt(a: &Float64Array, i: usize) -> Option<f64> {
    (a.is_valid(i) && a.value(i).is_finite()).then(|| a.value(i))
}

/// Retrains every group with data in the window.
pub async fn retrain(opts: &Options) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let ctx = session(opts).await?;
    let w = Window {
        since_ms: opts.since_ms,
        until_ms: opts.until_ms,
    };
    let d = Dialect::DataFusion;
    let steps = sql::STEPS;
    let bar = if opts.progress {
        let b =
            ProgressBar::with_draw_target(Some(steps.len() as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} retrain [{bar:30}] {pos}/{len} {msg} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut out = Outcome::default();
    let trained_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    // 1. Groups: rows, replicas, time range, repository.
    bar.set_message(steps[0]);
    for b in collect(&ctx, &sql::groups(d, w)).await? {
        let (g, img) = (strs(&b, "grp")?, strs(&b, "image")?);
        let (rows, reps) = (f64s(&b, "n")?, f64s(&b, "replicas")?);
        let (first, last) = (f64s(&b, "first_ms")?, f64s(&b, "last_ms")?);
        for i in 0..b.num_rows() {
            let rows = rows.value(i) as u64;
            out.rows += rows;
            out.snapshots.insert(
                g.value(i).to_owned(),
                Retrained {
                    format: snapshot::FORMAT,
                    group: g.value(i).to_owned(),
                    repository: herd_ingest::model::repository_of(img.value(i)).to_owned(),
                    trained_at: trained_at.clone(),
                    since_ms: w.since_ms,
                    until_ms: w.until_ms,
                    first_ms: first.value(i) as i64,
                    last_ms: last.value(i) as i64,
                    rows,
                    replicas: reps.value(i) as u64,
                    features: BTreeMap::new(),
                    structure: None,
                },
            );
        }
    }
    bar.inc(1);

    // 2. Quantiles per group and feature.
    bar.set_message(steps[1]);
    for b in collect(&ctx, &sql::quantiles(d, w)).await? {
        let (g, f) = (strs(&b, "grp")?, strs(&b, "feature")?);
        let n = f64s(&b, "n")?;
        let q: Vec<Float64Array> = ["p05", "p25", "p50", "p75", "p95", "p99"]
            .iter()
            .map(|c| f64s(&b, c))
            .collect::<anyhow::Result<_>>()?;
        for i in 0..b.num_rows() {
            let Some(s) = out.snapshots.get_mut(g.value(i)) else {
                continue;
            };
            let v = |k: usize| opt(&q[k], i).unwrap_or(f64::NAN);
            s.features.insert(
                f.value(i).to_owned(),
                FeatureProfile {
                    count: n.value(i) as u64,
                    quantiles: Quantiles {
                        p05: v(0),
                        p25: v(1),
                        p50: v(2),
                        p75: v(3),
                        p95: v(4),
                        p99: v(5),
                    },
                    mad: f64::NAN,
                    hour_of_day: vec![None; 24],
                    day_of_week: vec![None; 7],
                    weekday_offset: Vec::new(),
                    replica_spread: None,
                    seasonal: None,
                },
            );
        }
    }
    bar.inc(1);

    // 3. MAD: the medians just computed, joined back to the rows.
    bar.set_message(steps[2]);
    for b in collect(&ctx, &sql::mad(d, w)).await? {
        let (g, f, mad) = (strs(&b, "grp")?, strs(&b, "feature")?, f64s(&b, "mad")?);
        for i in 0..b.num_rows() {
            if let Some(p) = feature_mut(&mut out, g.value(i), f.value(i)) {
                p.mad = opt(&mad, i).unwrap_or(f64::NAN);
            }
        }
    }
    bar.inc(1);

    // 4. Hour-of-day and day-of-week profiles.
    bar.set_message(steps[3]);
    let profiles = profiles(&ctx, w).await?;
    for (g, f, slot, v) in &profiles.hourly {
        if let Some(x) =
            feature_mut(&mut out, g, f).and_then(|p| p.hour_of_day.get_mut(*slot as usize))
        {
            *x = v[0];
        }
    }
    for (g, f, slot, v) in &profiles.weekly {
        let Some(p) = feature_mut(&mut out, g, f) else {
            continue;
        };
        let k = *slot as usize;
        if let Some(m) = p.day_of_week.get_mut(k) {
            *m = v[0];
        }
        // A feature without a weekly view has no offsets at all (not seven `null`s).
        if let Some(off) = v[1].filter(|_| k < 7) {
            p.weekday_offset.resize(7, None);
            p.weekday_offset[k] = Some(off);
        }
    }
    bar.inc(1);

    // 5. Residuals around the expected level (hour of day, and weekday where known).
    bar.set_message(steps[4]);
    for b in collect(
        &ctx,
        &sql::seasonal(d, w, &profiles.levels, &profiles.offsets),
    )
    .await?
    {
        let (g, f, n) = (strs(&b, "grp")?, strs(&b, "feature")?, f64s(&b, "n")?);
        let q: Vec<Float64Array> = ["q001", "q01", "q10", "q50", "q90", "q99", "q999"]
            .iter()
            .map(|c| f64s(&b, c))
            .collect::<anyhow::Result<_>>()?;
        for i in 0..b.num_rows() {
            let Some(p) = feature_mut(&mut out, g.value(i), f.value(i)) else {
                continue;
            };
            let v: Option<Vec<f64>> = q.iter().map(|a| opt(a, i)).collect();
            if let Some(Ok(qs)) = v.map(<[f64; 7]>::try_from) {
                p.seasonal = Some(Seasonal {
                    count: n.value(i) as u64,
                    residuals: herd_baseline::Summary::from_array(qs),
                });
            }
        }
    }
    bar.inc(1);

    // 6. Spread between replicas at the same time.
    bar.set_message(steps[5]);
    for b in collect(&ctx, &sql::spread(d, w)).await? {
        let (g, f, sp) = (strs(&b, "grp")?, strs(&b, "feature")?, f64s(&b, "spread")?);
        for i in 0..b.num_rows() {
            if let Some(p) = feature_mut(&mut out, g.value(i), f.value(i)) {
                p.replica_spread = opt(&sp, i);
            }
        }
    }
    bar.inc(1);

    // 7. The multivariate structure of each group's feature vectors (linfa).
    bar.set_message(steps[6]);
    for (g, vectors) in model::sample(&ctx, w).await? {
        if let Some(s) = out.snapshots.get_mut(&g) {
            s.structure = model::fit(&vectors);
        }
    }
    bar.inc(1);
    bar.finish_and_clear();
    out.elapsed_s = started.elapsed().as_secs_f64();
    Ok(out)
}

/// One row of a profile query: group, feature, slot (hour or weekday), and the values
/// of the columns asked for (`None` where null or not finite).
pub type ProfileRow = (String, String, i64, Vec<Option<f64>>);

/// The window's hour-of-day medians and weekday offsets, as rows and as the small SQL
/// tables ([`sql::table`]) the later queries join against.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    /// [`sql::by_hour`]: `med`.
    pub hourly: Vec<ProfileRow>,
    /// [`sql::by_weekday`]: `med`, `off`.
    pub weekly: Vec<ProfileRow>,
    /// The hourly medians as a table (`grp`, `feature`, `slot`, `med`).
    pub levels: String,
    /// The weekday offsets as a table (`grp`, `feature`, `dow`, `off`).
    pub offsets: String,
}

/// Runs the profile queries of window `w`: the hourly levels first, then the weekdays
/// against them.
pub async fn profiles(ctx: &SessionContext, w: Window) -> anyhow::Result<Profiles> {
    let d = Dialect::DataFusion;
    let hourly = profile_rows(ctx, &sql::by_hour(d, w), &["med"]).await?;
    let flat = |rows: &[ProfileRow], k: usize| -> Vec<(String, String, i64, f64)> {
        rows.iter()
            .filter_map(|(g, f, s, v)| Some((g.clone(), f.clone(), *s, v.get(k).copied()??)))
            .collect()
    };
    let levels = sql::table(["grp", "feature", "slot", "med"], &flat(&hourly, 0));
    let weekly = profile_rows(ctx, &sql::by_weekday(d, w, &levels), &["med", "off"]).await?;
    let offsets = sql::table(["grp", "feature", "dow", "off"], &flat(&weekly, 1));
    Ok(Profiles {
        hourly,
        weekly,
        levels,
        offsets,
    })
}

async fn profile_rows(
    ctx: &SessionContext,
    q: &str,
    cols: &[&str],
) -> anyhow::Result<Vec<ProfileRow>> {
    let mut rows = Vec::new();
    for b in collect(ctx, q).await? {
        let (g, f, slot) = (strs(&b, "grp")?, strs(&b, "feature")?, f64s(&b, "slot")?);
        let vals: Vec<Float64Array> = cols
            .iter()
            .map(|c| f64s(&b, c))
            .collect::<anyhow::Result<_>>()?;
        for i in 0..b.num_rows() {
            rows.push((
                g.value(i).to_owned(),
                f.value(i).to_owned(),
                slot.value(i) as i64,
                vals.iter().map(|a| opt(a, i)).collect(),
            ));
        }
    }
    Ok(rows)
}

fn feature_mut<'a>(out: &'a mut Outcome, g: &str, f: &str) -> Option<&'a mut FeatureProfile> {
    out.snapshots.get_mut(g)?.features.get_mut(f)
}

/// Where a retrain's results go.
#[derive(Debug, Clone, Default)]
pub struct Sinks {
    /// Write `<group>.json` files here.
    pub out_dir: Option<PathBuf>,
    /// Publish to this topic with these librdkafka properties.
    pub publish: Option<(String, BTreeMap<String, String>)>,
}

/// How a group's snapshot compares with the one written before it in `out_dir`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// No earlier snapshot.
    New,
    /// Features whose median moved more than 10% (and by how much, relative).
    Moved(Vec<(String, f64)>),
    /// Nothing moved more than 10%.
    Same,
}

/// Compares `s` with the previous snapshot file of its group, if any.
pub fn change(prev: Option<&Retrained>, s: &Retrained) -> Change {
    let Some(prev) = prev else {
        return Change::New;
    };
    let mut moved = Vec::new();
    for (name, p) in &s.features {
        let before = prev.features.get(name).map(|q| q.quantiles.p50);
        let rel = match before {
            Some(b) if b.abs() > 1e-12 => (p.quantiles.p50 - b) / b.abs(),
            Some(_) => 0.0,
            None => f64::INFINITY,
        };
        if rel.abs() > 0.10 {
            moved.push((name.clone(), rel));
        }
    }
    if moved.is_empty() {
        Change::Same
    } else {
        Change::Moved(moved)
    }
}

/// Reads every snapshot (`*.json`) in `dir`, as `herd retrain --out` wrote them.
pub fn read_dir(dir: &std::path::Path) -> anyhow::Result<Vec<Retrained>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            out.push(
                Retrained::parse(&bytes).with_context(|| format!("snapshot {}", path.display()))?,
            );
        }
    }
    out.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(out)
}

/// The file name of a group's snapshot (the group key made safe for a path).
pub fn file_name(group: &str) -> String {
    format!("{}.json", herd_respond::evidence::safe_name(group))
}

/// Writes the snapshots to `out_dir` (after reading the previous ones for the
/// comparison) and publishes them; returns each group's change.
pub fn deliver(out: &Outcome, sinks: &Sinks) -> anyhow::Result<BTreeMap<String, Change>> {
    let mut changes = BTreeMap::new();
    if let Some(dir) = &sinks.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (g, s) in &out.snapshots {
        let prev = sinks.out_dir.as_ref().and_then(|d| {
            let bytes = std::fs::read(d.join(file_name(g))).ok()?;
            Retrained::parse(&bytes).ok()
        });
        changes.insert(g.clone(), change(prev.as_ref(), s));
        if let Some(dir) = &sinks.out_dir {
            let path = dir.join(file_name(g));
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    if let Some((topic, kafka)) = &sinks.publish {
        publish(out, topic, kafka)?;
    }
    Ok(changes)
}

fn publish(out: &Outcome, topic: &str, kafka: &BTreeMap<String, String>) -> anyhow::Result<()> {
    use crate::stream::kafka;
    use rdkafka::producer::BaseRecord;
    let producer = kafka::producer(kafka)?;
    for s in out.snapshots.values() {
        let bytes = serde_json::to_vec(s)?;
        let rec = BaseRecord::to(topic)
            .key(s.repository.as_bytes())
            .payload(bytes.as_slice());
        kafka::send(&producer, rec).context("publishing a snapshot")?;
    }
    // A refused delivery fails the run: a nightly job that lost a snapshot must say so.
    kafka::flush(&producer, kafka::FLUSH_STALL).context("delivering the snapshots")
}

/// The summary table: per group its rows, replicas, features, time range and what
/// changed; then the totals.
pub fn render(out: &Outcome, changes: &BTreeMap<String, Change>) -> String {
    let fmt_t = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default()
    };
    let mut s = format!(
        "{:<40} {:>10} {:>8} {:>8}  {:<16}  {:<16}  {}\n",
        "group", "rows", "replicas", "features", "from", "to", "change"
    );
    for (g, r) in &out.snapshots {
        let change = match changes.get(g) {
            Some(Change::New) | None => "new".to_owned(),
            Some(Change::Same) => "unchanged".to_owned(),
            Some(Change::Moved(m)) => m
                .iter()
                .map(|(f, rel)| format!("{f} {:+.0}%", rel * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let name: String = if g.chars().count() > 40 {
            let mut t: String = g.chars().take(39).collect();
            t.push('…');
            t
        } else {
            g.clone()
        };
        s.push_str(&format!(
            "{:<40} {:>10} {:>8} {:>8}  {:<16}  {:<16}  {}\n",
            name,
            r.rows,
            r.replicas,
            r.features.len(),
            fmt_t(r.first_ms),
            fmt_t(r.last_ms),
            change
        ));
    }
    s.push_str(&format!(
        "herd retrain: {} groups, {} rows in {:.2} s ({:.0} rows/s)\n",
        out.snapshots.len(),
        out.rows,
        out.elapsed_s,
        out.rows as f64 / out.elapsed_s.max(1e-9)
    ));
    s
}
