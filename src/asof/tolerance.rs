//! The tolerance bound per left row: `l.t - d` (backward) or `l.t + d` (forward), in the time's
//! own type, saturating at the type's range so that an overflow can never turn into NULL (which
//! would mean "no match") or wrap around (which would mean a wrong match).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type,
    Int16Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result, ScalarValue, internal_err};

use super::kernel::Direction;
use super::logical::Tolerance;

const NANOS_PER_DAY: i128 = 86_400_000_000_000;

/// A duration in whole units of `unit_nanos`, rounded down: a bound of `t - 1.5 units` on
/// integer times admits exactly the times `>= t - 1`.
fn whole_units(nanos: i128, unit_nanos: i128) -> i64 {
    i64::try_from(nanos / unit_nanos).unwrap_or(i64::MAX)
}

fn shift<T, F>(array: &ArrayRef, f: F) -> ArrayRef
where
    T: ArrowPrimitiveType,
    F: Fn(T::Native) -> T::Native,
{
    let typed: &PrimitiveArray<T> = array.as_primitive();
    let shifted: PrimitiveArray<T> = typed.unary(f);
    // `unary` drops a timestamp's zone; put the original type back.
    Arc::new(shifted.with_data_type(array.data_type().clone()))
}

macro_rules! shift_int {
    ($t:ty, $array:expr, $d:expr, $backward:expr) => {{
        let d = $d;
        if $backward {
            shift::<$t, _>($array, move |v| v.saturating_sub(d))
        } else {
            shift::<$t, _>($array, move |v| v.saturating_add(d))
        }
    }};
}

fn number<T: TryFrom<i128>>(value: &ScalarValue, what: &str) -> Result<T> {
    let wide: i128 = match value {
        ScalarValue::Int8(Some(v)) => (*v).into(),
        ScalarValue::Int16(Some(v)) => (*v).into(),
        ScalarValue::Int32(Some(v)) => (*v).into(),
        ScalarValue::Int64(Some(v)) => (*v).into(),
        ScalarValue::UInt8(Some(v)) => (*v).into(),
        ScalarValue::UInt16(Some(v)) => (*v).into(),
        ScalarValue::UInt32(Some(v)) => (*v).into(),
        ScalarValue::UInt64(Some(v)) => (*v).into(),
        other => return internal_err!("as-of tolerance {other} is not an integer for {what}"),
    };
    T::try_from(wide).or_else(|_| internal_err!("as-of tolerance {value} is out of range"))
}

