//! Key tuples to group ids: [`KeyTable`] picks a representation by the key types (none, one
//! integer-like key, one string or binary key, anything else through the row format), assigns
//! ids to the right rows and looks the left rows up.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, DurationMicrosecondType, DurationMillisecondType,
    DurationNanosecondType, DurationSecondType, Int8Type, Int16Type, Int32Type, Int64Type,
    Time32MillisecondType, Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, internal_err};

use super::groups::{ByteGroups, IntGroups, NO_GROUP};
use super::options::KeySpec;
use crate::asof::time::integer_or_datetime;

/// How a key tuple becomes a group id.
#[derive(Debug)]
enum KeyKind {
    /// No keys: every row is in group 0.
    Unit,
    /// One integer-like key: its value, widened to `u64`, is the hash map key.
    Int,
    /// One string or binary key: its bytes are interned as they are.
    Bytes,
    /// Anything else: the keys' row encoding is interned.
    Rows(RowConverter),
}

impl KeyKind {
    fn new(keys: &[KeySpec]) -> Result<Self> {
        Ok(match keys {
            [] => Self::Unit,
            [key] if is_int_key(&key.data_type) => Self::Int,
            [key] if is_bytes_key(&key.data_type) => Self::Bytes,
            keys => Self::Rows(RowConverter::new(
                keys.iter()
                    .map(|k| SortField::new(k.data_type.clone()))
                    .collect(),
            )?),
        })
    }
}

/// Whether a single key of `data_type` is one integer (an integer, date, timestamp, time or
/// duration), interned in [`IntGroups`].
fn is_int_key(data_type: &DataType) -> bool {
    integer_or_datetime(data_type)
        || matches!(
            data_type,
            DataType::Time32(TimeUnit::Second | TimeUnit::Millisecond)
                | DataType::Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond)
                | DataType::Duration(_)
        )
}

