//! As-of joins run with their left side indexed ([`super::labels`]), one join or a chain of
//! them over the same left keys and time: the left read whole into the memory pool and grouped
//! once, the joins' right sides streamed through it in parts by a task per core, each taking
//! the next part (the joins' parts taken in turn) when its own ends (for as many joins at once
//! as the pool holds the records of), each join read out once a task has no part left, then
//! the left's batches coming out in their order with every join's matches. A left side that
//! does not fit in the pool, or an index that does not, falls back to indexing the right side
//! (which spills) with the left batches already read; a chain that stops fitting part way runs
//! its remaining joins one by one over what it has done.

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, nullif};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Result, internal_datafusion_err, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use super::build::RightExprs;
use super::chunks::{
    Apply, HALVINGS, Input, LeftInput, Part, Parts, Prepare, empty, halved, held_row_bytes,
    read_left, replay_all, replay_from_disk,
};
use super::kernel::MatchSpec;
use super::labels::{Best, Layout, LeftIndex, RightRows, Scratch};
use super::logical::{AsOfJoinType, Tolerance};
use super::metrics::AsOfJoinMetrics;
use super::time::dense_time_keys;
use super::tolerance::tolerance_bound;
use super::window::{LeftArrays, LeftKeys, is_null};
use crate::parallel::{cores, on_threads};

/// Where an output right column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RightColumn {
    /// Column `c` of the records.
    Stored(usize),
    /// A key column: equal to left key `k` wherever a row matched.
    LeftKey(usize),
}

/// Everything a left-build run needs.
pub(crate) struct LeftBuild {
    pub left_keys: Vec<PhysicalExprRef>,
    pub left_time: PhysicalExprRef,
    /// Per key, its type and whether NULL equals NULL.
    pub key_specs: Vec<(DataType, bool)>,
    pub spec: MatchSpec,
    pub tolerance: Option<Tolerance>,
    pub join_type: AsOfJoinType,
    pub right: Arc<dyn ExecutionPlan>,
    /// The right partitions streamed, split finer where they can be ([`Input::of`]).
    pub partitions: Vec<usize>,
    pub exprs: Arc<RightExprs>,
    pub layout: Layout,
    /// The right input's columns the records hold, in the layout's order.
    pub stored: Vec<usize>,
    /// Per output right column, where it comes from.
    pub outputs: Vec<RightColumn>,
    pub schema: SchemaRef,
    pub metrics: AsOfJoinMetrics,
    pub context: Arc<TaskContext>,
    /// At most this many right rows put in key order at once ([`LeftIndex::chunk_rows`] says
    /// how many; tests use a few).
    pub chunk_rows: usize,
}

/// A join of a chain that may stream with the ones before it: its index, its right input, the
/// chunk it asks for and the bytes a chunk's row takes (held, and in the task's buffers).
type Candidate = (Arc<LeftIndex>, Input, usize, usize);

/// Runs the join the usual way over a left stream (the batches already read, then the rest).
pub(crate) type Fallback =
    Box<dyn FnOnce(SendableRecordBatchStream) -> SendableRecordBatchStream + Send>;

