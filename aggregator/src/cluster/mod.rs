//! High availability: aggregators with the same `[cluster] lease_name` share one DynamoDB lease,
//! and only its holder acts (scaling, replacement, CloudWatch, notifications). Every node ingests
//! and evaluates everything, so a follower is warm when it takes over.
//!
//! The lease is one item in `lease_table`, taken and renewed with conditional writes:
//! - Each write gives the item a new record version (`rvn`). A follower reads the item every
//!   `lease_ttl / 5` and takes the lease when it has seen the same `rvn` for a whole `lease_ttl`
//!   on its own monotonic clock (or when the item says it was released). Only the nodes' clock
//!   *rates* matter, never their wall clocks: the follower's wait starts after the holder's write,
//!   which starts after the holder began it.
//! - Each new holder writes `epoch` one higher than the item it replaced (conditional on that
//!   item's `rvn`), so epochs grow with every holder: the fencing token.
//! - The holder renews every `lease_ttl / 3` (conditional on holder and epoch). Its deadline is
//!   the moment it *began* its last successful renewal + 0.6 × `lease_ttl`, on the monotonic
//!   clock. Effects are sent only before the deadline, and each effect call is cut at
//!   `lease_ttl / 4`: a call begun before the deadline has ended 0.85 × `lease_ttl` after the
//!   renewal began, before any follower can have waited a whole `lease_ttl` since seeing it.
//!   The remaining 0.15 × `lease_ttl` (1.5 s of a 10 s lease) covers the clocks' rate
//!   difference and a pause between the deadline check and the call's start; a pause longer
//!   than that, at exactly that point, is the window that remains (see docs/operations.md).
//! - A holder past its deadline acts no more; when its renewal then fails (a newer epoch holds
//!   the item) it becomes a follower. A holder that stops gracefully releases the lease.
//!
//! A new holder does nothing until the engine has *adopted* the shared decision state of
//! `state_table` (claimed with its epoch, so that an older holder's late write is refused
//! from then on): [`Cluster::may_act`] stays `None` until then.

mod dynamo;
mod lease;
mod parts;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value as Json};
use vigil_rules::duration::format_timestamp_ms;

use crate::clock::SharedClock;
use crate::config;

pub use dynamo::Dynamo;

/// The schema of the items this release writes (lease and state): a newer release may add
/// attributes; one that changes their meaning raises it, and an older release refuses to act
/// on a state item of a newer schema.
pub const SCHEMA: u64 = 1;

/// The newest state item this release reads: schema 1 holds the document itself, schema 2 has
/// it in parts (`parts.rs`). A state in parts is marked 2 (with a placeholder document), so a
/// release that reads only 1 refuses it rather than taking it for "no state yet".
pub const STATE_SCHEMA: u64 = 2;

/// The holder's deadline after the start of its last renewal, as a fraction of the lease.
const DEADLINE_FRACTION: f64 = 0.6;

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseItem {
    pub holder: String,
    pub epoch: u64,
    pub rvn: String,
    pub address: String,
    /// The holder's wall clock at its last write + the lease: for people, not for the protocol.
    pub expires_ms: i64,
}

/// Why a DynamoDB call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A condition failed: someone else holds the lease, or a newer epoch wrote the state.
    #[error("condition failed: {0}")]
    Lost(String),
    #[error("{0}")]
    Failed(String),
}

pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A state item's schema and document, when it has one.
pub type StateDoc = Option<(u64, Vec<u8>)>;

