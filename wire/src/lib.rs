//! What crosses a process boundary in Vigil: the label/sample data model, Prometheus remote-write 1.0
//! (protobuf + snappy block format), and the Prometheus 0.0.4 / OpenMetrics 1.0 text formats.
//!
//! This crate does no I/O and must never depend on tokio, an HTTP stack or the AWS SDK: the agent,
//! the aggregator and the rules engine all build on it.

pub mod clock;
pub mod exposition_pb;
pub mod frame;
pub mod histogram;
pub mod labels;
pub mod remote_write;
pub mod rw_histogram;
pub mod sample;
pub mod text;

pub use labels::{encode_sorted, Label, Labels, LabelsBuilder, METRIC_NAME};
pub use sample::{is_stale_nan, Sample, STALE_NAN};
