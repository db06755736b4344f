//! Signing requests to an engine: SigV4 for Amazon Managed Service for Prometheus, with the
//! credentials of the AWS SDK's default chain (environment, profile, web identity, ECS, instance
//! metadata: as the aggregator's other AWS clients). A signature covers the method, URL, headers
//! and body, and the time: it is made again for every attempt.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// The headers a request's signature adds.
pub type Signed<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<(String, String)>, String>> + Send + 'a>>;

/// What signs a request, given everything it will carry.
pub trait Signer: Send + Sync {
    fn sign<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        headers: &'a [(&'a str, &'a str)],
        body: &'a [u8],
    ) -> Signed<'a>;
}

/// AWS Signature Version 4 for one region and service (`aps`: Amazon Managed Service for
/// Prometheus).
pub struct SigV4 {
    region: String,
    service: String,
    credentials: SharedCredentialsProvider,
}

impl SigV4 {
    /// With the SDK's default credential chain.
    pub async fn from_env(region: &str, service: &str) -> Result<SigV4, String> {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .load()
            .await;
        let credentials = conf
            .credentials_provider()
            .ok_or("sigv4: no AWS credential provider")?;
        Ok(SigV4 {
            region: region.to_string(),
            service: service.to_string(),
            credentials,
        })
    }

    /// With fixed credentials (tests, or keys given by hand).
    pub fn with_credentials(region: &str, service: &str, credentials: Credentials) -> SigV4 {
        SigV4 {
            region: region.to_string(),
            service: service.to_string(),
            credentials: SharedCredentialsProvider::new(credentials),
        }
    }
}

impl Signer for SigV4 {
    fn sign<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        headers: &'a [(&'a str, &'a str)],
        body: &'a [u8],
    ) -> Signed<'a> {
        Box::pin(async move {
            let creds = self
                .credentials
                .provide_credentials()
                .await
                .map_err(|e| format!("sigv4: no AWS credentials: {e}"))?;
            let identity: Identity = creds.into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name(&self.service)
                .time(SystemTime::now())
                .settings(SigningSettings::default())
                .build()
                .map_err(|e| format!("sigv4: {e}"))?
                .into();
            let request = SignableRequest::new(
                method,
                url,
                headers.iter().copied(),
                SignableBody::Bytes(body),
            )
            .map_err(|e| format!("sigv4: {e}"))?;
            let (instructions, _) = sign(request, &params)
                .map_err(|e| format!("sigv4: {e}"))?
                .into_parts();
            Ok(instructions
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect())
        })
    }
}