/// The DynamoDB calls the lease and the shared state make.
pub trait Table: Send + Sync {
    fn read_lease<'a>(&'a self, name: &'a str)
        -> BoxFut<'a, Result<Option<LeaseItem>, TableError>>;
    /// Writes `item` if the lease item is absent (`prev` None) or still has `prev` as its rvn.
    fn take_lease<'a>(
        &'a self,
        name: &'a str,
        item: &'a LeaseItem,
        prev: Option<&'a str>,
    ) -> BoxFut<'a, Result<(), TableError>>;
    /// Writes `item` if the lease item still names its holder and epoch.
    fn renew_lease<'a>(
        &'a self,
        name: &'a str,
        item: &'a LeaseItem,
    ) -> BoxFut<'a, Result<(), TableError>>;
    /// Marks the lease free (no holder) if it still names this holder and epoch.
    fn release_lease<'a>(
        &'a self,
        name: &'a str,
        item: &'a LeaseItem,
    ) -> BoxFut<'a, Result<(), TableError>>;
    /// The state item's epoch (0 when there is none): a new holder's epoch is above it even when
    /// the lease item was deleted or restored from an old backup.
    fn state_epoch<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<u64, TableError>>;
    /// Raises the state item's epoch to `epoch` (refused if it is already higher) and returns
    /// its document and schema.
    fn claim_state<'a>(
        &'a self,
        key: &'a str,
        epoch: u64,
    ) -> BoxFut<'a, Result<StateDoc, TableError>>;
    /// Writes the state document if the item's epoch is still `epoch`.
    fn write_state<'a>(
        &'a self,
        key: &'a str,
        epoch: u64,
        doc: &'a [u8],
    ) -> BoxFut<'a, Result<(), TableError>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No `[cluster]`: acts alone.
    Single,
    Leader,
    Follower,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

#[derive(Debug)]
struct Inner {
    role: Role,
    /// This node's epoch while it leads; else the holder's, as last read.
    epoch: u64,
    /// While leading: the end of this node's right to act (monotonic).
    deadline: Option<Instant>,
    /// The epoch whose shared state the engine has adopted.
    adopted: Option<u64>,
    /// The lease item as last read or written.
    item: Option<LeaseItem>,
    /// The shared state written last: (epoch, the evaluation it is of).
    recorded: Option<(u64, i64)>,
    /// The rvn a follower watches, and when it first saw it.
    seen: Option<(String, Instant)>,
    writes: u64,
}

pub struct Cluster {
    cfg: Option<config::Cluster>,
    table: Option<Box<dyn Table>>,
    inner: Mutex<Inner>,
    clock: SharedClock,
    leader: Gauge,
    /// Poked when the shared state should be written (an evaluation committed, a notification
    /// was delivered, an action was carried out).
    pub state_changed: tokio::sync::Notify,
    /// Poked when this node became the holder (the engine adopts the shared state).
    pub promoted: tokio::sync::Notify,
    /// Set at a graceful stop: nothing more is begun, the lease is neither renewed nor taken.
    stopping: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// A cluster of one (no `[cluster]`): always the one that acts.
    pub fn single(clock: SharedClock, r: &mut Registry) -> Cluster {
        Cluster::build(None, None, Role::Single, clock, r)
    }

    pub fn new(
        cfg: config::Cluster,
        table: Box<dyn Table>,
        clock: SharedClock,
        r: &mut Registry,
    ) -> Cluster {
        Cluster::build(Some(cfg), Some(table), Role::Follower, clock, r)
    }

