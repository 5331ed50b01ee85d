//! The RFT readiness report: eight checks computed from an eval run, each with a plain verdict
//! and a one-sentence reason, written as a terminal summary, `report.json` and `report.html`.
//!
//! Every threshold is a named constant below; `docs/evals.md` documents each check, its
//! thresholds and the fields of `report.json` (whose names are stable: `REPORT_VERSION` changes
//! when one does).

mod checks;
mod html;
mod probes;
mod terminal;

use std::path::Path;

use rft_grade::CompiledGrader;
use rft_types::{Grader, Sample};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::EvalData;
use crate::run::RowResult;
use crate::EvalError;

pub use checks::{
    check_balance, check_hacking, check_judge_alignment, check_judge_stability, check_learnability,
    check_lucky_guesses, check_multi_grader, check_signal, ProbeRow,
};
pub use html::render_html;
pub use probes::reference_fields;
pub use terminal::summary;

/// The version of `report.json`'s field names.
pub const REPORT_VERSION: u32 = 1;

/// A reward within this fraction of the range from an end counts as at that end.
pub const END_TOLERANCE: f64 = 1e-6;
/// Signal: blocker when at least this fraction of samples sits at the grader's min (or max).
pub const SIGNAL_BLOCKER_FRACTION: f64 = 0.95;
/// Signal: warning when at least this fraction sits at one end.
pub const SIGNAL_WARNING_FRACTION: f64 = 0.8;
/// Learnability: blocker when fewer than this fraction of rows have any reward spread among
/// their K samples (GRPO's advantage is zero for the rest).
pub const LEARNABILITY_BLOCKER_USEFUL: f64 = 0.05;
/// Learnability: warning below this useful fraction.
pub const LEARNABILITY_WARNING_USEFUL: f64 = 0.25;
/// Learnability: warning when at least this fraction of rows already get the top reward on
/// every sample (training saturates the rest too, and a job of them collapses).
pub const LEARNABILITY_SATURATED_WARNING: f64 = 0.4;
/// Balance: a field is label-like when it has at most this many distinct scalar values...
pub const LABEL_MAX_DISTINCT: usize = 10;
/// ... and each value appears on average at least this many times.
pub const LABEL_MIN_ROWS_PER_VALUE: f64 = 2.0;
/// Balance: warning when the most common label covers at least this share of rows.
pub const SKEW_WARNING_SHARE: f64 = 0.75;
/// Lucky guesses: warning when a trivial strategy earns at least this share of the model's
/// score above the grader's minimum...
pub const LUCKY_SHARE_WARNING: f64 = 0.5;
/// ... and at least this fraction of the grader's range (a strategy scoring next to nothing
/// is no concern, whatever the model scores).
pub const LUCKY_MIN_SCORE: f64 = 0.1;
/// Reward hacking: warning when a probe's mean score is at least this fraction of the range.
pub const HACKING_NEAR_MAX: f64 = 0.8;
/// Reward hacking: the length of the "very long output" probe, in characters.
pub const HACKING_LONG_CHARS: usize = 8000;
/// Probes (lucky guesses, hacking, alignment) are graded on at most this many rows, which bounds
/// what a judge-based grader costs.
pub const PROBE_MAX_ROWS: usize = 64;
/// Judge stability: samples re-graded.
pub const STABILITY_MAX_SAMPLES: usize = 24;
/// Judge stability: warning when the mean per-sample std, as a fraction of the range, exceeds this.
pub const STABILITY_STD_WARNING: f64 = 0.05;
/// Judge stability: warning when the mean Spearman correlation between repeats is below this.
pub const STABILITY_RANK_WARNING: f64 = 0.8;
/// Judge alignment: warning when reference answers score below this fraction of the range...
pub const ALIGNMENT_REFERENCE_MIN: f64 = 0.9;
/// ... or wrong answers (another row's reference) above this fraction.
pub const ALIGNMENT_WRONG_MAX: f64 = 0.1;

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing to fix.
    Good,
    /// Training may work but likely less well; the reason says what to change.
    Warning,
    /// RFT will not help until this is fixed.
    Blocker,
}

impl Verdict {
    /// `good`, `warning` or `blocker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Warning => "warning",
            Verdict::Blocker => "blocker",
        }
    }
}

/// One check of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable id: `signal`, `learnability`, `data_balance`, `lucky_guesses`, `reward_hacking`,
    /// `judge_stability`, `judge_alignment`, `multi_grader`.
    pub id: String,
    /// Human title.
    pub title: String,
    /// The verdict (`good` for checks that do not apply).
    pub verdict: Verdict,
    /// False when the check does not apply to this grader or data (the reason says why).
    pub applicable: bool,
    /// One sentence.
    pub reason: String,
    /// The numbers behind the verdict (documented per check in docs/evals.md).
    pub details: Value,
}

impl Check {
    pub(crate) fn new(
        id: &str,
        title: &str,
        verdict: Verdict,
        reason: String,
        details: Value,
    ) -> Check {
        Check {
            id: id.into(),
            title: title.into(),
            verdict,
            applicable: true,
            reason,
            details,
        }
    }

    pub(crate) fn skipped(id: &str, title: &str, reason: String) -> Check {
        Check {
            id: id.into(),
            title: title.into(),
            verdict: Verdict::Good,
            applicable: false,
            reason,
            details: Value::Null,
        }
    }
}

