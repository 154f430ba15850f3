//! The agent envelope of a container already known, read by a byte scanner in one pass.
//!
//! Nearly every line a worker decodes is the agent's stats envelope of a container it
//! has decoded before. For those, serde_json's generic machinery (keys matched through
//! visitors, the container object kept raw and parsed again to compare it with the
//! identity held) costs twice what reading the bytes does. This scanner reads the
//! envelope as the general decoder does, to the same typed parts ([`StatsDoc`]), and
//! compares the container object with the identity held in place.
//!
//! It is a fast path, not a second decoder: it takes only the common, plain form and
//! answers `None` for everything else, and the general decoder then reads the line from
//! the start. So it never has to decide what an unusual line means, and it never
//! rejects one. It takes a line only when:
//! - it is an object of `host`, `container` and `stats`, each once, and nothing else;
//! - it is valid UTF-8, and no string in it holds an escape or a control character
//!   (each string is then its own bytes) or is longer than `max_string_bytes` (no
//!   truncation to mirror);
//! - every number herd reads is a plain non-negative integer of at most 18 digits or
//!   `null` (serde_json reads those as a `u64` made `f64`: exactly `v as f64`), and
//!   every number it skips is a JSON number;
//! - no key herd reads appears twice in one object (the general decoder has rules for
//!   that; here it is simply not the common form);
//! - the container is one the decoder's [`Identities`] holds, identical to it as
//!   `same_identity` judges, and within the depth limit;
//! - and the sample is one `stats_record` accepts.
//!
//! The record it returns is then the one the general decoder returns, field for field
//! (`tests::the_fast_path_agrees_with_the_general_decoder` and the property test beside
//! it hold it to that on mutated envelopes).

use std::borrow::Cow;
use std::sync::Arc;

use super::{
    BlkSum, Blkio, Count, CpuStats, CpuUsage, MemDetail, MemStats, NetSum, Pids, StatsDoc,
    StatsParts, stats_record,
};
use crate::decode::{Identities, Limits, Record, split_image_str};
use crate::model::ContainerRef;

/// Deepest nesting the scanner follows into a value it skips; deeper values go to the
/// general decoder (which skips them at any depth).
const MAX_SKIP_DEPTH: usize = 32;

/// The envelope's record when the line is in the plain form of a known container;
/// `None` to leave the line to the general decoder.
pub(in crate::decode) fn envelope(line: &[u8], l: &Limits, ids: &Identities) -> Option<Record> {
    // Every other format's line leaves at its first key, before anything is checked.
    let mut first = Scan::bytes(line, 0);
    let envelope_key = first.eat(b'{').is_some()
        && matches!(first.string(), Some(b"host" | b"container" | b"stats"));
    if !envelope_key || ids.is_empty() || l.max_depth == 0 {
        return None;
    }
    // Valid UTF-8 as a whole (as the general decoder requires first), so every string
    // between two quotes is text.
    let text = std::str::from_utf8(line).ok()?;
    let mut s = Scan {
        b: line,
        s: text,
        i: 0,
        max_str: l.max_string_bytes,
    };
    let mut host = None;
    let mut container = None;
    let mut known = None;
    let mut stats = None;
    s.object(|s, key| {
        match key {
            b"host" if host.is_none() => host = Some(s.text()?),
            b"container" if container.is_none() => {
                let c = Container::read(s)?;
                // A container not held (its first sight) is the general decoder's,
                // known before its stats are read.
                known = Some(ids.get(c.id?)?);
                container = Some(c);
            }
            b"stats" if stats.is_none() => stats = Some(stats_doc(s)?),
            _ => return None,
        }
        Some(())
    })?;
    s.ws();
    if s.i != line.len() {
        return None;
    }
    let (c, known, doc) = (container?, known?, stats?);
    // The general decoder's depth limit for the raw values it keeps (the container's).
    if c.depth > l.max_depth - 1 || !c.is(known, host, line) {
        return None;
    }
    stats_record(doc, l, Some(Arc::clone(known))).ok()
}

