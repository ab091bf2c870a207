//! The window operator against a brute-force oracle: for each left row, filter the right rows
//! (equal key, time in the window, known by the left time) and aggregate them directly. Random
//! cases with ties, NULL keys, times, knowledge times and values, duplicates, both window
//! boundaries and every function, run through [`WindowJoinExec`] at several batch sizes and
//! partition counts: every run must give the oracle's values, byte for byte, in the left's order.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{PhysicalExprRef, PhysicalSortExpr};
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};
use datafusion::prelude::{SessionConfig, SessionContext};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fsum::exact_sum;
use super::{AggFunction, PhysicalWindowAggregate, WindowBuild, WindowJoinExec};
use crate::asof::Tolerance;

/// Every function, with the argument column it reads (`None`: `count(*)`) and `k`.
const FUNCTIONS: &[(AggFunction, Option<&str>, Option<usize>)] = &[
    (AggFunction::CountStar, None, None),
    (AggFunction::Count, Some("rv"), None),
    (AggFunction::CountDistinct, Some("rs"), None),
    (AggFunction::Sum, Some("rv"), None),
    (AggFunction::Sum, Some("rf"), None),
    (AggFunction::Avg, Some("rv"), None),
    (AggFunction::Avg, Some("rf"), None),
    (AggFunction::Min, Some("rs"), None),
    (AggFunction::Max, Some("rf"), None),
    (AggFunction::Max, Some("rv"), None),
    (AggFunction::Min, Some("rf"), None),
    (AggFunction::First, Some("rs"), None),
    (AggFunction::Last, Some("rv"), None),
    (AggFunction::Last, Some("rs"), Some(3)),
    (AggFunction::Var, Some("rf"), None),
    (AggFunction::VarPop, Some("rv"), None),
    (AggFunction::Stddev, Some("rf"), None),
    (AggFunction::StddevPop, Some("rf"), None),
];

/// One right row: key, time, knowledge time, tie-break, integer, float and string values.
#[derive(Debug, Clone)]
struct Right {
    k: Option<i64>,
    t: Option<i64>,
    c: Option<i64>,
    tb: Option<i64>,
    v: Option<i64>,
    f: Option<f64>,
    s: Option<String>,
}

struct Case {
    left: Vec<(Option<i64>, Option<i64>)>,
    right: Vec<Right>,
    strict: bool,
    known: bool,
    tiebreak: bool,
    widths: Vec<i64>,
    /// Keys as strings (grouped by their row bytes) instead of integers (by value).
    string_keys: bool,
}

fn random_case(rng: &mut StdRng) -> Case {
    random_case_sized(rng, 60, 40, 1..4)
}

/// A random case with up to `right_rows` right rows, `left_rows` left rows and a number of
/// keys from `keys`.
fn random_case_sized(
    rng: &mut StdRng,
    right_rows: usize,
    left_rows: usize,
    keys: std::ops::Range<i64>,
) -> Case {
    let keys = rng.random_range(keys);
    let times = rng.random_range(1..25);
    let nulls = [0.0, 0.1, 0.3][rng.random_range(0..3)];
    let null = |rng: &mut StdRng| rng.random_bool(nulls);
    let right = (0..rng.random_range(0..right_rows))
        .map(|_| {
            let t = (!null(rng)).then(|| rng.random_range(0..times));
            Right {
                k: (!null(rng)).then(|| rng.random_range(0..keys)),
                t,
                c: (!null(rng)).then(|| t.unwrap_or(0) + rng.random_range(0..4)),
                tb: (!null(rng)).then(|| rng.random_range(0..3)),
                v: (!null(rng)).then(|| rng.random_range(-5..20)),
                // Quarters: every sum of them is exact, so the oracle may add in any order.
                f: (!null(rng)).then(|| f64::from(rng.random_range(-40..40)) / 4.0),
                s: (!null(rng)).then(|| ["a", "b", "c", "d"][rng.random_range(0..4)].to_string()),
            }
        })
        .collect();
    let left = (0..rng.random_range(0..left_rows))
        .map(|_| {
            (
                (!null(rng)).then(|| rng.random_range(0..keys + 1)),
                (!null(rng)).then(|| rng.random_range(0..times + 3)),
            )
        })
        .collect();
    Case {
        left,
        right,
        strict: rng.random_bool(0.3),
        known: rng.random_bool(0.5),
        tiebreak: rng.random_bool(0.5),
        widths: FUNCTIONS
            .iter()
            .map(|_| rng.random_range(1..times + 2))
            .collect(),
        string_keys: rng.random_bool(0.3),
    }
}

fn key_type(string_keys: bool) -> DataType {
    if string_keys {
        DataType::Utf8
    } else {
        DataType::Int64
    }
}

