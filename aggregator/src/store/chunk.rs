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

    /// The block as it is held (saved whole in a checkpoint).
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// A block read back from a checkpoint: `None` unless it is a whole number of chunks, each
    /// of at most [`MAX_SAMPLES`] samples, in time order.
    pub fn from_blob(blob: &[u8]) -> Option<ClosedChunks> {
        let mut it = ClosedIter { rest: blob };
        let mut prev = i64::MIN;
        for c in it.by_ref() {
            if c.count == 0 || c.count > MAX_SAMPLES || c.first_t > c.last_t || c.first_t < prev {
                return None;
            }
            prev = c.last_t;
        }
        it.rest
            .is_empty()
            .then(|| ClosedChunks { blob: blob.into() })
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
                let delta = s.timestamp_ms.wrapping_sub(self.last_t);
                self.w.bits(delta as u64, 64);
                self.write_value(v);
                self.last_delta = delta;
            }
            _ => {
                let delta = s.timestamp_ms.wrapping_sub(self.last_t);
                let dod = delta.wrapping_sub(self.last_delta);
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

    /// Writes the chunk's whole state (encoder included) for [`Chunk::restore`].
    pub fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        for v in [
            self.first_t,
            self.last_t,
            self.last_v as i64,
            self.last_delta,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[self.leading, self.trailing, self.w.used]);
        out.extend_from_slice(&(self.w.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.w.bytes);
    }

    /// Reads back what [`Chunk::save`] wrote from the front of `buf`, advancing it. `None` for
    /// a state the encoder could not go on from (a damaged file): appending to it must not panic.
    pub fn restore(buf: &mut &[u8]) -> Option<Chunk> {
        let mut r = Fields(buf);
        let count = u16::from_le_bytes(r.take()?);
        let mut t = [0i64; 4];
        for v in &mut t {
            *v = i64::from_le_bytes(r.take()?);
        }
        let [leading, trailing, used] = r.take::<3>()?;
        let len = u32::from_le_bytes(r.take()?) as usize;
        let bytes = r.bytes(len)?.to_vec();
        let window_ok =
            leading == 0xff || (leading <= 31 && u32::from(leading) + u32::from(trailing) < 64);
        let sane = count <= MAX_SAMPLES
            && used < 8
            && (used == 0 || !bytes.is_empty())
            && (count == 0 || !bytes.is_empty())
            && window_ok;
        if !sane {
            return None;
        }
        *buf = r.0;
        Some(Chunk {
            w: BitWriter { bytes, used },
            count,
            first_t: t[0],
            last_t: t[1],
            last_v: t[2] as u64,
            last_delta: t[3],
            leading,
            trailing,
        })
    }

    /// Decodes every sample.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.w.bytes, self.count)
    }
}

/// Fixed-size fields read off the front of a byte slice.
pub struct Fields<'a>(pub &'a [u8]);

impl<'a> Fields<'a> {
    pub fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (h, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*h)
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (h, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(h)
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
            // Checked: a chunk restored from a damaged file must end the read, not the process.
            self.trailing = 64u8.checked_sub(self.leading)?.checked_sub(sig)?;
        }
        let sig = 64u8.checked_sub(self.leading)?.checked_sub(self.trailing)?;
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
                self.t = self.t.wrapping_add(self.delta);
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
                self.delta = self.delta.wrapping_add(dod);
                self.t = self.t.wrapping_add(self.delta);
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
mod tests;