/// The envelope's `container`: its strings as they are in the line, and where its
/// labels object is (compared once the identity it must match is known).
#[derive(Default)]
struct Container<'a> {
    id: Option<&'a str>,
    name: Option<&'a str>,
    image: Option<&'a str>,
    digest: Option<&'a str>,
    labels: Option<(usize, usize)>,
    /// Its nesting depth (1, 2 with labels).
    depth: usize,
}

impl<'a> Container<'a> {
    fn read(s: &mut Scan<'a>) -> Option<Self> {
        let mut c = Container {
            depth: 1,
            ..Container::default()
        };
        s.object(|s, key| {
            let slot = match key {
                b"id" => &mut c.id,
                b"name" => &mut c.name,
                b"image" => &mut c.image,
                b"image_digest" => &mut c.digest,
                b"labels" if c.labels.is_none() => {
                    s.ws();
                    let start = s.i;
                    // Label values are strings: one level below the labels object.
                    s.object(|s, _| s.string().map(drop))?;
                    c.labels = Some((start, s.i));
                    c.depth = c.depth.max(2);
                    return Some(());
                }
                b"labels" => return None,
                _ => {
                    c.depth = c.depth.max(1 + s.skip(MAX_SKIP_DEPTH)?);
                    return Some(());
                }
            };
            if slot.is_some() {
                return None;
            }
            *slot = Some(s.text()?);
            Some(())
        })?;
        Some(c)
    }

    /// Whether this is `known` (and `host` its host) exactly as the general decoder's
    /// `same_identity` judges: the same name (less Docker's leading `/`), the image's
    /// repository and digest (the digest from `image_digest` when it is not empty, else
    /// from the image reference), and the same labels in the same (sorted) order.
    fn is(&self, known: &ContainerRef, host: Option<&str>, line: &'a [u8]) -> bool {
        if known.host.as_deref() != host
            || known.name.as_deref() != self.name.map(|n| n.trim_start_matches('/'))
        {
            return false;
        }
        let Some(image) = self.image else {
            return false;
        };
        let (repo, digest_in_image) = split_image_str(image);
        let digest = self.digest.filter(|d| !d.is_empty()).or(digest_in_image);
        if *known.image != *repo || known.image_digest.as_deref() != digest {
            return false;
        }
        let Some((start, end)) = self.labels else {
            return known.labels.is_empty();
        };
        // The labels object was read once already (well-formed, plain strings).
        let mut s = Scan::bytes(line.get(..end).unwrap_or_default(), start);
        let mut held = known.labels.iter();
        let same = s.object(|s, k| {
            let v = s.string()?;
            held.next()
                .is_some_and(|(hk, hv)| hk.as_bytes() == k && hv.as_bytes() == v)
                .then_some(())
        });
        same.is_some() && held.next().is_none()
    }
}

/// The envelope's `stats`, typed as the general decoder types it.
fn stats_doc<'a>(s: &mut Scan<'a>) -> Option<StatsDoc<'a>> {
    let mut doc = StatsDoc {
        read: None,
        id: None,
        name: None,
        parts: StatsParts::default(),
    };
    let p = &mut doc.parts;
    let (mut read, mut id, mut name) = (None, None, None);
    s.object(|s, key| {
        match key {
            b"read" => once(&mut read, s.text()?)?,
            b"id" => once(&mut id, s.text()?)?,
            b"name" => once(&mut name, s.text()?)?,
            b"cpu_stats" => once(&mut p.cpu, s.nullable(cpu_stats)?)?,
            b"precpu_stats" => once(&mut p.precpu, s.nullable(cpu_stats)?)?,
            b"memory_stats" => once(&mut p.mem, s.nullable(mem_stats)?)?,
            b"networks" => once(&mut p.nets, s.nullable(networks)?)?,
            b"blkio_stats" => once(&mut p.blkio, s.nullable(blkio)?)?,
            b"pids_stats" => once(&mut p.pids, s.nullable(pids)?)?,
            _ => {
                s.skip(MAX_SKIP_DEPTH)?;
            }
        }
        Some(())
    })?;
    doc.read = read.map(Cow::Borrowed);
    doc.id = id.map(Cow::Borrowed);
    doc.name = name.map(Cow::Borrowed);
    Some(doc)
}

