//! Time values as order-preserving `i64` keys.
//!
//! The kernel compares times as plain `i64`s: every supported time type maps to an `i64` whose
//! order is the time order, so one binary search serves all of them.
//!
//! - signed integers, dates and timestamps: the value itself (widened);
//! - `UInt8`..`UInt32`: the value itself (it fits); `UInt64`: the value with its top bit flipped,
//!   which maps `0..=u64::MAX` onto `i64::MIN..=i64::MAX` in order;
//! - floats: `-0.0` becomes `0.0`, then the IEEE bits are read as an `i64` and, for negative
//!   numbers, all bits but the sign are flipped (the classic total-order trick). NaN is NULL.
//!   `Float32` is widened to `Float64` first, which is exact.
//!
//! The forward direction (`<=`, `<`) mirrors the keys with a bitwise NOT: `!x` reverses the order
//! of every `i64` without overflow, so the kernel only ever looks backward.

use arrow::array::{Array, ArrowPrimitiveType, AsArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result, internal_err};

/// Whether the kernel accepts `data_type` as the type of a time (and knowledge time) column:
/// timestamps of every unit with or without a time zone, `Date32`, `Date64`, `Int8`..`Int64`,
/// `UInt8`..`UInt64`, `Float32` and `Float64`.
pub fn supported_time_type(data_type: &DataType) -> bool {
    integer_or_datetime(data_type) || matches!(data_type, DataType::Float32 | DataType::Float64)
}

/// Whether `data_type` is an integer (`Int8`..`UInt64`), a date or a timestamp: a type whose
/// values are integers, ordered as the times or numbers they stand for.
pub(crate) fn integer_or_datetime(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
        )
}

/// The order-preserving key of a float, `None` for NaN.
#[inline]
fn float_key(v: f64) -> Option<i64> {
    if v.is_nan() {
        return None;
    }
    // `-0.0 == 0.0` is true, so this folds both zeros onto the bits of `+0.0`.
    let v = if v == 0.0 { 0.0 } else { v };
    let bits = v.to_bits() as i64;
    Some(if bits < 0 { bits ^ i64::MAX } else { bits })
}

