//! Ordering the rows that tie on key and time, best last: by the `TIEBREAK BY` columns, then by
//! the whole row, both compared in the [`arrow::row`] format built for the tied rows only.

use std::ops::Range;

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::Result;

use super::entries::{Ranked, unpack};
use super::gather::Interleaving;
use super::options::{KernelOptions, full_row_comparable};

/// Tied rows are ordered in chunks of about this many rows, to bound the memory of their
/// row encodings. Tiny under test, so that the random cases cross chunk boundaries.
const TIE_CHUNK_ROWS: usize = if cfg!(test) { 5 } else { 1 << 16 };

/// A column type and its order, for a row encoding.
type OrderField = (DataType, SortOptions);

/// Orders the rows of each run (a slice of `entries`) ascending by the row encoding of `fields`
/// over `columns` (indexed `[column][batch]`), and returns the sub-runs still tied.
fn order_runs<E: Ranked>(
    entries: &mut [E],
    runs: &[Range<usize>],
    fields: &[OrderField],
    columns: &[Vec<&dyn Array>],
) -> Result<Vec<Range<usize>>> {
    let converter = RowConverter::new(
        fields
            .iter()
            .map(|(t, o)| SortField::new_with_options(t.clone(), *o))
            .collect(),
    )?;
    let extra: Vec<ArrayRef> = fields.iter().map(|(t, _)| new_null_array(t, 1)).collect();
    let num_batches = columns.first().map_or(0, Vec::len);
    let mut still_tied = Vec::new();
    let mut perm: Vec<usize> = Vec::new();
    let mut scratch: Vec<E> = Vec::new();
    let mut chunk_start = 0;
    while chunk_start < runs.len() {
        let mut chunk_end = chunk_start;
        let mut rows = 0;
        while chunk_end < runs.len()
            && (rows == 0 || rows + runs[chunk_end].len() <= TIE_CHUNK_ROWS)
        {
            rows += runs[chunk_end].len();
            chunk_end += 1;
        }
        let chunk = &runs[chunk_start..chunk_end];
        chunk_start = chunk_end;

        let plan = Interleaving::new(
            num_batches,
            chunk
                .iter()
                .flat_map(|r| entries[r.clone()].iter().map(|e| Some(unpack(e.rref())))),
        );
        let arrays = columns
            .iter()
            .zip(&extra)
            .map(|(per_batch, extra)| plan.column(extra.as_ref(), |b| per_batch[b]))
            .collect::<Result<Vec<_>>>()?;
        let encoded = converter.convert_columns(&arrays)?;

        let mut base = 0;
        for run in chunk {
            let len = run.len();
            perm.clear();
            perm.extend(0..len);
            perm.sort_unstable_by(|&a, &b| encoded.row(base + a).cmp(&encoded.row(base + b)));
            scratch.clear();
            scratch.extend(perm.iter().map(|&p| entries[run.start + p]));
            entries[run.clone()].copy_from_slice(&scratch);
            let mut start = 0;
            for i in 1..=len {
                if i == len || encoded.row(base + perm[i]) != encoded.row(base + perm[start]) {
                    if i - start > 1 {
                        still_tied.push(run.start + start..run.start + i);
                    }
                    start = i;
                }
            }
            base += len;
        }
    }
    Ok(still_tied)
}

/// The columns that order time-tied rows.
pub(super) struct TieColumns<'a> {
    pub(super) opts: &'a KernelOptions,
    pub(super) schema: &'a SchemaRef,
    pub(super) batches: &'a [RecordBatch],
    pub(super) tiebreak: &'a [Vec<ArrayRef>],
}

impl TieColumns<'_> {
    /// Orders each run of time-tied rows so that the best row comes last: first by the tie-break
    /// columns (the row sorting first under the written order is best, so the order is reversed),
    /// then, for rows still tied, by all comparable columns, greatest last.
    pub(super) fn resolve<E: Ranked>(
        &self,
        entries: &mut [E],
        mut runs: Vec<Range<usize>>,
    ) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        if !self.opts.tiebreak.is_empty() {
            let fields: Vec<OrderField> = self
                .opts
                .tiebreak
                .iter()
                .map(|t| {
                    // Reversing both the direction and the NULL placement reverses the order.
                    let reversed = SortOptions {
                        descending: !t.options.descending,
                        nulls_first: !t.options.nulls_first,
                    };
                    (t.data_type.clone(), reversed)
                })
                .collect();
            let columns: Vec<Vec<&dyn Array>> = (0..fields.len())
                .map(|c| self.tiebreak.iter().map(|b| b[c].as_ref()).collect())
                .collect();
            runs = order_runs(entries, &runs, &fields, &columns)?;
        }
        if runs.is_empty() {
            return Ok(());
        }
        let ascending = SortOptions {
            descending: false,
            nulls_first: true,
        };
        let (fields, columns): (Vec<OrderField>, Vec<Vec<&dyn Array>>) = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| full_row_comparable(f.data_type()))
            .map(|(c, f)| {
                (
                    (f.data_type().clone(), ascending),
                    self.batches.iter().map(|b| b.column(c).as_ref()).collect(),
                )
            })
            .unzip();
        if !fields.is_empty() {
            // Rows still tied now are equal in every comparable column: either is right.
            order_runs(entries, &runs, &fields, &columns)?;
        }
        Ok(())
    }
}
