//! An HA pair for the tests and the takeover benchmark: `moto_server`, two aggregators on one
//! lease (`[cluster]`), each calling AWS through its own fault proxy so that every AWS call is
//! counted per node, and a `vigil-agent` pushing to both (two `[[push]]` targets), scraping an
//! application whose CPU and error figures the test sets.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::aws::{Aws, Moto, ENV};
use crate::http::get;
use crate::proxy::{Call, Proxy};
use crate::{bin, free_port, tempdir, wait_http, wait_until, Child, TempDir};

/// The lease of the tests: renewals every 4 s, calls cut at 3 s (moto on a busy 2-core machine
/// has answered in over a second), a takeover within 24 s.
pub const TTL_S: u64 = 12;
/// The AWS calls that change something: only the acting node may make them.
pub const EFFECTS: [&str; 4] = [
    "SetDesiredCapacity",
    "SetInstanceHealth",
    "PutMetricData",
    "Publish",
];

const RULES: &str = r#"
[[group]]
name = "app"
[[group.alert]]
alert = "AppErrors"
expr = 'max by (asg) (app_errors{asg="web"}) > 0'
labels = { severity = "page" }

[[group.record]]
record = "asg:app_cpu:avg"
expr = 'avg by (asg) (app_cpu)'
cloudwatch = { metric_name = "AppCpu", dimensions = ["asg"] }

[[scaling]]
name = "web-cpu"
asg = "web"
min = 2
max = 10
expr = 'avg(app_cpu{asg="web"})'
target = 0.5
tolerance = 0.1
scale_out_cooldown = "10s"   # longer than the way back from the app through the agent
scale_in_cooldown = "1h"
scale_in_stabilization = "1h"
"#;

pub struct Node {
    pub name: &'static str,
    pub proxy: Proxy,
    pub base: String,
    cfg: std::path::PathBuf,
}

/// The application the agent scrapes: `app_cpu` and `app_errors`, as the test sets them.
fn spawn_app(figures: Arc<Mutex<(f64, f64)>>) -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind app");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let (cpu, errors) = *figures.lock().expect("lock");
            let body = format!(
                "# TYPE app_cpu gauge\napp_cpu {cpu}\n# TYPE app_errors gauge\napp_errors {errors}\n"
            );
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

pub struct Pair {
    pub ttl_s: u64,
    /// (CPU, errors) the application reports.
    figures: Arc<Mutex<(f64, f64)>>,
    agent: Option<Child>,
    pub dir: TempDir,
    _moto: Moto,
    pub aws: Aws,
    queue: String,
    pub nodes: [Node; 2],
    /// The size of the shared state's parts (`VIGIL_STATE_PART_BYTES`): small, a state of a few
    /// kilobytes is written in many parts, as one of megabytes is.
    pub state_part_bytes: Option<usize>,
}

impl Pair {
    pub fn new(name: &str) -> Pair {
        Pair::with_ttl(name, TTL_S)
    }

