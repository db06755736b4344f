//! Rule health as Prometheus reports it in `/api/v1/rules` (`health`, `lastError`,
//! `lastEvaluation`, `evaluationTime`), kept, as vmalert does, as a small ring of each rule's
//! recent evaluations: when it ran, how long it took, what it wrote, and the error if it failed.
//! Not decision state: it is not persisted, and a reload starts it anew.

use std::collections::VecDeque;

/// Evaluations kept per rule.
pub const RECENT: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct RuleEvaluation {
    /// Evaluation time (ms).
    pub at: i64,
    pub duration_ns: u64,
    /// Series written (recorded samples, or `ALERTS`/`ALERTS_FOR_STATE` for an alert).
    pub samples: usize,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleHealth {
    /// Newest last.
    pub recent: VecDeque<RuleEvaluation>,
}

impl RuleHealth {
    pub fn record(&mut self, e: RuleEvaluation) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(e);
    }

    pub fn last(&self) -> Option<&RuleEvaluation> {
        self.recent.back()
    }

    /// `ok`, `err` (the last evaluation failed) or `unknown` (not evaluated yet).
    pub fn health(&self) -> &'static str {
        match self.last() {
            None => "unknown",
            Some(e) if e.error.is_some() => "err",
            Some(_) => "ok",
        }
    }
}

/// A group's last evaluation, and each of its rules' (by position in the group).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupHealth {
    pub last_evaluation: Option<i64>,
    pub duration_ns: u64,
    pub rules: Vec<RuleHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: i64, error: Option<&str>) -> RuleEvaluation {
        RuleEvaluation {
            at,
            duration_ns: 1,
            samples: 0,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn health_follows_the_last_evaluation_and_the_ring_keeps_the_newest() {
        let mut h = RuleHealth::default();
        assert_eq!(h.health(), "unknown");
        h.record(ev(1, Some("boom")));
        assert_eq!(h.health(), "err");
        for t in 2..=10 {
            h.record(ev(t, None));
        }
        assert_eq!(h.health(), "ok");
        assert_eq!(h.recent.len(), RECENT);
        assert_eq!(h.recent.front().unwrap().at, 10 - RECENT as i64 + 1);
    }
}