    fn build(
        cfg: Option<config::Cluster>,
        table: Option<Box<dyn Table>>,
        role: Role,
        clock: SharedClock,
        r: &mut Registry,
    ) -> Cluster {
        let leader = Gauge::default();
        r.register(
            "vigil_aggregator_cluster_leader",
            "1 while this aggregator holds the cluster's lease (or runs alone), else 0",
            leader.clone(),
        );
        leader.set(i64::from(role == Role::Single));
        Cluster {
            cfg,
            table,
            inner: Mutex::new(Inner {
                role,
                epoch: 0,
                deadline: None,
                adopted: None,
                item: None,
                recorded: None,
                seen: None,
                writes: 0,
            }),
            clock,
            leader,
            state_changed: tokio::sync::Notify::new(),
            promoted: tokio::sync::Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn clustered(&self) -> bool {
        self.cfg.is_some()
    }

    pub fn role(&self) -> Role {
        self.lock().role
    }

    pub fn is_follower(&self) -> bool {
        self.role() == Role::Follower
    }

    /// The fencing token of this node's right to act now, or `None`: alone, always; in a
    /// cluster, while it holds the lease, before its deadline, with the shared state adopted.
    pub fn may_act(&self) -> Option<u64> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let st = self.lock();
        match st.role {
            Role::Single => Some(0),
            Role::Follower => None,
            Role::Leader => {
                let live = st.deadline.is_some_and(|d| Instant::now() < d);
                (live && st.adopted == Some(st.epoch)).then_some(st.epoch)
            }
        }
    }

    /// Whether this node's decisions are the cluster's: alone, or the holder that has adopted
    /// the shared state (past its deadline or not: what it decides waits for a renewal).
    pub fn holds_state(&self) -> bool {
        let st = self.lock();
        match st.role {
            Role::Single => true,
            Role::Follower => false,
            Role::Leader => st.adopted == Some(st.epoch),
        }
    }

    /// The shared state of `epoch` now holds the evaluation at `at_ms`.
    pub fn recorded_through(&self, epoch: u64, at_ms: i64) {
        self.lock().recorded = Some((epoch, at_ms));
    }

    /// Whether what the evaluation at `at_ms` decided is in the shared state under this node's
    /// epoch (alone: always), so that it may be carried out.
    pub fn recorded(&self, at_ms: i64) -> bool {
        let st = self.lock();
        match st.role {
            Role::Single => true,
            _ => st
                .recorded
                .is_some_and(|(e, at)| e == st.epoch && at_ms <= at),
        }
    }

    /// The epoch whose shared state must be adopted before this node acts.
    pub fn needs_adoption(&self) -> Option<u64> {
        let st = self.lock();
        (st.role == Role::Leader && st.adopted != Some(st.epoch)).then_some(st.epoch)
    }

    /// The engine has loaded the shared state of `epoch`: this node may act from now on.
    pub fn adopted(&self, epoch: u64) {
        let mut st = self.lock();
        if st.role == Role::Leader && st.epoch == epoch {
            st.adopted = Some(epoch);
            tracing::info!(epoch, "shared state adopted: acting as the leader");
        }
    }

    fn cfg(&self) -> Option<&config::Cluster> {
        self.cfg.as_ref()
    }

    /// The state item's key: one per cluster.
    fn state_key(&self) -> String {
        self.cfg()
            .map(|c| format!("{}#state", c.lease_name))
            .unwrap_or_default()
    }

    /// Claims the shared state for `epoch` and returns its document (None: nothing written
    /// yet). A newer epoch's claim means this node no longer leads.
    pub async fn claim_state(&self, epoch: u64) -> Result<Option<Vec<u8>>, String> {
        let Some(t) = &self.table else {
            return Ok(None);
        };
        match t.claim_state(&self.state_key(), epoch).await {
            Ok(Some((schema, _))) if schema > STATE_SCHEMA => Err(format!(
                "the shared state was written by a newer release (schema {schema}; this one reads up to {STATE_SCHEMA}): not acting"
            )),
            Ok(doc) => Ok(doc.map(|(_, d)| d)),
            Err(TableError::Lost(m)) => {
                self.step_down(&format!("a newer holder claimed the shared state ({m})"));
                Err(m)
            }
            Err(TableError::Failed(m)) => Err(m),
        }
    }

    /// Writes the shared state under `epoch`.
    pub async fn write_state(&self, epoch: u64, doc: &[u8]) -> Result<(), String> {
        let Some(t) = &self.table else {
            return Ok(());
        };
        match t.write_state(&self.state_key(), epoch, doc).await {
            Ok(()) => Ok(()),
            Err(TableError::Lost(m)) => {
                self.step_down(&format!("a newer holder wrote the shared state ({m})"));
                Err(m)
            }
            Err(TableError::Failed(m)) => Err(m),
        }
    }

    fn step_down(&self, why: &str) {
        let mut st = self.lock();
        if st.role == Role::Leader {
            tracing::warn!(epoch = st.epoch, reason = %why, "stepping down: follower from now on");
            st.role = Role::Follower;
            st.deadline = None;
            st.seen = None;
            st.adopted = None;
            st.recorded = None;
            self.leader.set(0);
        }
    }

    /// Gives the lease up while running on (this holder cannot act: its shared state cannot be
    /// loaded or written), so that another node may take it.
    pub async fn yield_lease(&self, why: &str) {
        let (Some(cfg), Some(table)) = (self.cfg(), &self.table) else {
            return;
        };
        let item = {
            let mut st = self.lock();
            if st.role != Role::Leader {
                return;
            }
            let epoch = st.epoch;
            self.new_item(cfg, epoch, &mut st)
        };
        self.step_down(why);
        if let Err(e) = table.release_lease(&cfg.lease_name, &item).await {
            tracing::warn!(error = %e, "cannot release the lease; it expires by itself");
        }
    }

    /// A graceful stop, first step: nothing more is begun, the lease is kept (not renewed) while
    /// calls in flight end. Returns this node's epoch when it held the lease and acted.
    pub fn stop_acting(&self) -> Option<u64> {
        let acting = self.may_act();
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        acting.filter(|_| self.clustered())
    }

    /// The longest an effect call may take (a quarter of the lease), or nothing alone.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.cfg()
            .map(|c| Duration::from_millis(c.call_timeout_ms() as u64))
    }

