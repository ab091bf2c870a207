//! Bucket files: the rows of a spilled as-of or window join's input, split by a hash of their
//! keys into [`BUCKETS`] spill files, so that each bucket is a join of its own (see `spill` and
//! `window::spill`), and the merge of the buckets' results back into the left's order.
//! The build side writes the right's buckets while it builds; the spilled run writes the
//! left's and reads both back.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use datafusion::common::Result;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::execution::SpillFile;
use datafusion::physical_plan::spill::SpillManager;

/// How many buckets a spilled as-of join splits each input into.
pub(crate) const BUCKETS: usize = 64;

const BUCKET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The bucket of each row, from its key arrays (all rows in bucket 0 when there are no keys).
pub(crate) fn buckets_of(keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
    if keys.is_empty() {
        return Ok(vec![0; rows]);
    }
    let mut hashes = vec![0u64; rows];
    create_hashes(keys, &RandomState::with_seed(BUCKET_SEED), &mut hashes)?;
    Ok(hashes
        .into_iter()
        .map(|h| (h % BUCKETS as u64) as u32)
        .collect())
}

/// Appends batches to one spill file; `None` finishes it. A closure, because DataFusion's
/// in-progress spill file type cannot be named outside its crate.
type Appender = Box<dyn FnMut(Option<&RecordBatch>) -> Result<Option<Arc<dyn SpillFile>>> + Send>;

fn appender(manager: &SpillManager, name: &str) -> Result<Appender> {
    let mut file = manager.create_in_progress_file(name)?;
    Ok(Box::new(move |batch| match batch {
        Some(batch) => {
            file.append_batch(batch)?;
            Ok(None)
        }
        None => file.finish(),
    }))
}

/// Writes rows to one spill file per bucket, opening files as buckets receive rows.
pub(crate) struct BucketWriter {
    manager: SpillManager,
    name: String,
    files: Vec<Option<Appender>>,
}

impl BucketWriter {
    pub(crate) fn new(manager: SpillManager, name: impl Into<String>) -> Self {
        Self {
            manager,
            name: name.into(),
            files: (0..BUCKETS).map(|_| None).collect(),
        }
    }

    /// Sends each row of `batch` to the bucket in `buckets`.
    pub(crate) fn write(&mut self, batch: &RecordBatch, buckets: &[u32]) -> Result<()> {
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); BUCKETS];
        for (row, bucket) in buckets.iter().enumerate() {
            rows[*bucket as usize].push(row as u32);
        }
        for (bucket, indices) in rows.into_iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            let part = if indices.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(indices))?
            };
            let file = match &mut self.files[bucket] {
                Some(file) => file,
                slot => slot.insert(appender(
                    &self.manager,
                    &format!("{} bucket {bucket}", self.name),
                )?),
            };
            file(Some(&part))?;
        }
        Ok(())
    }

    /// Closes every file; the result has one entry per bucket.
    pub(crate) fn finish(self) -> Result<Vec<Option<Arc<dyn SpillFile>>>> {
        self.files
            .into_iter()
            .map(|file| match file {
                Some(mut file) => file(None),
                None => Ok(None),
            })
            .collect()
    }
}

/// Writes `input` to bucket files by the hash of its keys (`keys` of each batch), each row
/// tagged with its ordinal in `input` as a last column (`tagged` is `input`'s schema with it).
pub(crate) async fn bucket_with_ordinal(
    mut input: datafusion::execution::SendableRecordBatchStream,
    keys: impl Fn(&RecordBatch) -> Result<Vec<ArrayRef>>,
    tagged: arrow::datatypes::SchemaRef,
    manager: SpillManager,
    name: String,
) -> Result<Vec<Option<Arc<dyn SpillFile>>>> {
    use futures::StreamExt;
    let mut writer = BucketWriter::new(manager, name);
    let mut ordinal = 0u64;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        let rows = batch.num_rows() as u64;
        if rows == 0 {
            continue;
        }
        let buckets = buckets_of(&keys(&batch)?, batch.num_rows())?;
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(arrow::array::UInt64Array::from_iter_values(
            ordinal..ordinal + rows,
        )));
        ordinal += rows;
        writer.write(&RecordBatch::try_new(tagged.clone(), columns)?, &buckets)?;
    }
    writer.finish()
}

/// Merges the buckets' result files, each in ordinal order (the ordinal is the last column of
/// `results_schema`), back into one stream in ordinal order, without the ordinal. The merge reads
/// as many files at once as memory allows, merging in passes when it must. `hold` (a turn, say)
/// lives until the output stream is dropped (finished or cancelled).
pub(crate) fn merge_by_ordinal<H: Send + 'static>(
    results: Vec<datafusion::physical_plan::sorts::streaming_merge::SortedSpillFile>,
    manager: SpillManager,
    results_schema: arrow::datatypes::SchemaRef,
    schema: arrow::datatypes::SchemaRef,
    context: &datafusion::execution::TaskContext,
    consumer: String,
    hold: H,
) -> Result<datafusion::execution::SendableRecordBatchStream> {
    use datafusion::execution::memory_pool::MemoryConsumer;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
    use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
    use futures::StreamExt;
    let ordinal_column = results_schema.fields().len() - 1;
    let ordinal_name = results_schema.field(ordinal_column).name().clone();
    let ordering = LexOrdering::new(vec![PhysicalSortExpr::new(
        Arc::new(Column::new(&ordinal_name, ordinal_column)),
        arrow::compute::SortOptions::default(),
    )])
    .ok_or_else(|| datafusion::error::DataFusionError::Internal("ordinal ordering".into()))?;
    let merged = datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder::new()
        .with_sorted_spill_files(results)
        .with_spill_manager(manager)
        .with_schema(results_schema)
        .with_expressions(&ordering)
        .with_metrics(BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0))
        .with_batch_size(context.session_config().batch_size())
        // The merge can merge in passes and spill between them, so it takes only its fair
        // share of the pool and never starves another partition's bucket index.
        .with_reservation(
            MemoryConsumer::new(consumer)
                .with_can_spill(true)
                .register(context.memory_pool()),
        )
        .build()?;
    let projection: Vec<usize> = (0..ordinal_column).collect();
    let output = merged.map(move |batch| {
        let _hold = &hold;
        Ok(batch?.project(&projection)?)
    });
    Ok(Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, output),
    ))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn equal_keys_share_a_bucket_across_types_of_batches() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 1]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![3, 1]));
        let x = buckets_of(&[a], 4).unwrap();
        let y = buckets_of(&[b], 2).unwrap();
        assert_eq!(x[0], x[3]);
        assert_eq!(x[0], y[1]);
        assert_eq!(x[2], y[0]);
        let s: ArrayRef = Arc::new(StringArray::from(vec!["k"; 3]));
        assert_eq!(buckets_of(&[s], 3).unwrap().len(), 3);
        assert_eq!(buckets_of(&[], 2).unwrap(), vec![0, 0]);
    }
}
