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
    /// Scripts run one after the other in one session: a later one reads
    /// the tables and views an earlier one defined.
    Files(Vec<PathBuf>),
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
    let scripts: Vec<(String, String)> = match source {
        SqlSource::Files(paths) => paths
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| JobError::Io { path: p.display().to_string(), source: e })?;
                Ok((p.display().to_string(), text))
            })
            .collect::<Result<_, JobError>>()?,
        SqlSource::Query(q) => vec![("-e".to_string(), q.clone())],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| JobError::Invalid(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let ctx = connect(cluster).await?;
        let mut results = vec![];
        for (name, script) in &scripts {
            // Its own `--! set` defaults, then the command line's values.
            let mut all_vars = script_defaults(script);
            all_vars.extend(vars.clone());
            results.extend(run_script(&ctx, name, script, &all_vars, timeout, |_, _, r| print(&r.render())).await?);
        }
        Ok(results)
    })
}
