//! The forwarder's reader of the window's log.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use vigil_wire::frame;

use super::{segment_path, segments, Committed, MAX_RECORD};

/// A reader of the log from a position on (the forwarder's): whole records, in order, as they
/// are written. A record half-written at the end of the newest segment is not read until it is
/// whole; a segment is left once a later one exists and it has nothing more (the writer fills
/// a segment before it begins the next), and a torn record in a segment left behind ends that
/// segment, counted.
pub struct Tail {
    dir: PathBuf,
    seg: u64,
    offset: u64,
    /// Reads no further than the segment was written whole when it was opened: bytes of a
    /// write under way are never buffered, so none can be read stale after the writer cuts a
    /// failed write off and writes other records in its place.
    reader: Option<io::BufReader<io::Take<File>>>,
    /// Torn or corrupt records skipped (with the rest of their segment).
    pub skipped: u64,
    committed: Committed,
}

impl Tail {
    pub fn new(dir: &Path, seg: u64, offset: u64) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            seg,
            offset,
            reader: None,
            skipped: 0,
            committed: Committed::default(),
        }
    }

    /// Reads the segment being written no further than `committed` says it is written whole.
    pub fn bounded(self, committed: Committed) -> Tail {
        Tail { committed, ..self }
    }

    /// Where the next record starts: segment and byte offset.
    pub fn position(&self) -> (u64, u64) {
        (self.seg, self.offset)
    }

    /// Moves to the start of the segment after the current one (dropping the rest of it).
    pub fn skip_segment(&mut self) -> io::Result<bool> {
        match segments(&self.dir)?.into_iter().find(|&n| n > self.seg) {
            Some(n) => {
                (self.seg, self.offset, self.reader) = (n, 0, None);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next whole record's body; `None` when none is written yet.
    pub fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut later_seen = false;
        loop {
            if self.reader.is_none() {
                let path = segment_path(&self.dir, self.seg);
                match File::open(&path) {
                    Ok(mut f) => {
                        io::Seek::seek(&mut f, io::SeekFrom::Start(self.offset))?;
                        let limit = self
                            .committed
                            .length_of(self.seg)
                            .map_or(u64::MAX, |len| len.saturating_sub(self.offset));
                        self.reader = Some(io::BufReader::with_capacity(
                            1 << 20,
                            io::Read::take(f, limit),
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Deleted below us (or not begun): on to the next that exists.
                        if !self.skip_segment()? {
                            return Ok(None);
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let r = self.reader.as_mut().expect("opened");
            let torn = match frame::read(r, MAX_RECORD)? {
                Some(Ok(body)) => {
                    self.offset += (frame::HEADER + body.len()) as u64;
                    return Ok(Some(body));
                }
                Some(Err(_)) => true,
                None => false,
            };
            // The end of what is written: read again from the last whole record next time.
            self.reader = None;
            if !torn
                && self
                    .committed
                    .length_of(self.seg)
                    .is_some_and(|len| len > self.offset)
            {
                // More was written whole since the reader opened: read on with a new bound.
                continue;
            }
            let later = segments(&self.dir)?.into_iter().any(|n| n > self.seg);
            if !later {
                return Ok(None);
            }
            if !later_seen {
                // A later segment exists, so this one is complete: one more read sees it all.
                later_seen = true;
                continue;
            }
            if torn {
                self.skipped += 1;
                tracing::warn!(
                    segment = self.seg,
                    offset = self.offset,
                    "window log: a torn or corrupt record ends this segment for the forwarder"
                );
            }
            later_seen = false;
            self.skip_segment()?;
        }
    }
}
