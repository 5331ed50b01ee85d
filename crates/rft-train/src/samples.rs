//! What the policy said: per training step, a bounded record of each group's prompt, its
//! sampled completions, their total reward and each grader's score; and the answers of the
//! first and the latest validation pass, so a dashboard can show a before/after diff.
//!
//! Files in the job folder, under `samples/`:
//! - `step-000042.json` ([`StepSamples`]): at most [`MAX_GROUPS_PER_STEP`] groups of at most
//!   [`MAX_SAMPLES_PER_GROUP`] completions, texts cut at [`MAX_TEXT_CHARS`] characters;
//! - `valid-first.json` and `valid-latest.json` ([`ValidationSamples`]): at most
//!   [`MAX_VALIDATION_ROWS`] rows, one answer each (the first of the row's samples).
//!
//! Step files are kept for the last [`KEEP_RECENT_STEPS`] steps, and earlier for every
//! [`KEEP_EVERY`]-th step, so a 10,000-step job keeps a few hundred files of at most a few
//! hundred kilobytes, not one per step. These are diagnostics: the loop logs a failure to write
//! them and trains on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dataset::PreparedRow;
use crate::step::GradedRollout;
use crate::TrainError;

/// Groups kept per step (the first ones of the batch; refill groups are not kept).
pub const MAX_GROUPS_PER_STEP: usize = 8;
/// Completions kept per group.
pub const MAX_SAMPLES_PER_GROUP: usize = 16;
/// Characters kept of a completion or a prompt message; longer texts are cut and marked.
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Prompt messages kept per group (the last ones: the user's question is last).
pub const MAX_PROMPT_MESSAGES: usize = 8;
/// Validation rows kept per pass.
pub const MAX_VALIDATION_ROWS: usize = 50;
/// Step files always kept: the most recent ones.
pub const KEEP_RECENT_STEPS: usize = 100;
/// Older step files kept: those of steps that are multiples of this.
pub const KEEP_EVERY: usize = 25;

/// The folder in a job folder.
const SAMPLES: &str = "samples";

/// A prompt message, as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptMessage {
    /// `system`, `user`, …
    pub role: String,
    /// Its text (content parts joined), cut at [`MAX_TEXT_CHARS`].
    pub content: String,
    /// Whether the text was cut.
    pub truncated: bool,
}

/// One sampled completion and its grade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    /// The completion's text, cut at [`MAX_TEXT_CHARS`].
    pub text: String,
    /// Whether the text was cut.
    pub truncated: bool,
    /// The total reward.
    pub reward: f64,
    /// Each grader's score: a multi grader's children by key, else the grader by its name.
    pub scores: BTreeMap<String, f64>,
    /// Whether grading raised an error flag.
    pub grader_error: bool,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// Completion tokens.
    pub tokens: usize,
}

/// One prompt's group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleGroup {
    /// The prompt's last messages.
    pub prompt: Vec<PromptMessage>,
    /// The group's completions (at most [`MAX_SAMPLES_PER_GROUP`]).
    pub samples: Vec<ScoredSample>,
    /// Completions the group had (kept or not).
    pub group_size: usize,
    /// Mean reward over the whole group.
    pub reward_mean: f64,
}

/// `samples/step-NNNNNN.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSamples {
    /// The training step (1-based).
    pub step: usize,
    /// Groups in the step's batch (kept or not).
    pub total_groups: usize,
    /// The kept groups.
    pub groups: Vec<SampleGroup>,
}

/// `samples/valid-first.json` / `valid-latest.json`: one answer per validation row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationSamples {
    /// The step the pass ran after (0: before training).
    pub step: usize,
    /// Rows in the validation set (kept or not).
    pub total_rows: usize,
    /// The kept rows, in dataset order: each a group of one answer.
    pub rows: Vec<SampleGroup>,
}

/// `text` cut at [`MAX_TEXT_CHARS`] characters, and whether it was.
fn cut(text: &str) -> (String, bool) {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((end, _)) => (text[..end].to_owned(), true),
        None => (text.to_owned(), false),
    }
}

/// A message's content as text: a string as is, content parts' `text` joined, anything else
/// as JSON.
fn content_text(content: Option<&Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(t) => t.to_owned(),
                None => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => other.to_string(),
    }
}

