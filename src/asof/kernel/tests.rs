//! Kernel tests: the example of docs/semantics.md, edge cases, `gather`, and a differential
//! comparison with the naive oracle over thousands of seeded random cases.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Float64Array, Int8Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray, StringViewArray, StructArray, UInt64Array,
    new_empty_array,
};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Fields, Int8Type, Int32Type, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use hashbrown::HashMap;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::groups::{IntGroups, NO_GROUP};
use super::*;
use crate::asof::oracle::{RightInput, oracle_asof};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn spec(direction: Direction, strict: bool) -> MatchSpec {
    MatchSpec { direction, strict }
}

const BACKWARD: MatchSpec = MatchSpec {
    direction: Direction::Backward,
    strict: false,
};

fn int_key() -> KeySpec {
    KeySpec {
        data_type: DataType::Int64,
        null_equal: false,
    }
}

/// Builds the index on one thread, checks that several threads build the same one, and that
/// it stays within what the builder said it would need.
fn build(opts: &KernelOptions, schema: &SchemaRef, inputs: &[RightInput]) -> RightIndex {
    let builder = || {
        let mut builder = IndexBuilder::try_new(opts.clone(), Arc::clone(schema)).unwrap();
        for i in inputs {
            builder
                .push(
                    i.batch.clone(),
                    &i.keys,
                    &i.time,
                    i.knowledge.as_ref(),
                    &i.tiebreak,
                )
                .unwrap();
        }
        builder
    };
    let parallel = builder().finish_with(8).unwrap();
    let builder = builder();
    let before = builder.memory_size();
    let scratch = builder.finish_scratch_size();
    let index = builder.finish().unwrap();
    assert!(
        index.memory_size() <= before + scratch,
        "index grew past the reservation"
    );
    assert_eq!(parallel.offsets, index.offsets, "offsets differ on threads");
    assert_eq!(
        format!("{:?}", parallel.entries),
        format!("{:?}", index.entries),
        "entries differ on threads"
    );
    index
}

fn i64s(v: &[Option<i64>]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

/// The `v` strings of the gathered rows (the last column of the example's right input).
fn gathered_strings(index: &RightIndex, refs: &[Option<RowRef>]) -> Vec<Option<String>> {
    let cols = index.gather(refs).unwrap();
    let v = cols.last().unwrap().as_string::<i32>();
    v.iter().map(|s| s.map(str::to_string)).collect()
}

/// One right input whose columns are `k`, `t`, `created`, `v`; keys `k`, time `t`, tie-break and
/// knowledge `created` as asked.
fn example_right(split: usize, knowledge: bool, tiebreak: bool) -> (SchemaRef, Vec<RightInput>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("t", DataType::Int64, true),
        Field::new("created", DataType::Int64, true),
        Field::new("v", DataType::Utf8, true),
    ]));
    let k = [1, 1, 1, 1, 2];
    let t = [5, 10, 10, 15, 20];
    let created = [5, 12, 11, 30, 20];
    let v = ["a", "b", "c", "d", "e"];
    let mut inputs = Vec::new();
    let mut start = 0;
    while start < k.len() {
        let end = (start + split).min(k.len());
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(k[start..end].to_vec())),
                Arc::new(Int64Array::from(t[start..end].to_vec())),
                Arc::new(Int64Array::from(created[start..end].to_vec())),
                Arc::new(StringArray::from(v[start..end].to_vec())),
            ],
        )
        .unwrap();
        inputs.push(RightInput {
            keys: vec![Arc::clone(batch.column(0))],
            time: Arc::clone(batch.column(1)),
            knowledge: knowledge.then(|| Arc::clone(batch.column(2))),
            tiebreak: if tiebreak {
                vec![Arc::clone(batch.column(2))]
            } else {
                vec![]
            },
            batch,
        });
        start = end;
    }
    (schema, inputs)
}

fn example_opts(knowledge: bool) -> KernelOptions {
    KernelOptions {
        spec: BACKWARD,
        keys: vec![int_key()],
        time_type: DataType::Int64,
        tiebreak: vec![TiebreakSpec {
            data_type: DataType::Int64,
            // TIEBREAK BY r.created DESC (NULLS LAST by default).
            options: SortOptions {
                descending: true,
                nulls_first: false,
            },
        }],
        has_knowledge: knowledge,
    }
}

/// Runs the example of docs/semantics.md with an optional tolerance and knowledge time.
fn run_example(tolerance: Option<i64>, knowledge: bool) -> Vec<Option<String>> {
    let lk = i64s(&[Some(1), Some(1), Some(2), Some(3)]);
    let lt = [10, 20, 10, 10];
    let time = i64s(&lt.map(Some));
    let bound = tolerance.map(|d| i64s(&lt.map(|t| Some(t - d))));
    let opts = example_opts(knowledge);
    let mut result = None;
    for split in [1, 2, 5] {
        let (schema, inputs) = example_right(split, knowledge, true);
        let index = build(&opts, &schema, &inputs);
        let refs = index
            .probe(&[Arc::clone(&lk)], &time, bound.as_ref())
            .unwrap();
        let oracle =
            oracle_asof(&opts, &inputs, &[Arc::clone(&lk)], &time, bound.as_ref()).unwrap();
        assert_eq!(refs, oracle, "split {split}");
        let got = gathered_strings(&index, &refs);
        if let Some(r) = &result {
            assert_eq!(r, &got, "split {split}");
        }
        result = Some(got);
    }
    result.unwrap()
}

fn s(v: &[Option<&str>]) -> Vec<Option<String>> {
    v.iter().map(|s| s.map(str::to_string)).collect()
}

// ---------------------------------------------------------------------------------------------
// The example of docs/semantics.md
// ---------------------------------------------------------------------------------------------

#[test]
fn example_tiebreak() {
    // (1,10): 10 beats 5, created 12 beats 11; (1,20): 15 is the latest; (2,10): 20 is in the
    // future; (3,10): no key 3.
    assert_eq!(
        run_example(None, false),
        s(&[Some("b"), Some("d"), None, None])
    );
}

#[test]
fn example_known_at() {
    // (1,20) gets b: d was only known at 30. (1,10) gets a: b and c became known at 12 and 11.
    assert_eq!(
        run_example(None, true),
        s(&[Some("a"), Some("b"), None, None])
    );
}

#[test]
fn example_tolerance() {
    // TOLERANCE 5: (1,10) still gets b (10 >= 10 - 5); (1,20) gets d (15 >= 20 - 5).
    assert_eq!(
        run_example(Some(5), false),
        s(&[Some("b"), Some("d"), None, None])
    );
    // TOLERANCE 4: d is 5 old, too old for (1,20).
    assert_eq!(
        run_example(Some(4), false),
        s(&[Some("b"), None, None, None])
    );
}

