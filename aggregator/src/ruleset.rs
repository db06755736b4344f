//! The rules being evaluated: loaded from the files the config names (all of them or none),
//! replaced whole on reload (SIGHUP, `POST /-/reload`), read by the engine at each tick, by the
//! fleet (which groups to describe) and by the API.

use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use vigil_rules::evaluator::RuleSet;
use vigil_rules::rulefile::{self, Context};

use crate::config::{self, Config};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Why the rules could not be loaded: every problem, each naming its file, line and column.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

pub struct Rules {
    cfg: Config,
    current: RwLock<Arc<RuleSet>>,
    last_error: Mutex<Option<String>>,
    reloads: Family<ReloadLabels, Counter>,
}

/// Loads every rule file the config names; all-or-nothing.
pub fn load_rules(cfg: &Config) -> Result<RuleSet, LoadError> {
    let mut sources = Vec::new();
    for p in config::expand_rule_files(&cfg.rule_files) {
        let text =
            std::fs::read_to_string(&p).map_err(|e| LoadError(format!("{}: {e}", p.display())))?;
        sources.push((p.display().to_string(), text));
    }
    sources.extend(cfg.builtin_rules.iter().cloned());
    let ctx = Context {
        receivers: Some(cfg.receivers.iter().map(|r| r.name.clone()).collect()),
    };
    let mut files = rulefile::load_all(&sources, &ctx).map_err(|errs| {
        LoadError(
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    // `[rules] query_offset` for the groups that set none.
    for g in files.iter_mut().flat_map(|f| f.groups.iter_mut()) {
        g.query_offset_ms.get_or_insert(cfg.query_offset_ms);
    }
    Ok(RuleSet {
        files,
        default_interval_ms: cfg.evaluation_interval_ms,
    })
}

impl Rules {
    pub fn new(cfg: Config, rules: RuleSet, r: &mut Registry) -> Rules {
        let reloads = Family::default();
        r.register(
            "vigil_aggregator_reloads",
            "Rule reloads by result",
            reloads.clone(),
        );
        Rules {
            cfg,
            current: RwLock::new(Arc::new(rules)),
            last_error: Mutex::new(None),
            reloads,
        }
    }

    pub fn current(&self) -> Arc<RuleSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The error of the last reload, when it failed (the previous rules keep running).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Auto Scaling groups the policies name, sorted, once each.
    pub fn groups(&self) -> Vec<String> {
        let rules = self.current();
        let mut names: Vec<String> = rules
            .scaling()
            .map(|p| p.asg.clone())
            .chain(rules.replace().map(|p| p.asg.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Reloads the rule files: all of them, or none (the previous rules keep running). The
    /// engine takes the new set at its next tick.
    pub fn reload(&self) -> Result<usize, LoadError> {
        let res = load_rules(&self.cfg);
        let result = if res.is_ok() { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match res {
            Ok(set) => {
                let n = set.rule_count();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                *last = None;
                tracing::info!(rules = n, "rules reloaded");
                Ok(n)
            }
            Err(e) => {
                *last = Some(e.to_string());
                tracing::error!(error = %e, "reload failed: the previous rules keep running");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default (no config file) evaluates the demo rules, in a dry run, with no
    /// AWS: what `scripts/run` shows a newcomer.
    #[test]
    fn the_embedded_default_runs_the_demo_rules() {
        let cfg = Config::embedded();
        assert!(cfg.dry_run && !cfg.aws_configured && cfg.rule_files.is_empty());
        let rules = load_rules(&cfg).expect("the demo rules load");
        assert_eq!(rules.files.len(), 1);
        assert_eq!(
            rules.scaling().map(|p| p.asg.as_str()).collect::<Vec<_>>(),
            ["demo-this-host"]
        );
        assert!(rules.groups().any(|g| g.name == "this-host"));
    }
}