/// The kept record of one row's graded group, at most `max_samples` completions.
fn group_of(row: &PreparedRow, group: &GradedRollout, max_samples: usize) -> SampleGroup {
    let messages = &row.row.messages;
    let prompt = messages
        .iter()
        .skip(messages.len().saturating_sub(MAX_PROMPT_MESSAGES))
        .map(|m| {
            let (content, truncated) = cut(&content_text(m.content.as_ref()));
            PromptMessage {
                role: m.role.clone(),
                content,
                truncated,
            }
        })
        .collect();
    let samples = group
        .iter()
        .take(max_samples)
        .map(|(completion, grade)| {
            let (text, truncated) = cut(completion.text.as_deref().unwrap_or_default());
            let scores = if grade.sub_rewards.is_empty() {
                BTreeMap::from([(grade.metadata.name.clone(), grade.reward)])
            } else {
                grade
                    .sub_rewards
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            };
            ScoredSample {
                text,
                truncated,
                reward: grade.reward,
                scores,
                grader_error: grade.metadata.errors.any(),
                finish_reason: completion.finish_reason.as_str().to_owned(),
                tokens: completion.ids.len(),
            }
        })
        .collect();
    SampleGroup {
        prompt,
        samples,
        group_size: group.len(),
        reward_mean: crate::step::mean(group.iter().map(|(_, g)| g.reward), group.len()),
    }
}

/// The kept groups of a step's batch: the first [`MAX_GROUPS_PER_STEP`] rows.
pub fn step_groups(rows: &[&PreparedRow], graded: &[GradedRollout]) -> Vec<SampleGroup> {
    rows.iter()
        .zip(graded)
        .take(MAX_GROUPS_PER_STEP)
        .map(|(row, group)| group_of(row, group, MAX_SAMPLES_PER_GROUP))
        .collect()
}

