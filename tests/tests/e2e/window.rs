//! The window kept on disk: what the aggregator acknowledged is there after `kill -9`, and a
//! stopped aggregator restarts with its whole window.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vigil_e2e::http::{encode_component, get, post};
use vigil_e2e::{bin, free_port, tempdir, wait_http, Child};
use vigil_wire::{Labels, Sample};

fn start(dir: &Path, name: &str, cfg: &Path, port: u16) -> Child {
    let c = Child::spawn(
        name,
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(cfg),
        dir,
    );
    assert!(
        wait_http(
            &format!("http://127.0.0.1:{port}/-/ready"),
            Duration::from_secs(60)
        ),
        "aggregator did not start:\n{}",
        c.log_text()
    );
    c
}

/// Every series of `m` over `[start, end]` (seconds) at a 1 s step: labels' `i` → values.
fn range(base: &str, start: i64, end: i64) -> Vec<(String, Vec<(i64, String)>)> {
    let (code, body) = get(&format!(
        "{base}/api/v1/query_range?query={}&start={start}&end={end}&step=1",
        encode_component("m")
    ))
    .expect("query_range");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut out: Vec<(String, Vec<(i64, String)>)> = v["data"]["result"]
        .as_array()
        .expect("a matrix")
        .iter()
        .map(|s| {
            let i = s["metric"]["i"].as_str().unwrap_or("").to_string();
            let values = s["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap_or(0.0) as i64,
                        p[1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            (i, values)
        })
        .collect();
    out.sort();
    out
}

/// The text of a log without its colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut it = log.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn what_was_acknowledged_survives_kill_9_and_a_stop_keeps_the_whole_window() {
    let dir = tempdir("window");
    let port = free_port();
    let cfg = dir.path().join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nretention = \"1h\"\nstate_dir = \"{}\"\n[rules]\nfiles = [\"/nonexistent/*.toml\"]\n",
            dir.path().join("state").display()
        ),
    )
    .expect("config");
    let base = format!("http://127.0.0.1:{port}");
    let agg = start(dir.path(), "aggregator-1", &cfg, port);
    // 50 series, one request per second of data over the last two minutes, each acknowledged.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (start_s, seconds) = (now_s - 120, 90);
    let labels: Vec<Labels> = (0..50)
        .map(|i| Labels::from_pairs([("__name__", "m"), ("job", "w"), ("i", &format!("{i:02}"))]))
        .collect();
    let value = |i: usize, k: i64| (i as f64 * 1000.0 + k as f64) / 8.0;
    for k in 0..seconds {
        let t = (start_s + k) * 1000;
        let samples: Vec<[Sample; 1]> = (0..labels.len())
            .map(|i| [Sample::new(t, value(i, k))])
            .collect();
        let body = vigil_wire::remote_write::encode_snappy_from(
            labels.iter().zip(&samples).map(|(l, s)| (l, s.as_slice())),
        );
        let (code, answer) = post(
            &format!("{base}/api/v1/write"),
            &[("Content-Encoding", "snappy")],
            &body,
        )
        .expect("write");
        assert_eq!(code, 204, "{answer}");
    }
    let want: Vec<(String, Vec<(i64, String)>)> = (0..labels.len())
        .map(|i| {
            (
                format!("{i:02}"),
                (0..seconds)
                    .map(|k| (start_s + k, value(i, k).to_string()))
                    .collect(),
            )
        })
        .collect();
    let end_s = start_s + seconds - 1;
    assert_eq!(range(&base, start_s, end_s), want, "before the kill");

    agg.signal("KILL");
    drop(agg);
    let agg = start(dir.path(), "aggregator-2", &cfg, port);
    assert_eq!(
        range(&base, start_s, end_s),
        want,
        "after kill -9: every acknowledged sample\n{}",
        agg.log_text()
    );
    let log = plain(&agg.log_text());
    assert!(
        log.contains("window restored from disk") && log.contains("log_records=90"),
        "{log}"
    );

    // A stop writes a checkpoint: the next start replays no log and has the whole window.
    let mut agg = agg;
    agg.signal("TERM");
    assert!(
        agg.wait_exit(Duration::from_secs(60)),
        "no exit after SIGTERM"
    );
    assert!(plain(&agg.log_text()).contains("window saved"));
    drop(agg);
    let agg = start(dir.path(), "aggregator-3", &cfg, port);
    assert_eq!(range(&base, start_s, end_s), want, "after a stop");
    let log = plain(&agg.log_text());
    assert!(
        log.contains("checkpoint_series=50") && log.contains("log_records=0"),
        "{log}"
    );
    let (_, metrics) = get(&format!("{base}/metrics")).expect("metrics");
    assert!(
        metrics.contains("vigil_aggregator_wal_corrupt_total 0"),
        "{metrics}"
    );
}
