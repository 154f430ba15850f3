//! Log output that input cannot forge.
//!
//! Container names, labels, process names and much of what an error message quotes are
//! chosen by whoever owns the container. `tracing`'s formatter escapes ANSI escape
//! sequences in field values, but not line breaks: a name holding
//! `"\n2026-12-01T00:00:00Z  INFO herd: all clear"` would print a second, forged line.
//! [`Stderr`] writes each event as exactly one line: a line break or another control
//! character inside the event is written as an escape (`\n`, `\r`, `\x00`, `\x1b`);
//! only the event's own final line break, and tabs, pass through. On a terminal, where
//! the formatter colours its output, ESC is left to it (it escapes ESC in values).

use std::io::Write;

/// A `tracing_subscriber` writer to stderr that keeps every event on one line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr {
    /// Let ESC through (the formatter's colours, on a terminal).
    pub colours: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(Vec::with_capacity(256), self.colours)
    }
}

/// Collects one formatted event, and writes it escaped when dropped (the formatter
/// makes one writer per event).
#[derive(Debug)]
pub struct EventWriter(Vec<u8>, bool);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = one_line(&self.0, self.1);
        // One write per event, so lines of concurrent threads do not interleave; a
        // closed stderr has nowhere to report to.
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

/// `event` with every control character but tab, a final line break and (with
/// `colours`) ESC escaped.
pub fn one_line(event: &[u8], colours: bool) -> Vec<u8> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if colours => out.push(b),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\x{b:02x}");
            }
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_break_in_an_event_cannot_start_a_line_of_its_own() {
        let forged = b"WARN herd: publish failed name=web\n2026-12-01T00:00:00Z  INFO herd: all clear\r\x00\x07\n";
        let out = one_line(forged, false);
        assert_eq!(
            out,
            b"WARN herd: publish failed name=web\\n2026-12-01T00:00:00Z  INFO herd: all clear\\r\\x00\\x07\n"
        );
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let coloured = b"tab\tand \x1b[2mcolour\x1b[0m\n";
        assert_eq!(one_line(coloured, true), coloured);
        assert_eq!(
            one_line(coloured, false),
            b"tab\tand \\x1b[2mcolour\\x1b[0m\n"
        );
    }

    #[test]
    fn hostile_field_values_through_the_real_formatter_stay_on_their_line() {
        use std::sync::{Arc, Mutex};
        /// Captures what [`one_line`] would write.
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        struct W(Capture, Vec<u8>);
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.1.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl Drop for W {
            fn drop(&mut self) {
                if let Ok(mut v) = self.0.0.lock() {
                    v.extend_from_slice(&one_line(&self.1, false));
                }
            }
        }
        impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
            type Writer = W;
            fn make_writer(&'a self) -> W {
                W(self.clone(), Vec::new())
            }
        }
        let cap = Capture::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(cap.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let name = "web-1\n2026-12-01T00:00:00.000000Z  INFO herd: incident closed\u{1b}[2J";
            tracing::warn!(container = %name, detail = ?name, "capture failed: {name}");
            tracing::info!("next");
        });
        let text = String::from_utf8(cap.0.lock().map(|v| v.clone()).unwrap_or_default())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("capture failed"), "{text}");
        assert!(lines[1].ends_with("next"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
