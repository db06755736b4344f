//! `/proc/meminfo` as `node_memory_<Field>_bytes` (node_exporter's names: `Active(anon)` becomes
//! `Active_anon`, fields without a unit keep no `_bytes`), and the paging and swapping counters of
//! `/proc/vmstat` as `node_vmstat_<field>`.

use vigil_wire::text::MetricType;

use super::Out;

pub fn parse_meminfo(text: &str, out: &mut Out<'_>) {
    let mut name = String::with_capacity(64);
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(key), Some(val)) = (f.next(), f.next()) else {
            continue;
        };
        let Some(key) = key.strip_suffix(':') else {
            continue;
        };
        let Ok(mut v) = val.parse::<f64>() else {
            continue;
        };
        name.clear();
        name.push_str("node_memory_");
        for c in key.chars() {
            match c {
                '(' => name.push('_'),
                ')' => {}
                c => name.push(c),
            }
        }
        if f.next() == Some("kB") {
            v *= 1024.0;
            name.push_str("_bytes");
        }
        out.family(
            &name,
            MetricType::Gauge,
            "Memory information field from /proc/meminfo.",
        );
        out.push(&name, &[], v);
    }
}

pub fn parse_vmstat(text: &str, out: &mut Out<'_>) {
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(key), Some(val)) = (f.next(), f.next()) else {
            continue;
        };
        // node_exporter's default field set.
        let wanted = key == "oom_kill"
            || key.starts_with("pgpg")
            || key.starts_with("pswp")
            || (key.starts_with("pg") && key.ends_with("fault"));
        if !wanted {
            continue;
        }
        if let Ok(v) = val.parse::<f64>() {
            let name = format!("node_vmstat_{key}");
            out.family(
                &name,
                MetricType::Unknown,
                "/proc/vmstat information field.",
            );
            out.push(&name, &[], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_units_follow_node_exporter() {
        let text = "MemTotal:       16384 kB\nActive(anon):     100 kB\nHugePages_Total:       0\n";
        let (mut m, mut f) = (Vec::new(), Vec::new());
        parse_meminfo(
            text,
            &mut Out {
                metrics: &mut m,
                families: &mut f,
                cache: &mut crate::collect::LabelCache::default(),
            },
        );
        let names: Vec<&str> = m.iter().filter_map(|x| x.labels.metric_name()).collect();
        assert_eq!(
            names,
            [
                "node_memory_MemTotal_bytes",
                "node_memory_Active_anon_bytes",
                "node_memory_HugePages_Total"
            ]
        );
        assert_eq!(m[0].value, 16384.0 * 1024.0);
    }
}