#[test]
fn example_tolerance_known_at() {
    // (1,20): b is 10 old, d was not yet known. (1,10): a (5 >= 10 - 5, known at 5).
    assert_eq!(
        run_example(Some(5), true),
        s(&[Some("a"), None, None, None])
    );
}

#[test]
fn example_without_tiebreak_takes_greatest_row() {
    // Without TIEBREAK BY, b (10, 12, "b") and c (10, 11, "c") are ordered by the full row:
    // created 12 > 11, so b.
    let opts = KernelOptions {
        tiebreak: vec![],
        ..example_opts(false)
    };
    let (schema, inputs) = example_right(2, false, false);
    let index = build(&opts, &schema, &inputs);
    let refs = index
        .probe(&[i64s(&[Some(1)])], &i64s(&[Some(10)]), None)
        .unwrap();
    assert_eq!(gathered_strings(&index, &refs), s(&[Some("b")]));
}

// ---------------------------------------------------------------------------------------------
// Edge cases
// ---------------------------------------------------------------------------------------------

/// The matched times for `left` against right times `right` (one batch, no key).
fn match_times(
    spec: MatchSpec,
    right: ArrayRef,
    left: ArrayRef,
    bound: Option<ArrayRef>,
) -> Vec<Option<u32>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "t",
        right.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::clone(&right)]).unwrap();
    let input = RightInput {
        batch,
        keys: vec![],
        time: Arc::clone(&right),
        knowledge: None,
        tiebreak: vec![],
    };
    let opts = KernelOptions {
        spec,
        keys: vec![],
        time_type: right.data_type().clone(),
        tiebreak: vec![],
        has_knowledge: false,
    };
    let index = build(&opts, &schema, std::slice::from_ref(&input));
    let refs = index.probe(&[], &left, bound.as_ref()).unwrap();
    let oracle = oracle_asof(&opts, &[input], &[], &left, bound.as_ref()).unwrap();
    assert_eq!(refs, oracle, "{spec:?}");
    refs.iter().map(|r| r.map(|r| r.row)).collect()
}

#[test]
fn i64_extremes() {
    let right = i64s(&[Some(i64::MIN), Some(0), Some(i64::MAX)]);
    let left = i64s(&[Some(i64::MIN), Some(-1), Some(i64::MAX)]);
    let m = |d, s| match_times(spec(d, s), Arc::clone(&right), Arc::clone(&left), None);
    assert_eq!(m(Direction::Backward, false), [Some(0), Some(0), Some(2)]);
    assert_eq!(m(Direction::Backward, true), [None, Some(0), Some(1)]);
    assert_eq!(m(Direction::Forward, false), [Some(0), Some(1), Some(2)]);
    assert_eq!(m(Direction::Forward, true), [Some(1), Some(1), None]);
}

#[test]
fn u64_extremes() {
    let right: ArrayRef = Arc::new(UInt64Array::from(vec![0, 1 << 63, u64::MAX]));
    let left: ArrayRef = Arc::new(UInt64Array::from(vec![0, (1 << 63) - 1, 1 << 63, u64::MAX]));
    let m = |d, s| match_times(spec(d, s), Arc::clone(&right), Arc::clone(&left), None);
    assert_eq!(
        m(Direction::Backward, false),
        [Some(0), Some(0), Some(1), Some(2)]
    );
    assert_eq!(
        m(Direction::Backward, true),
        [None, Some(0), Some(0), Some(1)]
    );
    assert_eq!(
        m(Direction::Forward, false),
        [Some(0), Some(1), Some(1), Some(2)]
    );
    assert_eq!(
        m(Direction::Forward, true),
        [Some(1), Some(1), Some(2), None]
    );
}

#[test]
fn strict_at_boundaries() {
    let right = i64s(&[Some(10), Some(20)]);
    let left = i64s(&[Some(10), Some(11), Some(19), Some(20), Some(21)]);
    let m = |d, s| match_times(spec(d, s), Arc::clone(&right), Arc::clone(&left), None);
    assert_eq!(
        m(Direction::Backward, false),
        [Some(0), Some(0), Some(0), Some(1), Some(1)]
    );
    assert_eq!(
        m(Direction::Backward, true),
        [None, Some(0), Some(0), Some(0), Some(1)]
    );
    assert_eq!(
        m(Direction::Forward, false),
        [Some(0), Some(1), Some(1), Some(1), None]
    );
    assert_eq!(
        m(Direction::Forward, true),
        [Some(1), Some(1), Some(1), None, None]
    );
}

#[test]
fn tolerance_zero_and_null_bounds() {
    let right = i64s(&[Some(10), Some(20)]);
    let left = i64s(&[Some(10), Some(15), Some(20), Some(20)]);
    // Tolerance 0: the bound is the left time itself; the last bound is NULL: no match.
    let bound = i64s(&[Some(10), Some(15), Some(20), None]);
    let m = |d, s| {
        match_times(
            spec(d, s),
            Arc::clone(&right),
            Arc::clone(&left),
            Some(Arc::clone(&bound)),
        )
    };
    assert_eq!(
        m(Direction::Backward, false),
        [Some(0), None, Some(1), None]
    );
    assert_eq!(m(Direction::Backward, true), [None, None, None, None]);
    assert_eq!(m(Direction::Forward, false), [Some(0), None, Some(1), None]);
    // Forward with bound l + 5.
    let bound = i64s(&[Some(15), Some(20), Some(25), Some(25)]);
    let fwd = match_times(
        spec(Direction::Forward, true),
        Arc::clone(&right),
        Arc::clone(&left),
        Some(bound),
    );
    assert_eq!(fwd, [None, Some(1), None, None]);
}

#[test]
fn nan_and_negative_zero() {
    let right: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(-0.0),
        Some(f64::NAN),
        Some(1.0),
        None,
        Some(f64::INFINITY),
    ]));
    let left: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(0.0),
        Some(f64::NAN),
        Some(-0.0),
        Some(0.5),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
    ]));
    let m = |d, s| match_times(spec(d, s), Arc::clone(&right), Arc::clone(&left), None);
    assert_eq!(
        m(Direction::Backward, false),
        [Some(0), None, Some(0), Some(0), Some(4), None]
    );
    assert_eq!(
        m(Direction::Backward, true),
        [None, None, None, Some(0), Some(2), None]
    );
    assert_eq!(
        m(Direction::Forward, false),
        [Some(0), None, Some(0), Some(2), Some(4), Some(0)]
    );
    assert_eq!(
        m(Direction::Forward, true),
        [Some(2), None, Some(2), Some(2), None, Some(0)]
    );
}

