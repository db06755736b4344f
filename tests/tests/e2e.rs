//! End-to-end tests: Vigil's binaries against real peers on 127.0.0.1. One test binary; one module
//! per subject.

#[path = "e2e/agent.rs"]
mod agent;

#[path = "e2e/aggregator.rs"]
mod aggregator;

#[path = "e2e/actions.rs"]
mod actions;

#[path = "e2e/console.rs"]
mod console;

#[path = "e2e/cluster.rs"]
mod cluster;

#[path = "e2e/tls.rs"]
mod tls;

#[path = "e2e/window.rs"]
mod window;

#[path = "e2e/campaigns.rs"]
mod campaigns;

#[path = "e2e/oncall.rs"]
mod oncall;

#[path = "e2e/histograms.rs"]
mod histograms;

#[path = "e2e/history.rs"]
mod history;

#[path = "e2e/remote.rs"]
mod remote;

#[path = "e2e/engine.rs"]
mod engine;

#[path = "e2e/tier.rs"]
mod tier;
