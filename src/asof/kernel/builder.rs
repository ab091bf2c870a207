//! [`IndexBuilder`]: collects the right input's batches with their evaluated keys, times,
//! knowledge times and tie-breaks, and builds the [`RightIndex`] in `finish`.

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use datafusion::common::{Result, internal_err, plan_err};

use super::entries::{
    Entries, KnownEntry, PlainEntry, Ranked, compact_known, compact_plain, scatter, sort_groups,
};
use super::groups::NO_GROUP;
use super::index::{RightIndex, null_row_size};
use super::keys::KeyTable;
use super::options::{
    Direction, KernelOptions, check_arrays, supported_key_type, supported_tiebreak_type,
};
use super::ties::TieColumns;
use crate::asof::time::{supported_time_type, time_keys};
use crate::asof::{group_runs, worker_threads};

/// A thread orders and compacts at least this many entries (fewer cost more than they save).
/// Tiny under test, so that the random cases run on several threads.
const ENTRIES_PER_THREAD: usize = if cfg!(test) { 2 } else { 1 << 16 };

/// At most this many right rows per builder, so group ids and group offsets fit a `u32`.
const MAX_ROWS: usize = (u32::MAX - 1) as usize;

/// A right batch checked and with its times turned into keys by [`IndexBuilder::prepare`].
#[derive(Debug)]
pub struct PreparedBatch {
    batch: RecordBatch,
    keys: Vec<ArrayRef>,
    times: Vec<Option<i64>>,
    known: Option<Vec<Option<i64>>>,
    tiebreak: Vec<ArrayRef>,
}

impl PreparedBatch {
    /// The batch itself (to spill it).
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }
}

/// Collects the right input and builds a [`RightIndex`].
#[derive(Debug)]
pub struct IndexBuilder {
    opts: KernelOptions,
    schema: SchemaRef,
    keys: KeyTable,
    batches: Vec<RecordBatch>,
    batch_bytes: usize,
    /// Per batch, the evaluated `TIEBREAK BY` arrays (empty without tie-break); needed only to
    /// order time-tied rows in `finish`.
    tiebreak: Vec<Vec<ArrayRef>>,
    /// Bytes of tie-break arrays that are not columns of their batch.
    tiebreak_bytes: usize,
    /// Per right row in push order: its group, or [`NO_GROUP`] if it can never match.
    groups: Vec<u32>,
    /// Per right row: its time key (mirrored for the forward direction); 0 where ignored.
    times: Vec<i64>,
    /// Per right row: its knowledge time key (empty without a knowledge time).
    known: Vec<i64>,
    /// One all-NULL row per column, for the index.
    null_row: Vec<ArrayRef>,
}

impl IndexBuilder {
    /// Validates `opts` against the right input's schema.
    ///
    /// Types the kernel cannot handle are plan errors with a message for the user; the planner
    /// should have refused them already (see [`supported_key_type`], [`supported_time_type`] and
    /// [`supported_tiebreak_type`]).
    pub fn try_new(opts: KernelOptions, right_schema: SchemaRef) -> Result<Self> {
        if opts.has_knowledge && opts.spec.direction == Direction::Forward {
            return plan_err!(
                "KNOWN AT is not allowed with a forward as-of condition (<= or <): a row that is \
                 both in the future and already known has no meaning; use >= or >"
            );
        }
        for (i, key) in opts.keys.iter().enumerate() {
            if !supported_key_type(&key.data_type) {
                return plan_err!(
                    "as-of key {} has type {}, which cannot be compared for equality; use a \
                     primitive, string, binary, decimal, dictionary or nested type",
                    i + 1,
                    key.data_type
                );
            }
        }
        if !supported_time_type(&opts.time_type) {
            return plan_err!(
                "as-of time has type {}; the time must be a timestamp, a date, an integer or a \
                 float",
                opts.time_type
            );
        }
        for (i, tb) in opts.tiebreak.iter().enumerate() {
            if !supported_tiebreak_type(&tb.data_type) {
                return plan_err!(
                    "TIEBREAK BY expression {} has type {}, which has no order",
                    i + 1,
                    tb.data_type
                );
            }
        }
        let null_row = right_schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        Ok(Self {
            keys: KeyTable::try_new(&opts.keys)?,
            opts,
            schema: right_schema,
            null_row,
            batches: Vec::new(),
            batch_bytes: 0,
            tiebreak: Vec::new(),
            tiebreak_bytes: 0,
            groups: Vec::new(),
            times: Vec::new(),
            known: Vec::new(),
        })
    }

