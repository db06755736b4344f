//! The window's write-ahead log: every remote-write request the window accepts, and every
//! sample the aggregator records itself, appended to numbered segment files
//! (`<state_dir>/wal/<n>.wal`) before the request is answered, as checksummed frames
//! ([`vigil_wire::frame`]). With a checkpoint ([`super::checkpoint`]) it is what a restarted
//! aggregator rebuilds its window from.
//!
//! - A remote-write record is the request's body as it came (snappy-compressed protobuf) and the
//!   aggregator's clock when it came: writing it costs a copy and a `write(2)`, no encoding, and
//!   replay decides every sample as ingest did (out of order, too old, series limit).
//! - "Acknowledged" means written to the log (the kernel's page cache) before the 204: safe
//!   against `kill -9`. `[storage] wal_fsync = true` adds an `fsync` per request for power loss.
//! - Records the aggregator writes itself (recording rules, `ALERTS`) wait in a buffer for the
//!   next request's write or the end of an evaluation, whichever comes first.
//! - A write that fails (disk full) is cut back off the segment and the request answered 503:
//!   nothing half-written stays, and the sender keeps it to retry.
//! - Replay cuts a torn or corrupt frame and the rest of its segment, and counts it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vigil_wire::frame;

/// A segment is closed and the next begun past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest frame replay accepts: a remote-write body is limited far below.
const MAX_RECORD: u32 = 512 << 20;
/// Records the aggregator writes itself are written out once this many bytes wait.
const BUFFER_BYTES: usize = 1 << 20;
/// Records kept for another try after a failed write, at most (a full disk).
const MAX_PENDING: usize = 16 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A remote-write request's body, as received.
    Write = 1,
    /// One series' samples written by the aggregator (see [`encode_internal`]).
    Internal = 2,
    /// A series marked stale at the record's time (its instance stopped pushing): labels only.
    Stale = 3,
    /// One native histogram written by the aggregator (a recording rule's): see
    /// [`encode_internal_histogram`].
    InternalHistogram = 4,
}

/// One record read back.
pub struct Record<'a> {
    pub kind: Kind,
    /// The aggregator's clock when the record was written (ms).
    pub now_ms: i64,
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn parse(body: &'a [u8]) -> Option<Record<'a>> {
        let (&kind, rest) = body.split_first()?;
        let (now, payload) = rest.split_first_chunk::<8>()?;
        let kind = match kind {
            1 => Kind::Write,
            2 => Kind::Internal,
            3 => Kind::Stale,
            4 => Kind::InternalHistogram,
            _ => return None,
        };
        Some(Record {
            kind,
            now_ms: i64::from_le_bytes(*now),
            payload,
        })
    }
}

pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}.wal"))
}

/// The segments in `dir`, by number.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    numbered(dir, |name| name.strip_suffix(".wal"))
}

/// The numbers of the files in `dir` whose name `number` reads one from, in order.
pub fn numbered(dir: &Path, number: impl Fn(&str) -> Option<&str>) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(&number)
                .and_then(|n| n.parse().ok())
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Makes a directory's entries (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Holds `<dir>/lock` (an advisory `flock`) for the life of the process: two aggregators given
/// the same state directory would cut and delete each other's segments.
pub struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    pub fn take(dir: &Path) -> io::Result<DirLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                io::Error::other(format!(
                    "{}: in use by another process ({e}): each aggregator needs its own state_dir",
                    dir.display()
                ))
            },
        )?;
        Ok(DirLock(f))
    }
}

/// A record written and not yet synced: [`PendingSync::wait`] returns once the disk has it.
pub struct PendingSync(Arc<File>);

