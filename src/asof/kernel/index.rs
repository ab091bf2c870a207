//! [`RightIndex`], the finished index over the right input: what it holds, its memory, and
//! trimming it to the columns the output shows. Probing it is in `search.rs`, gathering its rows
//! in `gather.rs`.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::{Result, internal_err};

use super::entries::{Entries, KnownEntry, PlainEntry};
use super::keys::KeyTable;
use super::options::KernelOptions;

/// The finished index over the right input: probe it with left rows, gather the matched rows.
#[derive(Debug)]
pub struct RightIndex {
    pub(super) opts: KernelOptions,
    pub(super) schema: SchemaRef,
    pub(super) num_rows: usize,
    pub(super) keys: KeyTable,
    /// Group `g`'s entries are `entries[offsets[g]..offsets[g + 1]]`, ascending by activation.
    pub(super) offsets: Vec<u32>,
    pub(super) entries: Entries,
    pub(super) batches: Vec<RecordBatch>,
    pub(super) batch_bytes: usize,
    /// One all-NULL row per column, interleaved for unmatched left rows.
    pub(super) null_row: Vec<ArrayRef>,
}

impl RightIndex {
    /// Bytes held: the right batches, the index and the key table.
    pub fn memory_size(&self) -> usize {
        let entries = match &self.entries {
            Entries::Plain(e) => e.capacity() * size_of::<PlainEntry>(),
            Entries::Known(e) => e.capacity() * size_of::<KnownEntry>(),
        };
        self.batch_bytes
            + entries
            + self.offsets.capacity() * size_of::<u32>()
            + self.keys.memory_size()
            + null_row_size(&self.null_row)
    }

    /// Keeps only the right columns `keep` (ascending indices into the right input's schema):
    /// once the index is built, matching needs none of the columns, so those the output does
    /// not show (keys, times, tie-breaks, usually) can go. [`RightIndex::gather`] then returns
    /// these columns, in this order.
    pub fn retain_columns(&mut self, keep: &[usize]) -> Result<()> {
        if keep.windows(2).any(|w| w[0] >= w[1])
            || keep
                .last()
                .is_some_and(|&c| c >= self.schema.fields().len())
        {
            return internal_err!(
                "as-of index: columns {keep:?} to keep are not ascending indices"
            );
        }
        if keep.len() == self.schema.fields().len() {
            return Ok(());
        }
        let mut batches = Vec::with_capacity(self.batches.len());
        for batch in &self.batches {
            batches.push(batch.project(keep)?);
        }
        self.batches = batches;
        self.schema = Arc::new(self.schema.project(keep)?);
        self.null_row = keep.iter().map(|&c| self.null_row[c].clone()).collect();
        self.batch_bytes = self
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        Ok(())
    }

    /// The number of right rows pushed, matchable or not.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// The number of distinct right keys (0 without right rows; 1 without keys).
    pub fn num_groups(&self) -> usize {
        self.keys.num_groups as usize
    }

    /// The schema of the columns held: the right input's, as given to
    /// [`IndexBuilder::try_new`](super::IndexBuilder::try_new), less those dropped by
    /// [`RightIndex::retain_columns`].
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

/// The bytes of the one-row NULL arrays kept for unmatched rows.
pub(super) fn null_row_size(null_row: &[ArrayRef]) -> usize {
    null_row.iter().map(|a| a.get_array_memory_size()).sum()
}
