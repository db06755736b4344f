//! The aggregator killed with `kill -9` at random moments under load, while an alert fires and
//! resolves and a scaling policy follows a demand that changes, with AWS (moto) behind the
//! harness's proxy. Counted at the proxy: SNS notices (none twice in a row with the same status,
//! none resolve lost) and SetDesiredCapacity calls (none repeating the previous one); counted in
//! the window: every sample the aggregator acknowledged is still there at the end.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_wire::Labels;

use super::Rng;
use crate::aws::{Aws, Moto, ENV};
use crate::http::{now_ms, push_at};
use crate::proxy::{Call, Proxy};
use crate::{bin, free_port, wait_http, Child};

/// How fast things change: each a range a random length is drawn from.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// How long each aggregator lives before its `kill -9`.
    pub life: (Duration, Duration),
    /// How long errors stay on, then off (the alert fires, then resolves).
    pub errors: (Duration, Duration),
    /// How long the demand stays at one level (the policy scales out, then in).
    pub demand: (Duration, Duration),
}

impl Pace {
    /// The issue's campaign: lives of 30–90 s.
    pub fn full() -> Pace {
        Pace {
            life: (Duration::from_secs(30), Duration::from_secs(90)),
            errors: (Duration::from_secs(20), Duration::from_secs(45)),
            demand: (Duration::from_secs(25), Duration::from_secs(60)),
        }
    }

    /// A short run for the e2e suite.
    pub fn quick() -> Pace {
        Pace {
            life: (Duration::from_secs(8), Duration::from_secs(16)),
            errors: (Duration::from_secs(6), Duration::from_secs(12)),
            demand: (Duration::from_secs(8), Duration::from_secs(14)),
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub minutes: f64,
    pub lives: usize,
    /// Lives after the first that logged their evaluation state restored.
    pub restored: usize,
    pub load_samples_acknowledged: u64,
    pub error_phases: usize,
    pub firing_notices: usize,
    pub resolved_notices: usize,
    /// Notices with the same status as the one before (a notice sent again): must be 0 but for
    /// the next.
    pub duplicate_notices: usize,
    /// Notices sent again because the aggregator was killed within 5 s after sending the first,
    /// maybe before it could record it: delivery is at least once, and this is the window.
    pub notices_repeated_after_kill_mid_delivery: usize,
    /// Firing notices never followed by their resolve: must be 0.
    pub lost_resolves: usize,
    pub demand_changes: usize,
    pub scaling_calls: usize,
    /// SetDesiredCapacity calls asking for what the previous call asked: must be 0 but for the
    /// next.
    pub repeated_scaling_calls: usize,
    /// The same, the first call made within 5 s before a kill.
    pub scaling_calls_repeated_after_kill_mid_call: usize,
    pub ticks_acknowledged: usize,
    /// Acknowledged samples missing from the window at the end: must be 0.
    pub ticks_lost: usize,
    /// Whether, with the errors gone, every alert resolved and its notice arrived in time.
    pub settled: bool,
}

impl Report {
    /// What went wrong: counts that must be 0 and are not, or a run too short to show anything.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (what, n) in [
            ("duplicate notices", self.duplicate_notices),
            ("lost resolves", self.lost_resolves),
            ("repeated scaling calls", self.repeated_scaling_calls),
            ("acknowledged samples lost", self.ticks_lost),
            (
                "restarts without their state",
                self.lives.saturating_sub(1 + self.restored),
            ),
        ] {
            if n > 0 {
                f.push(format!("{what}: {n}"));
            }
        }
        if !self.settled {
            f.push("alerts did not all resolve at the end".into());
        }
        if self.lives < 3 || self.firing_notices < 2 || self.scaling_calls < 2 {
            f.push("too few lives, notices or scaling calls to show anything".into());
        }
        f
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "aggregator kill -9 campaign (seed {}): {:.1} min, {} lives, state restored in {} of {} restarts",
            self.seed,
            self.minutes,
            self.lives,
            self.restored,
            self.lives.saturating_sub(1)
        )?;
        writeln!(
            f,
            "  load: {} samples acknowledged; acknowledged ticks {}, lost from the window {}",
            self.load_samples_acknowledged, self.ticks_acknowledged, self.ticks_lost
        )?;
        writeln!(
            f,
            "  alerts: {} error phases, {} firing and {} resolved notices; duplicate notices {} (and {} repeated after a kill mid-delivery), lost resolves {}",
            self.error_phases,
            self.firing_notices,
            self.resolved_notices,
            self.duplicate_notices,
            self.notices_repeated_after_kill_mid_delivery,
            self.lost_resolves
        )?;
        write!(
            f,
            "  scaling: {} demand changes, {} SetDesiredCapacity calls, repeated scaling calls {} (and {} after a kill mid-call); all resolved at the end: {}",
            self.demand_changes,
            self.scaling_calls,
            self.repeated_scaling_calls,
            self.scaling_calls_repeated_after_kill_mid_call,
            self.settled
        )
    }
}

