//! The shipped IAM policy against the calls `aws.rs` (and `aws_metrics.rs`) make.

use std::collections::BTreeSet;

/// The shipped IAM policy allows exactly the calls this module makes.
#[test]
fn the_iam_policy_allows_exactly_the_calls_made() {
    let all = include_str!("aws.rs");
    let source = [
        &all[..all.find("#[cfg(test)]").expect("a test module")],
        include_str!("aws_metrics.rs"),
        include_str!("cluster/dynamo.rs"),
        include_str!("cluster/parts.rs"),
    ]
    .concat();
    let mut made = BTreeSet::new();
    let mut ops = 0;
    for (op, actions) in [
        (
            "describe_auto_scaling_groups",
            &["autoscaling:DescribeAutoScalingGroups"][..],
        ),
        ("set_desired_capacity", &["autoscaling:SetDesiredCapacity"]),
        (
            "update_auto_scaling_group",
            &["autoscaling:UpdateAutoScalingGroup"],
        ),
        ("set_instance_health", &["autoscaling:SetInstanceHealth"]),
        (
            "terminate_instance_in_auto_scaling_group",
            &["autoscaling:TerminateInstanceInAutoScalingGroup"],
        ),
        ("put_metric_data", &["cloudwatch:PutMetricData"]),
        ("get_metric_data", &["cloudwatch:GetMetricData"]),
        ("list_metrics", &["cloudwatch:ListMetrics"]),
        (
            "describe_target_health",
            &["elasticloadbalancing:DescribeTargetHealth"],
        ),
        ("publish", &["sns:Publish"]),
        ("get_item", &["dynamodb:GetItem"]),
        ("put_item", &["dynamodb:PutItem"]),
        ("update_item", &["dynamodb:UpdateItem"]),
        ("describe_table", &["dynamodb:DescribeTable"]),
        ("create_table", &["dynamodb:CreateTable"]),
        // A transaction needs the rights of each write in it.
        (
            "transact_write_items",
            &["dynamodb:PutItem", "dynamodb:DeleteItem"],
        ),
    ] {
        let k = source.matches(&format!(".{op}()")).count();
        ops += k;
        if k > 0 {
            made.extend(actions.iter().map(|a| a.to_string()));
        }
    }
    // Every call sent is one of those above: any other would need a line there and in the
    // policy.
    assert_eq!(
        source.matches(".send()").count(),
        ops,
        "an SDK call the policy may not cover"
    );
    let policy: serde_json::Value = serde_json::from_str(include_str!(
        "../../packaging/iam/vigil-aggregator-policy.json"
    ))
    .expect("the policy is JSON");
    let allowed: BTreeSet<String> = policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert_eq!(allowed, made);
    for s in policy["Statement"].as_array().into_iter().flatten() {
        assert_eq!(s["Effect"], "Allow");
        let action = s["Action"][0].as_str().unwrap_or("");
        // Reads that take no resource-level permission or condition key.
        if ![
            "autoscaling:DescribeAutoScalingGroups",
            "cloudwatch:GetMetricData",
            "elasticloadbalancing:DescribeTargetHealth",
        ]
        .contains(&action)
        {
            assert!(
                s["Condition"].is_object() || s["Resource"] != "*",
                "{action} must be narrowed by a condition or a resource"
            );
        }
    }
}
