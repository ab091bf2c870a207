//! [`RightIndex::probe`]: each left row's group by hash lookup, then the last entry of the group
//! at or before its time by a binary search (16 left rows in lockstep), then the tolerance
//! check on that entry alone.

use arrow::array::ArrayRef;
use datafusion::common::{Result, internal_err};

use super::entries::{Entries, unpack};
use super::groups::NO_GROUP;
use super::index::RightIndex;
use super::options::{Direction, RowRef, check_arrays};
use crate::asof::time::time_keys;

/// One left row to look up: its group's entries `start..start + len`, its time key and its
/// tolerance bound.
struct Query {
    row: usize,
    start: usize,
    len: usize,
    l: i64,
    bound: Option<i64>,
}

/// How many binary searches advance in lockstep.
const LANES: usize = 16;

/// Calls `found` with each query and the last entry of its range whose key is at most `q.l`,
/// for the queries that have one.
///
/// The binary searches of [`LANES`] queries advance one step at a time, side by side: each step
/// is a load from a random place of a large index, usually a cache miss, and independent loads
/// overlap where the dependent loads of a single search cannot. Each step is branch-free.
fn search_many<E>(
    entries: &[E],
    key: impl Fn(&E) -> i64,
    queries: &[Query],
    mut found: impl FnMut(&Query, &E),
) {
    for chunk in queries.chunks(LANES) {
        let mut base = [0usize; LANES];
        let mut size = [0usize; LANES];
        for (k, q) in chunk.iter().enumerate() {
            base[k] = q.start;
            size[k] = q.len;
        }
        loop {
            let mut active = false;
            for (k, q) in chunk.iter().enumerate() {
                let n = size[k];
                if n > 1 {
                    // Keep the upper half when its first entry is still `<= l`: the last entry
                    // `<= l` stays within `base..base + size`.
                    let half = n / 2;
                    let mid = base[k] + half;
                    base[k] = if key(&entries[mid]) <= q.l {
                        mid
                    } else {
                        base[k]
                    };
                    size[k] = n - half;
                    active = true;
                }
            }
            if !active {
                break;
            }
        }
        for (k, q) in chunk.iter().enumerate() {
            if q.len > 0 && key(&entries[base[k]]) <= q.l {
                found(q, &entries[base[k]]);
            }
        }
    }
}

impl RightIndex {
    /// For each left row, the matched right row or `None`.
    ///
    /// `keys` and `time` are the left's evaluated key and time expressions (declared types, equal
    /// lengths). `lower_bound` is the tolerance bound per left row in the time's own type,
    /// computed by the caller: `l.t - d` for the backward direction, `l.t + d` for the forward
    /// one. It is inclusive. A NULL (or NaN) bound matches nothing; compute it saturating so that
    /// overflow cannot turn into NULL. `None` means no tolerance.
    pub fn probe(
        &self,
        keys: &[ArrayRef],
        time: &ArrayRef,
        lower_bound: Option<&ArrayRef>,
    ) -> Result<Vec<Option<RowRef>>> {
        let n = time.len();
        check_arrays("left", &self.opts, n, keys, time)?;
        if let Some(b) = lower_bound
            && (b.data_type() != &self.opts.time_type || b.len() != n)
        {
            return internal_err!(
                "as-of tolerance bound ({}, {} rows) does not match the time ({}, {n} rows)",
                b.data_type(),
                b.len(),
                self.opts.time_type
            );
        }
        let mirror = self.opts.spec.direction == Direction::Forward;
        let groups = self.keys.lookup(keys, n)?;
        let times = time_keys(time.as_ref(), mirror)?;
        let bounds = match lower_bound {
            Some(b) => Some(time_keys(b.as_ref(), mirror)?),
            None => None,
        };
        let mut queries = Vec::with_capacity(n);
        for (row, (&g, &l)) in groups.iter().zip(&times).enumerate() {
            let (Some(l), true) = (l, g != NO_GROUP) else {
                continue;
            };
            let bound = match &bounds {
                None => None,
                Some(b) => match b[row] {
                    Some(b) => Some(b),
                    // A NULL bound: `r.t >= NULL` is never true.
                    None => continue,
                },
            };
            let start = self.offsets[g as usize] as usize;
            let end = self.offsets[g as usize + 1] as usize;
            queries.push(Query {
                row,
                start,
                len: end - start,
                l,
                bound,
            });
        }
        let mut out = vec![None; n];
        let strict = i64::from(self.opts.spec.strict);
        match &self.entries {
            Entries::Plain(entries) => search_many(
                entries,
                |e| e.key,
                &queries,
                |q, e| {
                    if q.bound.is_none_or(|b| e.key - strict >= b) {
                        out[q.row] = Some(unpack(e.rref));
                    }
                },
            ),
            Entries::Known(entries) => search_many(
                entries,
                |e| e.key,
                &queries,
                |q, e| {
                    if q.bound.is_none_or(|b| e.time >= b) {
                        out[q.row] = Some(unpack(e.rref));
                    }
                },
            ),
        }
        Ok(out)
    }
}
