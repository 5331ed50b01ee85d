//! A job's checkpoints on disk: the resume state (`checkpoints/latest`, swapped in atomically
//! after every step) and the validation checkpoints (`checkpoints/step-N/` adapters listed in
//! `checkpoints.jsonl`, the best [`KEPT_CHECKPOINTS`] by validation reward kept).

use std::path::{Path, PathBuf};

use rft_types::api::checkpoint::{Checkpoint, CheckpointMetrics};
use serde::{Deserialize, Serialize};

use crate::collapse::CollapseWatch;

use crate::primitives::{StepFile, TrainingClient};
use crate::TrainError;

/// The resume state's folder in `checkpoints/`, and the two names [`save_latest`] swaps it
/// through.
const LATEST: &str = "latest";
const LATEST_NEW: &str = "latest.new";
const LATEST_OLD: &str = "latest.old";
/// Written last into a state folder: `{"step": n}`.
const PROGRESS: &str = "progress.json";
/// The list of kept checkpoints in a job folder.
const CHECKPOINTS: &str = "checkpoints.jsonl";
/// Validation checkpoints kept (OpenAI keeps the 3 best by validation reward).
pub(crate) const KEPT_CHECKPOINTS: usize = 3;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_owned();
    move |source| TrainError::Io { path, source }
}

/// The step of a complete state folder (its `progress.json`, written last, and the optimizer
/// state it follows); `None` for a missing or half-written one.
fn complete_step(dir: &Path) -> Option<usize> {
    if !dir.join("optimizer.json").is_file() {
        return None;
    }
    crate::read_json::<StepFile>(&dir.join(PROGRESS))
        .ok()
        .map(|p| p.step as usize)
}

/// Puts back `checkpoints/latest` when a kill between [`save_latest`]'s two renames left only
/// `latest.old` (the previous state) and `latest.new` (the new one, complete once its
/// `progress.json` exists): the newest complete one becomes `latest`, with one rename. Without
/// this, the job would restart from step 0.
pub(crate) fn recover_latest(checkpoints: &Path) -> Result<(), TrainError> {
    let latest = checkpoints.join(LATEST);
    if complete_step(&latest).is_some() {
        return Ok(());
    }
    // On a tie the new one wins (`max_by_key` keeps the last maximum): they hold the same step.
    let Some((step, found)) = [LATEST_OLD, LATEST_NEW]
        .iter()
        .map(|name| checkpoints.join(name))
        .filter_map(|dir| complete_step(&dir).map(|step| (step, dir)))
        .max_by_key(|(step, _)| *step)
    else {
        return Ok(());
    };
    if latest.exists() {
        // Incomplete (checked above): nothing in it can be resumed from.
        std::fs::remove_dir_all(&latest).map_err(io_error(&latest))?;
    }
    std::fs::rename(&found, &latest).map_err(io_error(&found))?;
    rft_types::paths::sync_dir(checkpoints).map_err(io_error(checkpoints))?;
    tracing::warn!(
        "{}: the last save was interrupted; resuming from {} (step {step})",
        checkpoints.display(),
        found.display()
    );
    Ok(())
}

/// The resume state's folder and the step it was saved after, when there is one (call
/// [`recover_latest`] first). A state without `progress.json` (saved before it existed)
/// resumes as after step 0.
pub fn latest(checkpoints: &Path) -> Option<(PathBuf, usize)> {
    let dir = checkpoints.join(LATEST);
    if !dir.join("optimizer.json").is_file() {
        return None;
    }
    let step = crate::read_json::<StepFile>(&dir.join(PROGRESS)).map_or(0, |p| p.step as usize);
    Some((dir, step))
}

/// Writes `client`'s state after `step` to `checkpoints/latest`. The new state is written
/// beside the old one (`latest.new`, `progress.json` last), then swapped in with two renames;
/// a kill between them leaves no `latest`, which [`recover_latest`] repairs on resume.
pub fn save_latest(
    client: &TrainingClient,
    checkpoints: &Path,
    step: usize,
) -> Result<(), TrainError> {
    save_latest_with(client, checkpoints, step, &CollapseWatch::default())
}