    /// Adds one right batch with its evaluated expressions, each as long as the batch: the keys
    /// (one array per key, of the declared types), the time, the knowledge time (exactly when
    /// `has_knowledge`) and the tie-break arrays. The same as [`IndexBuilder::prepare`] then
    /// [`IndexBuilder::push_prepared`].
    pub fn push(
        &mut self,
        batch: RecordBatch,
        keys: &[ArrayRef],
        time: &ArrayRef,
        knowledge: Option<&ArrayRef>,
        tiebreak: &[ArrayRef],
    ) -> Result<()> {
        let prepared = Self::prepare(
            &self.opts,
            &self.schema,
            batch,
            keys.to_vec(),
            time,
            knowledge,
            tiebreak.to_vec(),
        )?;
        self.push_prepared(prepared)
    }

    /// Checks one right batch and its evaluated expressions (as for [`IndexBuilder::push`])
    /// against the options and the right schema the builder was made with, and turns its times
    /// into keys: the part of a push that needs no builder, so that the tasks decoding the
    /// input can do it side by side.
    pub fn prepare(
        opts: &KernelOptions,
        schema: &SchemaRef,
        batch: RecordBatch,
        keys: Vec<ArrayRef>,
        time: &ArrayRef,
        knowledge: Option<&ArrayRef>,
        tiebreak: Vec<ArrayRef>,
    ) -> Result<PreparedBatch> {
        let n = batch.num_rows();
        let batch_schema = batch.schema();
        if batch_schema.fields().len() != schema.fields().len()
            || batch_schema
                .fields()
                .iter()
                .zip(schema.fields())
                .any(|(a, b)| a.data_type() != b.data_type())
        {
            return internal_err!(
                "as-of right batch schema {batch_schema:?} does not match the declared {schema:?}"
            );
        }
        check_arrays("right", opts, n, &keys, time)?;
        match (knowledge, opts.has_knowledge) {
            (Some(k), true) if k.data_type() == &opts.time_type && k.len() == n => {}
            (None, false) => {}
            _ => return internal_err!("as-of knowledge time array does not match the options"),
        }
        if tiebreak.len() != opts.tiebreak.len()
            || tiebreak
                .iter()
                .zip(&opts.tiebreak)
                .any(|(a, s)| a.data_type() != &s.data_type || a.len() != n)
        {
            return internal_err!("as-of tie-break arrays do not match the options");
        }
        let mirror = opts.spec.direction == Direction::Forward;
        let times = time_keys(time.as_ref(), mirror)?;
        let known = match knowledge {
            Some(k) => Some(time_keys(k.as_ref(), false)?),
            None => None,
        };
        Ok(PreparedBatch {
            batch,
            keys,
            times,
            known,
            tiebreak,
        })
    }

    /// Adds a batch made by [`IndexBuilder::prepare`] with this builder's options and schema.
    pub fn push_prepared(&mut self, prepared: PreparedBatch) -> Result<()> {
        let PreparedBatch {
            batch,
            keys,
            times,
            known,
            tiebreak,
        } = prepared;
        let n = batch.num_rows();
        if self.batches.len() >= u32::MAX as usize || self.groups.len() + n > MAX_ROWS {
            return internal_err!(
                "an as-of partition holds more than {MAX_ROWS} right rows; use more partitions"
            );
        }
        let strict = self.opts.spec.strict;
        let base = self.groups.len();
        if let Err(e) = self.keys.assign(&keys, n, &mut self.groups) {
            // Keep the per-row arrays aligned; keys interned so far only make empty groups.
            self.groups.truncate(base);
            return Err(e);
        }
        self.times.reserve(n);
        for (i, t) in times.into_iter().enumerate() {
            let group = &mut self.groups[base + i];
            match t {
                // Under a strict condition the greatest time can never be strictly before a
                // left time; dropping it here lets activations be `t + 1` without overflow.
                Some(t) if !(strict && t == i64::MAX) => self.times.push(t),
                _ => {
                    *group = NO_GROUP;
                    self.times.push(0);
                }
            }
        }
        if let Some(known) = known {
            self.known.reserve(n);
            for (i, c) in known.into_iter().enumerate() {
                match c {
                    Some(c) => self.known.push(c),
                    None => {
                        // Not known when it became known: never used (no leakage).
                        self.groups[base + i] = NO_GROUP;
                        self.known.push(0);
                    }
                }
            }
        }
        if !tiebreak.is_empty() {
            self.tiebreak_bytes += tiebreak
                .iter()
                .filter(|a| !batch.columns().iter().any(|c| std::sync::Arc::ptr_eq(a, c)))
                .map(|a| a.get_array_memory_size())
                .sum::<usize>();
            self.tiebreak.push(tiebreak);
        }
        self.batch_bytes += batch.get_array_memory_size();
        self.batches.push(batch);
        Ok(())
    }

