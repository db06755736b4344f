//! Checkpoints of the window, and the window rebuilt at start from the newest checkpoint and
//! the log ([`super::wal`]) after it.
//!
//! A checkpoint is the window itself as it is held: per series its labels, its closed chunks'
//! block byte for byte, its head chunk with the encoder's state, its last sample, push time and
//! staleness marker; a few bytes per sample, so writing one is a copy, and loading one needs no
//! re-encoding. It is taken without stopping ingest:
//!
//! 1. Under the window's lock the log is cut: every record before the cut is in a segment
//!    numbered below `n`.
//! 2. The series are copied a slice at a time (the lock is given up between slices) into
//!    `checkpoint.tmp`, then synced and renamed `checkpoint.<n>`; older checkpoints and the
//!    segments below `n` are deleted.
//!
//! A sample stored after the cut may be in the checkpoint and again in segment `n`: replaying
//! it finds it already there (not newer than the series' last sample) and skips it, so
//! checkpoint plus log is exact. SIGTERM takes a checkpoint after ingest has stopped, so a
//! planned restart replays an empty log.
//!
//! File: checksummed frames ([`vigil_wire::frame`]): a header (magic, `n`), blocks of series,
//! a trailer (the series count). A damaged block ends the load there, counted and logged; what
//! came before it and the log after the checkpoint are still restored.

use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::MutexGuard;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_wire::{frame, remote_write, Labels, Sample};

use super::chunk::{Chunk, ClosedChunks, Fields};
use super::wal::{self, Kind};
use super::{Inner, Series, Store};

/// Version 2 adds each series' native histograms; version 1 files (none) still load.
const MAGIC: &[u8; 8] = b"VIGILCK2";
const MAGIC_V1: &[u8; 8] = b"VIGILCK1";
const TRAILER: &[u8; 8] = b"VIGILEND";
/// Largest block read back (a slice of series is a few megabytes at most).
const MAX_BLOCK: u32 = 1 << 30;
/// A checkpoint is due once the log since the last one passes this, whatever the interval:
/// it bounds the disk the log takes and the time replay takes.
pub const LOG_BYTES_PER_CHECKPOINT: u64 = 512 << 20;
/// A checkpoint being written is synced every this many bytes.
const SYNC_EVERY: u64 = 16 << 20;
/// Series per block (and per turn of the lock while one is written).
const SLICE: usize = 512;

fn checkpoint_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("checkpoint.{seg:08}"))
}

fn checkpoints(dir: &Path) -> io::Result<Vec<u64>> {
    super::wal::numbered(dir, |name| name.strip_prefix("checkpoint."))
}

/// The log's self-metrics, and the lock that lets one checkpoint be written at a time (the
/// periodic one and the one at stop may meet).
#[derive(Default)]
pub struct LogMetrics {
    writing: parking_lot::Mutex<()>,
    write_failures: Counter,
    corrupt: Counter,
    replay_seconds: Gauge<f64, AtomicU64>,
    checkpoint_seconds: Gauge<f64, AtomicU64>,
    checkpoint_time: Gauge,
    checkpoint_bytes: Gauge,
}

impl Store {
    /// Registers the log's self-metrics.
    pub fn register_log_metrics(&self, r: &mut Registry) {
        let m = &self.log_metrics;
        r.register(
            "vigil_aggregator_wal_write_failures",
            "Writes to the window's log that failed (remote-write answered 503, nothing stored)",
            m.write_failures.clone(),
        );
        r.register(
            "vigil_aggregator_wal_corrupt",
            "Torn or corrupt log records and checkpoint blocks found at start (cut, and what followed them in their file)",
            m.corrupt.clone(),
        );
        r.register(
            "vigil_aggregator_wal_replay_seconds",
            "How long rebuilding the window from the checkpoint and the log took at start",
            m.replay_seconds.clone(),
        );
        r.register(
            "vigil_aggregator_checkpoint_seconds",
            "How long the last checkpoint of the window took to write",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "vigil_aggregator_checkpoint_last_success_timestamp_seconds",
            "When the last checkpoint of the window was written",
            m.checkpoint_time.clone(),
        );
        r.register(
            "vigil_aggregator_checkpoint_bytes",
            "Size of the last checkpoint of the window",
            m.checkpoint_bytes.clone(),
        );
    }