/// A key column: the integers, or the same keys as text.
fn key_array(keys: impl Iterator<Item = Option<i64>>, string_keys: bool) -> ArrayRef {
    if string_keys {
        Arc::new(
            keys.map(|k| k.map(|k| format!("key-{k}")))
                .collect::<StringArray>(),
        )
    } else {
        Arc::new(keys.collect::<Int64Array>())
    }
}

fn left_schema(string_keys: bool) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("lk", key_type(string_keys), true),
        Field::new("lt", DataType::Int64, true),
    ]))
}

fn right_schema(string_keys: bool) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rk", key_type(string_keys), true),
        Field::new("rt", DataType::Int64, true),
        Field::new("rc", DataType::Int64, true),
        Field::new("rtb", DataType::Int64, true),
        Field::new("rv", DataType::Int64, true),
        Field::new("rf", DataType::Float64, true),
        Field::new("rs", DataType::Utf8, true),
    ]))
}

impl Case {
    fn left_batch(&self) -> RecordBatch {
        let k = key_array(self.left.iter().map(|r| r.0), self.string_keys);
        let t: Int64Array = self.left.iter().map(|r| r.1).collect();
        RecordBatch::try_new(left_schema(self.string_keys), vec![k, Arc::new(t)]).unwrap()
    }

