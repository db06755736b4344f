//! A mutation fuzzer that runs on stable Rust, inside `cargo test`: `cargo fuzz` needs nightly,
//! and AFL needs its compiler wrapper and a fork server per target. Each crate's tests call
//! [`run`] once per parser with seeds (the corpus under `fuzz/corpus/<target>/`, plus what the
//! test adds) and a function that feeds one input to the parser; every input is
//!
//! - **caught** if it panics (the input is written to `target/fuzz-failures/<target>/`),
//! - **timed**: one that takes longer than the limit counts as a hang, and one still running
//!   past it stops the whole process with the input written out (a loop never ends a run
//!   silently),
//! - **watched for large allocations**: this crate installs the process's allocator, which
//!   counts any single allocation over [`OVERSIZE`] made while an input runs: a length read from
//!   the input and trusted is an unbounded allocation, whatever memory the machine has.
//!
//! There is no coverage feedback: inputs are mutations of the seeds (bit flips, interesting
//! bytes, deletions, insertions, duplications, dictionary tokens, splices of two seeds), and one
//! in eight mutants joins the pool, so mutations stack. Deterministic: the same target, seeds
//! and count give the same inputs. `VIGIL_FUZZ_INPUTS` sets the count (default 2,000, the short
//! pass of `cargo test`; `bench/fuzz.sh` runs 100,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A single allocation larger than this, made while an input runs, is counted as unbounded.
pub const OVERSIZE: usize = 64 << 20;
/// Refused outright (the process would die of it): counted too.
const REFUSED: usize = 4 << 30;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static OVERSIZED: Cell<u64> = const { Cell::new(0) };
}

/// The process's allocator: the system's, counting oversized allocations on fuzzing threads.
pub struct Watching;