const RULES: &str = r#"[[group]]
name = "campaign"

[[group.alert]]
alert = "Errors"
expr = 'sum by (asg) (app_errors) > 0'
labels = { severity = "page" }

[[scaling]]
name = "web-load"
asg = "web"
min = 2
max = 8
expr = 'avg(app_load{asg="web"})'
target = 0.5
tolerance = 0.1
scale_out_cooldown = "{cooldown}"
scale_in_cooldown = "{cooldown}"
scale_in_stabilization = "3s"
"#;

fn config(dir: &Path, port: u16, aws: &str, topic: &str, cooldown: &str) -> PathBuf {
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULES.replace("{cooldown}", cooldown)).expect("write rules");
    let cfg = dir.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"

[storage]
retention = "3h"
stale_after = "3s"
state_dir = "{state}"

[rules]
files = ["{rules}"]
evaluation_interval = "1s"

[aws]
region = "us-east-1"
endpoint_url = "{aws}"
dry_run = false

[notify]
group_by = ["alertname", "asg"]
group_wait = "1s"
group_interval = "2s"
repeat_interval = "1h"

[[receiver]]
name = "oncall"
sns_topic_arn = "{topic}"
"#,
            state = dir.join("state").display(),
            rules = rules.display(),
        ),
    )
    .expect("write config");
    cfg
}

