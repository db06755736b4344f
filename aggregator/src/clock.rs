//! The one wall clock of the aggregator, handed to every component that reads the time, so that
//! a test can drive time instead of waiting for it.

#[cfg(test)]
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// How long to wait before attempt `attempts + 1` of something that failed: 1 s doubling to
/// 5 min, and up to a quarter more from the clock's low bits (jitter without an RNG).
pub fn backoff_ms(attempts: u32, now_ms: i64) -> i64 {
    let base = 1_000i64.saturating_mul(1 << attempts.min(8)).min(300_000);
    base + (now_ms.rem_euclid(1000) * base / 4000)
}

/// A clock that moves only when told to (tests).
#[cfg(test)]
#[derive(Default)]
pub struct ManualClock(AtomicI64);

#[cfg(test)]
impl ManualClock {
    pub fn at(ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(ms)))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