    /// The options the builder was made with.
    pub fn options(&self) -> &KernelOptions {
        &self.opts
    }

    /// The right input's schema the builder was made with.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Bytes held now: the batches, the kept tie-break arrays, the per-row build arrays and the
    /// key table.
    pub fn memory_size(&self) -> usize {
        self.batch_bytes
            + self.tiebreak_bytes
            + self.batches.capacity() * size_of::<RecordBatch>()
            + self.groups.capacity() * size_of::<u32>()
            + self.times.capacity() * size_of::<i64>()
            + self.known.capacity() * size_of::<i64>()
            + self.keys.memory_size()
            + null_row_size(&self.null_row)
    }

    /// An upper bound of the bytes [`finish`](Self::finish) allocates beyond
    /// [`memory_size`](Self::memory_size) at its peak, for reserving memory before calling it:
    /// the entries (16 bytes per matchable row, 24 with a knowledge time), the group offsets and,
    /// with a knowledge time, 16 bytes per row of the largest group. The per-row build arrays
    /// are freed before `finish` returns, so the index ends up smaller than `memory_size` plus
    /// this.
    ///
    /// Not included: ordering rows that tie on key and time encodes them in the row format, in
    /// chunks of about 64k rows, but a single run of tied rows is encoded whole.
    pub fn finish_scratch_size(&self) -> usize {
        let num_groups = self.keys.num_groups as usize;
        let mut counts = vec![0u32; num_groups];
        for &g in &self.groups {
            if g != NO_GROUP {
                counts[g as usize] += 1;
            }
        }
        let matchable: usize = counts.iter().map(|&c| c as usize).sum();
        let (entry, per_group_row) = if self.opts.has_knowledge {
            (size_of::<KnownEntry>(), size_of::<(i64, u32)>())
        } else {
            (size_of::<PlainEntry>(), 0)
        };
        let largest = counts.iter().max().copied().unwrap_or(0) as usize;
        matchable * entry + largest * per_group_row + (num_groups + 1) * 2 * size_of::<u32>()
    }

    /// Gives the pushed batches back (the operator spills them when memory runs out).
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }

    /// Builds the index on this thread. The batches move into it; everything else is dropped.
    pub fn finish(self) -> Result<RightIndex> {
        self.finish_with(1)
    }

    /// Builds the index, ordering and compacting its groups on up to `threads` threads (at most
    /// one per core), each a run of whole groups. The batches move into it; everything else is
    /// dropped. The index is the same whatever the number of threads.
    pub fn finish_with(self, threads: usize) -> Result<RightIndex> {
        let Self {
            opts,
            schema,
            keys,
            batches,
            batch_bytes,
            tiebreak,
            groups,
            times,
            known,
            null_row,
            ..
        } = self;
        let num_groups = keys.num_groups as usize;
        let mut offsets = vec![0u32; num_groups + 1];
        for &g in &groups {
            if g != NO_GROUP {
                offsets[g as usize + 1] += 1;
            }
        }
        for i in 0..num_groups {
            offsets[i + 1] += offsets[i];
        }
        let batch_rows: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        let strict = i64::from(opts.spec.strict);

        let tie_columns = TieColumns {
            opts: &opts,
            schema: &schema,
            batches: &batches,
            tiebreak: &tiebreak,
        };
        let entries = if opts.has_knowledge {
            Entries::Known(order_groups(
                &groups,
                &batch_rows,
                &mut offsets,
                threads,
                &tie_columns,
                |i, rref| KnownEntry {
                    key: known[i],
                    time: times[i],
                    rref,
                },
                |e, ends| compact_known(e, ends, strict),
            )?)
        } else {
            Entries::Plain(order_groups(
                &groups,
                &batch_rows,
                &mut offsets,
                threads,
                &tie_columns,
                |i, rref| PlainEntry {
                    key: times[i],
                    rref,
                },
                |e, ends| compact_plain(e, ends, strict),
            )?)
        };
        drop((groups, times, known));
        drop(tiebreak);
        Ok(RightIndex {
            opts,
            schema,
            num_rows: batch_rows.iter().sum(),
            keys,
            offsets,
            entries,
            batches,
            batch_bytes,
            null_row,
        })
    }
}

