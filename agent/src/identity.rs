//! Who this agent speaks for: the EC2 instance (IMDSv2: a token PUT, then metadata GETs — plain
//! HTTP, no SDK), the Kubernetes pod (downward-API environment), or the hostname. Every series
//! carries `instance` and, where known, `asg`, `az`, `pod`, `namespace`.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use crate::config::{Identity as Cfg, IdentitySource};
use crate::http::Http;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub instance: String,
    pub asg: Option<String>,
    pub az: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// Where it came from, for logs.
    pub source: &'static str,
}

impl Identity {
    /// The labels every series gets, in name order.
    pub fn labels(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![("instance", self.instance.as_str())];
        for (k, val) in [
            ("asg", &self.asg),
            ("az", &self.az),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
        ] {
            if let Some(x) = val {
                v.push((k, x.as_str()));
            }
        }
        v
    }
}

/// Reads EC2 identity through IMDSv2.
pub async fn from_imds(http: &Http, endpoint: &str, timeout: Duration) -> Option<Identity> {
    let token = http
        .request(
            Method::PUT,
            &format!("{endpoint}/latest/api/token"),
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
            Bytes::new(),
            timeout,
            4096,
        )
        .await
        .ok()
        .filter(|r| r.status.is_success())?;
    let token = String::from_utf8(token.body.to_vec()).ok()?;
    let get = |path: &'static str| {
        let token = token.clone();
        async move {
            let r = http
                .request(
                    Method::GET,
                    &format!("{endpoint}/latest/meta-data/{path}"),
                    &[("X-aws-ec2-metadata-token", token.trim())],
                    Bytes::new(),
                    timeout,
                    4096,
                )
                .await
                .ok()?;
            if !r.status.is_success() {
                return None;
            }
            String::from_utf8(r.body.to_vec())
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        }
    };
    let instance = get("instance-id").await?;
    let az = get("placement/availability-zone").await;
    // Present only when instance metadata tags are enabled on the instance.
    let asg = get("tags/instance/aws:autoscaling:groupName").await;
    Some(Identity {
        instance,
        asg,
        az,
        pod: None,
        namespace: None,
        source: "ec2",
    })
}

/// Reads the pod's identity from the downward API environment (`POD_NAME`, `POD_NAMESPACE`),
/// falling back to `HOSTNAME` and the service account's namespace file.
pub fn from_kubernetes(env: &dyn Fn(&str) -> Option<String>) -> Option<Identity> {
    let in_cluster = env("KUBERNETES_SERVICE_HOST").is_some();
    let pod = env("POD_NAME").or_else(|| in_cluster.then(|| env("HOSTNAME")).flatten())?;
    let namespace = env("POD_NAMESPACE").or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_string())
    });
    if !in_cluster && env("POD_NAMESPACE").is_none() {
        return None;
    }
    Some(Identity {
        instance: pod.clone(),
        asg: None,
        az: None,
        pod: Some(pod),
        namespace,
        source: "kubernetes",
    })
}

/// Resolves the identity as configured, then applies the static overrides.
pub async fn resolve(cfg: &Cfg, http: &Http) -> Identity {
    let timeout = Duration::from_millis(cfg.imds_timeout_ms);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let found = match cfg.source {
        IdentitySource::Ec2 => from_imds(http, &cfg.imds_endpoint, timeout).await,
        IdentitySource::Kubernetes => from_kubernetes(&env),
        IdentitySource::Static => None,
        IdentitySource::Auto => match from_imds(http, &cfg.imds_endpoint, timeout).await {
            Some(i) => Some(i),
            None => from_kubernetes(&env),
        },
    };
    let mut id = found.unwrap_or_else(|| Identity {
        instance: vigil_config::hostname(),
        source: "hostname",
        ..Default::default()
    });
    if cfg.source == IdentitySource::Static {
        id.source = "static";
    }
    if let Some(i) = &cfg.instance {
        id.instance = i.clone();
    }
    for (dst, src) in [
        (&mut id.asg, &cfg.asg),
        (&mut id.az, &cfg.az),
        (&mut id.pod, &cfg.pod),
        (&mut id.namespace, &cfg.namespace),
    ] {
        if src.is_some() {
            dst.clone_from(src);
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_from_the_downward_api() {
        let env = |k: &str| match k {
            "POD_NAME" => Some("web-7d9f".to_string()),
            "POD_NAMESPACE" => Some("shop".to_string()),
            _ => None,
        };
        let id = from_kubernetes(&env).unwrap();
        assert_eq!(
            (id.instance.as_str(), id.namespace.as_deref()),
            ("web-7d9f", Some("shop"))
        );
        assert_eq!(
            id.labels(),
            [
                ("instance", "web-7d9f"),
                ("namespace", "shop"),
                ("pod", "web-7d9f")
            ]
        );
        assert!(from_kubernetes(&|_| None).is_none());
    }
}
