use super::*;

const SPEC_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:9470"

[storage]
retention = "1h"
state_dir = "/var/lib/vigil"

[rules]
files = ["/etc/vigil/rules/*.toml"]
evaluation_interval = "10s"

[aws]
region = "us-east-1"
dry_run = false

[cloudwatch]
namespace = "Vigil"
flush_interval = "60s"

[notify]
group_by = ["alertname", "asg"]
group_wait = "10s"
group_interval = "1m"
repeat_interval = "4h"

[[receiver]]
name = "oncall"
sns_topic_arn = "arn:aws:sns:us-east-1:123456789012:oncall"
"#;

#[test]
fn the_shipped_example_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/aggregator.toml");
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        parse(path, &text).unwrap(),
        parse("spec", SPEC_EXAMPLE).unwrap()
    );
}

#[test]
fn the_spec_example_parses() {
    let c = parse("aggregator.toml", SPEC_EXAMPLE).unwrap();
    assert_eq!(c.retention_ms, 3_600_000);
    assert_eq!(c.repeat_interval_ms, 4 * 3_600_000);
    assert!(!c.dry_run);
    assert_eq!(c.receivers[0].name, "oncall");
}

#[test]
fn connection_limits() {
    let c = parse(
        "a.toml",
        "[server]\nmax_connections = 64\nheader_read_timeout = \"5s\"\n",
    )
    .unwrap();
    assert_eq!((c.max_connections, c.header_read_timeout_ms), (64, 5000));
    let d = Config::default();
    assert_eq!(
        (d.max_connections, d.header_read_timeout_ms),
        (4096, 30_000)
    );
    let e = parse("a.toml", "[server]\nmax_connections = 0\n").unwrap_err();
    assert!(e[0].to_string().contains("a.toml:2:"), "{}", e[0]);
    assert!(
        e[0].to_string().contains("server.max_connections"),
        "{}",
        e[0]
    );
}

#[test]
fn a_query_offset_for_the_rules() {
    let c = parse("a.toml", "[rules]\nquery_offset = \"30s\"\n").unwrap();
    assert_eq!(c.query_offset_ms, 30_000);
    assert_eq!(parse("a.toml", "").unwrap().query_offset_ms, 0);
    let e = parse("a.toml", "[rules]\nquery_offset = \"-1s\"\n").unwrap_err();
    assert!(
        e[0].to_string()
            .starts_with("a.toml:2:16: rules.query_offset"),
        "{}",
        e[0]
    );
}

#[test]
fn query_limits() {
    let c = parse(
        "a.toml",
        "[query]\nmax_samples = 1000\ntimeout = \"5s\"\nmax_concurrency = 2\n",
    )
    .unwrap();
    assert_eq!(
        (
            c.query_max_samples,
            c.query_timeout_ms,
            c.query_max_concurrency
        ),
        (1000, 5000, 2)
    );
    let errs: Vec<String> = parse("a.toml", "[query]\nmax_concurrency = 0\ntimeout = \"x\"\n")
        .unwrap_err()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("a.toml:2:19: query.max_concurrency"),
        "{errs:?}"
    );
}

#[test]
fn aws_timeouts() {
    let c = parse("a.toml", "[aws]\n").unwrap();
    assert_eq!(
        (c.aws_attempt_timeout_ms, c.aws_call_timeout_ms),
        (10_000, 30_000)
    );
    let c = parse(
        "a.toml",
        "[aws]\nattempt_timeout = \"2m\"\ncall_timeout = \"5m\"\n",
    )
    .unwrap();
    assert_eq!(
        (c.aws_attempt_timeout_ms, c.aws_call_timeout_ms),
        (120_000, 300_000)
    );
    let errs: Vec<String> = parse(
        "a.toml",
        "[aws]\nattempt_timeout = \"20s\"\ncall_timeout = \"5s\"\n",
    )
    .unwrap_err()
    .iter()
    .map(|d| d.to_string())
    .collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("a.toml:3:16: aws.call_timeout: must be at least attempt_timeout"),
        "{errs:?}"
    );
}

