//! `pitlake demo`: builds a small feature warehouse with the program's own seeded generator,
//! spread over several Delta versions, then runs a guided tour of queries against it.
//!
//! The tables are shaped like real feature-store inputs:
//! - `driver_hourly_stats(driver_id, event_ts, created_ts, conv_rate, acc_rate, avg_daily_trips)`:
//!   hourly features for 50 drivers over two weeks, loaded in three commits: week one, week two,
//!   and a late batch of *corrections* that re-deliver some hours with a later `created_ts`;
//! - `customer_profile(customer_id, event_ts, created_ts, current_balance, avg_passenger_count,
//!   lifetime_trip_count)`: daily snapshots for 200 customers, in two commits;
//! - `orders(order_id, driver_id, customer_id, event_ts, label)`: 2 000 labelled orders.
//!
//! It also registers the matching feature definitions (entities `driver` and `customer`, feature
//! views `driver_stats` and `customer_profile`, the feature service `churn_v1`), builds a training
//! set from them and, for a local warehouse, exports it beside the warehouse with its manifest.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::cli::args::DemoArgs;
use crate::cli::print::{OutputFormat, print_stream};
use crate::engine::{Engine, Output, RunOptions};
use crate::engine::{TableName, WriteMode, format_millis};
use crate::error::{PitlakeError, Result};

/// The demo's tables.
pub const TABLES: [&str; 3] = ["driver_hourly_stats", "customer_profile", "orders"];

/// 2026-01-01T00:00:00Z in microseconds.
const START_US: i64 = 1_767_225_600_000_000;
const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// A small seeded generator (SplitMix64): the same demo on every machine, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn ts(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn driver_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("driver_id", DataType::Int64, false),
        ts_field("event_ts"),
        ts_field("created_ts"),
        Field::new("conv_rate", DataType::Float64, true),
        Field::new("acc_rate", DataType::Float64, true),
        Field::new("avg_daily_trips", DataType::Int64, true),
    ]))
}

/// The columns of an entity's stats table: key, event time, created time, two measures and a
/// count (the driver and customer tables have this shape).
#[derive(Default)]
struct StatsColumns {
    id: Vec<i64>,
    event: Vec<i64>,
    created: Vec<i64>,
    first: Vec<f64>,
    second: Vec<f64>,
    count: Vec<i64>,
}

impl StatsColumns {
    fn push(&mut self, id: i64, event: i64, created: i64, first: f64, second: f64, count: i64) {
        self.id.push(id);
        self.event.push(event);
        self.created.push(created);
        self.first.push(first);
        self.second.push(second);
        self.count.push(count);
    }

    /// One driver's row: random conversion rate, acceptance rate and trips.
    fn push_driver(&mut self, rng: &mut Rng, id: i64, event: i64, created: i64) {
        let conv = round(0.2 + 0.6 * rng.unit(), 4);
        let acc = round(0.5 + 0.5 * rng.unit(), 4);
        let trips = 5 + rng.below(40) as i64;
        self.push(id, event, created, conv, acc, trips);
    }

    fn into_batch(self, schema: SchemaRef) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(self.id)),
                ts(self.event),
                ts(self.created),
                Arc::new(Float64Array::from(self.first)),
                Arc::new(Float64Array::from(self.second)),
                Arc::new(Int64Array::from(self.count)),
            ],
        )?)
    }
}

/// Hourly stats for drivers 1001..=1050 for the hours in `[from_day, to_day)`; rows are
/// created (ingested) 5 to 65 minutes after the hour they describe.
fn driver_rows(rng: &mut Rng, from_day: i64, to_day: i64) -> Result<RecordBatch> {
    let mut rows = StatsColumns::default();
    for hour in (from_day * 24)..(to_day * 24) {
        for driver in 1001..=1050 {
            // Not every driver works every hour.
            if rng.unit() < 0.35 {
                continue;
            }
            let t = START_US + hour * HOUR_US;
            let created = t + (5 + rng.below(60) as i64) * 60_000_000;
            rows.push_driver(rng, driver, t, created);
        }
    }
    rows.into_batch(driver_schema())
}

