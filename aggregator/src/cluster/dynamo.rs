//! The lease and the shared state on DynamoDB (the SDK, default features off): every write is
//! conditional, every call is cut at a quarter of the lease.
//!
//! Lease item (`lease_table`, key `name` = `lease_name`): `holder`, `epoch`, `rvn`, `address`,
//! `expires` (ms, the holder's wall clock, for people), `schema`. State item (`state_table`, key
//! `name` = `<lease_name>#state`): `epoch`, `schema`, `doc` (gzipped JSON), `written` (ms); a
//! document above one item's size is written in parts (`parts.rs`).

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;

use super::parts::{self, MAX_PARTS, PART_BYTES};
use super::{BoxFut, LeaseItem, StateDoc, Table, TableError, SCHEMA, STATE_SCHEMA};
use crate::config::{Cluster, Config};

pub struct Dynamo {
    pub(super) client: Client,
    lease_table: String,
    pub(super) state_table: String,
    /// The size of a state part ([`PART_BYTES`]; tests set less with `VIGIL_STATE_PART_BYTES`
    /// to write many-part states without megabytes of alerts).
    part_bytes: usize,
    /// The parts the state item has as this node last claimed or wrote it (0: none).
    parts: std::sync::Mutex<usize>,
    /// This node's writes of the state: the generation of a many-part write.
    writes: std::sync::atomic::AtomicU64,
}