    fn right_batch(&self) -> RecordBatch {
        let ints = |f: fn(&Right) -> Option<i64>| -> ArrayRef {
            Arc::new(self.right.iter().map(f).collect::<Int64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            key_array(self.right.iter().map(|r| r.k), self.string_keys),
            ints(|r| r.t),
            ints(|r| r.c),
            ints(|r| r.tb),
            ints(|r| r.v),
            Arc::new(self.right.iter().map(|r| r.f).collect::<Float64Array>()),
            Arc::new(
                self.right
                    .iter()
                    .map(|r| r.s.clone())
                    .collect::<StringArray>(),
            ),
        ];
        RecordBatch::try_new(right_schema(self.string_keys), columns).unwrap()
    }

    /// The plan over `left_parts` left partitions and `right_parts` right partitions, rows dealt
    /// round-robin and cut into batches of `batch` rows.
    fn plan(&self, left_parts: usize, right_parts: usize, batch: usize) -> Arc<dyn ExecutionPlan> {
        Arc::new(self.join(left_parts, right_parts, batch))
    }

    /// The join operator of [`Case::plan`].
    fn join(&self, left_parts: usize, right_parts: usize, batch: usize) -> WindowJoinExec {
        let all: Vec<usize> = (0..FUNCTIONS.len()).collect();
        self.join_of(&all, left_parts, right_parts, batch)
    }

    /// The join of the aggregates `FUNCTIONS[f]` for `f` in `functions`, in that order.
    fn join_of(
        &self,
        functions: &[usize],
        left_parts: usize,
        right_parts: usize,
        batch: usize,
    ) -> WindowJoinExec {
        let split = |b: RecordBatch, parts: usize| -> Vec<Vec<RecordBatch>> {
            // Left rows keep their order within a partition: contiguous ranges.
            let n = b.num_rows();
            let per = n.div_ceil(parts).max(1);
            (0..parts)
                .map(|p| {
                    let (start, end) = ((p * per).min(n), ((p + 1) * per).min(n));
                    (start..end)
                        .step_by(batch)
                        .map(|s| b.slice(s, batch.min(end - s)))
                        .collect()
                })
                .collect()
        };
        let (ls, rs) = (
            left_schema(self.string_keys),
            right_schema(self.string_keys),
        );
        let left = MemorySourceConfig::try_new_exec(
            &split(self.left_batch(), left_parts),
            ls.clone(),
            None,
        )
        .unwrap();
        let right = MemorySourceConfig::try_new_exec(
            &split(self.right_batch(), right_parts),
            rs.clone(),
            None,
        )
        .unwrap();
        let c = |name: &str, s: &SchemaRef| -> PhysicalExprRef { col(name, s).unwrap() };
        let aggregates: Vec<PhysicalWindowAggregate> = functions
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let (function, arg, k) = FUNCTIONS[f];
                PhysicalWindowAggregate {
                    name: format!("a{i}"),
                    function,
                    arg: arg.map(|a| c(a, &rs)),
                    k,
                    width: Tolerance::Number(ScalarValue::Int64(Some(self.widths[f]))),
                }
            })
            .collect();
        let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, (function, arg, k)) in functions.iter().map(|&f| FUNCTIONS[f]).enumerate() {
            let arg_type = arg.map(|a| rs.field_with_name(a).unwrap().data_type().clone());
            let t = function.output_type(arg_type.as_ref(), k).unwrap();
            fields.push(Field::new(format!("a{i}"), t, true));
        }
        let tiebreak = if self.tiebreak {
            vec![PhysicalSortExpr::new(
                c("rtb", &rs),
                SortOptions {
                    descending: true,
                    nulls_first: false,
                },
            )]
        } else {
            Vec::new()
        };
        WindowJoinExec::try_new(
            left,
            right,
            vec![(c("lk", &ls), c("rk", &rs))],
            vec![false],
            c("lt", &ls),
            c("rt", &rs),
            self.strict,
            tiebreak,
            self.known.then(|| c("rc", &rs)),
            aggregates,
            Arc::new(Schema::new(fields)),
        )
        .unwrap()
    }

    /// The rows of left row `(k, t)`'s window of width `d`, known at `t`.
    fn window(&self, k: Option<i64>, t: Option<i64>, d: i64) -> Vec<&Right> {
        let (Some(k), Some(t)) = (k, t) else {
            return Vec::new();
        };
        self.right
            .iter()
            .filter(|r| r.k == Some(k))
            .filter(|r| match r.t {
                Some(e) if self.strict => t - d <= e && e < t,
                Some(e) => t - d < e && e <= t,
                None => false,
            })
            .filter(|r| {
                !self.known
                    || match r.c {
                        Some(c) if self.strict => c < t,
                        Some(c) => c <= t,
                        None => false,
                    }
            })
            .collect()
    }

    /// Rows ordered from least to most preferred among equal times: `TIEBREAK BY rtb DESC NULLS
    /// LAST` puts the greatest `rtb` first (preferred), NULL last; then the greater values of the
    /// positional aggregates' arguments, in their order (`rs`, `rv`), win (NULL lowest).
    fn by_time_then_preference<'a>(&self, mut rows: Vec<&'a Right>) -> Vec<&'a Right> {
        let tiebreak = self.tiebreak;
        rows.sort_by(|a, b| {
            let pref = |r: &Right| -> (i64, i64) {
                match (tiebreak, r.tb) {
                    (false, _) => (0, 0),
                    (true, None) => (0, 0),
                    (true, Some(v)) => (1, v),
                }
            };
            (a.t, pref(a))
                .cmp(&(b.t, pref(b)))
                .then_with(|| (&a.s, a.v).cmp(&(&b.s, b.v)))
        });
        rows
    }

    /// The oracle's value of aggregate `i` for every left row, formatted.
    fn expected(&self, i: usize) -> Vec<String> {
        let (function, arg, k) = FUNCTIONS[i];
        let d = self.widths[i];
        self.left
            .iter()
            .map(|&(lk, lt)| {
                let rows = self.window(lk, lt, d);
                let ints: Vec<i64> = rows.iter().filter_map(|r| r.v).collect();
                let floats: Vec<f64> = rows.iter().filter_map(|r| r.f).collect();
                let strings: Vec<String> = rows.iter().filter_map(|r| r.s.clone()).collect();
                let numbers: Vec<f64> = match arg {
                    Some("rv") => ints.iter().map(|&v| v as f64).collect(),
                    _ => floats.clone(),
                };
                let null = || "NULL".to_string();
                let float = |v: f64| format!("{v:?}");
                let mean = || exact_sum(numbers.iter().copied()) / numbers.len() as f64;
                let moment = |sample: bool, root: bool| {
                    let n = numbers.len();
                    if n == 0 || (sample && n < 2) {
                        return null();
                    }
                    let m = mean();
                    let var = exact_sum(numbers.iter().map(|x| (x - m) * (x - m)))
                        / (if sample { n - 1 } else { n }) as f64;
                    float(if root { var.sqrt() } else { var })
                };
                let string_value = |r: &Right| r.s.clone().unwrap_or_default();
                match (function, arg) {
                    (AggFunction::CountStar, _) => rows.len().to_string(),
                    (AggFunction::Count, _) => ints.len().to_string(),
                    (AggFunction::CountDistinct, _) => {
                        strings.iter().collect::<BTreeSet<_>>().len().to_string()
                    }
                    (AggFunction::Sum, Some("rv")) if ints.is_empty() => null(),
                    (AggFunction::Sum, Some("rv")) => ints.iter().sum::<i64>().to_string(),
                    (AggFunction::Sum, _) if floats.is_empty() => null(),
                    (AggFunction::Sum, _) => float(exact_sum(floats.iter().copied())),
                    (AggFunction::Avg, _) if numbers.is_empty() => null(),
                    (AggFunction::Avg, _) => float(mean()),
                    (AggFunction::Min, Some("rf")) => floats
                        .iter()
                        .copied()
                        .reduce(|a, b| if b.total_cmp(&a).is_lt() { b } else { a })
                        .map(float)
                        .unwrap_or_else(null),
                    (AggFunction::Max, Some("rv")) => {
                        ints.iter().max().map_or_else(null, |v| v.to_string())
                    }
                    (AggFunction::Min, _) => strings.iter().min().cloned().unwrap_or_else(null),
                    (AggFunction::Max, _) => floats
                        .iter()
                        .copied()
                        .reduce(|a, b| if b.total_cmp(&a).is_gt() { b } else { a })
                        .map(float)
                        .unwrap_or_else(null),
                    (AggFunction::First, _) => {
                        let with: Vec<&Right> =
                            rows.iter().copied().filter(|r| r.s.is_some()).collect();
                        let sorted = self.by_time_then_preference(with);
                        match sorted.first() {
                            None => null(),
                            Some(first) => sorted
                                .iter()
                                .rev()
                                .find(|r| r.t == first.t)
                                .map(|r| string_value(r))
                                .unwrap_or_else(null),
                        }
                    }
                    (AggFunction::Last, Some("rv")) => {
                        let with: Vec<&Right> =
                            rows.iter().copied().filter(|r| r.v.is_some()).collect();
                        self.by_time_then_preference(with)
                            .last()
                            .map(|r| r.v.unwrap().to_string())
                            .unwrap_or_else(null)
                    }
                    (AggFunction::Last, _) => {
                        let with: Vec<&Right> =
                            rows.iter().copied().filter(|r| r.s.is_some()).collect();
                        let newest: Vec<String> = self
                            .by_time_then_preference(with)
                            .iter()
                            .rev()
                            .take(k.unwrap())
                            .map(|r| string_value(r))
                            .collect();
                        format!("[{}]", newest.join(", "))
                    }
                    (AggFunction::Var, _) => moment(true, false),
                    (AggFunction::VarPop, _) => moment(false, false),
                    (AggFunction::Stddev, _) => moment(true, true),
                    (AggFunction::StddevPop, _) => moment(false, true),
                }
            })
            .collect()
    }
}