/// The inclusive bound the matched right time must reach, per left row.
pub fn tolerance_bound(
    time: &ArrayRef,
    tolerance: &Tolerance,
    direction: Direction,
) -> Result<ArrayRef> {
    let backward = direction == Direction::Backward;
    let t = time.data_type();
    Ok(match (t, tolerance) {
        (DataType::Timestamp(unit, _), Tolerance::Duration(nanos)) => {
            let unit_nanos = match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            };
            let d = whole_units(*nanos, unit_nanos);
            match unit {
                TimeUnit::Second => shift_int!(TimestampSecondType, time, d, backward),
                TimeUnit::Millisecond => shift_int!(TimestampMillisecondType, time, d, backward),
                TimeUnit::Microsecond => shift_int!(TimestampMicrosecondType, time, d, backward),
                TimeUnit::Nanosecond => shift_int!(TimestampNanosecondType, time, d, backward),
            }
        }
        (DataType::Date32, Tolerance::Duration(nanos)) => {
            let d = i32::try_from(nanos / NANOS_PER_DAY).unwrap_or(i32::MAX);
            shift_int!(Date32Type, time, d, backward)
        }
        (DataType::Date64, Tolerance::Duration(nanos)) => {
            let d = whole_units(*nanos, 1_000_000);
            shift_int!(Date64Type, time, d, backward)
        }
        (DataType::Int8, Tolerance::Number(v)) => {
            shift_int!(Int8Type, time, number::<i8>(v, "Int8")?, backward)
        }
        (DataType::Int16, Tolerance::Number(v)) => {
            shift_int!(Int16Type, time, number::<i16>(v, "Int16")?, backward)
        }
        (DataType::Int32, Tolerance::Number(v)) => {
            shift_int!(Int32Type, time, number::<i32>(v, "Int32")?, backward)
        }
        (DataType::Int64, Tolerance::Number(v)) => {
            shift_int!(Int64Type, time, number::<i64>(v, "Int64")?, backward)
        }
        (DataType::UInt8, Tolerance::Number(v)) => {
            shift_int!(UInt8Type, time, number::<u8>(v, "UInt8")?, backward)
        }
        (DataType::UInt16, Tolerance::Number(v)) => {
            shift_int!(UInt16Type, time, number::<u16>(v, "UInt16")?, backward)
        }
        (DataType::UInt32, Tolerance::Number(v)) => {
            shift_int!(UInt32Type, time, number::<u32>(v, "UInt32")?, backward)
        }
        (DataType::UInt64, Tolerance::Number(v)) => {
            shift_int!(UInt64Type, time, number::<u64>(v, "UInt64")?, backward)
        }
        (DataType::Float32, Tolerance::Number(ScalarValue::Float32(Some(d)))) => {
            let d = *d;
            if backward {
                shift::<Float32Type, _>(time, move |v| v - d)
            } else {
                shift::<Float32Type, _>(time, move |v| v + d)
            }
        }
        (DataType::Float64, Tolerance::Number(ScalarValue::Float64(Some(d)))) => {
            let d = *d;
            if backward {
                shift::<Float64Type, _>(time, move |v| v - d)
            } else {
                shift::<Float64Type, _>(time, move |v| v + d)
            }
        }
        (other, tolerance) => {
            return internal_err!("as-of tolerance {tolerance} does not fit times of type {other}");
        }
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Date32Array, Int64Array, TimestampMicrosecondArray, UInt8Array};

    use super::*;

    #[test]
    fn timestamps_keep_their_zone_and_round_down() {
        let t: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(10_000), None, Some(i64::MIN + 1)])
                .with_timezone("UTC"),
        );
        // 1.5 ms is 1500 µs.
        let b = tolerance_bound(&t, &Tolerance::Duration(1_500_000), Direction::Backward).unwrap();
        assert_eq!(b.data_type(), t.data_type());
        let b = b.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(b.value(0), 8_500);
        assert!(b.is_null(1));
        assert_eq!(b.value(2), i64::MIN);
        let f = tolerance_bound(&t, &Tolerance::Duration(1_500), Direction::Forward).unwrap();
        assert_eq!(
            f.as_primitive::<TimestampMicrosecondType>().value(0),
            10_001
        );
    }

    #[test]
    fn dates_and_numbers_saturate() {
        let d: ArrayRef = Arc::new(Date32Array::from(vec![100]));
        let b = tolerance_bound(
            &d,
            &Tolerance::Duration(7 * NANOS_PER_DAY),
            Direction::Backward,
        )
        .unwrap();
        assert_eq!(b.as_primitive::<Date32Type>().value(0), 93);
        let i: ArrayRef = Arc::new(Int64Array::from(vec![i64::MAX - 1]));
        let f = tolerance_bound(
            &i,
            &Tolerance::Number(ScalarValue::Int64(Some(5))),
            Direction::Forward,
        )
        .unwrap();
        assert_eq!(f.as_primitive::<Int64Type>().value(0), i64::MAX);
        let u: ArrayRef = Arc::new(UInt8Array::from(vec![3]));
        let b = tolerance_bound(
            &u,
            &Tolerance::Number(ScalarValue::UInt8(Some(5))),
            Direction::Backward,
        )
        .unwrap();
        assert_eq!(b.as_primitive::<UInt8Type>().value(0), 0);
    }
}
