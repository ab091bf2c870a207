//! The inputs of a join that indexes its left side: the left read whole into the memory pool
//! (or, when it does not fit, handed back for the other way round), and the right read once,
//! in parts (a file scan split into byte ranges, [`Input`]) taken by a task per core, each
//! part's batches gathered into chunks that are handed on whole (a chunk is put in the order
//! of the left's keys before it is applied, see `labels` and `window::labels`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::{Result, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_plan::metrics::{Count, SpillMetrics};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::parallel::cores;

/// A left input read for indexing.
pub(crate) enum LeftInput {
    /// All of it, held in the reservation.
    Held(Vec<RecordBatch>),
    /// It did not fit: the batches read so far (from a spill file, [`replay_from_disk`]), then
    /// the rest, as one stream again.
    TooLarge(SendableRecordBatchStream),
}

/// Reads `left` whole, growing `reservation` by each batch; at the first batch that does not
/// fit, gives the input back whole ([`replay_from_disk`], spill counted in `spill`) with the
/// reservation emptied.
pub(crate) async fn read_left(
    mut left: SendableRecordBatchStream,
    reservation: &mut MemoryReservation,
    context: &TaskContext,
    spill: &SpillMetrics,
) -> Result<LeftInput> {
    let mut held = Vec::new();
    while let Some(batch) = left.next().await {
        let batch = batch?;
        let grown = reservation.try_grow(batch.get_array_memory_size());
        held.push(batch);
        if grown.is_err() {
            reservation.free();
            return Ok(LeftInput::TooLarge(replay_from_disk(
                held, left, context, spill,
            )));
        }
    }
    Ok(LeftInput::Held(held))
}

/// The batches `held`, then `rest`, as one stream.
pub(crate) fn replay(
    held: Vec<RecordBatch>,
    rest: SendableRecordBatchStream,
) -> SendableRecordBatchStream {
    let schema = rest.schema();
    let stream = futures::stream::iter(held.into_iter().map(Ok)).chain(rest);
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

/// The batches `held` alone, as a stream of `schema`.
pub(crate) fn replay_all(
    held: Vec<RecordBatch>,
    schema: arrow::datatypes::SchemaRef,
) -> SendableRecordBatchStream {
    replay(held, empty(schema))
}

/// No batches, of `schema`.
pub(crate) fn empty(schema: arrow::datatypes::SchemaRef) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::empty(),
    ))
}

/// The batches `held` (of `rest`'s schema), then `rest`, as one stream, `held` written to a
/// spill file first and read back from it (counted in `spill`). A join whose left side did not
/// fit goes the other way: it indexes its right side before it reads its left, and batches
/// kept in memory meanwhile would sit outside the pool, beside a right side that takes the
/// whole pool (at the shared workload's large scale under `--memory-limit 1GiB`, a peak of
/// 2.4 GB). Where no spill file can be written (no disk manager), they stay in memory.
pub(crate) fn replay_from_disk(
    held: Vec<RecordBatch>,
    rest: SendableRecordBatchStream,
    context: &TaskContext,
    spill: &SpillMetrics,
) -> SendableRecordBatchStream {
    if held.is_empty() {
        return rest;
    }
    let schema = rest.schema();
    let manager = SpillManager::new(context.runtime_env(), spill.clone(), schema.clone());
    let written = manager
        .spill_record_batch_and_finish(&held, "AsOfJoin[left held]")
        .and_then(|file| {
            file.map(|f| manager.read_spill_as_stream(f, None))
                .transpose()
        });
    match written {
        Ok(Some(read)) => {
            drop(held);
            crate::memory::release_free_memory();
            Box::pin(RecordBatchStreamAdapter::new(schema, read.chain(rest)))
        }
        Ok(None) => replay(held, rest),
        Err(e) => {
            tracing::debug!(
                target: "pitlake::asof",
                "as-of join: the left rows read could not be spilled ({e}); kept in memory"
            );
            replay(held, rest)
        }
    }
}

