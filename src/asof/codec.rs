//! Serializing as-of joins with DataFusion's extension codecs (`datafusion-proto`), so the same
//! plans can be shipped to remote executors (Ballista runs DataFusion 55 plans this way).
//!
//! Both codecs wrap another codec and hand it everything that is not an as-of join (deltalake's
//! codec for Delta table providers, for example). An encoded join is a magic prefix, a small JSON
//! header with the join's options, then its expressions as length-delimited protobuf messages in
//! a fixed order.

use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{Result, ScalarValue, TableReference, internal_datafusion_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::expr::Sort;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, PhysicalExprRef, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::logical_plan::from_proto::parse_expr;
use datafusion_proto::logical_plan::to_proto::serialize_expr;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::{LogicalExprNode, PhysicalExprNode};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::exec::{AsOfBuild, AsOfJoinExec, AsOfJoinMode};
use super::logical::{AsOfJoin, AsOfJoinType, AsOfOperator, Tolerance};
use super::window::{
    AggFunction, PhysicalWindowAggregate, WindowAggregate, WindowBuild, WindowJoinExec,
};

const MAGIC: &[u8; 8] = b"PLASOF01";

/// The options of a join; the expressions follow in the buffer.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    keys: usize,
    null_equal: Vec<bool>,
    op: String,
    join_type: String,
    /// Nanoseconds, as a string (JSON numbers lose precision past 2^53).
    tolerance_nanos: Option<String>,
    /// A numeric tolerance travels as one more (literal) expression, last.
    tolerance_number: bool,
    /// (ascending or descending, nulls first)
    tiebreak: Vec<(bool, bool)>,
    known_at: bool,
    /// The right columns shown, when a projection was absorbed (all of them when absent).
    #[serde(default)]
    right_output: Option<Vec<usize>>,
    /// Logical: whether the right input (already in the plan) was filtered to the left's time
    /// range.
    #[serde(default)]
    right_pruned: bool,
    /// Physical: the co-partitioned mode (both inputs hash-partitioned alike).
    #[serde(default)]
    co_partitioned: bool,
    /// A window join's aggregates (none for an as-of join). Their arguments follow the other
    /// expressions; the numeric widths come last, as literals.
    #[serde(default)]
    aggregates: Vec<AggregateHeader>,
    /// Logical: the qualifier of the aggregates' columns.
    #[serde(default)]
    aggregate_qualifier: Option<String>,
    /// Physical: a window join's output schema (`datafusion-proto`).
    #[serde(default)]
    output_schema: Option<Vec<u8>>,
    /// Physical: a window or as-of join that indexes its left side (`WindowBuild::Left`,
    /// `AsOfBuild::Left`).
    #[serde(default)]
    left_build: bool,
}

/// One aggregate of a window join.
#[derive(Debug, Serialize, Deserialize)]
struct AggregateHeader {
    name: String,
    function: String,
    star: bool,
    k: Option<usize>,
    /// Nanoseconds, as a string; a numeric width travels as a literal expression.
    width_nanos: Option<String>,
    has_arg: bool,
}

fn aggregate_header(
    name: &str,
    function: AggFunction,
    k: Option<usize>,
    width: &Tolerance,
    has_arg: bool,
) -> AggregateHeader {
    AggregateHeader {
        name: name.to_string(),
        function: function.name().to_string(),
        star: function == AggFunction::CountStar,
        k,
        width_nanos: match width {
            Tolerance::Duration(n) => Some(n.to_string()),
            Tolerance::Number(_) => None,
        },
        has_arg,
    }
}

/// The numeric widths of `aggregates`, in order.
fn number_widths<'a>(widths: impl Iterator<Item = &'a Tolerance>) -> Vec<ScalarValue> {
    widths
        .filter_map(|w| match w {
            Tolerance::Number(v) => Some(v.clone()),
            Tolerance::Duration(_) => None,
        })
        .collect()
}