/// Makes the entries of every group (`offsets[g]..offsets[g + 1]`) from the rows of `groups`
/// (one group per pushed row, over batches of `batch_rows` rows) with `make(row, packed ref)`,
/// sorts each group by time, orders the rows tied on time, and compacts the group with
/// `compact`; returns the entries, `offsets` then describing the compacted groups. The groups
/// are split into up to `threads` runs of whole groups of about equal size (at least
/// [`ENTRIES_PER_THREAD`] entries each), each done from scatter to compaction by a thread of
/// its own; the runs are then moved together.
fn order_groups<E: Ranked + Send>(
    groups: &[u32],
    batch_rows: &[usize],
    offsets: &mut [u32],
    threads: usize,
    ties: &TieColumns<'_>,
    make: impl Fn(usize, u64) -> E + Sync,
    compact: impl Fn(&mut [E], &mut [u32]) -> usize + Sync,
) -> Result<Vec<E>> {
    // One run of groups from `first` on: `ends` are their ends within `run`, made the
    // compacted ends.
    let one = |run: &mut [E], first: u32, ends: &mut [u32]| -> Result<usize> {
        scatter(groups, batch_rows, first, ends, run, &make);
        let tied = sort_groups(run, ends);
        ties.resolve(run, tied)?;
        Ok(compact(run, ends))
    };
    let num_groups = offsets.len() - 1;
    let total = offsets[num_groups] as usize;
    let mut entries = vec![E::default(); total];
    let threads = worker_threads(threads, total, ENTRIES_PER_THREAD);
    if threads == 1 || num_groups < 2 {
        let kept = one(&mut entries, 0, &mut offsets[1..])?;
        entries.truncate(kept);
        entries.shrink_to_fit();
        return Ok(entries);
    }
    let bounds = group_runs(offsets, threads);
    let bases: Vec<usize> = bounds.iter().map(|&g| offsets[g] as usize).collect();
    for (run, w) in bounds.windows(2).enumerate() {
        for end in &mut offsets[w[0] + 1..=w[1]] {
            *end -= bases[run] as u32;
        }
    }
    let kept: Vec<Result<usize>> = std::thread::scope(|scope| {
        let one = &one;
        let mut rest_entries: &mut [E] = entries.as_mut_slice();
        let mut rest_ends: &mut [u32] = &mut offsets[1..];
        let mut handles = Vec::with_capacity(bounds.len() - 1);
        for (run, w) in bounds.windows(2).enumerate() {
            let (run_entries, tail) = rest_entries.split_at_mut(bases[run + 1] - bases[run]);
            rest_entries = tail;
            let (run_ends, tail) = rest_ends.split_at_mut(w[1] - w[0]);
            rest_ends = tail;
            let first = w[0] as u32;
            handles.push(scope.spawn(move || one(run_entries, first, run_ends)));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    internal_err!("as-of join: a thread ordering the index's groups panicked")
                })
            })
            .collect()
    });
    let mut at = 0;
    for ((run, w), kept) in bounds.windows(2).enumerate().zip(kept) {
        let kept = kept?;
        entries.copy_within(bases[run]..bases[run] + kept, at);
        for end in &mut offsets[w[0] + 1..=w[1]] {
            *end += at as u32;
        }
        at += kept;
    }
    entries.truncate(at);
    entries.shrink_to_fit();
    Ok(entries)
}