/// The partitions of a right input that a join reads, as the parts it reads them in.
pub(crate) struct Input {
    pub plan: Arc<dyn ExecutionPlan>,
    pub partitions: Vec<usize>,
    /// Whether each partition can be read on its own ([`Part::alone`]).
    pub alone: bool,
}

impl Input {
    /// How many byte ranges per core a file scan read whole is split into: a partition is read
    /// by one task, so the last one read leaves the other cores idle for as long as it takes;
    /// split this fine, it is at most a sixteenth of a core's share (or one row group, which
    /// is never split) instead of half of it.
    pub(crate) const RANGES_PER_CORE: usize = 16;

    /// `partitions` of `plan`, the parts a join reads them in. Where they are all of its
    /// partitions and `plan` is a file scan (a Delta or Parquet table's) that can be split by
    /// byte ranges (DataFusion's `repartition_file_scans`, `repartition_file_min_size`), into
    /// [`Self::RANGES_PER_CORE`] ranges per core, each read on its own; else as they are, read
    /// at once ([`Parts::start`]). A `RepartitionExec` is read as it is: split finer, it
    /// would share the rows it deals out with the plan it came from.
    pub(crate) fn of(
        plan: &Arc<dyn ExecutionPlan>,
        partitions: &[usize],
        context: &TaskContext,
    ) -> Result<Self> {
        let count = plan.output_partitioning().partition_count();
        let options = context.session_config().options();
        let target = Self::RANGES_PER_CORE * cores();
        if options.optimizer.repartition_file_scans
            && !plan.is::<RepartitionExec>()
            && target > count
            && partitions.iter().copied().eq(0..count)
            && let Some(finer) = plan.clone().repartitioned(target, options)?
        {
            let partitions = (0..finer.output_partitioning().partition_count()).collect();
            return Ok(Self {
                plan: finer,
                partitions,
                alone: true,
            });
        }
        Ok(Self {
            plan: plan.clone(),
            partitions: partitions.to_vec(),
            alone: false,
        })
    }

    /// How many of the parts are read at once: a task per core, or all of them where they
    /// cannot be read alone.
    pub(crate) fn readers(&self) -> usize {
        if self.alone {
            cores().min(self.partitions.len())
        } else {
            self.partitions.len()
        }
    }
}

/// How many times a chunk of right rows may be halved to fit the memory pool ([`halved`]): a
/// chunk of a 64th of the rows asked for still costs a pass over the left's groups (its
/// counting sort), which narrower chunks would let outweigh their rows. A join whose chunks do
/// not fit the pool at the width it asks for streams its right side through its left index in
/// narrower ones, more slowly, rather than going the other way (indexing the right side, which
/// spills): on a machine of many cores a task per core, each holding 2^20 rows, takes
/// gigabytes.
pub(crate) const HALVINGS: u32 = 6;

/// `wide` rows halved `halvings` times, rounded up: at least one row.
pub(crate) fn halved(wide: usize, halvings: u32) -> usize {
    wide.max(1).div_ceil(1 << halvings)
}

/// About the bytes one right row of `schema` takes while a task holds it in a chunk: its
/// decoded columns (a column of fixed-width values its width, any other a guess of 32 bytes,
/// each with a byte for its validity bit and for slack).
pub(crate) fn held_row_bytes(schema: &arrow::datatypes::Schema) -> usize {
    schema
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(32) + 1)
        .sum()
}

/// What a part's batches become, and what is done with a chunk of them (with the scratch value
/// of the task doing it).
pub(crate) type Prepare<T> = Arc<dyn Fn(&RecordBatch) -> Result<T> + Send + Sync>;
pub(crate) type Apply<T, S> = Arc<dyn Fn(&mut S, &[T]) -> Result<()> + Send + Sync>;

/// One right partition to read: every batch is counted in `rows` and turned into an item by
/// `prepare`, and the items are handed to `apply` in chunks of at least `chunk_rows` rows (the
/// last one whatever is left). `job` says whose part it is (a join of a chain).
pub(crate) struct Part<T, S> {
    pub plan: Arc<dyn ExecutionPlan>,
    pub partition: usize,
    /// Whether the part can be read on its own (a file scan's), or only beside the rest of its
    /// job's (a `RepartitionExec`'s).
    pub alone: bool,
    pub job: usize,
    pub rows: Count,
    pub chunk_rows: usize,
    pub prepare: Prepare<T>,
    pub apply: Apply<T, S>,
}