/// The order-preserving key of a `u64`.
#[inline]
fn u64_key(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

fn keys_of<T: ArrowPrimitiveType>(
    array: &dyn Array,
    mirror: bool,
    out: &mut Vec<Option<i64>>,
    key: impl Fn(T::Native) -> Option<i64>,
) -> Result<()> {
    let Some(array) = array.as_primitive_opt::<T>() else {
        return internal_err!("time array is not a {}", T::DATA_TYPE);
    };
    out.reserve(array.len());
    // Branch on `mirror` outside the loop so each loop body stays branch-free.
    if mirror {
        out.extend(array.iter().map(|v| v.and_then(&key).map(|k| !k)));
    } else {
        out.extend(array.iter().map(|v| v.and_then(&key)));
    }
    Ok(())
}

/// The keys of a time array, one per row, `None` for NULL and NaN; mirrored (bitwise NOT) when
/// `mirror` is set. Errors (internally) on an unsupported type: callers validate types first.
pub(crate) fn time_keys(array: &dyn Array, mirror: bool) -> Result<Vec<Option<i64>>> {
    let mut out = Vec::new();
    let o = &mut out;
    match array.data_type() {
        DataType::Int8 => keys_of::<Int8Type>(array, mirror, o, |v| Some(v.into()))?,
        DataType::Int16 => keys_of::<Int16Type>(array, mirror, o, |v| Some(v.into()))?,
        DataType::Int32 => keys_of::<Int32Type>(array, mirror, o, |v| Some(v.into()))?,
        DataType::Int64 => keys_of::<Int64Type>(array, mirror, o, Some)?,
        DataType::UInt8 => keys_of::<UInt8Type>(array, mirror, o, |v| Some(v.into()))?,
        DataType::UInt16 => keys_of::<UInt16Type>(array, mirror, o, |v| Some(v.into()))?,
        DataType::UInt32 => keys_of::<UInt32Type>(array, mirror, o, |v| Some(v.into()))?,
        DataType::UInt64 => keys_of::<UInt64Type>(array, mirror, o, |v| Some(u64_key(v)))?,
        DataType::Float32 => keys_of::<Float32Type>(array, mirror, o, |v| float_key(v.into()))?,
        DataType::Float64 => keys_of::<Float64Type>(array, mirror, o, float_key)?,
        DataType::Date32 => keys_of::<Date32Type>(array, mirror, o, |v| Some(v.into()))?,
        DataType::Date64 => keys_of::<Date64Type>(array, mirror, o, Some)?,
        DataType::Timestamp(TimeUnit::Second, _) => {
            keys_of::<TimestampSecondType>(array, mirror, o, Some)?
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            keys_of::<TimestampMillisecondType>(array, mirror, o, Some)?
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            keys_of::<TimestampMicrosecondType>(array, mirror, o, Some)?
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            keys_of::<TimestampNanosecondType>(array, mirror, o, Some)?
        }
        other => return internal_err!("unsupported as-of time type {other}"),
    }
    Ok(out)
}

fn dense_of<T: ArrowPrimitiveType>(
    array: &dyn Array,
    key: impl Fn(T::Native) -> i64,
    out: &mut Vec<i64>,
) -> Result<()> {
    let Some(array) = array.as_primitive_opt::<T>() else {
        return internal_err!("time array is not a {}", T::DATA_TYPE);
    };
    out.extend(array.values().iter().map(|&v| key(v)));
    Ok(())
}

/// The keys of an integer, date or timestamp time array (window times, see
/// [`integer_or_datetime`]) as [`time_keys`] gives them, without an `Option` per row (half the
/// memory): a value per row, meaningless where the returned validity says NULL.
pub(crate) fn dense_time_keys(array: &dyn Array) -> Result<(Vec<i64>, Option<NullBuffer>)> {
    let mut keys = Vec::with_capacity(array.len());
    let valid = dense_time_keys_into(array, &mut keys)?;
    Ok((keys, valid))
}

/// [`dense_time_keys`] appended to `out` (no vector of its own to fill and copy), with the
/// validity.
pub(crate) fn dense_time_keys_into(
    array: &dyn Array,
    out: &mut Vec<i64>,
) -> Result<Option<NullBuffer>> {
    match array.data_type() {
        DataType::Int8 => dense_of::<Int8Type>(array, i64::from, out)?,
        DataType::Int16 => dense_of::<Int16Type>(array, i64::from, out)?,
        DataType::Int32 => dense_of::<Int32Type>(array, i64::from, out)?,
        DataType::Int64 => dense_of::<Int64Type>(array, |v| v, out)?,
        DataType::UInt8 => dense_of::<UInt8Type>(array, i64::from, out)?,
        DataType::UInt16 => dense_of::<UInt16Type>(array, i64::from, out)?,
        DataType::UInt32 => dense_of::<UInt32Type>(array, i64::from, out)?,
        DataType::UInt64 => dense_of::<UInt64Type>(array, u64_key, out)?,
        DataType::Date32 => dense_of::<Date32Type>(array, i64::from, out)?,
        DataType::Date64 => dense_of::<Date64Type>(array, |v| v, out)?,
        DataType::Timestamp(TimeUnit::Second, _) => {
            dense_of::<TimestampSecondType>(array, |v| v, out)?
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            dense_of::<TimestampMillisecondType>(array, |v| v, out)?
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            dense_of::<TimestampMicrosecondType>(array, |v| v, out)?
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            dense_of::<TimestampNanosecondType>(array, |v| v, out)?
        }
        other => return internal_err!("{other} is not an integer, date or timestamp time"),
    }
    Ok(array.logical_nulls())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_keys_follow_numeric_order() {
        let values = [
            f64::NEG_INFINITY,
            f64::MIN,
            -1.5,
            -f64::MIN_POSITIVE,
            -4.9e-324,
            0.0,
            4.9e-324,
            f64::MIN_POSITIVE,
            1.0,
            f64::MAX,
            f64::INFINITY,
        ];
        let keys: Vec<i64> = values.iter().map(|v| float_key(*v).unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(float_key(-0.0), float_key(0.0));
        assert_eq!(float_key(f64::NAN), None);
        assert_eq!(float_key(-f64::NAN), None);
    }

    #[test]
    fn u64_keys_follow_numeric_order() {
        let values = [0, 1, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
        let keys: Vec<i64> = values.iter().map(|v| u64_key(*v)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(keys[0], i64::MIN);
        assert_eq!(keys[5], i64::MAX);
    }

    #[test]
    fn mirror_reverses_order() {
        let a = arrow::array::Int64Array::from(vec![Some(i64::MIN), Some(0), None, Some(i64::MAX)]);
        let k = time_keys(&a, true).unwrap();
        assert_eq!(k, vec![Some(i64::MAX), Some(-1), None, Some(i64::MIN)]);
    }
}