#[test]
fn null_keys_and_null_equal() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("t", DataType::Int64, true),
    ]));
    let k: ArrayRef = Arc::new(StringArray::from(vec![None, Some("a"), None]));
    let t = i64s(&[Some(1), Some(1), Some(2)]);
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), vec![Arc::clone(&k), Arc::clone(&t)]).unwrap();
    let input = RightInput {
        batch,
        keys: vec![k],
        time: t,
        knowledge: None,
        tiebreak: vec![],
    };
    let lk: ArrayRef = Arc::new(StringArray::from(vec![None, Some("a"), Some("b")]));
    let lt = i64s(&[Some(5), Some(5), Some(5)]);
    for null_equal in [false, true] {
        let opts = KernelOptions {
            spec: BACKWARD,
            keys: vec![KeySpec {
                data_type: DataType::Utf8,
                null_equal,
            }],
            time_type: DataType::Int64,
            tiebreak: vec![],
            has_knowledge: false,
        };
        let index = build(&opts, &schema, std::slice::from_ref(&input));
        let refs = index.probe(&[Arc::clone(&lk)], &lt, None).unwrap();
        let rows: Vec<_> = refs.iter().map(|r| r.map(|r| r.row)).collect();
        let null_match = if null_equal { Some(2) } else { None };
        assert_eq!(rows, [null_match, Some(1), None]);
        assert_eq!(index.num_groups(), if null_equal { 2 } else { 1 });
    }
}

#[test]
fn knowledge_with_forward_is_refused() {
    let opts = KernelOptions {
        spec: spec(Direction::Forward, false),
        has_knowledge: true,
        ..example_opts(true)
    };
    let schema = Arc::new(Schema::empty());
    let err = IndexBuilder::try_new(opts, schema).unwrap_err();
    assert!(err.to_string().contains("KNOWN AT"), "{err}");
}

#[test]
fn wrong_types_are_errors_not_panics() {
    let opts = example_opts(false);
    let (schema, inputs) = example_right(5, false, true);
    let mut builder = IndexBuilder::try_new(opts.clone(), Arc::clone(&schema)).unwrap();
    let i = &inputs[0];
    let utf8_keys: ArrayRef = Arc::new(StringArray::from(vec!["x"; 5]));
    assert!(
        builder
            .push(i.batch.clone(), &[utf8_keys], &i.time, None, &i.tiebreak)
            .is_err()
    );
    assert!(
        builder
            .push(
                i.batch.clone(),
                &i.keys,
                &i.time,
                Some(&i.time),
                &i.tiebreak
            )
            .is_err()
    );
    assert!(
        builder
            .push(i.batch.clone(), &i.keys, &i.time, None, &[])
            .is_err()
    );
    builder
        .push(i.batch.clone(), &i.keys, &i.time, None, &i.tiebreak)
        .unwrap();
    let index = builder.finish().unwrap();
    let short = i64s(&[Some(1)]);
    assert!(
        index
            .probe(&[Arc::clone(&short)], &i64s(&[Some(1), Some(2)]), None)
            .is_err()
    );
    let f: ArrayRef = Arc::new(Float64Array::from(vec![1.0]));
    assert!(index.probe(&[Arc::clone(&short)], &f, None).is_err());
    assert!(
        index
            .probe(&[Arc::clone(&short)], &short, Some(&f))
            .is_err()
    );
    assert!(index.gather(&[Some(RowRef { batch: 0, row: 5 })]).is_err());
    assert!(index.gather(&[Some(RowRef { batch: 1, row: 0 })]).is_err());

    let bad = KernelOptions {
        time_type: DataType::Utf8,
        ..opts
    };
    assert!(IndexBuilder::try_new(bad, schema).is_err());
}

#[test]
fn empty_right_and_empty_left() {
    let opts = example_opts(false);
    let (schema, _) = example_right(5, false, true);
    let index = build(&opts, &schema, &[]);
    assert_eq!(index.num_rows(), 0);
    let refs = index
        .probe(&[i64s(&[Some(1), None])], &i64s(&[Some(1), Some(1)]), None)
        .unwrap();
    assert_eq!(refs, [None, None]);
    let cols = index.gather(&refs).unwrap();
    assert_eq!(cols.len(), 4);
    assert!(cols.iter().all(|c| c.len() == 2 && c.null_count() == 2));
    // An empty batch still counts in the numbering.
    let (_, inputs) = example_right(5, false, true);
    let empty = RightInput {
        batch: inputs[0].batch.slice(0, 0),
        keys: vec![inputs[0].keys[0].slice(0, 0)],
        time: inputs[0].time.slice(0, 0),
        knowledge: None,
        tiebreak: vec![inputs[0].tiebreak[0].slice(0, 0)],
    };
    let both = [empty, inputs[0].clone()];
    let index = build(&opts, &schema, &both);
    let refs = index
        .probe(&[i64s(&[Some(1)])], &i64s(&[Some(100)]), None)
        .unwrap();
    assert_eq!(refs, [Some(RowRef { batch: 1, row: 3 })]);
    let refs = index.probe(&[i64s(&[])], &i64s(&[]), None).unwrap();
    assert!(refs.is_empty());
    assert!(index.gather(&refs).unwrap().iter().all(|c| c.is_empty()));
}

// ---------------------------------------------------------------------------------------------
// gather
// ---------------------------------------------------------------------------------------------

