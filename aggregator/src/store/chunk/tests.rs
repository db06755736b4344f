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
    assert!(back
        .iter()
        .zip(&want)
        .all(|(a, b)| a.timestamp_ms == b.timestamp_ms && a.value.to_bits() == b.value.to_bits()));
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

#[test]
fn a_saved_chunk_restores_exactly_and_goes_on_encoding() {
    let samples: Vec<Sample> = (0..100)
        .map(|i| Sample::new(1_700_000_000_000 + i * 9_973, ((i * i) as f64).sqrt()))
        .collect();
    for cut in [0, 1, 2, 37, 100] {
        let mut whole = Chunk::default();
        samples.iter().for_each(|s| whole.push(*s));
        let mut part = Chunk::default();
        samples[..cut].iter().for_each(|s| part.push(*s));
        let mut buf = Vec::new();
        part.save(&mut buf);
        buf.extend_from_slice(b"next");
        let mut rest = &buf[..];
        let mut back = Chunk::restore(&mut rest).expect("restores");
        assert_eq!(rest, b"next");
        samples[cut..].iter().for_each(|s| back.push(*s));
        assert_eq!(back.w.bytes, whole.w.bytes, "cut at {cut}");
        assert_eq!(back.len(), 100);
    }
    let mut closed = ClosedChunks::default();
    closed.push(Chunk::default().tap(&samples[..50]));
    closed.push(Chunk::default().tap(&samples[50..]));
    let again = ClosedChunks::from_blob(closed.blob()).expect("a whole block");
    assert_eq!(again.iter().count(), 2);
    assert!(ClosedChunks::from_blob(&closed.blob()[..closed.blob().len() - 1]).is_none());
}

#[test]
fn damaged_state_never_panics_on_restore_read_or_append() {
    let mut c = Chunk::default();
    (0..60).for_each(|i| c.push(Sample::new(i * 15_000, (i % 7) as f64 * 0.1)));
    let mut good = Vec::new();
    c.save(&mut good);
    // Every single-byte change and every cut: restore refuses or gives a chunk that reads
    // and appends without a panic.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..good.len() * 8 {
        let mut bad = good.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        bad[i % good.len()] ^= 1 << (seed % 8);
        let mut rest = &bad[..i % good.len()];
        let _ = Chunk::restore(&mut rest);
        let mut rest = &bad[..];
        if let Some(mut r) = Chunk::restore(&mut rest) {
            let _ = r.iter().count();
            r.push(Sample::new(i64::MAX, f64::NAN));
            r.push(Sample::new(i64::MIN, 1.0));
            let _ = r.iter().count();
        }
    }
}

impl Chunk {
    fn tap(mut self, samples: &[Sample]) -> Chunk {
        samples.iter().for_each(|s| self.push(*s));
        self
    }
}
