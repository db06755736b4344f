//! Native histograms in the window, compactly: chunks of up to [`MAX`] histograms of one
//! series, each histogram written as
//!
//! - its timestamp, as a zigzag varint delta from the one before it in the chunk;
//! - a flag byte: the counter-reset hint, and whether its layout (schema, zero threshold,
//!   spans, custom bounds) differs from the one before it, in which case the layout follows;
//! - its values (count, sum, zero count, then every bucket count) against the value at the
//!   same place before it (0 when the layout changed): a whole number that moved by a whole
//!   number as that difference (a zigzag varint, 1 byte for up to ±63), anything else as the
//!   XOR of the two floats written bit-reversed (a float that changes a little has its changed
//!   bits at the top, so reversed they make a small varint).
//!
//! A histogram of a counter whose layout holds takes about a byte per bucket; the layout is
//! written once per chunk and whenever it changes.

use vigil_wire::histogram::{FloatHistogram, HSample, ResetHint, Span};

/// Histograms per chunk.
pub(super) const MAX: u16 = 120;

/// One chunk: its time range, how many histograms, their encoding.
#[derive(Debug, Clone)]
pub(super) struct HChunk {
    pub(super) first_t: i64,
    pub(super) last_t: i64,
    pub(super) n: u16,
    bytes: Vec<u8>,
}

/// The histograms of one series: closed chunks then the one appended to.
#[derive(Debug, Clone, Default)]
pub(super) struct Hists {
    pub(super) chunks: Vec<HChunk>,
    /// The newest histogram (what the next one is encoded against, and compared with for
    /// duplicates).
    pub(super) last: Option<HSample>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn same_layout(a: &FloatHistogram, b: &FloatHistogram) -> bool {
    a.schema == b.schema
        && a.zero_threshold.to_bits() == b.zero_threshold.to_bits()
        && a.positive_spans == b.positive_spans
        && a.negative_spans == b.negative_spans
        && a.custom_values == b.custom_values
}

/// Count, sum, zero count, then the buckets: the values XORed against the previous ones.
fn values(h: &FloatHistogram) -> impl Iterator<Item = f64> + '_ {
    [h.count, h.sum, h.zero_count]
        .into_iter()
        .chain(h.positive_buckets.iter().copied())
        .chain(h.negative_buckets.iter().copied())
}

/// Whole numbers a float holds exactly.
const EXACT: f64 = (1u64 << 52) as f64;

fn whole(v: f64) -> bool {
    v == v.trunc() && v.abs() < EXACT
}

/// `v` against `old`: `zigzag(v - old) + 1` when both are whole, else 0 then the XOR reversed.
fn put_value(out: &mut Vec<u8>, old: f64, v: f64) {
    // -0 is whole but would come back as 0.
    if whole(old) && whole(v) && !(v == 0.0 && v.is_sign_negative()) {
        put_varint(out, zigzag(v as i64 - old as i64) + 1);
    } else {
        put_varint(out, 0);
        put_varint(out, (v.to_bits() ^ old.to_bits()).reverse_bits());
    }
}

fn get_value(b: &[u8], pos: &mut usize, old: f64) -> Option<f64> {
    match get_varint(b, pos)? {
        0 => {
            let x = get_varint(b, pos)?.reverse_bits();
            Some(f64::from_bits(x ^ old.to_bits()))
        }
        d => Some((old as i64).checked_add(unzigzag(d - 1))? as f64),
    }
}

fn hint_code(h: ResetHint) -> u8 {
    match h {
        ResetHint::Unknown => 0,
        ResetHint::Reset => 1,
        ResetHint::NotReset => 2,
        ResetHint::Gauge => 3,
    }
}

fn put_spans(out: &mut Vec<u8>, spans: &[Span]) {
    put_varint(out, spans.len() as u64);
    for s in spans {
        put_varint(out, zigzag(i64::from(s.offset)));
        put_varint(out, u64::from(s.length));
    }
}

fn get_spans(b: &[u8], pos: &mut usize) -> Option<Vec<Span>> {
    let n = get_varint(b, pos)? as usize;
    if n > b.len() {
        return None;
    }
    (0..n)
        .map(|_| {
            Some(Span {
                offset: i32::try_from(unzigzag(get_varint(b, pos)?)).ok()?,
                length: u32::try_from(get_varint(b, pos)?).ok()?,
            })
        })
        .collect()
}

impl HChunk {
    fn new(t: i64) -> HChunk {
        HChunk {
            first_t: t,
            last_t: t,
            n: 0,
            bytes: Vec::new(),
        }
    }

