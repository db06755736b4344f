//! What a query reads from storage when it is evaluated at every instant of a time range: the
//! selections a backtest on a remote engine fetches before it replays (one request per
//! selection and chunk, rather than one per selector and evaluation).

use super::plan::{At, Node};
use super::storage::Matcher;
use super::Query;

/// One selection: series matching any of `alternatives` (each a set of matchers that must all
/// match), with their samples in `[mint, maxt]` (ms, both inclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub alternatives: Vec<Vec<Matcher>>,
    pub mint: i64,
    pub maxt: i64,
}

/// The selections `query` makes when evaluated as an instant query at any time in `[lo, hi]`
/// with lookback `lookback_ms`: every selector over the widest window it may read (its range or
/// the lookback, moved by its offset and subqueries; fixed by an `@ <time>`).
pub fn reads(query: &Query, lo: i64, hi: i64, lookback_ms: i64) -> Vec<Read> {
    let mut out = Vec::new();
    walk(query.plan(), lo, hi, lookback_ms, &mut out);
    out
}

/// Whether `query` may read a series named in `names`: a selector of one of them, or one that
/// names no metric exactly (`{job="a"}`, `{__name__=~"x.*"}`), which may select any.
pub fn may_read(query: &Query, names: &std::collections::BTreeSet<String>) -> bool {
    reads(query, 0, 0, 0).iter().any(|r| {
        r.alternatives.iter().any(|ms| {
            let exact = ms.iter().find(|m| {
                m.name == vigil_wire::METRIC_NAME && matches!(m.op, super::storage::MatchOp::Equal)
            });
            exact.is_none_or(|m| names.contains(&m.value))
        })
    })
}

/// The instants `[lo, hi]` moved by `offset`, or pinned by `at` (an instant query's `start()`
/// and `end()` are its own time: they span the range like no modifier).
fn shift(at: Option<At>, offset: i64, lo: i64, hi: i64) -> (i64, i64) {
    match at {
        Some(At::Time(t)) => (t.saturating_sub(offset), t.saturating_sub(offset)),
        _ => (lo.saturating_sub(offset), hi.saturating_sub(offset)),
    }
}

fn walk(node: &Node, lo: i64, hi: i64, lookback: i64, out: &mut Vec<Read>) {
    match node {
        Node::Number(_) | Node::String(_) => {}
        Node::Selector(s) => {
            let (rlo, rhi) = shift(s.at, s.offset_ms, lo, hi);
            let width = s.range_ms.unwrap_or(lookback);
            let alternatives = if s.or_matchers.is_empty() {
                vec![s.matchers.clone()]
            } else {
                s.or_matchers.clone()
            };
            out.push(Read {
                alternatives,
                mint: rlo.saturating_sub(width).saturating_add(1),
                maxt: rhi,
            });
        }
        Node::Subquery {
            expr,
            range_ms,
            offset_ms,
            at,
            ..
        } => {
            let (rlo, rhi) = shift(*at, *offset_ms, lo, hi);
            walk(expr, rlo.saturating_sub(*range_ms), rhi, lookback, out);
        }
        Node::Neg(e) => walk(e, lo, hi, lookback, out),
        Node::Binary { lhs, rhs, .. } => {
            walk(lhs, lo, hi, lookback, out);
            walk(rhs, lo, hi, lookback, out);
        }
        Node::Aggregate { expr, param, .. } => {
            if let Some(p) = param {
                walk(p, lo, hi, lookback, out);
            }
            walk(expr, lo, hi, lookback, out);
        }
        Node::Call { args, .. } => {
            for a in args {
                walk(a, lo, hi, lookback, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::parse;

    fn windows(q: &str) -> Vec<(String, i64, i64)> {
        reads(&parse(q).unwrap(), 1_000_000, 2_000_000, 300_000)
            .into_iter()
            .map(|r| {
                let names = r
                    .alternatives
                    .iter()
                    .map(|a| {
                        a.iter()
                            .map(|m| m.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect::<Vec<_>>()
                    .join(" or ");
                (names, r.mint, r.maxt)
            })
            .collect()
    }

    #[test]
    fn what_may_read_written_names() {
        let names: std::collections::BTreeSet<String> =
            ["load:avg", "ALERTS"].map(String::from).into();
        let may = |q: &str| may_read(&parse(q).unwrap(), &names);
        assert!(!may("sum(rate(http_requests_total[5m])) > 1"));
        assert!(!may("time()"));
        assert!(may("load:avg > 0.8"));
        assert!(may("max_over_time(ALERTS{alertstate=\"firing\"}[5m:1m])"));
        assert!(may("up * on (job) group_left {job=\"a\"}"));
        assert!(may("{__name__=~\"load:.*\"}"));
        assert!(!may("{__name__=\"up\", job=\"a\"}"));
    }

    #[test]
    fn instants_ranges_offsets_subqueries_and_at() {
        assert_eq!(
            windows("up"),
            vec![("__name__=\"up\"".into(), 700_001, 2_000_000)]
        );
        assert_eq!(
            windows("rate(x[1m] offset 1m) / y @ 500"),
            vec![
                ("__name__=\"x\"".into(), 880_001, 1_940_000),
                ("__name__=\"y\"".into(), 200_001, 500_000),
            ]
        );
        // The subquery reaches 10m further back; its selector's own range beyond that.
        assert_eq!(
            windows("max_over_time(rate(x[1m])[10m:1m])"),
            vec![("__name__=\"x\"".into(), 340_001, 2_000_000)]
        );
        assert_eq!(
            windows("quantile(scalar(q), z{a=\"1\" or b=\"2\"})"),
            vec![
                ("__name__=\"q\"".into(), 700_001, 2_000_000),
                (
                    "__name__=\"z\",a=\"1\" or __name__=\"z\",b=\"2\"".into(),
                    700_001,
                    2_000_000
                ),
            ]
        );
    }
}