    /// A graceful stop, last step: gives the lease up; a follower takes it at its next look.
    pub async fn release(&self) {
        let (Some(cfg), Some(table)) = (self.cfg(), &self.table) else {
            return;
        };
        let item = {
            let mut st = self.lock();
            if st.role != Role::Leader {
                return;
            }
            st.role = Role::Follower;
            st.deadline = None;
            self.leader.set(0);
            let epoch = st.epoch;
            self.new_item(cfg, epoch, &mut st)
        };
        match table.release_lease(&cfg.lease_name, &item).await {
            Ok(()) => tracing::info!(epoch = item.epoch, "lease released"),
            Err(e) => tracing::warn!(error = %e, "cannot release the lease; it expires by itself"),
        }
    }

    /// The holder to pass admin writes to, as last read, when it is another node: its node id
    /// and address.
    pub fn leader_elsewhere(&self) -> Option<(String, String)> {
        let cfg = self.cfg()?;
        let st = self.lock();
        if st.role == Role::Leader {
            return None;
        }
        // Never to itself (two nodes left on the packaged loopback listen address advertise the
        // same one), never to what is not plainly host:port.
        st.item
            .as_ref()
            .filter(|i| {
                !i.holder.is_empty()
                    && i.holder != cfg.node_id
                    && i.address != cfg.advertise_address
                    && config::host_port(&i.address)
            })
            .map(|i| (i.holder.clone(), i.address.clone()))
    }

    /// This node's name in the cluster (the host name alone).
    pub fn node_id(&self) -> String {
        self.cfg()
            .map_or_else(vigil_config::hostname, |c| c.node_id.clone())
    }

    /// The cluster as Alertmanager's `GET /api/v2/status` shows it (amtool's `cluster show`):
    /// `disabled` alone; in a pair, `ready` while the lease has a live holder (`settling` else),
    /// with this node and the holder as the peers.
    pub fn alertmanager_status(&self) -> Json {
        let st = self.lock();
        let node = self.node_id();
        let Some(cfg) = self.cfg().filter(|_| st.role != Role::Single) else {
            return json!({"name": node, "status": "disabled", "peers": []});
        };
        let mut peers = vec![json!({"name": node, "address": cfg.advertise_address})];
        // A holder whose lease has run out is nobody's leader: settling until it is taken.
        let now = vigil_wire::clock::wall_ms();
        let holder = st
            .item
            .as_ref()
            .filter(|i| !i.holder.is_empty() && i.expires_ms > now);
        if let Some(i) = holder.filter(|i| i.holder != node) {
            peers.push(json!({"name": i.holder, "address": i.address}));
        }
        let status = if holder.is_some() {
            "ready"
        } else {
            "settling"
        };
        json!({"name": node, "status": status, "peers": peers})
    }

    /// `GET /api/v1/cluster`'s data.
    pub fn status(&self) -> Json {
        let st = self.lock();
        let node = self.node_id();
        match st.role {
            Role::Single => json!({"node_id": node, "role": "single", "leader": node}),
            role => {
                let item = st.item.as_ref().filter(|i| !i.holder.is_empty());
                json!({
                    "node_id": node,
                    "role": role.as_str(),
                    "leader": item.map(|i| i.holder.clone()),
                    "leader_address": item.map(|i| i.address.clone()),
                    "epoch": st.epoch,
                    "lease_expires": item.map(|i| format_timestamp_ms(i.expires_ms)),
                    "acting": role == Role::Leader
                        && st.adopted == Some(st.epoch)
                        && st.deadline.is_some_and(|d| Instant::now() < d),
                    "lease_ttl_seconds": self.cfg().map(|c| c.lease_ttl_ms as f64 / 1000.0),
                })
            }
        }
    }
}
