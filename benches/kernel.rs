//! The as-of matching kernel alone: building the index over the right input and probing it.
//!
//! Inputs are seeded and built outside the timed closures; every variant first checks its match
//! count against an independent count (a left row matches iff some right row with its key
//! becomes eligible at or before its time), so a broken kernel cannot post a fast time.
//!
//! Run with `cargo bench --bench kernel`; quote medians and ratios (see benches/README.md).

// A benchmark is a test harness: a broken invariant should stop it loudly, and criterion's
// macros generate undocumented items.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pitlake::asof::{
    Direction, IndexBuilder, KernelOptions, KeySpec, MatchSpec, RightIndex, RowRef, TiebreakSpec,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RIGHT_ROWS: usize = 1_000_000;
const KEYS: usize = 10_000;
const LEFT_ROWS: usize = 100_000;
const BATCH: usize = 8192;
/// Times span a year of microseconds, so same-key rows rarely tie.
const SPAN: i64 = 365 * 24 * 3600 * 1_000_000;

#[derive(Clone, Copy, PartialEq)]
enum KeyKind {
    Int,
    Utf8,
}

/// One pushed right batch and its evaluated expressions.
#[derive(Clone)]
struct Pushed {
    batch: RecordBatch,
    keys: Vec<ArrayRef>,
    time: ArrayRef,
    knowledge: Option<ArrayRef>,
    tiebreak: Vec<ArrayRef>,
}

struct Input {
    opts: KernelOptions,
    schema: SchemaRef,
    right: Vec<Pushed>,
    left_keys: Vec<ArrayRef>,
    left_time: ArrayRef,
    expected_matches: usize,
}

fn key_array(kind: KeyKind, keys: &[usize]) -> ArrayRef {
    match kind {
        KeyKind::Int => Arc::new(Int64Array::from_iter_values(keys.iter().map(|&k| k as i64))),
        KeyKind::Utf8 => Arc::new(StringArray::from_iter_values(
            keys.iter().map(|k| format!("entity-{k:08}")),
        )),
    }
}

fn time_array(times: &[i64]) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(times.to_vec()))
}

fn input(kind: KeyKind, knowledge: bool) -> Input {
    let mut rng = StdRng::seed_from_u64(42);
    let key_type = match kind {
        KeyKind::Int => DataType::Int64,
        KeyKind::Utf8 => DataType::Utf8,
    };
    let time_type = DataType::Timestamp(TimeUnit::Microsecond, None);
    let fields = vec![
        Field::new("k", key_type.clone(), false),
        Field::new("t", time_type.clone(), false),
        Field::new("created", time_type.clone(), false),
        Field::new("v", DataType::Float64, false),
    ];
    let schema = Arc::new(Schema::new(fields));

    // The earliest activation per key, for the independent match count.
    let mut first: HashMap<usize, i64> = HashMap::new();
    let mut right = Vec::new();
    let mut done = 0;
    while done < RIGHT_ROWS {
        let n = BATCH.min(RIGHT_ROWS - done);
        done += n;
        let keys: Vec<usize> = (0..n).map(|_| rng.random_range(0..KEYS)).collect();
        let times: Vec<i64> = (0..n).map(|_| rng.random_range(0..SPAN)).collect();
        // Known up to a day after the event.
        let created: Vec<i64> = times
            .iter()
            .map(|t| t + rng.random_range(0..86_400_000_000))
            .collect();
        for i in 0..n {
            let activation = if knowledge {
                times[i].max(created[i])
            } else {
                times[i]
            };
            let e = first.entry(keys[i]).or_insert(i64::MAX);
            *e = (*e).min(activation);
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                key_array(kind, &keys),
                time_array(&times),
                time_array(&created),
                Arc::new(Float64Array::from_iter_values((0..n).map(|_| rng.random()))),
            ],
        )
        .unwrap();
        right.push(Pushed {
            keys: vec![Arc::clone(batch.column(0))],
            time: Arc::clone(batch.column(1)),
            knowledge: knowledge.then(|| Arc::clone(batch.column(2))),
            tiebreak: vec![Arc::clone(batch.column(2))],
            batch,
        });
    }

    // A few keys never appear on the right.
    let left_keys: Vec<usize> = (0..LEFT_ROWS)
        .map(|_| rng.random_range(0..KEYS + KEYS / 100))
        .collect();
    let left_times: Vec<i64> = (0..LEFT_ROWS).map(|_| rng.random_range(0..SPAN)).collect();
    let expected_matches = left_keys
        .iter()
        .zip(&left_times)
        .filter(|(k, t)| first.get(k).is_some_and(|f| f <= t))
        .count();

    Input {
        opts: KernelOptions {
            spec: MatchSpec {
                direction: Direction::Backward,
                strict: false,
            },
            keys: vec![KeySpec {
                data_type: key_type,
                null_equal: false,
            }],
            time_type,
            tiebreak: vec![TiebreakSpec {
                data_type: DataType::Timestamp(TimeUnit::Microsecond, None),
                options: SortOptions {
                    descending: true,
                    nulls_first: false,
                },
            }],
            has_knowledge: knowledge,
        },
        schema,
        right,
        left_keys: vec![key_array(kind, &left_keys)],
        left_time: time_array(&left_times),
        expected_matches,
    }
}

fn build(input: &Input, right: Vec<Pushed>) -> RightIndex {
    let mut builder = IndexBuilder::try_new(input.opts.clone(), Arc::clone(&input.schema)).unwrap();
    for p in right {
        builder
            .push(p.batch, &p.keys, &p.time, p.knowledge.as_ref(), &p.tiebreak)
            .unwrap();
    }
    builder.finish().unwrap()
}

fn probe(index: &RightIndex, input: &Input) -> Vec<Option<RowRef>> {
    // The operator probes batch by batch.
    let mut out = Vec::with_capacity(LEFT_ROWS);
    let mut start = 0;
    while start < LEFT_ROWS {
        let n = BATCH.min(LEFT_ROWS - start);
        let keys: Vec<ArrayRef> = input.left_keys.iter().map(|k| k.slice(start, n)).collect();
        let time = input.left_time.slice(start, n);
        out.extend(index.probe(&keys, &time, None).unwrap());
        start += n;
    }
    out
}

fn bench_variant(c: &mut Criterion, name: &str, kind: KeyKind, knowledge: bool) {
    let input = input(kind, knowledge);
    let index = build(&input, input.right.clone());
    let refs = probe(&index, &input);
    let matches = refs.iter().filter(|r| r.is_some()).count();
    assert_eq!(matches, input.expected_matches, "{name}: wrong match count");
    assert!(
        matches > LEFT_ROWS / 2,
        "{name}: too few matches to measure"
    );

    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.bench_function("build_1M_rows_10k_keys", |b| {
        b.iter_batched(
            || input.right.clone(),
            |right| black_box(build(&input, right)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("probe_100k_rows", |b| {
        b.iter(|| black_box(probe(&index, &input)))
    });
    group.bench_function("gather_100k_rows", |b| {
        b.iter(|| {
            for chunk in refs.chunks(BATCH) {
                black_box(index.gather(chunk).unwrap());
            }
        })
    });
    group.finish();
}

fn kernel(c: &mut Criterion) {
    bench_variant(c, "asof_kernel/i64_key", KeyKind::Int, false);
    bench_variant(c, "asof_kernel/utf8_key", KeyKind::Utf8, false);
    bench_variant(c, "asof_kernel/i64_key_known_at", KeyKind::Int, true);
}

criterion_group!(benches, kernel);
criterion_main!(benches);
