//! A job's data script (`data.script`): SQL that the training session runs
//! before it stages the splits, so that `{sql: ...}` splits can read the
//! views it defines. A split prepared by a view is staged straight from its
//! source: no prepared copy of the rows is written in between, which for
//! video clips is a whole copy of the frames.

use crate::error::JobError;
use crate::spec::{spec_error, JobSpec};
use kallista_engine::datafusion::prelude::SessionContext;
use kallista_engine::digest::content_hash;
use kallista_engine::sql::{run_script, script_defaults, split_statements, substitute};
use kallista_engine::train::layout::DataSource;
use std::collections::BTreeMap;
use std::path::Path;

/// Statements of a data script may prepare a whole table.
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A job's data script, read and checked.
#[derive(Clone, Debug)]
pub struct DataScript {
    /// Its absolute path.
    pub path: String,
    text: String,
    /// Its `--! set` defaults, then the job's `set` (and `job_dir`).
    vars: BTreeMap<String, String>,
}

/// The job's data script, when it has one: read, its variables filled in
/// and its statements checked here, so that errors name the key before any
/// work starts.
pub fn resolve(file: &Path, job: &JobSpec) -> Result<Option<DataScript>, JobError> {
    let Some(script) = &job.data.script else { return Ok(None) };
    let at = file.parent().unwrap_or(Path::new(".")).join(&script.file);
    let read = |at: &Path| std::fs::canonicalize(at).and_then(|p| Ok((std::fs::read_to_string(&p)?, p)));
    let (text, path) = read(&at).map_err(|e| spec_error(file, "data.script.file", format!("{}: {e}", at.display())))?;
    let job_dir = job.job_dir(file)?.root().to_string();
    let job_dir = job_dir.trim_end_matches('/');
    let mut vars = script_defaults(&text);
    vars.insert("job_dir".into(), job_dir.to_string());
    vars.extend(script.set.iter().map(|(k, v)| (k.clone(), v.replace("${job_dir}", job_dir))));
    let substituted = substitute(&text, &vars).map_err(|e| spec_error(file, "data.script.set", e))?;
    for (i, statement) in split_statements(&substituted).iter().enumerate() {
        let first = statement.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        if first == "SET" || first == "RESET" {
            return Err(spec_error(
                file,
                "data.script.file",
                format!(
                    "{}: statement {}: a data script runs in the training session and may not change its settings",
                    path.display(),
                    i + 1
                ),
            ));
        }
    }
    Ok(Some(DataScript { path: path.display().to_string(), text, vars }))
}

impl DataScript {
    /// `source` named by this script too: a query over its views gives other
    /// rows when the script or its variables change, so the staging and the
    /// feature caches that a query's text names must change with them.
    pub fn name_in(&self, source: DataSource) -> DataSource {
        match source {
            DataSource::Sql(q) => {
                let vars: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let hash = content_hash(&[self.text.as_bytes(), vars.join("\n").as_bytes()]);
                DataSource::Sql(format!("/* data.script {} */ {q}", &hash[..16]))
            }
            parquet => parquet,
        }
    }

    /// Runs the script on the training session `ctx`.
    pub async fn run(&self, ctx: &SessionContext, log: &mut impl FnMut(&str)) -> Result<(), JobError> {
        log(&format!("data script {}", self.path));
        run_script(ctx, &self.path, &self.text, &self.vars, STATEMENT_TIMEOUT, |_, _, _| {})
            .await
            .map_err(|e| JobError::Invalid(format!("data.script: {e}")))?;
        Ok(())
    }
}
