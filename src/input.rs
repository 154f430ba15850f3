//! Input lines: a reader that bounds line length without buffering an oversized line,
//! and the event-time ordering of several inputs (a k-way merge by each input's next
//! record, then a bounded reorder buffer for disorder within an input).
//!
//! The reorder buffer releases a record once the stream's watermark has passed it. The
//! watermark is the *median* time of the last records read, not the newest: a lone
//! record from a wrong or forged clock far in the future would otherwise be scored
//! ahead of everything else and age every baseline at once. Such a record waits in the
//! buffer; if the stream never catches up with it, it is rejected at the end.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead};

use herd_detect::Alert;
use herd_ingest::Record;

use crate::config::ReplayConfig;
use crate::pipeline::Pipeline;

/// One line, or the length of a line that was too long to keep.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line within the limit, without its line terminator.
    Ok(&'a [u8]),
    /// A line longer than the limit; its bytes were skipped.
    TooLong(usize),
}

/// Reads lines of at most `max` bytes; longer ones are skipped in constant memory.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
    bytes: u64,
}

impl<R: BufRead> LineReader<R> {
    /// Wraps a buffered reader.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            buf: Vec::with_capacity(8192),
            bytes: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The next line, or `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let mut total = 0usize;
        let mut too_long = false;
        let mut saw_any = false;
        loop {
            let avail = self.inner.fill_buf()?;
            if avail.is_empty() {
                break;
            }
            saw_any = true;
            let (chunk, used, done) = match avail.iter().position(|b| *b == b'\n') {
                Some(i) => (&avail[..i], i + 1, true),
                None => (avail, avail.len(), false),
            };
            total += chunk.len();
            if !too_long {
                if self.buf.len() + chunk.len() > self.max {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            self.inner.consume(used);
            self.bytes += used as u64;
            if done {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        if too_long {
            return Ok(Some(Line::TooLong(total)));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some(Line::Ok(&self.buf)))
    }
}

/// A named input.
pub struct Source {
    /// Name for reports (`-` for stdin).
    pub name: String,
    /// The reader.
    pub reader: LineReader<Box<dyn BufRead>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

/// A rejected line, for the report.
#[derive(Debug, Clone)]
pub struct RejectedLine {
    /// Input name.
    pub source: String,
    /// 1-based line number.
    pub line: u64,
    /// Reason and detail.
    pub what: String,
}

struct Entry {
    ts: i64,
    seq: u64,
    rec: Record,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.ts, self.seq) == (o.ts, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.ts, self.seq).cmp(&(o.ts, o.seq))
    }
}

/// Times of the last records read; their median is the watermark.
struct Watermark {
    ring: Vec<i64>,
    next: usize,
}

impl Watermark {
    /// An odd number, so the median is a record's time.
    const WINDOW: usize = 255;

    fn new() -> Self {
        Self {
            ring: Vec::with_capacity(Self::WINDOW),
            next: 0,
        }
    }

    fn push(&mut self, ts: i64) {
        if self.ring.len() < Self::WINDOW {
            self.ring.push(ts);
        } else {
            self.ring[self.next] = ts;
            self.next = (self.next + 1) % Self::WINDOW;
        }
    }

    fn median(&self, scratch: &mut Vec<i64>) -> i64 {
        if self.ring.is_empty() {
            return i64::MIN;
        }
        scratch.clear();
        scratch.extend_from_slice(&self.ring);
        let mid = scratch.len() / 2;
        *scratch.select_nth_unstable(mid).1
    }
}

struct Head {
    source: Source,
    next: Option<(i64, Record)>,
    line_no: u64,
    done: bool,
}

/// Everything a run reports besides its counters.
#[derive(Debug, Default)]
pub struct RunReport {
    /// The first rejected lines (at most 20), for the report.
    pub examples: Vec<RejectedLine>,
    /// Records processed after a newer one (beyond the reorder window).
    pub out_of_order: u64,
}

const MAX_EXAMPLES: usize = 20;

/// Runs every source through the pipeline in event-time order. `on_scored` receives,
/// after each record the pipeline accepted, its alerts (often none) and the pipeline
/// (its observations, for the archive). Formerly: `on_alerts` received the
/// alerts of each processed record; `on_progress` the total bytes read, now and then.
pub fn run_ordered(
    sources: Vec<Source>,
    pipeline: &mut Pipeline,
    cfg: &ReplayConfig,
    mut on_scored: impl FnMut(&[Alert], &Pipeline) -> anyhow::Result<()>,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<RunReport> {
    let mut heads: Vec<Head> = sources
        .into_iter()
        .map(|source| Head {
            source,
            next: None,
            line_no: 0,
            done: false,
        })
        .collect();
    let mut report = RunReport::default();
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut watermark = Watermark::new();
    let mut scratch = Vec::with_capacity(Watermark::WINDOW);
    let mut wm = i64::MIN;
    let mut last_processed = i64::MIN;
    let mut alerts = Vec::new();
    let mut since_progress = 0u32;

    let mut process = |e: Entry,
                       pipeline: &mut Pipeline,
                       report: &mut RunReport,
                       last: &mut i64|
     -> anyhow::Result<()> {
        if e.ts < *last {
            report.out_of_order += 1;
        }
        *last = (*last).max(e.ts);
        alerts.clear();
        // Normalisation rejects (a raw sample of an unknown container) are counted by
        // the pipeline; the stream goes on.
        if pipeline.process(e.rec, &mut alerts).is_ok() {
            on_scored(&alerts, pipeline)?;
        }
        Ok(())
    };

    loop {
        // Refill every head that is empty.
        for h in heads.iter_mut().filter(|h| h.next.is_none() && !h.done) {
            loop {
                let line = h.source.reader.next_line()?;
                let Some(line) = line else {
                    h.done = true;
                    break;
                };
                h.line_no += 1;
                let decoded = match line {
                    Line::TooLong(n) => {
                        let rej = herd_ingest::Reject {
                            reason: herd_ingest::RejectReason::TooLarge,
                            detail: format!("{n} bytes"),
                        };
                        pipeline.counters.lines += 1;
                        pipeline.counters.reject(&rej);
                        Err(rej)
                    }
                    Line::Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
                    Line::Ok(bytes) => pipeline.decode(bytes),
                };
                match decoded {
                    Ok(Record::Filtered { .. }) => continue,
                    Ok(rec) => {
                        let ts = rec.ts_ms().unwrap_or(i64::MIN);
                        h.next = Some((ts, rec));
                        break;
                    }
                    Err(rej) => {
                        if report.examples.len() < MAX_EXAMPLES {
                            report.examples.push(RejectedLine {
                                source: h.source.name.clone(),
                                line: h.line_no,
                                what: rej.to_string(),
                            });
                        }
                    }
                }
            }
        }
        // The head with the smallest time goes into the reorder buffer.
        let next = heads
            .iter_mut()
            .filter(|h| h.next.is_some())
            .min_by_key(|h| h.next.as_ref().map(|(ts, _)| *ts));
        let Some(h) = next else {
            break;
        };
        let Some((ts, rec)) = h.next.take() else {
            break;
        };
        watermark.push(ts);
        heap.push(Reverse(Entry { ts, seq, rec }));
        seq += 1;
        // The watermark need only be roughly current: recompute it every 32 records.
        if seq % 32 == 1 {
            wm = watermark.median(&mut scratch);
        }
        while let Some(Reverse(top)) = heap.peek() {
            let ripe = top.ts <= wm.saturating_sub(cfg.max_lateness_ms);
            if !ripe && heap.len() <= cfg.max_buffered {
                break;
            }
            if let Some(Reverse(e)) = heap.pop() {
                process(e, pipeline, &mut report, &mut last_processed)?;
            }
        }
        since_progress += 1;
        if since_progress >= 16_384 {
            since_progress = 0;
            on_progress(heads.iter().map(|h| h.source.reader.bytes_read()).sum());
        }
    }
    // The end: what is left is in order; only records still far ahead of the stream
    // (beyond the newest time the stream itself reached) are refused.
    let horizon = last_processed
        .max(watermark.median(&mut scratch))
        .saturating_add(cfg.max_future_skew_ms);
    while let Some(Reverse(e)) = heap.pop() {
        if e.ts > horizon && last_processed != i64::MIN {
            let rej = herd_ingest::Reject {
                reason: herd_ingest::RejectReason::InvalidTimestamp,
                detail: format!(
                    "{} is more than {} s ahead of the stream",
                    herd_ingest::time::format_ms(e.ts),
                    cfg.max_future_skew_ms / 1000
                ),
            };
            pipeline.counters.reject(&rej);
            if report.examples.len() < MAX_EXAMPLES {
                report.examples.push(RejectedLine {
                    source: "(reorder buffer)".into(),
                    line: 0,
                    what: rej.to_string(),
                });
            }
            continue;
        }
        process(e, pipeline, &mut report, &mut last_processed)?;
    }
    on_progress(heads.iter().map(|h| h.source.reader.bytes_read()).sum());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_skipped_in_constant_memory() {
        let data = format!("ok\n{}\nnext\r\nlast", "x".repeat(100_000));
        let mut r = LineReader::new(io::BufReader::with_capacity(64, data.as_bytes()), 1000);
        assert_eq!(r.next_line().ok().flatten(), Some(Line::Ok(b"ok")));
        assert_eq!(r.next_line().ok().flatten(), Some(Line::TooLong(100_000)));
        assert!(r.buf.capacity() < 20_000);
        assert_eq!(r.next_line().ok().flatten(), Some(Line::Ok(b"next")));
        assert_eq!(r.next_line().ok().flatten(), Some(Line::Ok(b"last")));
        assert_eq!(r.next_line().ok().flatten(), None);
    }
}