impl<T, S> Part<T, S> {
    /// The parts of job `job`: `input`'s, each read as [`Part`] says.
    pub(crate) fn each(
        input: &Input,
        job: usize,
        rows: &Count,
        chunk_rows: usize,
        prepare: &Prepare<T>,
        apply: &Apply<T, S>,
    ) -> impl Iterator<Item = Self> {
        let (plan, alone, rows, prepare, apply) = (
            input.plan.clone(),
            input.alone,
            rows.clone(),
            prepare.clone(),
            apply.clone(),
        );
        input
            .partitions
            .clone()
            .into_iter()
            .map(move |partition| Part {
                plan: plan.clone(),
                partition,
                alone,
                job,
                rows: rows.clone(),
                chunk_rows,
                prepare: prepare.clone(),
                apply: apply.clone(),
            })
    }
}

/// Parts being read by a few tasks, each taking the next part not yet taken, in the order
/// given: when one task's part ends before the others', it goes on with the next part (the next
/// join's, in a chain) instead of waiting. Dropping this stops the tasks.
pub(crate) struct Parts {
    tasks: Vec<SpawnedTask<()>>,
    /// The tasks' reports, or the first error.
    done: tokio::sync::mpsc::UnboundedReceiver<Result<Report>>,
    /// Per job, its parts not done yet.
    left: Vec<usize>,
    /// How many tasks have found no part left to take.
    idle: usize,
}

/// What a task reading parts tells.
enum Report {
    /// It has read a part of this job.
    Done(usize),
    /// It found no part left to take, and ended.
    Idle,
}

