//! `kallista predict` and `kallista evaluate`: a trained model over a table,
//! distributed over the cluster as one query (the prediction functions run
//! where the rows are scanned; the executors write the predictions).
//!
//! `predict` writes one row per input row: the table's plain columns (ids,
//! label, group: everything but lists and binaries), `predicted_id`,
//! `predicted_label` (when the job dir has `labels.json`) and `probability`.
//! `evaluate` writes the same as `<out>/predictions.parquet` (plus the
//! label's probability and rank), then aggregates it with SQL into
//! `<out>/metrics.json`: loss, accuracy and top-5 accuracy overall and per
//! group, precision and recall per class, and the confusion counts, which
//! `<out>/confusion.png` draws with the classes' labels.
//!
//! The columns come from the job dir's `binding.json` (written by training)
//! unless given.

use crate::error::JobError;
use crate::plot::plot_confusion;
use crate::progress::Phase;
use kallista_data::binding::Binding;
use kallista_data::columns::is_plain;
use kallista_engine::datafusion::arrow::array::{Array, AsArray, RecordBatch};
use kallista_engine::datafusion::arrow::compute::cast;
use kallista_engine::datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use kallista_engine::datafusion::prelude::SessionContext;
use kallista_engine::predict::source::model_dir;
use kallista_engine::session::{connect, Cluster};
use kallista_engine::store::{blocking, Location};
use kallista_engine::train::args::sql_ident;
use kallista_engine::train::layout::{sql_str, DataSource};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// What to predict on and where to write it.
#[derive(Clone, Debug)]
pub struct PredictArgs {
    /// A job dir or a weights file ([`kallista_engine::predict::source`]).
    pub model: String,
    /// A Parquet file or directory, or a query (`SELECT ...`, `WITH ...`) over `tables`.
    pub data: String,
    /// `predict`: the predictions' Parquet location; `evaluate`: the output directory.
    pub out: String,
    /// Tables the data query reads: (name, Parquet location).
    pub tables: Vec<(String, String)>,
    /// Overrides the binding's input columns.
    pub columns: Option<Vec<String>>,
    pub label: Option<String>,
    pub group_by: Option<String>,
}

/// Loss, accuracy and top-5 accuracy of some rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scores {
    pub rows: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub top5_accuracy: f64,
}

/// One class's precision and recall.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClassScores {
    pub label: Option<String>,
    /// Rows whose label is this class.
    pub support: u64,
    /// Rows predicted as this class.
    pub predicted: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// `metrics.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvalMetrics {
    pub model: String,
    pub data: String,
    #[serde(flatten)]
    pub overall: Scores,
    pub group_by: Option<String>,
    pub groups: BTreeMap<String, Scores>,
    pub classes: BTreeMap<i64, ClassScores>,
    /// (label, predicted, rows)
    pub confusion: Vec<(i64, i64, u64)>,
    pub seconds: f64,
}

fn runtime() -> Result<tokio::runtime::Runtime, JobError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| JobError::Invalid(format!("tokio runtime: {e}")))
}

fn is_query(data: &str) -> bool {
    let head = data.trim_start().to_ascii_lowercase();
    head.starts_with("select") || head.starts_with("with") || head.starts_with('(')
}

/// A Parquet file or prefix as `CREATE EXTERNAL TABLE ... LOCATION` takes it.
/// The SQL relation of Parquet at `uri`, whose files' footers are checked
/// first (a broken file is named, see `kallista_engine::parquet_check`).
fn parquet_url(uri: &str) -> Result<String, JobError> {
    let at = Location::parse(uri)?;
    kallista_engine::parquet_check::check_footers(uri)?;
    Ok(DataSource::Parquet(at).relation())
}

/// The binding to use: the job dir's, with the arguments' overrides.
fn binding(args: &PredictArgs) -> Result<Binding, JobError> {
    let file = model_dir(&args.model)?.join(Binding::FILE);
    let mut b = match blocking::exists(&file)? {
        true => serde_json::from_str(&blocking::read_string(&file)?)
            .map_err(|e| JobError::Invalid(format!("{file}: {e}")))?,
        false => Binding::default(),
    };
    if let Some(c) = &args.columns {
        b.inputs = c.clone();
    }
    if args.label.is_some() {
        b.label = args.label.clone();
    }
    if args.group_by.is_some() {
        b.group_by = args.group_by.clone();
    }
    if b.inputs.is_empty() {
        return Err(JobError::Invalid(format!(
            "--columns: the model's job dir has no {} (training writes it): name the input columns",
            Binding::FILE
        )));
    }
    Ok(b)
}

