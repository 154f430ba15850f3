//! Evidence bundles: a folder per incident, written once, with a hashed manifest.
//!
//! ```text
//! <store>/<incident>/inspect.json              docker inspect
//!                    processes.json            docker top
//!                    changes.json              docker diff
//!                    logs-tail.log             the last N log lines
//!                    logs-window.log           every log line since the alert window began
//!                    stats.json                one stats-API sample at capture time
//!                    observations-before.jsonl the worker's ring buffer before the alert
//!                    filesystem.tar            (optional) docker export
//!                    manifest.json             what is above: SHA-256, size, when, how, by whom
//!                    observations-after.jsonl  the ring buffer after the alert (later)
//!                    manifest-after.json       its addendum, chained to manifest.json's hash
//! ```
//!
//! Every object is written with `PutMode::Create`: a second writer of the same name
//! fails instead of replacing it, so a redelivered command cannot rewrite evidence, and
//! `manifest.json` existing means the capture is complete. Names are sanitised here,
//! because container names and anything else in them is chosen by whoever controls the
//! container. On a local directory the files are made read-only for their owner (0400)
//! and the folders owner-only (0700).

use std::path::PathBuf;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Version of `manifest.json`.
pub const MANIFEST_FORMAT: u32 = 1;

/// A safe file or folder name from untrusted text: ASCII letters, digits, `.`, `_` and
/// `-` are kept, everything else becomes `_`; no leading dot (so never `.` or `..`),
/// at most 128 bytes, never empty.
pub fn safe_name(text: &str) -> String {
    let mut s: String = text
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// The folder name of an incident's bundle.
pub fn bundle_name(incident_id: &str) -> String {
    safe_name(incident_id)
}

/// One artifact in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name inside the bundle.
    pub name: String,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was collected (RFC 3339).
    pub collected_at: String,
    /// Where it came from (`docker GET /containers/{id}/json`, `worker ring buffer`, …).
    pub source: String,
    /// Whether it was cut at its size limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// An artifact that could not be collected, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The artifact's name.
    pub name: String,
    /// Why (`not_found`, `timeout`, the error in words).
    pub error: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The incident.
    pub incident_id: String,
    /// What started the capture: `policy:<name>`, `die`, `oom`, or `attach`.
    pub trigger: String,
    /// Container id and name.
    pub container_id: String,
    /// Container name as Docker reported it (untrusted text, stored as data).
    pub container_name: String,
    /// The collecting host.
    pub host: String,
    /// The collector and its version (`herd-agent/0.1.0`).
    pub collector: String,
    /// When the manifest was written (RFC 3339).
    pub created: String,
    /// The alert that caused the capture (absent for an automatic capture on exit
    /// before any policy ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<serde_json::Value>,
    /// What was collected.
    pub artifacts: Vec<Artifact>,
    /// What could not be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    /// For an addendum (`manifest-after.json`): the SHA-256 of `manifest.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_manifest_sha256: Option<String>,
    /// Anything else the collector recorded (the committed image id, …).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub notes: serde_json::Value,
}

/// Deserialises an object store's options (`[archive] options`, `evidence_options`)
/// as strings, accepting the scalars TOML and `HERD_…` variables write without quotes
/// (`allow_http = true`, `HERD_ARCHIVE__OPTIONS__ALLOW_HTTP=true`).
pub fn deserialize_store_options<'de, D>(
    d: D,
) -> std::result::Result<std::collections::BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        B(bool),
        I(i64),
        F(f64),
    }
    let m = std::collections::BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::B(b) => b.to_string(),
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// An object store opened by URL (see [`open_object_store`]).
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Where under it herd writes.
    pub prefix: Path,
    /// The URL, normalised (`file:///absolute/dir` for a local directory).
    pub url: String,
    /// The directory, for a local store.
    pub local: Option<PathBuf>,
}