impl Parts {
    /// Starts reading `parts` on as many tasks as there are cores, or, where a job's parts
    /// cannot be read alone ([`Part::alone`]), as it has parts if more: those are read at once
    /// (an input that deals its rows out to its partitions, a `RepartitionExec`, would
    /// otherwise hold those of the ones not read). The next parts, the next job's, start as
    /// tasks come free.
    pub(crate) fn start<T, S>(parts: Vec<Part<T, S>>, context: &Arc<TaskContext>) -> Self
    where
        T: Send + 'static,
        S: Default + Send + 'static,
    {
        let jobs = parts.iter().map(|p| p.job + 1).max().unwrap_or(0);
        let mut left = vec![0; jobs];
        // Per job, how many of its parts must be read at once.
        let mut together = vec![1; jobs];
        for part in &parts {
            left[part.job] += 1;
            if !part.alone {
                together[part.job] = left[part.job];
            }
        }
        let tasks = cores()
            .max(together.iter().copied().max().unwrap_or(0))
            .min(parts.len());
        let queue = Arc::new(Mutex::new(VecDeque::from(parts)));
        let (report, done) = tokio::sync::mpsc::unbounded_channel();
        let tasks = (0..tasks)
            .map(|_| {
                let (queue, report, context) = (queue.clone(), report.clone(), context.clone());
                SpawnedTask::spawn(async move {
                    let mut scratch = S::default();
                    loop {
                        let next = match queue.lock() {
                            Ok(mut queue) => queue.pop_front(),
                            Err(_) => None,
                        };
                        let Some(part) = next else {
                            let _ = report.send(Ok(Report::Idle));
                            return;
                        };
                        let job = part.job;
                        // The part (and what its closures hold) is gone before it is reported.
                        let result = read_part(part, &mut scratch, &context).await;
                        let failed = result.is_err();
                        if report.send(result.map(|()| Report::Done(job))).is_err() || failed {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            tasks,
            done,
            left,
            idle: 0,
        }
    }

    /// Waits until every part of `job` is done (reports of other jobs are counted on the way),
    /// or returns the first error.
    pub(crate) async fn finished(&mut self, job: usize) -> Result<()> {
        while self.left.get(job).is_some_and(|&n| n > 0) {
            self.next_report().await?;
        }
        Ok(())
    }

    /// Waits until a task has no part left to take (a core comes free for other work while
    /// the last parts are read), or every part is done; or returns the first error.
    pub(crate) async fn a_task_idle(&mut self) -> Result<()> {
        while self.idle == 0 && self.left.iter().any(|&n| n > 0) {
            self.next_report().await?;
        }
        Ok(())
    }

    /// Counts the next report.
    async fn next_report(&mut self) -> Result<()> {
        match self.done.recv().await {
            Some(Ok(Report::Done(job))) => self.left[job] -= 1,
            Some(Ok(Report::Idle)) => self.idle += 1,
            Some(Err(e)) => return Err(e),
            None => return internal_err!("a task reading a join's right side stopped early"),
        }
        Ok(())
    }

    /// Waits for every part, then for the tasks to end.
    pub(crate) async fn all_finished(mut self) -> Result<()> {
        for job in 0..self.left.len() {
            self.finished(job).await?;
        }
        for task in std::mem::take(&mut self.tasks) {
            task.join()
                .await
                .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?;
        }
        Ok(())
    }
}

/// Reads one part whole, in chunks.
async fn read_part<T, S>(
    part: Part<T, S>,
    scratch: &mut S,
    context: &Arc<TaskContext>,
) -> Result<()> {
    let mut stream = part.plan.execute(part.partition, context.clone())?;
    let (mut chunk, mut held) = (Vec::new(), 0);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        part.rows.add(batch.num_rows());
        held += batch.num_rows();
        chunk.push((part.prepare)(&batch)?);
        if held >= part.chunk_rows {
            (part.apply)(scratch, &chunk)?;
            (chunk, held) = (Vec::new(), 0);
        }
    }
    (part.apply)(scratch, &chunk)
}

/// Reads `partitions` of `plan` ([`Parts`], one job), handing their batches to `apply` in
/// chunks of at least `chunk_rows` rows, as [`Part`] says. Returns once every partition is
/// read, with the first error.
pub(crate) async fn in_chunks<T, S>(
    input: &Input,
    context: &Arc<TaskContext>,
    chunk_rows: usize,
    rows: &Count,
    prepare: Prepare<T>,
    apply: Apply<T, S>,
) -> Result<()>
where
    T: Send + 'static,
    S: Default + Send + 'static,
{
    let parts = Part::each(input, 0, rows, chunk_rows, &prepare, &apply).collect();
    drop((prepare, apply));
    Parts::start(parts, context).all_finished().await
}

/// Writes `batches` (of `schema`) to the Parquet file `path` in row groups of `group_rows`
/// rows, for [`parquet_scan`] to read.
#[cfg(test)]
pub(crate) fn parquet_file(
    path: &std::path::Path,
    schema: arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    group_rows: usize,
) {
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows.max(1)))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
}

/// A scan of the Parquet file `path` (of `schema`) as one partition: a file scan that
/// [`Input::of`] splits by byte ranges (under a session whose `repartition_file_min_size` is
/// below the file's size).
#[cfg(test)]
pub(crate) fn parquet_scan(
    path: &std::path::Path,
    schema: arrow::datatypes::SchemaRef,
) -> Arc<dyn ExecutionPlan> {
    use datafusion::datasource::listing::PartitionedFile;
    use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::execution::object_store::ObjectStoreUrl;

    let size = std::fs::metadata(path).unwrap().len();
    let source = Arc::new(ParquetSource::new(schema));
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
        .with_file(PartitionedFile::new(path.display().to_string(), size))
        .build();
    DataSourceExec::from_data_source(config)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::{Int64Array, RecordBatch};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// A plan of `partitions` partitions, partition `p` holding `p + 1` batches of 10 rows.
    fn plan(partitions: usize) -> Arc<dyn ExecutionPlan> {
        let batch = |n: i64| {
            RecordBatch::try_from_iter([(
                "x",
                Arc::new(Int64Array::from_iter_values(n..n + 10)) as _,
            )])
            .unwrap()
        };
        let parts: Vec<Vec<RecordBatch>> = (0..partitions)
            .map(|p| (0..=p as i64).map(|b| batch(100 * p as i64 + b)).collect())
            .collect();
        MemorySourceConfig::try_new_exec(&parts, parts[0][0].schema(), None).unwrap()
    }

    /// A left side larger than the pool is given back whole and in order, the batches read so
    /// far from a spill file (so they do not wait in memory outside the pool while the join
    /// indexes its right side), with nothing left reserved; one that fits is held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_left_side_too_large_is_given_back_from_disk() {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
        let whole: Vec<i64> = (0..100).collect();
        for (limit, fits) in [(1 << 20, true), (500, false)] {
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(limit));
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_pool(pool.clone())
                .build_arc()
                .unwrap();
            let context = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
            let context = context.task_ctx();
            let left = ten_batches();
            let metrics = ExecutionPlanMetricsSet::new();
            let spill = SpillMetrics::new(&metrics, 0);
            let mut reservation = MemoryConsumer::new("left").register(&pool);
            let stream = left.execute(0, context.clone()).unwrap();
            let read = read_left(stream, &mut reservation, &context, &spill)
                .await
                .unwrap();
            let batches = match read {
                LeftInput::Held(held) => {
                    assert!(fits, "a left of 100 rows held in {limit} bytes");
                    assert!(reservation.size() > 0);
                    held
                }
                LeftInput::TooLarge(stream) => {
                    assert!(!fits, "a left of 100 rows not held in {limit} bytes");
                    assert_eq!(reservation.size(), 0);
                    assert_eq!(spill.spill_file_count.value(), 1);
                    assert!(spill.spilled_rows.value() > 0);
                    futures::TryStreamExt::try_collect::<Vec<_>>(stream)
                        .await
                        .unwrap()
                }
            };
            let got = crate::asof::bucket::tests::first_column(&batches);
            assert_eq!(got, whole, "limit {limit}");
        }
    }