#[test]
fn gather_keeps_types_and_nulls_unmatched_rows() {
    let list_field = Arc::new(Field::new_list_field(DataType::Int32, true));
    let struct_fields = Fields::from(vec![
        Field::new("a", DataType::Int32, true),
        Field::new("b", DataType::Utf8, true),
    ]);
    let dict_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
            false,
        ),
        Field::new("view", DataType::Utf8View, true),
        Field::new("dict", dict_type.clone(), true),
        Field::new("list", DataType::List(Arc::clone(&list_field)), true),
        Field::new("struct", DataType::Struct(struct_fields.clone()), true),
        Field::new("dec", DataType::Decimal128(10, 3), true),
    ]));
    let batch = |base: i64, dict: &[&str]| {
        let t = arrow::array::TimestampMillisecondArray::from(vec![base, base + 1])
            .with_timezone("+02:00");
        let view = StringViewArray::from(vec![Some("a string longer than twelve bytes"), None]);
        let dict: DictionaryArray<Int32Type> = dict.iter().copied().collect();
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(base as i32), None]),
            None,
        ]);
        let st = StructArray::new(
            struct_fields.clone(),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("x"), Some("y")])),
            ],
            None,
        );
        let dec = arrow::array::Decimal128Array::from(vec![Some(1234), None])
            .with_precision_and_scale(10, 3)
            .unwrap();
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(t),
                Arc::new(view),
                Arc::new(dict),
                Arc::new(list),
                Arc::new(st),
                Arc::new(dec),
            ],
        )
        .unwrap()
    };
    let batches = [batch(0, &["p", "q"]), batch(100, &["q", "r"])];
    let opts = KernelOptions {
        spec: BACKWARD,
        keys: vec![],
        time_type: schema.field(0).data_type().clone(),
        tiebreak: vec![],
        has_knowledge: false,
    };
    let mut builder = IndexBuilder::try_new(opts, Arc::clone(&schema)).unwrap();
    for b in &batches {
        builder
            .push(b.clone(), &[], b.column(0), None, &[])
            .unwrap();
    }
    let index = builder.finish().unwrap();
    let refs = [
        Some(RowRef { batch: 1, row: 1 }),
        None,
        Some(RowRef { batch: 0, row: 0 }),
        None,
        Some(RowRef { batch: 1, row: 0 }),
    ];
    let cols = index.gather(&refs).unwrap();
    for (c, col) in cols.iter().enumerate() {
        assert_eq!(col.data_type(), schema.field(c).data_type());
        assert_eq!(col.len(), refs.len());
        for (i, r) in refs.iter().enumerate() {
            let got = ScalarValue::try_from_array(col, i).unwrap();
            match r {
                None => assert!(got.is_null(), "column {c} row {i}: {got:?}"),
                Some(r) => {
                    let want = ScalarValue::try_from_array(
                        batches[r.batch as usize].column(c),
                        r.row as usize,
                    )
                    .unwrap();
                    assert_eq!(got, want, "column {c} row {i}");
                }
            }
        }
    }
    // All unmatched: NULL columns of the right types.
    let cols = index.gather(&[None, None]).unwrap();
    for (c, col) in cols.iter().enumerate() {
        assert_eq!(col.data_type(), schema.field(c).data_type());
        assert_eq!(col.null_count(), 2);
    }
    // The probe agrees: the latest row of all.
    let t = arrow::array::TimestampMillisecondArray::from(vec![1000]).with_timezone("+02:00");
    let refs = index.probe(&[], &(Arc::new(t) as ArrayRef), None).unwrap();
    assert_eq!(refs, [Some(RowRef { batch: 1, row: 1 })]);
}

// ---------------------------------------------------------------------------------------------
// Random cases
// ---------------------------------------------------------------------------------------------

/// A time value before it is given a type.
#[derive(Debug, Clone, Copy)]
enum Tv {
    I(i128),
    F(f64),
}

fn int_range(dt: &DataType) -> Option<(i128, i128)> {
    Some(match dt {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 | DataType::Date32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 | DataType::Date64 | DataType::Timestamp(_, _) => {
            (i64::MIN.into(), i64::MAX.into())
        }
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, u64::MAX.into()),
        _ => return None,
    })
}

fn time_types() -> Vec<DataType> {
    vec![
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt8,
        DataType::UInt16,
        DataType::UInt32,
        DataType::UInt64,
        DataType::Float32,
        DataType::Float64,
        DataType::Date32,
        DataType::Date64,
        DataType::Timestamp(TimeUnit::Second, None),
        DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Timestamp(TimeUnit::Nanosecond, None),
    ]
}

/// A few distinct values of the type: tiny palettes make heavy ties, wide ones rare ties.
fn time_palette(rng: &mut StdRng, dt: &DataType, size: usize) -> Vec<Tv> {
    match int_range(dt) {
        Some((lo, hi)) => {
            let mut cands: Vec<i128> = [
                lo,
                lo + 1,
                lo / 2,
                -3,
                -2,
                -1,
                0,
                1,
                2,
                3,
                5,
                8,
                13,
                hi / 2,
                hi - 1,
                hi,
            ]
            .into_iter()
            .filter(|v| (lo..=hi).contains(v))
            .collect();
            cands.sort();
            cands.dedup();
            let mut p: Vec<i128> = cands
                .choose_multiple(rng, size.min(cands.len()))
                .copied()
                .collect();
            while p.len() < size {
                p.push(rng.random_range(lo..=hi));
            }
            p.into_iter().map(Tv::I).collect()
        }
        None => {
            let cands = [
                f64::NEG_INFINITY,
                -1e30,
                -2.5,
                -1.0,
                -0.0,
                0.0,
                5e-324,
                1.0,
                2.5,
                1e30,
                f64::INFINITY,
                f64::NAN,
            ];
            let mut p: Vec<f64> = cands
                .choose_multiple(rng, size.min(cands.len()))
                .copied()
                .collect();
            while p.len() < size {
                p.push(f64::from(rng.random_range(-40..40)) / 4.0);
            }
            p.into_iter().map(Tv::F).collect()
        }
    }
}

fn time_scalar(dt: &DataType, v: Option<Tv>) -> ScalarValue {
    use ScalarValue as S;
    let int = v.map(|v| match v {
        Tv::I(i) => i,
        Tv::F(f) => f as i128,
    });
    let float = v.map(|v| match v {
        Tv::F(f) => f,
        Tv::I(i) => i as f64,
    });
    match dt {
        DataType::Int8 => S::Int8(int.map(|i| i as i8)),
        DataType::Int16 => S::Int16(int.map(|i| i as i16)),
        DataType::Int32 => S::Int32(int.map(|i| i as i32)),
        DataType::Int64 => S::Int64(int.map(|i| i as i64)),
        DataType::UInt8 => S::UInt8(int.map(|i| i as u8)),
        DataType::UInt16 => S::UInt16(int.map(|i| i as u16)),
        DataType::UInt32 => S::UInt32(int.map(|i| i as u32)),
        DataType::UInt64 => S::UInt64(int.map(|i| i as u64)),
        DataType::Float32 => S::Float32(float.map(|f| f as f32)),
        DataType::Float64 => S::Float64(float),
        DataType::Date32 => S::Date32(int.map(|i| i as i32)),
        DataType::Date64 => S::Date64(int.map(|i| i as i64)),
        DataType::Timestamp(TimeUnit::Second, tz) => {
            S::TimestampSecond(int.map(|i| i as i64), tz.clone())
        }
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            S::TimestampMillisecond(int.map(|i| i as i64), tz.clone())
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            S::TimestampMicrosecond(int.map(|i| i as i64), tz.clone())
        }
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
            S::TimestampNanosecond(int.map(|i| i as i64), tz.clone())
        }
        other => panic!("not a time type: {other}"),
    }
}

