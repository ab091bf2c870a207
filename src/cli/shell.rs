//! The interactive shell: line editing and history (rustyline), statements ended by `;` across
//! lines, and backslash commands.

use std::str::FromStr;
use std::time::Instant;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::cli::args::ShellArgs;
use crate::cli::print::{OutputFormat, print_stream, render_table};
use crate::engine::TableName;
use crate::engine::{Engine, Output, RunOptions};
use crate::error::{PitlakeError, Result};

/// A backslash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `\q`: leave the shell.
    Quit,
    /// `\?`: list the commands.
    Help,
    /// `\d`: list the tables.
    ListTables,
    /// `\d t`: a table's columns and types.
    DescribeTable(String),
    /// `\history t [n]`: a table's commits.
    History(String, Option<usize>),
    /// `\timing [on|off]`: print how long statements take.
    Timing(Option<bool>),
    /// `\format table|csv|json|ndjson`: how results print.
    Format(OutputFormat),
    /// `\maxrows n`: rows shown per result (0: all).
    MaxRows(usize),
}

/// The commands and their help, in the order `\?` lists them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("\\d", "list tables"),
    ("\\d TABLE", "show a table's columns and types"),
    ("\\history TABLE [N]", "show a table's commits (the last N)"),
    ("\\timing [on|off]", "print how long each statement takes"),
    ("\\format table|csv|json|ndjson", "set the output format"),
    ("\\maxrows N", "rows shown per result (0 = all)"),
    ("\\?", "this help"),
    ("\\q", "quit (or Ctrl-D)"),
];

impl FromStr for Command {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut words = s.split_whitespace();
        let name = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let usage = |n: &str| {
            COMMANDS
                .iter()
                .find(|(c, _)| c.split_whitespace().next() == Some(n))
                .map(|(c, _)| format!("usage: {c}"))
                .unwrap_or_default()
        };
        match (name, args.as_slice()) {
            ("\\q" | "\\quit", []) => Ok(Command::Quit),
            ("\\?" | "\\h" | "\\help", []) => Ok(Command::Help),
            ("\\d", []) => Ok(Command::ListTables),
            ("\\d", [table]) => Ok(Command::DescribeTable(table.to_string())),
            ("\\history", [table]) => Ok(Command::History(table.to_string(), None)),
            ("\\history", [table, n]) => n
                .parse()
                .map(|n| Command::History(table.to_string(), Some(n)))
                .map_err(|_| usage("\\history")),
            ("\\timing", []) => Ok(Command::Timing(None)),
            ("\\timing", ["on"]) => Ok(Command::Timing(Some(true))),
            ("\\timing", ["off"]) => Ok(Command::Timing(Some(false))),
            ("\\format", [format]) => format
                .parse::<OutputFormat>()
                .and_then(|f| {
                    if f == OutputFormat::Parquet {
                        Err("the shell cannot print parquet; use `pitlake sql --format parquet --output FILE`".to_string())
                    } else {
                        Ok(f)
                    }
                })
                .map(Command::Format),
            ("\\maxrows", [n]) => n
                .parse()
                .map(Command::MaxRows)
                .map_err(|_| usage("\\maxrows")),
            (
                "\\q" | "\\quit" | "\\?" | "\\d" | "\\history" | "\\timing" | "\\format"
                | "\\maxrows",
                _,
            ) => Err(usage(name)),
            _ => Err(format!("unknown command `{name}`; \\? lists the commands")),
        }
    }
}

struct Shell<'a> {
    engine: &'a Engine,
    format: OutputFormat,
    max_rows: usize,
    timing: bool,
}

fn help() -> String {
    let width = COMMANDS.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut out = String::from("SQL statements end with `;`. Commands:\n");
    for (command, text) in COMMANDS {
        out.push_str(&format!("  {command:width$}  {text}\n"));
    }
    out
}

/// Whether the buffered text ends a statement: its last significant character is `;`.
fn complete(buffer: &str) -> bool {
    let ranges = crate::engine::split_statements(buffer);
    match ranges.last() {
        // Text after the last `;` that is not just whitespace/comments is unfinished.
        Some(last) => last.end < buffer.len() && buffer[last.end..].trim_start().starts_with(';'),
        None => buffer.contains(';'),
    }
}