/// Aggregate `i`'s column of `batches`, formatted as the oracle formats.
fn actual(batches: &[RecordBatch], i: usize) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let column = b.column(2 + i);
        match column.data_type() {
            DataType::Float64 => {
                let a = column.as_primitive::<Float64Type>();
                out.extend((0..a.len()).map(|r| match a.is_valid(r) {
                    true => format!("{:?}", a.value(r)),
                    false => "NULL".into(),
                }));
            }
            DataType::Int64 => {
                let a = column.as_primitive::<Int64Type>();
                out.extend((0..a.len()).map(|r| match a.is_valid(r) {
                    true => a.value(r).to_string(),
                    false => "NULL".into(),
                }));
            }
            _ => {
                let options = FormatOptions::default().with_null("NULL");
                let f = ArrayFormatter::try_new(column.as_ref(), &options).unwrap();
                out.extend((0..column.len()).map(|r| f.value(r).to_string()));
            }
        }
    }
    out
}

/// Runs `plan` in `ctx` and checks each aggregate's column against the oracle's `expected`;
/// `context(i)` says which case and aggregate `i` failed.
async fn assert_oracle(
    plan: Arc<dyn ExecutionPlan>,
    ctx: &SessionContext,
    expected: &[Vec<String>],
    context: impl Fn(usize) -> String,
) {
    let out = collect_partitioned(plan, ctx.task_ctx()).await.unwrap();
    let all: Vec<RecordBatch> = out.into_iter().flatten().collect();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&actual(&all, i), want, "{}", context(i));
    }
}

/// The random cases an oracle test runs: `PITLAKE_WINDOW_CASES` (README), 2000 by default.
fn window_cases() -> u64 {
    std::env::var("PITLAKE_WINDOW_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[tokio::test]
async fn window_operator_matches_the_oracle() {
    let cases = window_cases();
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let case = random_case(&mut rng);
        let expected: Vec<Vec<String>> = (0..FUNCTIONS.len()).map(|i| case.expected(i)).collect();
        let shapes = [(1, 1, 8192), (2, 3, 1), (3, 1, 2), (1, 2, 7)];
        let (lp, rp, batch) = shapes[(seed % shapes.len() as u64) as usize];
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(batch));
        assert_oracle(case.plan(lp, rp, batch), &ctx, &expected, |i| {
            format!(
                "seed {seed}, aggregate {i} {:?} width {} strict {} known {} tiebreak {}\nleft {:?}\nright {:?}",
                FUNCTIONS[i],
                case.widths[i],
                case.strict,
                case.known,
                case.tiebreak,
                case.left,
                case.right
            )
        })
        .await;
    }
}

