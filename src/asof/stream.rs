//! The probe side: one stream per left partition. It waits for the shared right index, then
//! looks each left batch up and emits it with the matched right columns, in the left's order.
//! The matching itself is the kernel's; this only reads, measures and emits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, interleave};
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_expr::PhysicalExprRef;
use futures::{FutureExt, Stream, StreamExt};

use super::exec::{BuildSide, SharedBuild};
use super::kernel::{Direction, RowRef};
use super::logical::{AsOfJoinType, Tolerance};
use super::metrics::AsOfJoinMetrics;
use super::tolerance::tolerance_bound;

/// Where a probe stream is.
enum State {
    /// Waiting for the right index.
    Building(SharedBuild),
    /// Reading left batches.
    Probing(Arc<BuildSide>),
    /// The left input ended (or failed).
    Done,
}

/// The output stream of one partition of an as-of join.
pub(crate) struct AsOfStream {
    schema: SchemaRef,
    left: SendableRecordBatchStream,
    state: State,
    left_keys: Vec<PhysicalExprRef>,
    left_time: PhysicalExprRef,
    tolerance: Option<Tolerance>,
    direction: Direction,
    join_type: AsOfJoinType,
    metrics: AsOfJoinMetrics,
}

impl AsOfStream {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        schema: SchemaRef,
        left: SendableRecordBatchStream,
        build: SharedBuild,
        left_keys: Vec<PhysicalExprRef>,
        left_time: PhysicalExprRef,
        tolerance: Option<Tolerance>,
        direction: Direction,
        join_type: AsOfJoinType,
        metrics: AsOfJoinMetrics,
    ) -> Self {
        Self {
            schema,
            left,
            state: State::Building(build),
            left_keys,
            left_time,
            tolerance,
            direction,
            join_type,
            metrics,
        }
    }

    /// Joins one left batch.
    fn probe(&self, build: &BuildSide, batch: RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        self.metrics.left_rows.add(rows);
        let timer = self.metrics.probe_time.timer();
        let eval = |e: &PhysicalExprRef| e.evaluate(&batch)?.into_array(rows);
        let keys = self
            .left_keys
            .iter()
            .map(eval)
            .collect::<Result<Vec<_>>>()?;
        let time = eval(&self.left_time)?;
        let bound = self
            .tolerance
            .as_ref()
            .map(|t| tolerance_bound(&time, t, self.direction))
            .transpose()?;

        // Each key lives in exactly one shard, so at most one shard answers for a row.
        let mut refs: Vec<Option<(usize, RowRef)>> = vec![None; rows];
        for (shard, index) in build.shards.iter().enumerate() {
            if index.num_rows() == 0 {
                continue;
            }
            let found = index.probe(&keys, &time, bound.as_ref())?;
            for (slot, hit) in refs.iter_mut().zip(found) {
                if let Some(row) = hit {
                    *slot = Some((shard, row));
                }
            }
        }
        let matched = refs.iter().filter(|r| r.is_some()).count();
        self.metrics.matched_rows.add(matched);
        let right = gather(build, &refs)?;
        timer.done();

        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.extend(right);
        let out = RecordBatch::try_new(self.schema.clone(), columns)?;
        match self.join_type {
            AsOfJoinType::Left => Ok(out),
            AsOfJoinType::Inner if matched == rows => Ok(out),
            AsOfJoinType::Inner => {
                let keep: BooleanArray = refs.iter().map(|r| Some(r.is_some())).collect();
                Ok(filter_record_batch(&out, &keep)?)
            }
        }
    }
}

/// The right columns for every left row (NULL where unmatched), from whichever shards matched.
fn gather(build: &BuildSide, refs: &[Option<(usize, RowRef)>]) -> Result<Vec<ArrayRef>> {
    let used: Vec<usize> = {
        let mut used: Vec<usize> = refs.iter().flatten().map(|(s, _)| *s).collect();
        used.sort_unstable();
        used.dedup();
        used
    };
    let first = build
        .shards
        .first()
        .ok_or_else(|| DataFusionError::Internal("as-of join without a right shard".into()))?;
    match used.as_slice() {
        // No match, or matches from one shard: one gather straight from that shard.
        [] => first.gather(&vec![None; refs.len()]),
        [shard] => {
            let one: Vec<Option<RowRef>> = refs.iter().map(|r| r.map(|(_, row)| row)).collect();
            build.shards[*shard].gather(&one)
        }
        // Several shards: gather from each, then pick per row.
        shards => {
            let mut parts: Vec<Vec<ArrayRef>> = Vec::with_capacity(shards.len());
            for &shard in shards {
                let mine: Vec<Option<RowRef>> = refs
                    .iter()
                    .map(|r| match r {
                        Some((s, row)) if *s == shard => Some(*row),
                        _ => None,
                    })
                    .collect();
                parts.push(build.shards[shard].gather(&mine)?);
            }
            let pick: Vec<(usize, usize)> = refs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let part = r
                        .and_then(|(s, _)| shards.iter().position(|x| *x == s))
                        .unwrap_or(0);
                    (part, i)
                })
                .collect();
            let columns = parts.first().map(|p| p.len()).unwrap_or(0);
            (0..columns)
                .map(|c| {
                    let arrays: Vec<&dyn Array> = parts.iter().map(|p| p[c].as_ref()).collect();
                    Ok(interleave(&arrays, &pick)?)
                })
                .collect()
        }
    }
}

impl Stream for AsOfStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.state {
                State::Building(build) => match build.poll_unpin(cx) {
                    Poll::Ready(Ok(side)) => self.state = State::Probing(side),
                    Poll::Ready(Err(err)) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Err(DataFusionError::Shared(err))));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Probing(side) => {
                    let side = side.clone();
                    match self.left.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(batch))) => {
                            let elapsed = self.metrics.baseline.elapsed_compute().clone();
                            let timer = elapsed.timer();
                            let out = self.probe(&side, batch);
                            timer.done();
                            match out {
                                Ok(out) if out.num_rows() == 0 => continue,
                                Ok(out) => {
                                    let poll = Poll::Ready(Some(Ok(out)));
                                    return self.metrics.baseline.record_poll(poll);
                                }
                                Err(err) => {
                                    self.state = State::Done;
                                    return Poll::Ready(Some(Err(err)));
                                }
                            }
                        }
                        Poll::Ready(Some(Err(err))) => {
                            self.state = State::Done;
                            return Poll::Ready(Some(Err(err)));
                        }
                        Poll::Ready(None) => {
                            self.state = State::Done;
                            self.metrics.baseline.done();
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
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
