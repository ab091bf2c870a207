//! Parquet output with its columns encoded on every core.
//!
//! [`parquet::arrow::ArrowWriter`] encodes one column after another on the thread that calls
//! it, so a plan that emits its rows at the end (a join that indexes its labels) writes them on
//! one core while the others wait. The CLI's Parquet output and `pitlake export` write with
//! [`ParquetOut`] instead. It writes the same file as `ArrowWriter` with the same properties
//! (the same schema, Arrow metadata, row groups and pages), but encodes the rows it has
//! gathered a column per thread: batches are buffered up to [`ENCODE_ROWS`] rows, then each
//! column's slice of them is written to that column's writer, the columns dealt to up to one
//! thread per core. That encoding runs in the background while the caller goes on making the
//! next rows (an export hashing them): the next [`ParquetOut::write`] that has gathered enough
//! waits for it first, so at most two lots of rows are held (the only extra memory). A row
//! group is closed at the properties' row count, as `ArrowWriter` closes it.
//!
//! With the default properties, the file's properties are settled when the first lot of rows
//! is encoded: a column of fixed-width values (numbers, times) whose first lot is nearly all
//! distinct ([`DISTINCT_SHARE`]) is written without a dictionary. `ArrowWriter` would build
//! one for it and drop it once it outgrew its page (1 MiB, 131,072 eight-byte values): work
//! and a larger file for nothing, since a dictionary of values that hardly repeat saves no
//! space. At the shared workload's medium scale (1M rows, 12 random features) that dictionary
//! work was a third of the encoding. Given properties are used as they are.