/// The whole report (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The model under test (`given` for eval-run samples).
    pub model: String,
    /// The dataset file.
    pub dataset: String,
    /// The grader's name.
    pub grader: String,
    /// The grader's type.
    pub grader_type: String,
    /// Rows evaluated.
    pub rows: usize,
    /// Samples per row.
    pub samples_per_row: usize,
    /// Samples graded without error.
    pub graded_samples: usize,
    /// Samples whose sampling or grading failed.
    pub errored_samples: usize,
    /// `[min, max]` reward of the grader.
    pub reward_range: [f64; 2],
    /// Mean reward of the graded samples.
    pub mean_reward: f64,
    /// The worst verdict of the checks.
    pub verdict: Verdict,
    /// The eight checks, in order.
    pub checks: Vec<Check>,
}

/// Knobs of the report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The item field holding the reference answer (judge alignment, constant answers).
    pub reference_field: Option<String>,
    /// How many times judge stability re-grades each sample (default 3).
    pub judge_repeats: usize,
    /// Seed of the random-label strategy.
    pub seed: u64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            reference_field: None,
            judge_repeats: 3,
            seed: 0,
        }
    }
}

/// What the report is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    /// The rows.
    pub data: &'a EvalData,
    /// The eval's results.
    pub results: &'a [RowResult],
    /// The grader spec.
    pub grader_spec: &'a Grader,
    /// The compiled grader (probes are graded with it).
    pub grader: &'a CompiledGrader,
    /// The model's name.
    pub model: &'a str,
    /// The response format the model answered with, if any (its keys feed the JSON probe).
    pub response_format: Option<&'a Value>,
    /// Options.
    pub options: &'a ReportOptions,
}

/// The reward range of a grader: `score_model`'s `range`, else `[0, 1]` (the guide's frame),
/// widened to what was observed when a python grader or a formula goes beyond it.
pub fn reward_range(grader: &Grader, observed: &[f64]) -> (f64, f64) {
    let (mut lo, mut hi) = match grader {
        Grader::ScoreModel(g) => g.range.map_or((0.0, 1.0), |[a, b]| (a.min(b), a.max(b))),
        _ => (0.0, 1.0),
    };
    for &r in observed {
        lo = lo.min(r);
        hi = hi.max(r);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    (lo, hi)
}

/// Computes the report.
pub fn build_report(input: &ReportInput<'_>) -> Report {
    let rewards: Vec<Vec<f64>> = input.results.iter().map(RowResult::rewards).collect();
    let all: Vec<f64> = rewards.iter().flatten().copied().collect();
    let range = reward_range(input.grader_spec, &all);
    let samples_per_row = input
        .results
        .iter()
        .map(|r| r.samples.len())
        .max()
        .unwrap_or(0);
    let n_samples: usize = input.results.iter().map(|r| r.samples.len()).sum();
    let model_mean = crate::stats::mean(&all);
    let rows: Vec<ProbeRow> = input
        .data
        .rows
        .iter()
        .map(|r| ProbeRow {
            item: r.item_value(),
            prompt: r.prompt_text(),
            full_prompt: r.full_prompt_text(),
        })
        .collect();
    let items: Vec<Value> = rows.iter().map(|r| r.item.clone()).collect();
    let auto_fields = reference_fields(input.grader_spec);
    let reference = input
        .options
        .reference_field
        .clone()
        .or_else(|| auto_fields.first().cloned());
    let json_keys = probes::json_keys(input.grader_spec, input.response_format);
    let stability_samples: Vec<(Sample, Value)> = input
        .results
        .iter()
        .filter_map(|r| {
            let s = r.samples.iter().find(|s| s.reward().is_some())?;
            Some((s.sample.clone(), r.item.clone()))
        })
        .take(STABILITY_MAX_SAMPLES)
        .collect();
    let graded: Vec<&rft_types::RunGraderResponse> = input
        .results
        .iter()
        .flat_map(|r| r.samples.iter())
        .filter(|s| s.reward().is_some())
        .filter_map(|s| s.grade.as_ref())
        .collect();
    let checks = vec![
        check_signal(&rewards, range),
        check_learnability(&rewards),
        check_balance(&items),
        check_lucky_guesses(
            input.grader,
            &rows,
            model_mean,
            range,
            reference.as_deref(),
            input.options.seed,
        ),
        check_hacking(input.grader, &rows, range, reference.as_deref(), &json_keys),
        check_judge_stability(
            input.grader,
            &stability_samples,
            input.options.judge_repeats,
            range,
        ),
        check_judge_alignment(
            input.grader,
            &items,
            input.options.reference_field.as_deref(),
            range,
        ),
        check_multi_grader(input.grader_spec, &graded),
    ];
    let verdict = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Good);
    Report {
        version: REPORT_VERSION,
        model: input.model.to_owned(),
        dataset: input.data.path.to_string_lossy().into_owned(),
        grader: input.grader_spec.name().to_owned(),
        grader_type: input.grader_spec.type_name().to_owned(),
        rows: input.results.len(),
        samples_per_row,
        graded_samples: all.len(),
        errored_samples: n_samples - all.len(),
        reward_range: [range.0, range.1],
        mean_reward: model_mean,
        verdict,
        checks,
    }
}

/// Writes `report.json` and `report.html` into `dir`.
pub fn write_report(report: &Report, dir: &Path) -> Result<(), EvalError> {
    std::fs::create_dir_all(dir).map_err(EvalError::io(dir))?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| EvalError::Config(e.to_string()))?;
    let path = dir.join("report.json");
    rft_types::paths::write_atomic(&path, &json).map_err(EvalError::io(&path))?;
    let html = render_html(report)?;
    let path = dir.join("report.html");
    rft_types::paths::write_atomic(&path, html.as_bytes()).map_err(EvalError::io(&path))
}
