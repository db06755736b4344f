//! The `vigil-rules` binary as users run it: every example checks and passes its tests, bad files
//! report `FILE:LINE:COL`, replay prints the expected decisions, and promtool (Debian's
//! `prometheus` package) agrees with vigil-rules on the same alerts and expressions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil-rules"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run vigil-rules");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn examples(suffix_test: bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples/rules"))
        .expect("examples/rules")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.to_string_lossy().ends_with("_test.toml") == suffix_test)
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn every_example_rule_file_checks() {
    for f in examples(false) {
        let (code, out, err) = run(bin().arg("check").arg(&f));
        assert_eq!(code, 0, "{}: {out}{err}", f.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}

#[test]
fn every_example_test_file_passes() {
    for f in examples(true) {
        let (code, out, err) = run(bin().arg("test").arg(&f));
        assert_eq!(code, 0, "{}: {out}{err}", f.display());
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn bad_rule_files_report_file_line_and_column_and_exit_1() {
    let f = root().join("rules/tests/fixtures/rules/many.bad.toml");
    let (code, out, _) = run(bin().arg("check").arg(&f));
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 10, "{out}");
    for l in lines {
        let mut parts = l.splitn(4, ':');
        let (file, line, col) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        assert!(
            file.ends_with("many.bad.toml")
                && line.parse::<u32>().is_ok()
                && col.parse::<u32>().is_ok(),
            "{l}"
        );
    }
}

#[test]
fn receivers_are_checked_against_the_aggregator_config() {
    let dir = std::env::temp_dir().join(format!("vigil-rules-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let cfg = dir.join("aggregator.toml");
    std::fs::write(&cfg, "[[receiver]]\nname = \"ops\"\n").expect("write");
    let (code, out, _) = run(bin()
        .arg("check")
        .arg(root().join("examples/rules/web.toml"))
        .arg("--config")
        .arg(&cfg));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("receiver \"oncall\" is not defined in the aggregator config"),
        "{out}"
    );
    std::fs::write(&cfg, "[[receiver]]\nname = \"oncall\"\n").expect("write");
    let (code, out, _) = run(bin()
        .arg("check")
        .arg(root().join("examples/rules/web.toml"))
        .arg("--config")
        .arg(&cfg));
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failing_tests_print_expected_and_got() {
    let dir = std::env::temp_dir().join(format!("vigil-rules-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::copy(root().join("examples/rules/web.toml"), dir.join("web.toml")).expect("copy");
    std::fs::write(
        dir.join("t_test.toml"),
        r#"rule_files = ["web.toml"]
evaluation_interval = "10s"
[[test]]
input_series = [{ series = 'vigil_health_up{asg="web-asg", instance="i-9"}', values = "0x20" }]
[[test.alert]]
eval_time = "2m"
alertname = "InstanceUnhealthy"
exp_alerts = []
[[test.expr]]
eval_time = "1m"
expr = "count(vigil_health_up)"
exp_samples = [{ labels = "{}", value = 2 }]
"#,
    )
    .expect("write");
    let (code, out, _) = run(bin().arg("test").arg(dir.join("t_test.toml")));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("alertname: InstanceUnhealthy, time: 2m"),
        "{out}"
    );
    assert!(
        out.contains("exp:[]") && out.contains("instance=\"i-9\""),
        "{out}"
    );
    assert!(
        out.contains("exp: [{} 2]") && out.contains("got: [{} 1]"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replay_lists_the_incident_in_time_order() {
    let (code, out, err) = run(bin()
        .args(["replay", "--capacity", "web-asg=4", "--rules"])
        .arg(root().join("examples/rules/web.toml"))
        .arg("--data")
        .arg(root().join("examples/data/web-incident.toml")));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let mut times: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let sorted = {
        let mut s = times.clone();
        s.sort();
        s
    };
    assert_eq!(times, sorted, "time order");
    times.dedup();
    let find = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{out}"))
    };
    let pending = find("HighErrorRate\", asg=\"web-asg\", severity=\"page\"}  inactive -> pending");
    let firing = find("HighErrorRate\", asg=\"web-asg\", severity=\"page\"}  pending -> firing");
    let resolved = find("HighErrorRate\", asg=\"web-asg\", severity=\"page\"}  firing -> inactive");
    assert!(pending < firing && firing < resolved);
    assert!(
        lines[firing].starts_with("2026-11-25T12:07:30Z"),
        "for = 2m after 12:05:30: {}",
        lines[firing]
    );
    let replaced = find("replace  web-asg i-3");
    assert!(
        lines[replaced].starts_with("2026-11-25T12:08:40Z"),
        "30s after i-3 failed at 12:08:00 (10s steps): {}",
        lines[replaced]
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("replace  web-asg i-3"))
            .count(),
        1,
        "replaced once"
    );
    assert!(find("scale    web-asg 4 -> 6 (out) by web-cpu") < firing);
    assert!(
        lines.iter().any(|l| l.contains("(in) by")),
        "scales in after the incident:\n{out}"
    );

    let (code, json, err) = run(bin()
        .args([
            "replay",
            "--format",
            "json",
            "--capacity",
            "web-asg=4",
            "--rules",
        ])
        .arg(root().join("examples/rules/web.toml"))
        .arg("--data")
        .arg(root().join("examples/data/web-incident.toml")));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let events = v.as_array().expect("array");
    assert_eq!(events.len(), lines.len());
    assert!(events.iter().any(|e| e["kind"] == "scaling"
        && e["direction"] == "out"
        && e["inputs"][0]["policy"] == "web-cpu"));
}

#[test]
fn the_tier_incident_shows_the_guards_and_the_impaired_zone() {
    let (code, out, err) = run(bin()
        .args(["replay", "--capacity", "web-asg=9", "--rules"])
        .arg(root().join("examples/rules/tier.toml"))
        .arg("--data")
        .arg(root().join("examples/data/tier-incident.toml")));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let find = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{out}"))
    };
    // The saturated database holds the scale-out, saying by how much; then it is made.
    let held_out = find("held at 9: hold_out_when of web-alb returns aws_rds_cpuutilization_average{dbinstance_identifier=\"web-db\"} = 95: would scale out from 9 to 17");
    let out_at = find("web-asg 9 -> 17 (out) by web-alb");
    assert!(lines[held_out].starts_with("2026-12-01T12:05:00Z") && held_out < out_at);
    assert!(
        lines[out_at].starts_with("2026-12-01T12:12:00Z"),
        "{}",
        lines[out_at]
    );
    // The impaired zone: paged by name, nothing replaced there; the lone failure elsewhere is.
    let paged = find("VigilReplacementFailOpen\", asg=\"web-asg\", az=\"us-east-1a\"");
    assert!(
        lines[paged].contains("inactive -> firing"),
        "{}",
        lines[paged]
    );
    let replaced = find("replace  web-asg i-b1");
    assert!(lines[replaced].contains("held: i-a1, i-a2 (failing open in us-east-1a (2 of 3)"));
    assert!(!out.contains("replace  web-asg i-a"), "{out}");
    find("fail-open-ended web-asg in us-east-1a by web-unhealthy");
    // Traffic falls while requests fail: no scale-in until the errors stop.
    let held_in = find("hold_in_when of web-alb returns {} = 0.1: would scale in from 30 to");
    let in_at = find("(in) by");
    assert!(held_in < in_at, "{out}");
    assert!(
        lines[in_at].as_bytes() >= b"2026-12-01T12:35:00Z".as_slice(),
        "{}",
        lines[in_at]
    );
}

#[test]
fn the_api_morning_shows_every_scaling_control() {
    let args = |format: &str| {
        let mut c = bin();
        c.args([
            "replay",
            "--format",
            format,
            "--capacity",
            "api-asg=2",
            "--rules",
        ])
        .arg(root().join("examples/rules/api.toml"))
        .arg("--data")
        .arg(root().join("examples/data/api-morning.toml"));
        c
    };
    let (code, out, err) = run(&mut args("text"));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let at = |time: &str, needle: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(time) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} at {time} in\n{out}"))
    };
    // Metrics gone from 06:52:10: 2 minutes after the last rate could be taken, the fallback.
    at(
        "2026-12-07T06:54:50Z",
        "api-asg 2 -> 6 (out) by api-rps: api-rps: no data for 2m: on_no_data falls back to 6 (from 2)",
    );
    // 08:00 in Paris, a Monday in winter: the schedule runs and keeps the 6.
    at(
        "2026-12-07T07:00:00Z",
        "api-asg stays at 6: api-rps: value 91.6667 within 0.1 of target 100; schedule api-weekday-peak ran at 2026-12-07T07:00:00Z: min 6, max 40",
    );
    // The burst: counted from the warm instances (the 5 launched are not asked for twice), at
    // most doubled per minute, then the 30 it needs, and never more.
    at("2026-12-07T07:10:10Z", "api-asg 6 -> 11 (out)");
    at(
        "2026-12-07T07:11:10Z",
        "api-asg 11 -> 22 (out) by api-rps: api-rps: value 500 vs target 100: ceil(6 × 500 / 100) = 30 (5 of 11 warming: counted from 6); max_scale_out of api-rps: 4 instances or 100% per 1m limits 30 to 22 (11 at the start of the last 1m)",
    );
    at(
        "2026-12-07T07:12:10Z",
        "api-asg 22 -> 30 (out) by api-rps: api-rps: value 500 vs target 100: ceil(6 × 500 / 100) = 30 (16 of 22 warming: counted from 6)",
    );
    let scaled: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("  scale    ") && l.contains(" -> "))
        .collect();
    assert_eq!(scaled.len(), 7, "{out}");
    // Nothing scales in before traffic falls at 07:25 (warming, then the floor).
    let first_in = lines.iter().position(|l| l.contains("(in) by")).unwrap();
    assert!(
        lines[first_in].starts_with("2026-12-07T07:26:00Z"),
        "{}",
        lines[first_in]
    );
    // Then 10% per 5 minutes, by the victim expression, zone by zone.
    at("2026-12-07T07:26:00Z", "api-asg 30 -> 27 (in)");
    at("2026-12-07T07:31:00Z", "api-asg 27 -> 24 (in)");
    at("2026-12-07T07:36:00Z", "api-asg 24 -> 21 (in)");
    let (code, json, err) = run(&mut args("json"));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let victims: Vec<Vec<(String, String)>> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["victims"].as_array())
        .map(|vs| {
            vs.iter()
                .map(|x| {
                    let why = x["reason"].as_str().unwrap();
                    let zone = why.split("lowest in ").nth(1).unwrap_or("?");
                    (
                        x["instance"].as_str().unwrap().to_string(),
                        zone.split(' ').next().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(victims.len(), 3, "{victims:?}");
    // The first: the instance with the fewest requests in flight in each of the three zones.
    assert_eq!(
        victims[0],
        [
            ("i-13".to_string(), "us-east-1a".to_string()),
            ("i-29".to_string(), "us-east-1b".to_string()),
            ("i-9".to_string(), "us-east-1c".to_string()),
        ]
    );
    for round in &victims {
        let zones: std::collections::BTreeSet<&String> = round.iter().map(|(_, z)| z).collect();
        assert_eq!(zones.len(), 3, "one per zone: {round:?}");
    }
    // A terminated instance is never chosen again, though its recorded data goes on.
    let all: std::collections::BTreeSet<&String> =
        victims.iter().flatten().map(|(i, _)| i).collect();
    assert_eq!(all.len(), 9, "{victims:?}");
}

#[test]
fn replay_refuses_bad_data_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("vigil-rules-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let dump = dir.join("broken.rwdump");
    std::fs::write(&dump, [0u8, 0, 0, 9, 1, 2, 3]).expect("write");
    let (code, _, err) = run(bin()
        .args(["replay", "--rules"])
        .arg(root().join("examples/rules/web.toml"))
        .arg("--data")
        .arg(&dump));
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.rwdump: remote-write dump: frame 0"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prometheus's own promtool passes the same expectations on the YAML twin of the examples:
/// both tools agree on these alerts and expressions. Required when `VIGIL_REQUIRE_PEERS` is set
/// (scripts/test installs Debian's prometheus and sets it).
#[test]
fn promtool_agrees_on_the_same_rules() {
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        assert!(
            std::env::var_os("VIGIL_REQUIRE_PEERS").is_none(),
            "promtool is required but missing"
        );
        eprintln!("promtool not installed: skipping the parity check");
        return;
    }
    let dir = root().join("rules/tests/fixtures/promtool");
    let out = Command::new("promtool")
        .args(["test", "rules", "web_test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("SUCCESS"),
        "promtool: {text}"
    );
    let (code, text, _) = run(bin()
        .arg("test")
        .arg(root().join("examples/rules/web_test.toml")));
    assert_eq!(code, 0, "{text}");
}

/// `convert` turns the promtool fixture (the YAML twin of examples/rules/web.toml, which
/// promtool checks above) into TOML that `check` accepts, with the same groups and rules.
#[test]
fn convert_turns_the_promtool_fixture_into_rules_check_accepts() {
    let yaml = root().join("rules/tests/fixtures/promtool/web.yml");
    let (code, toml, err) = run(bin().arg("convert").arg(&yaml));
    assert_eq!(code, 0, "{err}");
    assert!(toml.contains("# The alerting and recording rules of examples/rules/web.toml"));
    let dir = std::env::temp_dir().join(format!("vigil-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("web.toml");
    std::fs::write(&out, &toml).expect("write");
    let (code, text, err) = run(bin().arg("check").arg(&out));
    assert_eq!(code, 0, "{text}{err}\n{toml}");
    let groups = std::fs::read_to_string(&yaml)
        .expect("yaml")
        .matches("  - name: ")
        .count();
    let rules = std::fs::read_to_string(&yaml)
        .expect("yaml")
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("- record:") || l.trim_start().starts_with("- alert:")
        })
        .count();
    assert!(
        text.contains(&format!("ok ({rules} rules in {groups} groups")),
        "{text}"
    );
    // A key Vigil has no counterpart for is named with its position, and nothing is printed.
    std::fs::write(dir.join("bad.yml"), "groups:\n  - name: g\n    limit: 5\n").expect("bad");
    let (code, out, err) = run(bin().arg("convert").arg(dir.join("bad.yml")));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("bad.yml:3:12: group key \"limit\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The conversion corpus (`rules/tests/fixtures/convert/`): promtool test files, with floats
/// that binary cannot hold exactly, alerts with templates, `for` and `keep_firing_for`. Each
/// gets the same verdict from promtool (Debian's 2.42) and, converted with its rule file, from
/// `vigil-rules test`. (No sample lies on a range window's boundary, where 2.x and 3.x differ.)
#[test]
fn converted_promtool_tests_get_promtools_verdicts() {
    let corpus = root().join("rules/tests/fixtures/convert");
    let dir = std::env::temp_dir().join(format!("vigil-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let convert = |name: &str| {
        let (code, toml, err) = run(bin().arg("convert").arg(corpus.join(name)));
        assert_eq!(code, 0, "{name}: {err}");
        let out = dir.join(name.replace(".yml", ".toml"));
        std::fs::write(&out, toml).expect("write");
        out
    };
    convert("rules.yml");
    let promtool = Command::new("promtool").arg("--version").output().is_ok();
    assert!(
        promtool || std::env::var_os("VIGIL_REQUIRE_PEERS").is_none(),
        "promtool is required but missing"
    );
    for (name, passes) in [
        ("floats_exact_test.yml", true),
        ("floats_decimal_test.yml", false),
        ("alerts_test.yml", true),
        ("alerts_wrong_test.yml", false),
    ] {
        if promtool {
            let out = Command::new("promtool")
                .args(["test", "rules", name])
                .current_dir(&corpus)
                .output()
                .expect("promtool");
            assert_eq!(
                out.status.success(),
                passes,
                "promtool on {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (code, text, err) = run(bin().arg("test").arg(convert(name)));
        assert_eq!(code == 0, passes, "vigil-rules on {name}: {text}{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
