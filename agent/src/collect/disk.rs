//! `/proc/diskstats`: node_exporter's `node_disk_*` counters for whole devices (partitions,
//! RAM disks and loop devices are excluded as node_exporter does by default).

use vigil_wire::text::MetricType;

use super::Out;

/// node_exporter's default `^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$` exclusion.
pub fn excluded(dev: &str) -> bool {
    let digits_tail = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for p in ["ram", "loop", "fd"] {
        if let Some(rest) = dev.strip_prefix(p) {
            if digits_tail(rest) {
                return true;
            }
        }
    }
    for p in ["hd", "sd", "vd", "xvd"] {
        if let Some(rest) = dev.strip_prefix(p) {
            let mut it = rest.chars();
            if it.next().is_some_and(|c| c.is_ascii_lowercase()) && digits_tail(it.as_str()) {
                return true;
            }
        }
    }
    if let Some(rest) = dev.strip_prefix("nvme") {
        // nvme<d>n<d>p<d>
        let (a, rest) = rest.split_at(
            rest.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len()),
        );
        if let Some(rest) = rest.strip_prefix('n') {
            let (b, rest) = rest.split_at(
                rest.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len()),
            );
            if let Some(c) = rest.strip_prefix('p') {
                return !a.is_empty() && !b.is_empty() && digits_tail(c);
            }
        }
    }
    false
}

pub fn parse(text: &str, out: &mut Out<'_>) {
    // (field index after the device name, metric, multiplier)
    const FIELDS: [(usize, &str, f64); 11] = [
        (0, "node_disk_reads_completed_total", 1.0),
        (1, "node_disk_reads_merged_total", 1.0),
        (2, "node_disk_read_bytes_total", 512.0),
        (3, "node_disk_read_time_seconds_total", 0.001),
        (4, "node_disk_writes_completed_total", 1.0),
        (5, "node_disk_writes_merged_total", 1.0),
        (6, "node_disk_written_bytes_total", 512.0),
        (7, "node_disk_write_time_seconds_total", 0.001),
        (8, "node_disk_io_now", 1.0),
        (9, "node_disk_io_time_seconds_total", 0.001),
        (10, "node_disk_io_time_weighted_seconds_total", 0.001),
    ];
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(_), Some(_), Some(dev)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if excluded(dev) {
            continue;
        }
        let vals: Vec<f64> = f.filter_map(|x| x.parse().ok()).collect();
        for (i, name, mult) in FIELDS {
            if let Some(v) = vals.get(i) {
                let t = if name == "node_disk_io_now" {
                    MetricType::Gauge
                } else {
                    MetricType::Counter
                };
                out.family(name, t, "Disk statistic from /proc/diskstats.");
                out.push(name, &[("device", dev)], v * mult);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::excluded;

    #[test]
    fn partitions_and_pseudo_devices_are_excluded() {
        for d in ["sda1", "vda2", "xvda1", "nvme0n1p1", "loop0", "ram3"] {
            assert!(excluded(d), "{d}");
        }
        for d in ["sda", "vda", "nvme0n1", "dm-0", "md0"] {
            assert!(!excluded(d), "{d}");
        }
    }
}
