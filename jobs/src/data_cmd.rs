//! `kallista data ...`: make the synthetic video-QA set, ingest frame folders.

use crate::error::JobError;
use crate::progress::Progress;
use kallista_data::ingest::{ingest_frames, IngestOptions, IngestReport};
use kallista_data::video_qa::{make_video_qa, MakeOptions, MakeReport};
use std::path::Path;

/// Makes the set and returns a human-readable summary with the majority baselines.
pub fn make_video_qa_cmd(opts: &MakeOptions) -> Result<(MakeReport, String), JobError> {
    let bar = Progress::new("rendering clips", opts.videos);
    let report = make_video_qa(opts, |n| bar.update(n))?;
    let mut s = format!(
        "wrote {} clips in {} files under {}\n",
        report.rows,
        report.files.len(),
        opts.out.join("clips").display()
    );
    s += &format!("splits: {}\n", report.splits.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    s += "majority baseline per question family (most frequent answer, share):\n";
    for (fam, (answer, share)) in report.majority_baseline() {
        let n: usize = report.answers[&fam].values().sum();
        s += &format!("  {fam:<14} {answer:<8} {:5.1}%  of {n} questions\n", share * 100.0);
    }
    Ok((report, s))
}

/// Ingests frame folders; the summary lists skipped rows, which also go to
/// `skipped_out` (one JSON object per line) when given.
pub fn ingest_cmd(opts: &IngestOptions, skipped_out: Option<&Path>) -> Result<(IngestReport, String), JobError> {
    let report = ingest_frames(opts)?;
    let mut s = format!("wrote {} clips to {}\n", report.rows, report.file.display());
    if !report.skipped.is_empty() {
        s += &format!("skipped {} bad rows of {}:\n", report.skipped.len(), opts.annotations.display());
        for r in &report.skipped {
            s += &format!("  line {} ({}): {}\n", r.line, r.column, r.reason);
        }
    }
    if let Some(path) = skipped_out {
        let lines: String = report
            .skipped
            .iter()
            .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
            .collect::<Result<_, _>>()
            .map_err(|e| JobError::Invalid(format!("skipped rows: {e}")))?;
        std::fs::write(path, lines).map_err(|e| JobError::Io { path: path.display().to_string(), source: e })?;
        s += &format!("skipped rows listed in {}\n", path.display());
    }
    Ok((report, s))
}
