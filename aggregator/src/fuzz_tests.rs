//! The aggregator's parsers under the fuzzer (`vigil-fuzz`): its config file, the window's log
//! and checkpoint read back from damaged files, and the evaluation state it persists (the
//! SQLite snapshot's documents and the HA pair's gzipped shared document). `cargo test` runs a
//! short pass; `bench/fuzz.sh` runs 100,000 inputs a target.

use std::path::Path;

use vigil_wire::{Labels, Sample};

use crate::store::Store;
use crate::{config, engine, notify, state};

#[test]
fn fuzz_aggregator_config() {
    let mut seeds = vigil_fuzz::corpus("aggregator_config");
    seeds.extend(vigil_fuzz::files("examples", "toml"));
    seeds.extend(vigil_fuzz::files("packaging/etc", "toml"));
    let dict: &[&[u8]] = &[
        b"[server]\n",
        b"[storage]\n",
        b"[cluster]\n",
        b"[[receiver]]\n",
        b"[query]\n",
        b"listen = \"[::1]:1\"\n",
        b"max_body_size = \"1TiB\"\n",
        b"advertise_address = \"a@b:1/x\"\n",
        b"lease_ttl = \"1ms\"\n",
        b"webhook_urls = [\"http://x\"]\n",
        b"99999999999999999999",
        b"-1",
        b"\"0s\"",
    ];
    vigil_fuzz::run("aggregator_config", seeds, dict, 1 << 16, |b| {
        config::parse("aggregator.toml", &String::from_utf8_lossy(b)).is_ok()
    })
    .assert_clean();
}

const NOW: i64 = 1_800_000_000_000;

/// A real log segment and checkpoint: a few requests and recorded samples.
fn window_files() -> (Vec<u8>, Vec<u8>) {
    let dir = vigil_fuzz::scratch("window-seed");
    let _ = std::fs::remove_dir_all(&dir);
    let s = Store::new(3_600_000, 100);
    s.open_log(&dir, false, 1 << 20).expect("open");
    for k in 0..3i64 {
        let t = NOW + k * 10_000;
        let series: Vec<(Labels, [Sample; 1])> = (0..3)
            .map(|i| {
                let l = Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())]);
                (l, [Sample::new(t, (k * i) as f64 / 3.0)])
            })
            .collect();
        let body = vigil_wire::remote_write::encode_snappy_from(
            series.iter().map(|(l, s)| (l, s.as_slice())),
        );
        let mut b = s.batch();
        b.log(t, &body).expect("log");
        for (l, smp) in &series {
            let _ = b.append(l.encoded(), smp, t);
        }
        drop(b);
        let rec = Labels::from_pairs([("__name__", "job:m:sum")]);
        let _ = s.append(&rec, [Sample::new(t, k as f64)], t);
    }
    s.flush_log();
    let segment = std::fs::read(dir.join("00000001.wal")).expect("segment");
    s.checkpoint().expect("checkpoint");
    let checkpoint = std::fs::read(dir.join("checkpoint.00000002")).expect("checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    (segment, checkpoint)
}

/// Restores a window from `dir` as a start does, then goes on: a push, a checkpoint. Whether
/// any series came back.
fn restore_and_go_on(dir: &Path) -> bool {
    let s = Store::new(3_600_000, 100);
    let Ok(r) = s.open_log(dir, false, 1 << 20) else {
        return false;
    };
    let l = Labels::from_pairs([("__name__", "after")]);
    let _ = s.append(&l, [Sample::new(NOW + 1_000_000, 1.0)], NOW + 1_000_000);
    let _ = s.checkpoint();
    let _ = s.compact(NOW + 1_000_000);
    r.series > 0
}

fn fuzz_window_file(target: &str, seed: Vec<u8>, name: &str) {
    let dir = vigil_fuzz::scratch(target);
    let mut seeds = vigil_fuzz::corpus(target);
    seeds.push(seed);
    let dict: &[&[u8]] = &[
        b"\x00\x00\x00\x00",
        b"\xff\xff\xff\xff",
        b"\x01",
        b"\x02",
        b"\x78",
        b"\x80\x00\x00\x00",
    ];
    vigil_fuzz::run(target, seeds, dict, 1 << 16, |b| {
        let mut any = false;
        for fix in [false, true] {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            let mut bytes = b.to_vec();
            if fix {
                vigil_fuzz::fix_frame_checksums(&mut bytes);
            }
            std::fs::write(dir.join(name), &bytes).expect("write");
            any |= restore_and_go_on(&dir);
        }
        any
    })
    .assert_clean();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fuzz_window_log() {
    let (segment, _) = window_files();
    fuzz_window_file("window_log", segment, "00000001.wal");
}

#[test]
fn fuzz_window_checkpoint() {
    let (_, checkpoint) = window_files();
    fuzz_window_file("window_checkpoint", checkpoint, "checkpoint.00000001");
}

/// The documents of the state fixture (a real release's database): the snapshot and the
/// notifier's state.
fn state_seeds() -> Vec<Vec<u8>> {
    let dump = include_str!("../fixtures/state-v1/vigil.sql");
    dump.lines()
        .filter(|l| l.starts_with("INSERT INTO snapshot") || l.starts_with("INSERT INTO notifier"))
        .filter_map(|l| {
            let a = l.find('\'')?;
            let b = l.rfind('\'')?;
            (b > a).then(|| l[a + 1..b].replace("''", "'").into_bytes())
        })
        .collect()
}

#[test]
fn fuzz_state() {
    let dir = vigil_fuzz::scratch("state");
    let _ = std::fs::remove_dir_all(&dir);
    let db = state::Db::open(&dir).expect("db");
    let mut seeds = vigil_fuzz::corpus("state");
    seeds.extend(state_seeds());
    assert!(seeds.len() >= 2, "the state fixture's documents");
    let dict: &[&[u8]] = &[
        b"null",
        b"[]",
        b"{}",
        b"-1",
        b"1e400",
        b"18446744073709551616",
        b"\"\"",
        b"true",
        b",",
        b":",
    ];
    vigil_fuzz::run("state", seeds, dict, 1 << 16, |b| {
        // The shared document of an HA pair, gzipped as the table holds it, and as raw bytes.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = std::io::Write::write_all(&mut gz, b);
        if let Ok(z) = gz.finish() {
            let _ = engine::decode_shared(&z);
        }
        let _ = engine::decode_shared(b);
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(b) else {
            return false;
        };
        // The database's documents, as a restart reads them.
        if db.import(0, Some(&doc), Some(&doc), &[]).is_ok() {
            let _ = db.load();
            if let Ok(Some(n)) = db.load_notifier() {
                let _ = notify::Notifier::from_json(&n);
            }
            let _ = db.load_actions();
        }
        let _ = notify::Delivery::from_json(&doc);
        notify::Notifier::from_json(&doc).is_ok() || db.load().is_ok_and(|s| s.is_some())
    })
    .assert_clean();
    let _ = std::fs::remove_dir_all(&dir);
}