#[tokio::test]
async fn spilling_gives_the_oracle_answer_in_the_left_order() {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let mut spilled = 0;
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(10_000 + seed);
        let case = random_case_sized(&mut rng, 3000, 300, 100..300);
        let expected: Vec<Vec<String>> = (0..FUNCTIONS.len()).map(|i| case.expected(i)).collect();
        // Far less memory than the right side needs at once, enough for one bucket of it.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(256 * 1024, 1.0)
            .build_arc()
            .unwrap();
        let config = SessionConfig::new().with_batch_size(64);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let plan = case.plan(2, 2, 64);
        assert_oracle(plan.clone(), &ctx, &expected, |i| {
            format!("seed {seed}, aggregate {i} {:?}", FUNCTIONS[i])
        })
        .await;
        if plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0) > 0 {
            spilled += 1;
        }
    }
    assert!(spilled >= 20, "only {spilled} of 40 cases spilled");
}

/// Every output row as text (the left columns and every aggregate), sorted: the co-partitioned
/// mode keeps no left order across partitions.
fn sorted_rows(batches: &[RecordBatch], aggregates: usize) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let mut columns: Vec<Vec<String>> = Vec::new();
        for c in 0..2 {
            let f = ArrayFormatter::try_new(b.column(c).as_ref(), &options).unwrap();
            columns.push((0..b.num_rows()).map(|r| f.value(r).to_string()).collect());
        }
        for i in 0..aggregates {
            columns.push(actual(std::slice::from_ref(b), i));
        }
        rows.extend((0..b.num_rows()).map(|r| columns.iter().map(|c| c[r].clone()).collect()));
    }
    rows.sort();
    rows
}

/// The co-partitioned mode, each partition run on a copy of the plan decoded from bytes (as a
/// cluster's task runs it, so no index is shared), gives the oracle's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_co_partitioned_mode_matches_the_oracle_through_the_codec() {
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    use datafusion::physical_optimizer::ensure_requirements::EnsureRequirements;
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::physical_plan::displayable;
    use datafusion_proto::bytes::{
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };
    use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;

    use crate::asof::exec::AsOfJoinMode;
    let codec = crate::asof::AsOfPhysicalCodec::new(Arc::new(DefaultPhysicalExtensionCodec {}));
    let mut partitioned = 0;
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(70_000 + seed);
        let case = random_case(&mut rng);
        let (lp, rp, batch) = [(1, 1, 8192), (2, 3, 1), (3, 1, 2), (1, 2, 7)][seed as usize % 4];
        // Odd seeds index the left side, with the aggregates that build computes.
        let (functions, build) = match seed % 2 {
            1 => (LEFT_BUILD.to_vec(), WindowBuild::Left),
            _ => ((0..FUNCTIONS.len()).collect::<Vec<_>>(), WindowBuild::Right),
        };
        // The oracle's answer per left row, beside the row's own columns.
        let expected = {
            let left = case.left_batch();
            let options = FormatOptions::default().with_null("NULL");
            let own: Vec<Vec<String>> = (0..2)
                .map(|c| {
                    let f = ArrayFormatter::try_new(left.column(c).as_ref(), &options).unwrap();
                    (0..left.num_rows())
                        .map(|r| f.value(r).to_string())
                        .collect()
                })
                .collect();
            let aggregates: Vec<Vec<String>> =
                functions.iter().map(|&f| case.expected(f)).collect();
            let mut rows: Vec<Vec<String>> = (0..left.num_rows())
                .map(|r| {
                    own.iter()
                        .chain(&aggregates)
                        .map(|c| c[r].clone())
                        .collect()
                })
                .collect();
            rows.sort();
            rows
        };
        let join = Arc::new(
            case.join_of(&functions, lp, rp, batch)
                .with_mode(AsOfJoinMode::CoPartitioned)
                .with_build(build),
        );
        let mut config = datafusion::config::ConfigOptions::new();
        config.execution.target_partitions = 1 + (seed as usize % 3);
        config.optimizer.repartition_joins = true;
        let plan = EnsureRequirements::new().optimize(join, &config).unwrap();
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        assert!(
            shown.contains("mode=co_partitioned")
                && shown.contains("build=left") == (build == WindowBuild::Left),
            "seed {seed}: {shown}"
        );
        let bytes = physical_plan_to_bytes_with_extension_codec(plan.clone(), &codec).unwrap();
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(batch));
        let partitions = plan.output_partitioning().partition_count();
        if partitions > 1 {
            partitioned += 1;
        }
        let mut all = Vec::new();
        for partition in 0..partitions {
            let task =
                physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec)
                    .unwrap();
            assert_eq!(
                displayable(task.as_ref()).indent(true).to_string(),
                shown,
                "seed {seed}"
            );
            let stream = task.execute(partition, ctx.task_ctx()).unwrap();
            all.extend(
                datafusion::physical_plan::common::collect(stream)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            sorted_rows(&all, functions.len()),
            expected,
            "seed {seed} ({partitions} partitions)"
        );
    }
    assert!(partitioned >= 150, "{partitioned}");
}