/// The aggregates of `header` with their arguments: the numeric widths are taken from `numbers`
/// and the arguments from `args`, in order. The logical aggregates come without their argument,
/// which is returned beside each (logical or physical, as the caller decoded them).
fn header_aggregates<A>(
    header: &Header,
    numbers: impl IntoIterator<Item = ScalarValue>,
    args: impl IntoIterator<Item = A>,
) -> Result<Vec<(WindowAggregate, Option<A>)>> {
    let (mut numbers, mut args) = (numbers.into_iter(), args.into_iter());
    header
        .aggregates
        .iter()
        .map(|a| {
            let function = AggFunction::from_name(&a.function, a.star)
                .map_err(|e| internal_datafusion_err!("as-of codec: {e}"))?;
            let width = match &a.width_nanos {
                Some(n) => Tolerance::Duration(
                    n.parse()
                        .map_err(|_| internal_datafusion_err!("as-of codec: width {n}"))?,
                ),
                None => Tolerance::Number(
                    numbers
                        .next()
                        .ok_or_else(|| internal_datafusion_err!("as-of codec: width literal"))?,
                ),
            };
            let aggregate = WindowAggregate {
                name: a.name.clone(),
                function,
                arg: None,
                k: a.k,
                width,
            };
            Ok((aggregate, if a.has_arg { args.next() } else { None }))
        })
        .collect()
}

fn op_name(op: AsOfOperator) -> &'static str {
    match op {
        AsOfOperator::GtEq => ">=",
        AsOfOperator::Gt => ">",
        AsOfOperator::LtEq => "<=",
        AsOfOperator::Lt => "<",
    }
}

fn op_from(name: &str) -> Result<AsOfOperator> {
    Ok(match name {
        ">=" => AsOfOperator::GtEq,
        ">" => AsOfOperator::Gt,
        "<=" => AsOfOperator::LtEq,
        "<" => AsOfOperator::Lt,
        other => return Err(internal_datafusion_err!("as-of codec: operator {other}")),
    })
}

fn join_type_from(name: &str) -> Result<AsOfJoinType> {
    Ok(match name {
        "Left" => AsOfJoinType::Left,
        "Inner" => AsOfJoinType::Inner,
        other => return Err(internal_datafusion_err!("as-of codec: join type {other}")),
    })
}

fn header(
    keys: usize,
    null_equal: &[bool],
    op: AsOfOperator,
    join_type: AsOfJoinType,
    tolerance: Option<&Tolerance>,
    tiebreak: Vec<(bool, bool)>,
    known_at: bool,
) -> Header {
    Header {
        keys,
        null_equal: null_equal.to_vec(),
        op: op_name(op).to_string(),
        join_type: join_type.to_string(),
        tolerance_nanos: match tolerance {
            Some(Tolerance::Duration(n)) => Some(n.to_string()),
            _ => None,
        },
        tolerance_number: matches!(tolerance, Some(Tolerance::Number(_))),
        tiebreak,
        known_at,
        right_output: None,
        right_pruned: false,
        co_partitioned: false,
        aggregates: Vec::new(),
        aggregate_qualifier: None,
        output_schema: None,
        left_build: false,
    }
}

fn write_header(header: &Header, buf: &mut Vec<u8>) -> Result<()> {
    let json =
        serde_json::to_vec(header).map_err(|e| internal_datafusion_err!("as-of codec: {e}"))?;
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(&json);
    Ok(())
}

/// Reads the header; `None` if the buffer is not an as-of join.
fn read_header(buf: &[u8]) -> Result<Option<(Header, &[u8])>> {
    let Some(rest) = buf.strip_prefix(MAGIC.as_slice()) else {
        return Ok(None);
    };
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| internal_datafusion_err!("as-of codec: truncated header"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(internal_datafusion_err!("as-of codec: truncated header"));
    }
    let header: Header = serde_json::from_slice(&rest[..len])
        .map_err(|e| internal_datafusion_err!("as-of codec: {e}"))?;
    Ok(Some((header, &rest[len..])))
}

fn read_messages<M: Message + Default>(mut rest: &[u8]) -> Result<Vec<M>> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(
            M::decode_length_delimited(&mut rest)
                .map_err(|e| internal_datafusion_err!("as-of codec: {e}"))?,
        );
    }
    Ok(out)
}

fn tolerance_from(header: &Header, number: Option<ScalarValue>) -> Result<Option<Tolerance>> {
    Ok(match (&header.tolerance_nanos, number) {
        (Some(n), _) => {
            Some(Tolerance::Duration(n.parse().map_err(|_| {
                internal_datafusion_err!("as-of codec: tolerance {n}")
            })?))
        }
        (None, Some(value)) => Some(Tolerance::Number(value)),
        (None, None) => None,
    })
}

