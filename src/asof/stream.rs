//! The probe side: one stream per left partition. It waits for the shared right side, then
//! looks each left batch up and emits it with the matched right columns, in the left's order.
//! Up to one left batch per core is looked up at once, each by a task of its own, and the
//! results are emitted in the order the batches came: a left in one partition (a labels file
//! of one Parquet row group) still probes on every core. When the right side was spilled, it
//! runs the join bucket by bucket instead (see [`super::spill`]). The matching itself is the
//! kernel's; this reads, measures and emits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::FuturesOrdered;
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
    /// Reading left batches against the in-memory index.
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
    /// Left batches being looked up, oldest first.
    probing: FuturesOrdered<SpawnedTask<Result<RecordBatch>>>,
    /// At most this many left batches are looked up at once.
    parallel: usize,
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
            probing: FuturesOrdered::new(),
            parallel: super::cores(),
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

    /// Starts looking one left batch up against the in-memory index, timed as compute, on a
    /// task of its own.
    fn start_probe(&mut self, side: Arc<BuildSide>, batch: RecordBatch) {
        let (probe, schema, metrics) = (
            self.probe.clone(),
            self.schema.clone(),
            self.metrics.clone(),
        );
        self.probing.push_back(SpawnedTask::spawn(async move {
            let elapsed = metrics.baseline.elapsed_compute().clone();
            let _timer = elapsed.timer();
            let BuildSide::Memory { index, .. } = side.as_ref() else {
                return Err(DataFusionError::Internal(
                    "as-of join: probing a spilled side".into(),
                ));
            };
            probe.join(index, &batch, batch.num_columns(), &schema, &metrics)
        }));
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
                    // Start lookups while there is room and the left has batches ready.
                    let mut left_pending = false;
                    while self.probing.len() < self.parallel {
                        let Some(left) = self.left.as_mut() else {
                            break;
                        };
                        match left.poll_next_unpin(cx) {
                            Poll::Ready(Some(Ok(batch))) => self.start_probe(side.clone(), batch),
                            Poll::Ready(Some(Err(err))) => return self.fail(err),
                            Poll::Ready(None) => self.left = None,
                            Poll::Pending => {
                                left_pending = true;
                                break;
                            }
                        }
                    }
                    match self.probing.poll_next_unpin(cx) {
                        Poll::Ready(Some(joined)) => {
                            match joined.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e))) {
                                Ok(Ok(out)) if out.num_rows() == 0 => continue,
                                Ok(Ok(out)) => return self.emit(out),
                                Ok(Err(err)) | Err(err) => return self.fail(err),
                            }
                        }
                        // Nothing in flight: done once the left has ended.
                        Poll::Ready(None) if self.left.is_none() => return self.finish(),
                        Poll::Ready(None) if left_pending => return Poll::Pending,
                        Poll::Ready(None) => continue,
                        Poll::Pending => return Poll::Pending,
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