    /// `count` batches of `rows` rows of one column `x`, counting from 0.
    fn counting(count: i64, rows: i64) -> Vec<RecordBatch> {
        (0..count)
            .map(|b| {
                let x = Int64Array::from_iter_values(b * rows..(b + 1) * rows);
                RecordBatch::try_from_iter([("x", Arc::new(x) as _)]).unwrap()
            })
            .collect()
    }

    /// One partition of ten batches of ten rows, 0 to 99 in order.
    fn ten_batches() -> Arc<dyn ExecutionPlan> {
        let batches = counting(10, 10);
        let schema = batches[0].schema();
        MemorySourceConfig::try_new_exec(&[batches], schema, None).unwrap()
    }

    /// Parts of several jobs, more than there are tasks: every row reaches its job's `apply`
    /// once, and a job is reported finished only when all of its parts are; an error in one
    /// part is the result, whichever task met it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_are_read_whole_and_jobs_reported_when_done() {
        let context = SessionContext::new().task_ctx();
        let jobs = [(3usize, 7usize), (5, 1), (2, 1000)];
        let sums: Vec<Arc<AtomicUsize>> = jobs.iter().map(|_| Default::default()).collect();
        let mut parts = Vec::new();
        for (job, &(partitions, chunk_rows)) in jobs.iter().enumerate() {
            let input = plan(partitions);
            let sum = sums[job].clone();
            let apply: Apply<usize, ()> = Arc::new(move |_, chunk: &[usize]| {
                sum.fetch_add(chunk.iter().sum(), Ordering::Relaxed);
                Ok(())
            });
            let prepare: Prepare<usize> = Arc::new(|b: &RecordBatch| Ok(b.num_rows()));
            let all: Vec<usize> = (0..partitions).collect();
            let input = Input {
                plan: input,
                partitions: all,
                alone: false,
            };
            parts.extend(Part::each(
                &input,
                job,
                &Count::new(),
                chunk_rows,
                &prepare,
                &apply,
            ));
        }
        let mut reading = Parts::start(parts, &context);
        for (job, &(partitions, _)) in jobs.iter().enumerate() {
            reading.finished(job).await.unwrap();
            // Partition p has p + 1 batches of 10 rows.
            let rows = 10 * partitions * (partitions + 1) / 2;
            assert_eq!(sums[job].load(Ordering::Relaxed), rows, "job {job}");
        }
        reading.all_finished().await.unwrap();