/// What `progress.json` holds: the step, and the loop's collapse watch, so a resumed job warns
/// exactly where an uninterrupted one would.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    step: u64,
    #[serde(default)]
    collapse: CollapseWatch,
}

/// The collapse watch saved with the resume state (a fresh one for a state saved without it).
pub(crate) fn latest_collapse(checkpoints: &Path) -> CollapseWatch {
    crate::read_json::<Progress>(&checkpoints.join(LATEST).join(PROGRESS))
        .map(|p| p.collapse)
        .unwrap_or_default()
}

/// [`save_latest`] with the loop's collapse watch.
pub(crate) fn save_latest_with(
    client: &TrainingClient,
    checkpoints: &Path,
    step: usize,
    collapse: &CollapseWatch,
) -> Result<(), TrainError> {
    let latest = checkpoints.join(LATEST);
    let staging = checkpoints.join(LATEST_NEW);
    let old = checkpoints.join(LATEST_OLD);
    // Leftovers of an interrupted save; a missing folder is the normal case.
    let _ = std::fs::remove_dir_all(&staging);
    client.save_state(&staging)?;
    // Last: its presence marks the folder complete (every file before it was fsynced).
    crate::write_json_atomic(
        &staging.join(PROGRESS),
        &Progress {
            step: step as u64,
            collapse: collapse.clone(),
        },
    )?;
    let _ = std::fs::remove_dir_all(&old);
    if latest.exists() {
        std::fs::rename(&latest, &old).map_err(io_error(&latest))?;
    }
    std::fs::rename(&staging, &latest).map_err(io_error(&latest))?;
    // The renames live in the folder: make them durable before the step counts as saved.
    rft_types::paths::sync_dir(checkpoints).map_err(io_error(checkpoints))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// A job folder's kept checkpoints (`fine_tuning.job.checkpoint` objects), by step.
pub fn read_checkpoints(dir: &Path) -> Vec<Checkpoint> {
    parse_checkpoints(&std::fs::read_to_string(dir.join(CHECKPOINTS)).unwrap_or_default())
}

/// The checkpoints of a `checkpoints.jsonl`'s text (a copy fetched from elsewhere), by step; a
/// line that does not parse is skipped.
pub fn parse_checkpoints(text: &str) -> Vec<Checkpoint> {
    let mut all: Vec<Checkpoint> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    all.sort_by_key(|c| c.step_number);
    all
}

/// A line of `checkpoints.jsonl`: the API object and, for the trainer's own use, the adapter
/// folder (the server leaves it out of what it serves: readers parse lines as [`Checkpoint`]).
#[derive(Serialize)]
struct CheckpointLine<'a> {
    #[serde(flatten)]
    checkpoint: &'a Checkpoint,
    path: &'a Path,
}

/// The adapter folder of the checkpoint of `step`.
pub(crate) fn checkpoint_dir(job_dir: &Path, step: usize) -> PathBuf {
    job_dir.join(format!("checkpoints/step-{step}"))
}

/// What a validation checkpoint records.
#[derive(Debug, Clone)]
pub(crate) struct NewCheckpoint<'a> {
    /// The job's id (`ftjob-…`).
    pub job_id: &'a str,
    /// The job's fine-tuned model name; the checkpoint's adds `:ckpt-step-N`.
    pub fine_tuned_model: &'a str,
    /// The step it follows.
    pub step: usize,
    /// The step's mean training reward.
    pub train_reward_mean: f64,
    /// The step's validation reward (what checkpoints are ranked by).
    pub valid_reward_mean: f64,
}