/// Opens `file:///dir` (or a plain path: created, mode 0700) or `s3://bucket/prefix`
/// with `options` for the S3 client (`endpoint`, `region`, `allow_http`, …, over what the
/// usual AWS environment variables say; an unknown option is an error). Local writes go to a staging name and are renamed
/// into place, so a reader never sees half an object. `what` names the directory in
/// errors.
pub fn open_object_store<'a>(
    url: &str,
    options: impl IntoIterator<Item = (&'a str, &'a str)>,
    what: &'static str,
) -> Result<Opened> {
    let store_err = |e: object_store::Error| Error::Store(e.to_string());
    if !url.contains("://") || url.starts_with("file://") {
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { sink: what, source })?;
        set_mode(&dir, 0o700);
        let dir = dir
            .canonicalize()
            .map_err(|source| Error::Io { sink: what, source })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(store_err)?
            .with_automatic_cleanup(true);
        return Ok(Opened {
            store: Arc::new(fs),
            prefix: Path::default(),
            url: format!("file://{}", dir.display()),
            local: Some(dir),
        });
    }
    let parsed = url::Url::parse(url).map_err(|e| Error::Store(format!("{url}: {e}")))?;
    let (store, prefix): (Arc<dyn ObjectStore>, Path) = if parsed.scheme() == "s3" {
        // `parse_url_opts` reads only the options it is given: start from the AWS
        // environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, …) as operators expect, and
        // let the configured options override it. An option the S3 client does not know
        // is an error, not silently ignored (a misspelt `endpoint` would send the
        // archive to AWS).
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
        for (k, v) in options {
            let key = k
                .parse::<object_store::aws::AmazonS3ConfigKey>()
                .map_err(|_| Error::Store(format!("{what}: unknown S3 option {k:?}")))?;
            b = b.with_config(key, v);
        }
        let prefix =
            Path::from_url_path(parsed.path()).map_err(|e| Error::Store(format!("{url}: {e}")))?;
        (Arc::new(b.build().map_err(store_err)?), prefix)
    } else {
        let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(store_err)?;
        (Arc::from(store), prefix)
    };
    Ok(Opened {
        store,
        prefix,
        url: url.trim_end_matches('/').to_owned(),
        local: None,
    })
}

/// Where bundles are stored: a local directory or an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// The directory, for a local store (permissions are set there).
    local: Option<PathBuf>,
}

impl Store {
    /// Opens a store by URL: `file:///var/lib/herd/evidence` (or a plain path) or
    /// `s3://bucket/prefix`, with `options` passed to the S3 client (`endpoint`,
    /// `region`, `allow_http`, …; credentials come from the usual AWS environment).
    pub fn open<'a>(
        url: &str,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let o = open_object_store(url, options, "evidence directory")?;
        Ok(Self {
            inner: o.store,
            prefix: o.prefix,
            url: o.url,
            local: o.local,
        })
    }

    /// The store's URL (bundles are `<url>/<incident>/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The location of a bundle.
    pub fn location(&self, incident_id: &str) -> String {
        format!("{}/{}/", self.url, bundle_name(incident_id))
    }

    fn path(&self, bundle: &str, name: &str) -> Path {
        self.prefix
            .clone()
            .join(bundle_name(bundle))
            .join(safe_name(name))
    }

    /// Reads an object of a bundle (tests and `herd report` use it).
    pub async fn read(&self, incident_id: &str, name: &str) -> Result<Vec<u8>> {
        let r = self
            .inner
            .get(&self.path(incident_id, name))
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        let b = r.bytes().await.map_err(|e| Error::Store(e.to_string()))?;
        Ok(b.to_vec())
    }

    /// Whether an object of a bundle exists.
    pub async fn exists(&self, incident_id: &str, name: &str) -> Result<bool> {
        match self.inner.head(&self.path(incident_id, name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::Store(e.to_string())),
        }
    }

    /// Writes an object once: fails with [`Error::AlreadyWritten`] if it exists.
    async fn put_once(&self, incident_id: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(incident_id, name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(Error::AlreadyWritten(format!("{incident_id}/{name}")));
            }
            Err(e) => return Err(Error::Store(e.to_string())),
        }
        if let Some(dir) = &self.local {
            let folder = dir.join(bundle_name(incident_id));
            set_mode(&folder, 0o700);
            set_mode(&folder.join(safe_name(name)), 0o400);
        }
        Ok(())
    }
}