fn is_bytes_key(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

/// Calls `f` with each value of an integer-like key array, widened to `u64` (`None` for NULL).
/// Sign extension keeps distinct values distinct, which is all a hash key needs.
fn visit_int_keys(array: &dyn Array, mut f: impl FnMut(Option<u64>)) -> Result<()> {
    macro_rules! go {
        ($t:ty) => {{
            let Some(a) = array.as_primitive_opt::<$t>() else {
                return internal_err!("as-of key array is not a {}", array.data_type());
            };
            if a.null_count() == 0 {
                a.values().iter().for_each(|v| f(Some(*v as u64)));
            } else {
                a.iter().for_each(|v| f(v.map(|v| v as u64)));
            }
        }};
    }
    match array.data_type() {
        DataType::Int8 => go!(Int8Type),
        DataType::Int16 => go!(Int16Type),
        DataType::Int32 => go!(Int32Type),
        DataType::Int64 => go!(Int64Type),
        DataType::UInt8 => go!(UInt8Type),
        DataType::UInt16 => go!(UInt16Type),
        DataType::UInt32 => go!(UInt32Type),
        DataType::UInt64 => go!(UInt64Type),
        DataType::Date32 => go!(Date32Type),
        DataType::Date64 => go!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => go!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => go!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => go!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => go!(TimestampNanosecondType),
        DataType::Time32(TimeUnit::Second) => go!(Time32SecondType),
        DataType::Time32(TimeUnit::Millisecond) => go!(Time32MillisecondType),
        DataType::Time64(TimeUnit::Microsecond) => go!(Time64MicrosecondType),
        DataType::Time64(TimeUnit::Nanosecond) => go!(Time64NanosecondType),
        DataType::Duration(TimeUnit::Second) => go!(DurationSecondType),
        DataType::Duration(TimeUnit::Millisecond) => go!(DurationMillisecondType),
        DataType::Duration(TimeUnit::Microsecond) => go!(DurationMicrosecondType),
        DataType::Duration(TimeUnit::Nanosecond) => go!(DurationNanosecondType),
        other => return internal_err!("{other} is not an integer-like as-of key"),
    }
    Ok(())
}

/// Calls `f` with the bytes of each value of a string or binary key array (`None` for NULL).
fn visit_bytes_keys(array: &dyn Array, mut f: impl FnMut(Option<&[u8]>)) -> Result<()> {
    macro_rules! go {
        ($opt:expr, $to_bytes:expr) => {{
            let Some(a) = $opt else {
                return internal_err!("as-of key array is not a {}", array.data_type());
            };
            a.iter().for_each(|v| f(v.map($to_bytes)));
        }};
    }
    match array.data_type() {
        DataType::Utf8 => go!(array.as_string_opt::<i32>(), str::as_bytes),
        DataType::LargeUtf8 => go!(array.as_string_opt::<i64>(), str::as_bytes),
        DataType::Utf8View => go!(array.as_string_view_opt(), str::as_bytes),
        DataType::Binary => go!(array.as_binary_opt::<i32>(), |v: &[u8]| v),
        DataType::LargeBinary => go!(array.as_binary_opt::<i64>(), |v: &[u8]| v),
        DataType::BinaryView => go!(array.as_binary_view_opt(), |v: &[u8]| v),
        other => return internal_err!("{other} is not a string or binary as-of key"),
    }
    Ok(())
}

/// Maps key tuples to dense group ids.
#[derive(Debug)]
pub(super) struct KeyTable {
    kind: KeyKind,
    null_equal: Vec<bool>,
    pub(super) num_groups: u32,
    /// `Int` and `Bytes` under `IS NOT DISTINCT FROM`: the group of the NULL key, once seen.
    null_group: Option<u32>,
    ints: IntGroups,
    bytes: ByteGroups,
}

/// The rows whose keys can match: NULL where a key compared with `=` (not
/// `IS NOT DISTINCT FROM`) is NULL. `None` when every row can match.
fn key_validity(keys: &[ArrayRef], null_equal: &[bool]) -> Option<NullBuffer> {
    keys.iter()
        .zip(null_equal)
        .filter(|(_, ne)| !**ne)
        .fold(None, |acc, (k, _)| {
            NullBuffer::union(acc.as_ref(), k.logical_nulls().as_ref())
        })
}

impl KeyTable {
    pub(super) fn try_new(keys: &[KeySpec]) -> Result<Self> {
        Ok(Self {
            kind: KeyKind::new(keys)?,
            null_equal: keys.iter().map(|k| k.null_equal).collect(),
            num_groups: 0,
            null_group: None,
            ints: IntGroups::default(),
            bytes: ByteGroups::default(),
        })
    }

    /// Appends the group id of each of `len` rows to `out`, creating groups for new keys.
    pub(super) fn assign(
        &mut self,
        keys: &[ArrayRef],
        len: usize,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        out.reserve(len);
        let Self {
            kind,
            null_equal,
            num_groups,
            null_group,
            ints,
            bytes,
        } = self;
        match kind {
            KeyKind::Unit => {
                if len > 0 {
                    *num_groups = 1;
                }
                out.extend(std::iter::repeat_n(0, len));
            }
            KeyKind::Int => {
                let null_equal = null_equal[0];
                let (mut lo, mut hi) = (u64::MAX, 0u64);
                visit_int_keys(keys[0].as_ref(), |v| {
                    if let Some(v) = v {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                })?;
                if lo <= hi {
                    ints.cover(lo, hi, len);
                }
                visit_int_keys(keys[0].as_ref(), |v| {
                    let g = match v {
                        Some(v) => ints.intern(v, num_groups),
                        None if null_equal => *null_group.get_or_insert_with(|| {
                            *num_groups += 1;
                            *num_groups - 1
                        }),
                        None => NO_GROUP,
                    };
                    out.push(g);
                })?;
            }
            KeyKind::Bytes => {
                let null_equal = null_equal[0];
                visit_bytes_keys(keys[0].as_ref(), |v| {
                    let g = match v {
                        Some(v) => bytes.intern(v, num_groups),
                        None if null_equal => {
                            *null_group.get_or_insert_with(|| bytes.reserve(num_groups))
                        }
                        None => NO_GROUP,
                    };
                    out.push(g);
                })?;
            }
            KeyKind::Rows(converter) => {
                let rows = converter.convert_columns(keys)?;
                let valid = key_validity(keys, null_equal);
                for i in 0..len {
                    let g = match &valid {
                        Some(v) if v.is_null(i) => NO_GROUP,
                        _ => bytes.intern(rows.row(i).data(), num_groups),
                    };
                    out.push(g);
                }
            }
        }
        Ok(())
    }

    /// The group id of each of `len` rows, [`NO_GROUP`] where no right row has the key.
    pub(super) fn lookup(&self, keys: &[ArrayRef], len: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(len);
        match &self.kind {
            KeyKind::Unit => {
                let g = if self.num_groups > 0 { 0 } else { NO_GROUP };
                out.extend(std::iter::repeat_n(g, len));
            }
            KeyKind::Int => {
                let null_group = self.null_group.unwrap_or(NO_GROUP);
                visit_int_keys(keys[0].as_ref(), |v| {
                    out.push(match v {
                        Some(v) => self.ints.get(v),
                        None => null_group,
                    })
                })?;
            }
            KeyKind::Bytes => {
                let null_group = self.null_group.unwrap_or(NO_GROUP);
                visit_bytes_keys(keys[0].as_ref(), |v| {
                    out.push(match v {
                        Some(v) => self.bytes.lookup(v),
                        None => null_group,
                    })
                })?;
            }
            KeyKind::Rows(converter) => {
                let rows = converter.convert_columns(keys)?;
                let valid = key_validity(keys, &self.null_equal);
                for i in 0..len {
                    out.push(match &valid {
                        Some(v) if v.is_null(i) => NO_GROUP,
                        _ => self.bytes.lookup(rows.row(i).data()),
                    });
                }
            }
        }
        Ok(out)
    }

    pub(super) fn memory_size(&self) -> usize {
        let converter = match &self.kind {
            KeyKind::Rows(c) => c.size(),
            _ => 0,
        };
        converter + self.ints.memory_size() + self.bytes.memory_size()
    }
}
