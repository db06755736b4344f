//! The lease loop: the holder renews, a follower watches and takes (see the module above for
//! the protocol and its margins).

use std::time::{Duration, Instant};

use super::{Cluster, Inner, LeaseItem, Role, Table, TableError, DEADLINE_FRACTION};
use crate::config;

impl Cluster {
    /// Holds, renews and takes the lease forever.
    pub async fn run(&self) {
        let (Some(cfg), Some(table)) = (self.cfg(), &self.table) else {
            return;
        };
        let ttl = Duration::from_millis(cfg.lease_ttl_ms as u64);
        let mut warned = false;
        let mut renewed = true;
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let role = self.role();
            let began = Instant::now();
            match role {
                Role::Leader => renewed = self.renew(cfg, table.as_ref(), ttl).await,
                _ => match self.watch(cfg, table.as_ref(), ttl).await {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "cannot read the lease or the shared state's epoch; following");
                        warned = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read the lease"),
                },
            }
            // The holder renews every third of the lease from the start of its last renewal. A
            // follower reads every fifth (so it sees a renewal soon after it is made), and once
            // more the moment the record it watches would have lived a whole lease.
            // A renewal that failed is tried again soon, before the deadline if it can be.
            let next = if self.role() == Role::Leader {
                began + if renewed { ttl / 3 } else { ttl / 10 }
            } else {
                let expiry = self.lock().seen.as_ref().map(|(_, since)| *since + ttl);
                let poll = began + ttl / 5;
                // An expiry already past (the take failed: DynamoDB down) waits for the poll.
                expiry.filter(|e| *e < poll && *e > began).unwrap_or(poll)
            };
            tokio::time::sleep_until(next.into()).await;
        }
    }

    pub(super) fn new_item(&self, cfg: &config::Cluster, epoch: u64, st: &mut Inner) -> LeaseItem {
        st.writes += 1;
        LeaseItem {
            holder: cfg.node_id.clone(),
            epoch,
            rvn: format!(
                "{}:{}:{}:{}",
                cfg.node_id,
                std::process::id(),
                epoch,
                st.writes
            ),
            address: cfg.advertise_address.clone(),
            expires_ms: self.clock.now_ms() + cfg.lease_ttl_ms,
        }
    }

    /// Renews the lease; whether the renewal went through.
    async fn renew(&self, cfg: &config::Cluster, table: &dyn Table, ttl: Duration) -> bool {
        let (item, deadline) = {
            let mut st = self.lock();
            let epoch = st.epoch;
            (self.new_item(cfg, epoch, &mut st), st.deadline)
        };
        let began = Instant::now();
        if deadline.is_some_and(|d| began >= d) {
            tracing::warn!(epoch = item.epoch, "past this holder's deadline (frozen or slow renewals): acting no more until renewed");
        }
        match table.renew_lease(&cfg.lease_name, &item).await {
            Ok(()) => {
                let mut st = self.lock();
                if st.role == Role::Leader && st.epoch == item.epoch {
                    st.deadline = Some(began + ttl.mul_f64(DEADLINE_FRACTION));
                    st.item = Some(item);
                }
                true
            }
            Err(TableError::Lost(m)) => {
                self.step_down(&format!("the lease is no longer this node's ({m})"));
                false
            }
            Err(TableError::Failed(m)) => {
                let past = self.lock().deadline.is_none_or(|d| Instant::now() >= d);
                tracing::warn!(error = %m, past_deadline = past, "cannot renew the lease");
                if past {
                    self.step_down("cannot renew the lease before this holder's deadline");
                }
                false
            }
        }
    }

    /// One follower's look at the lease: takes it when free or expired.
    async fn watch(
        &self,
        cfg: &config::Cluster,
        table: &dyn Table,
        ttl: Duration,
    ) -> Result<(), String> {
        let found = table
            .read_lease(&cfg.lease_name)
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        // The item is missing and has not been missing for a whole lease yet.
        let mut fresh = false;
        let prev = {
            let mut st = self.lock();
            match &found {
                // No item: taken at once only in a cluster that never had a holder (checked
                // against the state's epoch below); else (deleted by hand, a table restored)
                // after a whole lease of absence, when the holder that renewed last is past
                // its deadline.
                None => match &st.seen {
                    Some((rvn, since)) if rvn.is_empty() => {
                        fresh = now.duration_since(*since) < ttl;
                        Some(None)
                    }
                    _ => {
                        st.seen = Some((String::new(), now));
                        fresh = true;
                        Some(None)
                    }
                },
                Some(it) if it.holder.is_empty() => Some(Some(it.rvn.clone())),
                Some(it) => {
                    st.epoch = it.epoch;
                    st.item = Some(it.clone());
                    match &st.seen {
                        Some((rvn, since)) if *rvn == it.rvn => {
                            (now.duration_since(*since) >= ttl).then(|| Some(it.rvn.clone()))
                        }
                        _ => {
                            st.seen = Some((it.rvn.clone(), now));
                            None
                        }
                    }
                }
            }
        };
        let Some(prev) = prev else {
            return Ok(());
        };
        // Above both the lease's and the state's epoch: a lease item deleted (or restored from an
        // old backup) while the state item kept a higher one would otherwise give claims the
        // state refuses until the epochs climbed past it, one lease at a time.
        let floor = table
            .state_epoch(&self.state_key())
            .await
            .map_err(|e| format!("cannot read the shared state's epoch: {e}"))?;
        if fresh && floor > 0 {
            return Ok(());
        }
        let (item, old) = {
            let mut st = self.lock();
            let epoch = found.as_ref().map_or(0, |i| i.epoch).max(floor) + 1;
            let old = found.as_ref().map(|i| i.holder.clone());
            (self.new_item(cfg, epoch, &mut st), old)
        };
        let began = Instant::now();
        match table
            .take_lease(&cfg.lease_name, &item, prev.as_deref())
            .await
        {
            Ok(()) => {
                {
                    let mut st = self.lock();
                    st.role = Role::Leader;
                    st.epoch = item.epoch;
                    st.adopted = None;
                    st.recorded = None;
                    st.deadline = Some(began + ttl.mul_f64(DEADLINE_FRACTION));
                    st.item = Some(item.clone());
                    st.seen = None;
                }
                self.leader.set(1);
                tracing::info!(
                    epoch = item.epoch,
                    previous = old.as_deref().filter(|h| !h.is_empty()).unwrap_or("none"),
                    "lease taken: leader once the shared state is adopted"
                );
                self.promoted.notify_one();
                Ok(())
            }
            // Another node was quicker, or the holder renewed meanwhile.
            Err(TableError::Lost(_)) => Ok(()),
            Err(TableError::Failed(m)) => Err(m),
        }
    }
}