        let failing: Prepare<usize> = Arc::new(|b: &RecordBatch| {
            let first = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            match first.value(0) {
                301 => internal_err!("batch 301 refused"),
                _ => Ok(b.num_rows()),
            }
        });
        let apply: Apply<usize, ()> = Arc::new(|_, _| Ok(()));
        let input = plan(6);
        let parts = (0..6)
            .map(|partition| Part {
                plan: input.clone(),
                partition,
                alone: false,
                job: partition % 2,
                rows: Count::new(),
                chunk_rows: 1,
                prepare: failing.clone(),
                apply: apply.clone(),
            })
            .collect();
        let err = Parts::start(parts, &context)
            .all_finished()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("batch 301 refused"), "{err}");
    }

    /// A file scan read whole is split into byte ranges read alone, which together hold every
    /// row once; a scan DataFusion may not split (`repartition_file_scans` off), or one
    /// partition of several (the co-partitioned mode), is read as it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_scan_is_split_into_ranges_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let batches = counting(40, 5);
        let path = dir.path().join("x.parquet");
        parquet_file(&path, batches[0].schema(), &batches, 5);
        let scan = parquet_scan(&path, batches[0].schema());
        let mut config = SessionConfig::new();
        config.options_mut().optimizer.repartition_file_min_size = 0;
        let context = SessionContext::new_with_config(config.clone()).task_ctx();
        let input = Input::of(&scan, &[0], &context).unwrap();
        assert!(input.alone);
        let ranges = Input::RANGES_PER_CORE * cores();
        assert_eq!(input.partitions, (0..ranges).collect::<Vec<_>>());
        assert_eq!(input.readers(), cores());
        // Every row once, whichever range it fell in.
        let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
        let (into, count) = (seen.clone(), Count::new());
        let prepare: Prepare<Vec<i64>> = Arc::new(|b: &RecordBatch| {
            let x = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            Ok(x.values().to_vec())
        });
        let apply: Apply<Vec<i64>, ()> = Arc::new(move |_, chunk: &[Vec<i64>]| {
            into.lock().unwrap().extend(chunk.iter().flatten());
            Ok(())
        });
        in_chunks(&input, &context, 7, &count, prepare, apply)
            .await
            .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        assert_eq!(count.value(), 200);

        config.options_mut().optimizer.repartition_file_scans = false;
        let unsplit = SessionContext::new_with_config(config).task_ctx();
        let input = Input::of(&scan, &[0], &unsplit).unwrap();
        assert!(!input.alone);
        assert_eq!(input.partitions, [0]);
        let two = scan
            .clone()
            .repartitioned(2, context.session_config().options());
        let two = two.unwrap().unwrap();
        let input = Input::of(&two, &[1], &context).unwrap();
        assert!(!input.alone);
        assert_eq!(input.partitions, [1]);
        // A `RepartitionExec` split finer would share its state (the rows it deals out) with
        // the plan it came from: it is read as it is, its partitions at once.
        use datafusion::physical_plan::Partitioning;
        let dealt: Arc<dyn ExecutionPlan> = Arc::new(
            RepartitionExec::try_new(scan.clone(), Partitioning::RoundRobinBatch(3)).unwrap(),
        );
        let input = Input::of(&dealt, &[0, 1, 2], &context).unwrap();
        assert!(!input.alone);
        assert!(Arc::ptr_eq(&input.plan, &dealt));
        assert_eq!(input.partitions, [0, 1, 2]);
    }

    /// A Delta table's scan (the Delta provider's node over its Parquet scan) is split into
    /// ranges read alone, as a bare Parquet scan is, and they hold every row once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delta_table_scan_is_split_into_ranges_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = crate::WarehouseLocation::parse(&dir.path().display().to_string());
        let engine = crate::Engine::new(crate::Settings::new(warehouse.unwrap())).unwrap();
        engine
            .run_script(
                "CREATE TABLE t AS SELECT value AS x FROM generate_series(1, 20000); \
                 SET datafusion.optimizer.repartition_file_min_size = 0",
                crate::RunOptions::default(),
            )
            .await
            .unwrap();
        let state = engine.state();
        let logical = state.create_logical_plan("SELECT x FROM t").await.unwrap();
        let scan = state.create_physical_plan(&logical).await.unwrap();
        let count = scan.output_partitioning().partition_count();
        let context = Arc::new(TaskContext::from(&state));
        let input = Input::of(&scan, &(0..count).collect::<Vec<_>>(), &context).unwrap();
        assert!(input.alone, "{}", displayable(scan.as_ref()).indent(false));
        assert!(input.partitions.len() > count);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let prepare: Prepare<RecordBatch> = Arc::new(|b: &RecordBatch| Ok(b.clone()));
        let apply: Apply<RecordBatch, ()> = Arc::new(move |_, chunk: &[RecordBatch]| {
            for b in chunk {
                let x = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                record.lock().unwrap().extend(x.values().iter().copied());
            }
            Ok(())
        });
        in_chunks(&input, &context, 1000, &Count::new(), prepare, apply)
            .await
            .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (1..=20000).collect::<Vec<_>>());
    }

    /// A task that finds no part left says so: `a_task_idle` returns while another task still
    /// reads the last part, and at once when every part is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_with_no_part_left_is_reported_idle() {
        use std::sync::atomic::AtomicBool;
        let context = SessionContext::new().task_ctx();
        if cores() < 2 {
            // One task reads every part: none is idle while another reads.
            return;
        }
        // Two parts: partition 1 (two batches) waits in its second batch until let go.
        let go = Arc::new(AtomicBool::new(false));
        let wait = go.clone();
        let prepare: Prepare<usize> = Arc::new(move |b: &RecordBatch| {
            let first = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            if first.value(0) == 101 {
                while !wait.load(Ordering::Acquire) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            Ok(b.num_rows())
        });
        let apply: Apply<usize, ()> = Arc::new(|_, _| Ok(()));
        let input = Input {
            plan: plan(2),
            partitions: vec![0, 1],
            alone: true,
        };
        let parts = Part::each(&input, 0, &Count::new(), 1, &prepare, &apply).collect();
        let mut reading = Parts::start(parts, &context);
        let idle = tokio::time::timeout(std::time::Duration::from_secs(20), reading.a_task_idle());
        let waited = idle.await;
        go.store(true, Ordering::Release);
        waited
            .expect("no task was reported idle while the last part was read")
            .unwrap();
        assert_eq!(reading.left, [1], "the waiting part is not done");
        go.store(true, Ordering::Release);
        reading.finished(0).await.unwrap();
        reading.a_task_idle().await.unwrap();
        reading.all_finished().await.unwrap();
    }

    /// A chunk halved rounds up and keeps a row; halved as often as allowed, it is a 64th.
    #[test]
    fn a_chunk_halved_keeps_a_row() {
        assert_eq!(halved(1 << 20, 0), 1 << 20);
        assert_eq!(halved(1 << 20, HALVINGS), (1 << 20) / 64);
        assert_eq!(halved(1000, 1), 500);
        assert_eq!(halved(1001, 1), 501);
        assert_eq!(halved(100, HALVINGS), 2);
        assert_eq!(halved(7, HALVINGS), 1);
        assert_eq!(halved(0, 0), 1);
    }

    /// A held row counts each column's width, and a guess for one of no fixed width.
    #[test]
    fn a_held_row_counts_its_columns() {
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        assert_eq!(held_row_bytes(&schema), 9 + 5 + 33);
        assert_eq!(held_row_bytes(&Schema::empty()), 0);
    }
}