#[cfg(unix)]
fn set_mode(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

#[cfg(not(unix))]
fn set_mode(_: &std::path::Path, _: u32) {}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hex SHA-256 of everything `r` yields, read in pieces, and how many bytes that was
/// (an artifact of a gigabyte is hashed without holding it).
pub fn sha256_hex_reader(mut r: impl std::io::Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let n = std::io::copy(&mut r, &mut h)?;
    Ok((hex(&h.finalize()), n))
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Writes one bundle: artifacts as they come, the manifest last.
#[derive(Debug)]
pub struct BundleWriter {
    store: Store,
    incident_id: String,
    artifacts: Vec<Artifact>,
    missing: Vec<Missing>,
    bytes: u64,
}

impl BundleWriter {
    /// A writer for the incident's bundle.
    pub fn new(store: Store, incident_id: &str) -> Self {
        Self {
            store,
            incident_id: incident_id.to_owned(),
            artifacts: Vec::new(),
            missing: Vec::new(),
            bytes: 0,
        }
    }

    /// Writes an artifact (once) and records it.
    pub async fn put(
        &mut self,
        name: &str,
        bytes: Vec<u8>,
        source: &str,
        truncated: bool,
    ) -> Result<()> {
        let entry = Artifact {
            name: safe_name(name),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            collected_at: now_rfc3339(),
            source: source.to_owned(),
            truncated,
        };
        self.store.put_once(&self.incident_id, name, bytes).await?;
        self.bytes += entry.size;
        self.artifacts.push(entry);
        Ok(())
    }

    /// Records an artifact that could not be collected.
    pub fn missing(&mut self, name: &str, error: impl Into<String>) {
        self.missing.push(Missing {
            name: safe_name(name),
            error: error.into(),
        });
    }

    /// Artifacts written so far.
    pub fn artifacts(&self) -> &[Artifact] {
        &self.artifacts
    }

    /// Writes the manifest (`manifest.json`, or `manifest-after.json` for an addendum
    /// with `previous` set to the hash of the first), completing the bundle. Returns
    /// the manifest and the bytes written in all.
    pub async fn finish(self, mut manifest: Manifest, name: &str) -> Result<(Manifest, u64)> {
        manifest.format = MANIFEST_FORMAT;
        manifest.incident_id = self.incident_id.clone();
        manifest.artifacts = self.artifacts;
        manifest.missing = self.missing;
        manifest.created = now_rfc3339();
        let bytes = serde_json::to_vec_pretty(&manifest)?;
        let n = bytes.len() as u64;
        self.store.put_once(&self.incident_id, name, bytes).await?;
        Ok((manifest, self.bytes + n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_or_hide() {
        assert_eq!(safe_name("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(safe_name(".."), "_.");
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name("a\0b\nc\u{1b}[31m"), "a_b_c__31m");
        assert_eq!(safe_name("web-1.log"), "web-1.log");
        assert_eq!(safe_name(&"x".repeat(10_000)).len(), 128);
        assert_eq!(safe_name("ünï"), "_n_");
    }

    proptest::proptest! {
        #[test]
        fn safe_names_are_one_plain_component(s in "\\PC{0,300}") {
            let n = safe_name(&s);
            proptest::prop_assert!(!n.is_empty() && n.len() <= 128);
            proptest::prop_assert!(!n.starts_with('.'));
            proptest::prop_assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test fixture")
    }

    #[test]
    fn bundles_are_written_once_hashed_and_read_only() {
        let dir = tempfile::tempdir().expect("test fixture");
        let store =
            Store::open(dir.path().to_str().expect("test fixture"), []).expect("test fixture");
        rt().block_on(async {
            let mut w = BundleWriter::new(store.clone(), "inc/../1");
            w.put("inspect.json", b"{}".to_vec(), "docker", false)
                .await
                .expect("test fixture");
            w.missing("logs-tail.log", "not_found");
            let m = Manifest {
                format: 0,
                incident_id: String::new(),
                trigger: "policy:p".into(),
                container_id: "c".into(),
                container_name: "../evil\nname".into(),
                host: "h".into(),
                collector: "test".into(),
                created: String::new(),
                alert: None,
                artifacts: vec![],
                missing: vec![],
                previous_manifest_sha256: None,
                notes: serde_json::Value::Null,
            };
            let (m, bytes) = w.finish(m, "manifest.json").await.expect("test fixture");
            assert!(bytes > 2);
            assert_eq!(m.artifacts[0].sha256, sha256_hex(b"{}"));
            assert_eq!(m.missing.len(), 1);
            // Everything stayed inside one folder of the store.
            let folder = dir
                .path()
                .canonicalize()
                .expect("test fixture")
                .join("inc_.._1");
            assert!(folder.join("manifest.json").exists());
            assert_eq!(
                std::fs::read_dir(dir.path()).expect("test fixture").count(),
                1
            );
            let again = store
                .put_once("inc/../1", "inspect.json", b"[]".to_vec())
                .await;
            assert!(matches!(again, Err(Error::AlreadyWritten(_))), "{again:?}");
            assert_eq!(
                store
                    .read("inc/../1", "inspect.json")
                    .await
                    .expect("test fixture"),
                b"{}"
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(folder.join("inspect.json"))
                    .expect("test fixture")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o400);
            }
        });
    }

    #[test]
    fn store_options_take_unquoted_scalars_and_refuse_unknown_keys() {
        #[derive(Deserialize)]
        struct C {
            #[serde(deserialize_with = "deserialize_store_options")]
            options: std::collections::BTreeMap<String, String>,
        }
        let c: C = toml::from_str(
            "options = { allow_http = true, endpoint = \"http://127.0.0.1:9000\", retries = 3 }",
        )
        .expect("options");
        assert_eq!(c.options["allow_http"], "true");
        assert_eq!(c.options["retries"], "3");
        assert_eq!(c.options["endpoint"], "http://127.0.0.1:9000");

        let err = open_object_store(
            "s3://bucket/prefix",
            [("endpiont", "http://127.0.0.1:9000")],
            "archive",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("unknown S3 option \"endpiont\""), "{err}");
        let ok = open_object_store(
            "s3://bucket/some/prefix",
            [
                ("endpoint", "http://127.0.0.1:9000"),
                ("allow_http", "true"),
                ("region", "us-east-1"),
                ("access_key_id", "k"),
                ("secret_access_key", "s"),
            ],
            "archive",
        )
        .expect("opens without a request");
        assert_eq!(ok.prefix.as_ref(), "some/prefix");
        assert!(ok.local.is_none());
    }
}
