//! Bucket files: the rows of a spilled as-of or window join's input, split by a hash of their
//! keys into [`BUCKETS`] spill files, so that each bucket is a join of its own (see `spill` and
//! `window::spill`), and the merge of the buckets' results back into the left's order.
//! The build side writes the right's buckets while it builds; the spilled run writes the
//! left's and reads both back.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use datafusion::common::Result;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SpillFile, TaskContext};
use datafusion::physical_plan::sorts::streaming_merge::SortedSpillFile;
use datafusion::physical_plan::spill::{SpillManager, get_record_batch_memory_size};

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

/// A bucket's rows are gathered until they take this many bytes (or make a batch of the
/// session's batch size) and are then written as one batch. Written as they came, a bucket's
/// part of an input batch was a 64th of it (128 rows of 8,192): each became an IPC message of
/// its own (a dozen or more `write` calls, unbuffered), and each, read back, a hand-off between
/// tasks and a call of the probe.
pub(crate) const GATHER_BYTES: usize = 256 * 1024;

/// A bucket's rows not written yet.
#[derive(Default)]
struct Gathered {
    parts: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

/// Writes rows to one spill file per bucket, opening files as buckets receive rows. A bucket's
/// rows are gathered into batches of [`GATHER_BYTES`] or of the session's batch size before
/// they are written, under a reservation of the pool: when the pool refuses it, every gathered
/// row is written at once and the writer goes on with the rows as they come.
pub(crate) struct BucketWriter {
    manager: SpillManager,
    name: String,
    files: Vec<Option<Appender>>,
    gathered: Vec<Gathered>,
    reservation: MemoryReservation,
    batch_rows: usize,
    /// The largest batch written, in bytes ([`SortedSpillFile::max_record_batch_memory`]).
    largest: usize,
}

impl BucketWriter {
    pub(crate) fn new(
        manager: SpillManager,
        context: &TaskContext,
        name: impl Into<String>,
    ) -> Self {
        let name = name.into();
        let reservation =
            MemoryConsumer::new(format!("{name} (gathered rows)")).register(context.memory_pool());
        Self {
            manager,
            files: (0..BUCKETS).map(|_| None).collect(),
            gathered: (0..BUCKETS).map(|_| Gathered::default()).collect(),
            reservation,
            batch_rows: context.session_config().batch_size().max(1),
            largest: 0,
            name,
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
            self.gather(bucket, part)?;
        }
        Ok(())
    }

    /// Adds `part` to what `bucket` has gathered, writing the bucket once it is large enough.
    fn gather(&mut self, bucket: usize, part: RecordBatch) -> Result<()> {
        let bytes = get_record_batch_memory_size(&part);
        let gathered = &self.gathered[bucket];
        if gathered.parts.is_empty()
            && (bytes >= GATHER_BYTES || part.num_rows() >= self.batch_rows)
        {
            return self.append(bucket, &part);
        }
        if self.reservation.try_grow(bytes).is_err() {
            self.flush_all()?;
            return self.append(bucket, &part);
        }
        let gathered = &mut self.gathered[bucket];
        gathered.rows += part.num_rows();
        gathered.bytes += bytes;
        gathered.parts.push(part);
        if gathered.bytes >= GATHER_BYTES || gathered.rows >= self.batch_rows {
            self.flush(bucket)?;
        }
        Ok(())
    }

    /// Writes what `bucket` has gathered, as one batch.
    fn flush(&mut self, bucket: usize) -> Result<()> {
        let gathered = std::mem::take(&mut self.gathered[bucket]);
        let Some(first) = gathered.parts.first() else {
            return Ok(());
        };
        let batch = if gathered.parts.len() == 1 {
            first.clone()
        } else {
            concat_batches(&first.schema(), &gathered.parts)?
        };
        drop(gathered.parts);
        self.reservation.shrink(gathered.bytes);
        self.append(bucket, &batch)
    }

    fn append(&mut self, bucket: usize, batch: &RecordBatch) -> Result<()> {
        self.largest = self.largest.max(get_record_batch_memory_size(batch));
        let file = match &mut self.files[bucket] {
            Some(file) => file,
            slot => slot.insert(appender(
                &self.manager,
                &format!("{} bucket {bucket}", self.name),
            )?),
        };
        file(Some(batch))?;
        Ok(())
    }

    /// Writes what is gathered and closes every file; the result has one entry per bucket.
    pub(crate) fn finish(mut self) -> Result<Vec<Option<Arc<dyn SpillFile>>>> {
        self.flush_all()?;
        self.close()
    }