/// Encodes and decodes [`AsOfJoin`] logical nodes; everything else goes to `inner`.
#[derive(Debug)]
pub struct AsOfLogicalCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
    facts: Arc<dyn super::TableFacts>,
}

impl AsOfLogicalCodec {
    /// Wraps `inner`, which handles every other node and every table provider; `facts` says
    /// which providers travel as another (see [`super::TableFacts::serialized`]).
    pub fn new(inner: Arc<dyn LogicalExtensionCodec>, facts: Arc<dyn super::TableFacts>) -> Self {
        Self { inner, facts }
    }
}

impl LogicalExtensionCodec for AsOfLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        let Some((header, rest)) = read_header(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx);
        };
        let [left, right] = inputs else {
            return Err(internal_datafusion_err!(
                "as-of codec: {} inputs",
                inputs.len()
            ));
        };
        let mut exprs = read_messages::<LogicalExprNode>(rest)?
            .iter()
            .map(|node| parse_expr(node, ctx, self).map_err(DataFusionError::from))
            .collect::<Result<Vec<Expr>>>()?;
        let widths = header
            .aggregates
            .iter()
            .filter(|a| a.width_nanos.is_none())
            .count();
        if exprs.len() < widths {
            return Err(internal_datafusion_err!("as-of codec: width literals"));
        }
        let numbers = exprs
            .split_off(exprs.len() - widths)
            .into_iter()
            .map(|e| match e {
                Expr::Literal(value, _) => Ok(value),
                _ => Err(internal_datafusion_err!("as-of codec: width literal")),
            })
            .collect::<Result<Vec<_>>>()?;
        let number = if header.tolerance_number {
            match exprs.pop() {
                Some(Expr::Literal(value, _)) => Some(value),
                _ => return Err(internal_datafusion_err!("as-of codec: tolerance literal")),
            }
        } else {
            None
        };
        let k = header.keys;
        let t = header.tiebreak.len();
        let args = header.aggregates.iter().filter(|a| a.has_arg).count();
        let expected = 2 * k + 2 + t + usize::from(header.known_at);
        if exprs.len() != expected + args {
            return Err(internal_datafusion_err!(
                "as-of codec: {} expressions, expected {}",
                exprs.len(),
                expected + args
            ));
        }
        let arg_exprs = exprs.split_off(expected);
        let aggregates: Vec<WindowAggregate> = header_aggregates(&header, numbers, arg_exprs)?
            .into_iter()
            .map(|(aggregate, arg)| WindowAggregate { arg, ..aggregate })
            .collect();
        let known_at = header.known_at.then(|| exprs[expected - 1].clone());
        let tiebreak = header
            .tiebreak
            .iter()
            .zip(&exprs[2 * k + 2..2 * k + 2 + t])
            .map(|((asc, nulls_first), e)| Sort::new(e.clone(), *asc, *nulls_first))
            .collect();
        let node = AsOfJoin::try_new(
            Arc::new(left.clone()),
            Arc::new(right.clone()),
            exprs[..k]
                .iter()
                .cloned()
                .zip(exprs[k..2 * k].iter().cloned())
                .collect(),
            header.null_equal.clone(),
            exprs[2 * k].clone(),
            exprs[2 * k + 1].clone(),
            op_from(&header.op)?,
            join_type_from(&header.join_type)?,
            tolerance_from(&header, number)?,
            tiebreak,
            known_at,
        )?;
        let mut node = node;
        node.right_pruned = header.right_pruned;
        if !aggregates.is_empty() {
            let qualifier = header
                .aggregate_qualifier
                .as_deref()
                .map(TableReference::parse_str);
            node = node.with_aggregates(aggregates, qualifier)?;
        }
        Ok(Extension {
            node: Arc::new(node),
        })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        let Some(join) = node.node.as_any().downcast_ref::<AsOfJoin>() else {
            return self.inner.try_encode(node, buf);
        };
        let tiebreak = join
            .tiebreak
            .iter()
            .map(|s| (s.asc, s.nulls_first))
            .collect();
        let mut header = header(
            join.on.len(),
            &join.null_equal,
            join.op,
            join.join_type,
            join.tolerance.as_ref(),
            tiebreak,
            join.known_at.is_some(),
        );
        header.right_pruned = join.right_pruned;
        header.aggregates = join
            .aggregates
            .iter()
            .map(|a| aggregate_header(&a.name, a.function, a.k, &a.width, a.arg.is_some()))
            .collect();
        if !join.aggregates.is_empty() {
            use datafusion::logical_expr::UserDefinedLogicalNodeCore;
            header.aggregate_qualifier = join
                .schema()
                .iter()
                .last()
                .and_then(|(q, _)| q.map(|q| q.to_quoted_string()));
        }
        write_header(&header, buf)?;
        let mut exprs = {
            use datafusion::logical_expr::UserDefinedLogicalNodeCore;
            join.expressions()
        };
        if let Some(Tolerance::Number(value)) = &join.tolerance {
            exprs.push(Expr::Literal(value.clone(), None));
        }
        exprs.extend(
            number_widths(join.aggregates.iter().map(|a| &a.width))
                .into_iter()
                .map(|v| Expr::Literal(v, None)),
        );
        for expr in &exprs {
            serialize_expr(expr, self)?
                .encode_length_delimited(buf)
                .map_err(|e| internal_datafusion_err!("as-of codec: {e}"))?;
        }
        Ok(())
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        self.inner
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        // A warehouse table travels as the provider it wraps.
        let node = self.facts.serialized(&node).unwrap_or(node);
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// Encodes and decodes [`AsOfJoinExec`]; everything else goes to `inner`.
#[derive(Debug)]
pub struct AsOfPhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
}