fn step_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(SAMPLES).join(format!("step-{step:06}.json"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a step's file (atomically) and removes the step files retention no longer keeps.
pub fn write_step(
    dir: &Path,
    step: usize,
    total_groups: usize,
    groups: Vec<SampleGroup>,
) -> Result<(), TrainError> {
    let folder = dir.join(SAMPLES);
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let record = StepSamples {
        step,
        total_groups,
        groups,
    };
    crate::write_json_atomic(&step_path(dir, step), &record)?;
    for old in list_steps(dir) {
        if !kept(old, step) {
            let path = step_path(dir, old);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Whether the file of step `old` is kept once step `latest` is written.
fn kept(old: usize, latest: usize) -> bool {
    old + KEEP_RECENT_STEPS > latest || old.is_multiple_of(KEEP_EVERY)
}

/// The steps with a samples file, in order.
pub fn list_steps(dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir.join(SAMPLES)) else {
        return Vec::new();
    };
    let mut steps: Vec<usize> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let name = name.to_str()?;
            name.strip_prefix("step-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// A step's samples, if its file is there and reads.
pub fn read_step(dir: &Path, step: usize) -> Option<StepSamples> {
    crate::read_json(&step_path(dir, step)).ok()
}

/// Records a validation pass: always as the latest, and as the first when there is none yet
/// (a resumed job keeps its first). One answer per row: the first of its samples.
pub fn write_validation(
    dir: &Path,
    step: usize,
    rows: &[&PreparedRow],
    graded: &[GradedRollout],
) -> Result<(), TrainError> {
    let folder = dir.join(SAMPLES);
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let record = ValidationSamples {
        step,
        total_rows: rows.len(),
        rows: rows
            .iter()
            .zip(graded)
            .take(MAX_VALIDATION_ROWS)
            .map(|(row, group)| group_of(row, group, 1))
            .collect(),
    };
    let first = folder.join("valid-first.json");
    if !first.is_file() {
        crate::write_json_atomic(&first, &record)?;
    }
    crate::write_json_atomic(&folder.join("valid-latest.json"), &record)
}

/// The steps of the first and the latest recorded validation passes, without reading their
/// answers (the dashboard's sample index asks for them on every poll).
pub fn validation_steps(dir: &Path) -> (Option<usize>, Option<usize>) {
    #[derive(Deserialize)]
    struct Step {
        step: usize,
    }
    let folder = dir.join(SAMPLES);
    let step = |name: &str| {
        crate::read_json::<Step>(&folder.join(name))
            .ok()
            .map(|s| s.step)
    };
    (step("valid-first.json"), step("valid-latest.json"))
}

/// The first and the latest validation answers, when recorded.
pub fn read_validation(dir: &Path) -> (Option<ValidationSamples>, Option<ValidationSamples>) {
    let folder = dir.join(SAMPLES);
    (
        crate::read_json(&folder.join("valid-first.json")).ok(),
        crate::read_json(&folder.join("valid-latest.json")).ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rft_model::sample::{Completion, FinishReason};
    use rft_types::{DatasetRow, GraderErrors, GraderMetadata, RunGraderResponse};

    fn row(prompt: &str) -> PreparedRow {
        let line = serde_json::json!({
            "messages": [{"role": "user", "content": prompt}],
            "answer": "4",
        });
        PreparedRow {
            row: DatasetRow::from_value(line).unwrap(),
            prompt: vec![1, 2, 3],
        }
    }

    fn graded(texts: &[&str], reward: f64) -> GradedRollout {
        texts
            .iter()
            .map(|t| {
                let grade = RunGraderResponse {
                    reward,
                    metadata: GraderMetadata {
                        name: "exact".into(),
                        kind: "string_check".into(),
                        errors: GraderErrors::default(),
                        execution_time: 0.0,
                        scores: Default::default(),
                        token_usage: None,
                        sampled_model_name: None,
                    },
                    sub_rewards: Default::default(),
                    model_grader_token_usage_per_model: Default::default(),
                };
                (
                    Completion {
                        ids: vec![5; 3],
                        logprobs: vec![-0.1; 3],
                        finish_reason: FinishReason::Stop,
                        text: Some((*t).to_owned()),
                    },
                    grade,
                )
            })
            .collect()
    }

    #[test]
    fn groups_and_texts_are_capped() {
        let long = "é".repeat(MAX_TEXT_CHARS + 10);
        let rows: Vec<PreparedRow> = (0..MAX_GROUPS_PER_STEP + 3).map(|_| row(&long)).collect();
        let refs: Vec<&PreparedRow> = rows.iter().collect();
        let many: Vec<&str> = vec![long.as_str(); MAX_SAMPLES_PER_GROUP + 4];
        let groups: Vec<GradedRollout> = rows.iter().map(|_| graded(&many, 0.5)).collect();
        let kept = step_groups(&refs, &groups);
        assert_eq!(kept.len(), MAX_GROUPS_PER_STEP);
        let group = &kept[0];
        assert_eq!(group.samples.len(), MAX_SAMPLES_PER_GROUP);
        assert_eq!(group.group_size, MAX_SAMPLES_PER_GROUP + 4);
        assert!(group.samples[0].truncated && group.prompt[0].truncated);
        assert_eq!(group.samples[0].text.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(group.prompt[0].content.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(group.samples[0].scores.get("exact"), Some(&0.5));
        assert_eq!(group.samples[0].finish_reason, "stop");
    }

    #[test]
    fn prompt_messages_are_capped_to_the_last_ones() {
        let mut prepared = row("q");
        let message = prepared.row.messages[0].clone();
        prepared.row.messages = (0..MAX_PROMPT_MESSAGES + 2)
            .map(|i| {
                let mut m = message.clone();
                m.content = Some(Value::String(format!("m{i}")));
                m
            })
            .collect();
        let group = group_of(&prepared, &graded(&["a"], 1.0), 4);
        assert_eq!(group.prompt.len(), MAX_PROMPT_MESSAGES);
        assert_eq!(
            group.prompt.last().map(|m| m.content.as_str()),
            Some(format!("m{}", MAX_PROMPT_MESSAGES + 1).as_str())
        );
    }

    #[test]
    fn old_step_files_are_pruned_but_every_nth_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let total = KEEP_RECENT_STEPS + 2 * KEEP_EVERY + 3;
        for step in 1..=total {
            write_step(tmp.path(), step, 0, Vec::new()).unwrap();
        }
        let steps = list_steps(tmp.path());
        let recent = (total - KEEP_RECENT_STEPS + 1)..=total;
        let expected: Vec<usize> = (1..=total)
            .filter(|s| recent.contains(s) || s.is_multiple_of(KEEP_EVERY))
            .collect();
        assert_eq!(steps, expected);
        assert!(read_step(tmp.path(), total).is_some());
        assert!(read_step(tmp.path(), 1).is_none());
    }

    #[test]
    fn validation_keeps_the_first_pass_and_the_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let rows: Vec<PreparedRow> = (0..MAX_VALIDATION_ROWS + 5)
            .map(|i| row(&format!("q{i}")))
            .collect();
        let refs: Vec<&PreparedRow> = rows.iter().collect();
        let before: Vec<GradedRollout> = rows.iter().map(|_| graded(&["5", "6"], 0.0)).collect();
        let after: Vec<GradedRollout> = rows.iter().map(|_| graded(&["4"], 1.0)).collect();
        write_validation(tmp.path(), 0, &refs, &before).unwrap();
        write_validation(tmp.path(), 4, &refs, &after).unwrap();
        write_validation(tmp.path(), 8, &refs, &after).unwrap();
        let (first, latest) = read_validation(tmp.path());
        let (first, latest) = (first.unwrap(), latest.unwrap());
        assert_eq!((first.step, latest.step), (0, 8));
        assert_eq!(first.rows.len(), MAX_VALIDATION_ROWS);
        assert_eq!(first.total_rows, MAX_VALIDATION_ROWS + 5);
        assert_eq!(first.rows[0].samples.len(), 1);
        assert_eq!(first.rows[0].samples[0].text, "5");
        assert_eq!(latest.rows[0].samples[0].text, "4");
    }
}
