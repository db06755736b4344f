//! The rest of the tier (#16) against `moto_server`: CloudWatch metrics of the load balancer and
//! the database imported as series (named as `cloudwatch_exporter` names them, stamped with
//! their period's end, gaps left gaps, wildcards listed), and a scaling policy on ALB requests
//! per target scaling a moto group.

use std::process::Command;
use std::time::Duration;

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use vigil_e2e::aws::{block_on, Aws, Moto, ENV};
use vigil_e2e::http::{encode_component, get, now_ms};
use vigil_e2e::{bin, free_port, tempdir, wait_http, wait_until, Child};

const TG: &str = "targetgroup/web/0123456789abcdef";

fn put(aws: &Aws, namespace: &str, metric: &str, dims: &[(&str, &str)], points: &[(i64, f64)]) {
    let data: Vec<MetricDatum> = points
        .iter()
        .map(|&(t, v)| {
            let mut b = MetricDatum::builder()
                .metric_name(metric)
                .timestamp(DateTime::from_millis(t))
                .value(v)
                .unit(StandardUnit::Count);
            for (k, val) in dims {
                b = b.dimensions(Dimension::builder().name(*k).value(*val).build());
            }
            b.build()
        })
        .collect();
    block_on(
        aws.cw
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(data))
            .send(),
    )
    .expect("put metric data");
}