    fn flush_all(&mut self) -> Result<()> {
        (0..BUCKETS).try_for_each(|bucket| self.flush(bucket))
    }

    fn close(self) -> Result<Vec<Option<Arc<dyn SpillFile>>>> {
        self.files
            .into_iter()
            .map(|file| match file {
                Some(mut file) => file(None),
                None => Ok(None),
            })
            .collect()
    }

    /// [`Self::finish`] for a writer of rows in order (all in bucket 0, say): its files, as the
    /// merge takes them, with the largest batch written (the last ones gathered too).
    pub(crate) fn finish_sorted(mut self) -> Result<Vec<SortedSpillFile>> {
        self.flush_all()?;
        let largest = self.largest;
        Ok(self
            .close()?
            .into_iter()
            .flatten()
            .map(|file| SortedSpillFile {
                file,
                max_record_batch_memory: largest,
            })
            .collect())
    }
}

/// Writes `held`, batches charged to `reservation` (`charge` bytes each), one after the other
/// with `write`, giving each batch's charge back once it is written and dropped: a build that
/// goes to disk hands what the pool held to a [`BucketWriter`], whose gathered rows then have
/// room. The caller makes sure nothing else keeps the batches' buffers alive.
pub(crate) fn write_giving_back(
    held: impl IntoIterator<Item = RecordBatch>,
    reservation: &MemoryReservation,
    charge: impl Fn(&RecordBatch) -> usize,
    mut write: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    for batch in held {
        write(&batch)?;
        let size = charge(&batch);
        drop(batch);
        reservation.shrink(size.min(reservation.size()));
    }
    Ok(())
}

/// The batches of a bucket read back from its file as one batch with buffers of its own. Read
/// back, a batch's columns are slices of one buffer per message, which Arrow's size functions
/// count once per column (and a lone batch would keep them: `concat_batches` of one batch only
/// slices it), so the index built from it would be charged several times its size.
pub(crate) fn contiguous(
    schema: &arrow::datatypes::SchemaRef,
    parts: &[RecordBatch],
) -> Result<RecordBatch> {
    if parts.len() != 1 {
        return Ok(concat_batches(schema, parts)?);
    }
    let columns = parts[0]
        .columns()
        .iter()
        .map(|column| {
            let empty = arrow::array::new_empty_array(column.data_type());
            arrow::compute::concat(&[column.as_ref(), empty.as_ref()])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Writes `input` to bucket files by the hash of its keys (`keys` of each batch), each row
/// tagged with its ordinal in `input` as a last column (`tagged` is `input`'s schema with it).
pub(crate) async fn bucket_with_ordinal(
    mut input: datafusion::execution::SendableRecordBatchStream,
    keys: impl Fn(&RecordBatch) -> Result<Vec<ArrayRef>>,
    tagged: arrow::datatypes::SchemaRef,
    manager: SpillManager,
    context: &TaskContext,
    name: String,
) -> Result<Vec<Option<Arc<dyn SpillFile>>>> {
    use futures::StreamExt;
    let mut writer = BucketWriter::new(manager, context, name);
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
    results: Vec<SortedSpillFile>,
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
pub(crate) mod tests {
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

    /// Rows written 200 to a batch, spread over the buckets: gathered into a few batches per
    /// bucket where the pool allows, written as they come where it refuses; either way every
    /// bucket has its rows, in the order they were written, and nothing stays reserved.
    #[tokio::test]
    async fn rows_are_gathered_per_bucket_and_keep_their_order() {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
        use datafusion::prelude::{SessionConfig, SessionContext};

        let (batches, rows) = (100, 200);
        // (pool bytes, session batch size): gathered whole; gathered to 64 rows at a time;
        // not gathered.
        for (limit, batch_size) in [(64 << 20, 8192), (64 << 20, 64), (1, 8192)] {
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(limit));
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_pool(pool.clone())
                .build_arc()
                .unwrap();
            let config = SessionConfig::new().with_batch_size(batch_size);
            let context = SessionContext::new_with_config_rt(config, runtime).task_ctx();
            let metrics = ExecutionPlanMetricsSet::new();
            let spill = SpillMetrics::new(&metrics, 0);
            let first = counting_batch(0, rows);
            let manager = SpillManager::new(context.runtime_env(), spill.clone(), first.schema());
            let mut writer = BucketWriter::new(manager.clone(), &context, "test");
            let mut expected: Vec<Vec<i64>> = vec![Vec::new(); BUCKETS];
            for b in 0..batches {
                let batch = counting_batch(b * rows, rows);
                let buckets = buckets_of(&[batch.column(0).clone()], batch.num_rows()).unwrap();
                for (row, bucket) in buckets.iter().enumerate() {
                    expected[*bucket as usize].push(b * rows + row as i64);
                }
                writer.write(&batch, &buckets).unwrap();
            }
            let files = writer.finish().unwrap();
            assert_eq!(pool.reserved(), 0, "limit {limit}");
            for (bucket, file) in files.into_iter().enumerate() {
                let Some(file) = file else {
                    assert!(expected[bucket].is_empty());
                    continue;
                };
                let read = read_back(&manager, file).await;
                let got = first_column(&read);
                assert_eq!(got, expected[bucket], "bucket {bucket}, limit {limit}");
                // About three rows of each batch land in a bucket: 100 parts, gathered into
                // one batch (300 rows of 8 bytes are far below the bytes and the batch size),
                // into batches of 64 rows and a few more, or written one by one.
                let most = read.iter().map(RecordBatch::num_rows).max().unwrap_or(0);
                match (limit, batch_size) {
                    (1, _) => assert!(read.len() > batches as usize / 2, "bucket {bucket}"),
                    (_, 8192) => assert_eq!(read.len(), 1, "bucket {bucket}"),
                    _ => {
                        assert!(read.len() >= got.len() / 80, "bucket {bucket}");
                        assert!((64..80).contains(&most), "bucket {bucket}: {most} rows");
                    }
                }
            }
        }
    }

    /// Rows in order, gathered until the end: the merge is told the size of the batch written
    /// last, not of none.
    #[tokio::test]
    async fn sorted_files_declare_their_largest_batch() {
        use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
        use datafusion::prelude::SessionContext;
        let context = SessionContext::new().task_ctx();
        let metrics = ExecutionPlanMetricsSet::new();
        let first = counting_batch(0, 100);
        let manager = SpillManager::new(
            context.runtime_env(),
            SpillMetrics::new(&metrics, 0),
            first.schema(),
        );
        let mut writer = BucketWriter::new(manager, &context, "sorted");
        for b in 0..3 {
            writer
                .write(&counting_batch(b * 100, 100), &[0; 100])
                .unwrap();
        }
        let files = writer.finish_sorted().unwrap();
        assert_eq!(files.len(), 1);
        // 300 values of 8 bytes, written as one batch at the end.
        assert!(files[0].max_record_batch_memory >= 300 * 8);
    }

    /// A lone batch read back from a spill file counts its message once per column; made
    /// contiguous, it counts its own columns, with the same values.
    #[tokio::test]
    async fn a_bucket_read_back_is_charged_its_own_size() {
        use datafusion::execution::runtime_env::RuntimeEnv;
        use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
        let columns: Vec<(String, ArrayRef)> = (0..8)
            .map(|c| {
                let values = Int64Array::from_iter_values(c * 1000..c * 1000 + 1000);
                (format!("c{c}"), Arc::new(values) as ArrayRef)
            })
            .collect();
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let metrics = ExecutionPlanMetricsSet::new();
        let manager = SpillManager::new(
            Arc::new(RuntimeEnv::default()),
            SpillMetrics::new(&metrics, 0),
            batch.schema(),
        );
        let file = manager
            .spill_record_batch_and_finish(std::slice::from_ref(&batch), "test")
            .unwrap()
            .unwrap();
        let read = read_back(&manager, file).await;
        assert_eq!(read.len(), 1);
        let own = batch.get_array_memory_size();
        assert!(read[0].get_array_memory_size() > 4 * own);
        let whole = contiguous(&batch.schema(), &read).unwrap();
        assert_eq!(whole, batch);
        assert!(whole.get_array_memory_size() <= own + 8 * 64);
    }

    /// The batches of a spill file, as read back.
    async fn read_back(manager: &SpillManager, file: Arc<dyn SpillFile>) -> Vec<RecordBatch> {
        use futures::TryStreamExt;
        let stream = manager.read_spill_as_stream(file, None).unwrap();
        stream.try_collect().await.unwrap()
    }

    /// The values of the batches' first column, an `Int64` one, in order.
    pub(crate) fn first_column(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let x = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                x.values().to_vec()
            })
            .collect()
    }

    fn counting_batch(from: i64, rows: i64) -> RecordBatch {
        let x = Int64Array::from_iter_values(from..from + rows);
        RecordBatch::try_from_iter([("x", Arc::new(x) as ArrayRef)]).unwrap()
    }
}
