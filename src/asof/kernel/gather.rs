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
    /// The right columns for `refs` from several indexes of the same right input (hash
    /// partitions): each ref names the index and the row, one output row per ref; `None` gives
    /// NULL in every column. One interleave per column, whatever the number of indexes. Types
    /// are kept (dictionaries stay dictionaries, views stay views).
    pub fn gather_from(
        indexes: &[&RightIndex],
        refs: &[Option<(usize, RowRef)>],
    ) -> Result<Vec<ArrayRef>> {
        let Some(first) = indexes.first() else {
            return internal_err!("as-of gather without a right index");
        };
        if refs.iter().all(Option::is_none) {
            return Ok(first
                .schema
                .fields()
                .iter()
                .map(|f| match refs.len() {
                    0 => new_empty_array(f.data_type()),
                    n => new_null_array(f.data_type(), n),
                })
                .collect());
        }
        // Number every batch of every index: (index, batch) -> flat batch id.
        let mut offsets = Vec::with_capacity(indexes.len());
        let mut owners: Vec<(usize, usize)> = Vec::new();
        for (i, index) in indexes.iter().enumerate() {
            if index.schema != first.schema {
                return internal_err!("as-of gather over indexes of different schemas");
            }
            offsets.push(owners.len());
            owners.extend((0..index.batches.len()).map(|b| (i, b)));
        }
        let mut flat = Vec::with_capacity(refs.len());
        for r in refs {
            flat.push(match r {
                None => None,
                Some((i, row)) => {
                    let rows = indexes
                        .get(*i)
                        .and_then(|index| index.batches.get(row.batch as usize))
                        .map(RecordBatch::num_rows);
                    if rows.is_none_or(|rows| row.row as usize >= rows) {
                        return internal_err!("as-of row reference {i}:{row:?} is out of range");
                    }
                    Some(RowRef {
                        batch: (offsets[*i] + row.batch as usize) as u32,
                        row: row.row,
                    })
                }
            });
        }
        let plan = Interleaving::new(owners.len(), flat.into_iter());
        first
            .null_row
            .iter()
            .enumerate()
            .map(|(c, null)| {
                plan.column(null.as_ref(), |b| {
                    let (i, batch) = owners[b];
                    indexes[i].batches[batch].column(c).as_ref()
                })
            })
            .collect()
    }

    /// The right input's columns for `refs`, one output row per ref; `None` gives NULL in every
    /// column (see [`RightIndex::gather_from`]).
    pub fn gather(&self, refs: &[Option<RowRef>]) -> Result<Vec<ArrayRef>> {
        let refs: Vec<Option<(usize, RowRef)>> =
            refs.iter().map(|r| r.map(|row| (0, row))).collect();
        Self::gather_from(&[self], &refs)
    }
}
