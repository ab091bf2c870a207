//! Printing results: a table (comfy-table through Arrow's formatter, NULL shown, a row cap with a
//! "N more rows" line), CSV, JSON, newline-delimited JSON, or Parquet. Every format streams: only
//! the rows a table shows are held in memory.

use std::io::Write;
use std::str::FromStr;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use comfy_table::{Cell, ContentArrangement, Table, presets};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

use crate::engine::ParquetOut;
use crate::error::{PitlakeError, Result};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned table for people.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Parquet (to a file or a pipe, never to a terminal).
    Parquet,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            "ndjson" | "jsonl" => Ok(OutputFormat::Ndjson),
            "parquet" => Ok(OutputFormat::Parquet),
            other => Err(format!(
                "unknown format `{other}`; use table, csv, json, ndjson or parquet"
            )),
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Parquet => "parquet",
        };
        f.write_str(name)
    }
}

/// What was printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Printed {
    /// Rows in the result.
    pub rows: usize,
}

const NULL: &str = "NULL";

fn format_options() -> FormatOptions<'static> {
    FormatOptions::default()
        .with_null(NULL)
        .with_display_error(true)
}

/// Renders batches as a comfy-table, at most `max_rows` rows (`None` = all).
pub fn render_table(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    max_rows: Option<usize>,
    total_rows: usize,
) -> Result<String> {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(schema.fields().iter().map(|f| Cell::new(f.name())));
    let options = format_options();
    let mut shown = 0;
    'outer: for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if max_rows.is_some_and(|max| shown >= max) {
                break 'outer;
            }
            table.add_row(formatters.iter().map(|f| Cell::new(f.value(row))));
            shown += 1;
        }
    }
    let mut out = table.to_string();
    out.push('\n');
    let hidden = total_rows - shown;
    if hidden > 0 {
        out.push_str(&format!(
            "… {hidden} more row{} ({total_rows} in all; use --max-rows or \\maxrows to see more)\n",
            if hidden == 1 { "" } else { "s" }
        ));
    } else {
        out.push_str(&format!(
            "{total_rows} row{}\n",
            if total_rows == 1 { "" } else { "s" }
        ));
    }
    Ok(out)
}

/// Streams a result to `out` in `format`. Table output keeps the first `max_rows` rows and
/// counts the rest.
pub async fn print_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    max_rows: Option<usize>,
    out: &mut (dyn Write + Send),
) -> Result<Printed> {
    let schema = stream.schema();
    let mut rows = 0;
    match format {
        OutputFormat::Table => {
            let mut kept: Vec<RecordBatch> = Vec::new();
            let mut kept_rows = 0;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                if max_rows.is_none_or(|max| kept_rows < max) {
                    kept_rows += batch.num_rows();
                    kept.push(batch);
                }
            }
            out.write_all(render_table(&schema, &kept, max_rows, rows)?.as_bytes())?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_null(String::new())
                .build(&mut *out);
            let mut wrote_any = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
                wrote_any = true;
            }
            if !wrote_any {
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.finish()?;
            drop(writer);
            out.write_all(b"\n")?;
        }
        OutputFormat::Ndjson => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.finish()?;
        }
        OutputFormat::Parquet => {
            let threads = crate::parallel::cores();
            let mut writer = ParquetOut::try_new(&mut *out, schema.clone(), None, threads)?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.close()?;
        }
    }
    out.flush()?;
    Ok(Printed { rows })
}

/// Refuses Parquet to a terminal, where it would be unreadable bytes.
pub fn check_destination(format: OutputFormat, to_terminal: bool) -> Result<()> {
    if format == OutputFormat::Parquet && to_terminal {
        return Err(PitlakeError::Config {
            name: "--format parquet".into(),
            message: "writes binary data; give --output FILE or redirect to a file".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn table_shows_null_and_caps_rows() {
        let b = batch();
        let text = render_table(&b.schema(), std::slice::from_ref(&b), Some(2), 3).unwrap();
        assert!(text.contains("NULL"), "{text}");
        assert!(!text.contains(" c "), "{text}");
        assert!(text.contains("1 more row (3 in all"), "{text}");
        let all = render_table(&b.schema(), &[b], None, 3).unwrap();
        assert!(all.contains(" c "), "{all}");
        assert!(all.ends_with("3 rows\n"), "{all}");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("CSV".parse::<OutputFormat>(), Ok(OutputFormat::Csv));
        assert!("xml".parse::<OutputFormat>().is_err());
    }
}
