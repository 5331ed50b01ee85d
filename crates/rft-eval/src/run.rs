//! Running an eval: sample the model (or take the given samples), grade every sample, and append
//! each finished row to a results file, flushed to disk, so a crash loses at most the rows in
//! flight and a rerun with the same file skips the rows already there.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use rft_grade::{CompiledGrader, GradeRequest};
use rft_types::{RunGraderResponse, Sample};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::{EvalData, EvalRow};
use crate::policy::{Generated, Policy, SamplingOptions};
use crate::EvalError;

/// One graded sample: a line of the results file holds K of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// What the model answered (the whole `sample` graders saw).
    pub sample: Sample,
    /// `stop`, `length`, `error`, or `given` for eval-run samples.
    pub finish_reason: String,
    /// Prompt tokens of the call.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Why sampling failed; such samples are not graded and count as errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The grader's response; absent when sampling failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<RunGraderResponse>,
}

impl SampleResult {
    /// The reward, when the sample was graded without a grader error.
    pub fn reward(&self) -> Option<f64> {
        let grade = self.grade.as_ref()?;
        (!has_error(grade)).then_some(grade.reward)
    }
}

/// Whether a grader response carries an error flag (the reward is then a placeholder 0).
pub fn has_error(grade: &RunGraderResponse) -> bool {
    grade.metadata.errors.any()
}

/// One finished row: a line of the results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    /// The row's 0-based index in the dataset.
    pub datasource_item_id: usize,
    /// The row's item (checked on resume, so a results file is never reused for another dataset).
    pub item: Value,
    /// The K graded samples.
    pub samples: Vec<SampleResult>,
}

impl RowResult {
    /// The rewards of the samples graded without error.
    pub fn rewards(&self) -> Vec<f64> {
        self.samples
            .iter()
            .filter_map(SampleResult::reward)
            .collect()
    }
}

/// How to run an eval.
#[derive(Debug, Clone, Default)]
pub struct EvalConfig {
    /// Sampling options (ignored for eval-run rows, which carry their samples).
    pub sampling: SamplingOptions,
    /// The resumable results file; `None` keeps results in memory only.
    pub output: Option<PathBuf>,
}