/// Corrections: for 3% of the rows in `base`, the same (driver, hour) again with new values,
/// created two days later (a late backfill that must not leak into earlier labels).
fn driver_corrections(rng: &mut Rng, base: &[RecordBatch]) -> Result<RecordBatch> {
    let mut rows = StatsColumns::default();
    for batch in base {
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| PitlakeError::Internal("demo: driver_id type".into()))?;
        let events = batch
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| PitlakeError::Internal("demo: event_ts type".into()))?;
        for row in 0..batch.num_rows() {
            if rng.unit() < 0.03 {
                let event = events.value(row);
                rows.push_driver(rng, ids.value(row), event, event + 2 * DAY_US);
            }
        }
    }
    rows.into_batch(driver_schema())
}

fn customer_rows(rng: &mut Rng, from_day: i64, to_day: i64) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        ts_field("event_ts"),
        ts_field("created_ts"),
        Field::new("current_balance", DataType::Float64, true),
        Field::new("avg_passenger_count", DataType::Float64, true),
        Field::new("lifetime_trip_count", DataType::Int64, true),
    ]));
    let mut rows = StatsColumns::default();
    for day in from_day..to_day {
        for customer in 2001..=2200 {
            let t = START_US + day * DAY_US;
            let balance = round(1000.0 * rng.unit(), 2);
            let passengers = round(1.0 + 2.0 * rng.unit(), 2);
            let trips = day * 3 + rng.below(300) as i64;
            rows.push(customer, t, t + HOUR_US, balance, passengers, trips);
        }
    }
    rows.into_batch(schema)
}

fn order_rows(rng: &mut Rng) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("driver_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        ts_field("event_ts"),
        Field::new("label", DataType::Boolean, false),
    ]));
    let (mut id, mut driver, mut customer, mut event, mut label) =
        (vec![], vec![], vec![], vec![], vec![]);
    for order in 0..2000 {
        id.push(1 + order);
        // A few drivers (1051..) and customers (2201..) have no features at all.
        driver.push(1001 + rng.below(52) as i64);
        customer.push(2001 + rng.below(205) as i64);
        // Whole seconds: labels read better, and nothing below depends on sub-second times.
        event.push(START_US + rng.below((14 * DAY_US / 1_000_000) as u64) as i64 * 1_000_000);
        label.push(rng.unit() < 0.3);
    }
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(Int64Array::from(driver)),
            Arc::new(Int64Array::from(customer)),
            ts(event),
            Arc::new(BooleanArray::from(label)),
        ],
    )?)
}

async fn write(engine: &Engine, table: &str, batch: RecordBatch, mode: WriteMode) -> Result<()> {
    let outcome = engine
        .write_batches(&TableName::bare(table), vec![batch], mode)
        .await?;
    println!("  {}", outcome.message());
    Ok(())
}

async fn build(engine: &Engine) -> Result<()> {
    let mut rng = Rng(42);
    println!(
        "Building the demo warehouse in {}:",
        engine.warehouse().location().display()
    );
    let week1 = driver_rows(&mut rng, 0, 7)?;
    let week2 = driver_rows(&mut rng, 7, 14)?;
    let fixes = driver_corrections(&mut rng, &[week1.clone(), week2.clone()])?;
    write(engine, "driver_hourly_stats", week1, WriteMode::Create).await?;
    write(engine, "driver_hourly_stats", week2, WriteMode::Append).await?;
    write(engine, "driver_hourly_stats", fixes, WriteMode::Append).await?;
    write(
        engine,
        "customer_profile",
        customer_rows(&mut rng, 0, 7)?,
        WriteMode::Create,
    )
    .await?;
    write(
        engine,
        "customer_profile",
        customer_rows(&mut rng, 7, 14)?,
        WriteMode::Append,
    )
    .await?;
    write(engine, "orders", order_rows(&mut rng)?, WriteMode::Create).await?;
    Ok(())
}

/// The demo's feature definitions, in the DSL (docs/dsl.md).
const DEFINITIONS: [&str; 5] = [
    "CREATE ENTITY driver (driver_id BIGINT) COMMENT 'a driver'",
    "CREATE ENTITY customer (customer_id BIGINT) COMMENT 'a rider'",
    "CREATE FEATURE VIEW driver_stats ENTITY driver FROM driver_hourly_stats \
     EVENT TIME event_ts CREATED TIME created_ts TTL INTERVAL '2 hours' \
     FEATURES (conv_rate DOUBLE COMMENT 'conversions per trip offer', acc_rate DOUBLE, \
     avg_daily_trips BIGINT) OWNER 'demo' COMMENT 'hourly driver statistics'",
    "CREATE FEATURE VIEW customer_profile ENTITY customer FROM customer_profile \
     EVENT TIME event_ts CREATED TIME created_ts TTL INTERVAL '2 days' \
     FEATURES (current_balance, lifetime_trip_count) COMMENT 'daily customer snapshot'",
    "CREATE FEATURE SERVICE churn_v1 (driver_stats.conv_rate, driver_stats.acc_rate, \
     customer_profile.*) COMMENT 'inputs of the churn model'",
];

