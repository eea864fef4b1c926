//! The job dir's `labels.json`: each class id's readable name (the answer
//! word), from the train split's `data.label_names` column, so that
//! predictions carry labels and the confusion matrix names its classes.

use crate::error::JobError;
use kallista_engine::datafusion::arrow::array::{Array, AsArray};
use kallista_engine::datafusion::arrow::compute::cast;
use kallista_engine::datafusion::arrow::datatypes::{DataType, Int64Type};
use kallista_engine::datafusion::prelude::SessionContext;
use kallista_engine::store::blocking;
use kallista_engine::train::args::sql_ident;
use kallista_engine::train::driver::TrainConfig;
use kallista_engine::EngineError;

/// Writes `labels.json` from the train split's `names` column (`""` for ids
/// the split never names); a label outside the model's classes is an error.
pub async fn write_labels(ctx: &SessionContext, config: &TrainConfig, names: &str) -> Result<(), JobError> {
    let label = config.binding.label.as_deref().unwrap_or_default();
    let sql = format!(
        "SELECT CAST({l} AS BIGINT), CAST(MIN({n}) AS VARCHAR) FROM {r} WHERE {l} IS NOT NULL GROUP BY 1 ORDER BY 1",
        l = sql_ident(label),
        n = sql_ident(names),
        r = config.train.relation()
    );
    let named = |e| JobError::Invalid(format!("data.label_names ({names}): {}", EngineError::from(e)));
    let batches = ctx.sql(&sql).await.map_err(named)?.collect().await.map_err(named)?;
    let classes = config.model.output_specs().first().and_then(|s| s.shape.last().copied()).unwrap_or(0);
    let mut labels = vec![String::new(); classes];
    for b in &batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let text = cast(b.column(1), &DataType::Utf8).map_err(|e| JobError::Invalid(e.to_string()))?;
        let text = text.as_string::<i32>();
        for i in 0..b.num_rows() {
            let id = ids.value(i);
            if id < 0 || id as usize >= classes {
                return Err(JobError::Invalid(format!(
                    "data.label: {label} = {id} in the train split, outside the model's {classes} classes"
                )));
            }
            if !text.is_null(i) {
                labels[id as usize] = text.value(i).to_string();
            }
        }
    }
    let json = serde_json::to_vec_pretty(&labels).map_err(|e| JobError::Invalid(e.to_string()))?;
    blocking::write(&config.job_dir.root().join("labels.json"), json)?;
    Ok(())
}
