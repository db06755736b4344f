//! The disk spool: remote-write bodies that could not be delivered, kept in order until they can.
//!
//! Layout: append-only segment files `<seq>.seg` in the spool directory, each a sequence of
//! frames `[length: u32 LE][crc32: u32 LE][body]`, and an `ack` file naming the next frame to
//! send (`<seq> <offset>`).
//!
//! Durability (fsync policy): every appended frame is written and `fsync`ed before `append`
//! returns, so a spooled batch survives `kill -9` and power loss. The `ack` file is replaced
//! atomically (write, fsync, rename) after each delivered frame; a crash between a delivery and its
//! ack re-sends that one frame, which a remote-write receiver stores once (same series, timestamp
//! and value).
//!
//! Recovery: on open, a frame that is cut short or fails its checksum at the end of the newest
//! segment is a torn write: the segment is truncated there. A bad frame inside an older segment
//! (disk corruption) loses the rest of that segment only; both are counted and logged.
//!
//! Bound: when the segments together exceed `max_bytes`, the oldest segment is deleted (its
//! frames are counted as dropped) — the newest data is the most useful to a fleet's rules.
//!
//! No crate fitted: the well-kept WAL crates (e.g. `okaywal`, `sled`) bring checkpointing and
//! threads an agent that must stay under a few megabytes does not need; this is ~300 lines with
//! the recovery rules above spelled out and tested.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use vigil_wire::frame::{self, HEADER};
/// Largest frame accepted when reading back (a remote-write body of one batch is far smaller).
const MAX_FRAME: u32 = 64 << 20;

/// What opening a spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub frames: u64,
    pub bytes: u64,
    /// Bytes cut off a torn tail.
    pub torn_bytes: u64,
    /// Frames lost to corruption inside older segments.
    pub corrupt_segments: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Segment sequence numbers, oldest first, with their sizes.
    segments: Vec<(u64, u64)>,
    /// Open writer on the newest segment.
    writer: Option<File>,
    /// Read position: (segment seq, byte offset).
    read: (u64, u64),
    /// Frames waiting (for metrics).
    pending_frames: u64,
    pub dropped_frames: u64,
    pub dropped_bytes: u64,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Reads one frame ([`vigil_wire::frame`]) at the file's position. `Ok(None)` at a clean end;