/// The demo's training set.
const TRAINING_SET: &str = "TRAINING SET LABELS (SELECT order_id, driver_id, customer_id, \
     event_ts, label FROM orders) AT event_ts FEATURES (SERVICE churn_v1)";

/// Registers the definitions, unless the registry already has them.
async fn register(engine: &Engine) -> Result<()> {
    if engine.registry().version().await?.is_some() {
        return Ok(());
    }
    for statement in DEFINITIONS {
        engine.sql(statement).await?;
    }
    println!("  registered entities, feature views and the feature service churn_v1");
    Ok(())
}

/// The tour: (what it shows, the SQL).
fn tour() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "The tables in the warehouse",
            "SELECT table_schema, table_name FROM information_schema.tables \
             WHERE table_catalog = 'pitlake' AND table_schema <> 'information_schema' \
             ORDER BY table_name",
        ),
        (
            "Every load is a Delta commit with its own version",
            "DESCRIBE HISTORY driver_hourly_stats",
        ),
        (
            "Ordinary SQL: the drivers with the best average conversion",
            "SELECT driver_id, round(avg(conv_rate), 3) AS avg_conv, count(*) AS hours \
             FROM driver_hourly_stats GROUP BY driver_id ORDER BY avg_conv DESC LIMIT 5",
        ),
        (
            "Time travel: the table as it was after each commit",
            "SELECT 0 AS version, count(*) AS row_count FROM driver_hourly_stats VERSION AS OF 0 \
             UNION ALL SELECT 1, count(*) FROM driver_hourly_stats VERSION AS OF 1 \
             UNION ALL SELECT 2, count(*) FROM driver_hourly_stats VERSION AS OF 2 \
             ORDER BY version",
        ),
        (
            "Two versions in one query: the hours that the corrections (version 2) changed",
            "SELECT v2.driver_id, v2.event_ts, v2.conv_rate AS corrected, v1.conv_rate AS original, \
                    v2.created_ts AS corrected_at \
             FROM driver_hourly_stats VERSION AS OF 2 v2 \
             JOIN driver_hourly_stats VERSION AS OF 1 v1 \
               ON v1.driver_id = v2.driver_id AND v1.event_ts = v2.event_ts \
             WHERE v2.created_ts > v1.created_ts \
             ORDER BY v2.event_ts, v2.driver_id LIMIT 5",
        ),
        (
            "The labels a training set starts from",
            "SELECT order_id, driver_id, customer_id, event_ts, label FROM orders \
             ORDER BY order_id LIMIT 5",
        ),
        (
            "An as-of join: each order with its driver's latest stats at the order time",
            "SELECT o.order_id, o.event_ts, d.event_ts AS stats_hour, d.conv_rate \
             FROM orders o \
             ASOF LEFT JOIN driver_hourly_stats d \
               ON o.driver_id = d.driver_id AND o.event_ts >= d.event_ts \
             ORDER BY o.order_id LIMIT 5",
        ),
        (
            "Leakage-free: newest delivery wins a tie, but only what was known at the order \
             time, and nothing older than 2 hours; plus the customer's daily profile",
            "SELECT o.order_id, o.event_ts, d.conv_rate, d.created_ts AS known_since, \
                    c.current_balance \
             FROM orders o \
             ASOF LEFT JOIN driver_hourly_stats d \
               ON o.driver_id = d.driver_id AND o.event_ts >= d.event_ts \
               TOLERANCE INTERVAL '2 hours' TIEBREAK BY d.created_ts DESC KNOWN AT d.created_ts \
             ASOF LEFT JOIN customer_profile c \
               ON o.customer_id = c.customer_id AND o.event_ts >= c.event_ts \
               TIEBREAK BY c.created_ts DESC KNOWN AT c.created_ts \
             ORDER BY o.order_id LIMIT 5",
        ),
        (
            "How often each join found a value: labels with no features stay, with NULLs",
            "SELECT count(*) AS orders, count(d.conv_rate) AS with_driver_stats, \
                    count(c.current_balance) AS with_profile \
             FROM orders o \
             ASOF LEFT JOIN driver_hourly_stats d \
               ON o.driver_id = d.driver_id AND o.event_ts >= d.event_ts \
               TIEBREAK BY d.created_ts DESC KNOWN AT d.created_ts \
             ASOF LEFT JOIN customer_profile c \
               ON o.customer_id = c.customer_id AND o.event_ts >= c.event_ts \
               KNOWN AT c.created_ts",
        ),
        (
            "The feature registry: views defined once, with entity, times and TTL",
            "SHOW FEATURE VIEWS",
        ),
        (
            "A training set from the registry: the same point-in-time rules, one line",
            TRAINING_SET,
        ),
    ]
}