/// Sets `slot` to `v` unless it was set: a repeated key is not the plain form.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

fn cpu_stats(s: &mut Scan<'_>) -> Option<CpuStats> {
    let (mut usage, mut system, mut online) = (None, None, None);
    s.object(|s, key| match key {
        b"cpu_usage" => once(&mut usage, s.nullable(cpu_usage)?),
        b"system_cpu_usage" => once(&mut system, s.count()?),
        b"online_cpus" => once(&mut online, s.count()?),
        _ => s.skip(MAX_SKIP_DEPTH).map(drop),
    })?;
    Some(CpuStats {
        cpu_usage: usage.flatten(),
        system_cpu_usage: system.flatten(),
        online_cpus: online.flatten(),
    })
}

fn cpu_usage(s: &mut Scan<'_>) -> Option<CpuUsage> {
    let (mut total, mut percpu) = (None, None);
    s.object(|s, key| match key {
        b"total_usage" => once(&mut total, s.count()?),
        b"percpu_usage" => once(
            &mut percpu,
            s.nullable(|s| {
                let mut n = 0;
                s.array(|s| {
                    n += 1;
                    s.skip(MAX_SKIP_DEPTH).map(drop)
                })?;
                Some(Count(n))
            })?,
        ),
        _ => s.skip(MAX_SKIP_DEPTH).map(drop),
    })?;
    Some(CpuUsage {
        total_usage: total.flatten(),
        percpu_usage: percpu.flatten(),
    })
}

fn mem_stats(s: &mut Scan<'_>) -> Option<MemStats> {
    let (mut usage, mut limit, mut stats) = (None, None, None);
    s.object(|s, key| match key {
        b"usage" => once(&mut usage, s.count()?),
        b"limit" => once(&mut limit, s.count()?),
        b"stats" => once(&mut stats, s.nullable(mem_detail)?),
        _ => s.skip(MAX_SKIP_DEPTH).map(drop),
    })?;
    Some(MemStats {
        usage: usage.flatten(),
        limit: limit.flatten(),
        stats: stats.flatten(),
    })
}

fn mem_detail(s: &mut Scan<'_>) -> Option<MemDetail> {
    let (mut total, mut inactive) = (None, None);
    s.object(|s, key| match key {
        b"total_inactive_file" => once(&mut total, s.count()?),
        b"inactive_file" => once(&mut inactive, s.count()?),
        _ => s.skip(MAX_SKIP_DEPTH).map(drop),
    })?;
    Some(MemDetail {
        total_inactive_file: total.flatten(),
        inactive_file: inactive.flatten(),
    })
}

/// The interfaces' counters summed in the order they come, by `NetSum::add` (an
/// interface named twice counts twice, as in the general decoder).
fn networks(s: &mut Scan<'_>) -> Option<NetSum> {
    let mut out = NetSum::EMPTY;
    s.object(|s, _| {
        let mut v = [None::<Option<f64>>; 4];
        s.object(|s, key| {
            let k = match key {
                b"rx_bytes" => 0,
                b"tx_bytes" => 1,
                b"rx_packets" => 2,
                b"tx_packets" => 3,
                _ => return s.skip(MAX_SKIP_DEPTH).map(drop),
            };
            once(&mut v[k], s.count()?)
        })?;
        out.add(v.map(Option::flatten));
        Some(())
    })?;
    Some(out)
}

fn blkio(s: &mut Scan<'_>) -> Option<Blkio> {
    let mut entries = None;
    s.object(|s, key| match key {
        b"io_service_bytes_recursive" => once(&mut entries, s.nullable(blk_entries)?),
        _ => s.skip(MAX_SKIP_DEPTH).map(drop),
    })?;
    Some(Blkio {
        io_service_bytes_recursive: entries.flatten(),
    })
}

