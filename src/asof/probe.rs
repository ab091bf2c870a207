//! How a left batch is joined against a built right index: the left expressions and the
//! join's options, shared by the in-memory probe (`stream`) and the spilled run (`spill`).

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::physical_expr::PhysicalExprRef;

use super::kernel::{Direction, RightIndex};
use super::logical::{AsOfJoinType, Tolerance};
use super::metrics::AsOfJoinMetrics;
use super::tolerance::tolerance_bound;

/// How a left batch is joined: the left expressions and the join's options.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) left_keys: Vec<PhysicalExprRef>,
    pub(crate) left_time: PhysicalExprRef,
    pub(crate) tolerance: Option<Tolerance>,
    pub(crate) direction: Direction,
    pub(crate) join_type: AsOfJoinType,
}

impl Probe {
    pub(crate) fn keys(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let rows = batch.num_rows();
        self.left_keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect()
    }

    /// Joins one left batch against the index. The output is the first `left_width` columns
    /// of `batch`, then the right columns, then (for spilled runs) the rest of `batch`.
    pub(crate) fn join(
        &self,
        index: &RightIndex,
        batch: &RecordBatch,
        left_width: usize,
        schema: &SchemaRef,
        metrics: &AsOfJoinMetrics,
    ) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        metrics.left_rows.add(rows);
        let timer = metrics.probe_time.timer();
        let keys = self.keys(batch)?;
        let time = self.left_time.evaluate(batch)?.into_array(rows)?;
        let bound = self
            .tolerance
            .as_ref()
            .map(|t| tolerance_bound(&time, t, self.direction))
            .transpose()?;
        let refs = if index.num_rows() == 0 {
            vec![None; rows]
        } else {
            index.probe(&keys, &time, bound.as_ref())?
        };
        let matched = refs.iter().filter(|r| r.is_some()).count();
        metrics.matched_rows.add(matched);
        // The right columns for every left row (NULL where unmatched), in one interleave.
        let right = index.gather(&refs)?;
        timer.done();

        let mut columns: Vec<ArrayRef> = batch.columns()[..left_width].to_vec();
        columns.extend(right);
        columns.extend(batch.columns()[left_width..].iter().cloned());
        let out = RecordBatch::try_new(schema.clone(), columns)?;
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
