//! `moto_server` for the tests, and the AWS SDK pointed at it to set up groups, topics and
//! queues and to read back what the aggregator did.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};

use crate::{free_port, peer, wait_http, Child};

/// The AMI moto knows by default (any id works for a launch configuration).
pub const AMI: &str = "ami-12c6146b";

/// Environment every process talking to moto gets: fixed test credentials, one region.
pub const ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub struct Moto {
    pub port: u16,
    _child: Child,
}

impl Moto {
    pub fn start(logdir: &Path) -> Moto {
        let port = free_port();
        let child = Child::spawn(
            "moto",
            Command::new(peer("moto_server")).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            logdir,
        );
        assert!(
            wait_http(
                &format!("http://127.0.0.1:{port}/moto-api/"),
                Duration::from_secs(30)
            ),
            "moto_server did not start"
        );
        Moto {
            port,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A runtime for the SDK calls of the (blocking) tests.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    })
    .block_on(f)
}

/// SDK clients against `endpoint` (moto, directly: the harness's own calls bypass the proxy).
pub struct Aws {
    pub asg: aws_sdk_autoscaling::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub cw: aws_sdk_cloudwatch::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    endpoint: String,
}

impl Aws {
    pub fn new(endpoint: &str) -> Aws {
        let creds = aws_sdk_sns::config::Credentials::new("testing", "testing", None, None, "test");
        let conf = block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .credentials_provider(creds)
                .load(),
        );
        Aws {
            asg: aws_sdk_autoscaling::Client::new(&conf),
            sns: aws_sdk_sns::Client::new(&conf),
            sqs: aws_sdk_sqs::Client::new(&conf),
            cw: aws_sdk_cloudwatch::Client::new(&conf),
            ddb: aws_sdk_dynamodb::Client::new(&conf),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&conf),
            endpoint: endpoint.to_string(),
        }
    }

    /// One EC2 Query API call to moto, as a form (no EC2 SDK: it costs minutes and gigabytes
    /// to build); the answer's XML.
    pub fn ec2(&self, params: &[(&str, &str)]) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Version", "2016-11-15");
        for (k, v) in params {
            form.append_pair(k, v);
        }
        let (code, body) = crate::http::post(
            &format!("{}/", self.endpoint),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                // moto routes by the credential scope's service.
                (
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
                ),
            ],
            form.finish().as_bytes(),
        )
        .expect("ec2 call");
        assert_eq!(code, 200, "{params:?}: {body}");
        body
    }

    /// The default VPC moto creates in the region.
    pub fn default_vpc(&self) -> String {
        let xml = self.ec2(&[("Action", "DescribeVpcs")]);
        xml.split("<vpcId>")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .expect("a VPC")
            .to_string()
    }

    /// Deletes the DynamoDB item keyed `name` (as an operator's mistake or a restore might).
    pub fn delete_item(&self, table: &str, name: &str) {
        block_on(
            self.ddb
                .delete_item()
                .table_name(table)
                .key(
                    "name",
                    aws_sdk_dynamodb::types::AttributeValue::S(name.to_string()),
                )
                .send(),
        )
        .expect("DeleteItem");
    }

    /// The HA cluster's shared state document as the state table holds it (read straight from
    /// moto, consistently): the state item's own document, or its parts joined when their
    /// generation is the item's; gunzipped and parsed. None while there is none, or while a
    /// write of parts is half seen.
    pub fn shared_state(&self, table: &str, key: &str) -> Option<serde_json::Value> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let get = |name: String| {
            block_on(
                self.ddb
                    .get_item()
                    .table_name(table)
                    .key("name", AttributeValue::S(name))
                    .consistent_read(true)
                    .send(),
            )
            .ok()?
            .item
        };
        let head = get(key.to_string())?;
        let text = |item: &std::collections::HashMap<String, AttributeValue>, k: &str| {
            item.get(k).and_then(|v| match v {
                AttributeValue::S(s) | AttributeValue::N(s) => Some(s.clone()),
                _ => None,
            })
        };
        let doc = |item: &std::collections::HashMap<String, AttributeValue>| {
            item.get("doc")
                .and_then(|d| d.as_b().ok())
                .map(|b| b.as_ref().to_vec())
        };
        let parts: usize = text(&head, "parts")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let bytes = if parts == 0 {
            doc(&head)?
        } else {
            let gen = text(&head, "gen")?;
            let mut all = Vec::new();
            for i in 0..parts {
                let part = get(format!("{key}#part#{i}"))?;
                if text(&part, "gen")? != gen {
                    return None;
                }
                all.extend(doc(&part)?);
            }
            all
        };
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut json)
            .ok()?;
        serde_json::from_str(&json).ok()
    }

    /// An Auto Scaling group from a launch configuration (no EC2 client needed).
    pub fn create_group(&self, name: &str, min: i32, max: i32, desired: i32) {
        block_on(async {
            self.asg
                .create_launch_configuration()
                .launch_configuration_name(format!("{name}-lc"))
                .image_id(AMI)
                .instance_type("t3.micro")
                .send()
                .await
                .expect("create launch configuration");
            self.asg
                .create_auto_scaling_group()
                .auto_scaling_group_name(name)
                .launch_configuration_name(format!("{name}-lc"))
                .min_size(min)
                .max_size(max)
                .desired_capacity(desired)
                // 1 s: moto takes 0 for "not given" and applies its 300 s default.
                .health_check_grace_period(1)
                .availability_zones("us-east-1a")
                .send()
                .await
                .expect("create auto scaling group");
        })
    }

    /// (desired, min, max, [(instance, lifecycle, health)]).
    pub fn group(&self, name: &str) -> (i32, i32, i32, Vec<(String, String, String)>) {
        block_on(async {
            let r = self
                .asg
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(name)
                .send()
                .await
                .expect("describe");
            let g = &r.auto_scaling_groups()[0];
            (
                g.desired_capacity().unwrap_or(-1),
                g.min_size().unwrap_or(-1),
                g.max_size().unwrap_or(-1),
                g.instances()
                    .iter()
                    .map(|i| {
                        (
                            i.instance_id().unwrap_or_default().to_string(),
                            i.lifecycle_state()
                                .map(|s| s.as_str().to_string())
                                .unwrap_or_default(),
                            i.health_status().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
            )
        })
    }

    /// Moves the group to `zone` and grows it to `desired`: moto launches the new instances
    /// there (it places each launch in one of the group's zones), and those already running
    /// stay where they are.
    pub fn grow_into(&self, name: &str, zone: &str, desired: i32) {
        block_on(
            self.asg
                .update_auto_scaling_group()
                .auto_scaling_group_name(name)
                .availability_zones(zone)
                .desired_capacity(desired)
                .send(),
        )
        .expect("update auto scaling group");
    }

    /// Each instance of the group: (id, zone, protected from scale-in).
    pub fn placement(&self, name: &str) -> Vec<(String, String, bool)> {
        block_on(async {
            let r = self
                .asg
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(name)
                .send()
                .await
                .expect("describe");
            r.auto_scaling_groups()[0]
                .instances()
                .iter()
                .map(|i| {
                    (
                        i.instance_id().unwrap_or_default().to_string(),
                        i.availability_zone().unwrap_or_default().to_string(),
                        i.protected_from_scale_in().unwrap_or(false),
                    )
                })
                .collect()
        })
    }

    pub fn protect_from_scale_in(&self, name: &str, instance: &str) {
        block_on(
            self.asg
                .set_instance_protection()
                .auto_scaling_group_name(name)
                .instance_ids(instance)
                .protected_from_scale_in(true)
                .send(),
        )
        .expect("set instance protection");
    }

    pub fn set_desired(&self, name: &str, n: i32) {
        block_on(
            self.asg
                .set_desired_capacity()
                .auto_scaling_group_name(name)
                .desired_capacity(n)
                .send(),
        )
        .expect("set desired capacity");
    }

    /// A topic with an SQS queue subscribed to it; returns (topic ARN, queue URL).
    pub fn topic_with_queue(&self, name: &str) -> (String, String) {
        block_on(async {
            let topic = self
                .sns
                .create_topic()
                .name(name)
                .send()
                .await
                .expect("create topic")
                .topic_arn()
                .expect("arn")
                .to_string();
            let queue = self
                .sqs
                .create_queue()
                .queue_name(format!("{name}-q"))
                .send()
                .await
                .expect("create queue")
                .queue_url()
                .expect("url")
                .to_string();
            let attrs = self
                .sqs
                .get_queue_attributes()
                .queue_url(&queue)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .expect("queue attributes");
            let arn = attrs
                .attributes()
                .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
                .expect("queue arn")
                .clone();
            self.sns
                .subscribe()
                .topic_arn(&topic)
                .protocol("sqs")
                .endpoint(arn)
                .send()
                .await
                .expect("subscribe");
            (topic, queue)
        })
    }

    /// Every message waiting in the queue (the SNS envelopes, parsed), removed from it.
    pub fn drain(&self, queue: &str) -> Vec<serde_json::Value> {
        block_on(async {
            let mut out = Vec::new();
            loop {
                let r = self
                    .sqs
                    .receive_message()
                    .queue_url(queue)
                    .max_number_of_messages(10)
                    .send()
                    .await
                    .expect("receive");
                let msgs = r.messages();
                if msgs.is_empty() {
                    break;
                }
                for m in msgs {
                    out.push(
                        serde_json::from_str(m.body().unwrap_or("null"))
                            .unwrap_or(serde_json::Value::Null),
                    );
                    if let Some(h) = m.receipt_handle() {
                        let _ = self
                            .sqs
                            .delete_message()
                            .queue_url(queue)
                            .receipt_handle(h)
                            .send()
                            .await;
                    }
                }
            }
            out
        })
    }
}
