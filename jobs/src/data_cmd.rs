//! `kallista data ...`: make the synthetic video-QA set, ingest frame folders.

use crate::error::JobError;
use crate::progress::Progress;
use kallista_data::ingest::{ingest_frames, IngestOptions, IngestReport};
use kallista_data::video_qa::{make_video_qa, MakeOptions, MakeReport};

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

/// Ingests frame folders; the summary lists skipped rows.
pub fn ingest_cmd(opts: &IngestOptions) -> Result<(IngestReport, String), JobError> {
    let report = ingest_frames(opts)?;
    let mut s = format!("wrote {} clips to {}\n", report.rows, report.file.display());
    if !report.skipped.is_empty() {
        s += &format!("skipped {} bad rows:\n", report.skipped.len());
        for (row, why) in &report.skipped {
            s += &format!("  row {row}: {why}\n");
        }
    }
    Ok((report, s))
}