impl AsOfPhysicalCodec {
    /// Wraps `inner`, which handles every other operator.
    pub fn new(inner: Arc<dyn PhysicalExtensionCodec>) -> Self {
        Self { inner }
    }
}

/// The output schema of an as-of join of these inputs: left, then right made nullable.
fn output_schema(left: &SchemaRef, right: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = left.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(
        right
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    Arc::new(Schema::new(fields))
}

/// What both join operators have, in the order the physical codec writes them: left keys, right
/// keys, left time, right time, tie-break expressions, the knowledge time. Each operator's own
/// expressions follow.
struct JoinParts {
    on: Vec<(PhysicalExprRef, PhysicalExprRef)>,
    left_time: PhysicalExprRef,
    right_time: PhysicalExprRef,
    tiebreak: Vec<PhysicalSortExpr>,
    known_at: Option<PhysicalExprRef>,
}

impl JoinParts {
    /// How many expressions the parts of a join with `header` take.
    fn len(header: &Header) -> usize {
        2 * header.keys + 2 + header.tiebreak.len() + usize::from(header.known_at)
    }

    /// The expressions, in the codec's order.
    fn exprs(
        on: &[(PhysicalExprRef, PhysicalExprRef)],
        (left_time, right_time): (&PhysicalExprRef, &PhysicalExprRef),
        tiebreak: &[PhysicalSortExpr],
        known_at: Option<&PhysicalExprRef>,
    ) -> Vec<PhysicalExprRef> {
        let mut exprs: Vec<PhysicalExprRef> = on.iter().map(|(l, _)| l.clone()).collect();
        exprs.extend(on.iter().map(|(_, r)| r.clone()));
        exprs.push(left_time.clone());
        exprs.push(right_time.clone());
        exprs.extend(tiebreak.iter().map(|s| s.expr.clone()));
        exprs.extend(known_at.cloned());
        exprs
    }
}

/// The tie-break directions as the header holds them: (ascending, nulls first).
fn tiebreak_header(tiebreak: &[PhysicalSortExpr]) -> Vec<(bool, bool)> {
    tiebreak
        .iter()
        .map(|s| (!s.options.descending, s.options.nulls_first))
        .collect()
}

/// The mode the header names.
fn mode_from(header: &Header) -> AsOfJoinMode {
    if header.co_partitioned {
        AsOfJoinMode::CoPartitioned
    } else {
        AsOfJoinMode::SharedBuild
    }
}

impl AsOfPhysicalCodec {
    fn parse(
        &self,
        node: &PhysicalExprNode,
        ctx: &TaskContext,
        schema: &Schema,
    ) -> Result<PhysicalExprRef> {
        parse_physical_expr(node, ctx, schema, self)
    }

    /// The literal value of `node`.
    fn literal(
        &self,
        node: &PhysicalExprNode,
        ctx: &TaskContext,
        schema: &Schema,
    ) -> Result<ScalarValue> {
        self.parse(node, ctx, schema)?
            .downcast_ref::<Literal>()
            .map(|l| l.value().clone())
            .ok_or_else(|| internal_datafusion_err!("as-of codec: literal expected"))
    }

    /// The shared parts from the first [`JoinParts::len`] of `nodes`.
    fn decode_parts(
        &self,
        header: &Header,
        nodes: &[PhysicalExprNode],
        (ls, rs): (&Schema, &Schema),
        ctx: &TaskContext,
    ) -> Result<JoinParts> {
        let (k, t) = (header.keys, header.tiebreak.len());
        let on = (0..k)
            .map(|i| {
                Ok((
                    self.parse(&nodes[i], ctx, ls)?,
                    self.parse(&nodes[k + i], ctx, rs)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let tiebreak = header
            .tiebreak
            .iter()
            .zip(&nodes[2 * k + 2..2 * k + 2 + t])
            .map(|((asc, nulls_first), node)| {
                Ok(PhysicalSortExpr::new(
                    self.parse(node, ctx, rs)?,
                    SortOptions {
                        descending: !asc,
                        nulls_first: *nulls_first,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let known_at = header
            .known_at
            .then(|| self.parse(&nodes[2 * k + 2 + t], ctx, rs))
            .transpose()?;
        Ok(JoinParts {
            on,
            left_time: self.parse(&nodes[2 * k], ctx, ls)?,
            right_time: self.parse(&nodes[2 * k + 1], ctx, rs)?,
            tiebreak,
            known_at,
        })
    }

    /// Writes `exprs`, each a length-delimited protobuf message.
    fn write_exprs(&self, exprs: &[PhysicalExprRef], buf: &mut Vec<u8>) -> Result<()> {
        for expr in exprs {
            serialize_physical_expr(expr, self)?
                .encode_length_delimited(buf)
                .map_err(|e| internal_datafusion_err!("as-of codec: {e}"))?;
        }
        Ok(())
    }

    /// A window join: the as-of layout (keys, times, tie-break, knowledge time), then the
    /// aggregates' arguments, then their numeric widths.
    fn encode_window(&self, join: &WindowJoinExec, buf: &mut Vec<u8>) -> Result<()> {
        let op = if join.strict() {
            AsOfOperator::Gt
        } else {
            AsOfOperator::GtEq
        };
        let mut header = header(
            join.on().len(),
            join.null_equal(),
            op,
            AsOfJoinType::Left,
            None,
            tiebreak_header(join.tiebreak()),
            join.known_at().is_some(),
        );
        header.co_partitioned = join.mode() == AsOfJoinMode::CoPartitioned;
        header.left_build = join.build() == WindowBuild::Left;
        header.aggregates = join
            .aggregates()
            .iter()
            .map(|a| aggregate_header(&a.name, a.function, a.k, &a.width, a.arg.is_some()))
            .collect();
        let schema = datafusion_proto::protobuf::Schema::try_from(join.output_schema().as_ref())?;
        header.output_schema = Some(schema.encode_to_vec());
        write_header(&header, buf)?;
        let mut exprs = JoinParts::exprs(join.on(), join.times(), join.tiebreak(), join.known_at());
        exprs.extend(join.aggregates().iter().filter_map(|a| a.arg.clone()));
        exprs.extend(
            number_widths(join.aggregates().iter().map(|a| &a.width))
                .into_iter()
                .map(|v| Arc::new(Literal::new(v)) as Arc<dyn PhysicalExpr>),
        );
        self.write_exprs(&exprs, buf)
    }

    fn decode_window(
        &self,
        header: &Header,
        nodes: &[PhysicalExprNode],
        left: &Arc<dyn ExecutionPlan>,
        right: &Arc<dyn ExecutionPlan>,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (ls, rs) = (left.schema(), right.schema());
        let args = header.aggregates.iter().filter(|a| a.has_arg).count();
        let widths = header
            .aggregates
            .iter()
            .filter(|a| a.width_nanos.is_none())
            .count();
        let base = JoinParts::len(header);
        if nodes.len() != base + args + widths {
            return Err(internal_datafusion_err!(
                "as-of codec: {} expressions, expected {}",
                nodes.len(),
                base + args + widths
            ));
        }
        let parts = self.decode_parts(header, nodes, (&ls, &rs), ctx)?;
        let arg_exprs = nodes[base..base + args]
            .iter()
            .map(|n| self.parse(n, ctx, &rs))
            .collect::<Result<Vec<_>>>()?;
        let numbers = nodes[base + args..]
            .iter()
            .map(|n| self.literal(n, ctx, &ls))
            .collect::<Result<Vec<_>>>()?;
        let aggregates = header_aggregates(header, numbers, arg_exprs)?
            .into_iter()
            .map(|(aggregate, arg)| PhysicalWindowAggregate::new(&aggregate, arg))
            .collect();
        let schema = header
            .output_schema
            .as_deref()
            .ok_or_else(|| internal_datafusion_err!("as-of codec: window join schema"))?;
        let schema = datafusion_proto::protobuf::Schema::decode(schema)
            .map_err(|e| internal_datafusion_err!("as-of codec: {e}"))?;
        let exec = WindowJoinExec::try_new(
            left.clone(),
            right.clone(),
            parts.on,
            header.null_equal.clone(),
            parts.left_time,
            parts.right_time,
            op_from(&header.op)? == AsOfOperator::Gt,
            parts.tiebreak,
            parts.known_at,
            aggregates,
            Arc::new(Schema::try_from(&schema)?),
        )?;
        let build = match header.left_build {
            true => WindowBuild::Left,
            false => WindowBuild::Right,
        };
        Ok(Arc::new(
            exec.with_mode(mode_from(header)).with_build(build),
        ))
    }
}

impl PhysicalExtensionCodec for AsOfPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some((header, rest)) = read_header(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let [left, right] = inputs else {
            return Err(internal_datafusion_err!(
                "as-of codec: {} inputs",
                inputs.len()
            ));
        };
        let (ls, rs) = (left.schema(), right.schema());
        let nodes = read_messages::<PhysicalExprNode>(rest)?;
        if !header.aggregates.is_empty() {
            return self.decode_window(&header, &nodes, left, right, ctx);
        }
        let base = JoinParts::len(&header);
        let expected = base + usize::from(header.tolerance_number);
        if nodes.len() != expected {
            return Err(internal_datafusion_err!(
                "as-of codec: {} expressions, expected {expected}",
                nodes.len()
            ));
        }
        let parts = self.decode_parts(&header, &nodes, (&ls, &rs), ctx)?;
        let number = header
            .tolerance_number
            .then(|| self.literal(&nodes[base], ctx, &ls))
            .transpose()?;
        let exec = AsOfJoinExec::try_new(
            left.clone(),
            right.clone(),
            parts.on,
            header.null_equal.clone(),
            parts.left_time,
            parts.right_time,
            op_from(&header.op)?,
            join_type_from(&header.join_type)?,
            tolerance_from(&header, number)?,
            parts.tiebreak,
            parts.known_at,
            output_schema(&ls, &rs),
        )?;
        let mode = mode_from(&header);
        let exec = match header.right_output {
            Some(keep) => exec.with_right_output(keep)?,
            None => exec,
        };
        let build = match header.left_build {
            true => AsOfBuild::Left,
            false => AsOfBuild::Right,
        };
        Ok(Arc::new(exec.with_mode(mode).with_build(build)))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(window) = node.downcast_ref::<WindowJoinExec>() {
            return self.encode_window(window, buf);
        }
        let Some(join) = node.downcast_ref::<AsOfJoinExec>() else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        let mut header = header(
            join.on().len(),
            join.null_equal(),
            join.op(),
            join.join_type(),
            join.tolerance(),
            tiebreak_header(join.tiebreak()),
            join.known_at().is_some(),
        );
        if join.right_output().len() < join.right().schema().fields().len() {
            header.right_output = Some(join.right_output().to_vec());
        }
        header.co_partitioned = join.mode() == AsOfJoinMode::CoPartitioned;
        header.left_build = join.build() == AsOfBuild::Left;
        write_header(&header, buf)?;
        let mut exprs = JoinParts::exprs(join.on(), join.times(), join.tiebreak(), join.known_at());
        if let Some(Tolerance::Number(value)) = join.tolerance() {
            exprs.push(Arc::new(Literal::new(value.clone())) as Arc<dyn PhysicalExpr>);
        }
        self.write_exprs(&exprs, buf)
    }
}
