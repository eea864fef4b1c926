//! A job's data script (`data.script`): SQL that the training session runs
//! before it stages the splits, so that `{sql: ...}` splits can read the
//! views it defines. A split prepared by a view is staged straight from its
//! source: no prepared copy of the rows is written in between, which for
//! video clips is a whole copy of the frames.

use crate::error::JobError;
use crate::spec::{spec_error, JobSpec};
use kallista_engine::datafusion::prelude::SessionContext;
use kallista_engine::sql::{run_script, script_defaults};
use std::collections::BTreeMap;
use std::path::Path;

/// Statements of a data script may prepare a whole table.
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Makes `data.script.file` absolute (it is relative to the job file) and
/// checks it can be read, and puts the job dir's absolute location in place
/// of `${job_dir}` in its variables: errors come before any work starts.
pub fn resolve(file: &Path, job: &mut JobSpec) -> Result<(), JobError> {
    let Some(script) = &job.data.script else { return Ok(()) };
    let path = file.parent().unwrap_or(Path::new(".")).join(&script.file);
    let path = std::fs::canonicalize(&path)
        .map_err(|e| spec_error(file, "data.script.file", format!("{}: {e}", path.display())))?;
    let job_dir = job.job_dir(file)?.root().to_string();
    let set = script.set.iter().map(|(k, v)| (k.clone(), v.replace("${job_dir}", job_dir.trim_end_matches('/'))));
    let set = set.collect();
    job.data.script = Some(crate::spec::DataScriptSpec { file: path.display().to_string(), set });
    Ok(())
}

/// Runs the job's data script, if it has one, on the training session `ctx`.
pub async fn define(ctx: &SessionContext, job: &JobSpec, log: &mut impl FnMut(&str)) -> Result<(), JobError> {
    let Some(script) = &job.data.script else { return Ok(()) };
    let text =
        std::fs::read_to_string(&script.file).map_err(|e| JobError::Io { path: script.file.clone(), source: e })?;
    let mut vars: BTreeMap<String, String> = script_defaults(&text);
    vars.extend(script.set.clone());
    log(&format!("data script {}", script.file));
    run_script(ctx, &script.file, &text, &vars, STATEMENT_TIMEOUT, |_, _, _| {}).await?;
    Ok(())
}
