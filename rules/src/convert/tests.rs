//! `convert`'s unit tests.

use super::*;

const YAML: &str = r#"# Web tier rules
groups:
  # Recording first
  - name: web
    interval: 30s
    query_offset: 1m
    rules:
      - record: job:http_requests:rate5m
        expr: sum by (job) (rate(http_requests_total[5m]))
      # Page when errors pass 5%
      - alert: HighErrorRate
        expr: |
          sum(rate(http_requests_total{code=~"5.."}[5m]))
            / sum(rate(http_requests_total[5m])) > 0.05
        for: 10m
        keep_firing_for: 5m
        labels:
          severity: page
          "team": web
        annotations:
          summary: 'Errors at {{ $value | humanizePercentage }}'
          description: |
            {{ $labels.job }} is failing.
            Look at it.
  - name: empty
    rules: []
"#;

#[test]
fn a_prometheus_rule_file_converts_with_its_comments_and_loads() {
    let toml = rule_file("web.yml", YAML).unwrap();
    for want in [
        "# Web tier rules\n",
        "# Recording first\n[[group]]\nname = 'web'\ninterval = '30s'\nquery_offset = '1m'\n",
        "[[group.record]]\nrecord = 'job:http_requests:rate5m'\nexpr = 'sum by (job) (rate(http_requests_total[5m]))'\n",
        "# Page when errors pass 5%\n[[group.alert]]\nalert = 'HighErrorRate'\n",
        "for = '10m'\nkeep_firing_for = '5m'\n",
        "labels = { severity = 'page', team = 'web' }\n",
        "[group.alert.annotations]\nsummary = 'Errors at {{ $value | humanizePercentage }}'\n",
    ] {
        assert!(toml.contains(want), "{want:?} not in\n{toml}");
    }
    let f = crate::rulefile::load("web.toml", &toml, &crate::rulefile::Context::default())
        .unwrap_or_else(|e| panic!("{e:?}\n{toml}"));
    assert_eq!(f.groups.len(), 2);
    assert_eq!(f.groups[0].rules.len(), 2);
    assert_eq!(f.groups[0].query_offset_ms, Some(60_000));
}

#[test]
fn what_vigil_cannot_hold_is_an_error_with_its_position() {
    let e = rule_file(
        "r.yml",
        "groups:\n  - name: a\n    limit: 10\n    rules: []\n",
    )
    .unwrap_err();
    assert!(e.starts_with("r.yml:3:12: "), "{e}");
    let e = rule_file(
        "r.yml",
        "groups:\n  - name: a\n    rules:\n      - expr: up\n",
    )
    .unwrap_err();
    assert!(e.contains("exactly one of `alert` and `record`"), "{e}");
    let e = rule_file("r.yml", "groups: [\n").unwrap_err();
    assert!(e.starts_with("r.yml:"), "{e}");
    assert!(rule_file("r.yml", "a: &x 1\nb: *x\n").is_err());
}

#[test]
fn strings_quote_as_toml_reads_them_back() {
    for s in [
        "plain",
        "it's",
        "a\nb\n",
        "tab\there",
        "x'''y\nz",
        "\u{7}bell",
        "",
    ] {
        let doc = format!("k = {}\n", toml_str(s));
        let v: toml::Table = toml::from_str(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(v["k"].as_str(), Some(s), "{doc}");
    }
}

#[test]
fn a_promtool_test_file_converts_and_loads() {
    let yaml = r#"rule_files:
  - web.yml
evaluation_interval: 1m
tests:
  # Errors for five minutes
  - interval: 1m
    name: errors
    input_series:
      - series: 'http_requests_total{code="500"}'
        values: '0+10x10 _ stale'
    alert_rule_test:
      - eval_time: 5m
        alertname: HighErrorRate
        exp_alerts:
          - exp_labels:
              severity: page
            exp_annotations:
              summary: "line one\nline 'two'"
    promql_expr_test:
      - expr: sum(http_requests_total)
        eval_time: 5m
        exp_samples:
          - labels: '{}'
            value: 50
          - labels: '{a="b"}'
            value: 0.1
          - labels: '{a="c"}'
            value: NaN
"#;
    let toml = rule_file("web_test.yml", yaml).unwrap();
    for want in [
        "rule_files = ['web.toml']\n",
        "evaluation_interval = '1m'\n",
        "# Errors for five minutes\n[[test]]\ninterval = '1m'\n# errors\n",
        "  { series = 'http_requests_total{code=\"500\"}', values = '0+10x10 _ stale' },\n",
        "[[test.alert]]\neval_time = '5m'\nalertname = 'HighErrorRate'\n",
        "  { labels = { severity = 'page' }, annotations = { summary = \"line one\\nline 'two'\" } },\n",
        "  { labels = '{}', value = 50 },\n  { labels = '{a=\"b\"}', value = 0.1 },\n  { labels = '{a=\"c\"}', value = nan },\n",
    ] {
        assert!(toml.contains(want), "{want:?} not in\n{toml}");
    }
    let doc: toml::Table = toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(doc["test"].as_array().map(Vec::len), Some(1));
    let e = rule_file(
        "t.yml",
        "tests:\n  - interval: 1m\n    external_labels: {a: b}\n",
    )
    .unwrap_err();
    assert!(
        e.starts_with("t.yml:3:22: test key \"external_labels\""),
        "{e}"
    );
}
