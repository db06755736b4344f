//! Host metrics with node_exporter's names, labels and units, read straight from `/proc` (and
//! `statvfs` for filesystems): the quantities node_exporter reports are the kernel's own counters,
//! so parsing them directly gives the same numbers with no intermediate library state.

mod cpu;
mod disk;
mod filesystem;
mod load;
mod memory;
mod network;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vigil_wire::text::{FamilyMeta, MetricType};
use vigil_wire::{Labels, LabelsBuilder, METRIC_NAME};

/// One collected sample, before identity labels are added.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub labels: Labels,
    pub value: f64,
}

/// Label sets already built, by metric name and label pairs, with the agent's own labels
/// (identity, `[agent].labels`) applied: host series are the same every round, so each is built
/// once and then only looked up.
#[derive(Debug, Default)]
pub struct LabelCache {
    map: HashMap<String, Labels>,
    key: String,
    /// Labels every series gets.
    pub target: Vec<(String, String)>,
}

impl LabelCache {
    pub fn new(target: Vec<(String, String)>) -> Self {
        LabelCache {
            map: HashMap::new(),
            key: String::new(),
            target,
        }
    }

    fn get(&mut self, name: &str, labels: &[(&str, &str)]) -> Labels {
        self.key.clear();
        self.key.push_str(name);
        for (k, v) in labels {
            self.key.push('\u{1}');
            self.key.push_str(k);
            self.key.push('\u{2}');
            self.key.push_str(v);
        }
        if let Some(l) = self.map.get(self.key.as_str()) {
            return l.clone();
        }
        let mut b = LabelsBuilder::new();
        b.set(METRIC_NAME, name);
        for (k, v) in labels {
            b.set(*k, *v);
        }
        for (k, v) in &self.target {
            b.set(k.clone(), v.clone());
        }
        let l = b.build();
        if self.map.len() > 100_000 {
            // Devices and mounts come and go; never let the cache grow without bound.
            self.map.clear();
        }
        self.map.insert(self.key.clone(), l.clone());
        l
    }
}

/// Collects into a vector.
pub struct Out<'a> {
    pub metrics: &'a mut Vec<Metric>,
    pub families: &'a mut Vec<FamilyMeta>,
    pub cache: &'a mut LabelCache,
}

impl Out<'_> {
    /// Adds a sample of `name` with the given labels.
    pub fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels = self.cache.get(name, labels);
        self.metrics.push(Metric { labels, value });
    }

    /// Declares a family's type and help once.
    pub fn family(&mut self, name: &str, t: MetricType, help: &str) {
        if !self.families.iter().any(|f| f.name == name) {
            self.families.push(FamilyMeta {
                name: name.to_string(),
                metric_type: t,
                help: Some(help.to_string()),
                unit: None,
            });
        }
    }
}

pub use filesystem::DEFAULT_MOUNT_EXCLUDE;

/// Network devices skipped by default (Debian's node_exporter skips the loopback).
pub const DEFAULT_NETDEV_EXCLUDE: [&str; 1] = ["lo"];

/// Where `/proc` is (tests point it at fixtures), and what to skip.
#[derive(Debug, Clone)]
pub struct Host {
    pub proc: PathBuf,
    /// Clock ticks per second for /proc/stat (USER_HZ).
    pub user_hz: f64,
    pub mount_exclude: Vec<String>,
    pub netdev_exclude: Vec<String>,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            proc: PathBuf::from("/proc"),
            user_hz: rustix::param::clock_ticks_per_second() as f64,
            mount_exclude: DEFAULT_MOUNT_EXCLUDE
                .iter()
                .map(|s| s.to_string())
                .collect(),
            netdev_exclude: DEFAULT_NETDEV_EXCLUDE
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl Host {
    fn read(&self, rel: &str, buf: &mut String) -> bool {
        buf.clear();
        use std::io::Read;
        match std::fs::File::open(self.proc.join(rel)) {
            Ok(mut f) => f.read_to_string(buf).is_ok(),
            Err(_) => false,
        }
    }

    /// Collects every host metric. A source that cannot be read is skipped (and logged once by
    /// the caller through the returned list of failures).
    pub fn collect(&self, out: &mut Out<'_>) -> Vec<&'static str> {
        let mut buf = String::with_capacity(16 << 10);
        let mut failed = Vec::new();
        if self.read("stat", &mut buf) {
            cpu::parse_stat(&buf, self.user_hz, out);
        } else {
            failed.push("stat");
        }
        if self.read("loadavg", &mut buf) {
            load::parse(&buf, out);
        } else {
            failed.push("loadavg");
        }
        if self.read("meminfo", &mut buf) {
            memory::parse_meminfo(&buf, out);
        } else {
            failed.push("meminfo");
        }
        if self.read("vmstat", &mut buf) {
            memory::parse_vmstat(&buf, out);
        }
        if self.read("net/dev", &mut buf) {
            network::parse(&buf, &self.netdev_exclude, out);
        } else {
            failed.push("net/dev");
        }
        if self.read("diskstats", &mut buf) {
            disk::parse(&buf, out);
        }
        if self.read("1/mounts", &mut buf) || self.read("mounts", &mut buf) {
            filesystem::collect(&buf, &self.mount_exclude, out, &statvfs_at);
        } else {
            failed.push("mounts");
        }
        failed
    }
}

/// `statvfs` of a mount point: (block size, blocks, free, available, files, files free).
fn statvfs_at(p: &Path) -> Option<filesystem::FsStat> {
    let s = rustix::fs::statvfs(p).ok()?;
    Some(filesystem::FsStat {
        bsize: s.f_bsize,
        blocks: s.f_blocks,
        bfree: s.f_bfree,
        bavail: s.f_bavail,
        files: s.f_files,
        ffree: s.f_ffree,
    })
}