fn failed<E, R>(call: &str, e: SdkError<E, R>) -> TableError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    if e.code() == Some("ConditionalCheckFailedException") {
        return TableError::Lost(format!("{call}: the condition no longer holds"));
    }
    TableError::Failed(format!("{call}: {}", DisplayErrorContext(e)))
}

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s(item: &HashMap<String, AttributeValue>, k: &str) -> String {
    item.get(k)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

pub(super) fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

impl Dynamo {
    /// A client whose calls end within a quarter of the lease (two attempts at most: a renewal
    /// that fails is tried again a third of the lease later anyway).
    pub async fn connect(cfg: &Config, cl: &Cluster) -> Dynamo {
        let cut = Duration::from_millis(cl.call_timeout_ms() as u64);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(cut.min(Duration::from_secs(2)))
                    .operation_attempt_timeout(cut / 2)
                    .operation_timeout(cut)
                    .build(),
            );
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Dynamo {
            client: Client::new(&sdk),
            lease_table: cl.lease_table.clone(),
            state_table: cl.state_table.clone(),
            part_bytes: std::env::var("VIGIL_STATE_PART_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|b| (1..=PART_BYTES).contains(b))
                .unwrap_or(PART_BYTES),
            parts: std::sync::Mutex::new(0),
            writes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Creates both tables (on-demand, key `name`) when missing, and waits until they are
    /// active (at most a minute).
    pub async fn create_tables(&self) -> Result<(), String> {
        for table in [&self.lease_table, &self.state_table] {
            let exists = match self.client.describe_table().table_name(table).send().await {
                Ok(_) => true,
                Err(e) if e.code() == Some("ResourceNotFoundException") => false,
                Err(e) => return Err(format!("DescribeTable {table}: {}", DisplayErrorContext(e))),
            };
            if !exists {
                let attr = AttributeDefinition::builder()
                    .attribute_name("name")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| e.to_string())?;
                let key = KeySchemaElement::builder()
                    .attribute_name("name")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| e.to_string())?;
                match self
                    .client
                    .create_table()
                    .table_name(table)
                    .attribute_definitions(attr)
                    .key_schema(key)
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
                    .await
                {
                    Ok(_) => tracing::info!(table = %table, "DynamoDB table created"),
                    // The other node of the pair created it meanwhile.
                    Err(e) if e.code() == Some("ResourceInUseException") => {}
                    Err(e) => {
                        return Err(format!("CreateTable {table}: {}", DisplayErrorContext(e)))
                    }
                }
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let status = self
                    .client
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .ok()
                    .and_then(|d| d.table().and_then(|t| t.table_status().cloned()));
                if status == Some(TableStatus::Active) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("table {table} not active after a minute"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Ok(())
    }

    fn lease_attrs(name: &str, it: &LeaseItem) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("name".to_string(), s(name)),
            ("holder".to_string(), s(&it.holder)),
            ("epoch".to_string(), n(it.epoch)),
            ("rvn".to_string(), s(&it.rvn)),
            ("address".to_string(), s(&it.address)),
            ("expires".to_string(), n(it.expires_ms)),
            ("schema".to_string(), n(SCHEMA)),
        ])
    }
}

impl Dynamo {
    /// Writes the lease item if it still names `item`'s holder and epoch (renewal, release).
    async fn put_if_held(
        &self,
        attrs: HashMap<String, AttributeValue>,
        item: &LeaseItem,
    ) -> Result<(), TableError> {
        self.client
            .put_item()
            .table_name(&self.lease_table)
            .set_item(Some(attrs))
            .condition_expression("holder = :me AND epoch = :e")
            .expression_attribute_values(":me", s(&item.holder))
            .expression_attribute_values(":e", n(item.epoch))
            .send()
            .await
            .map_err(|e| failed("PutItem", e))?;
        Ok(())
    }
}

impl Table for Dynamo {
    fn read_lease<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<LeaseItem>, TableError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_item()
                .table_name(&self.lease_table)
                .key("name", s(name))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| failed("GetItem", e))?;
            Ok(out.item().map(|it| LeaseItem {
                holder: get_s(it, "holder"),
                epoch: get_n(it, "epoch").unwrap_or(0).max(0) as u64,
                rvn: get_s(it, "rvn"),
                address: get_s(it, "address"),
                expires_ms: get_n(it, "expires").unwrap_or(0),
            }))
        })
    }

    fn take_lease<'a>(
        &'a self,
        name: &'a str,
        item: &'a LeaseItem,
        prev: Option<&'a str>,
    ) -> BoxFut<'a, Result<(), TableError>> {
        Box::pin(async move {
            let mut req = self
                .client
                .put_item()
                .table_name(&self.lease_table)
                .set_item(Some(Self::lease_attrs(name, item)));
            req = match prev {
                None => req
                    .condition_expression("attribute_not_exists(#n)")
                    .expression_attribute_names("#n", "name"),
                Some(rvn) => req
                    .condition_expression("rvn = :prev")
                    .expression_attribute_values(":prev", s(rvn)),
            };
            req.send().await.map_err(|e| failed("PutItem", e))?;
            Ok(())
        })
    }

    fn renew_lease<'a>(
        &'a self,
        name: &'a str,
        item: &'a LeaseItem,
    ) -> BoxFut<'a, Result<(), TableError>> {
        Box::pin(self.put_if_held(Self::lease_attrs(name, item), item))
    }

    fn release_lease<'a>(
        &'a self,
        name: &'a str,
        item: &'a LeaseItem,
    ) -> BoxFut<'a, Result<(), TableError>> {
        let mut attrs = Self::lease_attrs(name, item);
        attrs.insert("holder".into(), s(""));
        Box::pin(self.put_if_held(attrs, item))
    }

    fn state_epoch<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<u64, TableError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_item()
                .table_name(&self.state_table)
                .key("name", s(key))
                .projection_expression("epoch")
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| failed("GetItem", e))?;
            Ok(out
                .item()
                .and_then(|it| get_n(it, "epoch"))
                .unwrap_or(0)
                .max(0) as u64)
        })
    }

    fn claim_state<'a>(
        &'a self,
        key: &'a str,
        epoch: u64,
    ) -> BoxFut<'a, Result<StateDoc, TableError>> {
        Box::pin(async move {
            let out = self
                .client
                .update_item()
                .table_name(&self.state_table)
                .key("name", s(key))
                .update_expression("SET epoch = :e")
                .condition_expression("attribute_not_exists(epoch) OR epoch <= :e")
                .expression_attribute_values(":e", n(epoch))
                .return_values(ReturnValue::AllNew)
                .send()
                .await
                .map_err(|e| failed("UpdateItem", e))?;
            let Some(attrs) = out.attributes() else {
                return Ok(None);
            };
            let schema = get_n(attrs, "schema").unwrap_or(0).max(0) as u64;
            let count = parts::count(attrs);
            if schema > STATE_SCHEMA {
                // Not this release's to read (the caller refuses it).
                return Ok(Some((schema, Vec::new())));
            }
            let doc = if count > 0 {
                Some(self.read_parts(key, count, &get_s(attrs, "gen")).await?)
            } else {
                attrs
                    .get("doc")
                    .and_then(|d| d.as_b().ok())
                    .map(|b| b.as_ref().to_vec())
            };
            *self.parts.lock().unwrap_or_else(|p| p.into_inner()) = count;
            Ok(doc.map(|d| (schema, d)))
        })
    }

    fn write_state<'a>(
        &'a self,
        key: &'a str,
        epoch: u64,
        doc: &'a [u8],
    ) -> BoxFut<'a, Result<(), TableError>> {
        Box::pin(async move {
            let written = vigil_wire::clock::wall_ms();
            let cut = parts::split(doc, self.part_bytes);
            if cut.len() > MAX_PARTS {
                return Err(TableError::Failed(format!(
                    "the shared state ({} bytes gzipped) is larger than {MAX_PARTS} DynamoDB items hold",
                    doc.len()
                )));
            }
            let previous = *self.parts.lock().unwrap_or_else(|p| p.into_inner());
            let mut head = HashMap::from([
                ("name".to_string(), s(key)),
                ("epoch".to_string(), n(epoch)),
                ("schema".to_string(), n(SCHEMA)),
                ("written".to_string(), n(written)),
            ]);
            let count = if cut.len() == 1 {
                head.insert("doc".into(), AttributeValue::B(Blob::new(doc.to_vec())));
                0
            } else {
                // Marked so that a release reading only inline documents refuses it.
                head.insert("schema".into(), n(STATE_SCHEMA));
                head.insert(
                    "doc".into(),
                    AttributeValue::B(Blob::new(b"parts".to_vec())),
                );
                cut.len()
            };
            if count == 0 && previous == 0 {
                self.client
                    .put_item()
                    .table_name(&self.state_table)
                    .set_item(Some(head))
                    .condition_expression("epoch = :e")
                    .expression_attribute_values(":e", n(epoch))
                    .send()
                    .await
                    .map_err(|e| failed("PutItem", e))?;
            } else {
                let w = self
                    .writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let gen = format!("{epoch}.{}.{w}", std::process::id());
                let cut = if count == 0 { &[][..] } else { &cut[..] };
                self.write_parts(head, key, epoch, cut, &gen, previous)
                    .await?;
            }
            *self.parts.lock().unwrap_or_else(|p| p.into_inner()) = count;
            Ok(())
        })
    }
}
