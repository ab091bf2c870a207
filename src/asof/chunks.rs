//! The inputs of a join that indexes its left side: the left read whole into the memory pool
//! (or, when it does not fit, handed back for the other way round), and the right read once,
//! each right partition on a task of its own, its batches gathered into chunks that are handed
//! on whole (a chunk is put in the order of the left's keys before it is applied, see `labels`
//! and `window::labels`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::Result;
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_plan::metrics::Count;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;

/// A left input read for indexing.
pub(crate) enum LeftInput {
    /// All of it, held in the reservation.
    Held(Vec<RecordBatch>),
    /// It did not fit: the batches read so far, then the rest, as one stream again.
    TooLarge(SendableRecordBatchStream),
}

/// Reads `left` whole, growing `reservation` by each batch; at the first batch that does not
/// fit, gives the input back whole ([`replay`]) with the reservation emptied.
pub(crate) async fn read_left(
    mut left: SendableRecordBatchStream,
    reservation: &mut MemoryReservation,
) -> Result<LeftInput> {
    let mut held = Vec::new();
    while let Some(batch) = left.next().await {
        let batch = batch?;
        let grown = reservation.try_grow(batch.get_array_memory_size());
        held.push(batch);
        if grown.is_err() {
            reservation.free();
            return Ok(LeftInput::TooLarge(replay(held, left)));
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
    let rest = RecordBatchStreamAdapter::new(schema, futures::stream::empty());
    replay(held, Box::pin(rest))
}

/// Reads `partitions` of `plan`, each on a task of its own: every batch is counted in `rows`
/// and turned into an item by `prepare`, and the items are handed to `apply` in chunks of at
/// least `chunk_rows` rows (the last one whatever is left), with a scratch value the task keeps
/// from chunk to chunk. Returns once every task is done, with the first error.
pub(crate) async fn in_chunks<T, S>(
    plan: &Arc<dyn ExecutionPlan>,
    partitions: &[usize],
    context: &Arc<TaskContext>,
    chunk_rows: usize,
    rows: &Count,
    prepare: impl Fn(&RecordBatch) -> Result<T> + Clone + Send + 'static,
    apply: impl Fn(&mut S, &[T]) -> Result<()> + Clone + Send + 'static,
) -> Result<()>
where
    T: Send + 'static,
    S: Default + Send + 'static,
{
    let mut handles = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let mut stream = plan.execute(p, context.clone())?;
        let (prepare, apply, rows) = (prepare.clone(), apply.clone(), rows.clone());
        handles.push(SpawnedTask::spawn(async move {
            let mut scratch = S::default();
            let (mut chunk, mut held) = (Vec::new(), 0);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows.add(batch.num_rows());
                held += batch.num_rows();
                chunk.push(prepare(&batch)?);
                if held >= chunk_rows {
                    apply(&mut scratch, &chunk)?;
                    (chunk, held) = (Vec::new(), 0);
                }
            }
            apply(&mut scratch, &chunk)
        }));
    }
    for handle in handles {
        handle
            .join()
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
    }
    Ok(())
}
