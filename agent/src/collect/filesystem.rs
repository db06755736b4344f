//! Mounted filesystems: `node_filesystem_{size,free,avail}_bytes`, `node_filesystem_files`,
//! `node_filesystem_files_free`, `node_filesystem_readonly` and `node_filesystem_device_error`,
//! labelled `{device, fstype, mountpoint}`, skipping pseudo filesystems as node_exporter does by
//! default.

use std::path::Path;

use vigil_wire::text::MetricType;

use super::Out;

pub struct FsStat {
    pub bsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
}

/// node_exporter's default `--collector.filesystem.fs-types-exclude`.
const FS_TYPES_EXCLUDED: [&str; 21] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
];
const FS_TYPES_EXCLUDED_2: [&str; 4] = ["squashfs", "sysfs", "tracefs", "erofs"];

/// The default mount points skipped: those of Debian's node_exporter
/// (`^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`), so
/// dashboards built on it see the same series. `[host] mount_points_exclude` replaces the list
/// (EC2 instance stores often live under /mnt).
pub const DEFAULT_MOUNT_EXCLUDE: [&str; 8] = [
    "/dev",
    "/proc",
    "/run",
    "/sys",
    "/mnt",
    "/media",
    "/var/lib/docker/",
    "/var/lib/containers/storage/",
];

/// Whether mount point `m` is at or under one of `prefixes` (a prefix ending in `/` only matches
/// below it).
fn mount_excluded(m: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        if p.ends_with('/') {
            m.starts_with(p.as_str()) && m.len() > p.len()
        } else {
            m == p || (m.starts_with(p.as_str()) && m.as_bytes().get(p.len()) == Some(&b'/'))
        }
    })
}

/// Undoes the octal escapes of `/proc/mounts` (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn collect(
    mounts: &str,
    exclude: &[String],
    out: &mut Out<'_>,
    stat: &dyn Fn(&Path) -> Option<FsStat>,
) {
    let mut seen: Vec<(String, String)> = Vec::new();
    for line in mounts.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(dev), Some(mp), Some(fstype), Some(opts)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if FS_TYPES_EXCLUDED.contains(&fstype) || FS_TYPES_EXCLUDED_2.contains(&fstype) {
            continue;
        }
        let mp = unescape(mp);
        if mount_excluded(&mp, exclude) {
            continue;
        }
        let dev = unescape(dev);
        // The same mount point listed twice (over-mounts): report it once, as node_exporter does.
        if seen.iter().any(|(d, m)| *d == dev && *m == mp) {
            continue;
        }
        seen.push((dev.clone(), mp.clone()));
        let labels = [
            ("device", dev.as_str()),
            ("fstype", fstype),
            ("mountpoint", mp.as_str()),
        ];
        let ro = opts.split(',').any(|o| o == "ro");
        out.family(
            "node_filesystem_device_error",
            MetricType::Gauge,
            "Whether an error occurred while getting statistics for the given device.",
        );
        out.family(
            "node_filesystem_readonly",
            MetricType::Gauge,
            "Filesystem read-only status.",
        );
        match stat(Path::new(&mp)) {
            Some(s) => {
                out.push("node_filesystem_device_error", &labels, 0.0);
                out.push(
                    "node_filesystem_readonly",
                    &labels,
                    if ro { 1.0 } else { 0.0 },
                );
                for (name, v, help) in [
                    (
                        "node_filesystem_size_bytes",
                        s.blocks.saturating_mul(s.bsize),
                        "Filesystem size in bytes.",
                    ),
                    (
                        "node_filesystem_free_bytes",
                        s.bfree.saturating_mul(s.bsize),
                        "Filesystem free space in bytes.",
                    ),
                    (
                        "node_filesystem_avail_bytes",
                        s.bavail.saturating_mul(s.bsize),
                        "Filesystem space available to non-root users in bytes.",
                    ),
                    (
                        "node_filesystem_files",
                        s.files,
                        "Filesystem total file nodes.",
                    ),
                    (
                        "node_filesystem_files_free",
                        s.ffree,
                        "Filesystem total free file nodes.",
                    ),
                ] {
                    out.family(name, MetricType::Gauge, help);
                    out.push(name, &labels, v as f64);
                }
            }
            None => out.push("node_filesystem_device_error", &labels, 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_filesystems_are_skipped_and_escapes_undone() {
        let mounts = "proc /proc proc rw 0 0\n/dev/vda1 / ext4 rw,relatime 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/vdb /mnt/my\\040data xfs ro 0 0\nsysfs /sys sysfs rw 0 0\n";
        let (mut m, mut f) = (Vec::new(), Vec::new());
        let stat = |_: &Path| {
            Some(FsStat {
                bsize: 4096,
                blocks: 100,
                bfree: 50,
                bavail: 40,
                files: 10,
                ffree: 5,
            })
        };
        let exclude: Vec<String> = ["/dev", "/proc", "/sys"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        collect(
            mounts,
            &exclude,
            &mut Out {
                metrics: &mut m,
                families: &mut f,
                cache: &mut crate::collect::LabelCache::default(),
            },
            &stat,
        );
        let mps: std::collections::BTreeSet<&str> = m
            .iter()
            .filter_map(|x| x.labels.get("mountpoint"))
            .collect();
        assert_eq!(
            mps.into_iter().collect::<Vec<_>>(),
            ["/", "/mnt/my data", "/run"]
        );
        let defaults: Vec<String> = DEFAULT_MOUNT_EXCLUDE
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(mount_excluded("/run/user/0", &defaults) && mount_excluded("/mnt", &defaults));
        assert!(
            mount_excluded("/var/lib/docker/overlay2/x", &defaults)
                && !mount_excluded("/var/lib/docker", &defaults)
        );
        assert!(
            !mount_excluded("/", &defaults)
                && !mount_excluded("/data", &defaults)
                && !mount_excluded("/devices", &defaults)
        );
        let size = m
            .iter()
            .find(|x| x.labels.metric_name() == Some("node_filesystem_size_bytes"))
            .unwrap();
        assert_eq!(size.value, 409_600.0);
        let ro = m
            .iter()
            .find(|x| {
                x.labels.metric_name() == Some("node_filesystem_readonly")
                    && x.labels.get("fstype") == Some("xfs")
            })
            .unwrap();
        assert_eq!(ro.value, 1.0);
    }
}
