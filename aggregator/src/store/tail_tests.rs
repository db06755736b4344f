//! The forwarder's tail bounded by what the log has written whole.

use std::path::PathBuf;

use super::*;

/// One internal record's frame, its time `i`, as the log writes it.
fn frame(i: u8) -> Vec<u8> {
    let mut rec = Vec::new();
    vigil_wire::frame::put_with(&mut rec, |out| {
        out.push(wal::Kind::Internal as u8);
        out.extend_from_slice(&i64::from(i).to_le_bytes());
    });
    rec
}

/// Appends raw bytes to a segment, behind the log's back (a write under way).
fn append(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-tail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_bounded_tail_never_reads_a_write_that_is_cut_off_again() {
    let d = dir("tail-bounded");
    std::fs::create_dir_all(&d).unwrap();
    let committed = wal::Committed::default();
    let mut log = wal::Log::create(&d, 1, false)
        .unwrap()
        .publishing(committed.clone());
    let read_all = |t: &mut wal::Tail| -> Vec<i64> {
        std::iter::from_fn(|| t.next().unwrap())
            .map(|b| wal::Record::parse(&b).unwrap().now_ms)
            .collect()
    };
    log.add(wal::Kind::Internal, 1, |_| {});
    log.commit().unwrap();
    let mut bounded = wal::Tail::new(&d, 1, 0).bounded(committed.clone());
    let mut unbounded = wal::Tail::new(&d, 1, 0);
    assert_eq!(read_all(&mut bounded), [1]);
    assert_eq!(read_all(&mut unbounded), [1]);
    // A write under way that will fail: a whole record lands, then the writer cuts the
    // segment back (as `Log` does when the rest of its write fails on a full disk).
    let seg1 = wal::segment_path(&d, 1);
    let len = std::fs::metadata(&seg1).unwrap().len();
    append(&seg1, &frame(9));
    append(&seg1, &frame(9)[..3]);
    assert_eq!(committed.length_of(1), Some(len));
    assert_eq!(
        read_all(&mut bounded),
        Vec::<i64>::new(),
        "read past the log's commit"
    );
    assert_eq!(read_all(&mut unbounded), [9], "the unbounded tail sees it");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg1)
        .unwrap()
        .set_len(len)
        .unwrap();
    // The records written after the cut are read whole, in order, by the bounded tail; the
    // unbounded one is now mid-record.
    log.add(wal::Kind::Internal, 2, |_| {});
    log.add(wal::Kind::Internal, 3, |_| {});
    log.commit().unwrap();
    assert_eq!(read_all(&mut bounded), [2, 3]);
    assert_ne!(read_all(&mut unbounded), [2, 3]);
    // A segment the writer has left is read to the length it left it at.
    let len = std::fs::metadata(&seg1).unwrap().len();
    let next = log.cut().unwrap();
    assert_eq!((next, committed.length_of(1)), (2, Some(len)));
    log.add(wal::Kind::Internal, 4, |_| {});
    log.commit().unwrap();
    assert_eq!(read_all(&mut bounded), [4]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_bounded_tail_buffers_nothing_past_the_commit_and_knows_where_left_segments_end() {
    let d = dir("tail-stale");
    std::fs::create_dir_all(&d).unwrap();
    let committed = wal::Committed::default();
    let mut log = wal::Log::create(&d, 1, false)
        .unwrap()
        .publishing(committed.clone());
    let seg1 = wal::segment_path(&d, 1);
    let next = |t: &mut wal::Tail| {
        t.next()
            .unwrap()
            .map(|b| wal::Record::parse(&b).unwrap().now_ms)
    };
    log.add(wal::Kind::Internal, 1, |_| {});
    log.add(wal::Kind::Internal, 2, |_| {});
    log.commit().unwrap();
    let len = std::fs::metadata(&seg1).unwrap().len();
    // A write under way lands past the commit while the tail holds its reader open (one
    // record read, one to go)...
    append(&seg1, &frame(9));
    let mut t = wal::Tail::new(&d, 1, 0).bounded(committed.clone());
    assert_eq!(next(&mut t), Some(1));
    // ...then fails, is cut off, and other records take its place.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg1)
        .unwrap()
        .set_len(len)
        .unwrap();
    log.add(wal::Kind::Internal, 3, |_| {});
    log.commit().unwrap();
    assert_eq!(next(&mut t), Some(2));
    assert_eq!(
        next(&mut t),
        Some(3),
        "the failed write's bytes were buffered and read stale"
    );
    assert_eq!(next(&mut t), None);
    // A failed write that could not be cut off stays past the end of a segment the writer
    // left: the tail stops at the segment's final length and goes on, counting nothing torn.
    append(&seg1, &frame(8));
    log.cut().unwrap();
    log.add(wal::Kind::Internal, 4, |_| {});
    log.commit().unwrap();
    assert_eq!(next(&mut t), Some(4));
    assert_eq!(t.skipped, 0);
    let _ = std::fs::remove_dir_all(&d);
}
