//! Probing the application's health endpoint: `vigil_health_up{target}` (1 when the answer has
//! the expected status within the timeout) and `vigil_health_latency_seconds{target}`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::config::HealthTarget;
use crate::http::Http;

pub struct Probe {
    pub up: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

pub async fn probe(http: &Http, t: &HealthTarget) -> Probe {
    let started = Instant::now();
    let res = http
        .request(
            Method::GET,
            &t.url,
            &[(
                "User-Agent",
                concat!("vigil-agent/", env!("CARGO_PKG_VERSION")),
            )],
            Bytes::new(),
            Duration::from_millis(t.timeout_ms),
            1 << 20,
        )
        .await;
    let latency = started.elapsed();
    match res {
        Ok(r) if r.status.as_u16() == t.expect_status => Probe {
            up: true,
            latency,
            error: None,
        },
        Ok(r) => Probe {
            up: false,
            latency,
            error: Some(format!(
                "status {} (expected {})",
                r.status.as_u16(),
                t.expect_status
            )),
        },
        Err(e) => Probe {
            up: false,
            latency,
            error: Some(e.to_string()),
        },
    }
}
