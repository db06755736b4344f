//! Processes: Vigil's binaries (built once per test run) and peers from the system.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path to a Vigil binary, building the binaries once per test run (cargo builds test targets,
/// not other packages' binaries).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            // Every target of the workspace, as `cargo test --workspace --all-targets` (what
            // scripts/test runs) builds them: naming packages, or leaving out the test targets,
            // unifies features differently and rebuilt the binaries (minutes) on every run.
            .args(["build", "-q", "--workspace", "--all-targets"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root().join("target"), PathBuf::from);
        target.join("debug")
    });
    dir.join(name)
}

/// A peer binary from the system (`prometheus`, `prometheus-node-exporter`, ...). Panics with a
/// clear message when missing: scripts/test installs them.
pub fn peer(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from))
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/test (it installs Debian's packages)");
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir(name: &str) -> TempDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("vigil-e2e-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("create temp dir");
    TempDir(p)
}

/// A child process killed on drop; its stderr goes to a log file shown on failure.
pub struct Child {
    pub child: std::process::Child,
    pub log: PathBuf,
    pub name: String,
}

impl Child {
    pub fn spawn(name: &str, cmd: &mut Command, logdir: &Path) -> Child {
        let log = logdir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let f2 = f.try_clone().expect("clone log");
        let child = cmd
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Child {
            child,
            log,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (`TERM`, `KILL`) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit, up to `timeout`; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The secrets the tests configured (tokens, webhook URLs): no process's log may contain one.
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers `s` as a secret (checked against every child's log when it ends) and returns it.
pub fn secret(s: impl Into<String>) -> String {
    let s = s.into();
    SECRETS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(s.clone());
    s
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every log of the suite is checked for every secret any test configured.
        if std::thread::panicking() {
            return;
        }
        let log = self.log_text();
        let leaked: Vec<String> = SECRETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| log.contains(s.as_str()))
            .cloned()
            .collect();
        assert!(
            leaked.is_empty(),
            "a configured secret appears in the log of {}: {leaked:?}",
            self.name
        );
    }
}

/// Waits until `GET url` answers 2xx.
pub fn wait_http(url: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok((code, _)) = crate::http::get(url) {
            if (200..300).contains(&code) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Polls `cond` every 100 ms until it holds; panics after `timeout` with `what` and `context()`
/// (a log, say). Tests wait for events and counts this way, never for a fixed time.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < end,
            "waited {timeout:?} for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