/// A right input large enough that the index sorts its groups on several threads: the answers
/// are the oracle's, as with one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_sorted_on_several_threads_matches_the_oracle() {
    for seed in 0..3u64 {
        let mut rng = StdRng::seed_from_u64(20_000 + seed);
        let mut case = random_case_sized(&mut rng, 2, 150, 20..3000);
        // Many rows, few times: long runs of ties for the tie rule to order.
        let template = random_case_sized(&mut rng, 400, 2, 20..3000).right;
        case.right = (0..300_000)
            .map(|i| {
                let mut r = template[i % template.len().max(1)].clone();
                r.k = r.k.map(|k| (k + i as i64 * 7) % 3000);
                r
            })
            .collect();
        assert!(case.right.len() >= 4 << 16, "too few rows to split");
        let expected: Vec<Vec<String>> = (0..FUNCTIONS.len()).map(|i| case.expected(i)).collect();
        for threads in [1, 4] {
            let config = SessionConfig::new().with_target_partitions(threads);
            let ctx = SessionContext::new_with_config(config);
            assert_oracle(case.plan(1, 2, 8192), &ctx, &expected, |i| {
                format!(
                    "seed {seed}, {threads} threads, aggregate {i} {:?}",
                    FUNCTIONS[i]
                )
            })
            .await;
        }
    }
}

/// The galloping search for a window's start counts what a binary search counts, for every
/// sorted array of up to 40 times (with repeats) and every bound.
#[test]
fn the_search_from_the_end_counts_as_a_binary_search() {
    let mut rng = StdRng::seed_from_u64(7);
    for len in 0..40 {
        for _ in 0..20 {
            let mut times: Vec<i64> = (0..len).map(|_| rng.random_range(0..12)).collect();
            times.sort_unstable();
            for bound in -1..13 {
                for strict in [false, true] {
                    let before = |e: i64| if strict { e < bound } else { e <= bound };
                    assert_eq!(
                        super::kernel::count_before_from_end(&times, before),
                        times.partition_point(|&e| before(e)),
                        "{times:?} bound {bound} strict {strict}"
                    );
                }
            }
        }
    }
}

/// Gathering an index's values on several threads gives what one `take` gives: numbers with
/// NULLs and strings, in a shuffled order long enough to be split.
#[test]
fn a_gather_on_several_threads_is_one_take() {
    let mut rng = StdRng::seed_from_u64(11);
    let n = 700_000;
    let numbers: ArrayRef = Arc::new(Float64Array::from_iter(
        (0..n).map(|i| (i % 7 != 0).then_some(i as f64 / 3.0)),
    ));
    let strings: ArrayRef = Arc::new(StringArray::from_iter(
        (0..n).map(|i| (i % 5 != 0).then(|| format!("s{i}"))),
    ));
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let order = arrow::array::UInt32Array::from(order);
    for array in [numbers, strings] {
        let one = arrow::compute::take(array.as_ref(), &order, None).unwrap();
        for threads in [1, 2, 4] {
            let got = super::kernel::gather(&array, &order, threads).unwrap();
            assert_eq!(got.as_ref(), one.as_ref(), "{threads} threads");
        }
    }
}

/// A session that sets a huge `target_partitions` gets no more build threads than cores, and
/// small inputs one thread.
#[test]
fn build_threads_are_bounded_by_the_cores_whatever_a_session_asks() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(crate::asof::worker_threads(1 << 30, usize::MAX, 1), cores);
    assert_eq!(crate::asof::worker_threads(1 << 30, 10, 1 << 16), 1);
    assert_eq!(crate::asof::worker_threads(0, usize::MAX, 1), 1);
}

/// The aggregates of [`FUNCTIONS`] the left build computes: counts, sums and means of integers
/// and floats, extremes of integers and floats.
const LEFT_BUILD: &[usize] = &[0, 1, 3, 4, 5, 6, 8, 9, 10];

