//! The one wall clock of the aggregator, handed to every component that reads the time, so that
//! a test can drive time instead of waiting for it.

#[cfg(test)]
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use vigil_wire::clock::{wall_ms, HeldTime};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock, held across steps ([`vigil_wire::clock::HeldTime`]). Everything the
/// aggregator times runs on this clock: evaluation, `for` and cooldowns, staleness, notification
/// timers, the log's stamps. The fleet's samples carry the fleet's time; a step of this host's
/// clock alone would move evaluation an hour away from the data: every alert resolved, every
/// series marked stale and the samples after the mark dropped, cooldowns over early. A step is
/// logged once and counted (`vigil_aggregator_clock_steps_total`), then closed at chrony's
/// largest slew rate; how far off the wall clock the aggregator still is shows in
/// `vigil_aggregator_clock_offset_seconds` (a restart takes the wall clock as it finds it).
pub struct SystemClock {
    held: std::sync::Mutex<HeldTime>,
    steps: prometheus_client::metrics::counter::Counter,
    offset: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            held: std::sync::Mutex::new(HeldTime::new(wall_ms(), std::time::Instant::now())),
            steps: Default::default(),
            offset: Default::default(),
        }
    }

    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "vigil_aggregator_clock_steps",
            "Steps of the wall clock (a jump of more than 2 s against the monotonic clock) the aggregator turned into a slew",
            self.steps.clone(),
        );
        r.register(
            "vigil_aggregator_clock_offset_seconds",
            "The aggregator's time minus the wall clock's: not 0 while a step is being slewed away",
            self.offset.clone(),
        );
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        // Both clocks read under the lock: concurrent readers see one order.
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (t, step) = h.read(wall_ms(), std::time::Instant::now());
        let offset = h.offset_ms() as f64 / 1000.0;
        if let Some(step) = step {
            self.steps.inc();
            tracing::warn!(
                step_seconds = step as f64 / 1000.0,
                offset_seconds = offset,
                "wall clock stepped: not followed but slewed (a twelfth of a second a second); evaluation, timers and the window keep the aggregator's time, offset_seconds from the wall clock"
            );
        }
        if offset != self.offset.get() {
            self.offset.set(offset);
        }
        t
    }
}

/// The system's clock, registering its metrics.
pub fn system(r: &mut prometheus_client::registry::Registry) -> SharedClock {
    let c = SystemClock::new();
    c.register(r);
    Arc::new(c)
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
