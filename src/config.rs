//! herd's configuration file (TOML). Every section has defaults; unknown keys are
//! errors, so a typo cannot silently fall back to a default.

use std::path::Path;

use anyhow::Context;
use herd_detect::DetectConfig;
use herd_ingest::{Limits, NormalizerConfig};
use serde::{Deserialize, Serialize};

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
}

impl HerdConfig {
    /// Reads a TOML file, or the defaults when `path` is `None`, and validates it.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let cfg: HerdConfig = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading configuration {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing configuration {}", p.display()))?
            }
            None => HerdConfig::default(),
        };
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
        Ok(cfg)
    }
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
}
