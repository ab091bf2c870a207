//! The operator against the oracle: random inputs run through [`AsOfJoinExec`] with every batch
//! size, left and right partition count, join type and memory limit, compared row for row (and
//! in order, per left partition) with [`oracle_asof`].

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{Partitioning, PhysicalExprRef, PhysicalSortExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};
use datafusion::prelude::{SessionConfig, SessionContext};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::oracle::{RightInput, oracle_asof};
use super::{
    AsOfBuild, AsOfJoinExec, AsOfJoinMode, AsOfJoinType, AsOfOperator, IndexBuilder, KernelOptions,
    KeySpec, TiebreakSpec, Tolerance, tolerance_bound,
};

/// One random case.
struct Case {
    timestamp: bool,
    two_keys: bool,
    op: AsOfOperator,
    join_type: AsOfJoinType,
    tolerance: Option<i64>,
    tiebreak: Option<SortOptions>,
    known: bool,
    null_equal: bool,
    left: Vec<Vec<RecordBatch>>,
    right: Vec<RecordBatch>,
    right_partitions: usize,
    batch_size: usize,
    /// Whether the join shows only the right's `rid` (as under a projection).
    only_rid: bool,
    /// The co-partitioned mode: both sides hash-partitioned (into `right_partitions`) by
    /// DataFusion's own EnsureRequirements rule, as the planner would.
    co_partitioned: bool,
    /// The side the join indexes (the left only with one left partition, as the planner
    /// gives it one, unless co-partitioned).
    build: AsOfBuild,
    /// With the left indexed, the right rows put in key order at once.
    chunk_rows: usize,
}

fn schema(prefix: &str, timestamp: bool, two_keys: bool, right: bool) -> SchemaRef {
    let time = if timestamp {
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    } else {
        DataType::Int64
    };
    let mut fields = vec![Field::new(format!("{prefix}k"), DataType::Int64, true)];
    if two_keys {
        fields.push(Field::new(format!("{prefix}k2"), DataType::Utf8, true));
    }
    fields.push(Field::new(format!("{prefix}t"), time.clone(), true));
    if right {
        fields.push(Field::new("rc", time, true));
    }
    fields.push(Field::new(format!("{prefix}id"), DataType::Int64, false));
    if right {
        fields.push(Field::new("rv", DataType::Int64, true));
    }
    Arc::new(Schema::new(fields))
}

fn time_array(values: Vec<Option<i64>>, timestamp: bool) -> ArrayRef {
    if timestamp {
        Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
    } else {
        Arc::new(Int64Array::from(values))
    }
}

/// Rows of one side, cut into batches of `batch_size`.
#[expect(
    clippy::too_many_arguments,
    reason = "a test helper that builds every option"
)]
fn rows(
    rng: &mut StdRng,
    n: usize,
    keys: i64,
    times: i64,
    nulls: f64,
    timestamp: bool,
    two_keys: bool,
    right: bool,
    first_id: i64,
    batch_size: usize,
) -> Vec<RecordBatch> {
    let schema = schema(if right { "r" } else { "l" }, timestamp, two_keys, right);
    let null = |rng: &mut StdRng| rng.random_bool(nulls);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let k: Vec<Option<i64>> = (0..len)
            .map(|_| (!null(rng)).then(|| rng.random_range(0..keys)))
            .collect();
        let k2: Vec<Option<String>> = (0..len)
            .map(|_| (!null(rng)).then(|| ["a", "b"][rng.random_range(0..2)].to_string()))
            .collect();
        let t: Vec<Option<i64>> = (0..len)
            .map(|_| (!null(rng)).then(|| rng.random_range(0..times)))
            .collect();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(k))];
        if two_keys {
            columns.push(Arc::new(StringArray::from(k2)));
        }
        columns.push(time_array(t.clone(), timestamp));
        if right {
            // Known a little after the event, sometimes much later, sometimes never.
            let c: Vec<Option<i64>> = t
                .iter()
                .map(|t| {
                    let t = (*t)?;
                    (!null(rng)).then(|| t + rng.random_range(0..3) * rng.random_range(0..times))
                })
                .collect();
            columns.push(time_array(c, timestamp));
        }
        columns.push(Arc::new(Int64Array::from_iter_values(
            (start..start + len).map(|i| first_id + i as i64),
        )));
        if right {
            let v: Vec<Option<i64>> = (0..len).map(|_| Some(rng.random_range(0..3))).collect();
            columns.push(Arc::new(Int64Array::from(v)));
        }
        out.push(RecordBatch::try_new(schema.clone(), columns).unwrap());
        start += len;
    }
    out
}