/// The tolerance bound `l - d` (backward) or `l + d` (forward) in the type's own arithmetic,
/// saturating for integers.
fn bound_of(dt: &DataType, direction: Direction, l: Option<Tv>, d: Tv) -> Option<Tv> {
    Some(match (l?, d) {
        (Tv::I(l), Tv::I(d)) => {
            let (lo, hi) = int_range(dt).unwrap();
            Tv::I(match direction {
                Direction::Backward => (l - d).max(lo),
                Direction::Forward => (l + d).min(hi),
            })
        }
        (Tv::F(l), Tv::F(d)) if dt == &DataType::Float32 => {
            let (l, d) = (l as f32, d as f32);
            Tv::F(f64::from(match direction {
                Direction::Backward => l - d,
                Direction::Forward => l + d,
            }))
        }
        (Tv::F(l), Tv::F(d)) => Tv::F(match direction {
            Direction::Backward => l - d,
            Direction::Forward => l + d,
        }),
        _ => unreachable!(),
    })
}

fn tolerance(rng: &mut StdRng, dt: &DataType) -> Tv {
    match int_range(dt) {
        Some((lo, hi)) => Tv::I(*[0, 1, 2, 3, (hi - lo) / 4, hi - lo].choose(rng).unwrap()),
        None => Tv::F(*[0.0, 0.5, 1.0, 3.0, f64::INFINITY].choose(rng).unwrap()),
    }
}

fn key_type_sets() -> Vec<Vec<DataType>> {
    use DataType as D;
    let dict = |k: D, v: D| D::Dictionary(Box::new(k), Box::new(v));
    vec![
        vec![],
        vec![D::Int64],
        vec![D::Int64],
        vec![D::Int32],
        vec![D::Int8],
        vec![D::UInt64],
        vec![D::Utf8],
        vec![D::LargeUtf8],
        vec![D::Utf8View],
        vec![D::Binary],
        vec![dict(D::Int32, D::Utf8)],
        vec![dict(D::Int8, D::LargeUtf8)],
        vec![D::Boolean],
        vec![D::Decimal128(12, 2)],
        vec![D::FixedSizeBinary(4)],
        vec![D::Date32],
        vec![D::Timestamp(TimeUnit::Millisecond, Some("+01:00".into()))],
        vec![D::Float64],
        vec![D::Int64, D::Utf8],
        vec![D::Int32, D::Boolean, D::Utf8View],
        vec![D::Utf8, D::Utf8],
    ]
}

fn key_string(level: u32) -> String {
    if level.is_multiple_of(3) {
        format!("a rather long key, number {level}")
    } else {
        format!("k{level}")
    }
}

