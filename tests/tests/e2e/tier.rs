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
