//! Versioned snapshots of baselines: what a worker checkpoints to `herd.baselines` and
//! what `herd retrain` publishes.
//!
//! Format 1 is JSON: `{"format":1,"group":{…GroupBaseline…}}`. A reader refuses a format
//! it does not know rather than guess.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Error, GroupBaseline, Result};

/// The snapshot format this build writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Serialize)]
struct Out<'a> {
    format: u32,
    group: &'a GroupBaseline,
}

#[derive(Deserialize)]
struct In<'a> {
    format: u32,
    #[serde(borrow)]
    group: &'a RawValue,
}

/// Encodes a group baseline.
pub fn encode(g: &GroupBaseline) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&Out {
        format: FORMAT,
        group: g,
    })?)
}

/// Decodes a group baseline written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<GroupBaseline> {
    let i: In<'_> = serde_json::from_slice(bytes)?;
    if i.format != FORMAT {
        return Err(Error::UnsupportedFormat {
            found: i.format,
            supported: FORMAT,
        });
    }
    Ok(serde_json::from_str(i.group.get())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BaselineConfig, ItemKind};

    #[test]
    fn round_trip_and_version_check() {
        let cfg = BaselineConfig::default();
        let mut g = GroupBaseline::new("shop/web@sha256:aa", "shop/web", 0);
        if let Some(f) = g.feature_mut("cpu_cores", &cfg) {
            for i in 0..100 {
                f.values
                    .insert(f64::from(i) / 100.0, i64::from(i) * 1000, 1.0);
            }
        }
        g.items.observe(ItemKind::Executable, "/bin/sh", 7, 5, 10);
        let bytes = encode(&g).unwrap_or_default();
        let mut back = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.feature("cpu_cores"), g.feature("cpu_cores"));
        assert!(back.feature_mut("cpu_cores", &cfg).is_some());
        assert_eq!(back.items, g.items);
        let future = String::from_utf8_lossy(&bytes).replacen("\"format\":1", "\"format\":99", 1);
        assert!(matches!(
            decode(future.as_bytes()),
            Err(Error::UnsupportedFormat { found: 99, .. })
        ));
    }
}
