//! A `herd agent` process for the end-to-end tests, and the waiting they do on the
//! broker's topics.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::broker::{Broker, Names, consume, herd};

/// A `herd agent` process; killed when dropped.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    pub fn start(names: &Names, broker: &Broker, log: PathBuf, env: &[(&str, String)]) -> Agent {
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let child = herd()
            .arg("agent")
            .envs(names.env(broker))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "herd=info,herd_respond=info,herd_ingest=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting herd agent: {e}"));
        Agent { child, log }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every second until it returns `Some`, or fails with `what` and the logs.
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    logs: &[&Path],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    wait_for_seen(what, within, logs, |_| f())
}

/// [`wait_for`], where `f` also writes what it saw into its argument (overwritten at each
/// poll): the failure prints the last, so a timeout says how far the wait got.
pub fn wait_for_seen<T>(
    what: &str,
    within: Duration,
    logs: &[&Path],
    mut f: impl FnMut(&mut String) -> Option<T>,
) -> T {
    let started = Instant::now();
    let deadline = started + within;
    let mut seen = String::new();
    loop {
        seen.clear();
        if let Some(v) = f(&mut seen) {
            // Printed with the test's output (on failure, or with --nocapture): how
            // close each wait came to its limit.
            eprintln!(
                "waited {:.1} s of {} s for {what}",
                started.elapsed().as_secs_f64(),
                within.as_secs()
            );
            return v;
        }
        if Instant::now() > deadline {
            let mut text = String::new();
            if !seen.is_empty() {
                text.push_str("\n--- what the last poll saw\n");
                text.push_str(&seen);
                text.push('\n');
            }
            for l in logs {
                let t = std::fs::read_to_string(l).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(40).collect();
                text.push_str(&format!("\n--- {} (tail)\n", l.display()));
                for line in tail.into_iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            panic!("timed out waiting for {what}{text}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The payloads of one of the test's topics (`alerts`, `actions`, `responses`, …).
pub fn payloads(names: &Names, broker: &Broker, topic: &str) -> Vec<Value> {
    consume(names, broker, &names.topic(topic))
        .into_iter()
        .filter_map(|r| r.get("payload").cloned())
        .collect()
}
