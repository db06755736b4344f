//! When this node acted for its cluster, by wall time: what decides whether a record the node
//! wrote itself (a recorded series, `ALERTS`, liveness, an import) is forwarded. Judged by the
//! record's own time, not by the role when the forwarder reaches it: a backlog written while
//! following is not sent after a takeover, and one written while acting still is after the
//! lease is lost (or a restart).

use std::path::Path;

const FILE: &str = "forward.roles";
/// Changes of role remembered; a record older than the oldest is forwarded (its role unknown).
const KEPT: usize = 1000;

/// Each change of role, oldest first: (wall ms, acting from then).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roles(Vec<(i64, bool)>);

impl Roles {
    /// The changes saved in `dir` (none when there is no file or it is unreadable).
    pub fn load(dir: &Path) -> Roles {
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap_or_default();
        let mut v: Vec<(i64, bool)> = text
            .lines()
            .filter_map(|l| {
                let (t, a) = l.split_once(' ')?;
                Some((t.parse().ok()?, a == "1"))
            })
            .collect();
        v.sort_by_key(|c| c.0);
        Roles(v)
    }

    /// Notes the role at `now`; whether it changed (then it is saved in `dir`).
    pub fn note(&mut self, dir: &Path, now: i64, acting: bool) -> bool {
        if self.0.last().is_some_and(|&(_, a)| a == acting) {
            return false;
        }
        self.0.push((now, acting));
        if self.0.len() > KEPT {
            self.0.remove(0);
        }
        let text: String = self
            .0
            .iter()
            .map(|(t, a)| format!("{t} {}\n", u8::from(*a)))
            .collect();
        let tmp = dir.join("forward.roles.tmp");
        if let Err(e) =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(FILE)))
        {
            tracing::warn!(error = %e, "forwarding: the node's roles could not be saved; after a restart its backlog is judged as acting");
        }
        true
    }

    /// Whether the node acted at `t` (unknown before the first change noted: yes, as a node
    /// alone does).
    pub fn acted_at(&self, t: i64) -> bool {
        let i = self.0.partition_point(|&(at, _)| at <= t);
        i == 0 || self.0[i - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_judged_by_the_role_of_its_time_across_a_restart() {
        let d = std::env::temp_dir().join(format!("vigil-roles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut r = Roles::load(&d);
        assert!(r.acted_at(5), "nothing known: forwarded");
        assert!(r.note(&d, 10, false));
        assert!(!r.note(&d, 15, false));
        assert!(r.note(&d, 20, true));
        assert!(r.note(&d, 30, false));
        assert!(r.acted_at(5));
        assert!(!r.acted_at(10) && !r.acted_at(19));
        assert!(r.acted_at(20) && r.acted_at(29));
        assert!(!r.acted_at(30) && !r.acted_at(1_000));
        assert_eq!(Roles::load(&d), r);
        let _ = std::fs::remove_dir_all(&d);
    }
}
