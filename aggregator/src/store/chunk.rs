//! Gorilla-style compressed sample chunks (Facebook's Gorilla paper, as Prometheus's XOR chunks):
//! timestamps as delta-of-delta with variable-width buckets, values as XOR with the previous value
//! with leading/trailing-zero windows. A steady counter sampled every 10 s costs about a byte and
//! a half per sample instead of sixteen.
//!
//! Chunks are append-only and decoded from the start; a series keeps a few of them, each closed at
//! [`MAX_SAMPLES`].

use vigil_wire::Sample;

/// Samples per chunk before a new one starts (Prometheus uses 120).
pub const MAX_SAMPLES: u16 = 120;

#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0..8; 0 means a new byte is needed).
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, b: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if b {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// Writes the low `n` bits of `v`, most significant first, a byte at a time.
    fn bits(&mut self, v: u64, n: u8) {
        let mut left = n;
        while left > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let free = 8 - self.used;
            let take = free.min(left);
            let chunk = ((v >> (left - take)) & ((1u64 << take) - 1)) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= chunk << (free - take);
            self.used = (self.used + take) % 8;
            left -= take;
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let b = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(b)
    }

    /// Reads `n` (at most 64) bits, most significant first, with one 16-byte load: they span
    /// at most 9 bytes from the current one.
    fn bits(&mut self, n: u8) -> Option<u64> {
        debug_assert!(n <= 64);
        if n == 0 {
            return Some(0);
        }
        if self.pos + usize::from(n) > self.bytes.len() * 8 {
            return None;
        }
        let at = self.pos / 8;
        let window = match self.bytes.get(at..at + 16) {
            Some(b) => u128::from_be_bytes(b.try_into().ok()?),
            None => {
                // Near the end: pad with zeros (the bits read lie before them).
                let mut b = [0u8; 16];
                let tail = &self.bytes[at..];
                b[..tail.len()].copy_from_slice(tail);
                u128::from_be_bytes(b)
            }
        };
        let off = (self.pos % 8) as u32;
        self.pos += usize::from(n);
        Some(((window << off) >> (128 - u32::from(n))) as u64)
    }
}

/// The full chunks of one series, oldest first, in one exactly sized allocation: per chunk a
/// 22-byte header (first and last timestamp, sample count, byte length) and its bytes. A
/// separate allocation and a 40-byte descriptor per chunk cost about a tenth of the memory of a
/// series holding a few hours; a chunk closes every 120 samples, so rewriting the block then is
/// cheap. The block is shared (`Arc`): a reader takes it under the store's lock by a reference
/// count and decodes it after letting go, so ingest never waits behind a query's decoding.
#[derive(Debug, Clone, Default)]
pub struct ClosedChunks {
    blob: std::sync::Arc<[u8]>,
}

const HEADER: usize = 8 + 8 + 2 + 4;

/// One chunk inside [`ClosedChunks`].
#[derive(Debug, Clone, Copy)]
pub struct ClosedRef<'a> {
    first_t: i64,
    last_t: i64,
    count: u16,
    bytes: &'a [u8],
}

impl ClosedRef<'_> {
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }
    pub fn first_t(&self) -> i64 {
        self.first_t
    }
    pub fn last_t(&self) -> i64 {
        self.last_t
    }
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(self.bytes, self.count)
    }
}

impl ClosedChunks {
    pub fn is_empty(&self) -> bool {
        self.blob.is_empty()
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.blob.len()
    }

    /// Appends a full chunk.
    pub fn push(&mut self, c: Chunk) {
        let data = &c.w.bytes;
        let mut v = Vec::with_capacity(self.blob.len() + HEADER + data.len());
        v.extend_from_slice(&self.blob);
        v.extend_from_slice(&c.first_t.to_le_bytes());
        v.extend_from_slice(&c.last_t.to_le_bytes());
        v.extend_from_slice(&c.count.to_le_bytes());
        // A chunk of 120 samples is at most a few kilobytes.
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        self.blob = v.into();
    }

    pub fn iter(&self) -> ClosedIter<'_> {
        ClosedIter { rest: &self.blob }
    }

    /// Drops the chunks whose newest sample is older than `oldest`; returns the samples dropped.
    pub fn drop_older_than(&mut self, oldest: i64) -> usize {
        let mut cut = 0;
        let mut dropped = 0;
        for c in self.iter().take_while(|c| c.last_t < oldest) {
            cut += HEADER + c.bytes.len();
            dropped += c.len();
        }
        if cut > 0 {
            self.blob = self.blob[cut..].into();
        }
        dropped
    }
}

pub struct ClosedIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ClosedIter<'a> {
    type Item = ClosedRef<'a>;

    fn next(&mut self) -> Option<ClosedRef<'a>> {
        let (h, rest) = self.rest.split_at_checked(HEADER)?;
        let first_t = i64::from_le_bytes(h[0..8].try_into().ok()?);
        let last_t = i64::from_le_bytes(h[8..16].try_into().ok()?);
        let count = u16::from_le_bytes(h[16..18].try_into().ok()?);
        let len = u32::from_le_bytes(h[18..22].try_into().ok()?) as usize;
        let (bytes, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some(ClosedRef {
            first_t,
            last_t,
            count,
            bytes,
        })
    }
}