/// Registers the data as the relation `kallista_input`; returns its plain columns.
async fn register_data(ctx: &SessionContext, args: &PredictArgs, binding: &Binding) -> Result<Vec<String>, JobError> {
    for (name, uri) in &args.tables {
        let sql = format!("CREATE EXTERNAL TABLE {} STORED AS PARQUET LOCATION {}", sql_ident(name), parquet_url(uri)?);
        ctx.sql(&sql).await.map_err(kallista_engine::EngineError::from)?;
    }
    let sql = match is_query(&args.data) {
        true => format!("CREATE VIEW kallista_input AS {}", args.data),
        false => {
            format!("CREATE EXTERNAL TABLE kallista_input STORED AS PARQUET LOCATION {}", parquet_url(&args.data)?)
        }
    };
    ctx.sql(&sql).await.map_err(|e| JobError::Invalid(format!("--data: {}", kallista_engine::EngineError::from(e))))?;
    let schema = ctx.table("kallista_input").await.map_err(kallista_engine::EngineError::from)?.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for c in binding.inputs.iter().chain(&binding.label).chain(&binding.group_by) {
        if !names.contains(c) {
            return Err(JobError::Invalid(format!("--data: no column '{c}' (columns: {})", names.join(", "))));
        }
    }
    let plain = schema
        .fields()
        .iter()
        .filter(|f| !binding.inputs.contains(f.name()))
        .filter(|f| is_plain(f.data_type()))
        .map(|f| f.name().clone())
        .collect();
    Ok(plain)
}

async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, JobError> {
    let df = ctx.sql(sql).await.map_err(kallista_engine::EngineError::from)?;
    Ok(df.collect().await.map_err(kallista_engine::EngineError::from)?)
}

/// Writes the predictions to `out`; with `scored_by` (a label column) also
/// the label's probability and rank, which `evaluate` aggregates.
async fn write_predictions(
    ctx: &SessionContext,
    args: &PredictArgs,
    binding: &Binding,
    plain: &[String],
    out: &str,
    scored_by: Option<&str>,
) -> Result<u64, JobError> {
    let inputs: Vec<String> = binding.inputs.iter().map(|c| sql_ident(c)).collect();
    let model = sql_str(&args.model);
    let (call, extra) = match scored_by {
        Some(label) => (
            format!("kallista_score({model}, {}, {})", sql_ident(label), inputs.join(", ")),
            ", p['label_probability'] AS label_probability, p['label_rank'] AS label_rank",
        ),
        None => (format!("kallista_predict({model}, {})", inputs.join(", ")), ""),
    };
    let keep: Vec<String> = plain.iter().map(|c| sql_ident(c)).collect();
    let keep = keep.iter().map(|c| format!("{c}, ")).collect::<String>();
    let sql = format!(
        "COPY (SELECT {keep}p['class_id'] AS predicted_id, p['label'] AS predicted_label, \
         p['probability'] AS probability{extra} \
         FROM (SELECT *, {call} AS p FROM kallista_input) scored) TO {} STORED AS PARQUET",
        sql_str(out)
    );
    let batches = run(ctx, &sql).await?;
    let rows = batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| cast(b.column(0), &DataType::Int64).ok())
        .map_or(0, |c| c.as_primitive::<Int64Type>().value(0) as u64);
    Ok(rows)
}

/// The `i`th column of a result as i64 or f64 values.
fn ints(b: &RecordBatch, i: usize) -> Result<Vec<i64>, JobError> {
    let c = cast(b.column(i), &DataType::Int64).map_err(|e| JobError::Invalid(e.to_string()))?;
    Ok(c.as_primitive::<Int64Type>().iter().map(|v| v.unwrap_or(0)).collect())
}

