//! [`IndexBuilder`]: collects the right input's batches with their evaluated keys, times,
//! knowledge times and tie-breaks, and builds the [`RightIndex`] in `finish`.

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use datafusion::common::{Result, internal_err, plan_err};

use super::entries::{
    Entries, KnownEntry, PlainEntry, compact_known, compact_plain, scatter, sort_groups,
};
use super::groups::NO_GROUP;
use super::index::{RightIndex, null_row_size};
use super::keys::KeyTable;
use super::options::{
    Direction, KernelOptions, check_arrays, supported_key_type, supported_tiebreak_type,
};
use super::ties::TieColumns;
use crate::asof::time::{supported_time_type, time_keys};

/// At most this many right rows per builder, so group ids and group offsets fit a `u32`.
const MAX_ROWS: usize = (u32::MAX - 1) as usize;

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

    fn check_push(
        &self,
        batch: &RecordBatch,
        keys: &[ArrayRef],
        time: &ArrayRef,
        knowledge: Option<&ArrayRef>,
        tiebreak: &[ArrayRef],
    ) -> Result<()> {
        let n = batch.num_rows();
        let schema = batch.schema();
        if schema.fields().len() != self.schema.fields().len()
            || schema
                .fields()
                .iter()
                .zip(self.schema.fields())
                .any(|(a, b)| a.data_type() != b.data_type())
        {
            return internal_err!(
                "as-of right batch schema {schema:?} does not match the declared {:?}",
                self.schema
            );
        }
        check_arrays("right", &self.opts, n, keys, time)?;
        match (knowledge, self.opts.has_knowledge) {
            (Some(k), true) if k.data_type() == &self.opts.time_type && k.len() == n => {}
            (None, false) => {}
            _ => return internal_err!("as-of knowledge time array does not match the options"),
        }
        if tiebreak.len() != self.opts.tiebreak.len()
            || tiebreak
                .iter()
                .zip(&self.opts.tiebreak)
                .any(|(a, s)| a.data_type() != &s.data_type || a.len() != n)
        {
            return internal_err!("as-of tie-break arrays do not match the options");
        }
        if self.batches.len() >= u32::MAX as usize || self.groups.len() + n > MAX_ROWS {
            return internal_err!(
                "an as-of partition holds more than {MAX_ROWS} right rows; use more partitions"
            );
        }
        Ok(())
    }

    /// Adds one right batch with its evaluated expressions, each as long as the batch: the keys
    /// (one array per key, of the declared types), the time, the knowledge time (exactly when
    /// `has_knowledge`) and the tie-break arrays.
    pub fn push(
        &mut self,
        batch: RecordBatch,
        keys: &[ArrayRef],
        time: &ArrayRef,
        knowledge: Option<&ArrayRef>,
        tiebreak: &[ArrayRef],
    ) -> Result<()> {
        self.check_push(&batch, keys, time, knowledge, tiebreak)?;
        let n = batch.num_rows();
        let mirror = self.opts.spec.direction == Direction::Forward;
        let strict = self.opts.spec.strict;
        let times = time_keys(time.as_ref(), mirror)?;
        let known = match knowledge {
            Some(k) => Some(time_keys(k.as_ref(), false)?),
            None => None,
        };
        let base = self.groups.len();
        if let Err(e) = self.keys.assign(keys, n, &mut self.groups) {
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
            self.tiebreak.push(tiebreak.to_vec());
        }
        self.batch_bytes += batch.get_array_memory_size();
        self.batches.push(batch);
        Ok(())
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

    /// Builds the index. The batches move into it; everything else is dropped.
    pub fn finish(self) -> Result<RightIndex> {
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
            let mut entries = scatter(&groups, &offsets, &batch_rows, |i, rref| KnownEntry {
                key: known[i],
                time: times[i],
                rref,
            });
            drop((groups, times, known));
            let ties = sort_groups(&mut entries, &offsets);
            tie_columns.resolve(&mut entries, ties)?;
            Entries::Known(compact_known(entries, &mut offsets, strict))
        } else {
            let mut entries = scatter(&groups, &offsets, &batch_rows, |i, rref| PlainEntry {
                key: times[i],
                rref,
            });
            drop((groups, times, known));
            let ties = sort_groups(&mut entries, &offsets);
            tie_columns.resolve(&mut entries, ties)?;
            Entries::Plain(compact_plain(entries, &mut offsets, strict))
        };
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