#[test]
fn the_left_build_takes_exactly_the_accumulating_aggregates() {
    let schema = right_schema(false);
    for (f, (function, arg, _)) in FUNCTIONS.iter().enumerate() {
        let arg_type = arg.map(|a| schema.field_with_name(a).unwrap().data_type().clone());
        assert_eq!(
            super::left_build_computes(*function, arg_type.as_ref()),
            LEFT_BUILD.contains(&f),
            "{:?}",
            FUNCTIONS[f]
        );
    }
    // The others stay with the right side indexed, whatever is asked.
    let mut rng = StdRng::seed_from_u64(1);
    let case = random_case(&mut rng);
    let join = case.join(1, 1, 64).with_build(WindowBuild::Left);
    assert_eq!(join.build(), WindowBuild::Right);
    let join = case.join_of(LEFT_BUILD, 1, 1, 64);
    assert_eq!(
        join.build(),
        WindowBuild::Right,
        "the planner chooses, not the constructor"
    );
    let join = join.with_natural_build();
    let shown = datafusion::physical_plan::displayable(&join)
        .one_line()
        .to_string();
    assert_eq!(join.build(), WindowBuild::Left, "{shown}");
    assert!(shown.contains("build=left"), "{shown}");
    // With more left rows than right ones (the statistics say so), the right side is indexed.
    let mut larger_left = case;
    larger_left.right.truncate(2);
    while larger_left.left.len() <= larger_left.right.len() {
        larger_left.left.push((Some(1), Some(3)));
    }
    let join = larger_left
        .join_of(LEFT_BUILD, 1, 1, 64)
        .with_natural_build();
    assert_eq!(join.build(), WindowBuild::Right);
}

/// The rows the left index held, summed over partitions: 0 when the join indexed its right.
fn left_indexed_rows(plan: &Arc<dyn ExecutionPlan>) -> usize {
    plan.metrics()
        .and_then(|m| m.sum_by_name("left_index_rows"))
        .map_or(0, |v| v.as_usize())
}

/// The left indexed and the right streamed through, at several batch sizes and right partition
/// counts (each right partition accumulates apart; the parts are merged): every answer is the
/// oracle's, byte for byte, in the left's order.
#[tokio::test]
async fn the_left_build_matches_the_oracle() {
    let cases = window_cases();
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(40_000 + seed);
        let case = random_case(&mut rng);
        let expected: Vec<Vec<String>> = LEFT_BUILD.iter().map(|&f| case.expected(f)).collect();
        let (rp, batch) = [(1, 8192), (3, 1), (1, 2), (2, 7)][(seed % 4) as usize];
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(batch));
        // Right rows put in key order a few batches at a time, or all at once.
        let chunk = [1, 5, 64, super::LabelIndex::CHUNK_ROWS][(seed / 4 % 4) as usize];
        let join = case
            .join_of(LEFT_BUILD, 1, rp, batch)
            .with_build(WindowBuild::Left)
            .with_chunk_rows(chunk);
        let plan: Arc<dyn ExecutionPlan> = Arc::new(join);
        assert_oracle(plan.clone(), &ctx, &expected, |i| {
            format!(
                "seed {seed}, aggregate {i} {:?} width {} strict {} known {}\nleft {:?}\nright {:?}",
                FUNCTIONS[LEFT_BUILD[i]],
                case.widths[LEFT_BUILD[i]],
                case.strict,
                case.known,
                case.left,
                case.right
            )
        })
        .await;
        assert_eq!(left_indexed_rows(&plan), case.left.len(), "seed {seed}");
    }
}

/// Floats of every magnitude, signed zeros, subnormals, NaN and infinities: the left build's
/// sums, means and extremes have the right build's bytes (and, without NaN, the oracle's).
#[tokio::test]
async fn the_left_build_sums_floats_of_every_magnitude_as_the_right_build_does() {
    let values = [
        1e16,
        1.0,
        1e-16,
        0.1,
        3e-300,
        1e300,
        5e-324,
        2f64.powi(-53),
        -0.0,
        0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let mut hostile = 0;
    for seed in 0..400u64 {
        let mut rng = StdRng::seed_from_u64(50_000 + seed);
        let mut case = random_case_sized(&mut rng, 120, 40, 1..3);
        // Without the last three (NaN, infinities) in half the cases.
        let usable = if seed % 2 == 0 {
            values.len() - 3
        } else {
            values.len()
        };
        for r in &mut case.right {
            if let Some(f) = &mut r.f {
                let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
                let scale = f64::from(rng.random_range(1..8));
                *f = sign * scale * values[rng.random_range(0..usable)];
            }
        }
        let rp = 1 + (seed % 3) as usize;
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(16));
        let mut outputs = Vec::new();
        for build in [WindowBuild::Left, WindowBuild::Right] {
            let plan = Arc::new(case.join_of(LEFT_BUILD, 1, rp, 16).with_build(build));
            let out = collect_partitioned(plan, ctx.task_ctx()).await.unwrap();
            let all: Vec<RecordBatch> = out.into_iter().flatten().collect();
            outputs.push(
                (0..LEFT_BUILD.len())
                    .map(|i| actual(&all, i))
                    .collect::<Vec<_>>(),
            );
        }
        let special = case
            .right
            .iter()
            .any(|r| r.f.is_some_and(|f| !f.is_finite()));
        if special {
            hostile += 1;
        } else {
            for (i, &f) in LEFT_BUILD.iter().enumerate() {
                let expected = case.expected(f);
                for (build, output) in ["left", "right"].iter().zip(&outputs) {
                    assert_eq!(
                        output[i], expected,
                        "seed {seed}, {build}, {:?}",
                        FUNCTIONS[f]
                    );
                }
            }
        }
        for (i, &f) in LEFT_BUILD.iter().enumerate() {
            assert_eq!(
                outputs[0][i], outputs[1][i],
                "seed {seed}, {:?}\nright {:?}",
                FUNCTIONS[f], case.right
            );
        }
    }
    assert!(hostile >= 50, "only {hostile} cases with NaN or infinities");
}

