//! The threads API queries run on, at a lower CPU priority (nice +10) than ingest, health checks
//! and rule evaluation. On a busy machine a heavy Grafana query then takes the CPU the rest leave
//! over instead of competing with remote-write for it: measured with three clients repeating a
//! query over 50k series on 2 cores, it was CPU contention, not a lock, that held pushes up.
//!
//! Linux keeps a nice value per thread. A service whose unit grants no capabilities may raise
//! its threads' nice but never lower it again, so these are threads of their own, never the
//! runtime's blocking pool (which evaluation and SQLite share).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// The nice value of query threads (0 is the default, 19 the lowest priority).
pub const QUERY_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

pub struct QueryPool {
    tx: mpsc::Sender<Job>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the query threads are gone")]
    Stopped,
    #[error("the query panicked")]
    Panicked,
}

impl QueryPool {
    /// `threads` threads at nice `nice` (the API's `[query] max_concurrency`: one per slot).
    pub fn new(threads: usize, nice: i32) -> std::io::Result<QueryPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("vigil-query-{i}"))
                .spawn(move || {
                    lower_priority(nice);
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(QueryPool { tx })
    }

    /// Runs `f` on a query thread and waits for its answer.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
            }))
            .map_err(|_| PoolError::Stopped)?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(PoolError::Panicked),
            Err(_) => Err(PoolError::Stopped),
        }
    }
}

/// Sets this thread's nice value; says why when it cannot (the queries then run at the
/// service's own priority, which is correct, only less kind to ingest).
fn lower_priority(nice: i32) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(error = %e, nice, "cannot lower the priority of a query thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_run_on_threads_of_lower_priority_and_a_panic_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pool = QueryPool::new(2, QUERY_NICE).unwrap();
        let nice = rt
            .block_on(pool.run(|| {
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
            }))
            .unwrap();
        // At least QUERY_NICE: a runner already nicer than that keeps its own value.
        assert!(nice >= QUERY_NICE, "nice {nice}");
        let name = rt
            .block_on(pool.run(|| std::thread::current().name().map(str::to_string)))
            .unwrap();
        assert!(name.unwrap().starts_with("vigil-query-"));
        assert!(matches!(
            rt.block_on(pool.run(|| panic!("boom"))),
            Err(PoolError::Panicked)
        ));
        assert_eq!(
            rt.block_on(pool.run(|| 2 + 2)).unwrap(),
            4,
            "the thread survives"
        );
    }
}
