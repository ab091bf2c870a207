//! The as-of join's metrics: DataFusion's baseline (output rows, compute time) plus its own.

use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, SpillMetrics, Time,
};

/// Metrics of one partition of an [`AsOfJoinExec`](super::AsOfJoinExec).
#[derive(Debug, Clone)]
pub struct AsOfJoinMetrics {
    /// Output rows and total compute time.
    pub baseline: BaselineMetrics,
    /// Left rows read.
    pub left_rows: Count,
    /// Right rows read (counted by the partitions that build).
    pub right_rows: Count,
    /// Left rows that found a right row.
    pub matched_rows: Count,
    /// Time spent building the right index (sorting, grouping).
    pub build_time: Time,
    /// Time spent in the matching kernel: probing and gathering right columns.
    pub probe_time: Time,
    /// Spill files, bytes and rows written when the right side did not fit in memory.
    pub spill: SpillMetrics,
}

impl AsOfJoinMetrics {
    /// Registers the metrics of `partition`.
    pub fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        Self {
            baseline: BaselineMetrics::new(metrics, partition),
            left_rows: MetricBuilder::new(metrics).counter("left_rows", partition),
            right_rows: MetricBuilder::new(metrics).counter("right_rows", partition),
            matched_rows: MetricBuilder::new(metrics).counter("matched_rows", partition),
            build_time: MetricBuilder::new(metrics).subset_time("build_time", partition),
            probe_time: MetricBuilder::new(metrics).subset_time("probe_time", partition),
            spill: SpillMetrics::new(metrics, partition),
        }
    }
}
