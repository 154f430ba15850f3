//! Alert sinks: where alert lines go.

pub mod alertmanager;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use herd_detect::Alert;

use crate::{Error, Result};

/// A destination for alert lines.
pub trait AlertSink {
    /// Sends one alert.
    fn send(&mut self, alert: &Alert) -> Result<()>;
    /// Makes everything sent so far durable (or at least handed to the OS).
    fn flush(&mut self) -> Result<()>;
}

/// JSON lines to any writer (stdout in `herd replay`). Buffered; flushed by `flush`.
#[derive(Debug)]
pub struct WriterSink<W: Write> {
    out: BufWriter<W>,
    name: &'static str,
}

impl<W: Write> WriterSink<W> {
    /// Wraps a writer; `name` identifies it in errors.
    pub fn new(w: W, name: &'static str) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, w),
            name,
        }
    }
}

impl<W: Write> AlertSink for WriterSink<W> {
    fn send(&mut self, alert: &Alert) -> Result<()> {
        serde_json::to_writer(&mut self.out, alert)?;
        self.out.write_all(b"\n").map_err(|source| Error::Io {
            sink: self.name,
            source,
        })
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| Error::Io {
            sink: self.name,
            source,
        })
    }
}

/// JSON lines appended to a file.
#[derive(Debug)]
pub struct FileSink(WriterSink<File>);

impl FileSink {
    /// Opens (creating or appending to) `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Io {
                sink: "file",
                source,
            })?;
        Ok(Self(WriterSink::new(f, "file")))
    }
}

impl AlertSink for FileSink {
    fn send(&mut self, alert: &Alert) -> Result<()> {
        self.0.send(alert)
    }

    fn flush(&mut self) -> Result<()> {
        self.0.flush()?;
        self.0
            .out
            .get_ref()
            .sync_data()
            .map_err(|source| Error::Io {
                sink: "file",
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_detect::{Detector, Severity};

    use super::*;

    #[test]
    fn writes_one_json_object_per_line() {
        let a = Alert {
            incident_id: "inc-1".into(),
            ts: "2026-11-23T10:00:00.000Z".into(),
            seq: 0,
            container_id: "abc".into(),
            container_name: "web\n1".into(),
            group: "g".into(),
            image: "i".into(),
            host: None,
            severity: Severity::High,
            score: 9.0,
            threshold: 6.0,
            detectors: vec![Detector::Peer],
            explanation: "x".into(),
            features: vec![],
            novel: vec![],
            events: vec![],
            attack: vec![],
            labels: BTreeMap::new(),
            evidence: None,
        };
        let mut buf = Vec::new();
        {
            let mut s = WriterSink::new(&mut buf, "test");
            s.send(&a).unwrap_or_else(|e| panic!("{e}"));
            s.send(&a).unwrap_or_else(|e| panic!("{e}"));
            s.flush().unwrap_or_else(|e| panic!("{e}"));
        }
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: Alert = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, a);
    }
}
