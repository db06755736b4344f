//! `/proc/loadavg`: `node_load1`, `node_load5`, `node_load15`.

use vigil_wire::text::MetricType;

use super::Out;

pub fn parse(text: &str, out: &mut Out<'_>) {
    let mut f = text.split_ascii_whitespace();
    for name in ["node_load1", "node_load5", "node_load15"] {
        if let Some(v) = f.next().and_then(|x| x.parse::<f64>().ok()) {
            out.family(name, MetricType::Gauge, "Load average.");
            out.push(name, &[], v);
        }
    }
}
