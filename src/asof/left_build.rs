//! An as-of join run with its left side indexed ([`super::labels`]): the left read whole into
//! the memory pool, the right partitions streamed through the index by a task each, then the
//! left's batches coming out in their order with their matches. A left side that does not fit
//! in the pool, or an index that does not, falls back to indexing the right side (which spills)
//! with the left batches already read.

use std::sync::{Arc, Mutex};
use std::task::Poll;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, nullif};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Result, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;

use super::build::RightExprs;
use super::chunks::{LeftInput, in_chunks, read_left, replay_all};
use super::kernel::MatchSpec;
use super::labels::{Layout, LeftIndex, RightRows, Scratch};
use super::logical::{AsOfJoinType, Tolerance};
use super::metrics::AsOfJoinMetrics;
use super::time::dense_time_keys;
use super::tolerance::tolerance_bound;
use super::window::{LeftArrays, LeftKeys};
use crate::parallel::{cores, on_threads};

/// Where an output right column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RightColumn {
    /// Column `c` of the records.
    Stored(usize),
    /// A key column: equal to left key `k` wherever a row matched.
    LeftKey(usize),
}

/// Everything a left-build run needs.
pub(crate) struct LeftBuild {
    pub left_keys: Vec<PhysicalExprRef>,
    pub left_time: PhysicalExprRef,
    /// Per key, its type and whether NULL equals NULL.
    pub key_specs: Vec<(DataType, bool)>,
    pub spec: MatchSpec,
    pub tolerance: Option<Tolerance>,
    pub join_type: AsOfJoinType,
    pub right: Arc<dyn ExecutionPlan>,
    /// The right partitions streamed, a task each.
    pub partitions: Vec<usize>,
    pub exprs: Arc<RightExprs>,
    pub layout: Layout,
    /// The right input's columns the records hold, in the layout's order.
    pub stored: Vec<usize>,
    /// Per output right column, where it comes from.
    pub outputs: Vec<RightColumn>,
    pub schema: SchemaRef,
    pub metrics: AsOfJoinMetrics,
    pub context: Arc<TaskContext>,
    /// At most this many right rows put in key order at once ([`LeftIndex::chunk_rows`] says
    /// how many; tests use a few).
    pub chunk_rows: usize,
}

/// Runs the join the usual way over a left stream (the batches already read, then the rest).
pub(crate) type Fallback =
    Box<dyn FnOnce(SendableRecordBatchStream) -> SendableRecordBatchStream + Send>;