async fn show(engine: &Engine, title: &str, sql: &str) -> Result<()> {
    println!("\n-- {title}\n{sql};");
    match engine.sql(sql).await? {
        Output::Rows(stream) => {
            let mut stdout = std::io::stdout();
            print_stream(stream, OutputFormat::Table, Some(10), &mut stdout).await?;
        }
        Output::Done(message) => println!("{message}"),
    }
    Ok(())
}

pub async fn run(engine: &Engine, args: DemoArgs) -> Result<()> {
    engine.warehouse().ensure_writable()?;
    let mut present = Vec::new();
    for table in TABLES {
        if engine
            .warehouse()
            .table_exists(&TableName::bare(table))
            .await?
        {
            present.push(table);
        }
    }
    if args.reset {
        for table in &present {
            engine
                .run_script(&format!("DROP TABLE {table}"), RunOptions { force: true })
                .await?;
        }
        present.clear();
    }
    match present.len() {
        0 => {
            build(engine).await?;
            register(engine).await?;
        }
        n if n == TABLES.len() => println!(
            "The demo warehouse is already built in {} (run `pitlake demo --reset` to rebuild it).",
            engine.warehouse().location().display()
        ),
        _ => {
            return Err(PitlakeError::Plan(format!(
                "the warehouse holds only some of the demo tables ({}); run `pitlake demo \
                 --reset` to rebuild them",
                present.join(", ")
            )));
        }
    }
    register(engine).await?;
    if args.no_tour {
        return Ok(());
    }
    for (title, sql) in tour() {
        show(engine, title, sql).await?;
    }
    // Timestamp travel needs a real commit time, so the query is built from the history.
    let name = TableName::bare("driver_hourly_stats");
    let listing = engine.warehouse().log_listing(&name).await?;
    if let Some((_, ms)) = listing.commit_times().into_iter().find(|(v, _)| *v == 1) {
        let sql = format!(
            "SELECT count(*) AS row_count FROM driver_hourly_stats TIMESTAMP AS OF '{}'",
            format_millis(ms)
        );
        show(
            engine,
            "Time travel by timestamp: the table at version 1's commit time",
            &sql,
        )
        .await?;
    }
    export(engine).await?;
    println!(
        "\nNext: `pitlake shell` to explore (\\d lists tables, \\history driver_hourly_stats shows \
         commits); docs/dsl.md for feature views, training sets and exports."
    );
    Ok(())
}

/// Exports the training set beside a local warehouse (`<warehouse>/../exports/`), the batch
/// job's output, and shows that its manifest rebuilds it.
async fn export(engine: &Engine) -> Result<()> {
    let Some(warehouse) = engine.warehouse().location().local_path() else {
        return Ok(());
    };
    let folder = std::path::absolute(&warehouse)?
        .parent()
        .map(|p| p.join("exports"))
        .unwrap_or_else(|| std::path::PathBuf::from("exports"));
    let to = folder.join("churn_v1.parquet").display().to_string();
    let statement = format!("EXPORT {TRAINING_SET} TO '{to}'");
    println!(
        "\n-- The batch job: export the training set with a manifest pinning every input\n{statement};"
    );
    match engine.sql(&statement).await? {
        Output::Done(message) => println!("{message}"),
        Output::Rows(_) => {}
    }
    let manifest = crate::engine::manifest_location(&to);
    let again = engine.reproduce(&manifest, None).await?;
    println!(
        "`pitlake reproduce {manifest}` rebuilds it: {}",
        if again.ok() { "identical" } else { "DIFFERENT" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic() {
        let a = driver_rows(&mut Rng(7), 0, 1).unwrap();
        let b = driver_rows(&mut Rng(7), 0, 1).unwrap();
        assert_eq!(a, b);
        assert!(a.num_rows() > 0);
    }
}
