//! Calibration: from a false-alert budget to a surprise threshold.
//!
//! Every scorer reports a surprise `s = -log10(p)`, where `p` is the calibrated
//! probability (from the baseline's tail model) of a value at least that extreme. If a
//! container is tested `n` times a day and the budget is `b` chance alerts a day, then
//! alerting when `p < b / n` spends at most the budget: the threshold is
//! `s* = log10(n / b)`. `n` follows each container's own sampling rate and number of
//! features, so a container sampled every second does not spend ten times the budget
//! of one sampled every ten seconds, and no per-metric constant is needed.

use serde::{Deserialize, Serialize};

/// Milliseconds in a day.
pub const DAY_MS: f64 = 86_400_000.0;

/// A container's test-rate estimate: tests per millisecond, smoothed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct TestRate {
    first_ms: i64,
    last_ms: i64,
    tests: f64,
}

/// Tests per day assumed before a rate is known: ten features every ten seconds, the
/// agent's defaults.
const DEFAULT_TESTS_PER_DAY: f64 = 86_400.0;
/// A rate is trusted once it spans this long.
const MIN_SPAN_MS: i64 = 5 * 60_000;

impl TestRate {
    /// A rate that has seen nothing yet.
    pub fn new(now_ms: i64) -> Self {
        Self {
            first_ms: now_ms,
            last_ms: now_ms,
            tests: 0.0,
        }
    }

    /// Records `n` tests at `now_ms`.
    pub fn record(&mut self, n: f64, now_ms: i64) {
        self.tests += n;
        self.last_ms = self.last_ms.max(now_ms);
        // Keep the estimate recent: halve the history once it spans a day.
        if self.last_ms - self.first_ms > 86_400_000 {
            self.first_ms += (self.last_ms - self.first_ms) / 2;
            self.tests /= 2.0;
        }
    }

    /// Tests per day.
    pub fn per_day(&self) -> f64 {
        let span = self.last_ms - self.first_ms;
        if span < MIN_SPAN_MS || self.tests <= 0.0 {
            return DEFAULT_TESTS_PER_DAY;
        }
        self.tests / span as f64 * DAY_MS
    }
}

/// The surprise threshold for a container tested `tests_per_day` times a day under a
/// budget of `budget_per_day` chance alerts.
pub fn threshold(tests_per_day: f64, budget_per_day: f64) -> f64 {
    (tests_per_day.max(1.0) / budget_per_day).log10().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_follows_rate_and_budget() {
        assert!((threshold(86_400.0, 0.05) - 6.2375).abs() < 1e-3);
        assert!(threshold(864_000.0, 0.05) > threshold(86_400.0, 0.05));
        assert!(threshold(86_400.0, 1.0) < threshold(86_400.0, 0.05));
    }

    #[test]
    fn rate_is_measured_after_a_few_minutes() {
        let mut r = TestRate::new(0);
        assert_eq!(r.per_day(), DEFAULT_TESTS_PER_DAY);
        for i in 1..=60 {
            r.record(2.0, i * 10_000);
        }
        // 2 tests every 10 s = 17,280 a day.
        assert!((r.per_day() - 17_280.0).abs() < 400.0, "{}", r.per_day());
    }
}
