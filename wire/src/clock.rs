//! The time samples are stamped with: the wall clock's, held across its steps.
//!
//! Every host of a fleet stamps (the agents) or evaluates (the aggregator) by its own wall clock,
//! and the fleet agrees only while each host follows NTP. A step of one host's clock (a bad RTC,
//! a VM restored, `date -s`) would move that host an hour away from the others: an agent's
//! samples out of order and dropped, an aggregator's evaluation on an empty window. `HeldTime`
//! turns a step into a slew, as chrony would have made it: after a step it goes on from the time
//! it had, by the monotonic clock, reports the step for the caller to log and count, and then
//! closes the gap at chrony's largest slew rate (1/12: an hour's step is absorbed in 12 hours,
//! a boot-time correction it saw too in proportion). Time never goes backwards. A step back to
//! where the held time is ends the offset at once. The caller reads both clocks (this module does
//! no I/O but [`wall_ms`]).

use std::time::Instant;

/// A jump of the wall clock against the monotonic clock larger than this is a step.
pub const STEP_MS: i64 = 2_000;

/// The held time closes its gap to the wall clock by 1 ms every this many ms (chrony's
/// `maxslewrate`, 83,333 ppm).
pub const SLEW_DIVISOR: i64 = 12;

/// The wall clock, in ms since the Unix epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Clone)]
pub struct HeldTime {
    /// The last time given, and the monotonic instant it was given at.
    last_ms: i64,
    at: Instant,
    /// Held time minus wall time.
    offset_ms: i64,
}

impl HeldTime {
    pub fn new(wall_ms: i64, at: Instant) -> HeldTime {
        HeldTime {
            last_ms: wall_ms,
            at,
            offset_ms: 0,
        }
    }

    /// The time for wall-clock reading `wall_ms` taken at `at`, and the step this reading found
    /// (the wall clock's jump in ms, signed), if any. Never goes backwards.
    pub fn read(&mut self, wall_ms: i64, at: Instant) -> (i64, Option<i64>) {
        let elapsed = at.saturating_duration_since(self.at).as_millis() as i64;
        // The slew since the last reading: the offset shrinks toward 0.
        let before = self.offset_ms;
        let slew = (elapsed / SLEW_DIVISOR).min(before.abs());
        self.offset_ms -= slew * before.signum();
        let expected = self.last_ms + elapsed + (self.offset_ms - before);
        let mut t = wall_ms + self.offset_ms;
        let jump = t - expected;
        let step = (jump.abs() > STEP_MS).then(|| {
            self.offset_ms -= jump;
            t = expected;
            jump
        });
        // Not backwards either when the wall clock slews back within the tolerance.
        let t = t.max(self.last_ms);
        self.last_ms = t;
        self.at = self.at.max(at);
        (t, step)
    }

    /// The held time minus the wall clock's, in ms: 0 but after a step.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_step_is_held_and_undone_when_the_wall_clock_comes_back() {
        let t0 = Instant::now();
        let w0 = 1_800_000_000_000;
        let mut c = HeldTime::new(w0, t0);
        let s = |n: u64| t0 + Duration::from_secs(n);
        assert_eq!(c.read(w0 + 1_000, s(1)), (w0 + 1_000, None));
        // Back an hour: the time goes on from where it was.
        assert_eq!(
            c.read(w0 + 2_000 - 3_600_000, s(2)),
            (w0 + 2_000, Some(-3_600_000))
        );
        // From there it runs slow by a twelfth until the gap is closed: 83 ms less a second.
        assert_eq!(c.read(w0 + 3_000 - 3_600_000, s(3)), (w0 + 2_917, None));
        assert_eq!(c.offset_ms(), 3_600_000 - 83);
        // Slow corrections of the stepped wall clock are followed (+300 ms over 12 s).
        assert_eq!(c.read(w0 + 15_300 - 3_600_000, s(15)), (w0 + 14_217, None));
        assert_eq!(c.offset_ms(), 3_600_000 - 1_083);
        // The wall clock comes back: the offset is what the slew left (83 ms), and no jump.
        assert_eq!(c.read(w0 + 15_217, s(16)), (w0 + 15_134, Some(3_598_917)));
        assert_eq!(c.offset_ms(), -83);
        // Forward an hour: held too, then closed at the slew rate, running fast.
        assert_eq!(
            c.read(w0 + 16_217 + 3_600_000, s(17)),
            (w0 + 16_217, Some(3_600_000))
        );
        assert_eq!(c.offset_ms(), -3_600_000);
        assert_eq!(c.read(w0 + 28_217 + 3_600_000, s(29)), (w0 + 29_217, None));
    }

    #[test]
    fn a_held_step_is_absorbed_at_the_slew_rate() {
        let t0 = Instant::now();
        let w0 = 1_800_000_000_000;
        let mut c = HeldTime::new(w0, t0);
        assert!(c.read(w0 - 60_000, t0).1.is_some());
        // A minute back: 13 minutes later the held time is the wall clock's again.
        let mut last = w0;
        for k in 1..=13 * 60 {
            let (t, step) = c.read(w0 - 60_000 + k * 1_000, t0 + Duration::from_secs(k as u64));
            assert_eq!(step, None, "{k}");
            assert!(t > last, "{k}: {t} <= {last}");
            last = t;
        }
        assert_eq!(c.offset_ms(), 0);
        assert_eq!(last, w0 - 60_000 + 13 * 60_000);
    }

    #[test]
    fn never_backwards_within_the_tolerance() {
        let t0 = Instant::now();
        let mut c = HeldTime::new(5_000_000, t0);
        let (a, _) = c.read(5_000_000, t0);
        // 1.5 s back: within the tolerance, so not a step, and not followed backwards.
        let (b, step) = c.read(a - 1_500, t0 + Duration::from_millis(10));
        assert!(b >= a, "{b} < {a}");
        assert_eq!(step, None);
    }

    #[test]
    fn readings_out_of_order_by_the_monotonic_clock_do_not_step() {
        let t0 = Instant::now();
        let mut c = HeldTime::new(1_000_000, t0 + Duration::from_secs(5));
        // An instant older than the last one (another thread read it first).
        assert_eq!(c.read(1_000_000, t0), (1_000_000, None));
    }
}