/// `Err` describes a torn or corrupt frame.
fn read_frame(f: &mut File) -> io::Result<Option<Result<Vec<u8>, String>>> {
    frame::read(f, MAX_FRAME)
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering from torn writes.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut seqs: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        seqs.sort_unstable();
        let mut rec = Recovery::default();
        let mut segments = Vec::new();
        let last = seqs.last().copied();
        for seq in seqs {
            let path = seg_path(dir, seq);
            let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut good_end = 0u64;
            loop {
                match read_frame(&mut f)? {
                    None => break,
                    Some(Ok(body)) => {
                        rec.frames += 1;
                        rec.bytes += body.len() as u64;
                        good_end = f.stream_position()?;
                    }
                    Some(Err(why)) => {
                        let size = f.metadata()?.len();
                        if Some(seq) == last {
                            rec.torn_bytes += size - good_end;
                            tracing::warn!(segment = %path.display(), offset = good_end, reason = %why, "spool: cutting a torn tail");
                        } else {
                            rec.corrupt_segments += 1;
                            tracing::error!(segment = %path.display(), offset = good_end, reason = %why, "spool: corrupt frame; the rest of this segment is lost");
                        }
                        f.set_len(good_end)?;
                        f.sync_all()?;
                        break;
                    }
                }
            }
            if good_end == 0 && Some(seq) != last {
                fs::remove_file(&path)?;
                continue;
            }
            segments.push((seq, good_end));
        }
        let read = Self::load_ack(dir, &segments);
        let mut s = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 16 << 20),
            segments,
            writer: None,
            read,
            pending_frames: 0,
            dropped_frames: 0,
            dropped_bytes: 0,
        };
        // Drop segments wholly before the read position.
        while s.segments.len() > 1 && s.segments[0].0 < s.read.0 {
            let (seq, _) = s.segments.remove(0);
            let _ = fs::remove_file(seg_path(dir, seq));
        }
        s.pending_frames = s.count_pending()?;
        Ok((s, rec))
    }

    fn load_ack(dir: &Path, segments: &[(u64, u64)]) -> (u64, u64) {
        let first = segments.first().map_or((0, 0), |(s, _)| (*s, 0));
        let Ok(text) = fs::read_to_string(dir.join("ack")) else {
            return first;
        };
        let mut it = text.split_ascii_whitespace().map(|x| x.parse::<u64>());
        match (it.next(), it.next()) {
            (Some(Ok(seq)), Some(Ok(off))) => {
                // An ack pointing into a segment that is gone (dropped by the bound) starts at
                // the oldest one left; past a segment's end, at its end.
                match segments.iter().find(|(s, _)| *s == seq) {
                    Some((_, size)) => (seq, off.min(*size)),
                    None if segments.first().is_some_and(|(s, _)| *s > seq) => first,
                    None => segments.last().map_or(first, |(s, size)| (*s, *size)),
                }
            }
            _ => first,
        }
    }

    fn count_pending(&self) -> io::Result<u64> {
        let mut n = 0;
        for (seq, size) in &self.segments {
            if *seq < self.read.0 {
                continue;
            }
            let mut f = File::open(seg_path(&self.dir, *seq))?;
            let start = if *seq == self.read.0 { self.read.1 } else { 0 };
            f.seek(SeekFrom::Start(start))?;
            let mut pos = start;
            while pos < *size {
                match read_frame(&mut f)? {
                    Some(Ok(_)) => {
                        n += 1;
                        pos = f.stream_position()?;
                    }
                    _ => break,
                }
            }
        }
        Ok(n)
    }

    /// Frames waiting to be sent.
    pub fn pending(&self) -> u64 {
        self.pending_frames
    }

    pub fn is_empty(&self) -> bool {
        self.pending_frames == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(_, s)| s).sum()
    }

    /// Recounts the frames waiting (after frames were skipped as unreadable).
    pub fn recount(&mut self) {
        if let Ok(n) = self.count_pending() {
            self.pending_frames = n;
        }
    }

    /// Appends a frame and fsyncs it. On failure (disk full) the segment is cut back to what it
    /// held, so a partial frame never sits in front of later ones.
    pub fn append(&mut self, body: &[u8]) -> io::Result<()> {
        let res = self.append_inner(body);
        if res.is_err() {
            if let (Some(w), Some(&(_, size))) = (self.writer.as_ref(), self.segments.last()) {
                let _ = w.set_len(size);
            }
            self.writer = None;
        }
        res
    }

    fn append_inner(&mut self, body: &[u8]) -> io::Result<()> {
        let needs_new = match self.segments.last() {
            None => true,
            Some((_, size)) => {
                *size > 0 && *size + body.len() as u64 + HEADER as u64 > self.segment_bytes
            }
        };
        if needs_new || self.writer.is_none() {
            let seq = if needs_new {
                self.segments.last().map_or(1, |(s, _)| s + 1)
            } else {
                self.segments.last().map_or(1, |(s, _)| *s)
            };
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(seg_path(&self.dir, seq))?;
            if needs_new {
                self.segments.push((seq, 0));
                if self.segments.len() == 1 {
                    self.read = (seq, 0);
                }
                // Make the new file's directory entry durable too.
                if let Ok(d) = File::open(&self.dir) {
                    let _ = d.sync_all();
                }
            }
            self.writer = Some(f);
        }
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("spool writer missing"))?;
        let mut buf = Vec::new();
        frame::put(&mut buf, body);
        w.write_all(&buf)?;
        w.sync_data()?;
        if let Some(last) = self.segments.last_mut() {
            last.1 += buf.len() as u64;
        }
        self.pending_frames += 1;
        self.enforce_bound()?;
        Ok(())
    }

    fn enforce_bound(&mut self) -> io::Result<()> {
        while self.bytes() > self.max_bytes && self.segments.len() > 1 {
            let (seq, size) = self.segments.remove(0);
            let path = seg_path(&self.dir, seq);
            // Count the frames that had not been sent yet.
            let mut lost = 0;
            if seq >= self.read.0 {
                if let Ok(mut f) = File::open(&path) {
                    let start = if seq == self.read.0 { self.read.1 } else { 0 };
                    let _ = f.seek(SeekFrom::Start(start));
                    while let Ok(Some(Ok(_))) = read_frame(&mut f) {
                        lost += 1;
                    }
                }
            }
            fs::remove_file(&path)?;
            self.dropped_frames += lost;
            self.dropped_bytes += size;
            self.pending_frames = self.pending_frames.saturating_sub(lost);
            if self.read.0 <= seq {
                self.read = (self.segments[0].0, 0);
                self.write_ack()?;
            }
            tracing::warn!(
                segment = seq,
                frames = lost,
                bytes = size,
                max_bytes = self.max_bytes,
                "spool full: dropped the oldest segment"
            );
        }
        Ok(())
    }

    /// The next frame to send, without consuming it.
    pub fn peek(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let Some(&(seq, size)) = self.segments.iter().find(|(s, _)| *s == self.read.0) else {
                return Ok(None);
            };
            if self.read.1 >= size {
                // This segment is done; move on if there is a newer one.
                let next = self
                    .segments
                    .iter()
                    .find(|(s, _)| *s > seq)
                    .map(|(s, _)| *s);
                match next {
                    Some(n) => {
                        self.read = (n, 0);
                        self.segments.retain(|(s, _)| *s != seq);
                        let _ = fs::remove_file(seg_path(&self.dir, seq));
                        self.write_ack()?;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            let mut f = File::open(seg_path(&self.dir, seq))?;
            f.seek(SeekFrom::Start(self.read.1))?;
            return match read_frame(&mut f)? {
                Some(Ok(body)) => Ok(Some(body)),
                Some(Err(why)) => {
                    tracing::error!(segment = seq, offset = self.read.1, reason = %why, "spool: unreadable frame; skipping the rest of the segment");
                    self.read.1 = size;
                    self.recount();
                    continue;
                }
                None => Ok(None),
            };
        }
    }

    /// Marks the frame returned by [`Spool::peek`] as delivered.
    pub fn ack(&mut self, body_len: usize) -> io::Result<()> {
        self.read.1 += (HEADER + body_len) as u64;
        self.pending_frames = self.pending_frames.saturating_sub(1);
        self.write_ack()?;
        // Reclaim fully sent segments (but keep the one being written).
        let (seq, off) = self.read;
        if let Some(&(_, size)) = self.segments.iter().find(|(s, _)| *s == seq) {
            if off >= size && self.segments.last().is_some_and(|(s, _)| *s > seq) {
                self.peek()?;
            }
        }
        Ok(())
    }

    fn write_ack(&self) -> io::Result<()> {
        let tmp = self.dir.join("ack.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{} {}", self.read.0, self.read.1)?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join("ack"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn drain(s: &mut Spool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = s.peek().unwrap() {
            s.ack(b.len()).unwrap();
            out.push(b);
        }
        out
    }

    #[test]
    fn frames_come_back_in_order_across_reopen() {
        let d = tmp("order");
        let (mut s, _) = Spool::open(&d, 1 << 20).unwrap();
        for i in 0..100u32 {
            s.append(&i.to_le_bytes().repeat(100)).unwrap();
        }
        let first = s.peek().unwrap().unwrap();
        s.ack(first.len()).unwrap();
        drop(s);
        let (mut s, rec) = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(rec.frames, 100);
        assert_eq!(s.pending(), 99);
        let got = drain(&mut s);
        assert_eq!(got.len(), 99);
        assert_eq!(&got[0][..4], &1u32.to_le_bytes());
        assert!(s.is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let d = tmp("torn");
        let (mut s, _) = Spool::open(&d, 1 << 20).unwrap();
        for i in 0..5u8 {
            s.append(&[i; 50]).unwrap();
        }
        drop(s);
        // Simulate a crash in the middle of writing a sixth frame.
        let seg = seg_path(&d, 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!((rec.frames, rec.torn_bytes), (5, 10));
        assert_eq!(drain(&mut s).len(), 5);
        // And it still appends after the cut.
        s.append(&[7; 3]).unwrap();
        assert_eq!(drain(&mut s), vec![vec![7; 3]]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_in_an_older_segment_loses_only_that_segment() {
        let d = tmp("corrupt");
        let (mut s, _) = Spool::open(&d, 1 << 20).unwrap();
        s.segment_bytes = 200;
        for i in 0..10u8 {
            s.append(&[i; 90]).unwrap();
        }
        let segs = s.segments.clone();
        assert!(segs.len() >= 3, "{segs:?}");
        drop(s);
        // Flip a byte in the body of the first segment's second frame.
        let mut bytes = fs::read(seg_path(&d, segs[0].0)).unwrap();
        bytes[HEADER + 90 + HEADER + 5] ^= 0xff;
        fs::write(seg_path(&d, segs[0].0), bytes).unwrap();
        let (mut s, rec) = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(rec.corrupt_segments, 1);
        let got = drain(&mut s);
        assert_eq!(got.len(), 9, "one frame lost");
        assert_eq!(got[0], vec![0; 90]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_bound_drops_the_oldest_segment_and_counts_it() {
        let d = tmp("bound");
        let (mut s, _) = Spool::open(&d, 1 << 20).unwrap();
        s.max_bytes = 1000;
        s.segment_bytes = 300;
        for i in 0..20u8 {
            s.append(&[i; 92]).unwrap();
        }
        assert!(s.bytes() <= 1000);
        assert!(s.dropped_frames > 0);
        let got = drain(&mut s);
        assert_eq!(got.len() as u64 + s.dropped_frames, 20);
        assert_eq!(got.last().unwrap(), &vec![19; 92], "newest kept");
        let _ = fs::remove_dir_all(&d);
    }
}