    pub(super) fn log_failed(&self, e: &io::Error) {
        // Seconds since the first failure, plus 1, when the last warning was given (0: never),
        // by the monotonic clock: a step of the wall clock must not silence it for an hour.
        static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
        self.log_metrics.write_failures.inc();
        // Once a minute at most: a full disk fails every request.
        let now = FIRST
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            + 1;
        let last = LAST_WARNED.load(Ordering::Relaxed);
        if last == 0 || now >= last + 60 {
            LAST_WARNED.store(now, Ordering::Relaxed);
            tracing::error!(error = %e, "window log: write failed; remote-write is answered 503 until it succeeds");
        }
    }

    /// Writes what the log holds in its buffer (records the aggregator wrote itself).
    pub fn flush_log(&self) {
        let mut g = self.lock();
        if let Some(Err(e)) = g.log.as_mut().map(wal::Log::commit) {
            drop(g);
            self.log_failed(&e);
        }
    }

    /// Whether the log since the last checkpoint has grown past [`LOG_BYTES_PER_CHECKPOINT`].
    pub fn checkpoint_due(&self) -> bool {
        self.lock()
            .log
            .as_ref()
            .is_some_and(|l| l.since_cut >= LOG_BYTES_PER_CHECKPOINT)
    }

    /// Rebuilds the window from `dir` (the newest checkpoint, then the log after it), then
    /// logs to it from now on. Before any ingest: the window must be empty.
    /// `max_body` bounds a remote-write record's decompressed size (`[server] max_body_size`:
    /// no record over it was accepted).
    pub fn open_log(&self, dir: &Path, fsync: bool, max_body: usize) -> io::Result<Restored> {
        let started = Instant::now();
        fs::create_dir_all(dir)?;
        let lock = wal::DirLock::take(dir)?;
        let _ = fs::remove_file(dir.join("checkpoint.tmp"));
        let mut g = self.lock();
        g.restoring = true;
        let mut restored = Restored::default();
        let newest = checkpoints(dir)?.last().copied();
        let from = match newest {
            Some(seg) => {
                self.load_checkpoint(&mut g, &checkpoint_path(dir, seg), &mut restored)?;
                seg
            }
            None => 0,
        };
        let mut scratch = String::new();
        // A record was accepted under the limit of its day: a lower one now must not drop it.
        let max_body = max_body.max(32 << 20);
        let mut latest = i64::MIN;
        let keep = self.keep_log_from.load(Ordering::Relaxed);
        let replayed = wal::replay(dir, from, keep, |rec| {
            latest = latest.max(rec.now_ms);
            self.apply(&mut g, &rec, &mut scratch, max_body);
        });
        g.restoring = false;
        let (log, next) = replayed?;
        restored.log = log;
        g.log = Some(
            wal::Log::create(dir, next.max(1), fsync)?
                .holding(lock)
                .publishing(self.log_committed.clone()),
        );
        drop(g);
        // What had aged out (or been compacted away before the crash) goes now; a window still
        // over `max_series` makes ingest refuse new series until it is back under.
        if latest > i64::MIN {
            self.compact(latest);
        }
        restored.series = self.series_count();
        restored.samples = self.sample_count();
        restored.over_limit = restored.series.saturating_sub(self.max_series) as u64;
        let corrupt = restored.log.corrupt + restored.damaged_blocks;
        self.log_metrics.corrupt.inc_by(corrupt);
        restored.seconds = started.elapsed().as_secs_f64();
        self.log_metrics.replay_seconds.set(restored.seconds);
        Ok(restored)
    }