fn random_case(rng: &mut StdRng) -> Case {
    const BATCH_SIZES: [usize; 7] = [1, 2, 7, 49, 50, 51, 8192];
    let timestamp = rng.random_bool(0.5);
    let two_keys = rng.random_bool(0.3);
    let op = [
        AsOfOperator::GtEq,
        AsOfOperator::Gt,
        AsOfOperator::LtEq,
        AsOfOperator::Lt,
    ][rng.random_range(0..4)];
    let backward = matches!(op, AsOfOperator::GtEq | AsOfOperator::Gt);
    let keys = [1, 3, 20, 1000][rng.random_range(0..4)];
    let times = [2, 5, 30, 10_000][rng.random_range(0..4)];
    let nulls = [0.0, 0.0, 0.1, 0.5][rng.random_range(0..4)];
    let batch_size = BATCH_SIZES[rng.random_range(0..BATCH_SIZES.len())];
    let build = match rng.random_bool(0.5) {
        true => AsOfBuild::Left,
        false => AsOfBuild::Right,
    };
    let left_partitions = match build {
        AsOfBuild::Left => 1,
        AsOfBuild::Right => rng.random_range(1..=4),
    };
    let left_rows = [0, 1, 10, 60, 300][rng.random_range(0..5)];
    let right_rows = [0, 1, 10, 80, 400][rng.random_range(0..5)];
    let mut left = Vec::new();
    let mut id = 0;
    for p in 0..left_partitions {
        let n = left_rows / left_partitions + usize::from(p == 0) * (left_rows % left_partitions);
        left.push(rows(
            rng, n, keys, times, nulls, timestamp, two_keys, false, id, batch_size,
        ));
        id += n as i64;
    }
    let right = rows(
        rng, right_rows, keys, times, nulls, timestamp, two_keys, true, 0, batch_size,
    );
    Case {
        timestamp,
        two_keys,
        op,
        join_type: if rng.random_bool(0.5) {
            AsOfJoinType::Left
        } else {
            AsOfJoinType::Inner
        },
        tolerance: rng
            .random_bool(0.3)
            .then(|| rng.random_range(0..=times / 2)),
        tiebreak: rng.random_bool(0.5).then(|| SortOptions {
            descending: rng.random_bool(0.5),
            nulls_first: rng.random_bool(0.3),
        }),
        known: backward && rng.random_bool(0.4),
        null_equal: rng.random_bool(0.3),
        left,
        right,
        right_partitions: rng.random_range(1..=8),
        batch_size,
        only_rid: rng.random_bool(0.5),
        co_partitioned: false,
        build,
        chunk_rows: [1, 7, 100, 1 << 17][rng.random_range(0..4)],
    }
}

impl Case {
    fn key_columns(&self, prefix: &str, schema: &SchemaRef) -> Vec<PhysicalExprRef> {
        let mut keys = vec![col(&format!("{prefix}k"), schema).unwrap()];
        if self.two_keys {
            keys.push(col(&format!("{prefix}k2"), schema).unwrap());
        }
        keys
    }

    fn tolerance(&self) -> Option<Tolerance> {
        self.tolerance.map(|d| {
            if self.timestamp {
                Tolerance::Duration(i128::from(d) * 1_000_000)
            } else {
                Tolerance::Number(ScalarValue::Int64(Some(d)))
            }
        })
    }

    fn plan(&self) -> Arc<dyn ExecutionPlan> {
        let ls = schema("l", self.timestamp, self.two_keys, false);
        let rs = schema("r", self.timestamp, self.two_keys, true);
        let left = MemorySourceConfig::try_new_exec(&self.left, ls.clone(), None).unwrap();
        let right_source =
            MemorySourceConfig::try_new_exec(std::slice::from_ref(&self.right), rs.clone(), None)
                .unwrap();
        // Co-partitioned, the optimizer below partitions both sides itself. Shared, the right's
        // batches are dealt round-robin, so one key's rows are spread over its partitions.
        let right: Arc<dyn ExecutionPlan> = if self.co_partitioned {
            right_source
        } else {
            Arc::new(
                RepartitionExec::try_new(
                    right_source,
                    Partitioning::RoundRobinBatch(self.right_partitions),
                )
                .unwrap(),
            )
        };
        let join = self.join(left, right, self.build);
        assert_eq!(
            join.build(),
            self.build,
            "every test schema takes either build"
        );
        if !self.co_partitioned {
            return Arc::new(join);
        }
        let join = Arc::new(join.with_mode(AsOfJoinMode::CoPartitioned));
        let mut config = datafusion::config::ConfigOptions::new();
        config.execution.target_partitions = self.right_partitions;
        config.optimizer.repartition_joins = true;
        use datafusion::physical_optimizer::PhysicalOptimizerRule;
        datafusion::physical_optimizer::ensure_requirements::EnsureRequirements::new()
            .optimize(join, &config)
            .unwrap()
    }

