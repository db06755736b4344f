//! The forwarder: records to remote-write series, the queue bound, requests and their halves.

use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-send-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn internal(log: &mut wal::Log, name: &str, samples: &[Sample]) {
    let l = Labels::from_pairs([("__name__", name)]);
    log.add(Kind::Internal, 1_000, |out| {
        wal::encode_internal(out, l.encoded(), samples)
    });
    log.commit().unwrap();
}

#[test]
fn every_kind_of_record_is_sent_as_remote_write_series() {
    let l = Labels::from_pairs([("__name__", "m"), ("i", "1")]);
    let body = WriteRequest {
        timeseries: vec![TimeSeries::new(&l, &[Sample::new(5, 1.5)])],
        metadata: vec![],
    }
    .encode_snappy();
    let rec = |kind: Kind, now: i64, payload: &dyn Fn(&mut Vec<u8>)| {
        let mut out = vec![kind as u8];
        out.extend_from_slice(&now.to_le_bytes());
        payload(&mut out);
        out
    };
    // The series of one record, as the engine decodes what is sent.
    let sent = |record: &[u8]| -> Vec<TimeSeries> {
        let mut raw = Vec::new();
        let n = series_of(record, 1 << 20, &mut |r| r.append_to(&mut raw));
        let req = WriteRequest::decode_snappy(&remote_write::compress(&raw), 1 << 20).unwrap();
        let count: usize = req
            .timeseries
            .iter()
            .map(|t| t.samples.len() + t.histograms.len())
            .sum();
        assert_eq!(n, count);
        req.timeseries
    };
    let write = sent(&rec(Kind::Write, 9, &|o| o.extend_from_slice(&body)));
    assert_eq!(write, vec![TimeSeries::new(&l, &[Sample::new(5, 1.5)])]);
    let int = sent(&rec(Kind::Internal, 9, &|o| {
        wal::encode_internal(o, l.encoded(), &[Sample::new(7, 2.0)])
    }));
    assert_eq!(int, vec![TimeSeries::new(&l, &[Sample::new(7, 2.0)])]);
    // A staleness marker at the time the aggregator marked the series.
    let stale = sent(&rec(Kind::Stale, 9, &|o| {
        wal::encode_internal(o, l.encoded(), &[])
    }));
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].samples.len(), 1);
    assert_eq!(stale[0].samples[0].timestamp, 9);
    assert!(Sample::new(9, stale[0].samples[0].value).is_stale());
    assert!(sent(&[42, 0, 0]).is_empty());
}

#[test]
fn past_the_bound_whole_older_segments_go_counted_never_the_newest() {
    let d = dir("bound");
    let samples: Vec<Sample> = (0..100).map(|t| Sample::new(t, 1.0)).collect();
    for seg in 1..=3 {
        let mut log = wal::Log::create(&d, seg, false).unwrap();
        internal(&mut log, "a", &samples);
        internal(&mut log, "b", &samples[..10]);
    }
    let seg_size = std::fs::metadata(wal::segment_path(&d, 1)).unwrap().len();
    let mut tail = Tail::new(&d, 1, 0);
    assert_eq!(pending_bytes(&d, tail.position()), 3 * seg_size);
    // Under the bound: nothing goes.
    assert_eq!(enforce_bound(&d, &mut tail, 3 * seg_size), 0);
    assert_eq!(tail.position(), (1, 0));
    // One segment over: the oldest goes, with its 110 samples.
    assert_eq!(enforce_bound(&d, &mut tail, 2 * seg_size), 110);
    assert_eq!(tail.position(), (2, 0));
    // Far over: every segment but the newest (the one written to).
    assert_eq!(enforce_bound(&d, &mut tail, 1), 110);
    assert_eq!(tail.position(), (3, 0));
    let samples = |s: &Shard| s.requests.iter().map(|r| r.samples).sum::<usize>();
    // A node that did not act when these records were written (at 1,000 ms; it follows from
    // 500 ms on) leaves its own series (these are all its own) to the acting node: read past,
    // counted, not sent.
    let mut following = crate::remote::roles::Roles::default();
    following.note(&dir("roles"), 500, false);
    let mut follower = Tail::new(&d, 3, 0);
    let (batch, left_out) = read_batch(&mut follower, 2, 1 << 20, &following).unwrap();
    assert_eq!(
        (batch.iter().map(samples).sum::<usize>(), left_out),
        (0, 110)
    );
    assert_eq!(follower.position(), (3, seg_size));
    let (batch, left_out) = read_batch(&mut tail, 2, 1 << 20, &Default::default()).unwrap();
    assert_eq!(left_out, 0);
    assert_eq!(batch.iter().map(samples).sum::<usize>(), 110);
    // A series stays on one shard: each name is on exactly one.
    let names = |s: &Shard| -> std::collections::BTreeSet<String> {
        s.requests
            .iter()
            .flat_map(|r| {
                WriteRequest::decode_snappy(&remote_write::compress(&r.body), 1 << 20)
                    .unwrap()
                    .timeseries
            })
            .map(|t| t.labels[0].value.clone())
            .collect()
    };
    let (x, y) = (names(&batch[0]), names(&batch[1]));
    assert!(x.is_disjoint(&y) && x.len() + y.len() == 2, "{x:?} {y:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn requests_hold_at_most_per_send_samples_and_halve_down_to_one_series() {
    let mut raw = Vec::new();
    let series: Vec<TimeSeries> = (0..5)
        .map(|i| {
            let l = Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())]);
            let s: Vec<Sample> = (0..900).map(|t| Sample::new(t, 1.0)).collect();
            TimeSeries::new(&l, &s)
        })
        .collect();
    for ts in &series {
        raw.extend(
            WriteRequest {
                timeseries: vec![ts.clone()],
                metadata: vec![],
            }
            .encode_raw(),
        );
    }
    let mut shard = Shard::default();
    remote_write::raw_series(&raw, |r| shard.add(&r)).unwrap();
    // 900 + 900 fit in 2,000; a third does not.
    let sizes: Vec<usize> = shard.requests.iter().map(|r| r.samples).collect();
    assert_eq!(sizes, [1800, 1800, 900]);
    let [a, b] = halves(&raw).unwrap();
    assert_eq!((a.samples, b.samples), (1800, 2700));
    let mut again = a.body.clone();
    again.extend_from_slice(&b.body);
    assert_eq!(again, raw);
    assert!(halves(&shard.requests[2].body).is_none());
}