    /// A pair on a lease of `ttl_s` seconds.
    pub fn with_ttl(name: &str, ttl_s: u64) -> Pair {
        let dir = tempdir(name);
        let moto = Moto::start(dir.path());
        let aws = Aws::new(&moto.url());
        aws.create_group("web", 2, 10, 2);
        let (topic, queue) = aws.topic_with_queue("oncall");
        std::fs::write(dir.path().join("rules.toml"), RULES).expect("rules");
        let node = |name: &'static str| {
            let proxy = Proxy::start(moto.port);
            let port = free_port();
            let cfg = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    r#"[server]
listen = "127.0.0.1:{port}"

[storage]
stale_after = "5s"
state_dir = "{state}"

[rules]
files = ["{rules}"]
evaluation_interval = "1s"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[cloudwatch]
flush_interval = "1s"

[cluster]
node_id = "{name}"
lease_name = "web-tier"
lease_ttl = "{ttl_s}s"
create_tables = true

[notify]
group_by = ["alertname", "asg"]
group_wait = "1s"
group_interval = "2s"
repeat_interval = "1h"

[[receiver]]
name = "oncall"
sns_topic_arn = "{topic}"
"#,
                    state = dir.path().join(format!("state-{name}")).display(),
                    rules = dir.path().join("rules.toml").display(),
                    endpoint = proxy.url(),
                ),
            )
            .expect("config");
            Node {
                name,
                proxy,
                base: format!("http://127.0.0.1:{port}"),
                cfg,
            }
        };
        let nodes = [node("agg-a"), node("agg-b")];
        let figures = Arc::new(Mutex::new((0.5, 0.0)));
        let app = spawn_app(figures.clone());
        let agent_cfg = dir.path().join("agent.toml");
        std::fs::write(
            &agent_cfg,
            format!(
                r#"[agent]
interval = "1s"
host_metrics = false

[identity]
source = "static"
instance = "i-ha"
asg = "web"

[[scrape]]
url = "http://127.0.0.1:{app}/metrics"
timeout = "1s"

[[push]]
name = "agg-a"
url = "{}/api/v1/write"
timeout = "2s"

[[push]]
name = "agg-b"
url = "{}/api/v1/write"
timeout = "2s"

[buffer]
dir = "{}"

[listen]
address = "127.0.0.1:{}"
"#,
                nodes[0].base,
                nodes[1].base,
                dir.path().join("agent-spool").display(),
                free_port()
            ),
        )
        .expect("agent config");
        let agent = Child::spawn(
            "agent",
            Command::new(bin("vigil-agent"))
                .arg("--config")
                .arg(&agent_cfg),
            dir.path(),
        );
        Pair {
            ttl_s,
            figures,
            agent: Some(agent),
            dir,
            _moto: moto,
            aws,
            queue,
            nodes,
            state_part_bytes: None,
        }
    }

    pub fn start(&self, i: usize) -> Child {
        let n = &self.nodes[i];
        let mut cmd = Command::new(bin("vigil-aggregator"));
        cmd.arg("--config").arg(&n.cfg).envs(ENV);
        if let Some(b) = self.state_part_bytes {
            cmd.env("VIGIL_STATE_PART_BYTES", b.to_string());
        }
        let c = Child::spawn(n.name, &mut cmd, self.dir.path());
        assert!(
            wait_http(&format!("{}/-/ready", n.base), Duration::from_secs(60)),
            "{} did not start:\n{}",
            n.name,
            c.log_text()
        );
        c
    }

    /// What the application reports from now on: `load` spread over the group's instances (its
    /// CPU is `load / desired`, so a scale-out brings it back to the target) and its errors. The
    /// agent scrapes it every second and pushes to both aggregators.
    pub fn push(&self, load: f64, errors: f64) {
        let cpu = load / f64::from(self.aws.group("web").0.max(1));
        *self.figures.lock().expect("lock") = (cpu, errors);
    }

    /// The agent's log.
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(Child::log_text).unwrap_or_default()
    }

    pub fn cluster(&self, i: usize) -> serde_json::Value {
        get(&format!("{}/api/v1/cluster", self.nodes[i].base))
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|v| v["data"].clone())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn acting(&self, i: usize) -> bool {
        let c = self.cluster(i);
        c["role"] == "leader" && c["acting"] == true
    }

    /// The effect calls node `i`'s proxy has seen.
    pub fn effects(&self, i: usize) -> Vec<Call> {
        self.nodes[i]
            .proxy
            .calls()
            .into_iter()
            .filter(|c| EFFECTS.contains(&c.action.as_str()))
            .collect()
    }

    pub fn count(&self, i: usize, action: &str) -> usize {
        self.nodes[i].proxy.calls_of(action).len()
    }

    /// Sets the application's figures (4 times a second) until `cond` holds (panics after `timeout` with both logs).
    pub fn push_until(
        &self,
        what: &str,
        timeout: Duration,
        load: f64,
        errors: f64,
        logs: &[&Child],
        mut cond: impl FnMut() -> bool,
    ) {
        let began = Instant::now();
        let end = began + timeout;
        let mut last = began - Duration::from_secs(1);
        // What the wait saw, not a second look: a condition may hold only for a moment (the
        // shared state read between two of its writes), and a second read can miss it.
        let mut met = false;
        wait_until(
            timeout,
            what,
            || {
                if last.elapsed() >= Duration::from_millis(250) {
                    self.push(load, errors);
                    last = Instant::now();
                }
                met = met || cond();
                met || Instant::now() >= end
            },
            || {
                logs.iter()
                    .map(|c| c.log_text())
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
        println!("{what}: {} ms", began.elapsed().as_millis());
        assert!(
            met,
            "waited {timeout:?} for {what}\n{}",
            logs.iter()
                .map(|c| c.log_text())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Whether the shared state records every notification as delivered (its outbox is
    /// empty). A holder writes it just after a delivery: a fault, kill or freeze that lands in
    /// between leaves the notification waiting for the next holder, which sends it again (at
    /// least once). Tests that count notices exactly wait for this before cutting a holder off.
    pub fn deliveries_recorded(&self) -> bool {
        self.aws
            .shared_state("vigil-state", "web-tier#state")
            .is_some_and(|d| d["outbox"].as_array().is_some_and(|o| o.is_empty()))
    }

    pub fn sns(&self, got: &mut Vec<serde_json::Value>) -> usize {
        got.extend(self.aws.drain(&self.queue));
        got.len()
    }
}

pub fn subjects(sns: &[serde_json::Value]) -> Vec<String> {
    sns.iter()
        .map(|m| m["Subject"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The lease's PutItem calls that succeeded at a node's proxy (takes and renewals; a follower
/// makes none, and the state item is written with PutItem only by the holder too).
pub fn lease_writes(n: &Node) -> Vec<Instant> {
    n.proxy
        .calls_of("PutItem")
        .into_iter()
        .filter(|c| c.status == 200 && c.body.contains("\"rvn\""))
        .map(|c| c.at)
        .collect()
}
