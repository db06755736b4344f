//! The window kept on disk: log, checkpoint, and the window rebuilt from them.

use super::*;
use std::path::PathBuf;
use vigil_rules::promql::storage::MatchOp;
use vigil_rules::promql::SeriesData;
use vigil_wire::remote_write::{TimeSeries, WriteRequest};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-wal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// What ingest does with one request: logged, then stored.
fn push(s: &Store, now: i64, series: &[(Labels, Vec<Sample>)]) {
    let body = WriteRequest {
        timeseries: series.iter().map(|(l, v)| TimeSeries::new(l, v)).collect(),
        metadata: vec![],
    }
    .encode_snappy();
    let mut b = s.batch();
    let pending = b.log(now, &body).unwrap();
    for (l, v) in series {
        b.append(l.encoded(), v, now).unwrap();
    }
    drop(b);
    if let Some(p) = pending {
        p.wait().unwrap();
    }
}

fn lab(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())])
}

/// Every series and sample, sorted, as bits (NaNs compare).
fn dump(s: &Store) -> Vec<(String, Vec<(i64, u64)>)> {
    let all = [Matcher::new(MatchOp::NotEqual, "__name__", "")];
    let mut v: Vec<_> = s
        .read(&all, i64::MIN, i64::MAX)
        .into_iter()
        .map(|d| {
            (
                d.labels.to_string(),
                d.samples
                    .iter()
                    .map(|x| (x.timestamp_ms, x.value.to_bits()))
                    .collect(),
            )
        })
        .collect();
    v.sort();
    v
}

const NOW: i64 = 1_800_000_000_000;

