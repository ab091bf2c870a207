//! The right input of a join that indexes its left side, read once: each right partition on a
//! task of its own, its batches gathered into chunks that are handed on whole (a chunk is put in
//! the order of the left's keys before it is applied, see `labels` and `window::labels`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::Result;
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::Count;
use futures::StreamExt;

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