    /// Appends `h` at `t`; `prev` is the chunk's previous histogram (`None` for its first).
    fn push(&mut self, t: i64, h: &FloatHistogram, prev: Option<(i64, &FloatHistogram)>) {
        let out = &mut self.bytes;
        put_varint(out, zigzag(t.wrapping_sub(prev.map_or(0, |p| p.0))));
        let same = prev.is_some_and(|(_, p)| same_layout(p, h));
        out.push(hint_code(h.hint) | if same { 0 } else { 4 });
        if !same {
            put_varint(out, zigzag(i64::from(h.schema)));
            out.extend_from_slice(&h.zero_threshold.to_bits().to_le_bytes());
            put_spans(out, &h.positive_spans);
            put_spans(out, &h.negative_spans);
            put_varint(out, h.custom_values.len() as u64);
            for v in &h.custom_values {
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        let before: Vec<u64> = match prev {
            Some((_, p)) if same => values(p).map(f64::to_bits).collect(),
            _ => Vec::new(),
        };
        for (i, v) in values(h).enumerate() {
            let old = f64::from_bits(before.get(i).copied().unwrap_or(0));
            put_value(out, old, v);
        }
        self.last_t = t;
        self.n += 1;
    }

    /// The chunk's histograms, oldest first (`None` if its bytes are damaged).
    pub(super) fn decode(&self) -> Option<Vec<HSample>> {
        let b = &self.bytes;
        let mut pos = 0;
        let mut out: Vec<HSample> = Vec::with_capacity(usize::from(self.n));
        let mut prev: Option<(i64, FloatHistogram)> = None;
        for _ in 0..self.n {
            let t = prev
                .as_ref()
                .map_or(0, |p| p.0)
                .wrapping_add(unzigzag(get_varint(b, &mut pos)?));
            let flags = *b.get(pos)?;
            pos += 1;
            let mut h = match (&prev, flags & 4 == 0) {
                (Some((_, p)), true) => p.clone(),
                _ => {
                    let schema = i32::try_from(unzigzag(get_varint(b, &mut pos)?)).ok()?;
                    let zt =
                        f64::from_bits(u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().ok()?));
                    pos += 8;
                    let positive_spans = get_spans(b, &mut pos)?;
                    let negative_spans = get_spans(b, &mut pos)?;
                    let ncv = get_varint(b, &mut pos)? as usize;
                    let mut custom_values = Vec::with_capacity(ncv.min(b.len()));
                    for _ in 0..ncv {
                        custom_values.push(f64::from_bits(u64::from_le_bytes(
                            b.get(pos..pos + 8)?.try_into().ok()?,
                        )));
                        pos += 8;
                    }
                    let len = |s: &[Span]| s.iter().map(|s| s.length as usize).sum::<usize>();
                    let (np, nn) = (len(&positive_spans), len(&negative_spans));
                    if np + nn > b.len() {
                        return None;
                    }
                    FloatHistogram {
                        schema,
                        zero_threshold: zt,
                        positive_buckets: vec![0.0; np],
                        negative_buckets: vec![0.0; nn],
                        positive_spans,
                        negative_spans,
                        custom_values,
                        ..Default::default()
                    }
                }
            };
            let same = prev.is_some() && flags & 4 == 0;
            h.hint = match flags & 3 {
                1 => ResetHint::Reset,
                2 => ResetHint::NotReset,
                3 => ResetHint::Gauge,
                _ => ResetHint::Unknown,
            };
            let mut read = |old: f64| get_value(b, &mut pos, if same { old } else { 0.0 });
            h.count = read(h.count)?;
            h.sum = read(h.sum)?;
            h.zero_count = read(h.zero_count)?;
            for c in h
                .positive_buckets
                .iter_mut()
                .chain(h.negative_buckets.iter_mut())
            {
                *c = read(*c)?;
            }
            out.push(HSample::new(t, h.clone()));
            prev = Some((t, h));
        }
        Some(out)
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes.capacity() + std::mem::size_of::<HChunk>()
    }

    /// The chunk as a checkpoint holds it.
    pub(super) fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.first_t.to_le_bytes());
        out.extend_from_slice(&self.last_t.to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(&(self.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.bytes);
    }

    /// Reads back [`HChunk::save`]; `None` when damaged.
    pub(super) fn restore(f: &mut super::chunk::Fields<'_>) -> Option<HChunk> {
        let first_t = i64::from_le_bytes(f.take()?);
        let last_t = i64::from_le_bytes(f.take()?);
        let n = u16::from_le_bytes(f.take()?);
        let len = u32::from_le_bytes(f.take()?) as usize;
        let c = HChunk {
            first_t,
            last_t,
            n,
            bytes: f.bytes(len)?.to_vec(),
        };
        // Checked whole now: a damaged chunk is refused here rather than at every read.
        c.decode()?;
        Some(c)
    }
}

impl Hists {
    /// The newest histogram's time.
    pub(super) fn last_t(&self) -> Option<i64> {
        self.last.as_ref().map(|l| l.timestamp_ms)
    }