/// How many chains ran out of memory after their first join (the tests check that some do).
#[cfg(test)]
pub(crate) static RESUMED_PART_WAY: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// How many times a chain streamed more than one join's right side at once, and how many
/// times the pool held fewer of its remaining joins than there were (the tests check that both
/// happen).
#[cfg(test)]
pub(crate) static STREAMED_TOGETHER: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
pub(crate) static CUT_SHORT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);
/// How many times a chain's chunks were halved for the pool to hold more of its joins at once,
/// and how many times they were halved again for it to hold one.
#[cfg(test)]
pub(crate) static NARROWED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
pub(crate) static NARROWED_FURTHER: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Runs `joins`, a chain of as-of joins (innermost first, `AsOfJoinExec::chain`) that index
/// their left side and share its keys and time, over `left`, the innermost join's left input:
/// the left read whole into the memory pool and grouped once, then the right sides of as many
/// joins as the pool holds streamed through the grouped rows in parts ([`Input`], [`Parts`])
/// and each join's columns read out for every left row once its parts are done and a task has
/// no part left, and last the left's batches, in their order, with every join's columns. Where
/// memory runs out, the joins from there on run one by one over what is done so far
/// ([`resume`]; `fallbacks`, one per join, is the join with its right side indexed over a
/// given left stream).
pub(crate) async fn run(
    joins: Vec<LeftBuild>,
    fallbacks: Vec<Fallback>,
    left: SendableRecordBatchStream,
) -> Result<SendableRecordBatchStream> {
    let Some(first) = joins.first() else {
        return internal_err!("as-of join: an empty chain");
    };
    if fallbacks.len() != joins.len() {
        return internal_err!("as-of join: a chain with a fallback missing");
    }
    let mut reservation =
        MemoryConsumer::new("AsOfJoinExec[left index]").register(first.context.memory_pool());
    let started = Instant::now();
    let left_schema = left.schema();
    let held = match read_left(left, &mut reservation, &first.context, &first.metrics.spill).await?
    {
        LeftInput::Held(held) => held,
        LeftInput::TooLarge(left) => {
            tracing::debug!(
                target: "pitlake::asof",
                "as-of join: the left side does not fit in memory; indexing the right"
            );
            return Ok(resume(joins, fallbacks, 0, left, false));
        }
    };
    let timer = first.metrics.build_time.timer();
    let arrays = held
        .iter()
        .map(|b| {
            let rows = b.num_rows();
            Ok(LeftArrays {
                keys: first
                    .left_keys
                    .iter()
                    .map(|e| e.evaluate(b)?.into_array(rows))
                    .collect::<Result<_>>()?,
                time: first.left_time.evaluate(b)?.into_array(rows)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let keys = Arc::new(LeftKeys::new(&first.key_specs, &arrays, "an as-of join")?);
    timer.done();
    if reservation.try_grow(keys.memory_size()).is_err() {
        drop((keys, arrays, reservation));
        let left = replay_from_disk(
            held,
            empty(left_schema),
            &first.context,
            &first.metrics.spill,
        );
        return Ok(resume(joins, fallbacks, 0, left, false));
    }
    let mut offsets = Vec::with_capacity(held.len());
    let mut offset = 0;
    for b in &held {
        offsets.push(offset);
        offset += b.num_rows();
    }
    // Per left batch: its columns so far, and which of its rows every inner join so far kept
    // (`None`: all of them).
    let mut columns: Vec<Vec<ArrayRef>> = held.iter().map(|b| b.columns().to_vec()).collect();
    let mut kept: Vec<Option<BooleanArray>> = vec![None; held.len()];
    let mut schema = left_schema;
    drop(held);
    let last = joins.len() - 1;
    let mut i = 0;
    while i < joins.len() {
        // As many of the joins from `i` on as the pool holds at once: their records, and per
        // task a chunk of right rows held and put in key order (a task's buffers serve each
        // join it reads a part of in turn, so they are counted once, at the widest of the
        // group's rows). Their right sides' parts are read one after the other by tasks that
        // each take the next when theirs ends, so one join's last part, alone on its core,
        // does not leave the others idle. Chunks are as large as the left side asks for
        // ([`LeftIndex::chunk_rows`]) where the pool holds every remaining join with them;
        // else half as large, so that it holds more joins at once; and where it holds none
        // even so, narrower still ([`HALVINGS`]) before the joins go the other way.
        let mut candidates: Vec<Candidate> = Vec::with_capacity(joins.len() - i);
        for join in &joins[i..] {
            let index = Arc::new(LeftIndex::new(
                keys.clone(),
                join.spec,
                join.exprs.known_at.is_some(),
                join.layout.clone(),
            )?);
            let input = Input::of(&join.right, &join.partitions, &join.context)?;
            let wide = join.chunk_rows.min(index.chunk_rows());
            let row_bytes = index.chunk_row_bytes() + held_row_bytes(&join.right.schema());
            candidates.push((index, input, wide, row_bytes));
        }
        // The bytes of the first `k` candidates with their chunks halved `h` times: per join
        // its records, and per task the widest chunk of the widest rows.
        let bytes = |k: usize, h: u32| {
            let members = &candidates[..k];
            let largest = |of: &dyn Fn(&Candidate) -> usize| members.iter().map(of).max();
            let tasks = largest(&|(_, input, ..)| input.readers()).unwrap_or(0);
            let rows = largest(&|(_, _, wide, _)| halved(*wide, h)).unwrap_or(0);
            let row_bytes = largest(&|(.., row)| *row).unwrap_or(0);
            let records: usize = members.iter().map(|(index, ..)| index.records_size()).sum();
            records + tasks * rows * row_bytes
        };
        // The most joins the pool holds with chunks halved `h` times, and their bytes, now
        // reserved.
        let most = |reservation: &mut MemoryReservation, h: u32| {
            (1..=candidates.len())
                .rev()
                .map(|k| (k, bytes(k, h)))
                .find(|&(_, wanted)| reservation.try_grow(wanted).is_ok())
        };
        let mut chosen = None;
        for h in 0..=HALVINGS {
            #[cfg(test)]
            {
                use std::sync::atomic::Ordering::Relaxed;
                match h {
                    0 => {}
                    1 => _ = NARROWED.fetch_add(1, Relaxed),
                    _ => _ = NARROWED_FURTHER.fetch_add(1, Relaxed),
                }
            }
            match most(&mut reservation, h) {
                Some((k, wanted)) if k == candidates.len() || h > 0 => {
                    chosen = Some((k, h, wanted));
                    break;
                }
                Some((_, wanted)) => reservation.shrink(wanted),
                None => {}
            }
        }
        let mut group = Vec::new();
        if let Some((k, h, wanted)) = chosen {
            // Each join's records are given back once it is read out; the tasks' chunks with
            // the group's last.
            let records: Vec<usize> = candidates[..k]
                .iter()
                .map(|(index, ..)| index.records_size())
                .collect();
            let chunks = wanted - records.iter().sum::<usize>();
            for (j, (index, input, wide, _)) in candidates.into_iter().take(k).enumerate() {
                let freed = records[j] + if j + 1 == k { chunks } else { 0 };
                group.push((index, input, halved(wide, h), freed));
            }
        }
        if group.is_empty() {
            drop(arrays);
            return resume_done(joins, fallbacks, i, schema, columns, &kept, i > 0);
        }
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::Relaxed;
            if group.len() > 1 {
                STREAMED_TOGETHER.fetch_add(1, Relaxed);
            }
            if group.len() < joins.len() - i {
                CUT_SHORT.fetch_add(1, Relaxed);
            }
        }
        let phase = Instant::now();
        // Every part of the group's joins, read by tasks that each go on to the next part when
        // theirs ends, taken from the joins in turn: two tasks then mostly offer rows to
        // different joins' records, not waiting for each other's turn at the same ones (at the
        // shared workload's medium scale, 5-15 ms of waiting in all against 35-47 ms taken
        // join after join). Parts that must be read at once (an input dealing its rows out,
        // [`Part::alone`]) stay join after join.
        let mut shared = Vec::with_capacity(group.len());
        let mut per_join = Vec::with_capacity(group.len());
        for (k, ((index, input, chunk_limit, _), join)) in group.iter().zip(&joins[i..]).enumerate()
        {
            let best = Arc::new(Mutex::new(index.best()));
            let (prepare, apply) = join.closures(index, &best);
            shared.push(best);
            per_join.push(
                Part::each(
                    input,
                    k,
                    &join.metrics.right_rows,
                    *chunk_limit,
                    &prepare,
                    &apply,
                )
                .collect::<std::collections::VecDeque<_>>(),
            );
        }
        let in_turn = per_join.iter().flatten().all(|part| part.alone);
        let mut parts = Vec::new();
        if in_turn {
            while per_join.iter().any(|parts| !parts.is_empty()) {
                parts.extend(per_join.iter_mut().filter_map(|parts| parts.pop_front()));
            }
        } else {
            parts.extend(per_join.into_iter().flatten());
        }
        let mut reading = Parts::start(parts, &first.context);
        let together = group.len();
        for (k, ((index, _, chunk_rows, wanted), best)) in group.into_iter().zip(shared).enumerate()
        {
            reading.finished(k).await?;
            if k + 1 < together {
                // Read out once a task has no part left to take: until then every core is
                // reading; from then on the last parts leave cores idle, which the read-out (a
                // sweep and a gather over the records) takes.
                reading.a_task_idle().await?;
            }
            let Some(mut best) = Arc::into_inner(best).and_then(|m| m.into_inner().ok()) else {
                return internal_err!("as-of join: the records are still shared");
            };
            let streamed = phase.elapsed();
            let join = &joins[i];
            let timer = join.metrics.probe_time.timer();
            index.finish(&mut best);
            let jobs: Vec<_> = arrays.iter().zip(&offsets).zip(&kept).collect();
            let out = on_threads(
                cores(),
                jobs,
                |((arrays, &offset), kept)| {
                    join.read_out(&index, &best, arrays, offset, kept.as_ref())
                },
                || {
                    DataFusionError::Internal(
                        "as-of join: a thread reading out matches panicked".into(),
                    )
                },
            )?;
            timer.done();
            drop((best, index));
            reservation.shrink(wanted);
            let mut size = 0;
            let mut rows = 0;
            for ((columns, kept), (read, matched)) in columns.iter_mut().zip(&mut kept).zip(out) {
                size += read
                    .iter()
                    .map(|a| a.get_array_memory_size())
                    .sum::<usize>();
                columns.extend(read);
                if join.join_type == AsOfJoinType::Inner {
                    *kept = Some(match kept.take() {
                        Some(k) => arrow::compute::and(&k, &matched)?,
                        None => matched,
                    });
                }
                rows += kept.as_ref().map_or(columns[0].len(), |k| k.true_count());
            }
            schema = join.schema.clone();
            tracing::debug!(
                target: "pitlake::asof",
                join = i,
                together,
                chunk_rows,
                left_rows = offset,
                indexed_ms = (started.elapsed() - phase.elapsed()).as_millis() as u64,
                streamed_ms = streamed.as_millis() as u64,
                finished_ms = (phase.elapsed() - streamed).as_millis() as u64,
                "as-of join: left indexed, right streamed"
            );
            i += 1;
            if i <= last {
                // The rows this join passes on (the last one's are counted as they leave).
                join.metrics.baseline.record_output(rows);
                if k + 1 < together {
                    // The group's next joins have started on their right sides, which cannot
                    // be read again: their records are read out whatever the pool says (each
                    // gives back more than its columns take, bar wide left keys).
                    reservation.grow(size);
                } else if reservation.try_grow(size).is_err() {
                    drop(arrays);
                    return resume_done(joins, fallbacks, i, schema, columns, &kept, true);
                }
            }
        }
    }
    drop((arrays, keys));
    let out = batches(&schema, columns, &kept)?;
    let metrics = joins[last].metrics.clone();
    let stream = futures::stream::iter(out).map(move |b| {
        match metrics.baseline.record_poll(Poll::Ready(Some(Ok(b)))) {
            Poll::Ready(Some(b)) => b,
            _ => internal_err!("as-of join: a batch lost on its way out"),
        }
    });
    drop(reservation);
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
}

/// Joins `i..` of a chain (`joins`, with their `fallbacks`) over `stream`, which has the columns
/// of the joins before `i`, one after the other as they run outside a chain: each indexing its
/// left side where that fits, else its right side; join `i` its right side at once unless
/// `retry`.
fn resume(
    mut joins: Vec<LeftBuild>,
    mut fallbacks: Vec<Fallback>,
    i: usize,
    mut stream: SendableRecordBatchStream,
    retry: bool,
) -> SendableRecordBatchStream {
    #[cfg(test)]
    if i > 0 {
        RESUMED_PART_WAY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let rest = joins.split_off(i.min(joins.len()));
    let fallbacks = fallbacks.split_off(i.min(fallbacks.len()));
    for (k, (join, fallback)) in rest.into_iter().zip(fallbacks).enumerate() {
        stream = if k == 0 && !retry {
            fallback(stream)
        } else {
            let schema = join.schema.clone();
            let alone: BoxFuture<'static, Result<SendableRecordBatchStream>> =
                Box::pin(run(vec![join], vec![fallback], stream));
            Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(alone).try_flatten(),
            ))
        };
    }
    stream
}

/// [`resume`] from join `i` over what the joins before it have done: the left batches with
/// `columns` (of `schema`), without the rows `kept` says were dropped.
fn resume_done(
    joins: Vec<LeftBuild>,
    fallbacks: Vec<Fallback>,
    i: usize,
    schema: SchemaRef,
    columns: Vec<Vec<ArrayRef>>,
    kept: &[Option<BooleanArray>],
    retry: bool,
) -> Result<SendableRecordBatchStream> {
    let batches = batches(&schema, columns, kept)?;
    // A join run again reads its left whole at once, into the pool; the other way, it reads
    // it only once its right side is indexed, so meanwhile the rows wait on disk.
    let left = match (retry, joins.get(i)) {
        (false, Some(join)) => {
            replay_from_disk(batches, empty(schema), &join.context, &join.metrics.spill)
        }
        _ => replay_all(batches, schema),
    };
    Ok(resume(joins, fallbacks, i, left, retry))
}

/// The batches of `schema` with `columns`, each without the rows `kept` says were dropped.
fn batches(
    schema: &SchemaRef,
    columns: Vec<Vec<ArrayRef>>,
    kept: &[Option<BooleanArray>],
) -> Result<Vec<RecordBatch>> {
    columns
        .into_iter()
        .zip(kept)
        .map(|(columns, kept)| {
            let batch = RecordBatch::try_new(schema.clone(), columns)?;
            match kept {
                Some(k) if k.true_count() < batch.num_rows() => Ok(filter_record_batch(&batch, k)?),
                _ => Ok(batch),
            }
        })
        .collect()
}

impl LeftBuild {
    /// What this join does with its right batches: each turned into the rows `index` takes,
    /// a chunk of them offered to the records in `best`.
    fn closures(
        &self,
        index: &Arc<LeftIndex>,
        best: &Arc<Mutex<Best>>,
    ) -> (Prepare<RightRows>, Apply<RightRows, Scratch>) {
        let (exprs, stored) = (self.exprs.clone(), self.stored.clone());
        let prepare = move |batch: &RecordBatch| {
            let eval = |e: &PhysicalExprRef| e.evaluate(batch)?.into_array(batch.num_rows());
            Ok(RightRows {
                keys: exprs.keys(batch)?,
                time: eval(&exprs.time)?,
                known: exprs.known_at.as_ref().map(eval).transpose()?,
                tiebreak: exprs.tiebreak.iter().map(eval).collect::<Result<_>>()?,
                columns: stored.iter().map(|&c| batch.column(c).clone()).collect(),
            })
        };
        let (index, best) = (index.clone(), best.clone());
        let apply =
            move |scratch: &mut Scratch, chunk: &[RightRows]| index.apply(&best, scratch, chunk);
        (Arc::new(prepare), Arc::new(apply))
    }

    /// This join's output right columns for the left rows of one batch (from `offset` on in
    /// the index), and which of them matched. `kept` says which rows an inner join before this
    /// one kept (`None`: all), for the metrics.
    fn read_out(
        &self,
        index: &LeftIndex,
        best: &Best,
        arrays: &LeftArrays,
        offset: usize,
        kept: Option<&BooleanArray>,
    ) -> Result<(Vec<ArrayRef>, BooleanArray)> {
        let rows = arrays.time.len();
        let bounds = match &self.tolerance {
            Some(t) => {
                let bound = tolerance_bound(&arrays.time, t, self.spec.direction)?;
                Some(dense_time_keys(bound.as_ref())?)
            }
            None => None,
        };
        let entries: Vec<Option<usize>> = index
            .entries(best, offset..offset + rows)
            .enumerate()
            .map(|(i, entry)| {
                let bound = bounds
                    .as_ref()
                    .map(|(keys, valid)| (!is_null(valid, i)).then(|| keys[i]));
                index.matched(best, entry, bound)
            })
            .collect();
        let matched: BooleanArray = entries.iter().map(|e| Some(e.is_some())).collect();
        let unmatched = arrow::compute::not(&matched)?;
        match kept {
            Some(k) => {
                self.metrics.left_rows.add(k.true_count());
                let both = arrow::compute::and(k, &matched)?;
                self.metrics.matched_rows.add(both.true_count());
            }
            None => {
                self.metrics.left_rows.add(rows);
                self.metrics.matched_rows.add(matched.true_count());
            }
        }
        let stored: Vec<usize> = self
            .outputs
            .iter()
            .filter_map(|output| match *output {
                RightColumn::Stored(c) => Some(c),
                RightColumn::LeftKey(_) => None,
            })
            .collect();
        let mut stored = index.columns(best, &stored, &entries)?.into_iter();
        let columns = self
            .outputs
            .iter()
            .map(|output| match *output {
                RightColumn::Stored(_) => stored
                    .next()
                    .ok_or_else(|| internal_datafusion_err!("left build: a column missing")),
                RightColumn::LeftKey(k) => Ok(nullif(&arrays.keys[k], &unmatched)?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((columns, matched))
    }
}