impl PendingSync {
    pub fn wait(self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// How far the log is written whole: its newest segment and that segment's length, once a
/// log is open. A [`Tail`] bounded by it reads no further, so it never takes a record from a
/// write that fails half-way (a full disk) and is cut off the segment again.
#[derive(Clone, Default)]
pub struct Committed(Arc<parking_lot::Mutex<CommittedInner>>);

#[derive(Default)]
struct CommittedInner {
    /// The segment being written and its length written whole.
    current: Option<(u64, u64)>,
    /// The final lengths of the last segments this process left (a failed write may have left
    /// bytes past them that could not be cut off).
    left: BTreeMap<u64, u64>,
}

/// Segments whose final length is remembered.
const LEFT_KEPT: usize = 64;

impl Committed {
    fn set(&self, seg: u64, len: u64) {
        self.0.lock().current = Some((seg, len));
    }

    /// Segment `seg` ends at `len`; `next` is the one written from now on.
    fn leave(&self, seg: u64, len: u64, next: u64) {
        let mut c = self.0.lock();
        c.left.insert(seg, len);
        while c.left.len() > LEFT_KEPT {
            c.left.pop_first();
        }
        c.current = Some((next, 0));
    }

    /// How much of segment `seg` is written whole: the one being written so far, or one this
    /// process left in full; `None` for a segment from before (read to its end) or before a
    /// log is open.
    pub fn length_of(&self, seg: u64) -> Option<u64> {
        let c = self.0.lock();
        match c.current {
            Some((s, len)) if s == seg => Some(len),
            _ => c.left.get(&seg).copied(),
        }
    }
}

/// The log being written.
pub struct Log {
    dir: PathBuf,
    /// The segment being written (shared with requests waiting for its `fsync`), its number
    /// and length.
    file: Arc<File>,
    seg: u64,
    written: u64,
    /// Frames added and not yet written.
    buf: Vec<u8>,
    fsync: bool,
    /// Bytes written since the last [`Log::cut`]: a checkpoint is due when they grow large.
    pub since_cut: u64,
    /// A failed write could not be cut off the segment: the next write begins a new one.
    poisoned: bool,
    /// The directory's lock, held as long as the log is written.
    lock: Option<DirLock>,
    committed: Committed,
}

impl Log {
    /// Begins segment `seg` in `dir` (replay has read every older one; a fresh segment, so
    /// nothing is appended after a tail replay cut).
    pub fn create(dir: &Path, seg: u64, fsync: bool) -> io::Result<Log> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seg))?;
        file.set_len(0)?;
        // The new name must survive power loss only when the records must (a kill -9 leaves
        // the kernel's directory entries as they are); not a disk wait under the window's lock
        // otherwise.
        if fsync {
            sync_dir(dir)?;
        }
        Ok(Log {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            seg,
            written: 0,
            buf: Vec::new(),
            fsync,
            since_cut: 0,
            poisoned: false,
            lock: None,
            committed: Committed::default(),
        })
    }

    /// The log, saying through `committed` how far it is written whole from now on.
    pub fn publishing(self, committed: Committed) -> Log {
        committed.set(self.seg, self.written);
        Log { committed, ..self }
    }

    /// The log, keeping `lock` for as long as it lives.
    pub fn holding(self, lock: DirLock) -> Log {
        Log {
            lock: Some(lock),
            ..self
        }
    }

    /// Adds a record, to be written by the next [`Log::commit`] (or now, past a megabyte);
    /// returns where it starts in the buffer (see [`Log::commit_or_drop_from`]).
    pub fn add(&mut self, kind: Kind, now_ms: i64, payload: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = self.buf.len();
        frame::put_with(&mut self.buf, |out| {
            out.push(kind as u8);
            out.extend_from_slice(&now_ms.to_le_bytes());
            payload(out);
        });
        start
    }

    /// Whether enough records wait that they should be written now.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= BUFFER_BYTES
    }

    /// Writes every record added (and syncs, under `wal_fsync`). On an error the segment is
    /// cut back to what it held before and the records stay in the buffer for the next try
    /// (up to [`MAX_PENDING`]; past it they are dropped).
    pub fn commit(&mut self) -> io::Result<()> {
        let res = self.write_out(true);
        if res.is_err() && self.buf.len() > MAX_PENDING {
            self.buf.clear();
        }
        res
    }

    /// [`Log::commit`] for a request's record added at `start`, without waiting for the disk:
    /// under `wal_fsync` the caller syncs what this returns once it has let the window's lock
    /// go (requests arriving meanwhile share the wait: a group commit). On an error that
    /// record leaves the buffer (the request is refused, not stored), the records before it
    /// stay.
    pub fn commit_request(&mut self, start: usize) -> io::Result<Option<PendingSync>> {
        let res = self.write_out(false);
        if res.is_err() {
            self.buf.truncate(start);
            if self.buf.len() > MAX_PENDING {
                self.buf.clear();
            }
        }
        res.map(|()| self.fsync.then(|| PendingSync(self.file.clone())))
    }

    /// Writes the buffer; syncs it too under `wal_fsync` when `sync`.
    fn write_out(&mut self, sync: bool) -> io::Result<()> {
        if self.poisoned {
            // The last failed write could not be cut off: its segment ends in a torn frame
            // that replay would stop at, so nothing more goes after it.
            self.rotate()?;
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = (&*self.file).write_all(&self.buf).and_then(|()| {
            if self.fsync && sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = res {
            // The file is in append mode: the next write lands at the cut.
            if self.file.set_len(self.written).is_err() {
                self.poisoned = true;
            }
            return Err(e);
        }
        let len = self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 8 * BUFFER_BYTES {
            self.buf.shrink_to(BUFFER_BYTES);
        }
        self.written += len;
        self.committed.set(self.seg, self.written);
        self.since_cut += len;
        if self.written >= SEGMENT_BYTES {
            // Kept on the current segment when the next cannot be made (disk full): retried
            // at the next commit.
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "window log: cannot begin a new segment; the current one grows");
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = Log::create(&self.dir, self.seg + 1, self.fsync)?;
        if self.fsync {
            self.file.sync_all()?;
        }
        let since = self.since_cut;
        let (left, len) = (self.seg, self.written);
        *self = Log {
            buf: std::mem::take(&mut self.buf),
            since_cut: since,
            lock: self.lock.take(),
            committed: self.committed.clone(),
            ..next
        };
        self.committed.leave(left, len, self.seg);
        Ok(())
    }

    /// Writes what waits and begins a new segment; returns its number: every record added
    /// before the call lies in a lower-numbered segment.
    pub fn cut(&mut self) -> io::Result<u64> {
        self.commit()?;
        self.rotate()?;
        self.since_cut = 0;
        Ok(self.seg)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[path = "tail.rs"]
mod tail;
pub use tail::Tail;

/// Deletes the segments below `seg` in `dir` (a checkpoint now holds what they held).
pub fn remove_before(dir: &Path, seg: u64) -> io::Result<()> {
    for n in segments(dir)?.into_iter().filter(|&n| n < seg) {
        fs::remove_file(segment_path(dir, n))?;
    }
    Ok(())
}

/// What replaying the log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// Frames found torn or corrupt (each ends its segment), and the bytes cut after them.
    pub corrupt: u64,
    pub cut_bytes: u64,
}

/// Reads every segment numbered `from` or higher in `dir`, oldest first, and hands each record
/// to `apply`; deletes older segments (a checkpoint holds them) below `keep_from` (those at or
/// above it still wait to be forwarded). A torn or corrupt frame is cut off its segment with
/// everything after it, and counted. Returns what was read and the number the next segment
/// takes.
pub fn replay(
    dir: &Path,
    from: u64,
    keep_from: u64,
    mut apply: impl FnMut(Record<'_>),
) -> io::Result<(Replayed, u64)> {
    let mut r = Replayed::default();
    let mut next = from;
    for n in segments(dir)? {
        let path = segment_path(dir, n);
        if n < from {
            if n < keep_from {
                fs::remove_file(&path)?;
            }
            continue;
        }
        next = n + 1;
        r.segments += 1;
        // Read a frame at a time: memory stays at one record whatever the segment's size.
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let mut reader = io::BufReader::with_capacity(1 << 20, file);
        let mut at = 0u64;
        let why = loop {
            match frame::read(&mut reader, MAX_RECORD)? {
                None => break None,
                Some(Ok(body)) => match Record::parse(&body) {
                    Some(rec) => {
                        apply(rec);
                        let len = (frame::HEADER + body.len()) as u64;
                        r.records += 1;
                        r.bytes += len;
                        at += len;
                    }
                    None => break Some("unknown record".to_string()),
                },
                Some(Err(e)) => break Some(e),
            }
        };
        if let Some(why) = why {
            r.corrupt += 1;
            r.cut_bytes += size.saturating_sub(at);
            tracing::warn!(segment = %path.display(), offset = at, reason = %why, "window log: cutting a torn or corrupt record and the rest of its segment");
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(at)?;
            f.sync_all()?;
        }
    }
    Ok((r, next))
}

/// A record of samples the aggregator wrote itself: the series' canonical label encoding and
/// its samples.
pub fn encode_internal(out: &mut Vec<u8>, encoded: &str, samples: &[vigil_wire::Sample]) {
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(encoded.as_bytes());
    for s in samples {
        out.extend_from_slice(&s.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&s.value.to_bits().to_le_bytes());
    }
}

/// The payload of an [`Kind::InternalHistogram`] record: the labels as [`encode_internal`]
/// writes them, then the histogram as remote-write's message (its timestamp inside).
pub fn encode_internal_histogram(
    out: &mut Vec<u8>,
    encoded: &str,
    h: &vigil_wire::histogram::HSample,
) {
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(encoded.as_bytes());
    vigil_wire::rw_histogram::encode(h, out);
}

/// Reads back [`encode_internal_histogram`]'s record; `None` when damaged.
pub fn decode_internal_histogram(payload: &[u8]) -> Option<(&str, vigil_wire::histogram::HSample)> {
    let mut f = super::chunk::Fields(payload);
    let len = u32::from_le_bytes(f.take()?) as usize;
    let encoded = std::str::from_utf8(f.bytes(len)?).ok()?;
    Some((encoded, vigil_wire::rw_histogram::decode(f.0).ok()?))
}

/// Reads back [`encode_internal`]'s record; `None` when damaged.
pub fn decode_internal(payload: &[u8]) -> Option<(&str, Vec<vigil_wire::Sample>)> {
    let mut f = super::chunk::Fields(payload);
    let len = u32::from_le_bytes(f.take()?) as usize;
    let encoded = std::str::from_utf8(f.bytes(len)?).ok()?;
    if !f.0.len().is_multiple_of(16) {
        return None;
    }
    let samples =
        f.0.chunks_exact(16)
            .map(|c| {
                let (t, v) = c.split_at(8);
                vigil_wire::Sample::new(
                    i64::from_le_bytes(t.try_into().unwrap_or_default()),
                    f64::from_bits(u64::from_le_bytes(v.try_into().unwrap_or_default())),
                )
            })
            .collect();
    Some((encoded, samples))
}
