//! The observation archive: every observation `herd run` (or `herd replay`) scores, as
//! Parquet, for `herd retrain`.
//!
//! Layout: `<url>/date=YYYY-MM-DD/hour=HH/part-<partition>-<input>-<offset>.parquet`
//! (hive partitions of the observation's event time, UTC). One row per metric value
//! or per event; the schema is [`schema`], version [`SCHEMA_VERSION`] in the file's
//! key-value metadata (`herd.archive.schema_version`), documented in `docs/formats.md`.
//!
//! Crash safety: a task buffers rows ([`Buffer`]) and its files are written at every
//! checkpoint, before the offsets are committed, and whenever a buffer reaches
//! `max_file_rows` (so memory stays bounded). Objects are written once
//! (`PutMode::Create`) under names derived from the first record they hold; a local
//! store writes a staging file and renames it into place (an S3 PUT is atomic), so a
//! reader never sees half a file, and staging files a crash left are removed when the
//! archive is opened. After a crash the records since the last commit are processed
//! again: a file they reproduce exactly is recognised and skipped, one that differs is
//! written beside it. So no row is lost, and duplicates are limited to what the
//! at-least-once contract allows.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use herd_ingest::{Observation, Payload};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// Version of the archive's schema, in every file's metadata.
pub const SCHEMA_VERSION: &str = "1";

/// Most bytes of an event's JSON kept in the `event` column (a command line or a Falco
/// output can be long; the archive is for statistics, the evidence bundle for detail).
const MAX_EVENT_BYTES: usize = 4096;

/// `[archive]`: where `herd run` archives observations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// `file:///var/lib/herd/archive` or `s3://bucket/prefix`; none: no archive.
    pub url: Option<String>,
    /// Options of an S3-compatible store (`endpoint`, `region`, `allow_http`, …).
    #[serde(deserialize_with = "herd_respond::evidence::deserialize_store_options")]
    pub options: BTreeMap<String, String>,
    /// A task writes its buffer when it holds this many rows, checkpoint or not:
    /// about 10 MB of column builders, and row groups large enough for Parquet to
    /// compress well.
    pub max_file_rows: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            url: None,
            options: BTreeMap::new(),
            max_file_rows: 250_000,
        }
    }
}

impl ArchiveConfig {
    /// Checks the settings; messages name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_file_rows >= 1_000,
            "archive.max_file_rows: must be at least 1000"
        );
        Ok(())
    }
}

/// The archive's Arrow schema (version [`SCHEMA_VERSION`]).
pub fn schema() -> SchemaRef {
    let meta = [(
        "herd.archive.schema_version".to_owned(),
        SCHEMA_VERSION.to_owned(),
    )];
    Arc::new(
        Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("group", DataType::Utf8, false),
            Field::new("container_id", DataType::Utf8, false),
            Field::new("container_name", DataType::Utf8, true),
            Field::new("image", DataType::Utf8, false),
            Field::new("host", DataType::Utf8, true),
            Field::new("feature", DataType::Utf8, true),
            Field::new("value", DataType::Float64, true),
            Field::new("event", DataType::Utf8, true),
        ])
        .with_metadata(meta.into_iter().collect()),
    )
}

/// Column builders of one hour's rows.
#[derive(Debug)]
struct Columns {
    ts: TimestampMillisecondBuilder,
    group: StringBuilder,
    container_id: StringBuilder,
    container_name: StringBuilder,
    image: StringBuilder,
    host: StringBuilder,
    feature: StringBuilder,
    value: Float64Builder,
    event: StringBuilder,
    rows: usize,
    /// (input, offset) of the first record with a row here: the file's name.
    first: (usize, i64),
}

impl Columns {
    fn new(first: (usize, i64)) -> Self {
        Self {
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            group: StringBuilder::new(),
            container_id: StringBuilder::new(),
            container_name: StringBuilder::new(),
            image: StringBuilder::new(),
            host: StringBuilder::new(),
            feature: StringBuilder::new(),
            value: Float64Builder::new(),
            event: StringBuilder::new(),
            rows: 0,
            first,
        }
    }

    fn row(
        &mut self,
        group: &str,
        o: &Observation,
        feature: Option<&str>,
        value: Option<f64>,
        event: Option<&str>,
    ) {
        let c = &o.container;
        self.ts.append_value(o.ts_ms);
        self.group.append_value(group);
        self.container_id.append_value(&c.id);
        self.container_name.append_option(c.name.as_deref());
        self.image.append_value(&c.image);
        self.host.append_option(c.host.as_deref());
        self.feature.append_option(feature);
        self.value.append_option(value);
        self.event.append_option(event);
        self.rows += 1;
    }

    fn finish(mut self) -> anyhow::Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.group.finish()),
            Arc::new(self.container_id.finish()),
            Arc::new(self.container_name.finish()),
            Arc::new(self.image.finish()),
            Arc::new(self.host.finish()),
            Arc::new(self.feature.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.event.finish()),
        ];
        Ok(RecordBatch::try_new(schema(), cols)?)
    }
}

/// A file ready to be written: its path under the archive and its Parquet bytes.
#[derive(Debug, Clone)]
pub struct File {
    /// `date=…/hour=…/part-….parquet`.
    pub path: String,
    /// The whole file.
    pub bytes: Vec<u8>,
    /// Rows in it.
    pub rows: usize,
}