#[test]
fn cluster_section() {
    let c = parse(
        "a.toml",
        "[server]\nlisten = \"127.0.0.1:9470\"\n[aws]\n[cluster]\nnode_id = \"agg-a\"\nlease_name = \"web\"\nlease_ttl = \"8s\"\n",
    )
    .unwrap();
    let cl = c.cluster.unwrap();
    assert_eq!(
        (
            cl.node_id.as_str(),
            cl.lease_table.as_str(),
            cl.state_table.as_str()
        ),
        ("agg-a", "vigil-leases", "vigil-state")
    );
    assert_eq!(
        (cl.lease_ttl_ms, cl.advertise_address.as_str()),
        (8_000, "127.0.0.1:9470")
    );
    // The AWS timeouts come down to a quarter of the lease.
    assert_eq!(
        (c.aws_attempt_timeout_ms, c.aws_call_timeout_ms),
        (2_000, 2_000)
    );
    let errs: Vec<String> = parse(
        "a.toml",
        "[aws]\ncall_timeout = \"30s\"\n[cluster]\nlease_name = \"web\"\nlease_table = \"x\"\n",
    )
    .unwrap_err()
    .iter()
    .map(|d| d.to_string())
    .collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("a.toml:2:16: aws.call_timeout: at most a quarter"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("a.toml:5:15: cluster.lease_table"),
        "{errs:?}"
    );
    let errs = parse("a.toml", "[cluster]\n").unwrap_err();
    let text: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    assert!(text.iter().any(|e| e.contains("lease_name")), "{text:?}");
    assert!(text.iter().any(|e| e.contains("give [aws]")), "{text:?}");
}

#[test]
fn webhook_urls_list_every_alertmanager_peer() {
    let c = parse(
        "a.toml",
        "[[receiver]]\nname = \"am\"\nwebhook_urls = [\"http://127.0.0.1:9093\", \"http://127.0.0.1:9094\"]\n",
    )
    .unwrap();
    assert_eq!(c.receivers[0].webhook_urls.len(), 2);
    let e = parse(
        "a.toml",
        "[[receiver]]\nname = \"am\"\nwebhook_urls = [\"ftp://x\"]\n",
    )
    .unwrap_err();
    assert!(
        e[0].to_string().starts_with("a.toml:3:17: receiver[0]"),
        "{}",
        e[0]
    );
}

#[test]
fn no_aws_section_means_dry_run_and_errors_have_positions() {
    assert!(parse("a.toml", "").unwrap().dry_run);
    let errs: Vec<String> = parse(
        "a.toml",
        "[server]\nlisten = \"here\"\n[[receiver]]\nname = \"x\"\nsns_topic_arn = \"nope\"\n",
    )
    .unwrap_err()
    .iter()
    .map(|d| d.to_string())
    .collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("a.toml:2:10: server.listen"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("a.toml:5:17: receiver[0].sns_topic_arn"),
        "{errs:?}"
    );
}

#[test]
fn an_advertised_address_is_plain_host_port() {
    for good in [
        "agg-a:9470",
        "10.0.1.7:9470",
        "[fd00::7]:9470",
        "vigil-aggregator-0.vigil-aggregator:9470",
    ] {
        assert!(super::host_port(good), "{good}");
    }
    for bad in [
        "agg-a",
        "agg-a:",
        ":9470",
        "evil.example/x#:9470",
        "user@host:9470",
        "host:99999",
        "host:0",
        "[zz]:9470",
        "a?b:1",
    ] {
        assert!(!super::host_port(bad), "{bad}");
    }
}

#[test]
fn tls_keys_go_together_and_mtls_needs_tls() {
    let c = parse(
        "a.toml",
        "[server]\ntls_cert_file = \"/s.pem\"\ntls_key_file = \"/s.key\"\nclient_ca_file = \"/ca.pem\"\n",
    )
    .unwrap();
    let t = c.tls.expect("tls");
    assert_eq!(
        (t.cert_file, t.client_ca_file),
        (PathBuf::from("/s.pem"), Some(PathBuf::from("/ca.pem")))
    );
    let e = parse("a.toml", "[server]\ntls_cert_file = \"/s.pem\"\n").unwrap_err();
    assert!(
        e[0].to_string()
            .starts_with("a.toml:2:17: server.tls_cert_file and server.tls_key_file go together"),
        "{}",
        e[0]
    );
    let e = parse("a.toml", "[server]\nclient_ca_file = \"/ca.pem\"\n").unwrap_err();
    assert!(e[0].to_string().contains("needs tls_cert_file"), "{}", e[0]);
}