/// An append-only compressed chunk.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    w: BitWriter,
    count: u16,
    first_t: i64,
    last_t: i64,
    last_v: u64,
    last_delta: i64,
    leading: u8,
    trailing: u8,
}

fn sign_extend(v: u64, bits: u8) -> i64 {
    let shift = 64 - u32::from(bits);
    ((v << shift) as i64) >> shift
}

impl Chunk {
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_full(&self) -> bool {
        self.count >= MAX_SAMPLES
    }

    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    pub fn last_t(&self) -> i64 {
        self.last_t
    }

    /// Closes the chunk: exactly sized bytes, no encoder state.
    /// Heap bytes used.
    pub fn bytes(&self) -> usize {
        self.w.bytes.capacity()
    }

    /// Appends a sample; timestamps must increase (the store checks).
    pub fn push(&mut self, s: Sample) {
        let v = s.value.to_bits();
        match self.count {
            0 => {
                self.w.bits(s.timestamp_ms as u64, 64);
                self.w.bits(v, 64);
                self.first_t = s.timestamp_ms;
                self.leading = 0xff;
            }
            1 => {
                let delta = s.timestamp_ms - self.last_t;
                self.w.bits(delta as u64, 64);
                self.write_value(v);
                self.last_delta = delta;
            }
            _ => {
                let delta = s.timestamp_ms - self.last_t;
                let dod = delta - self.last_delta;
                match dod {
                    0 => self.w.bit(false),
                    -8192..=8191 => {
                        self.w.bits(0b10, 2);
                        self.w.bits(dod as u64 & 0x3fff, 14);
                    }
                    -65536..=65535 => {
                        self.w.bits(0b110, 3);
                        self.w.bits(dod as u64 & 0x1_ffff, 17);
                    }
                    -524288..=524287 => {
                        self.w.bits(0b1110, 4);
                        self.w.bits(dod as u64 & 0xf_ffff, 20);
                    }
                    _ => {
                        self.w.bits(0b1111, 4);
                        self.w.bits(dod as u64, 64);
                    }
                }
                self.write_value(v);
                self.last_delta = delta;
            }
        }
        self.last_t = s.timestamp_ms;
        self.last_v = v;
        self.count += 1;
    }

    fn write_value(&mut self, v: u64) {
        let x = v ^ self.last_v;
        if x == 0 {
            self.w.bit(false);
            return;
        }
        self.w.bit(true);
        let leading = (x.leading_zeros() as u8).min(31);
        let trailing = x.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            // Fits the previous window.
            self.w.bit(false);
            let sig = 64 - self.leading - self.trailing;
            self.w.bits(x >> self.trailing, sig);
        } else {
            self.w.bit(true);
            let sig = 64 - leading - trailing;
            self.w.bits(u64::from(leading), 5);
            // 64 significant bits are written as 0 (they cannot be 0 here).
            self.w.bits(u64::from(sig & 63), 6);
            self.w.bits(x >> trailing, sig);
            self.leading = leading;
            self.trailing = trailing;
        }
    }

    /// Decodes every sample.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.w.bytes, self.count)
    }
}

pub struct ChunkIter<'a> {
    r: BitReader<'a>,
    n: u16,
    count: u16,
    t: i64,
    v: u64,
    delta: i64,
    leading: u8,
    trailing: u8,
}

impl<'a> ChunkIter<'a> {
    fn new(bytes: &'a [u8], count: u16) -> Self {
        ChunkIter {
            r: BitReader { bytes, pos: 0 },
            n: 0,
            count,
            t: 0,
            v: 0,
            delta: 0,
            leading: 0,
            trailing: 0,
        }
    }

    fn read_value(&mut self) -> Option<()> {
        if !self.r.bit()? {
            return Some(());
        }
        if self.r.bit()? {
            self.leading = self.r.bits(5)? as u8;
            let mut sig = self.r.bits(6)? as u8;
            if sig == 0 {
                sig = 64;
            }
            self.trailing = 64 - self.leading - sig;
        }
        let sig = 64 - self.leading - self.trailing;
        let x = self.r.bits(sig)? << self.trailing;
        self.v ^= x;
        Some(())
    }

