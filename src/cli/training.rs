//! The batch commands around the registry and training sets: `plan`, `apply`, `export`,
//! `reproduce` and `audit`.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::{AuditArgs, DefinitionsArgs, ExportArgs, ReproduceArgs, VerifyArgs};
use super::print::{check_destination, print_stream};
use crate::engine::{DefinitionPlan, Engine, ExportProgress, is_manifest, manifest_location};
use crate::error::{PitlakeError, Result};

fn print_plan(plan: &DefinitionPlan, applied: bool) {
    let base = match plan.base_version {
        Some(v) => format!("registry version {v}"),
        None => "an empty registry".to_string(),
    };
    if plan.changes.is_empty() {
        println!("No changes: the registry ({base}) matches the definitions.");
        return;
    }
    let verb = if applied { "Applied" } else { "Would apply" };
    println!("{verb} {} change(s) to {base}:", plan.changes.len());
    for change in &plan.changes {
        let sign = match change.action {
            "create" => "+",
            "drop" => "-",
            _ => "~",
        };
        let detail = if change.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", change.detail)
        };
        println!(
            "  {sign} {} {} `{}`{detail}",
            change.action, change.kind, change.name
        );
    }
    match (applied, plan.applied_version) {
        (true, Some(v)) => println!("Registry version {v}."),
        (false, _) => println!("Run `pitlake apply` with the same folder to make these changes."),
        (true, None) => {}
    }
}

/// `pitlake plan DIR`.
pub async fn run_plan(engine: &Engine, args: DefinitionsArgs) -> Result<()> {
    let plan = engine.plan_definitions(&args.dir).await?;
    print_plan(&plan, false);
    Ok(())
}

/// `pitlake apply DIR`.
pub async fn run_apply(engine: &Engine, args: DefinitionsArgs) -> Result<()> {
    engine.warehouse().ensure_writable()?;
    let plan = engine.apply_definitions(&args.dir).await?;
    print_plan(&plan, true);
    Ok(())
}

/// Reads the training-set text from the argument, `-` (standard input) or `--file`.
fn training_set_text(text: Option<&str>, file: Option<&std::path::Path>) -> Result<String> {
    if let Some(path) = file {
        return std::fs::read_to_string(path).map_err(|e| PitlakeError::Input {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        });
    }
    match text {
        Some("-") | None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            Ok(text)
        }
        Some(text) => Ok(text.to_string()),
    }
}

/// Draws export progress on a terminal: rows written so far.
struct ExportBar {
    bar: ProgressBar,
    rows: AtomicU64,
}

impl ExportProgress for ExportBar {
    fn rows(&self, rows: u64) {
        let total = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        self.bar.set_message(format!("{total} rows"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `pitlake export`.
pub async fn run_export(engine: &Engine, args: ExportArgs) -> Result<()> {
    let text = training_set_text(args.training_set.as_deref(), args.file.as_deref())?;
    let (spec, statement) = engine.parse_training_set(&text)?;
    let progress: Option<Arc<dyn ExportProgress>> = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} exporting {msg} ({elapsed})")
                .map_err(|e| PitlakeError::Internal(e.to_string()))?,
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(Arc::new(ExportBar {
            bar,
            rows: AtomicU64::new(0),
        }))
    } else {
        None
    };
    let manifest = engine
        .export_training_set(
            &spec,
            &statement,
            &args.to,
            args.format.as_deref(),
            progress,
        )
        .await?;
    println!(
        "Exported {} rows to {} ({}).",
        manifest.output.rows, manifest.output.url, manifest.output.format
    );
    println!("Content hash {}.", manifest.output.content_hash);
    let inputs: Vec<String> = manifest
        .plan
        .inputs
        .iter()
        .map(|i| format!("{} v{}", i.table, i.version))
        .collect();
    println!(
        "Read {}{}.",
        inputs.join(", "),
        manifest
            .plan
            .registry_version
            .map(|v| format!(" with registry version {v}"))
            .unwrap_or_default()
    );
    println!("Manifest: {}", manifest_location(&args.to));
    Ok(())
}

/// `pitlake reproduce`: exit 1 when the rebuilt rows differ from the export, or the exported
/// file is not the one the manifest describes.
pub async fn run_reproduce(engine: &Engine, args: ReproduceArgs) -> Result<()> {
    let outcome = engine.reproduce(&args.manifest, args.to.as_deref()).await?;
    if let Some(to) = &outcome.written_to {
        println!("Rebuilt rows written to {to}.");
    }
    if outcome.ok() {
        println!("Identical: content hash {}.", outcome.actual);
        println!("The export at {} matches its manifest:", outcome.file.url);
        for line in outcome.file.report() {
            println!("  {line}");
        }
        return Ok(());
    }
    let mut problems = Vec::new();
    if outcome.expected != outcome.actual {
        problems.push(format!(
            "the rebuilt training set differs from the export: the manifest records {}, the \
             rebuild gives {}. An input was changed in place (a vacuum or a rewrite of the \
             pinned versions), or the pitlake version differs",
            outcome.expected, outcome.actual
        ));
    } else {
        println!("Identical: content hash {}.", outcome.actual);
    }
    if !outcome.file.ok() {
        problems.push(outcome.file.mismatch());
    }
    Err(PitlakeError::Execution(problems.join("; and ")))
}

/// `pitlake verify`: exit 1 when the export is not the one its manifest describes.
pub async fn run_verify(engine: &Engine, args: VerifyArgs) -> Result<()> {
    let verification = engine.verify(&args.manifest).await?;
    if !verification.ok() {
        for note in &verification.notes {
            eprintln!("note: {note}");
        }
        return Err(PitlakeError::Execution(verification.mismatch()));
    }
    println!(
        "Verified: the {} export at {} matches its manifest.",
        verification.format, verification.url
    );
    for line in verification.report() {
        println!("  {line}");
    }
    Ok(())
}

/// `pitlake audit`: prints one row per feature view; exit 1 when any row is not ok.
pub async fn run_audit(engine: &Engine, args: AuditArgs) -> Result<()> {
    let plan = if is_manifest(&args.target) {
        engine.read_manifest(&args.target).await?.plan
    } else {
        let (spec, _) = engine.parse_training_set(&args.target)?;
        engine.plan_training_set(&spec).await?
    };
    let stream = engine.audit(&plan).await?;
    let schema = stream.schema();
    let batches: Vec<RecordBatch> = {
        use futures::TryStreamExt;
        stream.try_collect().await?
    };
    let failing: Vec<String> = batches
        .iter()
        .flat_map(|batch| {
            let ok = batch
                .column_by_name("ok")
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned());
            let views = batch.column_by_name("view").and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .cloned()
            });
            match (ok, views) {
                (Some(ok), Some(views)) => (0..ok.len())
                    .filter(|&i| !ok.value(i))
                    .map(|i| views.value(i).to_string())
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            }
        })
        .collect();
    check_destination(args.format, std::io::stdout().is_terminal())?;
    let replay = Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(batches.into_iter().map(Ok)),
    ));
    let mut out = std::io::BufWriter::new(std::io::stdout());
    print_stream(replay, args.format, None, &mut out).await?;
    out.flush()?;
    if failing.is_empty() {
        Ok(())
    } else {
        Err(PitlakeError::Execution(format!(
            "the training set fails its audit for {}: see after_label_time, older_than_ttl, \
             not_yet_known and the row counts above",
            failing.join(", ")
        )))
    }
}
