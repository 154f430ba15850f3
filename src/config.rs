//! herd's configuration file (TOML). Every section has defaults; unknown keys are
//! errors, so a typo cannot silently fall back to a default.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use herd_detect::DetectConfig;
use herd_ingest::{Limits, NormalizerConfig};
use serde::{Deserialize, Serialize};

use crate::agent::AgentConfig;
use crate::stream::StreamConfig;
use crate::stream::respond::RespondConfig;

/// Event-time ordering of replayed input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// How far behind the newest record a record may arrive and still be put in order.
    /// Agents flush every few seconds; a minute absorbs clock skew between hosts.
    pub max_lateness_ms: i64,
    /// Most records held for ordering (bounds memory whatever the input size).
    pub max_buffered: usize,
    /// A record still this far ahead of the stream when the input ends is rejected
    /// (`invalid_timestamp`) instead of scored: one record from a wrong clock, or forged,
    /// must not age every baseline at once. A day is far beyond any clock skew.
    pub max_future_skew_ms: i64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            max_lateness_ms: 60_000,
            max_buffered: 200_000,
            max_future_skew_ms: 86_400_000,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HerdConfig {
    /// Decoder limits.
    pub limits: Limits,
    /// Normaliser settings.
    pub normalizer: NormalizerConfig,
    /// Detection settings.
    pub detect: DetectConfig,
    /// Replay ordering.
    pub replay: ReplayConfig,
    /// The stream service (`herd run`).
    pub stream: StreamConfig,
    /// The worker's response loop: policies, evidence location, observation windows.
    pub respond: RespondConfig,
    /// The node agent (`herd agent`).
    pub agent: AgentConfig,
    /// The observation archive of `herd run` and `herd replay` (off without `url`).
    pub archive: crate::archive::ArchiveConfig,
    /// The operations endpoint (`/metrics`, `/healthz`, `/readyz`) of `herd run` and
    /// `herd agent`.
    pub http: crate::http::HttpConfig,
    /// Open incidents posted to Alertmanager by `herd run` (off without `urls`).
    pub alertmanager: herd_respond::sinks::alertmanager::AlertmanagerConfig,
    /// librdkafka properties, passed through to every client as they are
    /// (`"bootstrap.servers"`, `"security.protocol"`, `"sasl.username"`, ...).
    pub kafka: BTreeMap<String, String>,
}

/// What a secret is printed as.
pub const REDACTED: &str = "<redacted>";

/// Whether a property's value is a secret, by its name: librdkafka's `sasl.password`,
/// `ssl.key.password`, `ssl.key.pem`, `sasl.jaas.config`,
/// `sasl.oauthbearer.client.secret`, an S3 store's `secret_access_key` and
/// `session_token`, and anything else so named.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "credential",
        "private",
        ".pem",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `text` with the user and password of a URL in it replaced; other text unchanged.
fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("redacted");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => text.to_owned(),
    }
}

impl HerdConfig {
    /// Reads a TOML file, or the defaults when `path` is `None`, overlays the `HERD_…`
    /// environment variables, and validates the result.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`HerdConfig::load`] with the environment given: `HERD_SECTION__KEY=value` sets
    /// `[section] key` (more `__` go deeper; values parse as TOML, else as strings). In
    /// the `kafka` section, `_` in the key stands for `.`:
    /// `HERD_KAFKA__BOOTSTRAP_SERVERS` sets `kafka."bootstrap.servers"`.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut doc: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading configuration {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing configuration {}", p.display()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("HERD_") else {
                continue;
            };
            if !rest.contains("__") {
                continue; // HERD_CONFIG, HERD_LOG_FORMAT: flags' own variables
            }
            let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            overlay(&mut doc, &parts, &value)
                .with_context(|| format!("environment variable {name}"))?;
        }
        let cfg: HerdConfig =
            HerdConfig::deserialize(toml::Value::Table(doc)).with_context(|| match path {
                Some(p) => format!(
                    "parsing configuration {} (and HERD_… variables)",
                    p.display()
                ),
                None => "parsing HERD_… environment variables".to_owned(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This configuration with every secret replaced by `<redacted>`, for printing:
    /// librdkafka properties and store options whose names say they hold one
    /// ([`is_secret`]), and credentials inside URLs.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for map in [
            &mut c.kafka,
            &mut c.archive.options,
            &mut c.agent.evidence_options,
        ] {
            for (k, v) in map.iter_mut() {
                if is_secret(k) {
                    *v = REDACTED.to_owned();
                } else {
                    *v = redact_url(v);
                }
            }
        }
        for u in c
            .alertmanager
            .urls
            .iter_mut()
            .chain(c.archive.url.iter_mut())
            .chain([&mut c.agent.evidence_url, &mut c.respond.evidence_url])
        {
            *u = redact_url(u);
        }
        c
    }

    /// Checks every section; messages name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let cfg = self;
        cfg.detect.validate()?;
        cfg.normalizer.validate()?;
        anyhow::ensure!(
            cfg.limits.max_line_bytes >= 1024,
            "limits.max_line_bytes: must be at least 1024"
        );
        anyhow::ensure!(
            cfg.limits.max_depth >= 6,
            "limits.max_depth: must be at least 6"
        );
        anyhow::ensure!(
            cfg.replay.max_buffered >= 1,
            "replay.max_buffered: must be at least 1"
        );
        cfg.http.addr()?;
        for entry in &cfg.agent.webhook_allow {
            // Entries are matched as URLs (scheme, host, port, path); a text prefix
            // such as `http://10.0.0.` would silently allow nothing.
            // (`http://10.0.0.5:` parses, with no port: as a prefix it meant any port.)
            let ok = !entry.ends_with(':')
                && url::Url::parse(entry)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            anyhow::ensure!(
                ok,
                "agent.webhook_allow: {entry:?} is not an http(s) URL with a host \
                 (entries are URLs: https://hooks.example/path)"
            );
        }
        anyhow::ensure!(
            (1..=cfg.limits.max_items).contains(&cfg.agent.max_inventory_items),
            "agent.max_inventory_items: 1 to limits.max_items ({}); workers refuse a \
             longer inventory",
            cfg.limits.max_items
        );
        cfg.archive.validate()?;
        cfg.alertmanager.validate()?;
        Ok(())
    }
}