    fn step(&mut self) -> Option<Sample> {
        match self.n {
            0 => {
                self.t = self.r.bits(64)? as i64;
                self.v = self.r.bits(64)?;
            }
            1 => {
                self.delta = self.r.bits(64)? as i64;
                self.t += self.delta;
                self.read_value()?;
            }
            _ => {
                let dod = if !self.r.bit()? {
                    0
                } else if !self.r.bit()? {
                    sign_extend(self.r.bits(14)?, 14)
                } else if !self.r.bit()? {
                    sign_extend(self.r.bits(17)?, 17)
                } else if !self.r.bit()? {
                    sign_extend(self.r.bits(20)?, 20)
                } else {
                    self.r.bits(64)? as i64
                };
                self.delta += dod;
                self.t += self.delta;
                self.read_value()?;
            }
        }
        self.n += 1;
        Some(Sample::new(self.t, f64::from_bits(self.v)))
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        if self.n >= self.count {
            return None;
        }
        self.step()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_wire::{is_stale_nan, STALE_NAN};

    fn round_trip(samples: &[Sample]) {
        let mut c = Chunk::default();
        for s in samples {
            c.push(*s);
        }
        let back: Vec<Sample> = c.iter().collect();
        assert_eq!(back.len(), samples.len());
        for (a, b) in samples.iter().zip(&back) {
            assert_eq!(a.timestamp_ms, b.timestamp_ms);
            assert_eq!(a.value.to_bits(), b.value.to_bits(), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn counters_compress_to_about_a_byte_and_a_half() {
        let samples: Vec<Sample> = (0..120)
            .map(|i| Sample::new(1_700_000_000_000 + i * 10_000, (i * 137) as f64))
            .collect();
        round_trip(&samples);
        let mut c = Chunk::default();
        samples.iter().for_each(|s| c.push(*s));
        assert!(c.w.bytes.len() < 120 * 3, "{} bytes", c.w.bytes.len());
    }

    #[test]
    fn special_values_and_irregular_timestamps() {
        let vals = [
            0.0,
            -0.0,
            1.5,
            f64::NAN,
            STALE_NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            3.0,
            3.0,
        ];
        let mut t = -5_000_000i64;
        let mut samples = Vec::new();
        for (i, v) in vals.iter().enumerate() {
            t += [1, 10_000, 7_777_777, 3, 60_000, 1_000_000_000_000, 9_000][i % 7];
            samples.push(Sample::new(t, *v));
        }
        round_trip(&samples);
        let mut c = Chunk::default();
        samples.iter().for_each(|s| c.push(*s));
        assert!(c.iter().any(|s| is_stale_nan(s.value)));
    }

    #[test]
    fn delta_of_delta_at_every_bucket_boundary() {
        for dod in [
            8191i64,
            8192,
            -8192,
            -8193,
            65535,
            65536,
            -65536,
            -65537,
            524287,
            524288,
            -524288,
            -524289,
            1 << 40,
        ] {
            let samples = [
                Sample::new(0, 1.0),
                Sample::new(10_000_000, 2.0),
                Sample::new(20_000_000 + dod, 3.0),
                Sample::new(30_000_000 + dod, 4.0),
            ];
            round_trip(&samples);
        }
    }

    #[test]
    fn random_series_round_trip() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let mut t = (next() % 1_000_000_000) as i64;
            let mut v = 0.0f64;
            let n = (next() % 120 + 1) as usize;
            let mut samples = Vec::new();
            for _ in 0..n {
                t += match next() % 4 {
                    0 => 10_000,
                    1 => (next() % 20_000) as i64 + 1,
                    2 => (next() % 10_000_000) as i64 + 1,
                    _ => (next() % 100_000_000_000) as i64 + 1,
                };
                v = match next() % 4 {
                    0 => v,
                    1 => v + (next() % 100) as f64,
                    2 => f64::from_bits(next()),
                    _ => (next() % 1000) as f64 / 7.0,
                };
                samples.push(Sample::new(t, v));
            }
            round_trip(&samples);
        }
    }

    #[test]
    fn closed_chunks_share_one_block_and_drop_from_the_front() {
        let mut closed = ClosedChunks::default();
        let mut all = Vec::new();
        for k in 0..4i64 {
            let mut c = Chunk::default();
            // Chunks of different lengths and shapes.
            for i in 0..(30 + k * 10) {
                let s = Sample::new(k * 10_000 + i * 7, (i * i) as f64 / 3.0);
                c.push(s);
                all.push((k, s));
            }
            closed.push(c);
        }
        let chunks: Vec<ClosedRef<'_>> = closed.iter().collect();
        assert_eq!(chunks.len(), 4);
        let back: Vec<Sample> = chunks.iter().flat_map(|c| c.iter()).collect();
        let want: Vec<Sample> = all.iter().map(|(_, s)| *s).collect();
        assert_eq!(back.len(), want.len());
        assert!(back.iter().zip(&want).all(
            |(a, b)| a.timestamp_ms == b.timestamp_ms && a.value.to_bits() == b.value.to_bits()
        ));
        assert_eq!((chunks[1].first_t(), chunks[1].len()), (10_000, 40));

        // The first two chunks end before 20,000.
        let dropped = closed.drop_older_than(20_000);
        assert_eq!(dropped, 30 + 40);
        let rest: Vec<Sample> = closed
            .iter()
            .flat_map(|c| c.iter().collect::<Vec<_>>())
            .collect();
        assert_eq!(rest.len(), 50 + 60);
        assert_eq!(rest[0].timestamp_ms, 20_000);
        assert_eq!(closed.drop_older_than(i64::MAX), 110);
        assert!(closed.is_empty() && closed.bytes() == 0);
    }
}
