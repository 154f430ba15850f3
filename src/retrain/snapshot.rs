//! The retrained-baseline snapshot lives in `herd-baseline` (the workers adopt it
//! there, without I/O); re-exported here for `herd retrain`.

pub use herd_baseline::retrained::{FORMAT, FeatureProfile, Quantiles, Retrained, Seasonal};