fn floats(b: &RecordBatch, i: usize) -> Result<Vec<f64>, JobError> {
    let c = cast(b.column(i), &DataType::Float64).map_err(|e| JobError::Invalid(e.to_string()))?;
    Ok(c.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(0.0)).collect())
}

fn strings(b: &RecordBatch, i: usize) -> Result<Vec<String>, JobError> {
    let c = cast(b.column(i), &DataType::Utf8).map_err(|e| JobError::Invalid(e.to_string()))?;
    let c = c.as_string::<i32>();
    Ok((0..c.len()).map(|r| if c.is_null(r) { String::new() } else { c.value(r).to_string() }).collect())
}

/// Loss (as Keras clips it), accuracy and top-5 hits per group of the predictions.
async fn scores(ctx: &SessionContext, label: &str, group: Option<&str>) -> Result<Vec<(String, Scores)>, JobError> {
    let (key, by) = match group {
        Some(g) => (format!("CAST({} AS VARCHAR)", sql_ident(g)), " GROUP BY 1".to_string()),
        None => ("''".to_string(), String::new()),
    };
    let sql = format!(
        "SELECT {key}, COUNT(*), SUM(CASE WHEN predicted_id = {label} THEN 1 ELSE 0 END), \
         SUM(-ln(LEAST(GREATEST(CAST(label_probability AS DOUBLE), 1e-7), 1 - 1e-7))), \
         SUM(CASE WHEN label_rank < 5 THEN 1 ELSE 0 END) FROM kallista_predictions{by}",
        label = sql_ident(label)
    );
    let mut out = vec![];
    for b in run(ctx, &sql).await? {
        let (keys, rows, correct, loss, top5) =
            (strings(&b, 0)?, ints(&b, 1)?, ints(&b, 2)?, floats(&b, 3)?, ints(&b, 4)?);
        for i in 0..b.num_rows() {
            let n = rows[i].max(1) as f64;
            out.push((
                keys[i].clone(),
                Scores {
                    rows: rows[i] as u64,
                    loss: loss[i] / n,
                    accuracy: correct[i] as f64 / n,
                    top5_accuracy: top5[i] as f64 / n,
                },
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `kallista predict`: returns the rows written.
pub fn predict_cmd(args: &PredictArgs, cluster: &Cluster, mut log: impl FnMut(&str)) -> Result<u64, JobError> {
    let binding = binding(args)?;
    let started = Instant::now();
    let rows = runtime()?.block_on(async {
        let ctx = connect(cluster).await?;
        let plain = register_data(&ctx, args, &binding).await?;
        log(&format!("predicting with {} on {} (columns {})", args.model, args.data, binding.inputs.join(", ")));
        let phase = Phase::start("predicting on the cluster");
        let rows = write_predictions(&ctx, args, &binding, &plain, &args.out, None).await;
        phase.finish(if rows.is_ok() { "predicted" } else { "prediction failed" });
        rows
    })?;
    let s = started.elapsed().as_secs_f64();
    log(&format!("{rows} predictions in {s:.1} s ({:.0} rows/s) to {}", rows as f64 / s.max(1e-9), args.out));
    Ok(rows)
}

/// `kallista evaluate`: writes the predictions and `metrics.json` under `args.out`.
pub fn evaluate_cmd(args: &PredictArgs, cluster: &Cluster, mut log: impl FnMut(&str)) -> Result<EvalMetrics, JobError> {
    let binding = binding(args)?;
    let label = binding.label.clone().ok_or_else(|| {
        JobError::Invalid("--label: the model's binding names no label column: name the class-id column".into())
    })?;
    let out = Location::parse(&args.out)?;
    let predictions = out.join("predictions.parquet");
    let started = Instant::now();
    let (mut metrics, mut names) = runtime()?.block_on(async {
        let ctx = connect(cluster).await?;
        let plain = register_data(&ctx, args, &binding).await?;
        log(&format!("evaluating {} on {} (columns {}, label {label})", args.model, args.data, binding.inputs.join(", ")));
        let phase = Phase::start("predicting on the cluster");
        let rows = write_predictions(&ctx, args, &binding, &plain, predictions.as_str(), Some(&label)).await;
        let done = match &rows {
            Ok(rows) => format!("{rows} rows predicted in {:.1} s; aggregating", started.elapsed().as_secs_f64()),
            Err(_) => "prediction failed".to_string(),
        };
        phase.finish(&done);
        rows?;
        let sql = format!("CREATE EXTERNAL TABLE kallista_predictions STORED AS PARQUET LOCATION {}", sql_str(predictions.as_str()));
        ctx.sql(&sql).await.map_err(kallista_engine::EngineError::from)?;
        let mut m = EvalMetrics { model: args.model.clone(), data: args.data.clone(), group_by: binding.group_by.clone(), ..Default::default() };
        m.overall = scores(&ctx, &label, None).await?.pop().map(|s| s.1).unwrap_or_default();
        if let Some(g) = &binding.group_by {
            m.groups = scores(&ctx, &label, Some(g)).await?.into_iter().collect();
        }
        let sql = format!(
            "SELECT {l}, predicted_id, COUNT(*), MAX(predicted_label) FROM kallista_predictions GROUP BY 1, 2 ORDER BY 1, 2",
            l = sql_ident(&label)
        );
        let mut names: BTreeMap<i64, String> = BTreeMap::new();
        for b in run(&ctx, &sql).await? {
            let (l, p, n, name) = (ints(&b, 0)?, ints(&b, 1)?, ints(&b, 2)?, strings(&b, 3)?);
            for i in 0..b.num_rows() {
                m.confusion.push((l[i], p[i], n[i] as u64));
                if !name[i].is_empty() {
                    names.insert(p[i], name[i].clone());
                }
            }
        }
        Ok::<_, JobError>((m, names))
    })?;
    for &(l, p, n) in &metrics.confusion {
        metrics.classes.entry(l).or_default().support += n;
        metrics.classes.entry(p).or_default().predicted += n;
    }
    let correct: BTreeMap<i64, u64> = metrics.confusion.iter().filter(|c| c.0 == c.1).map(|c| (c.0, c.2)).collect();
    let labels = class_labels(&args.model)?;
    for (id, c) in metrics.classes.iter_mut() {
        let hits = correct.get(id).copied().unwrap_or(0) as f64;
        c.precision = (c.predicted > 0).then(|| hits / c.predicted as f64);
        c.recall = (c.support > 0).then(|| hits / c.support as f64);
        c.label = labels.as_ref().and_then(|l| l.get(*id as usize).cloned());
    }
    for (id, c) in &metrics.classes {
        if let Some(l) = &c.label {
            names.insert(*id, l.clone());
        }
    }
    metrics.seconds = started.elapsed().as_secs_f64();
    let json = serde_json::to_vec_pretty(&metrics).map_err(|e| JobError::Invalid(e.to_string()))?;
    blocking::write(&out.join("metrics.json"), json)?;
    log(&format!(
        "accuracy {:.4}, top-5 {:.4}, loss {:.4} on {} rows in {:.1} s; wrote {}",
        metrics.overall.accuracy,
        metrics.overall.top5_accuracy,
        metrics.overall.loss,
        metrics.overall.rows,
        metrics.seconds,
        out.join("metrics.json")
    ));
    let title = format!("Confusion matrix: {} rows, accuracy {:.4}", metrics.overall.rows, metrics.overall.accuracy);
    // A picture is for people: a host without fonts still gets its metrics.
    match plot_confusion(&metrics.confusion, &names, &title, &out.join("confusion.png")) {
        Ok(()) => log(&format!("confusion matrix: {}", out.join("confusion.png"))),
        Err(e) => log(&format!("warning: no confusion matrix: {e}")),
    }
    Ok(metrics)
}

/// The job dir's `labels.json`, when there is one.
fn class_labels(model: &str) -> Result<Option<Vec<String>>, JobError> {
    let file = model_dir(model)?.join("labels.json");
    if !blocking::exists(&file)? {
        return Ok(None);
    }
    serde_json::from_str(&blocking::read_string(&file)?)
        .map(Some)
        .map_err(|e| JobError::Invalid(format!("{file}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_told_from_locations_and_quoted_safely() {
        assert!(is_query("  SELECT * FROM t") && is_query("with x as (select 1) select * from x"));
        assert!(!is_query("s3://bucket/test/") && !is_query("/data/selections/"));
        assert_eq!(sql_str("it's"), "'it''s'");
        assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
    }
}