/// Runs the eval: returns one [`RowResult`] per row, in dataset order, including rows read back
/// from `config.output`. `on_progress(done, total)` is called after each batch.
pub fn run_eval(
    data: &EvalData,
    policy: Option<&Policy>,
    grader: &CompiledGrader,
    config: &EvalConfig,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<RowResult>, EvalError> {
    let mut finished = match &config.output {
        Some(path) => read_results(path, data, config)?,
        None => Vec::new(),
    };
    let done: std::collections::HashSet<usize> =
        finished.iter().map(|r| r.datasource_item_id).collect();
    if !done.is_empty() {
        tracing::info!(
            "resuming: {} of {} rows already graded",
            done.len(),
            data.rows.len()
        );
    }
    let todo: Vec<&EvalRow> = data
        .rows
        .iter()
        .filter(|r| !done.contains(&r.index))
        .collect();
    let mut writer = match &config.output {
        Some(path) => Some(ResultsWriter::open(path)?),
        None => None,
    };
    let total = data.rows.len();
    on_progress(finished.len(), total);
    let batch = policy.map_or(64, Policy::batch_rows).max(1);
    for rows in todo.chunks(batch) {
        if config
            .sampling
            .cancel
            .as_ref()
            .is_some_and(|c| c.is_cancelled())
        {
            return Err(EvalError::Cancelled);
        }
        let generated: Vec<Vec<Generated>> = match policy {
            Some(policy) if rows.iter().any(|r| r.sample.is_none()) => {
                policy.generate(rows, &config.sampling)?
            }
            _ => rows
                .iter()
                .map(|row| given_sample(row))
                .collect::<Result<_, _>>()?,
        };
        for result in grade_rows(grader, rows, generated) {
            if let Some(writer) = &mut writer {
                writer.append(&result)?;
            }
            finished.push(result);
        }
        on_progress(finished.len(), total);
    }
    finished.sort_by_key(|r| r.datasource_item_id);
    Ok(finished)
}

fn given_sample(row: &EvalRow) -> Result<Vec<Generated>, EvalError> {
    match &row.sample {
        Some(sample) => Ok(vec![Generated {
            text: sample.output_text.clone(),
            finish_reason: "given".into(),
            ..Generated::default()
        }]),
        None => Err(EvalError::Config(format!(
            "row {} has messages but no model was given to answer them",
            row.index + 1
        ))),
    }
}

/// Grades generated answers (all rows' samples in one parallel pass).
fn grade_rows(
    grader: &CompiledGrader,
    rows: &[&EvalRow],
    generated: Vec<Vec<Generated>>,
) -> Vec<RowResult> {
    let mut requests = Vec::new();
    let mut samples: Vec<Vec<(Sample, Generated)>> = Vec::new();
    for (row, group) in rows.iter().zip(generated) {
        let mut row_samples = Vec::new();
        for g in group {
            // A given eval-run sample keeps its own fields (output_json, tools, choices).
            let sample = match (&row.sample, g.finish_reason.as_str()) {
                (Some(given), "given") => given.clone(),
                _ => Sample::from_message(&g.text, g.tool_calls.clone()),
            };
            if g.error.is_none() {
                requests.push(GradeRequest {
                    sample: sample.clone(),
                    item: row.item_value(),
                });
            }
            row_samples.push((sample, g));
        }
        samples.push(row_samples);
    }
    let mut grades = grader.grade_all(&requests).into_iter();
    rows.iter()
        .zip(samples)
        .map(|(row, group)| RowResult {
            datasource_item_id: row.index,
            item: row.item_value(),
            samples: group
                .into_iter()
                .map(|(sample, g)| SampleResult {
                    grade: if g.error.is_none() {
                        grades.next()
                    } else {
                        None
                    },
                    sample,
                    finish_reason: g.finish_reason,
                    prompt_tokens: g.prompt_tokens,
                    completion_tokens: g.completion_tokens,
                    error: g.error,
                })
                .collect(),
        })
        .collect()
}

/// Reads the rows an earlier run finished. A torn last line (a crash mid-write) is dropped and
/// cut from the file; anything else that does not fit this dataset is an error, because mixing
/// two runs' rows would give a report about neither.
fn read_results(
    path: &Path,
    data: &EvalData,
    config: &EvalConfig,
) -> Result<Vec<RowResult>, EvalError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EvalError::io(path)(e)),
    };
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(EvalError::io(path))?;
    let n_lines = lines.len();
    let mut rows = Vec::new();
    let mut good_bytes = 0u64;
    for (idx, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            good_bytes += line.len() as u64 + 1;
            continue;
        }
        let fail = |message: String| EvalError::Line {
            path: path.to_owned(),
            line: idx + 1,
            message,
        };
        let row: RowResult = match serde_json::from_str(&line) {
            Ok(row) => row,
            Err(_) if idx + 1 == n_lines => {
                tracing::warn!("{}:{}: dropping a torn last line (an interrupted run); its row is sampled again", path.display(), idx + 1);
                truncate(path, good_bytes)?;
                break;
            }
            Err(e) => {
                return Err(fail(format!(
                    "not a results line ({e}); pass another --output or delete the file"
                )))
            }
        };
        let expected = data
            .rows
            .get(row.datasource_item_id)
            .map(EvalRow::item_value);
        if expected.as_ref() != Some(&row.item) {
            return Err(fail(format!(
                "row {} does not match the dataset {} (another dataset wrote this results file); pass another --output or delete the file",
                row.datasource_item_id,
                data.path.display()
            )));
        }
        let k = if data.rows[row.datasource_item_id].sample.is_some() {
            1
        } else {
            config.sampling.samples.max(1)
        };
        if row.samples.len() != k {
            return Err(fail(format!(
                "row {} has {} samples but this run asks for {k}; rerun with --samples {} or pass another --output",
                row.datasource_item_id,
                row.samples.len(),
                row.samples.len()
            )));
        }
        good_bytes += line.len() as u64 + 1;
        rows.push(row);
    }
    Ok(rows)
}

fn truncate(path: &Path, len: u64) -> Result<(), EvalError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(EvalError::io(path))?;
    file.set_len(len).map_err(EvalError::io(path))
}

/// Appends rows to the results file, each followed by `fsync`.
struct ResultsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl ResultsWriter {
    fn open(path: &Path) -> Result<ResultsWriter, EvalError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(EvalError::io(parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(EvalError::io(path))?;
        Ok(ResultsWriter {
            path: path.to_owned(),
            file,
        })
    }

    fn append(&mut self, row: &RowResult) -> Result<(), EvalError> {
        let mut line = serde_json::to_vec(row).map_err(|e| EvalError::Config(e.to_string()))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(EvalError::io(&self.path))?;
        self.file.sync_data().map_err(EvalError::io(&self.path))
    }
}