    /// Stores one record read back from the log, deciding each sample as when it came.
    fn apply(&self, g: &mut Inner, rec: &wal::Record<'_>, scratch: &mut String, max_body: usize) {
        match rec.kind {
            Kind::Write => {
                let Ok(raw) = remote_write::decompress(rec.payload, max_body) else {
                    return;
                };
                let _ = remote_write::scan(&raw, |_, s| {
                    if vigil_wire::encode_sorted(scratch, s.labels.iter().copied()).is_ok() {
                        let _ = self.append_locked(g, scratch, &s.samples, rec.now_ms, true);
                        if !s.histograms.is_empty() {
                            let _ = self.append_hist_locked(
                                g,
                                scratch,
                                &s.histograms,
                                rec.now_ms,
                                true,
                            );
                        }
                    }
                    Ok(())
                });
            }
            Kind::Internal => {
                if let Some((encoded, samples)) = wal::decode_internal(rec.payload) {
                    if Labels::from_encoded_checked(encoded).is_some() {
                        let _ = self.append_locked(g, encoded, &samples, rec.now_ms, false);
                    }
                }
            }
            Kind::InternalHistogram => {
                if let Some((encoded, h)) = wal::decode_internal_histogram(rec.payload) {
                    if Labels::from_encoded_checked(encoded).is_some() {
                        let _ = self.append_hist_locked(g, encoded, &[h], rec.now_ms, false);
                    }
                }
            }
            Kind::Stale => {
                let Some((encoded, _)) = wal::decode_internal(rec.payload) else {
                    return;
                };
                let hash = g.hasher.hash_one(encoded);
                if let Some(id) = g.find(hash, encoded) {
                    if let Some(s) = g.series[id].as_mut() {
                        if s.newest_t().is_some_and(|t| t < rec.now_ms) {
                            s.stale_at = Some(rec.now_ms);
                        }
                    }
                }
            }
        }
    }

    fn load_checkpoint(&self, g: &mut Inner, path: &Path, r: &mut Restored) -> io::Result<()> {
        let mut f = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut blocks = 0u64;
        let mut ended = false;
        let mut version = 2;
        let damage = loop {
            let body = match frame::read(&mut f, MAX_BLOCK)? {
                None => break (!ended).then(|| "the file ends before its trailer".to_string()),
                Some(Err(why)) => break Some(why),
                Some(Ok(b)) => b,
            };
            blocks += 1;
            if blocks == 1 {
                if body.starts_with(MAGIC_V1) {
                    version = 1;
                } else if !body.starts_with(MAGIC) {
                    break Some("not a checkpoint of the window".into());
                }
                continue;
            }
            if body.starts_with(TRAILER) {
                ended = true;
                continue;
            }
            if let Err(why) = self.load_block(g, &body, version) {
                break Some(why);
            }
        };
        r.checkpoint_series = g.by_labels.len();
        if let Some(why) = damage {
            r.damaged_blocks += 1;
            tracing::error!(checkpoint = %path.display(), block = blocks, reason = %why, "window checkpoint damaged: the series after this block are lost (the log after the checkpoint is still replayed)");
        }
        Ok(())
    }

    fn load_block(&self, g: &mut Inner, body: &[u8], version: u8) -> Result<(), String> {
        let mut f = Fields(body);
        let n = u32::from_le_bytes(f.take().ok_or("block cut short")?);
        for i in 0..n {
            let s =
                read_series(&mut f, version).ok_or_else(|| format!("series {i} of the block"))?;
            let hash = g.hasher.hash_one(s.labels.encoded());
            if g.find(hash, s.labels.encoded()).is_some() {
                continue;
            }
            g.samples += s.len();
            g.insert(hash, s);
        }
        Ok(())
    }

    /// Writes a checkpoint of the window (see the module's text); returns its size.
    pub fn checkpoint(&self) -> io::Result<u64> {
        let _one_at_a_time = self.log_metrics.writing.lock();
        let started = Instant::now();
        let (dir, seg) = {
            let mut g = self.lock();
            let log = g
                .log
                .as_mut()
                .ok_or_else(|| io::Error::other("the window is not kept on disk"))?;
            (log.dir().to_path_buf(), log.cut()?)
        };
        let tmp = dir.join("checkpoint.tmp");
        let res = self.write_checkpoint(&tmp, seg);
        let size = match res {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        fs::rename(&tmp, checkpoint_path(&dir, seg))?;
        wal::sync_dir(&dir)?;
        for n in checkpoints(&dir)?.into_iter().filter(|&n| n < seg) {
            fs::remove_file(checkpoint_path(&dir, n))?;
        }
        // Segments the forwarder has not sent yet stay.
        wal::remove_before(&dir, seg.min(self.keep_log_from.load(Ordering::Relaxed)))?;
        let m = &self.log_metrics;
        m.checkpoint_seconds.set(started.elapsed().as_secs_f64());
        m.checkpoint_bytes.set(size as i64);
        m.checkpoint_time
            .set(vigil_wire::clock::wall_ms().div_euclid(1000));
        Ok(size)
    }

    fn write_checkpoint(&self, tmp: &Path, seg: u64) -> io::Result<u64> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(tmp)?);
        let mut block = Vec::new();
        frame::put_with(&mut block, |o| {
            o.extend_from_slice(MAGIC);
            o.extend_from_slice(&seg.to_le_bytes());
        });
        let mut size = 0u64;
        let mut total = 0u64;
        let mut start = 0;
        let mut unsynced = 0u64;
        loop {
            w.write_all(&block)?;
            size += block.len() as u64;
            unsynced += block.len() as u64;
            block.clear();
            // Synced as it goes: hundreds of megabytes left dirty to the end would be written
            // back all at once, and the log's writes (under the window's lock) would queue
            // behind them.
            if unsynced >= SYNC_EVERY {
                w.flush()?;
                w.get_ref().sync_data()?;
                unsynced = 0;
            }
            let g = self.lock();
            let end = (start + SLICE).min(g.series.len());
            frame::put_with(&mut block, |o| {
                let live: Vec<&Series> = g.series[start..end].iter().flatten().collect();
                o.extend_from_slice(&(live.len() as u32).to_le_bytes());
                for s in &live {
                    write_series(o, s);
                }
                total += live.len() as u64;
            });
            let len = g.series.len();
            MutexGuard::unlock_fair(g);
            if end >= len {
                break;
            }
            start = end;
        }
        w.write_all(&block)?;
        size += block.len() as u64;
        block.clear();
        frame::put_with(&mut block, |o| {
            o.extend_from_slice(TRAILER);
            o.extend_from_slice(&total.to_le_bytes());
        });
        w.write_all(&block)?;
        size += block.len() as u64;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(size)
    }
}

