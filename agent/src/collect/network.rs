//! `/proc/net/dev`: `node_network_{receive,transmit}_{bytes,packets,errs,drop}_total{device}`.

use vigil_wire::text::MetricType;

use super::Out;

const RX: [(usize, &str); 4] = [(0, "bytes"), (1, "packets"), (2, "errs"), (3, "drop")];
const TX: [(usize, &str); 4] = [(8, "bytes"), (9, "packets"), (10, "errs"), (11, "drop")];

pub fn parse(text: &str, exclude: &[String], out: &mut Out<'_>) {
    for line in text.lines().skip(2) {
        let Some((dev, rest)) = line.split_once(':') else {
            continue;
        };
        let dev = dev.trim();
        if exclude.iter().any(|e| e == dev) {
            continue;
        }
        let vals: Vec<f64> = rest
            .split_ascii_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if vals.len() < 16 {
            continue;
        }
        for (dir, fields) in [("receive", RX), ("transmit", TX)] {
            for (i, what) in fields {
                let name = format!("node_network_{dir}_{what}_total");
                out.family(
                    &name,
                    MetricType::Counter,
                    "Network device statistic from /proc/net/dev.",
                );
                out.push(&name, &[("device", dev)], vals[i]);
            }
        }
    }
}