/// A value of `dt` for a small level; distinct levels give distinct values (except Boolean).
fn level_scalar(dt: &DataType, level: Option<u32>) -> ScalarValue {
    use ScalarValue as S;
    match dt {
        DataType::Int64 => S::Int64(level.map(|l| i64::from(l) * 7 - 20)),
        DataType::Int32 => S::Int32(level.map(|l| l as i32 * 3 - 5)),
        DataType::Int8 => S::Int8(level.map(|l| l as i8 - 60)),
        DataType::UInt64 => {
            S::UInt64(level.map(|l| u64::from(l).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        }
        DataType::Utf8 => S::Utf8(level.map(key_string)),
        DataType::LargeUtf8 => S::LargeUtf8(level.map(key_string)),
        DataType::Utf8View => S::Utf8View(level.map(key_string)),
        DataType::Binary => S::Binary(level.map(|l| key_string(l).into_bytes())),
        DataType::FixedSizeBinary(4) => {
            S::FixedSizeBinary(4, level.map(|l| l.to_le_bytes().to_vec()))
        }
        DataType::Dictionary(k, v) => S::Dictionary(k.clone(), Box::new(level_scalar(v, level))),
        DataType::Boolean => S::Boolean(level.map(|l| l % 2 == 1)),
        DataType::Decimal128(p, s) => {
            S::Decimal128(level.map(|l| i128::from(l) * 125 - 1000), *p, *s)
        }
        DataType::Date32 => S::Date32(level.map(|l| l as i32 * 1000 - 3)),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            S::TimestampMillisecond(level.map(|l| i64::from(l) * 86_400_000), tz.clone())
        }
        DataType::Float64 => S::Float64(level.map(|l| {
            let special = [0.0, -0.0, f64::NAN, 1.5, -2.0, f64::INFINITY, 1e-300];
            special.get(l as usize).copied().unwrap_or(f64::from(l))
        })),
        DataType::List(_) => match level {
            None => S::new_null_list(DataType::Int32, true, 1),
            Some(l) => {
                let items: Vec<ScalarValue> = match l % 5 {
                    0 => vec![],
                    1 => vec![S::Int32(Some(1))],
                    2 => vec![S::Int32(Some(1)), S::Int32(None)],
                    3 => vec![S::Int32(None)],
                    _ => vec![S::Int32(Some(2))],
                };
                S::List(S::new_list_nullable(&items, &DataType::Int32))
            }
        },
        other => panic!("no level values for {other}"),
    }
}

/// An array of `dt` from logical values. Dictionaries get a shuffled dictionary with one value
/// twice, so equal values often have different dictionary keys.
fn build_array(rng: &mut StdRng, dt: &DataType, values: Vec<ScalarValue>) -> ArrayRef {
    if values.is_empty() {
        return new_empty_array(dt);
    }
    let DataType::Dictionary(key_type, value_type) = dt else {
        let array = ScalarValue::iter_to_array(values).unwrap();
        assert_eq!(array.data_type(), dt);
        return array;
    };
    let inner: Vec<ScalarValue> = values
        .into_iter()
        .map(|v| match v {
            ScalarValue::Dictionary(_, v) => *v,
            other => panic!("not a dictionary value: {other:?}"),
        })
        .collect();
    let mut distinct: Vec<ScalarValue> = Vec::new();
    for v in inner.iter().filter(|v| !v.is_null()) {
        if !distinct.contains(v) {
            distinct.push(v.clone());
        }
    }
    if let Some(first) = distinct.first().cloned() {
        distinct.push(first);
    }
    distinct.shuffle(rng);
    let keys: Vec<Option<i64>> = inner
        .iter()
        .map(|v| {
            if v.is_null() {
                return None;
            }
            let at: Vec<usize> = (0..distinct.len()).filter(|&p| &distinct[p] == v).collect();
            Some(*at.choose(rng).unwrap() as i64)
        })
        .collect();
    let dictionary = if distinct.is_empty() {
        new_empty_array(value_type)
    } else {
        ScalarValue::iter_to_array(distinct).unwrap()
    };
    match key_type.as_ref() {
        DataType::Int32 => {
            let keys =
                Int32Array::from(keys.iter().map(|k| k.map(|k| k as i32)).collect::<Vec<_>>());
            Arc::new(DictionaryArray::<Int32Type>::try_new(keys, dictionary).unwrap())
        }
        DataType::Int8 => {
            let keys = Int8Array::from(keys.iter().map(|k| k.map(|k| k as i8)).collect::<Vec<_>>());
            Arc::new(DictionaryArray::<Int8Type>::try_new(keys, dictionary).unwrap())
        }
        other => panic!("no dictionary keys of {other}"),
    }
}

/// How big and how tied a random case is.
#[derive(Debug, Clone, Copy)]
struct Profile {
    max_right: usize,
    max_left: usize,
    /// Right batch sizes to draw from.
    sizes: &'static [usize],
    /// At least this many right rows.
    min_right: usize,
}

const SMALL: Profile = Profile {
    max_right: 120,
    max_left: 40,
    sizes: &[1, 2, 7, 49, 50, 51],
    min_right: 0,
};

const MEDIUM: Profile = Profile {
    max_right: 1500,
    max_left: 100,
    sizes: &[49, 50, 51, 500],
    min_right: 200,
};

const LARGE: Profile = Profile {
    max_right: 20_000,
    max_left: 30,
    sizes: &[8192, 1, 8192, 51],
    min_right: 8192,
};

/// A random as-of problem: logical right rows plus left arrays.
struct Case {
    label: String,
    opts: KernelOptions,
    schema: SchemaRef,
    /// Per right column, the logical value of each right row.
    columns: Vec<Vec<ScalarValue>>,
    key_cols: Vec<usize>,
    time_col: usize,
    know_col: Option<usize>,
    tb_cols: Vec<usize>,
    left_keys: Vec<ArrayRef>,
    left_time: ArrayRef,
    bound: Option<ArrayRef>,
    sizes: &'static [usize],
}

fn null_rate(rng: &mut StdRng) -> f64 {
    *[0.0, 0.0, 0.1, 0.3, 1.0].choose(rng).unwrap()
}

/// What a random case is about, drawn first: the options, how many distinct keys there are, the
/// times the rows draw from, and whether a list column rides along in the payload.
struct Shape {
    opts: KernelOptions,
    num_keys: u32,
    palette: Vec<Tv>,
    with_list: bool,
}

fn random_shape(rng: &mut StdRng) -> Shape {
    let direction = if rng.random_bool(0.5) {
        Direction::Backward
    } else {
        Direction::Forward
    };
    let spec = MatchSpec {
        direction,
        strict: rng.random_bool(0.4),
    };
    let has_knowledge = direction == Direction::Backward && rng.random_bool(0.35);
    let key_types = key_type_sets().choose(rng).unwrap().clone();
    let keys: Vec<KeySpec> = key_types
        .iter()
        .map(|t| KeySpec {
            data_type: t.clone(),
            null_equal: rng.random_bool(0.3),
        })
        .collect();
    let num_keys: u32 = *[1, 2, 3, 10, 40].choose(rng).unwrap();
    let time_type = time_types().choose(rng).unwrap().clone();
    let palette_size = *[1, 2, 3, 5, 12, 40].choose(rng).unwrap();
    let palette = time_palette(rng, &time_type, palette_size);
    let tiebreak = random_tiebreak(rng);
    let with_list = rng.random_bool(0.2);
    Shape {
        opts: KernelOptions {
            spec,
            keys,
            time_type,
            tiebreak,
            has_knowledge,
        },
        num_keys,
        palette,
        with_list,
    }
}

/// Zero to two `TIEBREAK BY` columns of random types and orders.
fn random_tiebreak(rng: &mut StdRng) -> Vec<TiebreakSpec> {
    let tb_types: Vec<DataType> = (0..rng.random_range(0..=2))
        .map(|_| {
            [
                DataType::Int64,
                DataType::Utf8,
                DataType::Float64,
                DataType::Boolean,
            ]
            .choose(rng)
            .unwrap()
            .clone()
        })
        .collect();
    tb_types
        .into_iter()
        .map(|data_type| TiebreakSpec {
            data_type,
            options: SortOptions {
                descending: rng.random_bool(0.5),
                nulls_first: rng.random_bool(0.3),
            },
        })
        .collect()
}

/// Where a case's right columns are: keys, time, knowledge time, tie-breaks, then a payload.
struct Layout {
    schema: SchemaRef,
    key_cols: Vec<usize>,
    time_col: usize,
    know_col: Option<usize>,
    tb_cols: Vec<usize>,
}

impl Layout {
    fn new(shape: &Shape) -> Self {
        let opts = &shape.opts;
        let mut fields = Vec::new();
        let mut add = |name: String, dt: DataType| {
            fields.push(Field::new(name, dt, true));
            fields.len() - 1
        };
        let key_cols: Vec<usize> = opts
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| add(format!("k{i}"), k.data_type.clone()))
            .collect();
        let time_col = add("t".into(), opts.time_type.clone());
        let know_col = opts
            .has_knowledge
            .then(|| add("c".into(), opts.time_type.clone()));
        let tb_cols: Vec<usize> = opts
            .tiebreak
            .iter()
            .enumerate()
            .map(|(i, t)| add(format!("b{i}"), t.data_type.clone()))
            .collect();
        add("p".into(), DataType::Int64);
        add("s".into(), DataType::Utf8View);
        if shape.with_list {
            add(
                "l".into(),
                DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))),
            );
        }
        Self {
            schema: Arc::new(Schema::new(fields)),
            key_cols,
            time_col,
            know_col,
            tb_cols,
        }
    }
}

/// How often a right key, time, knowledge time and tie-break is NULL.
struct NullRates {
    key: f64,
    time: f64,
    know: f64,
    tiebreak: f64,
}

impl NullRates {
    fn random(rng: &mut StdRng) -> Self {
        let key = null_rate(rng);
        // Now and then every time is NULL; mostly few are, so that rows match.
        let time = if rng.random_bool(0.03) {
            1.0
        } else {
            null_rate(rng).min(0.3)
        };
        let know = null_rate(rng).min(0.3);
        let tiebreak = null_rate(rng);
        Self {
            key,
            time,
            know,
            tiebreak,
        }
    }
}

/// The right rows as logical values, column by column.
fn random_right(
    rng: &mut StdRng,
    shape: &Shape,
    layout: &Layout,
    nulls: &NullRates,
    profile: Profile,
) -> Vec<Vec<ScalarValue>> {
    let n_right = rng.random_range(profile.min_right..=profile.max_right);
    let fields = layout.schema.fields();
    let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(n_right); fields.len()];
    for _ in 0..n_right {
        for (c, field) in fields.iter().enumerate() {
            let dt = field.data_type();
            let v = if layout.key_cols.contains(&c) {
                let level =
                    (!rng.random_bool(nulls.key)).then(|| rng.random_range(0..shape.num_keys));
                level_scalar(dt, level)
            } else if c == layout.time_col || Some(c) == layout.know_col {
                let rate = if c == layout.time_col {
                    nulls.time
                } else {
                    nulls.know
                };
                let v = (!rng.random_bool(rate)).then(|| *shape.palette.choose(rng).unwrap());
                time_scalar(dt, v)
            } else if layout.tb_cols.contains(&c) {
                let level = (!rng.random_bool(nulls.tiebreak)).then(|| rng.random_range(0..3));
                level_scalar(dt, level)
            } else {
                let level = (!rng.random_bool(0.2)).then(|| rng.random_range(0..3));
                level_scalar(dt, level)
            };
            columns[c].push(v);
        }
    }
    columns
}