#[test]
fn remote_storage() {
    let c = parse(
        "a.toml",
        "[storage]\nbackend = \"remote\"\n[storage.remote]\nquery_url = \"http://vm:8428\"\nheaders = { \"X-Scope-OrgID\" = \"web\" }\nbearer_token_file = \"/etc/vigil/engine-token\"\nquery_timeout = \"5s\"\n",
    )
    .unwrap();
    assert_eq!(
        c.remote,
        Some(Remote {
            query_url: "http://vm:8428".into(),
            headers: vec![("X-Scope-OrgID".into(), "web".into())],
            bearer_token_file: Some("/etc/vigil/engine-token".into()),
            basic_auth: None,
            timeout_ms: 5_000,
            write_url: None,
            queue_dir: None,
            queue_max_bytes: 1 << 30,
            shards: 4,
            sigv4: None,
            whole_expressions: false,
        })
    );
    let c = parse(
        "a.toml",
        "[storage]\nbackend = \"remote\"\n[storage.remote]\nquery_url = \"http://vm:8428\"\nwrite_url = \"http://vm:8428/api/v1/write\"\nqueue_dir = \"/var/lib/vigil/remote-queue\"\nqueue_max_bytes = \"2GiB\"\nshards = 8\n",
    )
    .unwrap()
    .remote
    .unwrap();
    assert_eq!(
        (
            c.write_url.as_deref(),
            c.queue_dir,
            c.queue_max_bytes,
            c.shards
        ),
        (
            Some("http://vm:8428/api/v1/write"),
            Some("/var/lib/vigil/remote-queue".into()),
            2 << 30,
            8
        )
    );
    assert_eq!(
        parse("a.toml", "[storage]\nbackend = \"memory\"\n")
            .unwrap()
            .remote,
        None
    );
    let errs = |text: &str| -> Vec<String> {
        parse("a.toml", text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    let whole = |v: &str| {
        parse(
            "a.toml",
            &format!("[storage]\nbackend = \"remote\"\n[storage.remote]\nquery_url = \"http://prometheus:9090\"\nevaluation = \"{v}\"\n"),
        )
        .map(|c| c.remote.unwrap().whole_expressions)
        .map_err(|e| e[0].to_string())
    };
    assert_eq!(whole("engine"), Ok(true));
    assert_eq!(whole("samples"), Ok(false));
    assert!(
        whole("metricsql").is_err_and(|e| e.starts_with(
            "a.toml:5:14: storage.remote.evaluation: expected \"samples\" or \"engine\""
        )),
        "{:?}",
        whole("metricsql")
    );
    let e = errs("[storage]\nbackend = \"disk\"\n");
    assert!(
        e[0].starts_with("a.toml:2:11: storage.backend: expected \"memory\" or \"remote\""),
        "{e:?}"
    );
    let e = errs("[storage]\nbackend = \"remote\"\n");
    assert!(
        e[0].starts_with("a.toml:2:11: storage.backend = \"remote\" needs [storage.remote]"),
        "{e:?}"
    );
    let e = errs("[storage.remote]\nquery_url = \"http://vm:8428\"\n");
    assert!(
        e[0].contains("[storage.remote] is set but storage.backend is not \"remote\""),
        "{e:?}"
    );
    // Sizes and keys are checked.
    let e = errs("[storage]\nbackend = \"remote\"\n[storage.remote]\nquery_url = \"vm:8428\"\nqueue_max_bytes = \"1KiB\"\nsigv4 = { region = \"us-east-1\", servce = \"aps\" }\n");
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("a.toml:4:13: storage.remote.query_url: expected an http://"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("a.toml:5:19: storage.remote.queue_max_bytes: at least 1MiB"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("a.toml:6:33: storage.remote.sigv4.servce: unknown key"),
        "{e:?}"
    );
    let c = parse(
        "a.toml",
        "[storage]\nbackend = \"remote\"\n[storage.remote]\nquery_url = \"http://aps\"\nsigv4 = { region = \"eu-west-1\" }\n",
    )
    .unwrap();
    assert_eq!(
        c.remote.unwrap().sigv4,
        Some(storage::SigV4 {
            region: Some("eu-west-1".into()),
            service: "aps".into()
        })
    );
    let e = errs("[storage]\nbackend = \"remote\"\nwal = false\n[storage.remote]\nquery_url = \"http://vm:8428\"\nwrite_url = \"http://vm:8428/api/v1/write\"\n");
    assert!(
        e[0].contains("write_url forwards from the window's log: it needs [storage] wal = true"),
        "{e:?}"
    );
}

#[test]
fn cloudwatch_imports_are_read_and_bad_ones_refused_where_they_are() {
    let c = parse(
        "a.toml",
        "[aws]\nregion = \"us-east-1\"\n[[import.cloudwatch]]\nnamespace = \"AWS/ApplicationELB\"\nmetric = \"RequestCountPerTarget\"\ndimensions = { TargetGroup = \"targetgroup/web/0123456789abcdef\" }\nstatistics = [\"Sum\"]\nperiod = \"60s\"\ndelay = \"120s\"\n[[import.cloudwatch]]\nnamespace = \"CWAgent\"\nmetric = \"mem_used_percent\"\ndimensions = { AutoScalingGroupName = \"*\" }\nperiod = \"10s\"\n",
    )
    .unwrap();
    assert_eq!(c.cloudwatch_imports.len(), 2);
    let a = &c.cloudwatch_imports[0];
    assert_eq!(
        (a.period_ms, a.delay_ms, a.statistics.clone()),
        (60_000, 120_000, vec!["Sum".to_string()])
    );
    assert_eq!(
        a.series_name("Sum"),
        "aws_applicationelb_request_count_per_target_sum"
    );
    let b = &c.cloudwatch_imports[1];
    assert_eq!(
        (b.period_ms, b.statistics.clone()),
        (10_000, vec!["Average".to_string()])
    );
    let errs = |text: &str| -> Vec<String> {
        parse("a.toml", text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    let e = errs("[aws]\n[[import.cloudwatch]]\nnamespace = \"AWS/\"\nmetric = \"CPUUtilization\"\ndimensions = \"DBInstanceIdentifier=db-1\"\nperiod = \"90s\"\nstatistics = [\"Median\"]\n");
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with(
            "a.toml:3:13: import.cloudwatch[0].namespace: \"AWS/\" is not a CloudWatch namespace"
        ),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(
            "a.toml:5:14: import.cloudwatch[0].dimensions: expected a table of strings"
        ),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("a.toml:6:10: import.cloudwatch[0].period: a multiple of 60s"),
        "{e:?}"
    );
    assert!(
        e[3].starts_with("a.toml:7:15: import.cloudwatch[0].statistics: \"Median\""),
        "{e:?}"
    );
    // AWS namespaces have no high-resolution periods; imports need [aws].
    let e = errs("[aws]\n[[import.cloudwatch]]\nnamespace = \"AWS/RDS\"\nmetric = \"CPUUtilization\"\nperiod = \"10s\"\n");
    assert!(
        e[0].starts_with("a.toml:5:10: import.cloudwatch[0].period"),
        "{e:?}"
    );
    let e = errs("[[import.cloudwatch]]\nnamespace = \"AWS/RDS\"\nmetric = \"CPUUtilization\"\n");
    assert!(e[0].contains("need [aws]"), "{e:?}");
    let e = errs("[aws]\n[import]\ntarget_health = 1\n");
    assert!(
        e[0].starts_with("a.toml:3:17: import.target_health: expected an array of tables"),
        "{e:?}"
    );
    let c = parse("a.toml", "[aws]\n[[import.target_health]]\ntarget_group_arn = \"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef\"\n").unwrap();
    assert_eq!(c.target_health_imports[0].interval_ms, 15_000);
    assert_eq!(
        c.target_health_imports[0].label(),
        "targetgroup/web/0123456789abcdef"
    );
    let e = errs("[aws]\n[[import.target_health]]\ntarget_group_arn = \"arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/1\"\ninterval = \"0s\"\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with(
            "a.toml:3:20: import.target_health[0].target_group_arn: not a target group ARN"
        ),
        "{e:?}"
    );
}
