//! A shared state larger than one DynamoDB item (400 KB) is written in parts, all at once.
//!
//! The state item keeps `epoch`, `schema`, `written`, and either the document itself (`doc`) or
//! the number of its parts (`parts`) and their generation (`gen`). Part `i` is the item
//! `<key>#part#<i>` with `gen` and its slice of the document in `doc`. A write of several parts
//! is one TransactWriteItems: the state item on the condition that its epoch is still the
//! writer's, every part, and a Delete of each part the previous write had beyond the new count.
//! All of it lands or none (a stale holder's transaction is refused whole), so readers never see
//! parts of two writes; the generation is checked on reading anyway. One transaction holds at
//! most 4 MB: at most [`MAX_PARTS`] parts of [`PART_BYTES`] each (3.5 MB of gzipped state, far
//! above what tens of thousands of alerts take).

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};

use super::dynamo::{get_n, get_s, n, s, Dynamo};
use super::TableError;

/// One part's bytes: below the 400 KB item limit with room for the key and attributes.
pub const PART_BYTES: usize = 350_000;
/// The parts of one write (a transaction holds 100 items and 4 MB).
pub const MAX_PARTS: usize = 10;

/// The item of part `i`.
pub fn part_key(key: &str, i: usize) -> String {
    format!("{key}#part#{i}")
}

/// A document cut into parts of at most `size` bytes (one part, possibly empty, at least).
pub fn split(doc: &[u8], size: usize) -> Vec<&[u8]> {
    if doc.is_empty() {
        return vec![doc];
    }
    doc.chunks(size.max(1)).collect()
}

impl Dynamo {
    /// Writes the state item (`head`) and the document's `parts` (none: the document is in
    /// `head`), in one transaction conditional on `epoch`; removes the parts of the previous
    /// write beyond the new count.
    pub(super) async fn write_parts(
        &self,
        head: HashMap<String, AttributeValue>,
        key: &str,
        epoch: u64,
        parts: &[&[u8]],
        gen: &str,
        previous: usize,
    ) -> Result<(), TableError> {
        let mut head = head;
        if !parts.is_empty() {
            head.insert("parts".into(), n(parts.len()));
            head.insert("gen".into(), s(gen));
        }
        let built = |e: aws_sdk_dynamodb::error::BuildError| TableError::Failed(e.to_string());
        let mut items = vec![TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.state_table)
                    .set_item(Some(head))
                    .condition_expression("epoch = :e")
                    .expression_attribute_values(":e", n(epoch))
                    .build()
                    .map_err(built)?,
            )
            .build()];
        for (i, part) in parts.iter().enumerate() {
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.state_table)
                            .item("name", s(&part_key(key, i)))
                            .item("gen", s(gen))
                            .item("doc", AttributeValue::B(Blob::new(part.to_vec())))
                            .build()
                            .map_err(built)?,
                    )
                    .build(),
            );
        }
        for i in parts.len()..previous {
            items.push(
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.state_table)
                            .key("name", s(&part_key(key, i)))
                            .build()
                            .map_err(built)?,
                    )
                    .build(),
            );
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // The state item's condition failed: a newer epoch claimed it.
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(TransactWriteItemsError::TransactionCanceledException(t))
                        if t.cancellation_reasons().first().and_then(|r| r.code())
                            == Some("ConditionalCheckFailed")
                ) || (e.code() == Some("TransactionCanceledException")
                    && e.message()
                        .is_some_and(|m| m.contains("[ConditionalCheckFailed"))) =>
            {
                Err(TableError::Lost(
                    "TransactWriteItems: the condition no longer holds".into(),
                ))
            }
            Err(e) => Err(TableError::Failed(format!(
                "TransactWriteItems: {}",
                DisplayErrorContext(e)
            ))),
        }
    }

    /// Reads the `count` parts of generation `gen` back into one document.
    pub(super) async fn read_parts(
        &self,
        key: &str,
        count: usize,
        gen: &str,
    ) -> Result<Vec<u8>, TableError> {
        let mut doc = Vec::new();
        for i in 0..count {
            let out = self
                .client
                .get_item()
                .table_name(&self.state_table)
                .key("name", s(&part_key(key, i)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| TableError::Failed(format!("GetItem: {}", DisplayErrorContext(e))))?;
            let item = out.item().ok_or_else(|| {
                TableError::Failed(format!(
                    "part {i} of {count} of the shared state is missing"
                ))
            })?;
            if get_s(item, "gen") != gen {
                return Err(TableError::Failed(format!(
                    "part {i} of the shared state is of another write ({} instead of {gen})",
                    get_s(item, "gen")
                )));
            }
            let bytes = item
                .get("doc")
                .and_then(|d| d.as_b().ok())
                .ok_or_else(|| TableError::Failed(format!("part {i} has no document")))?;
            doc.extend_from_slice(bytes.as_ref());
        }
        Ok(doc)
    }
}

/// The number of parts a state item says it has (0: the document is in the item itself).
pub fn count(item: &HashMap<String, AttributeValue>) -> usize {
    get_n(item, "parts").unwrap_or(0).max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_cut_into_parts_that_join_back() {
        let doc: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for size in [1, 7, 999, 1000, 1001, 5000] {
            let parts = split(&doc, size);
            assert_eq!(parts.len(), doc.len().div_ceil(size), "{size}");
            assert!(parts.iter().all(|p| p.len() <= size));
            assert_eq!(parts.concat(), doc);
        }
        let empty: &[u8] = &[];
        assert_eq!(split(empty, 10), vec![empty]);
        assert_eq!(part_key("web-tier#state", 3), "web-tier#state#part#3");
    }
}