/// Block IO entries summed in order by `BlkSum::add`; each must have its `op` (a
/// string) and its `value` (a number), as the typed entry requires.
fn blk_entries(s: &mut Scan<'_>) -> Option<BlkSum> {
    let mut out = BlkSum::EMPTY;
    s.array(|s| {
        let (mut op, mut value) = (None, None);
        s.object(|s, key| match key {
            b"op" => once(&mut op, s.string()?),
            b"value" => once(&mut value, s.uint()?),
            _ => s.skip(MAX_SKIP_DEPTH).map(drop),
        })?;
        out.add(op?, value?);
        Some(())
    })?;
    Some(out)
}

fn pids(s: &mut Scan<'_>) -> Option<Pids> {
    let mut current = None;
    s.object(|s, key| match key {
        b"current" => once(&mut current, s.count()?),
        _ => s.skip(MAX_SKIP_DEPTH).map(drop),
    })?;
    Some(Pids {
        current: current.flatten(),
    })
}

/// Where the first quote, backslash or control character of `b` is (the end of a
/// plain string, or what makes it not plain), eight bytes at a time: a byte's high bit
/// is set in `hits` where it is one of those (the lowest hit of each test is exact, so
/// the lowest of all is).
#[inline]
fn plain_string_end(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let x = u64::from_le_bytes(c.try_into().ok()?);
        let hits = (zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGHS;
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    let p = tail
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    Some(at + p)
}

/// How many ASCII digits `b` starts with.
fn digits(b: &[u8]) -> usize {
    b.iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len())
}

/// A cursor over the line. Every method answers `None` for anything outside the plain
/// form (see the module documentation), and the caller then gives the line up.
struct Scan<'a> {
    /// The line.
    b: &'a [u8],
    /// The same as text, for [`Self::text`] (empty in a scan that only compares bytes).
    s: &'a str,
    i: usize,
    /// Longest string taken.
    max_str: usize,
}

impl<'a> Scan<'a> {
    /// A scan of `b` from `i` that compares bytes only (no [`Self::text`], no limit).
    fn bytes(b: &'a [u8], i: usize) -> Self {
        Self {
            b,
            s: "",
            i,
            max_str: usize::MAX,
        }
    }