    /// Appends a histogram newer than every one held.
    pub(super) fn push(&mut self, s: &HSample) {
        let open = self.chunks.last().is_some_and(|c| c.n < MAX);
        if !open {
            self.chunks.push(HChunk::new(s.timestamp_ms));
        }
        let prev = if open {
            self.last.as_ref().map(|l| (l.timestamp_ms, &*l.h))
        } else {
            None
        };
        let chunk = self.chunks.last_mut().expect("a chunk is open");
        chunk.push(s.timestamp_ms, &s.h, prev);
        self.last = Some(s.clone());
    }

    pub(super) fn len(&self) -> usize {
        self.chunks.iter().map(|c| usize::from(c.n)).sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Drops the chunks wholly older than `oldest`; returns how many histograms went.
    pub(super) fn drop_older_than(&mut self, oldest: i64) -> usize {
        let keep = self.chunks.partition_point(|c| c.last_t < oldest);
        let gone = self.chunks.drain(..keep).map(|c| usize::from(c.n)).sum();
        if self.chunks.is_empty() {
            self.last = None;
        }
        gone
    }

    pub(super) fn bytes(&self) -> usize {
        self.chunks.iter().map(HChunk::bytes).sum::<usize>() + std::mem::size_of::<Hists>()
    }

    /// The chunks overlapping `[mint, maxt]`, for a reader to decode outside the lock.
    pub(super) fn overlapping(&self, mint: i64, maxt: i64) -> Vec<HChunk> {
        self.chunks
            .iter()
            .filter(|c| c.last_t >= mint && c.first_t <= maxt)
            .cloned()
            .collect()
    }

    /// Histograms certainly in `[mint, maxt]` (those of the chunks wholly inside it).
    pub(super) fn surely_within(&self, mint: i64, maxt: i64) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.first_t >= mint && c.last_t <= maxt)
            .map(|c| usize::from(c.n))
            .sum()
    }

    pub(super) fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            c.save(out);
        }
    }

    pub(super) fn restore(f: &mut super::chunk::Fields<'_>) -> Option<Hists> {
        let n = u32::from_le_bytes(f.take()?) as usize;
        let mut chunks = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            chunks.push(HChunk::restore(f)?);
        }
        let last = match chunks.last() {
            Some(c) => Some(c.decode()?.pop()?),
            None => None,
        };
        Some(Hists { chunks, last })
    }
}

/// The histograms of `chunks` with timestamps in `[mint, maxt]`, oldest first.
pub(super) fn decode_range(chunks: &[HChunk], mint: i64, maxt: i64) -> Vec<HSample> {
    let mut out = Vec::new();
    for c in chunks {
        if let Some(hs) = c.decode() {
            out.extend(
                hs.into_iter()
                    .filter(|h| h.timestamp_ms >= mint && h.timestamp_ms <= maxt),
            );
        }
    }
    out
}

impl super::Store {
    /// Appends a histogram the aggregator produced itself (a recording rule's), logged first.
    pub fn append_histogram(
        &self,
        labels: &vigil_wire::Labels,
        h: &HSample,
        now_ms: i64,
    ) -> Result<super::AppendStats, super::TooManySeries> {
        // Checked as a received one is (and as the log's replay will): a recorded `delta` or
        // difference with a negative bucket is refused now, not lost at the next start.
        if let Err(e) = vigil_wire::rw_histogram::validate(&h.h) {
            tracing::warn!(series = %labels, error = %e, "recorded native histogram refused");
            return Ok(super::AppendStats::default());
        }
        let mut g = self.lock();
        if let Some(log) = g.log.as_mut() {
            log.add(super::wal::Kind::InternalHistogram, now_ms, |out| {
                super::wal::encode_internal_histogram(out, labels.encoded(), h)
            });
            if log.is_full() {
                if let Err(e) = log.commit() {
                    self.log_failed(&e);
                }
            }
        }
        self.append_hist_locked(
            &mut g,
            labels.encoded(),
            std::slice::from_ref(h),
            now_ms,
            false,
        )
    }