/// The left side of a case: its key arrays, its times (mostly from the right's palette) and,
/// now and then, tolerance bounds.
struct Left {
    keys: Vec<ArrayRef>,
    time: ArrayRef,
    bound: Option<ArrayRef>,
}

fn random_left(rng: &mut StdRng, shape: &Shape, key_nulls: f64, profile: Profile) -> Left {
    let time_type = &shape.opts.time_type;
    let n_left = rng.random_range(0..=profile.max_left);
    let keys: Vec<ArrayRef> = shape
        .opts
        .keys
        .iter()
        .map(|k| {
            let values = (0..n_left)
                .map(|_| {
                    let level = (!rng.random_bool(key_nulls.min(0.5)))
                        .then(|| rng.random_range(0..=shape.num_keys));
                    level_scalar(&k.data_type, level)
                })
                .collect();
            build_array(rng, &k.data_type, values)
        })
        .collect();
    let wide = time_palette(rng, time_type, 4);
    let times: Vec<Option<Tv>> = (0..n_left)
        .map(|_| {
            if rng.random_bool(0.05) {
                None
            } else if rng.random_bool(0.8) {
                Some(*shape.palette.choose(rng).unwrap())
            } else {
                Some(*wide.choose(rng).unwrap())
            }
        })
        .collect();
    let time = build_array(
        rng,
        time_type,
        times.iter().map(|v| time_scalar(time_type, *v)).collect(),
    );
    let bound = rng
        .random_bool(0.35)
        .then(|| random_bounds(rng, time_type, shape.opts.spec.direction, &times));
    Left { keys, time, bound }
}

/// The tolerance bound of each left time for a random tolerance, now and then NULL.
fn random_bounds(
    rng: &mut StdRng,
    time_type: &DataType,
    direction: Direction,
    times: &[Option<Tv>],
) -> ArrayRef {
    let d = tolerance(rng, time_type);
    let bound_nulls = *[0.0, 0.0, 0.2].choose(rng).unwrap();
    let values = times
        .iter()
        .map(|l| {
            let b = if rng.random_bool(bound_nulls) {
                None
            } else {
                bound_of(time_type, direction, *l, d)
            };
            time_scalar(time_type, b)
        })
        .collect();
    build_array(rng, time_type, values)
}

fn random_case(rng: &mut StdRng, profile: Profile, label: String) -> Case {
    let shape = random_shape(rng);
    let layout = Layout::new(&shape);
    let nulls = NullRates::random(rng);
    let columns = random_right(rng, &shape, &layout, &nulls, profile);
    let left = random_left(rng, &shape, nulls.key, profile);
    let Shape {
        opts,
        num_keys,
        palette,
        ..
    } = shape;
    let key_types: Vec<&DataType> = opts.keys.iter().map(|k| &k.data_type).collect();
    Case {
        label: format!(
            "{label}: {:?} keys {key_types:?} x{num_keys} time {} palette {} tiebreak {:?} \
             knowledge {} tolerance {} right {} left {}",
            opts.spec,
            opts.time_type,
            palette.len(),
            opts.tiebreak,
            opts.has_knowledge,
            left.bound.is_some(),
            columns.first().map_or(0, Vec::len),
            left.time.len(),
        ),
        opts,
        schema: layout.schema,
        columns,
        key_cols: layout.key_cols,
        time_col: layout.time_col,
        know_col: layout.know_col,
        tb_cols: layout.tb_cols,
        left_keys: left.keys,
        left_time: left.time,
        bound: left.bound,
        sizes: profile.sizes,
    }
}

impl Case {
    /// The right input: the rows in `order`, cut into batches of sizes drawn from the profile
    /// (now and then an empty batch).
    fn inputs(&self, rng: &mut StdRng, order: &[usize]) -> Vec<RightInput> {
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let size = if rng.random_bool(0.05) {
                0
            } else {
                *self.sizes.choose(rng).unwrap()
            };
            let end = (start + size).min(order.len());
            let rows = &order[start..end];
            let arrays: Vec<ArrayRef> = self
                .columns
                .iter()
                .zip(self.schema.fields())
                .map(|(col, f)| {
                    build_array(
                        rng,
                        f.data_type(),
                        rows.iter().map(|&r| col[r].clone()).collect(),
                    )
                })
                .collect();
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays).unwrap();
            out.push(RightInput {
                keys: self
                    .key_cols
                    .iter()
                    .map(|&c| Arc::clone(batch.column(c)))
                    .collect(),
                time: Arc::clone(batch.column(self.time_col)),
                knowledge: self.know_col.map(|c| Arc::clone(batch.column(c))),
                tiebreak: self
                    .tb_cols
                    .iter()
                    .map(|&c| Arc::clone(batch.column(c)))
                    .collect(),
                batch,
            });
            start = end;
            if start == order.len() && rng.random_bool(0.7) {
                return out;
            }
        }
    }

    fn probe(&self, index: &RightIndex) -> Vec<Option<RowRef>> {
        index
            .probe(&self.left_keys, &self.left_time, self.bound.as_ref())
            .unwrap()
    }
}

fn cell(inputs: &[RightInput], r: RowRef, c: usize) -> ScalarValue {
    ScalarValue::try_from_array(inputs[r.batch as usize].batch.column(c), r.row as usize).unwrap()
}

/// Whether two right rows are equal in every column (then either is a correct match).
fn same_row(inputs: &[RightInput], a: RowRef, b: RowRef) -> bool {
    let n = inputs[0].batch.num_columns();
    (0..n).all(|c| cell(inputs, a, c) == cell(inputs, b, c))
}

/// The gathered output as logical values, row by row.
fn gathered(index: &RightIndex, refs: &[Option<RowRef>]) -> Vec<Vec<ScalarValue>> {
    let cols = index.gather(refs).unwrap();
    (0..refs.len())
        .map(|i| {
            cols.iter()
                .map(|c| ScalarValue::try_from_array(c, i).unwrap())
                .collect()
        })
        .collect()
}

#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    left_rows: usize,
    matched: usize,
    tied_refs: usize,
}

