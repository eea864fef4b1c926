//! Running SQL scripts: statements split on `;` (outside quotes and
//! comments), `${name}` variables substituted, each statement run on the
//! cluster, and results rendered for a terminal.

use crate::error::{EngineError, Result};
use crate::parquet_check;
use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use std::collections::BTreeMap;

/// Splits a script into statements (without the `;`), skipping empty ones and
/// `--` comments; `;` inside quotes does not split.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for n in chars.by_ref() {
                        if n == '\n' {
                            cur.push('\n');
                            break;
                        }
                    }
                }
                ';' => {
                    if !cur.trim().is_empty() {
                        out.push(cur.trim().to_string());
                    }
                    cur.clear();
                }
                _ => cur.push(c),
            },
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Replaces `${name}` with `vars[name]`; an unknown name is an error naming it.
pub fn substitute(sql: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            EngineError::Invalid(format!("unterminated variable near '{}'", &rest[start..rest.len().min(start + 20)]))
        })?;
        let name = &after[..end];
        let value = vars.get(name).ok_or_else(|| {
            EngineError::Invalid(format!("undefined variable ${{{name}}} (set it with --set {name}=VALUE)"))
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Defaults a script declares in `--! set name = value` lines (the command line overrides them).
pub fn script_defaults(script: &str) -> BTreeMap<String, String> {
    script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--! set "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// What one statement gave.
#[derive(Debug)]
pub enum StatementResult {
    /// Rows of a query.
    Rows(Vec<RecordBatch>),
    /// Rows written by `COPY` or `INSERT`.
    Written(u64),
    /// DDL and other statements without output.
    Done,
}

impl StatementResult {
    /// Rendering for a terminal: a table, a row count, or `OK`.
    pub fn render(&self) -> String {
        match self {
            StatementResult::Rows(b) => {
                let n: usize = b.iter().map(|b| b.num_rows()).sum();
                match pretty_format_batches(b) {
                    Ok(t) => format!("{t}\n{n} row{}", if n == 1 { "" } else { "s" }),
                    Err(e) => format!("(cannot render: {e})"),
                }
            }
            StatementResult::Written(n) => format!("wrote {n} rows"),
            StatementResult::Done => "OK".into(),
        }
    }
}

/// The Parquet tables a `CREATE EXTERNAL TABLE` statement makes: (name, location).
pub fn parquet_tables_created(sql: &str) -> Vec<(String, String)> {
    use datafusion::sql::parser::{DFParser, Statement};
    let Ok(statements) = DFParser::parse_sql(sql) else { return vec![] };
    statements
        .into_iter()
        .filter_map(|s| match s {
            Statement::CreateExternalTable(t) if t.file_type.eq_ignore_ascii_case("parquet") => {
                let name = t.name.to_string();
                Some(t.locations.into_iter().map(move |l| (name.clone(), l)))
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// Whether `sql` names `table` (as a whole word, any case).
fn mentions(sql: &str, table: &str) -> bool {
    let (sql, table) = (sql.to_ascii_lowercase(), table.to_ascii_lowercase());
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    sql.match_indices(&table)
        .any(|(i, _)| !word(sql[..i].chars().last()) && !word(sql[i + table.len()..].chars().next()))
}

/// The Parquet locations a statement reads directly, as `FROM '/data/clips/'`
/// or `JOIN 's3://b/t.parquet'`: string literals after FROM or JOIN that end
/// in `/` or `.parquet`.
pub fn parquet_url_tables(sql: &str) -> Vec<String> {
    let mut out = vec![];
    let upper = sql.to_ascii_uppercase();
    for keyword in ["FROM", "JOIN"] {
        let mut rest = 0;
        while let Some(i) = upper[rest..].find(keyword) {
            let after = rest + i + keyword.len();
            rest = after;
            let literal = sql[after..].trim_start();
            let Some(body) = literal.strip_prefix('\'') else { continue };
            let Some(end) = body.find('\'') else { continue };
            let url = &body[..end];
            if url.ends_with('/') || url.ends_with(".parquet") {
                out.push(url.to_string());
            }
        }
    }
    out
}

/// Runs `f` off the async threads (it reads storage synchronously).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Invalid(format!("a storage check stopped: {e}")))
}

/// Runs one statement. A Parquet table's files have their footers checked
/// before it is created ([`parquet_check`]), so a broken file is named.
pub async fn run_statement(ctx: &SessionContext, sql: &str) -> Result<StatementResult> {
    let created = parquet_tables_created(sql).into_iter().map(|(_, l)| l);
    for location in created.chain(parquet_url_tables(sql)) {
        blocking(move || parquet_check::check_footers(&location)).await??;
    }
    let head = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    let df = ctx.sql(sql).await?;
    let batches = df.collect().await?;
    let is_count =
        batches.len() == 1 && batches[0].num_columns() == 1 && batches[0].schema().field(0).name() == "count";
    if (head == "COPY" || head == "INSERT") && is_count {
        let c =
            batches[0].column(0).as_any().downcast_ref::<UInt64Array>().map(|a| a.iter().flatten().sum()).unwrap_or(0);
        return Ok(StatementResult::Written(c));
    }
    if matches!(head.as_str(), "CREATE" | "DROP" | "SET") || batches.iter().all(|b| b.num_columns() == 0) {
        return Ok(StatementResult::Done);
    }
    Ok(StatementResult::Rows(batches))
}

/// Runs a script; `report(index, statement, result)` sees each result as it comes.
/// An error names the script and the statement number; a statement that runs
/// longer than `timeout` is an error too (a stuck cluster job must not hang the caller).
pub async fn run_script(
    ctx: &SessionContext,
    name: &str,
    script: &str,
    vars: &BTreeMap<String, String>,
    timeout: std::time::Duration,
    mut report: impl FnMut(usize, &str, &StatementResult),
) -> Result<Vec<StatementResult>> {
    let script = substitute(script, vars)?;
    let mut results = vec![];
    let mut parquet_tables = vec![];
    for (i, stmt) in split_statements(&script).iter().enumerate() {
        parquet_tables.extend(parquet_tables_created(stmt));
        let mut run = tokio::spawn({
            let (ctx, stmt) = (ctx.clone(), stmt.clone());
            async move { run_statement(&ctx, &stmt).await }
        });
        let r = match tokio::time::timeout(timeout, &mut run).await {
            Ok(Ok(r)) => r,
            // A dependency panicked on some input: an error, never a crash.
            Ok(Err(e)) if e.is_panic() => Err(EngineError::Invalid(format!(
                "a dependency panicked: {}",
                parquet_check::panic_text(&*e.into_panic())
            ))),
            Ok(Err(e)) => Err(EngineError::Invalid(format!("the statement's task stopped: {e}"))),
            Err(_) => {
                run.abort();
                Err(EngineError::Invalid(format!("did not finish within {} s", timeout.as_secs())))
            }
        };
        let r = match r {
            Err(e) if reads_parquet(&e) => {
                // Only the tables this statement reads are searched, for a bounded time.
                let tables: Vec<String> = parquet_tables
                    .iter()
                    .filter(|(table, _)| mentions(stmt, table))
                    .map(|(_, l)| l.clone())
                    .chain(parquet_url_tables(stmt))
                    .collect();
                let deadline = std::time::Instant::now() + FAULT_SEARCH;
                match blocking(move || parquet_check::find_fault(&tables, deadline)).await? {
                    Some(fault) => Err(EngineError::Invalid(format!("{fault} (the statement failed with: {e})"))),
                    None => Err(e),
                }
            }
            r => r,
        }
        .map_err(|e| EngineError::Statement { file: name.to_string(), index: i + 1, source: Box::new(e) })?;
        report(i + 1, stmt, &r);
        results.push(r);
    }
    Ok(results)
}

/// How long a failed statement's tables are searched for the broken file.
const FAULT_SEARCH: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether an error comes from decoding Parquet (or a panic while reading),
/// so that the statement's tables are searched for the file at fault.
fn reads_parquet(e: &EngineError) -> bool {
    let text = e.to_string();
    !matches!(e, EngineError::Corrupt { .. }) && ["Parquet", "panicked"].iter().any(|w| text.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let s = "SELECT ';' AS a; -- a comment; with semicolons\nSELECT 2;;\n  ";
        assert_eq!(split_statements(s), vec!["SELECT ';' AS a", "SELECT 2"]);
    }

    #[test]
    fn parquet_read_directly_is_found_after_from_and_join() {
        let sql = "SELECT * FROM '/d/clips/' c JOIN 's3://b/v.parquet' v ON c.id = v.id WHERE x = 'from/'";
        assert_eq!(parquet_url_tables(sql), vec!["/d/clips/", "s3://b/v.parquet"]);
        assert!(parquet_url_tables("SELECT 'a/' FROM t").is_empty());
    }

    #[test]
    fn a_table_is_mentioned_as_a_whole_word() {
        assert!(mentions("SELECT * FROM Clips c", "clips"));
        assert!(!mentions("SELECT * FROM clips_2", "clips"));
        assert!(mentions("select count(*) from t", "t") && !mentions("select 1", "t"));
    }

    #[test]
    fn reads_declared_defaults() {
        let d = script_defaults("--! set question_len = 12\n-- not one\nSELECT 1;");
        assert_eq!(d, BTreeMap::from([("question_len".to_string(), "12".to_string())]));
    }

    #[test]
    fn substitutes_and_names_unknown_variables() {
        let vars = BTreeMap::from([("data".to_string(), "/tmp/d".to_string())]);
        assert_eq!(substitute("LOCATION '${data}/clips/'", &vars).unwrap(), "LOCATION '/tmp/d/clips/'");
        let e = substitute("${nope}", &vars).unwrap_err().to_string();
        assert!(e.contains("${nope}"), "{e}");
    }
}