/// `query` over the last 30 minutes as raw samples: each series' labels and (ms, value).
fn raw(agg: &str, query: &str) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
    let (code, body) = get(&format!(
        "{agg}/api/v1/query?query={}",
        encode_component(&format!("{query}[30m]"))
    ))
    .expect("query");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut out: Vec<(serde_json::Value, Vec<(i64, f64)>)> = v["data"]["result"]
        .as_array()
        .expect("matrix")
        .iter()
        .map(|s| {
            (
                s["metric"].clone(),
                s["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|p| {
                        (
                            (p[0].as_f64().expect("t") * 1000.0).round() as i64,
                            p[1].as_str().expect("v").parse().expect("number"),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    out.sort_by_key(|s| s.0.to_string());
    out
}

#[test]
fn cloudwatch_metrics_come_in_as_series_and_scale_a_group() {
    let d = tempdir("tier");
    let moto = Moto::start(d.path());
    let aws = Aws::new(&moto.url());
    aws.create_group("web-asg", 1, 4, 1);

    // Four whole minutes, ending two minutes ago: two datapoints a minute for the load
    // balancer (Sum 500, Maximum 300), one for the database; the third minute has no data.
    let base = now_ms() / 60_000 * 60_000;
    let minutes: Vec<i64> = (2..=5).map(|k| base - k * 60_000).collect();
    let gap = minutes[1];
    for &m in &minutes {
        if m == gap {
            continue;
        }
        put(
            &aws,
            "AWS/ApplicationELB",
            "RequestCountPerTarget",
            &[("TargetGroup", TG)],
            &[(m + 5_000, 300.0), (m + 35_000, 200.0)],
        );
        put(
            &aws,
            "AWS/RDS",
            "CPUUtilization",
            &[("DBInstanceIdentifier", "db-1")],
            &[(m + 10_000, 40.0), (m + 40_000, 60.0)],
        );
        for (tg, n) in [("targetgroup/a/1", 1.0), ("targetgroup/b/2", 7.0)] {
            put(
                &aws,
                "AWS/ApplicationELB",
                "HTTPCode_Target_5XX_Count",
                &[("TargetGroup", tg)],
                &[(m + 1_000, n)],
            );
        }
    }

    let port = free_port();
    let agg = format!("http://127.0.0.1:{port}");
    std::fs::write(
        d.path().join("rules.toml"),
        r#"
[[scaling]]
name = "web"
asg = "web-asg"
min = 1
max = 4
expr = 'max_over_time(aws_applicationelb_request_count_per_target_sum[10m])'
target = 250
interval = "1s"
scale_out_cooldown = "1s"
"#,
    )
    .expect("rules");
    std::fs::write(
        d.path().join("aggregator.toml"),
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[storage]
state_dir = "{state}"
[rules]
files = ["{rules}"]
evaluation_interval = "1s"
[aws]
region = "us-east-1"
endpoint_url = "{moto}"
dry_run = false
[[import.cloudwatch]]
namespace = "AWS/ApplicationELB"
metric = "RequestCountPerTarget"
dimensions = {{ TargetGroup = "{TG}" }}
statistics = ["Sum", "Maximum"]
period = "60s"
[[import.cloudwatch]]
namespace = "AWS/RDS"
metric = "CPUUtilization"
dimensions = {{ DBInstanceIdentifier = "db-1" }}
statistics = ["Average"]
[[import.cloudwatch]]
namespace = "AWS/ApplicationELB"
metric = "HTTPCode_Target_5XX_Count"
dimensions = {{ TargetGroup = "*" }}
statistics = ["Sum"]
"#,
            state = d.path().join("state").display(),
            rules = d.path().join("rules.toml").display(),
            moto = moto.url(),
        ),
    )
    .expect("config");
    let child = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(d.path().join("aggregator.toml"))
            .envs(ENV),
        d.path(),
    );
    assert!(
        wait_http(&format!("{agg}/-/ready"), Duration::from_secs(60)),
        "{}",
        child.log_text()
    );
    let sum = "aws_applicationelb_request_count_per_target_sum";
    wait_until(
        Duration::from_secs(60),
        "the imported series",
        || raw(&agg, sum).len() == 1,
        || child.log_text(),
    );
    // Each minute's statistic, stamped with the minute's end; the minute without data absent.
    let stamps: Vec<i64> = minutes
        .iter()
        .rev()
        .filter(|&&m| m != gap)
        .map(|m| m + 60_000)
        .collect();
    let expect = |name: &str, value: f64, label: &str, label_value: &str| {
        let got = raw(&agg, name);
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!(got[0].0[label], label_value, "{name}: {got:?}");
        assert_eq!(
            got[0].1,
            stamps.iter().map(|&t| (t, value)).collect::<Vec<_>>(),
            "{name}"
        );
    };
    expect(sum, 500.0, "target_group", TG);
    expect(
        "aws_applicationelb_request_count_per_target_maximum",
        300.0,
        "target_group",
        TG,
    );
    expect(
        "aws_rds_cpuutilization_average",
        50.0,
        "dbinstance_identifier",
        "db-1",
    );
    // The wildcard: one series per target group ListMetrics knows.
    let five = raw(&agg, "aws_applicationelb_httpcode_target_5_xx_count_sum");
    let per_group: Vec<(String, f64)> = five
        .iter()
        .map(|(l, v)| (l["target_group"].as_str().unwrap_or("").to_string(), v[0].1))
        .collect();
    assert_eq!(
        per_group,
        [
            ("targetgroup/a/1".to_string(), 1.0),
            ("targetgroup/b/2".to_string(), 7.0)
        ]
    );
    // 500 requests per target against a target of 250: the moto group goes from 1 to 2.
    wait_until(
        Duration::from_secs(60),
        "the group scaled out on the load balancer's requests",
        || aws.group("web-asg").0 == 2,
        || child.log_text(),
    );
    // Cost: the metrics requested are counted, and what they come to in a month.
    let (_, metrics) = get(&format!("{agg}/metrics")).expect("metrics");
    let value = |name: &str| vigil_e2e::http::metric_value(&metrics, name);
    assert!(
        value("vigil_aggregator_cloudwatch_metrics_requested_total").is_some_and(|n| n >= 5.0),
        "{metrics}"
    );
    // (2 + 1 + 2 wildcard) metrics a minute for 30 days.
    assert_eq!(
        value("vigil_aggregator_cloudwatch_metrics_requested_per_month"),
        Some(5.0 * 43_200.0)
    );
}

#[test]
fn target_health_per_instance_and_a_replacement_on_two_signals() {
    let d = tempdir("tier-targets");
    let moto = Moto::start(d.path());
    let aws = Aws::new(&moto.url());
    aws.create_group("web", 3, 3, 3);
    let ids: Vec<String> = {
        let mut v: Vec<String> = aws.group("web").3.into_iter().map(|m| m.0).collect();
        v.sort();
        v
    };
    assert_eq!(ids.len(), 3);
    let vpc = aws.default_vpc();
    let arn = block_on(async {
        use aws_sdk_elasticloadbalancingv2::types::{
            ProtocolEnum, TargetDescription, TargetTypeEnum,
        };
        let tg = aws
            .elb
            .create_target_group()
            .name("web")
            .protocol(ProtocolEnum::Http)
            .port(80)
            .vpc_id(&vpc)
            .target_type(TargetTypeEnum::Instance)
            .send()
            .await
            .expect("create target group");
        let arn = tg.target_groups()[0]
            .target_group_arn()
            .expect("arn")
            .to_string();
        let mut reg = aws.elb.register_targets().target_group_arn(&arn);
        for i in &ids {
            reg = reg.targets(TargetDescription::builder().id(i).port(80).build());
        }
        reg.send().await.expect("register targets");
        arn
    });
    // The load balancer sees ids[0] as gone (moto: a stopped instance is "unused",
    // Target.InvalidState); the agents' probes fail on ids[0] and ids[1].
    aws.ec2(&[("Action", "StopInstances"), ("InstanceId.1", &ids[0])]);

    let port = free_port();
    let agg = format!("http://127.0.0.1:{port}");
    std::fs::write(
        d.path().join("rules.toml"),
        r#"
[[replace]]
name = "web-unhealthy"
asg = "web"
# Both signals: the agent's probe and the load balancer agree.
expr = 'vigil_health_up{asg="web"} == 0 and on (instance) vigil_lb_target_healthy == 0'
for = "1s"
# No cap that could hide a second replacement: on one signal both probes' instances would go.
max_fraction = 1.0
fail_open_fraction = 1.0
"#,
    )
    .expect("rules");
    std::fs::write(
        d.path().join("aggregator.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nstate_dir = \"{}\"\n[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\ndry_run = false\n[[import.target_health]]\ntarget_group_arn = \"{arn}\"\ninterval = \"1s\"\n",
            d.path().join("state").display(),
            d.path().join("rules.toml").display(),
            moto.url(),
        ),
    )
    .expect("config");
    let child = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(d.path().join("aggregator.toml"))
            .envs(ENV),
        d.path(),
    );
    assert!(
        wait_http(&format!("{agg}/-/ready"), Duration::from_secs(60)),
        "{}",
        child.log_text()
    );
    // Per instance, with its zone from the group's describe.
    let healthy = || -> Vec<(String, String, String)> {
        let (_, body) =
            get(&format!("{agg}/api/v1/query?query=vigil_lb_target_healthy")).expect("query");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let mut out: Vec<(String, String, String)> = v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                            s["metric"]["az"].as_str().unwrap_or("").to_string(),
                            s["value"][1].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let want: Vec<(String, String, String)> = ids
        .iter()
        .enumerate()
        .map(|(k, i)| {
            (
                i.clone(),
                "us-east-1a".to_string(),
                if k == 0 { "0" } else { "1" }.to_string(),
            )
        })
        .collect();
    wait_until(
        Duration::from_secs(60),
        "target health per instance, with its zone",
        || healthy() == want,
        || format!("{:?}\n{}", healthy(), child.log_text()),
    );
    let (_, state) = get(&format!(
        "{agg}/api/v1/query?query={}",
        encode_component(&format!("vigil_lb_target_state{{instance=\"{}\"}}", ids[0]))
    ))
    .expect("query");
    assert!(
        state.contains("\"state\":\"unused\"") && state.contains("Target.InvalidState"),
        "{state}"
    );
    // Two probes fail; only the instance the load balancer also calls sick is replaced.
    let unhealthy = || -> Vec<String> {
        aws.group("web")
            .3
            .into_iter()
            .filter(|m| m.2 == "Unhealthy")
            .map(|m| m.0)
            .collect()
    };
    let push = || {
        let series: Vec<(vigil_wire::Labels, f64)> = ids
            .iter()
            .enumerate()
            .map(|(k, i)| {
                (
                    vigil_wire::Labels::from_pairs([
                        ("__name__", "vigil_health_up"),
                        ("asg", "web"),
                        ("instance", i.as_str()),
                    ]),
                    if k < 2 { 0.0 } else { 1.0 },
                )
            })
            .collect();
        vigil_e2e::http::push_now(&agg, &series);
    };
    wait_until(
        Duration::from_secs(60),
        "the instance both signals call sick marked Unhealthy",
        || {
            push();
            !unhealthy().is_empty()
        },
        || child.log_text(),
    );
    for _ in 0..3 {
        push();
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(unhealthy(), [ids[0].clone()], "{}", child.log_text());
}