pub async fn run(engine: &Engine, args: ShellArgs) -> Result<()> {
    let mut editor = DefaultEditor::new().map_err(|e| PitlakeError::Internal(e.to_string()))?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pitlake_history"));
    if let Some(path) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(path);
    }
    let mut shell = Shell {
        engine,
        format: args.format,
        max_rows: args.max_rows,
        timing: false,
    };
    println!(
        "pitlake {} — warehouse {} — \\? for help, \\q to quit",
        env!("CARGO_PKG_VERSION"),
        engine.warehouse().location().display()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "pitlake> "
        } else {
            "     -> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with('\\') {
                    let _ = editor.add_history_entry(line.as_str());
                    match line.trim().parse::<Command>() {
                        Ok(Command::Quit) => break,
                        Ok(command) => {
                            if let Err(err) = shell.command(command).await {
                                eprintln!("Error: {err}");
                            }
                        }
                        Err(message) => eprintln!("{message}"),
                    }
                    continue;
                }
                if !buffer.is_empty() {
                    buffer.push('\n');
                }
                buffer.push_str(&line);
                if complete(&buffer) {
                    let _ = editor.add_history_entry(buffer.as_str());
                    let sql = std::mem::take(&mut buffer);
                    if let Err(err) = shell.statements(&sql, &mut editor).await {
                        eprintln!("Error: {err}");
                    }
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(err) => return Err(PitlakeError::Internal(err.to_string())),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

impl Shell<'_> {
    fn max_rows(&self) -> Option<usize> {
        (self.max_rows > 0).then_some(self.max_rows)
    }

    async fn statements(&mut self, sql: &str, editor: &mut DefaultEditor) -> Result<()> {
        for statement in self.engine.parse(sql)? {
            let started = Instant::now();
            let output = match self
                .engine
                .run(statement.clone(), RunOptions::default())
                .await
            {
                Err(PitlakeError::ConfirmationRequired { what }) => {
                    let answer = editor
                        .readline(&format!("{what}. Continue? [y/N] "))
                        .unwrap_or_default();
                    if matches!(answer.trim(), "y" | "Y" | "yes") {
                        self.engine
                            .run(statement, RunOptions { force: true })
                            .await?
                    } else {
                        println!("cancelled");
                        continue;
                    }
                }
                other => other?,
            };
            self.print(output).await?;
            if self.timing {
                println!("Time: {:.3} s", started.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    async fn print(&self, output: Output) -> Result<()> {
        match output {
            Output::Rows(stream) => {
                let mut stdout = std::io::stdout();
                print_stream(stream, self.format, self.max_rows(), &mut stdout).await?;
            }
            Output::Done(message) => println!("{message}"),
        }
        Ok(())
    }

    async fn command(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Quit => {}
            Command::Help => print!("{}", help()),
            Command::ListTables => {
                let tables = self.engine.list_tables().await?;
                if tables.is_empty() {
                    println!(
                        "no tables yet: `pitlake ingest` loads files, CREATE TABLE … AS SELECT makes one"
                    );
                }
                for table in tables {
                    println!("{table}");
                }
            }
            Command::DescribeTable(raw) => {
                let name = TableName::parse(&raw)?;
                let columns = self.engine.describe_table(&name).await?;
                let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
                    arrow::datatypes::Field::new("column", arrow::datatypes::DataType::Utf8, false),
                    arrow::datatypes::Field::new("type", arrow::datatypes::DataType::Utf8, false),
                    arrow::datatypes::Field::new(
                        "nullable",
                        arrow::datatypes::DataType::Boolean,
                        false,
                    ),
                    arrow::datatypes::Field::new(
                        "partition",
                        arrow::datatypes::DataType::Boolean,
                        false,
                    ),
                ]));
                let batch = arrow::array::RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        std::sync::Arc::new(arrow::array::StringArray::from_iter_values(
                            columns.iter().map(|c| c.name.clone()),
                        )),
                        std::sync::Arc::new(arrow::array::StringArray::from_iter_values(
                            columns.iter().map(|c| c.data_type.to_string()),
                        )),
                        std::sync::Arc::new(arrow::array::BooleanArray::from_iter(
                            columns.iter().map(|c| Some(c.nullable)),
                        )),
                        std::sync::Arc::new(arrow::array::BooleanArray::from_iter(
                            columns.iter().map(|c| Some(c.partition)),
                        )),
                    ],
                )?;
                print!("{}", render_table(&schema, &[batch], None, columns.len())?);
            }
            Command::History(raw, limit) => {
                let name = TableName::parse(&raw)?;
                let stream = self.engine.history(&name, limit).await?;
                self.print(Output::Rows(stream)).await?;
            }
            Command::Timing(on) => {
                self.timing = on.unwrap_or(!self.timing);
                println!("timing is {}", if self.timing { "on" } else { "off" });
            }
            Command::Format(format) => {
                self.format = format;
                println!("output format is {format}");
            }
            Command::MaxRows(n) => {
                self.max_rows = n;
                println!(
                    "showing {}",
                    if n == 0 {
                        "all rows".to_string()
                    } else {
                        format!("at most {n} rows")
                    }
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!("\\q".parse::<Command>(), Ok(Command::Quit));
        assert_eq!("\\d".parse::<Command>(), Ok(Command::ListTables));
        assert_eq!(
            "\\d orders".parse::<Command>(),
            Ok(Command::DescribeTable("orders".into()))
        );
        assert_eq!(
            "\\history orders 5".parse::<Command>(),
            Ok(Command::History("orders".into(), Some(5)))
        );
        assert_eq!(
            "\\format csv".parse::<Command>(),
            Ok(Command::Format(OutputFormat::Csv))
        );
        assert!("\\format parquet".parse::<Command>().is_err());
        assert!(
            "\\history"
                .parse::<Command>()
                .unwrap_err()
                .contains("usage")
        );
        assert!("\\zz".parse::<Command>().unwrap_err().contains("unknown"));
        assert_eq!(
            "\\timing on".parse::<Command>(),
            Ok(Command::Timing(Some(true)))
        );
    }

    #[test]
    fn statements_end_with_semicolons() {
        assert!(!complete("select 1"));
        assert!(complete("select 1;"));
        assert!(complete("select 1;  "));
        assert!(!complete("select ';'"));
        assert!(complete("select\n 1\n;"));
        assert!(!complete("select 1; select 2"));
        assert!(complete("select 1 -- done;\n;"));
    }

    #[test]
    fn help_lists_every_command() {
        let text = help();
        for (command, _) in COMMANDS {
            assert!(text.contains(command));
        }
    }
}