/// A task's rows not yet written, by hour of event time.
#[derive(Debug, Default)]
pub struct Buffer {
    hours: BTreeMap<i64, Columns>,
    rows: usize,
}

const HOUR_MS: i64 = 3_600_000;

impl Buffer {
    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Adds the rows of one observation of `group`, from the record at `at` (input
    /// index, offset).
    pub fn push(&mut self, group: &str, o: &Observation, at: (usize, i64)) {
        let hour = o.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let cols = self.hours.entry(hour).or_insert_with(|| Columns::new(at));
        let before = cols.rows;
        match &o.payload {
            Payload::Metrics(m) => {
                for (name, v) in m {
                    cols.row(group, o, Some(name), Some(*v), None);
                }
            }
            Payload::Event(e) => {
                let mut json = serde_json::to_string(e).unwrap_or_default();
                if json.len() > MAX_EVENT_BYTES {
                    // Cut on a character boundary; the kind is always kept.
                    let mut cut = MAX_EVENT_BYTES;
                    while !json.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    json.truncate(cut);
                }
                cols.row(group, o, None, None, Some(&json));
            }
        }
        self.rows += cols.rows - before;
    }

    /// Encodes every hour as one Parquet file and empties the buffer.
    pub fn take_files(&mut self, partition: i32) -> anyhow::Result<Vec<File>> {
        let mut files = Vec::with_capacity(self.hours.len());
        for (hour, cols) in std::mem::take(&mut self.hours) {
            let (input, offset) = cols.first;
            let rows = cols.rows;
            let batch = cols.finish()?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_created_by(format!("herd {}", env!("CARGO_PKG_VERSION")))
                .set_key_value_metadata(Some(vec![KeyValue::new(
                    "herd.archive.schema_version".to_owned(),
                    SCHEMA_VERSION.to_owned(),
                )]))
                .build();
            let mut bytes = Vec::new();
            let mut w = ArrowWriter::try_new(&mut bytes, schema(), Some(props))?;
            w.write(&batch)?;
            w.close()?;
            let t =
                chrono::DateTime::<chrono::Utc>::from_timestamp_millis(hour).unwrap_or_default();
            files.push(File {
                path: format!(
                    "date={}/hour={}/part-{partition:04}-{input}-{offset:020}.parquet",
                    t.format("%Y-%m-%d"),
                    t.format("%H"),
                ),
                bytes,
                rows,
            });
        }
        self.rows = 0;
        Ok(files)
    }
}

/// What [`Writer::write`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Files written.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Files skipped because an identical one was there (records processed again).
    pub skipped: u64,
}

/// Writes files to the archive's object store. Owns a small runtime: the worker's
/// thread is not async.
#[derive(Debug)]
pub struct Writer {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    rt: tokio::runtime::Runtime,
}

impl Writer {
    /// Opens the archive and removes staging files a crash left in a local one.
    pub fn open(cfg: &ArchiveConfig) -> anyhow::Result<Option<Self>> {
        let Some(url) = &cfg.url else {
            return Ok(None);
        };
        let o = herd_respond::evidence::open_object_store(
            url,
            cfg.options.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "archive directory",
        )
        .with_context(|| format!("opening the archive {url}"))?;
        if let Some(dir) = &o.local {
            remove_staging(dir);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Some(Self {
            store: o.store,
            prefix: o.prefix,
            url: o.url,
            rt,
        }))
    }

    /// The archive's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes files once each; see the module documentation for what happens when one
    /// exists already.
    pub fn write(&self, files: Vec<File>) -> anyhow::Result<Written> {
        let mut w = Written::default();
        for f in files {
            let (rows, len) = (f.rows as u64, f.bytes.len() as u64);
            if self.rt.block_on(self.put_once(&f.path, f.bytes))? {
                w.files += 1;
                w.rows += rows;
                w.bytes += len;
            } else {
                w.skipped += 1;
            }
        }
        Ok(w)
    }

    fn location(&self, path: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(path)
        } else {
            Path::from(format!("{}/{path}", self.prefix))
        }
    }

    /// `true`: written; `false`: an identical object was there.
    async fn put_once(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<bool> {
        let create = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let loc = self.location(path);
        let payload = PutPayload::from(bytes.clone());
        match self.store.put_opts(&loc, payload, create()).await {
            Ok(_) => return Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(anyhow::anyhow!("archive {path}: {e}")),
        }
        let existing = self.store.get(&loc).await?.bytes().await?;
        if existing.as_ref() == bytes.as_slice() {
            return Ok(false);
        }
        // Same first record, other rows (records merged in another order after a
        // restart): keep both rather than lose any.
        for n in 1..1000 {
            let alt = path.replace(".parquet", &format!("-r{n}.parquet"));
            let loc = self.location(&alt);
            match self
                .store
                .put_opts(&loc, PutPayload::from(bytes.clone()), create())
                .await
            {
                Ok(_) => return Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(anyhow::anyhow!("archive {alt}: {e}")),
            }
        }
        anyhow::bail!("archive {path}: a thousand versions exist")
    }
}

/// Removes `*#<n>` staging files (object_store's local writes) under `dir`.
fn remove_staging(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_staging(&p);
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('#'))
            .is_some_and(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
        {
            tracing::info!(file = %p.display(), "removing a staging file a crash left");
            let _ = std::fs::remove_file(&p);
        }
    }
}
