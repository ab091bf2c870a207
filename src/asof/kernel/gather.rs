//! Gathering matched right rows into output columns: one `interleave` per column over only the
//! batches the rows come from, with a one-row NULL array standing in for unmatched rows.

use arrow::array::{Array, ArrayRef, RecordBatch, new_empty_array, new_null_array};
use arrow::compute::interleave;
use datafusion::common::{Result, internal_err};

use super::index::RightIndex;
use super::options::RowRef;

/// Which rows of which batches to interleave: slot 0 is an extra one-row array (all NULL in
/// `gather`), the other slots are the batches actually referenced. Handing `interleave` only those
/// keeps its cost independent of the number of right batches (its dictionary merge scans every
/// input array).
pub(super) struct Interleaving {
    batches: Vec<usize>,
    indices: Vec<(usize, usize)>,
}

impl Interleaving {
    pub(super) fn new(num_batches: usize, refs: impl Iterator<Item = Option<RowRef>>) -> Self {
        let mut slot = vec![0usize; num_batches];
        let mut batches = Vec::new();
        let indices = refs
            .map(|r| match r {
                None => (0, 0),
                Some(r) => {
                    let s = &mut slot[r.batch as usize];
                    if *s == 0 {
                        batches.push(r.batch as usize);
                        *s = batches.len();
                    }
                    (*s, r.row as usize)
                }
            })
            .collect();
        Self { batches, indices }
    }

    /// Interleaves one column: `extra` is slot 0, `column(b)` the array of batch `b`.
    pub(super) fn column<'a>(
        &self,
        extra: &'a dyn Array,
        column: impl Fn(usize) -> &'a dyn Array,
    ) -> Result<ArrayRef> {
        let values: Vec<&dyn Array> = std::iter::once(extra)
            .chain(self.batches.iter().map(|&b| column(b)))
            .collect();
        Ok(interleave(&values, &self.indices)?)
    }
}

impl RightIndex {
    /// The right input's columns for `refs`, one output row per ref; `None` gives NULL in every
    /// column. One interleave per column over the batches referenced. Types are kept
    /// (dictionaries stay dictionaries, views stay views).
    pub fn gather(&self, refs: &[Option<RowRef>]) -> Result<Vec<ArrayRef>> {
        if refs.iter().all(Option::is_none) {
            return Ok(self
                .schema
                .fields()
                .iter()
                .map(|f| match refs.len() {
                    0 => new_empty_array(f.data_type()),
                    n => new_null_array(f.data_type(), n),
                })
                .collect());
        }
        for row in refs.iter().flatten() {
            let rows = self
                .batches
                .get(row.batch as usize)
                .map(RecordBatch::num_rows);
            if rows.is_none_or(|rows| row.row as usize >= rows) {
                return internal_err!("as-of row reference {row:?} is out of range");
            }
        }
        let plan = Interleaving::new(self.batches.len(), refs.iter().copied());
        self.null_row
            .iter()
            .enumerate()
            .map(|(c, null)| plan.column(null.as_ref(), |b| self.batches[b].column(c).as_ref()))
            .collect()
    }
}