    /// Appends native histograms to a series, deciding each as a float sample is decided (too
    /// old, too new, out of order or a duplicate against the newest sample of either kind). A
    /// histogram staleness marker is stored as the float marker.
    pub(super) fn append_hist_locked(
        &self,
        g: &mut super::Inner,
        encoded: &str,
        hists: &[HSample],
        now_ms: i64,
        pushed: bool,
    ) -> Result<super::AppendStats, super::TooManySeries> {
        let mut st = super::AppendStats::default();
        let newest = now_ms.saturating_add(super::MAX_FUTURE_MS);
        let oldest = now_ms.saturating_sub(self.retention_ms);
        let times = hists.iter().map(|h| h.timestamp_ms);
        let Some(id) = self.find_or_create(g, encoded, times, now_ms, pushed, &mut st)? else {
            return Ok(st);
        };
        let mut added = 0;
        if let Some(s) = g.series[id].as_mut() {
            if pushed && !hists.is_empty() {
                s.last_push_ms = now_ms;
            }
            for h in hists {
                let t = h.timestamp_ms;
                if t < oldest {
                    st.too_old += 1;
                    continue;
                }
                if t > newest {
                    st.too_new += 1;
                    continue;
                }
                if vigil_wire::is_stale_nan(h.h.sum) {
                    if s.newest_t().is_some_and(|n| n >= t) {
                        st.out_of_order += 1;
                        continue;
                    }
                    let marker = vigil_wire::Sample::new(t, vigil_wire::STALE_NAN);
                    s.push(marker);
                } else {
                    let held = s.hists.as_ref().and_then(|x| x.last.as_ref());
                    if let Some(last) = held.filter(|l| l.timestamp_ms == t) {
                        if last.h.equals(&h.h) {
                            st.duplicates += 1;
                        } else {
                            st.out_of_order += 1;
                        }
                        continue;
                    }
                    if s.newest_t().is_some_and(|n| n >= t) {
                        st.out_of_order += 1;
                        continue;
                    }
                    s.hists.get_or_insert_with(Default::default).push(h);
                }
                if s.stale_at.is_some_and(|at| t >= at || pushed) {
                    s.stale_at = None;
                }
                added += 1;
            }
        }
        g.samples += added;
        st.accepted = added;
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> FloatHistogram {
        FloatHistogram::parse_notation(text).unwrap().0
    }

    #[test]
    fn histograms_come_back_exactly_and_take_a_few_bytes_each() {
        let mut hs = Hists::default();
        let mut want = Vec::new();
        // A request-latency counter: 20 buckets growing slowly, scraped every 15 s.
        let mut counts: Vec<f64> = (0..20).map(|i| f64::from(i * 7 % 13)).collect();
        for k in 0..300i64 {
            for (i, c) in counts.iter_mut().enumerate() {
                *c += ((k as usize + i) % 3) as f64;
            }
            let total: f64 = counts.iter().sum();
            let mut x = h("{{schema:3 z_bucket_w:0.001}}");
            x.count = total;
            x.sum = total * 0.137;
            x.positive_spans = vec![Span {
                offset: -5,
                length: 20,
            }];
            x.positive_buckets = counts.clone();
            x.hint = if k == 0 {
                ResetHint::Unknown
            } else {
                ResetHint::NotReset
            };
            let s = HSample::new(1_700_000_000_000 + k * 15_000, x);
            hs.push(&s);
            want.push(s);
        }
        // A layout change and a gauge in the open chunk.
        let g = HSample::new(1_700_000_000_000 + 300 * 15_000, h("{{schema:-53 count:2 sum:3 custom_values:[1 5] buckets:[1 1] counter_reset_hint:gauge}}"));
        hs.push(&g);
        want.push(g);
        let got = decode_range(&hs.chunks, i64::MIN, i64::MAX);
        assert_eq!(got, want);
        assert_eq!(hs.len(), 301);
        let bytes: usize = hs.chunks.iter().map(|c| c.bytes.len()).sum();
        let per = bytes as f64 / 301.0;
        // Uncompressed: 23 floats and a timestamp, 192 bytes, before the layout.
        println!("{per:.1} bytes per 20-bucket histogram");
        assert!(per < 40.0, "{per}");
        // Through a checkpoint's bytes.
        let mut out = Vec::new();
        hs.save(&mut out);
        let back = Hists::restore(&mut super::super::chunk::Fields(&out)).unwrap();
        assert_eq!(decode_range(&back.chunks, i64::MIN, i64::MAX), want);
        assert_eq!(back.last, hs.last);
        // Damaged bytes are refused, not misread.
        let cut = &out[..out.len() - 3];
        assert!(Hists::restore(&mut super::super::chunk::Fields(cut)).is_none());
        // Retention drops whole chunks.
        let mut old = hs.clone();
        assert_eq!(old.drop_older_than(1_700_000_000_000 + 130 * 15_000), 120);
        assert_eq!(old.len(), 181);
    }
}