use std::io::Write;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::{DEFAULT_MAX_ROW_GROUP_ROW_COUNT, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

/// Rows gathered before they are encoded on the cores: enough that starting the threads costs
/// nothing next to the encoding, few enough that the copy held stays small.
pub const ENCODE_ROWS: usize = 1 << 16;

/// A column's first lot written without a dictionary when at least this share of its non-NULL
/// values are distinct (estimated, [`distinct`]) and they are at least [`DISTINCT_MIN`].
pub const DISTINCT_SHARE: f64 = 0.95;
/// Fewer non-NULL values than this in a first lot say too little: the column keeps the
/// default.
const DISTINCT_MIN: usize = 1024;

/// A row group's column writers, per field its leaves' writers.
type Writers = Vec<Vec<ArrowColumnWriter>>;

/// Writes record batches as one Parquet file, encoding columns in parallel.
pub struct ParquetOut<W: Write + Send> {
    /// The file, once its properties are settled (with the first lot of rows, or at the end).
    file: Option<(SerializedFileWriter<W>, ArrowRowGroupWriterFactory)>,
    /// Until then, where it goes and the properties asked for (`None`: the defaults, with
    /// the dictionaries chosen from the first lot).
    start: Option<(W, Option<WriterProperties>)>,
    schema: SchemaRef,
    /// The open row group: the thread encoding rows into its writers, which hands them back.
    open: Option<std::thread::JoinHandle<Result<Writers>>>,
    /// Rows already encoded into the open row group.
    group_rows: usize,
    /// The most rows a row group holds.
    max_group_rows: usize,
    /// Row groups closed so far.
    groups: usize,
    /// Batches not yet encoded, and their rows.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    threads: usize,
}

impl<W: Write + Send> ParquetOut<W> {
    /// A writer of `schema` to `out` with `props` (`None`: the defaults), encoding on up to
    /// `threads` threads.
    pub fn try_new(
        out: W,
        schema: SchemaRef,
        props: Option<WriterProperties>,
        threads: usize,
    ) -> Result<Self> {
        let max_group_rows = props
            .as_ref()
            .and_then(|p| p.max_row_group_row_count())
            .unwrap_or(DEFAULT_MAX_ROW_GROUP_ROW_COUNT)
            .max(1);
        // A schema Parquet cannot hold is refused now, not at the first rows.
        ArrowSchemaConverter::new().convert(&schema)?;
        Ok(Self {
            file: None,
            start: Some((out, props)),
            schema,
            open: None,
            group_rows: 0,
            max_group_rows,
            groups: 0,
            pending: Vec::new(),
            pending_rows: 0,
            threads: threads.max(1),
        })
    }

    /// The file: set up on first use, as `ArrowWriter` sets it up (the Parquet schema, the
    /// Arrow schema in the metadata), with the properties asked for or chosen from the rows
    /// about to be encoded (`first`); its row groups are then written here.
    fn file(
        &mut self,
        first: &[RecordBatch],
    ) -> Result<&mut (SerializedFileWriter<W>, ArrowRowGroupWriterFactory)> {
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                let Some((out, props)) = self.start.take() else {
                    return Err(ParquetError::General("the Parquet file is gone".into()));
                };
                let props = props.unwrap_or_else(|| chosen_properties(&self.schema, first));
                ArrowWriter::try_new(out, self.schema.clone(), Some(props))?
                    .into_serialized_writer()?
            }
        };
        Ok(self.file.insert(file))
    }

    /// Adds `batch`'s rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(ParquetError::General(format!(
                "a batch of {} does not match the file's schema {}",
                batch.schema(),
                self.schema
            )));
        }
        let mut batch = batch.clone();
        while batch.num_rows() > 0 {
            // Never past the end of the open row group.
            let room = self.max_group_rows - self.group_rows - self.pending_rows;
            let take = batch.num_rows().min(room);
            self.pending.push(batch.slice(0, take));
            self.pending_rows += take;
            batch = batch.slice(take, batch.num_rows() - take);
            if self.group_rows + self.pending_rows == self.max_group_rows {
                self.encode()?;
                self.close_group()?;
            } else if self.pending_rows >= ENCODE_ROWS {
                self.encode()?;
            }
        }
        Ok(())
    }

    /// Writes what is left and the footer.
    pub fn close(mut self) -> Result<()> {
        self.encode()?;
        self.close_group()?;
        self.file(&[])?;
        if let Some((file, _)) = self.file.take() {
            file.close()?;
        }
        Ok(())
    }

    /// Starts encoding the pending rows into the open row group (opening one if none is) on a
    /// background thread, once the rows before them are encoded.
    fn encode(&mut self) -> Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let open = match self.open.take() {
            Some(open) => writers(open)?,
            None => self.new_group(&pending)?,
        };
        let (schema, threads) = (self.schema.clone(), self.threads);
        let encoding = std::thread::Builder::new()
            .name("parquet-encode".into())
            .spawn(move || encode(&schema, threads, open, &pending))
            .map_err(|e| ParquetError::General(format!("cannot start encoding: {e}")))?;
        self.group_rows += self.pending_rows;
        self.pending_rows = 0;
        self.open = Some(encoding);
        Ok(())
    }

    /// The writers of the next row group, per field (`first`: its first rows).
    fn new_group(&mut self, first: &[RecordBatch]) -> Result<Writers> {
        let groups = self.groups;
        let mut writers = self
            .file(first)?
            .1
            .create_column_writers(groups)?
            .into_iter();
        let per_field: Vec<Vec<_>> = self
            .schema
            .fields()
            .iter()
            .map(|field| writers.by_ref().take(leaves(field.data_type())).collect())
            .collect();
        if writers.next().is_some() || per_field.iter().any(|w| w.is_empty()) {
            return Err(ParquetError::General(
                "the Parquet writers do not match the schema's fields".into(),
            ));
        }
        Ok(per_field)
    }

    /// Closes the open row group (its column chunks finished on the threads) and appends it to
    /// the file.
    fn close_group(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let open = writers(open)?;
        let chunks: Vec<Vec<ArrowColumnChunk>> = on_threads(self.threads, open, |writers| {
            writers.into_iter().map(ArrowColumnWriter::close).collect()
        })?;
        let mut group = self.file(&[])?.0.next_row_group()?;
        for chunk in chunks.into_iter().flatten() {
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        self.groups += 1;
        self.group_rows = 0;
        Ok(())
    }
}

/// A row group's writers, once `encoding` has written the rows given to them.
fn writers(encoding: std::thread::JoinHandle<Result<Writers>>) -> Result<Writers> {
    encoding
        .join()
        .map_err(|_| ParquetError::General("a thread encoding Parquet columns panicked".into()))?
}

/// Writes `pending`'s rows (of `schema`) to `open`, the columns dealt to up to `threads`
/// threads.
fn encode(
    schema: &SchemaRef,
    threads: usize,
    open: Writers,
    pending: &[RecordBatch],
) -> Result<Writers> {
    let fields = schema.fields();
    let jobs: Vec<_> = open.into_iter().enumerate().collect();
    on_threads(threads, jobs, |(f, mut writers)| {
        // Per batch, the field's leaves in the order of its writers.
        for batch in pending {
            let leaves = compute_leaves(&fields[f], batch.column(f))?;
            if leaves.len() != writers.len() {
                return Err(ParquetError::General(format!(
                    "{} has {} leaves, not {}",
                    fields[f].name(),
                    leaves.len(),
                    writers.len()
                )));
            }
            for (writer, leaf) in writers.iter_mut().zip(&leaves) {
                writer.write(leaf)?;
            }
        }
        Ok(writers)
    })
}

