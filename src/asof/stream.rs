//! The probe side: one stream per left partition. It waits for the shared right side, then
//! looks each left batch up and emits it with the matched right columns, in the left's order.
//! When the right side was spilled, it runs the join bucket by bucket instead (see
//! [`super::spill`]). The matching itself is the kernel's; this reads, measures and emits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};

use super::build::BuildSide;
use super::build::SharedBuild;
use super::metrics::AsOfJoinMetrics;
use super::probe::Probe;
use super::spill::{SpillContext, spilled_join};

/// Where a probe stream is.
enum State {
    /// Waiting for the right side.
    Building(SharedBuild),
    /// Reading left batches against the in-memory indexes.
    Probing(Arc<BuildSide>),
    /// Streaming the result of a spilled run.
    Spilled(SendableRecordBatchStream),
    /// The left input ended (or failed).
    Done,
}

/// The output stream of one partition of an as-of join.
pub(crate) struct AsOfStream {
    schema: SchemaRef,
    left: Option<SendableRecordBatchStream>,
    state: State,
    probe: Probe,
    spill: SpillContext,
    metrics: AsOfJoinMetrics,
}

impl AsOfStream {
    pub(crate) fn new(
        schema: SchemaRef,
        left: SendableRecordBatchStream,
        build: SharedBuild,
        probe: Probe,
        spill: SpillContext,
        metrics: AsOfJoinMetrics,
    ) -> Self {
        Self {
            schema,
            left: Some(left),
            state: State::Building(build),
            probe,
            spill,
            metrics,
        }
    }

    fn start_spilled(&mut self, side: Arc<BuildSide>) -> Result<SendableRecordBatchStream> {
        let left = self
            .left
            .take()
            .ok_or_else(|| DataFusionError::Internal("as-of stream: left taken twice".into()))?;
        let run = spilled_join(
            left,
            side,
            self.probe.clone(),
            self.spill.clone(),
            self.schema.clone(),
            self.metrics.clone(),
        );
        let stream = futures::stream::once(run).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }

    /// Joins one left batch against the in-memory indexes, timed as compute.
    fn probe_batch(&self, side: &BuildSide, batch: &RecordBatch) -> Result<RecordBatch> {
        let elapsed = self.metrics.baseline.elapsed_compute().clone();
        let _timer = elapsed.timer();
        let BuildSide::Memory { index, .. } = side else {
            return Err(DataFusionError::Internal(
                "as-of join: probing a spilled side".into(),
            ));
        };
        self.probe.join(
            index,
            batch,
            batch.num_columns(),
            &self.schema,
            &self.metrics,
        )
    }

    /// Emits a batch of output.
    fn emit(&mut self, batch: RecordBatch) -> Poll<Option<Result<RecordBatch>>> {
        self.metrics
            .baseline
            .record_poll(Poll::Ready(Some(Ok(batch))))
    }

    /// Ends the stream with an error.
    fn fail(&mut self, err: DataFusionError) -> Poll<Option<Result<RecordBatch>>> {
        self.state = State::Done;
        Poll::Ready(Some(Err(err)))
    }

    /// Ends the stream after its last batch.
    fn finish(&mut self) -> Poll<Option<Result<RecordBatch>>> {
        self.state = State::Done;
        self.metrics.baseline.done();
        Poll::Ready(None)
    }
}

impl Stream for AsOfStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.state {
                State::Building(build) => match ready!(build.poll_unpin(cx)) {
                    Ok(side) => match side.as_ref() {
                        BuildSide::Memory { .. } => self.state = State::Probing(side),
                        BuildSide::Spilled { .. } => match self.start_spilled(side) {
                            Ok(stream) => self.state = State::Spilled(stream),
                            Err(err) => return self.fail(err),
                        },
                    },
                    Err(err) => return self.fail(DataFusionError::Shared(err)),
                },
                State::Probing(side) => {
                    let side = side.clone();
                    let Some(left) = self.left.as_mut() else {
                        self.state = State::Done;
                        continue;
                    };
                    match ready!(left.poll_next_unpin(cx)) {
                        Some(Ok(batch)) => match self.probe_batch(&side, &batch) {
                            Ok(out) if out.num_rows() == 0 => continue,
                            Ok(out) => return self.emit(out),
                            Err(err) => return self.fail(err),
                        },
                        Some(Err(err)) => return self.fail(err),
                        None => return self.finish(),
                    }
                }
                State::Spilled(stream) => match ready!(stream.poll_next_unpin(cx)) {
                    Some(Ok(batch)) => return self.emit(batch),
                    Some(Err(err)) => return self.fail(err),
                    None => return self.finish(),
                },
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

impl RecordBatchStream for AsOfStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