/// Saves the adapter of a validation step as a checkpoint and keeps the
/// [`KEPT_CHECKPOINTS`] best by validation reward (ties: the later step): the others' folders
/// are deleted and `checkpoints.jsonl` is rewritten atomically to list the kept ones.
pub(crate) fn save_checkpoint(
    client: &TrainingClient,
    job_dir: &Path,
    new: &NewCheckpoint<'_>,
) -> Result<Checkpoint, TrainError> {
    let step = new.step;
    let dir = checkpoint_dir(job_dir, step);
    client.save_weights_for_sampler(&dir)?;
    let checkpoint = Checkpoint {
        id: format!("ftckpt-{}-{step}", new.job_id.trim_start_matches("ftjob-")),
        object: Checkpoint::OBJECT.into(),
        created_at: crate::unix_now(),
        fine_tuned_model_checkpoint: format!("{}:ckpt-step-{step}", new.fine_tuned_model),
        fine_tuning_job_id: new.job_id.to_owned(),
        step_number: step,
        metrics: CheckpointMetrics {
            step,
            train_reward_mean: new.train_reward_mean,
            valid_reward_mean: new.valid_reward_mean,
        },
    };
    // The kept ones are what the list says (a step saved again replaces its entry).
    let mut kept: Vec<Checkpoint> = read_checkpoints(job_dir)
        .into_iter()
        .filter(|c| c.step_number != step)
        .collect();
    kept.push(checkpoint.clone());
    kept.sort_by(|a, b| {
        b.metrics
            .valid_reward_mean
            .total_cmp(&a.metrics.valid_reward_mean)
            .then(b.step_number.cmp(&a.step_number))
    });
    for dropped in kept.iter().skip(KEPT_CHECKPOINTS) {
        // Best effort: a folder left behind costs disk, not correctness.
        let _ = std::fs::remove_dir_all(checkpoint_dir(job_dir, dropped.step_number));
    }
    kept.truncate(KEPT_CHECKPOINTS);
    kept.sort_by_key(|c| c.step_number);
    let mut text = String::new();
    for c in &kept {
        let path = checkpoint_dir(job_dir, c.step_number);
        let line = serde_json::to_string(&CheckpointLine {
            checkpoint: c,
            path: &path,
        })
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
        text.push_str(&line);
        text.push('\n');
    }
    let path = job_dir.join(CHECKPOINTS);
    rft_types::paths::write_atomic(&path, text.as_bytes()).map_err(io_error(&path))?;
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &Path, step: Option<u64>) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("optimizer.json"), "{}").unwrap();
        if let Some(step) = step {
            std::fs::write(dir.join(PROGRESS), format!("{{\"step\": {step}}}")).unwrap();
        }
    }

    fn latest_step(checkpoints: &Path) -> Option<usize> {
        complete_step(&checkpoints.join(LATEST))
    }

    #[test]
    fn a_save_cut_between_its_renames_is_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path();
        // Killed between the renames: old and a complete new, no latest.
        state(&ck.join(LATEST_OLD), Some(4));
        state(&ck.join(LATEST_NEW), Some(5));
        recover_latest(ck).unwrap();
        assert_eq!(latest_step(ck), Some(5));
        assert!(!ck.join(LATEST_NEW).exists());
        // A complete latest is never replaced.
        state(&ck.join(LATEST_NEW), Some(9));
        recover_latest(ck).unwrap();
        assert_eq!(latest_step(ck), Some(5));
    }

    #[test]
    fn a_half_written_new_state_falls_back_to_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path();
        state(&ck.join(LATEST_OLD), Some(4));
        state(&ck.join(LATEST_NEW), None);
        recover_latest(ck).unwrap();
        assert_eq!(latest_step(ck), Some(4));
        // Nothing complete anywhere: nothing to resume, no error.
        let empty = tmp.path().join("empty");
        state(&empty.join(LATEST_NEW), None);
        recover_latest(&empty).unwrap();
        assert_eq!(latest_step(&empty), None);
    }
}
