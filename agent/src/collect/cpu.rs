//! `/proc/stat`: `node_cpu_seconds_total{cpu,mode}`, `node_cpu_guest_seconds_total`,
//! `node_boot_time_seconds`, context switches, interrupts, forks and process counts.

use vigil_wire::text::MetricType;

use super::Out;

const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

pub fn parse_stat(text: &str, user_hz: f64, out: &mut Out<'_>) {
    out.family(
        "node_cpu_seconds_total",
        MetricType::Counter,
        "Seconds the CPUs spent in each mode.",
    );
    out.family(
        "node_cpu_guest_seconds_total",
        MetricType::Counter,
        "Seconds the CPUs spent in guests (VMs) for each mode.",
    );
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(head) = f.next() else { continue };
        if let Some(cpu) = head.strip_prefix("cpu") {
            if cpu.is_empty() {
                continue; // the aggregate line; node_exporter reports per CPU only
            }
            let vals: Vec<f64> = f.filter_map(|x| x.parse::<f64>().ok()).collect();
            for (i, mode) in MODES.iter().enumerate() {
                if let Some(v) = vals.get(i) {
                    out.push(
                        "node_cpu_seconds_total",
                        &[("cpu", cpu), ("mode", mode)],
                        v / user_hz,
                    );
                }
            }
            // guest and guest_nice are also counted in user and nice; reported apart.
            if let (Some(g), Some(gn)) = (vals.get(8), vals.get(9)) {
                out.push(
                    "node_cpu_guest_seconds_total",
                    &[("cpu", cpu), ("mode", "user")],
                    g / user_hz,
                );
                out.push(
                    "node_cpu_guest_seconds_total",
                    &[("cpu", cpu), ("mode", "nice")],
                    gn / user_hz,
                );
            }
            continue;
        }
        let v = f.next().and_then(|x| x.parse::<f64>().ok());
        let Some(v) = v else { continue };
        match head {
            "btime" => {
                out.family(
                    "node_boot_time_seconds",
                    MetricType::Gauge,
                    "Node boot time, in unixtime.",
                );
                out.push("node_boot_time_seconds", &[], v);
            }
            "ctxt" => {
                out.family(
                    "node_context_switches_total",
                    MetricType::Counter,
                    "Total number of context switches.",
                );
                out.push("node_context_switches_total", &[], v);
            }
            "intr" => {
                out.family(
                    "node_intr_total",
                    MetricType::Counter,
                    "Total number of interrupts serviced.",
                );
                out.push("node_intr_total", &[], v);
            }
            "processes" => {
                out.family(
                    "node_forks_total",
                    MetricType::Counter,
                    "Total number of forks.",
                );
                out.push("node_forks_total", &[], v);
            }
            "procs_running" => {
                out.family(
                    "node_procs_running",
                    MetricType::Gauge,
                    "Number of processes in runnable state.",
                );
                out.push("node_procs_running", &[], v);
            }
            "procs_blocked" => {
                out.family(
                    "node_procs_blocked",
                    MetricType::Gauge,
                    "Number of processes blocked waiting for I/O to complete.",
                );
                out.push("node_procs_blocked", &[], v);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::Metric;

    #[test]
    fn per_cpu_modes_in_seconds() {
        let text = "cpu  10 0 20 300 4 0 1 0 0 0\ncpu0 100 2 200 3000 40 0 10 5 7 1\nbtime 1700000000\nctxt 55\n";
        let (mut m, mut f) = (Vec::new(), Vec::new());
        parse_stat(
            text,
            100.0,
            &mut Out {
                metrics: &mut m,
                families: &mut f,
                cache: &mut crate::collect::LabelCache::default(),
            },
        );
        let get = |mode: &str| {
            m.iter()
                .find(|x: &&Metric| {
                    x.labels.get("mode") == Some(mode)
                        && x.labels.metric_name() == Some("node_cpu_seconds_total")
                })
                .map(|x| x.value)
        };
        assert_eq!(get("user"), Some(1.0));
        assert_eq!(get("idle"), Some(30.0));
        assert_eq!(get("steal"), Some(0.05));
        assert_eq!(
            m.iter()
                .filter(|x| x.labels.metric_name() == Some("node_cpu_seconds_total"))
                .count(),
            8,
            "aggregate line skipped"
        );
        assert!(m
            .iter()
            .any(|x| x.labels.metric_name() == Some("node_boot_time_seconds") && x.value == 1.7e9));
    }
}