/// The case's join of every aggregate a left build computes, indexing its left (one left
/// partition, two right, batches of 64 rows), and a context whose memory pool holds `limit`
/// bytes.
fn left_build_under(case: &Case, limit: usize) -> (Arc<dyn ExecutionPlan>, SessionContext) {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limit, 1.0)
        .build_arc()
        .unwrap();
    let config = SessionConfig::new().with_batch_size(64);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let plan = case
        .join_of(LEFT_BUILD, 1, 2, 64)
        .with_build(WindowBuild::Left);
    (Arc::new(plan), ctx)
}

/// A left side that does not fit in the memory limit is not indexed: the join indexes its
/// right (spilling it too when needed) with the left batches already read, and answers as the
/// oracle does, in the left's order.
#[tokio::test]
async fn a_left_side_larger_than_memory_goes_the_other_way() {
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(60_000 + seed);
        let mut case = random_case_sized(&mut rng, 400, 5000, 20..60);
        while case.left.len() < 1000 {
            case.left.extend(case.left.clone());
            case.left.push((Some(1), Some(5)));
        }
        let expected: Vec<Vec<String>> = LEFT_BUILD.iter().map(|&f| case.expected(f)).collect();
        let (plan, ctx) = left_build_under(&case, 64 * 1024);
        assert_oracle(plan.clone(), &ctx, &expected, |i| {
            format!("seed {seed}, aggregate {i} {:?}", FUNCTIONS[LEFT_BUILD[i]])
        })
        .await;
        assert_eq!(
            left_indexed_rows(&plan),
            0,
            "seed {seed}: the left was indexed"
        );
    }
}

/// A left side that fits in the memory limit, though a task's chunk of the width asked for
/// (2^18 right rows) does not, is still indexed: its right side is streamed in narrower
/// chunks, with the oracle's answer. Under a limit that holds no chunk at all, it goes the
/// other way.
#[tokio::test]
async fn chunks_too_wide_for_the_memory_limit_are_narrowed() {
    let narrowed = || super::exec::NARROWED.load(std::sync::atomic::Ordering::Relaxed);
    let before = narrowed();
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(61_000 + seed);
        let case = random_case_sized(&mut rng, 300, 3000, 20..60);
        let expected: Vec<Vec<String>> = LEFT_BUILD.iter().map(|&f| case.expected(f)).collect();
        for (limit, indexed) in [(8 << 20, true), (64 << 10, false)] {
            let (plan, ctx) = left_build_under(&case, limit);
            assert_oracle(plan.clone(), &ctx, &expected, |i| {
                format!(
                    "seed {seed}, limit {limit}, aggregate {i} {:?}",
                    FUNCTIONS[LEFT_BUILD[i]]
                )
            })
            .await;
            assert_eq!(
                left_indexed_rows(&plan) > 0,
                indexed,
                "seed {seed}, limit {limit}: the left indexed or not"
            );
        }
    }
    assert!(narrowed() >= before + 6, "the chunks were not narrowed");
}

/// An UNSIGNED BIGINT value past BIGINT's range, summed or averaged, is an error naming the
/// function and the cast that would do (both builds read integers through this one function),
/// never a NULL in its place; values in range convert, NULLs stay NULL.
#[test]
fn an_unsigned_value_past_bigint_is_an_error_not_a_null() {
    use arrow::array::UInt64Array;
    let past: ArrayRef = Arc::new(UInt64Array::from(vec![Some(1), Some(u64::MAX)]));
    for function in [AggFunction::Sum, AggFunction::Avg] {
        let e = super::kernel::integers(function, &past)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "{}(x): a value does not fit BIGINT",
                function.name()
            )) && e.contains("cast x to DECIMAL(38, 0)"),
            "{e}"
        );
    }
    let fits: ArrayRef = Arc::new(UInt64Array::from(vec![
        Some(7),
        None,
        Some(i64::MAX as u64),
    ]));
    let values = super::kernel::integers(AggFunction::Sum, &fits).unwrap();
    assert_eq!(
        values,
        Int64Array::from(vec![Some(7), None, Some(i64::MAX)])
    );
}
