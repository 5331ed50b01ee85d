//! The terminal summary: one line per check, the verdict first.

use super::{Report, Verdict};

/// The summary printed after an eval: a header and one line per check.
pub fn summary(report: &Report) -> String {
    let mut out = format!(
        "RFT readiness: {}  (model {}, {} rows × {} samples, grader {} [{}], mean reward {:.3})\n",
        report.verdict.as_str().to_uppercase(),
        report.model,
        report.rows,
        report.samples_per_row,
        report.grader,
        report.grader_type,
        report.mean_reward,
    );
    for check in &report.checks {
        let verdict = if check.applicable {
            check.verdict.as_str()
        } else {
            "skipped"
        };
        out.push_str(&format!(
            "  {verdict:<8} {:<24} {}\n",
            check.title, check.reason
        ));
    }
    if report.verdict == Verdict::Blocker {
        out.push_str("Fix the blockers before training: RFT cannot help until they are gone.\n");
    }
    out
}