/// What rebuilding the window at start found.
#[derive(Debug, Default)]
pub struct Restored {
    pub checkpoint_series: usize,
    pub series: usize,
    pub samples: usize,
    pub log: wal::Replayed,
    pub damaged_blocks: u64,
    /// Series past `max_series` after the restore (ingest refuses new ones meanwhile).
    pub over_limit: u64,
    pub seconds: f64,
}

fn write_series(o: &mut Vec<u8>, s: &Series) {
    let labels = s.labels.encoded().as_bytes();
    o.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    o.extend_from_slice(labels);
    o.extend_from_slice(&s.last_push_ms.to_le_bytes());
    o.extend_from_slice(&s.stale_at.unwrap_or(i64::MIN).to_le_bytes());
    let (has_last, last) = match s.last {
        Some(l) => (1u8, l),
        None => (0, Sample::new(0, 0.0)),
    };
    o.push(has_last);
    o.extend_from_slice(&last.timestamp_ms.to_le_bytes());
    o.extend_from_slice(&last.value.to_bits().to_le_bytes());
    let blob = s.closed.blob();
    o.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    o.extend_from_slice(blob);
    match &s.head {
        Some(h) => {
            o.push(1);
            h.save(o);
        }
        None => o.push(0),
    }
    match &s.hists {
        Some(h) => {
            o.push(1);
            h.save(o);
        }
        None => o.push(0),
    }
}

fn read_series(f: &mut Fields<'_>, version: u8) -> Option<Series> {
    let len = u32::from_le_bytes(f.take()?) as usize;
    let labels = Labels::from_encoded_checked(std::str::from_utf8(f.bytes(len)?).ok()?)?;
    let last_push_ms = i64::from_le_bytes(f.take()?);
    let stale_at = Some(i64::from_le_bytes(f.take()?)).filter(|&t| t != i64::MIN);
    let [has_last] = f.take()?;
    let t = i64::from_le_bytes(f.take()?);
    let v = f64::from_bits(u64::from_le_bytes(f.take()?));
    let last = (has_last == 1).then(|| Sample::new(t, v));
    let len = u32::from_le_bytes(f.take()?) as usize;
    let closed = ClosedChunks::from_blob(f.bytes(len)?)?;
    let [has_head] = f.take()?;
    let head = match has_head {
        0 => None,
        _ => Some(Chunk::restore(&mut f.0)?),
    };
    let hists = match version {
        1 => None,
        _ => match f.take::<1>()? {
            [0] => None,
            _ => Some(Box::new(super::hist::Hists::restore(f)?)),
        },
    };
    // An append compares with `last`: a series that has samples must have one.
    if last.is_none() && (!closed.is_empty() || head.as_ref().is_some_and(|h| h.len() > 0)) {
        return None;
    }
    Some(Series {
        labels,
        closed,
        head,
        last,
        last_push_ms,
        stale_at,
        hists,
    })
}