fn overlay(doc: &mut toml::Table, path: &[String], value: &str) -> anyhow::Result<()> {
    let (Some(section), Some(key)) = (path.first(), path.get(1)) else {
        anyhow::bail!("expected HERD_SECTION__KEY");
    };
    if section == "kafka" {
        anyhow::ensure!(path.len() == 2, "kafka properties are not nested");
        let table = doc
            .entry("kafka")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = table else {
            anyhow::bail!("[kafka] is not a table");
        };
        t.insert(key.replace('_', "."), toml::Value::String(value.to_owned()));
        return Ok(());
    }
    let mut t = doc;
    for part in &path[..path.len() - 1] {
        let next = t
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(inner) = next else {
            anyhow::bail!("{part} is not a section");
        };
        t = inner;
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut v| v.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    t.insert(path[path.len() - 1].clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_keep_defaults_and_typos_fail() {
        let c: HerdConfig = toml::from_str("[detect]\nfalse_alerts_per_container_day = 0.5\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.detect.false_alerts_per_container_day, 0.5);
        assert_eq!(c.detect.min_peers, 3);
        assert!(toml::from_str::<HerdConfig>("[detect]\nfalse_alert_budget = 1\n").is_err());
    }

    #[test]
    fn environment_overlays_the_file_and_names_bad_fields() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let c = HerdConfig::load_with_env(
            None,
            env(&[
                ("HERD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9"),
                ("HERD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
                ("HERD_STREAM__GROUP_ID", "blue"),
                ("HERD_STREAM__TOPICS__ALERTS", "x.alerts"),
                ("HERD_DETECT__MIN_PEERS", "4"),
                ("HERD_CONFIG", "ignored.toml"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(c.kafka["bootstrap.servers"], "127.0.0.1:9");
        assert_eq!(c.kafka["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(c.stream.group_id, "blue");
        assert_eq!(c.stream.topics.alerts, "x.alerts");
        assert_eq!(c.detect.min_peers, 4);
        let e = HerdConfig::load_with_env(None, env(&[("HERD_STREAM__GROUP_IDD", "x")]))
            .err()
            .unwrap_or_else(|| panic!("a typo must fail"));
        assert!(format!("{e:#}").contains("group_idd"), "{e:#}");
    }

    #[test]
    fn secrets_are_redacted_for_printing_and_nothing_else_is() {
        let env: Vec<(String, String)> = [
            ("HERD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9"),
            ("HERD_KAFKA__SASL_USERNAME", "herd"),
            ("HERD_KAFKA__SASL_PASSWORD", "hunter2-kafka"),
            ("HERD_KAFKA__SSL_KEY_PASSWORD", "hunter2-key"),
            ("HERD_ARCHIVE__URL", "s3://bucket/prefix"),
            ("HERD_ARCHIVE__OPTIONS__SECRET_ACCESS_KEY", "hunter2-s3"),
            ("HERD_ARCHIVE__OPTIONS__REGION", "us-east-1"),
            (
                "HERD_ALERTMANAGER__URLS",
                "[\"https://am:hunter2-am@127.0.0.1:9093\"]",
            ),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let c = HerdConfig::load_with_env(None, env).unwrap_or_else(|e| panic!("{e:#}"));
        let printed = toml::to_string_pretty(&c.redacted()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        for kept in [
            "127.0.0.1:9",
            "sasl.username",
            "us-east-1",
            "s3://bucket/prefix",
        ] {
            assert!(printed.contains(kept), "{kept} lost:\n{printed}");
        }
        // The configuration in force keeps its secrets.
        assert_eq!(c.kafka["sasl.password"], "hunter2-kafka");
    }

    #[test]
    fn an_inventory_must_fit_the_workers_item_limit() {
        let load = |v: &str| {
            HerdConfig::load_with_env(
                None,
                [("HERD_AGENT__MAX_INVENTORY_ITEMS".to_owned(), v.to_owned())],
            )
        };
        assert!(load("512").is_ok());
        for bad in ["0", "513"] {
            let e = format!("{:#}", load(bad).err().unwrap_or_else(|| panic!("{bad}")));
            assert!(e.contains("agent.max_inventory_items"), "{e}");
        }
    }

    #[test]
    fn a_webhook_allow_entry_must_be_a_url() {
        let load = |v: &str| {
            HerdConfig::load_with_env(
                None,
                [("HERD_AGENT__WEBHOOK_ALLOW".to_owned(), v.to_owned())],
            )
        };
        assert!(load("[\"https://hooks.example/herd\"]").is_ok());
        for bad in [
            "[\"http://127.0.0.1:\"]",
            "[\"hooks.example\"]",
            "[\"file:///tmp\"]",
        ] {
            let e = format!("{:#}", load(bad).err().unwrap_or_else(|| panic!("{bad}")));
            assert!(e.contains("agent.webhook_allow"), "{e}");
        }
    }
}
