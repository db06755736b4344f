//! The window as rule evaluation reads and writes it: beside an engine in remote mode, and
//! with what the rules record.

use vigil_rules::evaluator::RuleStorage;
use vigil_rules::promql::storage::{Matcher, StorageError};
use vigil_rules::promql::{SeriesData, Storage};
use vigil_wire::{Labels, Sample};

use super::{select, Store};

/// The store as rule evaluation writes to it (recorded series, `ALERTS`).
/// Sees every recorded sample.
pub type Tap<'a> = &'a mut dyn FnMut(&Labels, Sample);

pub struct RuleSink<'a> {
    pub store: &'a Store,
    /// Read beside the window (`[storage] backend = "remote"`: the engine), merged with it.
    pub beside: Option<&'a dyn Storage>,
    /// Expressions reading none of these names may be evaluated whole by `beside` (when it
    /// evaluates PromQL itself); `None`: every expression is evaluated here.
    pub whole_unless: Option<&'a std::collections::BTreeSet<String>>,
    pub now_ms: i64,
    /// Sees every recorded sample (CloudWatch publishing takes its rules' samples here).
    pub tap: Option<Tap<'a>>,
}

impl Storage for RuleSink<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, StorageError> {
        self.select_within(matchers, mint, maxt, usize::MAX)
            .map(Option::unwrap_or_default)
    }

    fn select_within(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Option<Vec<SeriesData>>, StorageError> {
        match self.beside {
            None => self.store.select_within(matchers, mint, maxt, budget),
            Some(other) => {
                let theirs = other.select(matchers, mint, maxt)?;
                let Some(ours) = self.store.read_within(matchers, mint, maxt, budget) else {
                    return Ok(None);
                };
                let all = select::merge(theirs, ours);
                Ok((all.iter().map(SeriesData::len).sum::<usize>() <= budget).then_some(all))
            }
        }
    }

    fn evaluate(
        &self,
        query: &vigil_rules::promql::Query,
        t: i64,
    ) -> Option<Result<vigil_rules::promql::Value, vigil_rules::promql::EvalError>> {
        let names = self.whole_unless?;
        if vigil_rules::promql::reach::may_read(query, names) {
            return None;
        }
        self.beside?.evaluate(query, t)
    }
}

impl RuleStorage for RuleSink<'_> {
    fn append(&mut self, labels: Labels, sample: Sample) {
        if let Some(tap) = self.tap.as_mut() {
            tap(&labels, sample);
        }
        if let Err(e) = self.store.append(&labels, [sample], self.now_ms) {
            tracing::warn!(series = %labels, error = %e, "recorded series dropped");
        }
    }

    fn append_histogram(&mut self, labels: Labels, sample: vigil_wire::histogram::HSample) {
        if let Err(e) = self.store.append_histogram(&labels, &sample, self.now_ms) {
            tracing::warn!(series = %labels, error = %e, "recorded series dropped");
        }
    }
}