impl LeftBuild {
    /// The joined batches, in the left's order.
    pub(crate) async fn run(
        self,
        left: SendableRecordBatchStream,
        fallback: Fallback,
    ) -> Result<SendableRecordBatchStream> {
        let mut reservation =
            MemoryConsumer::new("AsOfJoinExec[left index]").register(self.context.memory_pool());
        let started = std::time::Instant::now();
        let left_schema = left.schema();
        let give_up = |left: SendableRecordBatchStream| {
            tracing::debug!(
                target: "pitlake::asof",
                "as-of join: the left side does not fit in memory; indexing the right"
            );
            fallback(left)
        };
        let held = match read_left(left, &mut reservation).await? {
            LeftInput::Held(held) => held,
            LeftInput::TooLarge(left) => return Ok(give_up(left)),
        };
        let timer = self.metrics.build_time.timer();
        let arrays = held
            .iter()
            .map(|b| {
                let rows = b.num_rows();
                Ok(LeftArrays {
                    keys: self
                        .left_keys
                        .iter()
                        .map(|e| e.evaluate(b)?.into_array(rows))
                        .collect::<Result<_>>()?,
                    time: self.left_time.evaluate(b)?.into_array(rows)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let keys = LeftKeys::new(&self.key_specs, &arrays, "an as-of join")?;
        let index = LeftIndex::new(
            keys,
            self.spec,
            self.exprs.known_at.is_some(),
            self.layout.clone(),
        )?;
        timer.done();
        // The index with its records, and per task a chunk of right rows in key order.
        let chunk_limit = self.chunk_rows.min(index.chunk_rows());
        let wanted =
            index.memory_size() + self.partitions.len() * chunk_limit * index.chunk_row_bytes();
        if reservation.try_grow(wanted).is_err() {
            drop((index, arrays, reservation));
            return Ok(give_up(replay_all(held, left_schema)));
        }
        let indexed = started.elapsed();
        let index = Arc::new(index);
        let shared = Arc::new(Mutex::new(index.best()));
        let (exprs, stored) = (self.exprs.clone(), self.stored.clone());
        let prepare = move |batch: &RecordBatch| {
            let eval = |e: &PhysicalExprRef| e.evaluate(batch)?.into_array(batch.num_rows());
            Ok(RightRows {
                keys: exprs.keys(batch)?,
                time: eval(&exprs.time)?,
                known: exprs.known_at.as_ref().map(eval).transpose()?,
                tiebreak: exprs.tiebreak.iter().map(eval).collect::<Result<_>>()?,
                columns: stored.iter().map(|&c| batch.column(c).clone()).collect(),
            })
        };
        let (applying, records) = (index.clone(), shared.clone());
        let apply = move |scratch: &mut Scratch, chunk: &[RightRows]| {
            applying.apply(&records, scratch, chunk)
        };
        let (plan, partitions) = (&self.right, &self.partitions);
        let rows = &self.metrics.right_rows;
        in_chunks(
            plan,
            partitions,
            &self.context,
            chunk_limit,
            rows,
            prepare,
            apply,
        )
        .await?;
        let Some(mut best) = Arc::into_inner(shared).and_then(|m| m.into_inner().ok()) else {
            return internal_err!("as-of join: the records are still shared");
        };
        let streamed = started.elapsed();
        let timer = self.metrics.probe_time.timer();
        index.finish(&mut best);
        // Each left batch with its matches, on every core, in order.
        let mut offsets = Vec::with_capacity(held.len());
        let mut offset = 0;
        for b in &held {
            offsets.push(offset);
            offset += b.num_rows();
        }
        let jobs: Vec<_> = held.iter().zip(&arrays).zip(offsets).collect();
        let out = on_threads(
            cores(),
            jobs,
            |((batch, arrays), offset)| self.joined(&index, &best, batch, arrays, offset),
            || {
                DataFusionError::Internal(
                    "as-of join: a thread reading out matches panicked".into(),
                )
            },
        )?;
        timer.done();
        drop((arrays, held, best, index));
        tracing::debug!(
            target: "pitlake::asof",
            left_rows = offset,
            indexed_ms = indexed.as_millis() as u64,
            streamed_ms = (streamed - indexed).as_millis() as u64,
            finished_ms = (started.elapsed() - streamed).as_millis() as u64,
            "as-of join: left indexed, right streamed"
        );
        let metrics = self.metrics.clone();
        let stream = futures::stream::iter(out).map(move |b| {
            match metrics.baseline.record_poll(Poll::Ready(Some(Ok(b)))) {
                Poll::Ready(Some(b)) => b,
                _ => internal_err!("as-of join: a batch lost on its way out"),
            }
        });
        drop(reservation);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }

    /// One left batch (its rows from `offset` on in the index) with its right columns.
    fn joined(
        &self,
        index: &LeftIndex,
        best: &super::labels::Best,
        batch: &RecordBatch,
        arrays: &LeftArrays,
        offset: usize,
    ) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        self.metrics.left_rows.add(rows);
        let bounds = match &self.tolerance {
            Some(t) => {
                let bound = tolerance_bound(&arrays.time, t, self.spec.direction)?;
                Some(dense_time_keys(bound.as_ref())?)
            }
            None => None,
        };
        let entries: Vec<Option<usize>> = index
            .entries(best, offset..offset + rows)
            .enumerate()
            .map(|(i, entry)| {
                let bound = bounds.as_ref().map(|(keys, valid)| {
                    (!valid.as_ref().is_some_and(|v| v.is_null(i))).then(|| keys[i])
                });
                index.matched(best, entry, bound)
            })
            .collect();
        let matched: BooleanArray = entries.iter().map(|e| Some(e.is_some())).collect();
        let unmatched = arrow::compute::not(&matched)?;
        let matches = matched.true_count();
        self.metrics.matched_rows.add(matches);
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for output in &self.outputs {
            columns.push(match *output {
                RightColumn::Stored(c) => index.column(best, c, &entries)?,
                RightColumn::LeftKey(k) => nullif(&arrays.keys[k], &unmatched)?,
            });
        }
        let out = RecordBatch::try_new(self.schema.clone(), columns)?;
        match self.join_type {
            AsOfJoinType::Inner if matches < rows => Ok(filter_record_batch(&out, &matched)?),
            _ => Ok(out),
        }
    }
}