/// The default properties, but without a dictionary for each column of fixed-width values
/// whose values in `first` (the file's first lot of rows) are nearly all distinct.
pub(crate) fn chosen_properties(schema: &SchemaRef, first: &[RecordBatch]) -> WriterProperties {
    let mut props = WriterProperties::builder();
    let mut seen = Vec::new();
    for (f, field) in schema.fields().iter().enumerate() {
        let columns: Vec<&dyn Array> = first.iter().map(|b| b.column(f).as_ref()).collect();
        // Too few values to choose: no sketch (128 KiB cleared per column) is spent on them,
        // which a wide schema of few rows would multiply.
        let values: usize = columns.iter().map(|c| c.len() - c.null_count()).sum();
        if values >= DISTINCT_MIN
            && let Some((_, estimate)) = distinct(&columns, &mut seen)
            && estimate >= DISTINCT_SHARE * values as f64
        {
            props =
                props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
    }
    props.build()
}

/// Bits of the sketch [`distinct`] counts with: sixteen per value of a full lot.
const SKETCH_BITS: usize = 1 << 20;

/// For arrays of fixed-width values (numbers, times; `None` for any other type), how many
/// values are not NULL and about how many of those are distinct: each value's bytes hashed to
/// one bit of [`SKETCH_BITS`], the count estimated from the bits left clear (linear counting:
/// within a percent or so for up to a lot of values). `seen` is the sketch, reused.
fn distinct(arrays: &[&dyn Array], seen: &mut Vec<u64>) -> Option<(usize, f64)> {
    let width = arrays.first()?.data_type().primitive_width()?;
    seen.clear();
    seen.resize(SKETCH_BITS / 64, 0);
    let mut values = 0;
    for array in arrays {
        let data = array.to_data();
        let bytes = data.buffers().first()?.as_slice();
        let from = data.offset() * width;
        for (i, value) in bytes
            .get(from..from + data.len() * width)?
            .chunks_exact(width)
            .enumerate()
        {
            if data.is_null(i) {
                continue;
            }
            values += 1;
            // The value's bytes folded into a word, mixed, its top bits the bit to set.
            let mut word = 0u64;
            for part in value.chunks(8) {
                let mut eight = [0u8; 8];
                eight[..part.len()].copy_from_slice(part);
                word = (word ^ u64::from_le_bytes(eight)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            word ^= word >> 29;
            word = word.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            word ^= word >> 32;
            let bit = (word >> (64 - SKETCH_BITS.trailing_zeros())) as usize;
            seen[bit / 64] |= 1 << (bit % 64);
        }
    }
    let clear: u32 = seen.iter().map(|w| w.count_zeros()).sum();
    let m = SKETCH_BITS as f64;
    Some((values, -m * (f64::from(clear.max(1)) / m).ln()))
}

/// How many Parquet leaf columns a field of `data_type` has.
fn leaves(data_type: &DataType) -> usize {
    match data_type {
        DataType::Struct(fields) => fields.iter().map(|f| leaves(f.data_type())).sum(),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => leaves(f.data_type()),
        DataType::Dictionary(_, value) => leaves(value),
        DataType::RunEndEncoded(_, value) => leaves(value.data_type()),
        _ => 1,
    }
}

/// `f` of each item on up to `threads` threads, in order.
fn on_threads<T: Send, R: Send>(
    threads: usize,
    items: Vec<T>,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    crate::parallel::on_threads(threads, items, f, || {
        ParquetError::General("a thread encoding a Parquet column panicked".into())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Float64Array, Int32Array, Int64Array, ListArray, StringArray, StructArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    /// Rows `from..from + n` of a schema with flat, nested and NULL-holding columns.
    fn batch(schema: &SchemaRef, from: i64, n: i64) -> RecordBatch {
        let ids = from..from + n;
        let DataType::Struct(point_fields) = schema.field(4).data_type() else {
            unreachable!("the schema's fifth field is a struct")
        };
        let point = StructArray::new(
            point_fields.clone(),
            vec![
                Arc::new(Int64Array::from_iter(
                    ids.clone().map(|i| (i % 3 != 0).then_some(i * 7)),
                )) as ArrayRef,
                Arc::new(StringArray::from_iter(
                    ids.clone().map(|i| (i % 5 != 0).then(|| format!("p{i}"))),
                )),
            ],
            None,
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(Float64Array::from_iter(
                ids.clone().map(|i| (i % 11 != 0).then_some(i as f64 / 3.0)),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(ids.clone().map(|i| i * 1_000_000))
                    .with_timezone("UTC"),
            ),
            Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
                ids.clone().map(|i| {
                    (i % 7 != 0).then(|| (0..i % 4).map(|j| Some(i + j)).collect::<Vec<_>>())
                }),
            )),
            Arc::new(point),
        ];
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("f", DataType::Float64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new_list("l", Field::new_list_field(DataType::Int64, true), true),
            Field::new_struct(
                "p",
                vec![
                    Field::new("x", DataType::Int64, true),
                    Field::new("label", DataType::Utf8, true),
                ],
                false,
            ),
        ]))
    }

    fn read(bytes: Vec<u8>) -> (Vec<RecordBatch>, Vec<i64>) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        let groups = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        let batches = reader
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        (batches, groups)
    }

    /// The same rows, schema and row groups as `ArrowWriter` writes, and the same bytes, for
    /// batches of any size across row-group boundaries, on one thread or several; with row
    /// groups of several lots of [`ENCODE_ROWS`], rows are gathered while the lot before them
    /// is encoded.
    #[test]
    fn same_file_as_arrow_writer() {
        let schema = schema();
        let lots = ENCODE_ROWS as i64;
        let cases: [(usize, &[i64]); 5] = [
            (1000, &[2500]),
            (1000, &[1, 999, 1, 1499]),
            (1000, &[7; 500]),
            (1000, &[0, 1000, 0, 1]),
            (
                2 * ENCODE_ROWS + 5,
                &[lots - 1, 2, lots, lots + 3, 9, lots / 2],
            ),
        ];
        for (group_rows, sizes) in cases {
            let props = || {
                WriterProperties::builder()
                    .set_max_row_group_row_count(Some(group_rows))
                    .build()
            };
            let mut batches = Vec::new();
            let mut from = 0;
            for &n in sizes {
                batches.push(batch(&schema, from, n));
                from += n;
            }
            let mut expected = Vec::new();
            let mut writer =
                ArrowWriter::try_new(&mut expected, schema.clone(), Some(props())).unwrap();
            for b in &batches {
                writer.write(b).unwrap();
            }
            writer.close().unwrap();
            for threads in [1, 2, 3, 8] {
                let mut got = Vec::new();
                let mut out =
                    ParquetOut::try_new(&mut got, schema.clone(), Some(props()), threads).unwrap();
                for b in &batches {
                    out.write(b).unwrap();
                }
                out.close().unwrap();
                let (rows, groups) = read(got.clone());
                let (want_rows, want_groups) = read(expected.clone());
                assert_eq!(groups, want_groups, "{sizes:?} on {threads}");
                let all = arrow::compute::concat_batches(&schema, &rows).unwrap();
                let want = arrow::compute::concat_batches(&schema, &want_rows).unwrap();
                assert_eq!(all, want, "{sizes:?} on {threads}");
                assert_eq!(got, expected, "{sizes:?} on {threads}: not the same bytes");
            }
        }
    }

    /// Per row group of the file, whether its chunk of `column` has a dictionary page.
    fn dictionaries(bytes: &[u8], column: usize) -> Vec<bool> {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes)).unwrap();
        reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.column(column).dictionary_page_offset().is_some())
            .collect()
    }

    /// With the default properties, a column of fixed-width values whose first lot is nearly
    /// all distinct is written without a dictionary, in every row group; repeating values, a
    /// text column and a mostly NULL one keep theirs. The file is `ArrowWriter`'s with those
    /// properties, byte for byte, and gives back the rows.
    #[test]
    fn distinct_values_are_written_without_a_dictionary() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("f", DataType::Float64, true),
            Field::new("k", DataType::Int32, false),
            Field::new("s", DataType::Utf8, false),
            Field::new("sparse", DataType::Float64, true),
            Field::new("most", DataType::Int64, false),
        ]));
        let batch = |from: i64, n: i64| {
            let ids = from..from + n;
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(ids.clone())),
                Arc::new(Float64Array::from_iter(
                    ids.clone()
                        .map(|i| (i % 10 != 0).then_some(i as f64 * 1.37)),
                )),
                Arc::new(Int32Array::from_iter_values(
                    ids.clone().map(|i| (i % 97) as i32),
                )),
                Arc::new(StringArray::from_iter_values(
                    ids.clone().map(|i| format!("s{i}")),
                )),
                Arc::new(Float64Array::from_iter(
                    ids.clone().map(|i| (i % 100 == 0).then_some(i as f64)),
                )),
                // Nine values in ten distinct: a dictionary still pays.
                Arc::new(Int64Array::from_iter_values(
                    ids.clone().map(|i| i - i % 10 * (i % 10 / 9)),
                )),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        };
        let lots = ENCODE_ROWS as i64;
        let batches = [
            batch(0, lots / 3),
            batch(lots / 3, lots),
            batch(lots * 4 / 3, lots),
        ];
        let mut got = Vec::new();
        let mut out = ParquetOut::try_new(&mut got, schema.clone(), None, 2).unwrap();
        for b in &batches {
            out.write(b).unwrap();
        }
        out.close().unwrap();
        let want = [false, false, true, true, true, true];
        for (column, dictionary) in want.into_iter().enumerate() {
            assert_eq!(
                dictionaries(&got, column),
                vec![dictionary],
                "column {column}"
            );
        }

        let props = WriterProperties::builder()
            .set_column_dictionary_enabled(ColumnPath::from("id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("f"), false)
            .build();
        let mut expected = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut expected, schema.clone(), Some(props)).unwrap();
        for b in &batches {
            writer.write(b).unwrap();
        }
        writer.close().unwrap();
        assert!(
            got == expected,
            "not ArrowWriter's file with those properties"
        );
        let (rows, _) = read(got);
        let all = arrow::compute::concat_batches(&schema, &rows).unwrap();
        assert_eq!(
            all,
            arrow::compute::concat_batches(&schema, &batches).unwrap()
        );
    }

    /// A file whose rows are fewer than one lot is settled with what it has; with no rows, or
    /// under given properties, it is `ArrowWriter`'s default file.
    #[test]
    fn short_files_and_given_properties() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let ids = |n: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef],
            )
            .unwrap()
        };
        let write = |batch: &RecordBatch, props: Option<WriterProperties>| {
            let mut got = Vec::new();
            let mut out = ParquetOut::try_new(&mut got, schema.clone(), props, 2).unwrap();
            out.write(batch).unwrap();
            out.close().unwrap();
            got
        };
        assert_eq!(dictionaries(&write(&ids(5000), None), 0), vec![false]);
        // Too few values to judge.
        assert_eq!(dictionaries(&write(&ids(1000), None), 0), vec![true]);
        let given = WriterProperties::builder().build();
        assert_eq!(dictionaries(&write(&ids(5000), Some(given)), 0), vec![true]);
    }

    /// The estimate of distinct values is within a few percent, NULLs left out, for arrays
    /// sliced or not, and says nothing for types that are not of fixed width.
    #[test]
    fn distinct_values_are_estimated_closely() {
        let mut seen = Vec::new();
        for (n, modulo) in [
            (65_536, 65_536),
            (65_536, 1000),
            (65_536, 60_000),
            (5000, 5000),
            (70_000, 7),
        ] {
            let array = Int64Array::from_iter_values((0..n).map(|i| (i % modulo) * 7919));
            let (values, estimate) = distinct(&[&array], &mut seen).unwrap();
            assert_eq!(values, n as usize);
            let distinct = modulo.min(n) as f64;
            assert!(
                (estimate - distinct).abs() <= 0.02 * distinct,
                "{n} % {modulo}: {estimate}"
            );
        }
        let halves = Float64Array::from_iter((0..40_000).map(|i| (i % 2 == 0).then_some(i as f64)));
        let sliced = halves.slice(10_000, 30_000);
        let (values, estimate) = distinct(&[&halves, &sliced], &mut seen).unwrap();
        assert_eq!(values, 20_000 + 15_000);
        assert!((estimate - 20_000.0).abs() <= 400.0, "{estimate}");
        let text = StringArray::from_iter_values(["a", "b"]);
        assert!(distinct(&[&text], &mut seen).is_none());
    }

    #[test]
    fn empty_file_has_the_schema() {
        let schema = schema();
        let mut got = Vec::new();
        ParquetOut::try_new(&mut got, schema.clone(), None, 2)
            .unwrap()
            .close()
            .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(got)).unwrap();
        assert_eq!(reader.schema().fields(), schema.fields());
        assert_eq!(reader.metadata().num_row_groups(), 0);
    }

    #[test]
    fn a_batch_of_another_schema_is_refused() {
        let schema = schema();
        let mut got = Vec::new();
        let mut out = ParquetOut::try_new(&mut got, schema, None, 2).unwrap();
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        let err = out.write(&other).unwrap_err().to_string();
        assert!(err.contains("does not match the file's schema"), "{err}");
    }
}