    /// This case's join of `left` (its schema starting with the left columns) and `right` (of
    /// the right schema), indexing `build`'s side where it can.
    fn join(
        &self,
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        build: AsOfBuild,
    ) -> AsOfJoinExec {
        let (ls, rs) = (left.schema(), right.schema());
        let on = self
            .key_columns("l", &ls)
            .into_iter()
            .zip(self.key_columns("r", &rs))
            .collect::<Vec<_>>();
        let null_equal = vec![self.null_equal; on.len()];
        let tiebreak = self
            .tiebreak
            .map(|options| PhysicalSortExpr::new(col("rc", &rs).unwrap(), options))
            .into_iter()
            .collect();
        let known = self.known.then(|| col("rc", &rs).unwrap());
        let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(
            rs.fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        let join = AsOfJoinExec::try_new(
            left,
            right,
            on,
            null_equal,
            col("lt", &ls).unwrap(),
            col("rt", &rs).unwrap(),
            self.op,
            self.join_type,
            self.tolerance(),
            tiebreak,
            known,
            Arc::new(Schema::new(fields)),
        )
        .unwrap()
        .with_build(build)
        .with_chunk_rows(self.chunk_rows);
        match self.only_rid {
            true => join
                .with_right_output(vec![rs.index_of("rid").unwrap()])
                .unwrap(),
            false => join,
        }
    }

    /// Per left partition, the expected (left id, right id) pairs in order.
    fn expected(&self) -> Vec<Vec<(i64, Option<i64>)>> {
        let rs = schema("r", self.timestamp, self.two_keys, true);
        let ls = schema("l", self.timestamp, self.two_keys, false);
        let time_type = rs.field_with_name("rt").unwrap().data_type().clone();
        let mut keys = vec![KeySpec {
            data_type: DataType::Int64,
            null_equal: self.null_equal,
        }];
        if self.two_keys {
            keys.push(KeySpec {
                data_type: DataType::Utf8,
                null_equal: self.null_equal,
            });
        }
        let opts = KernelOptions {
            spec: self.op.spec(),
            keys,
            time_type: time_type.clone(),
            tiebreak: self
                .tiebreak
                .map(|options| TiebreakSpec {
                    data_type: time_type,
                    options,
                })
                .into_iter()
                .collect(),
            has_knowledge: self.known,
        };
        // The operator builds with the same options; make sure they are valid.
        IndexBuilder::try_new(opts.clone(), rs.clone()).unwrap();
        let column = |batch: &RecordBatch, name: &str| -> ArrayRef {
            batch.column(batch.schema().index_of(name).unwrap()).clone()
        };
        let right: Vec<RightInput> = self
            .right
            .iter()
            .map(|b| RightInput {
                batch: b.clone(),
                keys: std::iter::once(column(b, "rk"))
                    .chain(self.two_keys.then(|| column(b, "rk2")))
                    .collect(),
                time: column(b, "rt"),
                knowledge: self.known.then(|| column(b, "rc")),
                tiebreak: self.tiebreak.map(|_| column(b, "rc")).into_iter().collect(),
            })
            .collect();
        let _ = ls;
        let mut out = Vec::new();
        for partition in &self.left {
            let mut expected = Vec::new();
            for batch in partition {
                let keys: Vec<ArrayRef> = std::iter::once(column(batch, "lk"))
                    .chain(self.two_keys.then(|| column(batch, "lk2")))
                    .collect();
                let time = column(batch, "lt");
                let bound = self
                    .tolerance()
                    .map(|t| tolerance_bound(&time, &t, self.op.spec().direction).unwrap());
                let found = oracle_asof(&opts, &right, &keys, &time, bound.as_ref()).unwrap();
                let ids = column(batch, "lid");
                let ids = ids.as_primitive::<Int64Type>();
                for (row, hit) in found.into_iter().enumerate() {
                    let rid = hit.map(|r| {
                        let b = &self.right[r.batch as usize];
                        column(b, "rid")
                            .as_primitive::<Int64Type>()
                            .value(r.row as usize)
                    });
                    if rid.is_some() || self.join_type == AsOfJoinType::Left {
                        expected.push((ids.value(row), rid));
                    }
                }
            }
            out.push(expected);
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "ts={} two_keys={} op={:?} type={:?} tol={:?} tiebreak={:?} known={} null_equal={} \
             left_partitions={} left_rows={} right_rows={} right_partitions={} batch={} only_rid={} \
             build={:?} chunk_rows={}",
            self.timestamp,
            self.two_keys,
            self.op,
            self.join_type,
            self.tolerance,
            self.tiebreak,
            self.known,
            self.null_equal,
            self.left.len(),
            self.left
                .iter()
                .flatten()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            self.right.iter().map(|b| b.num_rows()).sum::<usize>(),
            self.right_partitions,
            self.batch_size,
            self.only_rid,
            self.build,
            self.chunk_rows
        )
    }
}

/// (left id, right id) per output row, in order.
fn pairs(batches: &[RecordBatch]) -> Vec<(i64, Option<i64>)> {
    batches
        .iter()
        .flat_map(|b| {
            let lid = b.column(b.schema().index_of("lid").unwrap()).clone();
            let rid = b.column(b.schema().index_of("rid").unwrap()).clone();
            let lid = lid.as_primitive::<Int64Type>().clone();
            let rid = rid.as_primitive::<Int64Type>().clone();
            (0..b.num_rows())
                .map(|i| (lid.value(i), (!rid.is_null(i)).then(|| rid.value(i))))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn context(batch_size: usize, pool: Option<Arc<dyn MemoryPool>>) -> SessionContext {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(pool) = pool {
        runtime = runtime.with_memory_pool(pool);
    }
    let mut config = SessionConfig::new().with_batch_size(batch_size);
    // The tests' Parquet files are small: split them all the same.
    config.options_mut().optimizer.repartition_file_min_size = 0;
    SessionContext::new_with_config_rt(config, runtime.build_arc().unwrap())
}

async fn run(case: &Case, ctx: &SessionContext) -> Vec<Vec<(i64, Option<i64>)>> {
    let plan = case.plan();
    let out = collect_partitioned(plan, ctx.task_ctx()).await.unwrap();
    out.iter().map(|batches| pairs(batches)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_matches_the_oracle() {
    let mut rng = StdRng::seed_from_u64(20_261_126);
    let mut matched = 0usize;
    let mut checked = 0usize;
    for i in 0..1500 {
        let case = random_case(&mut rng);
        let ctx = context(case.batch_size, None);
        let got = run(&case, &ctx).await;
        let want = case.expected();
        assert_eq!(got, want, "case {i}: {}", case.describe());
        checked += want.iter().map(Vec::len).sum::<usize>();
        matched += want.iter().flatten().filter(|(_, r)| r.is_some()).count();
    }
    // The generator must produce matches, or the comparison proves nothing.
    assert!(
        checked > 50_000 && matched > checked / 5,
        "{checked} rows, {matched} matched"
    );
}

/// Runs a case under a memory pool of `limit` bytes; returns the rows and whether it spilled.
async fn run_limited(case: &Case, limit: usize) -> (Vec<Vec<(i64, Option<i64>)>>, usize) {
    // Tracking the largest consumers makes an out-of-memory failure say who held the memory.
    let pool: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
        FairSpillPool::new(limit),
        std::num::NonZeroUsize::new(5).unwrap(),
    ));
    let ctx = context(case.batch_size, Some(pool.clone()));
    let plan = case.plan();
    let out = collect_partitioned(plan.clone(), ctx.task_ctx())
        .await
        .unwrap();
    let spills = plan
        .metrics()
        .and_then(|m| m.spill_count())
        .unwrap_or_default();
    assert_eq!(pool.reserved(), 0, "memory left reserved after the query");
    let rows = out.iter().map(|batches| pairs(batches)).collect();
    (rows, spills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilling_gives_the_same_answer_in_the_same_order() {
    let mut rng = StdRng::seed_from_u64(424_242);
    let mut spilled = 0;
    for i in 0..24 {
        let mut case = random_case(&mut rng);
        // The right side indexed: it is what spills (a left build that does not fit falls back
        // to this, see below).
        case.build = AsOfBuild::Right;
        // A right side of a few MiB (its index about twice that) against a pool of 1 or 2 MiB.
        let right_rows = rng.random_range(20_000..40_000);
        let batch = [512, 1000, 8192][rng.random_range(0..3)];
        let keys = [500, 2000][rng.random_range(0..2)];
        case.right = rows(
            &mut rng,
            right_rows,
            keys,
            5000,
            0.05,
            case.timestamp,
            case.two_keys,
            true,
            0,
            batch,
        );
        // At most two left partitions: each runs its own buckets, all under one small pool.
        let left_partitions = case.left.len().min(2);
        case.left = (0..left_partitions)
            .map(|p| {
                // Few left rows: the oracle is quadratic, and spilling depends on the right.
                rows(
                    &mut rng,
                    400,
                    keys,
                    5000,
                    0.05,
                    case.timestamp,
                    case.two_keys,
                    false,
                    (p * 400) as i64,
                    batch,
                )
            })
            .collect();
        case.batch_size = batch;
        let limit = [1 << 20, 2 << 20][rng.random_range(0..2)];
        let (got, spills) = run_limited(&case, limit).await;
        spilled += usize::from(spills > 0);
        assert_eq!(
            got,
            case.expected(),
            "case {i} (limit {limit}): {}",
            case.describe()
        );
    }
    // Most cases must really have spilled, or this proves nothing about spilling.
    assert!(spilled >= 16, "only {spilled} of 24 cases spilled");
}

/// A left build whose left side does not fit in the pool falls back to indexing the right side,
/// which spills, with the left batches it already read: the same rows in the same order as the
/// right build without a limit (itself checked against the oracle above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_build_that_does_not_fit_indexes_the_right_and_spills() {
    let mut rng = StdRng::seed_from_u64(20_261_128);
    for i in 0..4 {
        let mut case = random_case(&mut rng);
        case.build = AsOfBuild::Left;
        // Without a tolerance, so that most rows match and the comparison says something.
        case.tolerance = None;
        case.left = vec![rows(
            &mut rng,
            60_000,
            2000,
            5000,
            0.05,
            case.timestamp,
            case.two_keys,
            false,
            0,
            1000,
        )];
        case.right = rows(
            &mut rng,
            30_000,
            2000,
            5000,
            0.05,
            case.timestamp,
            case.two_keys,
            true,
            0,
            1000,
        );
        case.batch_size = 1000;
        let (got, spills) = run_limited(&case, 1 << 20).await;
        assert!(spills > 0, "case {i}: the fallback did not spill");
        let mut reference = case;
        reference.build = AsOfBuild::Right;
        let want = run(&reference, &context(1000, None)).await;
        assert_eq!(got, want, "case {i}: {}", reference.describe());
        assert!(want[0].iter().filter(|(_, r)| r.is_some()).count() > 1000);
    }
}

/// The left build holds every right column in its records, so a right column of a type a word
/// cannot hold (a string that is not a key) keeps the join indexing the right side.
#[test]
fn a_right_string_column_keeps_the_right_build() {
    use datafusion::physical_expr::expressions::Column;
    let ls = schema("l", false, false, false);
    let rs = Arc::new(Schema::new(vec![
        Field::new("rk", DataType::Int64, true),
        Field::new("rt", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ]));
    let left = MemorySourceConfig::try_new_exec(&[], ls.clone(), None).unwrap();
    let right = MemorySourceConfig::try_new_exec(&[], rs.clone(), None).unwrap();
    let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(rs.fields().iter().map(|f| f.as_ref().clone()));
    let join = |name_key: bool| {
        let mut on: Vec<(PhysicalExprRef, PhysicalExprRef)> =
            vec![(col("lk", &ls).unwrap(), Arc::new(Column::new("rk", 0)))];
        if name_key {
            // The string is a key: its value is the left's, read from the left.
            on.push((
                Arc::new(datafusion::physical_expr::expressions::CastExpr::new(
                    col("lk", &ls).unwrap(),
                    DataType::Utf8,
                    None,
                )),
                Arc::new(Column::new("name", 2)),
            ));
        }
        AsOfJoinExec::try_new(
            left.clone(),
            right.clone(),
            on.clone(),
            vec![false; on.len()],
            col("lt", &ls).unwrap(),
            col("rt", &rs).unwrap(),
            AsOfOperator::GtEq,
            AsOfJoinType::Left,
            None,
            vec![],
            None,
            Arc::new(Schema::new(fields.clone())),
        )
        .unwrap()
    };
    assert_eq!(
        join(false).with_build(AsOfBuild::Left).build(),
        AsOfBuild::Right
    );
    assert_eq!(join(false).with_natural_build().build(), AsOfBuild::Right);
    assert_eq!(
        join(true).with_build(AsOfBuild::Left).build(),
        AsOfBuild::Left
    );
    assert_eq!(join(true).with_natural_build().build(), AsOfBuild::Left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_side_without_keys_that_does_not_fit_is_a_clear_error() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut case = random_case(&mut rng);
    case.timestamp = false;
    case.two_keys = false;
    case.right = rows(
        &mut rng, 200_000, 1000, 10_000, 0.0, false, false, true, 0, 8192,
    );
    let ls = schema("l", false, false, false);
    let rs = schema("r", false, false, true);
    let left = MemorySourceConfig::try_new_exec(&case.left, ls.clone(), None).unwrap();
    let right =
        MemorySourceConfig::try_new_exec(std::slice::from_ref(&case.right), rs.clone(), None)
            .unwrap();
    let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(
        rs.fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    let plan = Arc::new(
        AsOfJoinExec::try_new(
            left,
            right,
            vec![],
            vec![],
            col("lt", &ls).unwrap(),
            col("rt", &rs).unwrap(),
            AsOfOperator::GtEq,
            AsOfJoinType::Left,
            None,
            vec![],
            None,
            Arc::new(Schema::new(fields)),
        )
        .unwrap(),
    );
    let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(1 << 20));
    let ctx = context(8192, Some(pool.clone()));
    let err = collect_partitioned(plan, ctx.task_ctx()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the right side of an as-of join without keys must fit in memory"),
        "{err}"
    );
    assert_eq!(pool.reserved(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_streams_releases_the_build_and_its_memory() {
    use futures::StreamExt;
    let mut rng = StdRng::seed_from_u64(11);
    let mut case = random_case(&mut rng);
    case.left = vec![rows(
        &mut rng, 50_000, 100, 1000, 0.0, false, false, false, 0, 1024,
    )];
    case.right = rows(
        &mut rng, 300_000, 100, 1000, 0.0, false, false, true, 0, 8192,
    );
    case.two_keys = false;
    case.timestamp = false;
    case.join_type = AsOfJoinType::Left;
    let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(1 << 30));
    let ctx = context(1024, Some(pool.clone()));
    let plan = case.plan();
    let mut stream = plan.execute(0, ctx.task_ctx()).unwrap();
    // Read one batch: the build is done and holds memory.
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    assert!(pool.reserved() > 0);
    drop(stream);
    // The plan still exists, but nothing runs and nothing is held.
    for _ in 0..100 {
        if pool.reserved() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(pool.reserved(), 0);
    drop(plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_plans_serialize_with_the_codec() {
    use datafusion::physical_plan::displayable;
    use datafusion_proto::bytes::{
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };
    use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;

    let codec = super::AsOfPhysicalCodec::new(Arc::new(DefaultPhysicalExtensionCodec {}));
    let mut rng = StdRng::seed_from_u64(31);
    for i in 0..40 {
        let mut case = random_case(&mut rng);
        case.co_partitioned = i % 2 == 1;
        let plan = case.plan();
        let bytes = physical_plan_to_bytes_with_extension_codec(plan.clone(), &codec).unwrap();
        let ctx = context(case.batch_size, None);
        let back =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).unwrap();
        assert_eq!(
            displayable(back.as_ref()).indent(true).to_string(),
            displayable(plan.as_ref()).indent(true).to_string(),
            "case {i}"
        );
        let out = collect_partitioned(back, ctx.task_ctx()).await.unwrap();
        let got: Vec<Vec<(i64, Option<i64>)>> = out.iter().map(|b| pairs(b)).collect();
        if case.co_partitioned {
            assert!(
                displayable(plan.as_ref())
                    .indent(true)
                    .to_string()
                    .contains("mode=co_partitioned"),
                "case {i}"
            );
            assert_eq!(
                sorted_pairs(got),
                sorted_pairs(case.expected()),
                "case {i}: {}",
                case.describe()
            );
        } else {
            assert_eq!(got, case.expected(), "case {i}: {}", case.describe());
        }
    }
}

/// Every (left id, right id) pair, in one sorted list: the co-partitioned mode keeps no left
/// order across partitions.
fn sorted_pairs(per_partition: Vec<Vec<(i64, Option<i64>)>>) -> Vec<(i64, Option<i64>)> {
    let mut all: Vec<_> = per_partition.into_iter().flatten().collect();
    all.sort_unstable();
    all
}

/// The join operators of a plan's tree, with their inputs' partitionings.
fn joins_in(plan: &Arc<dyn ExecutionPlan>) -> Vec<(AsOfJoinMode, String, String)> {
    use datafusion::physical_plan::ExecutionPlanProperties;
    let mut found = Vec::new();
    if let Some(join) = plan.downcast_ref::<AsOfJoinExec>() {
        found.push((
            join.mode(),
            format!("{}", join.left().output_partitioning()),
            format!("{}", join.right().output_partitioning()),
        ));
    }
    for child in plan.children() {
        found.extend(joins_in(child));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_co_partitioned_mode_matches_the_oracle_reading_each_right_row_once() {
    use datafusion_proto::bytes::{
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };
    use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;
    let mut rng = StdRng::seed_from_u64(20_261_127);
    let mut matched = 0usize;
    let mut checked = 0usize;
    let mut partitioned = 0usize;
    for i in 0..600 {
        let mut case = random_case(&mut rng);
        case.co_partitioned = true;
        // Co-partitioned, each partition indexes its own left rows: a left build may start from
        // several left partitions too.
        if case.build == AsOfBuild::Left {
            let parts = rng.random_range(1..=4);
            let mut left = vec![Vec::new(); parts];
            for (b, batch) in case.left.concat().into_iter().enumerate() {
                left[b % parts].push(batch);
            }
            case.left = left;
        }
        let ctx = context(case.batch_size, None);
        let plan = case.plan();
        // The optimizer partitioned both inputs alike, on their keys.
        let joins = joins_in(&plan);
        assert_eq!(joins.len(), 1, "case {i}");
        let (mode, left, right) = &joins[0];
        assert_eq!(*mode, AsOfJoinMode::CoPartitioned, "case {i}");
        // (An input of one partition already holds every key in one place and stays so.)
        let join = joins_in_ref(&plan).unwrap();
        let counts = [join.left(), join.right()]
            .map(|side| side.properties().output_partitioning().partition_count());
        assert_eq!(counts[0], counts[1], "case {i}: {left} / {right}");
        if counts[0] > 1 {
            assert!(
                left.starts_with("Hash(") && right.starts_with("Hash("),
                "case {i}: {left} / {right}"
            );
        }
        if counts[0] > 1 {
            partitioned += 1;
        }
        // Each partition runs as a Ballista task would: on a copy of the plan of its own,
        // decoded from bytes, so no index can be shared between tasks.
        let codec = super::AsOfPhysicalCodec::new(Arc::new(DefaultPhysicalExtensionCodec {}));
        let bytes = physical_plan_to_bytes_with_extension_codec(plan.clone(), &codec).unwrap();
        let mut out = Vec::new();
        let mut read = 0;
        for partition in 0..plan.properties().output_partitioning().partition_count() {
            let task =
                physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec)
                    .unwrap();
            let stream = task.execute(partition, ctx.task_ctx()).unwrap();
            out.push(
                datafusion::physical_plan::common::collect(stream)
                    .await
                    .unwrap(),
            );
            // Each task read its own right partition only: every right row is read once in
            // all, not once per task.
            read += joins_in_ref(&task)
                .and_then(|j| j.metrics())
                .and_then(|m| m.sum_by_name("right_rows"))
                .map_or(0, |v| v.as_usize());
        }
        let got = sorted_pairs(out.iter().map(|b| pairs(b)).collect());
        let want = sorted_pairs(case.expected());
        assert_eq!(got, want, "case {i}: {}", case.describe());
        let right_rows: usize = case.right.iter().map(|b| b.num_rows()).sum();
        assert_eq!(read, right_rows, "case {i}: right rows read");
        checked += want.len();
        matched += want.iter().filter(|(_, r)| r.is_some()).count();
    }
    assert!(
        checked > 20_000 && matched > checked / 5,
        "{checked} rows, {matched} matched"
    );
    // Most cases ran in several partitions, or the comparison proves little.
    assert!(partitioned > 300, "{partitioned} of 600 cases partitioned");
}

/// The first as-of join operator in a plan.
fn joins_in_ref(plan: &Arc<dyn ExecutionPlan>) -> Option<&AsOfJoinExec> {
    if let Some(join) = plan.downcast_ref::<AsOfJoinExec>() {
        return Some(join);
    }
    plan.children().into_iter().find_map(joins_in_ref)
}

/// Joins `cases` one onto the other over the first case's left rows (one partition), each
/// case giving a join its right rows and options, every join indexing `build`'s side. A case's
/// right rows come from `files`' Parquet file where it has one (a scan the left build splits
/// by byte ranges), else from memory dealt round robin to the case's partitions (read at once).
fn chain_plan(
    cases: &[Case],
    build: AsOfBuild,
    files: &[Option<std::path::PathBuf>],
) -> Arc<dyn ExecutionPlan> {
    let first = &cases[0];
    let ls = schema("l", first.timestamp, first.two_keys, false);
    let mut plan: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[first.left.concat()], ls, None).unwrap();
    for (case, file) in cases.iter().zip(files) {
        let rs = schema("r", case.timestamp, case.two_keys, true);
        let right: Arc<dyn ExecutionPlan> = match file {
            Some(path) => super::chunks::parquet_scan(path, rs),
            None => {
                let source = MemorySourceConfig::try_new_exec(
                    std::slice::from_ref(&case.right),
                    rs.clone(),
                    None,
                )
                .unwrap();
                Arc::new(
                    RepartitionExec::try_new(
                        source,
                        Partitioning::RoundRobinBatch(case.right_partitions),
                    )
                    .unwrap(),
                )
            }
        };
        plan = Arc::new(case.join(plan, right, build));
    }
    plan
}

/// The rows of a plan's one partition, in one batch.
async fn all_rows(plan: Arc<dyn ExecutionPlan>, ctx: &SessionContext) -> RecordBatch {
    let schema = plan.schema();
    let out = datafusion::physical_plan::collect(plan, ctx.task_ctx())
        .await
        .unwrap();
    arrow::compute::concat_batches(&schema, &out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_left_builds_matches_the_joins_run_one_by_one() {
    let mut rng = StdRng::seed_from_u64(20_261_128);
    let (mut chained, mut rows, mut matched) = (0, 0, 0);
    for i in 0..300 {
        let first = random_case(&mut rng);
        let mut cases = vec![first];
        while cases.len() < rng.random_range(2..=3) {
            let case = random_case(&mut rng);
            if (case.timestamp, case.two_keys) == (cases[0].timestamp, cases[0].two_keys) {
                cases.push(case);
            }
        }
        // Joins chain only with the same key rules: mostly keep them, sometimes not.
        if rng.random_bool(0.8) {
            let null_equal = cases[0].null_equal;
            cases.iter_mut().for_each(|c| c.null_equal = null_equal);
        }
        let describe = cases.iter().map(Case::describe).collect::<Vec<_>>();
        // Half the joins read a Parquet file of small row groups, split into byte ranges.
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Option<std::path::PathBuf>> = cases
            .iter()
            .enumerate()
            .map(|(k, case)| {
                rng.random_bool(0.5).then(|| {
                    let path = dir.path().join(format!("right{k}.parquet"));
                    let rs = schema("r", case.timestamp, case.two_keys, true);
                    let rows: usize = case.right.iter().map(|b| b.num_rows()).sum();
                    let group_rows = rng.random_range(1..=rows.max(1));
                    super::chunks::parquet_file(&path, rs, &case.right, group_rows);
                    path
                })
            })
            .collect();
        let ctx = context(cases[0].batch_size, None);
        // Each join indexing its right side runs alone (the operator against the oracle above).
        let want = all_rows(chain_plan(&cases, AsOfBuild::Right, &files), &ctx).await;
        let plan = chain_plan(&cases, AsOfBuild::Left, &files);
        let top = plan.downcast_ref::<AsOfJoinExec>().unwrap();
        // The joins from the top down that share the key rules of the join below them.
        let last = cases.len() - 1;
        let chain = 1
            + (1..cases.len())
                .rev()
                .take_while(|&j| cases[j].null_equal == cases[j - 1].null_equal)
                .count();
        let same_keys = chain == cases.len();
        assert_eq!(top.chain().len(), chain, "case {i}");
        let shown = datafusion::physical_plan::displayable(top)
            .one_line()
            .to_string();
        assert_eq!(
            shown.contains("chained"),
            cases[last].null_equal == cases[last - 1].null_equal,
            "case {i}: {shown}"
        );
        chained += usize::from(same_keys);
        let got = all_rows(plan.clone(), &ctx).await;
        assert_eq!(got, want, "case {i}: {describe:#?}");
        // Each join counts the rows it saw and matched, as when run alone.
        let count = |plan: &Arc<dyn ExecutionPlan>, name: &str| {
            let mut counts = Vec::new();
            let mut at = Some(plan.clone());
            while let Some(p) = at {
                let join = p.downcast_ref::<AsOfJoinExec>().unwrap();
                counts.push(
                    join.metrics()
                        .and_then(|m| m.sum_by_name(name))
                        .map_or(0, |v| v.as_usize()),
                );
                at = join
                    .left()
                    .downcast_ref::<AsOfJoinExec>()
                    .map(|_| join.left().clone());
            }
            counts
        };
        let reference = chain_plan(&cases, AsOfBuild::Right, &files);
        all_rows(reference.clone(), &ctx).await;
        for name in ["left_rows", "matched_rows", "output_rows"] {
            assert_eq!(
                count(&plan, name),
                count(&reference, name),
                "case {i}: {name}"
            );
        }
        rows += got.num_rows();
        matched += got.num_rows() - got.column(got.num_columns() - 1).null_count();
        // Under a memory pool too small for some of it: the joins from where memory ran out
        // on index their right side, over what the chain has done, with the same answer.
        for limit in [256 << 10, 512 << 10, 1 << 20, 4 << 20] {
            let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(limit));
            let ctx = context(cases[0].batch_size, Some(pool.clone()));
            let plan = chain_plan(&cases, AsOfBuild::Left, &files);
            let got = all_rows(plan, &ctx).await;
            assert_eq!(got, want, "case {i}, limit {limit}: {describe:#?}");
            assert_eq!(pool.reserved(), 0, "case {i}: memory left reserved");
        }
    }
    assert!(chained > 200, "{chained} of 300 cases chained");
    let resumed = super::left_build::RESUMED_PART_WAY.load(std::sync::atomic::Ordering::Relaxed);
    assert!(resumed > 20, "{resumed} chains ran out of memory part way");
    let together = super::left_build::STREAMED_TOGETHER.load(std::sync::atomic::Ordering::Relaxed);
    let cut = super::left_build::CUT_SHORT.load(std::sync::atomic::Ordering::Relaxed);
    let narrowed = super::left_build::NARROWED.load(std::sync::atomic::Ordering::Relaxed);
    let further = super::left_build::NARROWED_FURTHER.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        together > 100 && cut > 20 && narrowed > 20 && further > 20,
        "{together} chains streamed joins side by side, {cut} held fewer than they had, \
         {narrowed} halved their chunks to hold more, {further} halved them again to hold one"
    );
    assert!(
        rows > 5_000 && matched > rows / 10,
        "{rows} rows, {matched} matched"
    );
}