/// Kernel against oracle on one case; returns the kernel's gathered output.
fn check_case(rng: &mut StdRng, case: &Case, tally: &mut Tally) -> Vec<Vec<ScalarValue>> {
    let order: Vec<usize> = (0..case.columns[0].len()).collect();
    let inputs = case.inputs(rng, &order);
    let index = build(&case.opts, &case.schema, &inputs);
    let kernel = case.probe(&index);
    let oracle = oracle_asof(
        &case.opts,
        &inputs,
        &case.left_keys,
        &case.left_time,
        case.bound.as_ref(),
    )
    .unwrap();
    assert_eq!(kernel.len(), oracle.len());
    for (i, (k, o)) in kernel.iter().zip(&oracle).enumerate() {
        match (k, o) {
            (k, o) if k == o => {}
            (Some(a), Some(b)) if same_row(&inputs, *a, *b) => tally.tied_refs += 1,
            (k, o) => {
                let show = |r: &Option<RowRef>| {
                    r.map(|r| {
                        (0..case.schema.fields().len())
                            .map(|c| cell(&inputs, r, c))
                            .collect::<Vec<_>>()
                    })
                };
                panic!(
                    "{}\nleft row {i}: keys {:?} time {:?} bound {:?}\nkernel {k:?} {:?}\noracle {o:?} {:?}",
                    case.label,
                    case.left_keys
                        .iter()
                        .map(|a| ScalarValue::try_from_array(a, i).unwrap())
                        .collect::<Vec<_>>(),
                    ScalarValue::try_from_array(&case.left_time, i).unwrap(),
                    case.bound
                        .as_ref()
                        .map(|b| ScalarValue::try_from_array(b, i).unwrap()),
                    show(k),
                    show(o),
                )
            }
        }
    }
    let out = gathered(&index, &kernel);
    for (row, r) in out.iter().zip(&kernel) {
        match r {
            None => assert!(row.iter().all(ScalarValue::is_null), "{}", case.label),
            Some(r) => {
                for (c, v) in row.iter().enumerate() {
                    assert_eq!(v, &cell(&inputs, *r, c), "{}", case.label);
                }
            }
        }
    }
    tally.cases += 1;
    tally.left_rows += kernel.len();
    tally.matched += kernel.iter().filter(|r| r.is_some()).count();
    out
}

fn differential(seed: u64, cases: usize, profile: Profile) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for i in 0..cases {
        let case = random_case(&mut rng, profile, format!("seed {seed} case {i}"));
        check_case(&mut rng, &case, &mut tally);
    }
    eprintln!("seed {seed}: {tally:?}");
    // The cases must exercise matching, not just return NULLs.
    assert!(tally.matched * 5 >= tally.left_rows, "{tally:?}");
    tally
}

#[test]
fn differential_against_oracle_1() {
    differential(1, 3000, SMALL);
}

#[test]
fn differential_against_oracle_2() {
    differential(2, 3000, SMALL);
}

#[test]
fn differential_against_oracle_3() {
    differential(3, 3000, SMALL);
}

#[test]
fn differential_against_oracle_medium() {
    differential(6, 400, MEDIUM);
}

#[test]
fn differential_against_oracle_large_batches() {
    differential(4, 10, LARGE);
}

/// The index is handed between tasks and shared by the probing ones.
#[test]
fn index_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<IndexBuilder>();
    check::<RightIndex>();
}

/// The same rows in a shuffled order and other batch splits give the same output.
#[test]
fn deterministic_under_order_and_batching() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut tally = Tally::default();
    for i in 0..1000 {
        let case = random_case(&mut rng, SMALL, format!("seed 5 case {i}"));
        let expected = check_case(&mut rng, &case, &mut tally);
        for _ in 0..3 {
            let mut order: Vec<usize> = (0..case.columns[0].len()).collect();
            order.shuffle(&mut rng);
            let inputs = case.inputs(&mut rng, &order);
            let index = build(&case.opts, &case.schema, &inputs);
            let got = gathered(&index, &case.probe(&index));
            assert_eq!(got, expected, "{}", case.label);
        }
    }
    eprintln!("determinism: {tally:?}");
}

#[test]
fn memory_is_about_sixteen_bytes_per_distinct_time() {
    let n = 100_000usize;
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("t", DataType::Int64, false),
    ]));
    let k: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..n as i64).map(|i| i % 1000),
    ));
    let t: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), vec![Arc::clone(&k), Arc::clone(&t)]).unwrap();
    let opts = KernelOptions {
        spec: BACKWARD,
        keys: vec![int_key()],
        time_type: DataType::Int64,
        tiebreak: vec![],
        has_knowledge: false,
    };
    let mut builder = IndexBuilder::try_new(opts, schema).unwrap();
    builder.push(batch.clone(), &[k], &t, None, &[]).unwrap();
    let index = builder.finish().unwrap();
    let overhead = index.memory_size() - batch.get_array_memory_size();
    assert!(
        overhead < n * 20 + 64 * 1024,
        "{overhead} bytes for {n} rows"
    );
    assert_eq!(index.num_groups(), 1000);
}

/// Integer keys get the same group ids whether the direct table is in use, is re-based to
/// lower keys, grows, or gives way to the hash map (keys spread too far, negative keys).
#[test]
fn int_groups_keep_ids_across_direct_and_hashed() {
    let mut rng = StdRng::seed_from_u64(11);
    for case in 0..200 {
        let mut groups = IntGroups::default();
        let mut reference: HashMap<u64, u32> = HashMap::default();
        let mut num_groups = 0u32;
        for _batch in 0..rng.random_range(1..6) {
            let (base, spread): (i64, i64) = match rng.random_range(0..4) {
                0 => (rng.random_range(0..1000), 50),
                1 => (rng.random_range(-100..100), 500),
                2 => (rng.random_range(0..10_000_000), 3_000_000),
                _ => (rng.random_range(i64::MIN / 2..i64::MAX / 2), i64::MAX / 4),
            };
            let keys: Vec<u64> = (0..rng.random_range(1..300))
                .map(|_| base.wrapping_add(rng.random_range(0..spread)) as u64)
                .collect();
            let (lo, hi) = (*keys.iter().min().unwrap(), *keys.iter().max().unwrap());
            groups.cover(lo, hi, keys.len());
            for &k in &keys {
                let g = groups.intern(k, &mut num_groups);
                let want = *reference.entry(k).or_insert(g);
                assert_eq!(g, want, "case {case}: key {k}");
            }
        }
        for (&k, &g) in &reference {
            assert_eq!(groups.get(k), g, "case {case}: lookup of {k}");
            assert_eq!(
                groups.get(k.wrapping_add(1 << 40)),
                reference
                    .get(&k.wrapping_add(1 << 40))
                    .copied()
                    .unwrap_or(NO_GROUP)
            );
        }
        assert_eq!(num_groups as usize, reference.len());
    }
}