impl Watching {
    fn check(size: usize) -> bool {
        if size <= OVERSIZE {
            return true;
        }
        let armed = ARMED.try_with(Cell::get).unwrap_or(false);
        if armed {
            let _ = OVERSIZED.try_with(|c| c.set(c.get() + 1));
        }
        !(armed && size > REFUSED)
    }
}

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Watching::check(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Watching::check(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the system allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Watching::check(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// What one target's run found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub target: String,
    pub inputs: u64,
    /// Inputs the parser accepted (a measure of how deep the run went).
    pub accepted: u64,
    pub panics: u64,
    /// Inputs that took longer than the time limit.
    pub hangs: u64,
    /// Single allocations over [`OVERSIZE`].
    pub oversized: u64,
    pub slowest: Duration,
    pub elapsed: Duration,
    /// Where the failing inputs were written.
    pub failures: Vec<PathBuf>,
}

impl Report {
    /// Panics (the test fails) unless the run was clean; prints the line `bench/fuzz.sh` reads.
    pub fn assert_clean(&self) {
        println!(
            "fuzz {}: {} inputs ({} accepted), {} panics, {} hangs, {} oversized allocations; slowest input {} ms; {:.1} s",
            self.target,
            self.inputs,
            self.accepted,
            self.panics,
            self.hangs,
            self.oversized,
            self.slowest.as_millis(),
            self.elapsed.as_secs_f64()
        );
        assert!(
            self.panics == 0 && self.hangs == 0 && self.oversized == 0,
            "fuzz {}: {} panics, {} hangs, {} oversized allocations; inputs in {:?}",
            self.target,
            self.panics,
            self.hangs,
            self.oversized,
            self.failures
        );
    }
}

/// How many inputs a run tries: `VIGIL_FUZZ_INPUTS`, default 2,000.
pub fn inputs() -> u64 {
    std::env::var("VIGIL_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// One input's time limit: `VIGIL_FUZZ_TIME_LIMIT_MS`, default 2 s (10 s in a debug build).
pub fn time_limit() -> Duration {
    let default = if cfg!(debug_assertions) {
        10_000
    } else {
        2_000
    };
    Duration::from_millis(
        std::env::var("VIGIL_FUZZ_TIME_LIMIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// The seeds in the repository for `target`: every file of `fuzz/corpus/<target>/`.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = repo().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Every file matching `dir/*.ext` under the repository, as seeds.
pub fn files(dir: &str, ext: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == ext));
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// A scratch directory for targets that read files: in memory (`/dev/shm`) when there is one,
/// so that the fsyncs of the code under test cost nothing.
pub fn scratch(target: &str) -> PathBuf {
    let base = PathBuf::from("/dev/shm");
    let base = if base.is_dir() {
        base
    } else {
        std::env::temp_dir()
    };
    base.join(format!("vigil-fuzz-{target}-{}", std::process::id()))
}

/// Rewrites the checksum of every whole frame (`[len u32 LE][crc32 u32 LE][body]`) in `buf`, so
/// that mutated bodies get past the check and reach the decoders behind it.
pub fn fix_frame_checksums(buf: &mut [u8]) {
    let mut at = 0;
    while let Some(head) = buf.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(body) = buf.get(at + 8..at + 8 + len) else {
            return;
        };
        let crc = crc32fast::hash(body);
        buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at += 8 + len;
    }
}

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\x01\n\r\t \"'\\{}[]()=,:;.#-+0123456789eE_aZ\xc3\xa9";

fn mutate(
    rng: &mut Rng,
    pool: &[Vec<u8>],
    seeds: usize,
    dict: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    // Mostly a seed with a mutation or two (most parsers refuse an input at its first bad
    // byte, so stacked damage stays shallow); now and then a pooled mutant, damaged more.
    let deep = rng.below(4) == 0;
    let from = if deep { pool.len() } else { seeds };
    let mut v = pool[rng.below(from)].clone();
    let rounds = if deep {
        1 + rng.below(8)
    } else {
        1 + rng.below(2)
    };
    for _ in 0..rounds {
        let len = v.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let n = 1 + rng.below((len - a).min(64));
                v.drain(a..a + n);
            }
            4 => {
                let a = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(a..a, bytes);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let n = 1 + rng.below((len - a).min(256));
                let copy = v[a..a + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, copy);
            }
            6 if !dict.is_empty() => {
                let t = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                v.splice(at..at, t.iter().copied());
            }
            7 if !dict.is_empty() && len > 0 => {
                // Replace a run with a token.
                let t = dict[rng.below(dict.len())];
                let a = rng.below(len);
                let n = rng.below((len - a).min(t.len() + 4));
                v.splice(a..a + n, t.iter().copied());
            }
            8 => {
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            9 if len > 0 => v.truncate(rng.below(len)),
            10 if len > 1 => {
                // A number grows large: many parsers read lengths and counts.
                let i = rng.below(len);
                let n = 1 + rng.below(8);
                v.splice(i..i, std::iter::repeat_n(b'9', n));
            }
            _ => {}
        }
    }
    v.truncate(max_len);
    v
}

/// Watches the input in flight: one still running past the limit ends the process, input
/// written out (a thread stuck in a loop cannot be stopped any other way).
/// The input in flight and when it began.
type InFlight = Arc<Mutex<Option<(Instant, Vec<u8>)>>>;

struct Watchdog {
    current: InFlight,
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(target: &str, limit: Duration) -> Watchdog {
        let current: InFlight = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, target) = (current.clone(), stop.clone(), target.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let Ok(g) = c.lock() else { return };
                if let Some((started, input)) = g.as_ref() {
                    // Five times the limit: the input is stuck, not slow.
                    if started.elapsed() > limit * 5 {
                        let path = save(&target, "hang", input);
                        eprintln!(
                            "fuzz {target}: an input has run for {:?}; written to {}",
                            started.elapsed(),
                            path.display()
                        );
                        std::process::exit(3);
                    }
                }
            }
        });
        Watchdog { current, stop }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn save(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = repo().join("target/fuzz-failures").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::write(&path, input);
    path
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Panics on fuzzing threads are counted and their inputs saved, not printed (other tests'
/// panics print as usual).
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `target`: [`inputs`] inputs (the seeds first, then mutants), each given to `f`.
/// `dict` holds tokens of the input's language; `max_len` bounds an input.
pub fn run(
    target: &str,
    seeds: Vec<Vec<u8>>,
    dict: &[&[u8]],
    max_len: usize,
    f: impl Fn(&[u8]) -> bool,
) -> Report {
    quiet_panics();
    let limit = time_limit();
    let count = inputs();
    let mut pool: Vec<Vec<u8>> = seeds;
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let seed_count = pool.len();
    let mut rng = Rng(target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1);
    let dog = Watchdog::start(target, limit);
    let mut r = Report {
        target: target.to_string(),
        ..Report::default()
    };
    let started = Instant::now();
    for i in 0..count {
        let input = if (i as usize) < seed_count {
            pool[i as usize].clone()
        } else {
            mutate(&mut rng, &pool, seed_count, dict, max_len)
        };
        if let Ok(mut g) = dog.current.lock() {
            *g = Some((Instant::now(), input.clone()));
        }
        QUIET.with(|q| q.set(true));
        ARMED.with(|a| a.set(true));
        OVERSIZED.with(|o| o.set(0));
        let t = Instant::now();
        let res = panic::catch_unwind(AssertUnwindSafe(|| f(&input)));
        let took = t.elapsed();
        ARMED.with(|a| a.set(false));
        QUIET.with(|q| q.set(false));
        let oversized = OVERSIZED.with(Cell::get);
        if let Ok(mut g) = dog.current.lock() {
            *g = None;
        }
        r.inputs += 1;
        r.slowest = r.slowest.max(took);
        let mut failed = None;
        if matches!(res, Ok(true)) {
            r.accepted += 1;
        }
        if res.is_err() {
            r.panics += 1;
            failed = Some("panic");
        }
        if took > limit {
            r.hangs += 1;
            failed = Some("hang");
        }
        if oversized > 0 {
            r.oversized += oversized;
            failed = Some("oversized");
        }
        if let Some(kind) = failed {
            if r.failures.len() < 20 {
                r.failures.push(save(target, kind, &input));
            }
        }
        if i as usize >= seed_count && rng.below(8) == 0 {
            if pool.len() < seed_count + 256 {
                pool.push(input);
            } else {
                let at = seed_count + rng.below(256);
                pool[at] = input;
            }
        }
    }
    r.elapsed = started.elapsed();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_and_oversized_allocations_are_caught_and_counted() {
        let r = run("self-test", vec![b"seed".to_vec()], &[b"boom"], 64, |b| {
            if b.windows(4).any(|w| w == b"boom") {
                panic!("found it");
            }
            if b.first() == Some(&b'!') {
                let v: Vec<u8> = Vec::with_capacity(OVERSIZE + 1);
                std::hint::black_box(v);
            }
            true
        });
        assert!(r.panics > 0, "{r:?}");
        assert!(r.inputs >= 1_000);
        let clean = run("self-test-clean", vec![b"!".to_vec()], &[], 64, |b| {
            std::hint::black_box(b.len());
            false
        });
        assert_eq!((clean.panics, clean.hangs, clean.oversized), (0, 0, 0));
        let big = run("self-test-big", vec![b"!".to_vec()], &[], 1, |_| {
            let v: Vec<u8> = Vec::with_capacity(OVERSIZE + 1);
            std::hint::black_box(v);
            false
        });
        assert_eq!(big.oversized, big.inputs);
        assert_eq!(r.accepted, r.inputs - r.panics);
        let _ = std::fs::remove_dir_all(repo().join("target/fuzz-failures/self-test"));
        let _ = std::fs::remove_dir_all(repo().join("target/fuzz-failures/self-test-big"));
    }
}
