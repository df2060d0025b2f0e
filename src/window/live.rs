//! Live windows for readers outside the processor (the aggregates API): what a term that
//! holds the lease publishes, and the request it answers. The processor owns window state,
//! so a reader sends a [`LiveRequest`] over the term's bounded channel and gets the rows
//! that are not in the tables yet.

use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, oneshot};

use super::PipelineSpec;
use crate::error::Result;
use crate::sink::lake::Lake;

/// Rows not in the table yet: (open windows, closed windows waiting for a commit).
pub type LiveRows = (Vec<RecordBatch>, Vec<RecordBatch>);

/// A request to the processor for a pipeline's live rows (`None`: no such pipeline).
pub struct LiveRequest {
    pub pipeline: String,
    pub reply: oneshot::Sender<Result<Option<LiveRows>>>,
}

/// One term's pipelines: where their tables are, their output schemas, and the line to the
/// processor for live rows.
pub struct LiveWindows {
    pub lake: Lake,
    pub tables: Vec<(PipelineSpec, SchemaRef)>,
    pub requests: mpsc::Sender<LiveRequest>,
}

/// The live windows of whichever term of this process holds the lease (`None`: on standby).
#[derive(Clone, Default)]
pub struct LiveSlot(Arc<RwLock<Option<Arc<LiveWindows>>>>);

impl LiveSlot {
    pub fn set(&self, live: Option<LiveWindows>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = live.map(Arc::new);
    }

    pub fn get(&self) -> Option<Arc<LiveWindows>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
