//! `kallista sql`: runs a SQL script or one query on the embedded cluster or
//! a remote scheduler, with Kallista's functions, printing each result.

use crate::error::JobError;
use kallista_engine::session::{connect, Cluster};
use kallista_engine::sql::{run_script, script_defaults, StatementResult};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the SQL comes from.
#[derive(Clone, Debug)]
pub enum SqlSource {
    File(PathBuf),
    Query(String),
}

/// Runs the SQL; `print` receives each statement's rendered result; each
/// statement must finish within `timeout`.
pub fn run_sql(
    source: &SqlSource,
    cluster: &Cluster,
    vars: &BTreeMap<String, String>,
    timeout: std::time::Duration,
    mut print: impl FnMut(&str),
) -> Result<Vec<StatementResult>, JobError> {
    let (name, script) = match source {
        SqlSource::File(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| JobError::Io { path: p.display().to_string(), source: e })?,
        ),
        SqlSource::Query(q) => ("-e".to_string(), q.clone()),
    };
    let mut all_vars = script_defaults(&script);
    all_vars.extend(vars.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| JobError::Invalid(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let ctx = connect(cluster).await?;
        let results = run_script(&ctx, &name, &script, &all_vars, timeout, |_, _, r| print(&r.render())).await?;
        Ok(results)
    })
}