    /// Past JSON whitespace. Compact JSON (the agent's) has none: one comparison says
    /// so, and the loop is not entered.
    #[inline(always)]
    fn ws(&mut self) {
        if let Some(&c) = self.b.get(self.i)
            && c > b' '
        {
            return;
        }
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace (not consumed).
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// Consumes `c` (after whitespace).
    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string without escapes or control characters, at most `max_str` bytes: its
    /// bytes.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let (&b'"', body) = self.b.get(self.i..)?.split_first()? else {
            return None;
        };
        let n = plain_string_end(body)?;
        if body.get(n) != Some(&b'"') || n > self.max_str {
            return None;
        }
        self.i += n + 2;
        body.get(..n)
    }

    /// [`Self::string`] as text (the line is UTF-8, and a string's quotes are character
    /// boundaries).
    fn text(&mut self) -> Option<&'a str> {
        let n = self.string()?.len();
        let end = self.i.checked_sub(1)?;
        self.s.get(end.checked_sub(n)?..end)
    }

    /// An object: `f` reads the value of each key.
    fn object(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            // Compact JSON puts the colon right after the key. (The same test inside
            // `eat`, for every token, saved instructions but measured slower: 0.80×
            // against 0.94× paired, three runs.)
            if self.b.get(self.i) == Some(&b':') {
                self.i += 1;
            } else {
                self.eat(b':')?;
            }
            f(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `f` reads each element.
    fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `null` as `None`, anything else read by `f`.
    fn nullable<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        f(self).map(Some)
    }

    /// A count or gauge herd reads as an `Option<f64>`: `null`, or a plain integer.
    fn count(&mut self) -> Option<Option<f64>> {
        self.nullable(Self::uint)
    }

    /// A non-negative integer of 1 to 18 digits, without a leading zero, fraction or
    /// exponent, as the `f64` serde_json makes of it (`u64` rounded once).
    fn uint(&mut self) -> Option<f64> {
        self.ws();
        let rest = self.b.get(self.i..)?;
        let n = digits(rest);
        if n == 0 || n > 18 || (n > 1 && rest.first() == Some(&b'0')) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = rest.get(n) {
            return None;
        }
        // At most 18 digits: below 2^63, no overflow.
        let v = rest
            .get(..n)?
            .iter()
            .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'));
        self.i += n;
        Some(v as f64)
    }

    /// Exactly `lit`.
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.i.checked_add(lit.len())?;
        (self.b.get(self.i..end)? == lit).then(|| self.i = end)
    }

    /// A JSON number (its grammar checked, its value not needed).
    fn number(&mut self) -> Option<()> {
        let rest = self.b.get(self.i..)?;
        let mut i = usize::from(rest.first() == Some(&b'-'));
        let int = digits(rest.get(i..)?);
        if int == 0 || (int > 1 && rest.get(i) == Some(&b'0')) {
            return None;
        }
        i += int;
        if rest.get(i) == Some(&b'.') {
            i += 1;
            let frac = digits(rest.get(i..)?);
            if frac == 0 {
                return None;
            }
            i += frac;
        }
        if let Some(b'e' | b'E') = rest.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = rest.get(i) {
                i += 1;
            }
            let exp = digits(rest.get(i..)?);
            if exp == 0 {
                return None;
            }
            i += exp;
        }
        self.i += i;
        Some(())
    }

    /// Any value nested at most `depth` levels; its nesting depth (0 for a scalar).
    fn skip(&mut self, depth: usize) -> Option<usize> {
        match self.peek()? {
            b'{' => {
                let inner = depth.checked_sub(1)?;
                let mut deepest = 0;
                self.object(|s, _| {
                    deepest = deepest.max(s.skip(inner)?);
                    Some(())
                })?;
                Some(deepest + 1)
            }
            b'[' => {
                let inner = depth.checked_sub(1)?;
                let mut deepest = 0;
                self.array(|s| {
                    deepest = deepest.max(s.skip(inner)?);
                    Some(())
                })?;
                Some(deepest + 1)
            }
            b'"' => self.string().map(|_| 0),
            b't' => self.literal(b"true").map(|_| 0),
            b'f' => self.literal(b"false").map(|_| 0),
            b'n' => self.literal(b"null").map(|_| 0),
            b'-' | b'0'..=b'9' => self.number().map(|_| 0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::Decoder;

    const STATS: &str = r#"{"read":"2026-11-23T10:00:10.000000000Z","preread":"2026-11-23T10:00:09.000000000Z","pids_stats":{"current":12,"limit":4096},"blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"read","value":4096},{"major":8,"minor":0,"op":"Write","value":8192},{"major":8,"minor":0,"op":"sync","value":1}]},"num_procs":0,"storage_stats":{},"cpu_stats":{"cpu_usage":{"total_usage":2000000000,"percpu_usage":[1,2,3],"usage_in_kernelmode":1,"usage_in_usermode":1},"system_cpu_usage":40000000000,"online_cpus":0,"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},"precpu_stats":{"cpu_usage":{"total_usage":1500000000},"system_cpu_usage":36000000000,"online_cpus":4},"memory_stats":{"usage":104857600,"stats":{"active_anon":0,"anon":90000000,"file":4194304,"inactive_file":4194304,"total_inactive_file":1048576},"limit":536870912},"name":"/web-1","id":"8f2c","networks":{"eth0":{"rx_bytes":1000,"rx_packets":10,"rx_errors":0,"rx_dropped":0,"tx_bytes":2000,"tx_packets":20,"tx_errors":0,"tx_dropped":0},"eth1":{"rx_bytes":5,"tx_bytes":7,"rx_packets":1,"tx_packets":null}},"x":[true,false,null,-1.5e-3,"s",{"y":[]}]}"#;

    fn wrap(stats: &str) -> String {
        format!(
            r#"{{"host":"node-1","container":{{"id":"8f2c","name":"/web-1","image":"shop/web:1.4","image_digest":"sha256:aa","labels":{{"a":"1","b":"2"}}}},"stats":{stats}}}"#
        )
    }

    /// The decoder's identities after it has seen the plain envelope once.
    fn known() -> Identities {
        let mut ids = Identities::new(64);
        let first = Decoder::default().decode_with(wrap(STATS).as_bytes(), &mut ids);
        assert!(matches!(first, Ok(Record::Stats(_))), "{first:?}");
        assert_eq!(ids.len(), 1);
        ids
    }

    /// What the fast path answers for `line`, checked against the general decoder: when
    /// it takes a line, its record is the general decoder's, with the same identity.
    fn agree(line: &str, ids: &Identities) -> Option<Record> {
        let d = Decoder::default();
        let fast = envelope_of(line, d.limits(), ids);
        if let Some(r) = &fast {
            let general = d.decode_general(line.as_bytes(), &mut ids.clone());
            assert_eq!(Ok(r), general.as_ref(), "{line}");
            if let (Record::Stats(a), Ok(Record::Stats(b))) = (r, &general) {
                let same = match (a.container(), b.container()) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                assert!(same, "the identity held is shared: {line}");
            }
        }
        fast
    }

    fn envelope_of(line: &str, l: &Limits, ids: &Identities) -> Option<Record> {
        super::envelope(line.as_bytes(), l, ids)
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_decoder() {
        let ids = known();
        let plain = wrap(STATS);
        let taken = [
            plain.clone(),
            // Whitespace between every token, keys in another order.
            format!(
                " {{ \"stats\" : {STATS} ,\n\t\"container\" : {{ \"labels\" : {{ \"a\" : \"1\" , \"b\" : \"2\" }} , \"image\" : \"shop/web:1.4\" , \"id\" : \"8f2c\" , \"name\" : \"/web-1\" , \"image_digest\" : \"sha256:aa\" , \"extra\" : [ 1 , {{ }} ] }} , \"host\" : \"node-1\" }}\r\n"
            ),
            // Parts null, absent or empty.
            wrap(
                r#"{"read":"2026-11-23T10:00:10Z","cpu_stats":null,"memory_stats":{},"networks":null,"blkio_stats":{"io_service_bytes_recursive":null},"pids_stats":{"current":null}}"#,
            ),
            wrap(
                r#"{"read":"2026-11-23T10:00:10Z","networks":{},"blkio_stats":{"io_service_bytes_recursive":[]}}"#,
            ),
            // A stopped container's sample: filtered, as the general decoder filters it.
            wrap(r#"{"read":"0001-01-01T00:00:00Z","cpu_stats":{},"precpu_stats":{}}"#),
            // Text beyond ASCII (the line is valid UTF-8).
            plain.replace("\"x\":[", "\"x\":[\"caf\u{e9} \u{2713}\","),
            // The largest integers taken, and an unlimited memory limit.
            wrap(
                &STATS
                    .replace("536870912", "999999999999999999")
                    .replace(":12,", ":123456789012345678,"),
            ),
        ];
        for line in &taken {
            assert!(agree(line, &ids).is_some(), "not taken: {line}");
        }
        let left = [
            // First sight: no identity held.
            plain.replace("8f2c", "9e3d"),
            // A changed identity.
            plain.replace("node-1", "node-2"),
            plain.replace("\"b\":\"2\"", "\"b\":\"3\""),
            plain.replace("\"a\":\"1\",\"b\":\"2\"", "\"b\":\"2\",\"a\":\"1\""),
            plain.replace("\"a\":\"1\",", ""),
            plain.replace("/web-1\",\"image\"", "/web-2\",\"image\""),
            // Escapes and control characters.
            plain.replace("/web-1", "/web\\u002d1"),
            plain.replace("\"s\"", "\"\t\""),
            // Numbers herd reads that are not plain integers.
            plain.replace(":12,", ":12.0,"),
            plain.replace(":12,", ":-12,"),
            plain.replace(":12,", ":1e1,"),
            plain.replace(":12,", ":012,"),
            plain.replace(":12,", ":1234567890123456789,"),
            plain.replace(":12,", ":\"12\","),
            // Repeated keys, extra keys, a part of the wrong type.
            plain.replace("\"num_procs\"", "\"pids_stats\":{},\"num_procs\""),
            plain.replace("{\"host\"", "{\"host\":\"node-1\",\"host\""),
            plain.replace("{\"host\"", "{\"other\":1,\"host\""),
            plain.replace("\"pids_stats\":{", "\"pids_stats\":[{"),
            // A block IO entry without its value, or a null one.
            plain.replace(",\"op\":\"sync\",\"value\":1", ",\"op\":\"sync\""),
            plain.replace("\"value\":1}", "\"value\":null}"),
            // Not JSON, or more than one value.
            plain.replace("\"x\":[true", "\"x\":[tru"),
            plain.replace("-1.5e-3", "-1.5e"),
            plain.replace("-1.5e-3", "01"),
            format!("{plain} {{}}"),
            plain[..plain.len() - 1].to_owned(),
        ];
        for line in &left {
            assert!(agree(line, &ids).is_none(), "taken: {line}");
        }
    }

    #[test]
    fn limits_leave_lines_to_the_general_decoder() {
        let ids = known();
        let line = wrap(STATS);
        let l = Limits::default();
        assert!(envelope_of(&line, &l, &ids).is_some());
        // The general decoder checks the container's depth, and truncates long strings.
        for l in [
            Limits { max_depth: 2, ..l },
            Limits { max_depth: 0, ..l },
            Limits {
                max_string_bytes: 20,
                ..l
            },
        ] {
            assert!(envelope_of(&line, &l, &ids).is_none(), "{l:?}");
        }
        assert!(envelope_of(&line, &Limits { max_depth: 3, ..l }, &ids).is_some());
        // Skipped values nested deeper than the scanner follows.
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let deep = line.replace("\"x\":[", &format!("\"x\":[{deep},"));
        assert!(envelope_of(&deep, &l, &ids).is_none());
        let d = Decoder::default();
        assert!(d.decode_with(deep.as_bytes(), &mut ids.clone()).is_ok());
    }

    #[test]
    fn every_one_byte_change_is_read_as_the_general_decoder_reads_it() {
        let ids = known();
        let d = Decoder::default();
        let plain = wrap(STATS).into_bytes();
        let (mut taken, mut left) = (0, 0);
        for i in 0..plain.len() {
            for &b in b"{}[]\",:019-.eE lnt\\\x01\xc3" {
                let mut line = plain.clone();
                line[i] = b;
                match super::envelope(&line, d.limits(), &ids) {
                    Some(r) => {
                        let general = d.decode_general(&line, &mut ids.clone());
                        assert_eq!(
                            Ok(&r),
                            general.as_ref(),
                            "{}",
                            String::from_utf8_lossy(&line)
                        );
                        taken += 1;
                    }
                    None => left += 1,
                }
            }
        }
        // Digits changed in numbers and strings, characters in names: many changes keep
        // the plain form, and each of those agreed.
        assert!(taken > 1_000 && left > 1_000, "{taken} taken, {left} left");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Bytes changed, cut out or put in anywhere: whatever the fast path takes, the
        /// general decoder reads to the same record.
        #[test]
        fn a_mutated_envelope_is_read_as_the_general_decoder_reads_it(
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0u8..3, proptest::sample::select(
                    b"{}[]\",:0123456789-.eE \\nulltrfs\x01\xc3".to_vec()
                )),
                1..4,
            )
        ) {
            let ids = known();
            let mut line = wrap(STATS).into_bytes();
            for (at, op, b) in edits {
                let i = at.index(line.len());
                match op {
                    0 => line[i] = b,
                    1 => { line.remove(i); }
                    _ => line.insert(i, b),
                }
            }
            let d = Decoder::default();
            if let Some(r) = super::envelope(&line, d.limits(), &ids) {
                let general = d.decode_general(&line, &mut ids.clone());
                prop_assert_eq!(Ok(&r), general.as_ref());
            }
        }
    }
}