/// A parameter of a call: a form field of the query protocol (decoded), or a JSON member.
fn field(call: &Call, name: &str) -> Option<String> {
    if call.body.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&call.body).ok()?;
        return match &v[name] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
    }
    call.body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| form_decode(v))
    })
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(c)) => {
                out.push(c);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The SNS notices, in order: ("FIRING" or "RESOLVED", from the subject; the alert's
/// `startsAt`, which names its episode), with when each reached the proxy.
fn notices(proxy: &Proxy) -> Vec<((String, String), Instant)> {
    proxy
        .calls_of("Publish")
        .iter()
        .filter(|c| c.status == 200)
        .filter_map(|c| {
            let subject = field(c, "Subject")?;
            let msg: serde_json::Value = serde_json::from_str(&field(c, "Message")?).ok()?;
            let status = if subject.starts_with("[RESOLVED]") {
                "RESOLVED"
            } else {
                "FIRING"
            };
            let episode = msg["alerts"][0]["startsAt"].as_str()?.to_string();
            Some(((status.to_string(), episode), c.at))
        })
        .collect()
}

/// The capacities SetDesiredCapacity asked for, in order, with when each reached the proxy.
fn scaling_calls(proxy: &Proxy) -> Vec<(i64, Instant)> {
    proxy
        .calls_of("SetDesiredCapacity")
        .iter()
        .filter(|c| c.status == 200)
        .filter_map(|c| Some((field(c, "DesiredCapacity")?.parse().ok()?, c.at)))
        .collect()
}

/// Entries that repeat one seen before (`anywhere`), or the one just before: (those with a kill
/// within 5 s after the first, the at-least-once window of a delivery cut short; the others).
fn repeats<T: PartialEq>(
    seq: &[(T, Instant)],
    kills: &[Instant],
    anywhere: bool,
) -> (usize, usize) {
    let mut r = (0, 0);
    for (i, (v, _)) in seq.iter().enumerate() {
        let before = if anywhere {
            &seq[..i]
        } else {
            &seq[i.saturating_sub(1)..i]
        };
        let Some((_, sent)) = before.iter().find(|(w, _)| w == v) else {
            continue;
        };
        if kills
            .iter()
            .any(|k| k >= sent && k.duration_since(*sent) <= Duration::from_secs(5))
        {
            r.0 += 1;
        } else {
            r.1 += 1;
        }
    }
    r
}

fn values<T: Clone>(seq: Vec<(T, Instant)>) -> Vec<T> {
    seq.into_iter().map(|(v, _)| v).collect()
}

fn series(name: &str, v: f64) -> Vec<(Labels, f64)> {
    ["i-1", "i-2"]
        .iter()
        .map(|i| {
            (
                Labels::from_pairs([("__name__", name), ("asg", "web"), ("instance", i)]),
                v,
            )
        })
        .collect()
}

/// moto behind the proxy with an SNS topic and the group "web" (2 of 2..8), and an aggregator's
/// config: an alert on `app_errors`, target tracking of `app_load` at 0.5 with `cooldown`s, 1 s
/// evaluation.
pub(super) struct Rig {
    _moto: Moto,
    pub proxy: Proxy,
    pub aws: Aws,
    pub base: String,
    cfg: PathBuf,
    dir: PathBuf,
    seq: u64,
}

impl Rig {
    pub fn new(dir: &Path, cooldown: &str) -> Rig {
        let moto = Moto::start(dir);
        let proxy = Proxy::start(moto.port);
        let aws = Aws::new(&moto.url());
        aws.create_group("web", 2, 8, 2);
        let (topic, _queue) = aws.topic_with_queue("oncall");
        let port = free_port();
        let cfg = config(dir, port, &proxy.url(), &topic, cooldown);
        Rig {
            _moto: moto,
            proxy,
            aws,
            base: format!("http://127.0.0.1:{port}"),
            cfg,
            dir: dir.to_path_buf(),
            seq: 0,
        }
    }

    /// Starts an aggregator (log `name`.log) with `env`, and waits until it is ready.
    pub fn start(&self, name: &str, env: &[(&str, String)]) -> Child {
        let mut cmd = Command::new(bin("vigil-aggregator"));
        cmd.args(["--log-format", "json", "--config"])
            .arg(&self.cfg)
            .envs(ENV)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let c = Child::spawn(name, &mut cmd, &self.dir);
        assert!(
            wait_http(&format!("{}/-/ready", self.base), Duration::from_secs(60)),
            "aggregator did not start:\n{}",
            c.log_text()
        );
        c
    }

    /// One push of the fleet, stamped by this host's clock: `app_errors` (1 or 0), `app_load`
    /// (the demand, 3 or 1, over the group's size in moto) and a `campaign_tick`. Returns the
    /// status and the timestamp.
    pub fn step(&mut self, errors_on: bool, high: bool) -> (u16, i64) {
        let desired = self.aws.group("web").0.max(1) as f64;
        let demand = if high { 3.0 } else { 1.0 };
        let mut s = series("app_errors", if errors_on { 1.0 } else { 0.0 });
        s.extend(series("app_load", demand / desired));
        self.seq += 1;
        s.push((
            Labels::from_pairs([("__name__", "campaign_tick")]),
            self.seq as f64,
        ));
        let ts = now_ms();
        (push_at(&self.base, &s, ts), ts)
    }

    pub fn notices(&self) -> Vec<String> {
        values(notices(&self.proxy))
            .into_iter()
            .map(|(status, _)| status)
            .collect()
    }

    pub fn scaling_calls(&self) -> Vec<i64> {
        values(scaling_calls(&self.proxy))
    }

    /// How many alerts the aggregator holds pending or firing, if it answers.
    pub fn alerts_held(&self) -> Option<usize> {
        let (code, body) = crate::http::get(&format!("{}/api/v1/alerts", self.base)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let active = |a: &&serde_json::Value| a["state"] == "firing" || a["state"] == "pending";
        (code == 200).then(|| {
            v["data"]["alerts"]
                .as_array()
                .map_or(0, |a| a.iter().filter(active).count())
        })
    }

    /// The timestamps of `campaign_tick` in the window.
    pub fn ticks(&self) -> BTreeSet<i64> {
        super::sample_times(&self.base, "campaign_tick")
    }
}

/// Runs the campaign for `length` at `pace`, `load` background series pushed every second.
pub fn run(length: Duration, pace: Pace, load: usize, dir: &Path) -> Report {
    let (mut rng, seed) = Rng::from_env();
    let mut rig = Rig::new(dir, "2s");
    let mut report = Report {
        seed,
        ..Report::default()
    };

    // Background load: `load` series (as from load/100 instances), pushed every second.
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let loader = {
        let (done, acked, base) = (done.clone(), acked.clone(), rig.base.clone());
        std::thread::spawn(move || {
            let set: Vec<(Labels, f64)> = (0..load)
                .map(|k| {
                    let inst = format!("i-load-{}", k / 100);
                    let n = (k % 100).to_string();
                    (
                        Labels::from_pairs([
                            ("__name__", "load_series"),
                            ("instance", inst.as_str()),
                            ("n", n.as_str()),
                        ]),
                        k as f64,
                    )
                })
                .collect();
            while !done.load(Ordering::SeqCst) {
                let t = Instant::now();
                if !set.is_empty() && push_at(&base, &set, now_ms()) == 204 {
                    acked.fetch_add(set.len() as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
            }
        })
    };

    let mut agg = rig.start("aggregator-1", &[]);
    let started = Instant::now();
    let mut errors_on = true;
    let mut errors_until = started + rng.between(pace.errors.0, pace.errors.1);
    report.error_phases = 1;
    let mut high = true;
    let mut demand_until = started + rng.between(pace.demand.0, pace.demand.1);
    let mut ticks: BTreeSet<i64> = BTreeSet::new();
    let mut kills = Vec::new();
    report.lives = 1;
    let mut dies_at = Instant::now() + rng.between(pace.life.0, pace.life.1);
    while started.elapsed() < length {
        let now = Instant::now();
        if now >= errors_until {
            errors_on = !errors_on;
            report.error_phases += usize::from(errors_on);
            errors_until = now + rng.between(pace.errors.0, pace.errors.1);
        }
        if now >= demand_until {
            high = !high;
            report.demand_changes += 1;
            demand_until = now + rng.between(pace.demand.0, pace.demand.1);
        }
        if now >= dies_at {
            kills.push(Instant::now());
            agg.signal("KILL");
            assert!(
                agg.wait_exit(Duration::from_secs(30)),
                "no exit after kill -9"
            );
            report.lives += 1;
            agg = rig.start(&format!("aggregator-{}", report.lives), &[]);
            dies_at = Instant::now() + rng.between(pace.life.0, pace.life.1);
        }
        if let (204, ts) = rig.step(errors_on, high) {
            ticks.insert(ts);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    report.minutes = started.elapsed().as_secs_f64() / 60.0;

    // Settle: errors off until the aggregator holds no alert and every episode that fired has
    // its resolve (or the deadline says one was lost), the demand left where it is.
    let settle = Instant::now() + Duration::from_secs(180);
    loop {
        if let (204, ts) = rig.step(false, high) {
            ticks.insert(ts);
        }
        let n = notices(&rig.proxy);
        let resolved = |e: &String| n.iter().any(|((s, e2), _)| s == "RESOLVED" && e2 == e);
        let all_resolved = n.iter().all(|((s, e), _)| s == "RESOLVED" || resolved(e));
        if all_resolved && rig.alerts_held() == Some(0) {
            report.settled = true;
            break;
        }
        if Instant::now() > settle {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    done.store(true, Ordering::SeqCst);
    loader.join().expect("load thread");
    report.load_samples_acknowledged = acked.load(Ordering::Relaxed);

    let n = notices(&rig.proxy);
    report.firing_notices = n.iter().filter(|s| s.0 .0 == "FIRING").count();
    report.resolved_notices = n.len() - report.firing_notices;
    (
        report.notices_repeated_after_kill_mid_delivery,
        report.duplicate_notices,
    ) = repeats(&n, &kills, true);
    // An episode that fired and never resolved.
    report.lost_resolves = n
        .iter()
        .filter(|((s, e), _)| {
            s == "FIRING" && !n.iter().any(|((s2, e2), _)| s2 == "RESOLVED" && e2 == e)
        })
        .map(|((_, e), _)| e)
        .collect::<BTreeSet<_>>()
        .len();
    let calls = scaling_calls(&rig.proxy);
    report.scaling_calls = calls.len();
    (
        report.scaling_calls_repeated_after_kill_mid_call,
        report.repeated_scaling_calls,
    ) = repeats(&calls, &kills, false);
    report.ticks_acknowledged = ticks.len();
    report.ticks_lost = ticks.difference(&rig.ticks()).count();
    for life in 2..=report.lives {
        let log =
            std::fs::read_to_string(dir.join(format!("aggregator-{life}.log"))).unwrap_or_default();
        report.restored += usize::from(log.contains("evaluation state restored"));
    }
    agg.signal("TERM");
    agg.wait_exit(Duration::from_secs(30));
    report
}