#[test]
fn a_killed_window_comes_back_from_the_log_and_a_checkpoint() {
    let d = dir("kill");
    let a = Store::new(3_600_000, 1000);
    assert_eq!(a.open_log(&d, false, 1 << 20).unwrap().series, 0);
    for round in 0..150i64 {
        let t = NOW + round * 10_000;
        let series: Vec<_> = (0..20)
            .map(|i| {
                (
                    lab(i),
                    vec![Sample::new(t, (round * i as i64) as f64 / 3.0)],
                )
            })
            .collect();
        push(&a, t, &series);
        // A recording rule's sample (kept in the buffer until the tick ends).
        a.append(&lab(100), [Sample::new(t, round as f64)], t)
            .unwrap();
        a.flush_log();
        if round == 70 {
            assert!(a.checkpoint().unwrap() > 0);
        }
    }
    // Out of order and duplicate pushes decide the same way again at replay.
    push(&a, NOW, &[(lab(3), vec![Sample::new(NOW, 7.0)])]);
    let want = dump(&a);
    assert_eq!(want.len(), 21);
    assert_eq!(want[0].1.len(), 150);
    // No stop: the process is gone as after kill -9 (written, not synced).
    drop(a);
    let b = Store::new(3_600_000, 1000);
    let r = b.open_log(&d, false, 1 << 20).unwrap();
    assert_eq!(dump(&b), want);
    assert_eq!((r.series, r.checkpoint_series, r.log.corrupt), (21, 21, 0));
    assert!(r.log.records > 0 && r.log.records < 2 * 150);
    // A clean stop: a checkpoint after the last write leaves nothing to replay.
    b.checkpoint().unwrap();
    drop(b);
    let c = Store::new(3_600_000, 1000);
    let r = c.open_log(&d, false, 1 << 20).unwrap();
    assert_eq!(dump(&c), want);
    assert_eq!(r.log.records, 0);
    // One checkpoint and the segments after it are all that is left.
    let mut files: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // The checkpoint, the segment begun by its cut (empty), the one this start began, the lock.
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        files[2].starts_with("checkpoint.") && files[3] == "lock",
        "{files:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_checkpoint_taken_under_ingest_plus_the_log_is_exact() {
    let d = dir("concurrent");
    let a = std::sync::Arc::new(Store::new(3_600_000, 10_000));
    a.open_log(&d, false, 1 << 20).unwrap();
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            for round in 0..400i64 {
                let t = NOW + round * 1000;
                let series: Vec<_> = (0..2000)
                    .step_by(7)
                    .map(|i| {
                        (
                            lab(i + round as usize % 7),
                            vec![Sample::new(t, round as f64)],
                        )
                    })
                    .collect();
                push(&a, t, &series);
            }
        })
    };
    while !writer.is_finished() {
        a.checkpoint().unwrap();
    }
    writer.join().unwrap();
    let want = dump(&a);
    drop(a);
    let b = Store::new(3_600_000, 10_000);
    b.open_log(&d, false, 1 << 20).unwrap();
    assert_eq!(dump(&b), want);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_torn_log_tail_and_a_damaged_checkpoint_are_cut_counted_and_the_rest_kept() {
    let d = dir("torn");
    let a = Store::new(3_600_000, 1000);
    a.open_log(&d, false, 1 << 20).unwrap();
    for round in 0..10i64 {
        let t = NOW + round * 10_000;
        push(&a, t, &[(lab(1), vec![Sample::new(t, 1.0)])]);
    }
    let want = dump(&a);
    drop(a);
    // A write cut by the crash: half a frame at the end of the newest segment.
    let seg = wal::segments(&d).unwrap().pop().unwrap();
    let path = d.join(format!("{seg:08}.wal"));
    let mut bytes = std::fs::read(&path).unwrap();
    let whole = bytes.len();
    bytes.extend_from_within(..20);
    std::fs::write(&path, &bytes).unwrap();
    let b = Store::new(3_600_000, 1000);
    let r = b.open_log(&d, false, 1 << 20).unwrap();
    assert_eq!(dump(&b), want);
    assert_eq!((r.log.corrupt, r.log.cut_bytes), (1, 20));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);
    // Writing goes on in a new segment after the cut one.
    push(
        &b,
        NOW + 200_000,
        &[(lab(1), vec![Sample::new(NOW + 200_000, 2.0)])],
    );
    b.checkpoint().unwrap();
    let want = dump(&b);
    drop(b);
    // Every byte of the checkpoint changed in turn: never a panic; what loads is a prefix of
    // the window, and the damage is counted.
    let ck = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("checkpoint."))
        .unwrap();
    let good = std::fs::read(&ck).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x5a;
        std::fs::write(&ck, &bad).unwrap();
        let c = Store::new(3_600_000, 1000);
        let r = c.open_log(&d, false, 1 << 20).unwrap();
        assert_eq!(r.damaged_blocks, 1, "byte {i}");
        let got = dump(&c);
        assert!(got.is_empty() || got == want, "byte {i}");
        drop(c);
        // Each open began a new (empty) segment; the old ones stay for the next try.
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_start_restores_what_was_acknowledged_whatever_the_series_limit() {
    let d = dir("limit");
    // With an fsync per request.
    let a = Store::new(3_600_000, 10);
    a.open_log(&d, true, 1 << 20).unwrap();
    let series: Vec<_> = (0..10)
        .map(|i| (lab(i), vec![Sample::new(NOW, i as f64)]))
        .collect();
    push(&a, NOW, &series[..6]);
    a.checkpoint().unwrap();
    push(&a, NOW, &series[6..]);
    let want = dump(&a);
    drop(a);
    // Restarted with a lower limit: nothing acknowledged is dropped; new series wait until
    // the window is back under the limit.
    let b = Store::new(3_600_000, 4);
    let r = b.open_log(&d, false, 1 << 20).unwrap();
    assert_eq!(dump(&b), want);
    assert_eq!((r.series, r.over_limit), (10, 6));
    let mut batch = b.batch();
    assert!(batch
        .append(lab(99).encoded(), &[Sample::new(NOW + 1, 1.0)], NOW + 1)
        .is_err());
    drop(batch);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn staleness_marks_come_back_after_a_restart() {
    let d = dir("stale");
    let a = Store::new(3_600_000, 100);
    a.open_log(&d, false, 1 << 20).unwrap();
    let series: Vec<_> = (0..3)
        .map(|i| (lab(i), vec![Sample::new(NOW, i as f64)]))
        .collect();
    push(&a, NOW, &series);
    assert_eq!(a.mark_stale(NOW + 120_000, 60_000), 3);
    // One series pushes again after its mark: the mark goes.
    push(
        &a,
        NOW + 130_000,
        &[(lab(1), vec![Sample::new(NOW + 130_000, 9.0)])],
    );
    let want = dump(&a);
    assert_eq!(want[0].1.last().unwrap().1, vigil_wire::STALE_NAN.to_bits());
    assert_eq!(want[1].1.last().unwrap().0, NOW + 130_000);
    drop(a);
    let b = Store::new(3_600_000, 100);
    b.open_log(&d, false, 1 << 20).unwrap();
    assert_eq!(dump(&b), want);
    // And another process may not use the directory meanwhile.
    let c = Store::new(3_600_000, 100);
    let e = c.open_log(&d, false, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(b);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_log_begins_a_new_segment_past_64_mib_and_replays_across_them_in_order() {
    let d = dir("rotate");
    std::fs::create_dir_all(&d).unwrap();
    let mut log = wal::Log::create(&d, 0, false).unwrap();
    // Records of 1 MiB each, numbered in their first bytes: 70 of them pass one segment.
    let record = |i: u32, out: &mut Vec<u8>| {
        out.extend_from_slice(&i.to_le_bytes());
        out.resize(out.len() + (1 << 20), (i % 251) as u8);
    };
    for i in 0..70u32 {
        log.add(wal::Kind::Write, i64::from(i), |out| record(i, out));
        log.commit().unwrap();
    }
    drop(log);
    assert_eq!(wal::segments(&d).unwrap(), [0, 1]);
    // Closed at the first commit past the size: at most one record over it.
    let first = std::fs::metadata(d.join("00000000.wal")).unwrap().len();
    assert!(
        (wal::SEGMENT_BYTES..wal::SEGMENT_BYTES + (2 << 20)).contains(&first),
        "{first}"
    );
    let mut seen = Vec::new();
    let (r, next) = wal::replay(&d, 0, u64::MAX, |rec| {
        let n = u32::from_le_bytes(rec.payload[..4].try_into().unwrap());
        assert_eq!(rec.payload.len(), 4 + (1 << 20));
        assert!(rec.payload[4..].iter().all(|&b| b == (n % 251) as u8));
        assert_eq!(rec.now_ms, i64::from(n));
        seen.push(n);
    })
    .unwrap();
    assert_eq!(seen, (0..70).collect::<Vec<_>>());
    assert_eq!((r.segments, r.records, r.corrupt, next), (2, 70, 0, 2));
    let _ = std::fs::remove_dir_all(&d);
}

/// Native histograms through ingest, the log, a checkpoint and a restart, as floats are.
#[test]
fn native_histograms_survive_a_kill_and_read_back_with_tsdb_hints() {
    use vigil_wire::histogram::{FloatHistogram, HSample, ResetHint};
    use vigil_wire::rw_histogram::Histogram;
    let h = |t: &str| FloatHistogram::parse_notation(t).unwrap().0;
    let d = dir("hist");
    let a = Store::new(3_600_000, 1000);
    a.open_log(&d, false, 1 << 20).unwrap();
    let l = Labels::from_pairs([("__name__", "latency"), ("instance", "i-1")]);
    let push_h = |s: &Store, t: i64, x: &FloatHistogram| {
        let mut ts = TimeSeries::new(&l, &[]);
        ts.histograms.push(Histogram::from_float(x, t));
        let body = WriteRequest {
            timeseries: vec![ts],
            metadata: vec![],
        }
        .encode_snappy();
        let raw = vigil_wire::remote_write::decompress(&body, 1 << 20).unwrap();
        let mut b = s.batch();
        b.log(t, &body).unwrap();
        let mut st = AppendStats::default();
        vigil_wire::remote_write::scan(&raw, |_, s| {
            st = b.append_histograms(l.encoded(), &s.histograms, t).unwrap();
            Ok(())
        })
        .unwrap();
        st
    };
    for k in 0..200i64 {
        let t = NOW + k * 15_000;
        let x = h(&format!(
            "{{{{schema:0 count:{} sum:{} buckets:[{} {}]}}}}",
            3 * k,
            k,
            k,
            2 * k
        ));
        assert_eq!(push_h(&a, t, &x).accepted, 1);
        if k == 120 {
            a.checkpoint().unwrap();
        }
    }
    // The same again: a duplicate; an older one: out of order; a float at the same time too.
    let last_t = NOW + 199 * 15_000;
    let again = h("{{schema:0 count:597 sum:199 buckets:[199 398]}}");
    assert_eq!(push_h(&a, last_t, &again).duplicates, 1);
    assert_eq!(push_h(&a, last_t - 1, &again).out_of_order, 1);
    let mut b = a.batch();
    let st = b
        .append(l.encoded(), &[Sample::new(last_t, 1.0)], last_t)
        .unwrap();
    assert_eq!(st.out_of_order, 1);
    drop(b);
    // A recording rule's histogram, and a staleness marker sent as a histogram.
    let rec = Labels::from_pairs([("__name__", "job:latency:sum")]);
    a.append_histogram(&rec, &HSample::new(last_t, again.clone()), last_t)
        .unwrap();
    // One with a negative bucket (a recorded delta, say) is refused now, as it would be at
    // replay, rather than kept until the next start.
    let negative = h("{{schema:0 count:1 buckets:[2 -1]}}");
    let st = a
        .append_histogram(&rec, &HSample::new(last_t + 1, negative), last_t)
        .unwrap();
    assert_eq!(st.accepted, 0);
    a.flush_log();
    let mut stale = h("{{}}");
    stale.sum = vigil_wire::STALE_NAN;
    assert_eq!(push_h(&a, last_t + 15_000, &stale).accepted, 1);
    let all = [Matcher::new(MatchOp::NotEqual, "__name__", "")];
    let before = a.read(&all, i64::MIN, i64::MAX);
    drop(a);
    let b = Store::new(3_600_000, 1000);
    let r = b.open_log(&d, false, 1 << 20).unwrap();
    assert_eq!(r.log.corrupt, 0);
    let after = b.read(&all, i64::MIN, i64::MAX);
    // (Debug text: a staleness marker is a NaN, unequal to itself.)
    // Debug text (a staleness marker is a NaN, unequal to itself), in label order.
    let text = |v: &[SeriesData]| -> Vec<String> {
        let mut t: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        t.sort();
        t
    };
    assert!(text(&after) == text(&before), "the window changed");
    let got = after.iter().find(|s| s.labels == l).unwrap();
    assert_eq!(got.histograms.len(), 200);
    assert_eq!(got.histograms[199].h.count, 597.0);
    assert!(got.samples[0].is_stale(), "the marker is a float");
    // Read back as Prometheus's TSDB would: unknown, then not_reset.
    assert_eq!(got.histograms[0].h.hint, ResetHint::Unknown);
    assert!(got.histograms[1..]
        .iter()
        .all(|x| x.h.hint == ResetHint::NotReset));
    assert_eq!(b.sample_count(), 200 + 1 + 1);
    // Queried through PromQL.
    let q = vigil_rules::promql::parse("histogram_count(rate(latency[1m]))").unwrap();
    let res = vigil_rules::promql::Engine::default()
        .instant(&b, &q, last_t)
        .unwrap();
    match res.value {
        vigil_rules::promql::Value::Vector(v) => assert!((v[0].f - 0.2).abs() < 1e-9, "{v:?}"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_tail_reads_whole_records_in_order_across_segments() {
    let d = dir("tail");
    std::fs::create_dir_all(&d).unwrap();
    let mut log = wal::Log::create(&d, 1, false).unwrap();
    let add = |log: &mut wal::Log, i: u8| {
        log.add(wal::Kind::Internal, i64::from(i), |out| out.push(i));
        log.commit().unwrap();
    };
    let read_all = |t: &mut wal::Tail| -> Vec<i64> {
        std::iter::from_fn(|| t.next().unwrap())
            .map(|b| wal::Record::parse(&b).unwrap().now_ms)
            .collect()
    };
    add(&mut log, 1);
    add(&mut log, 2);
    let mut t = wal::Tail::new(&d, 1, 0);
    assert_eq!(read_all(&mut t), [1, 2]);
    assert_eq!(read_all(&mut t), Vec::<i64>::new());
    // Half a record at the end of the newest segment is not read until it is whole.
    let mut rec = Vec::new();
    vigil_wire::frame::put_with(&mut rec, |out| {
        out.push(wal::Kind::Internal as u8);
        out.extend_from_slice(&3i64.to_le_bytes());
    });
    let seg1 = wal::segment_path(&d, 1);
    let append = |bytes: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&seg1)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    };
    append(&rec[..5]);
    assert_eq!(read_all(&mut t), Vec::<i64>::new());
    append(&rec[5..]);
    assert_eq!(read_all(&mut t), [3]);
    // A later segment: the tail finishes this one first (written before the next began).
    let mut log2 = wal::Log::create(&d, 2, false).unwrap();
    add(&mut log2, 4);
    assert_eq!(read_all(&mut t), [4]);
    assert_eq!(t.position().0, 2);
    // A torn record in a segment left behind ends that segment, counted.
    let mut log3 = wal::Log::create(&d, 3, false).unwrap();
    add(&mut log3, 6);
    let seg2 = wal::segment_path(&d, 2);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&seg2)
            .unwrap();
        f.write_all(&rec[..5]).unwrap();
    }
    assert_eq!(read_all(&mut t), [6]);
    assert_eq!(t.skipped, 1);
    drop((log, log2, log3));
    let _ = std::fs::remove_dir_all(&d);
}
