//! `rft eval` and `rft doctor`: run a model over a dataset, grade it, write the spec's eval
//! objects and the RFT readiness report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rft_eval::data::{read_data, DataFormat};
use rft_eval::objects::{build_objects, pass_threshold, RunInfo};
use rft_eval::policy::{Policy, RemoteModel, SamplingOptions};
use rft_eval::report::{build_report, summary, write_report, ReportInput, ReportOptions};
use rft_eval::run::{run_eval, EvalConfig};
use serde_json::Value;

use crate::cli::EvalArgs;

/// Which command: the eval objects are the point of `eval`, the report that of `doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Eval,
    Doctor,
}

/// Where `rft doctor` writes its report when no --report is given.
const DOCTOR_REPORT_DIR: &str = "rft-report";

pub(crate) fn run(args: &EvalArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    if args.samples == 0 {
        anyhow::bail!("--samples must be at least 1 (the report's learnability check needs 2)");
    }
    let grader_spec = super::read_grader(&args.grader)?;
    let context = crate::embedder::context_for(&grader_spec)?;
    let grader = rft_grade::compile_with(&grader_spec, &context)
        .with_context(|| format!("cannot use the grader in {}", args.grader.display()))?;
    let mut data = read_data(&args.dataset)?;
    if let Some(limit) = args.limit {
        data.truncate(limit);
    }
    if let Some(field) = &args.reference_field {
        if !data.rows.iter().any(|r| r.item.contains_key(field)) {
            anyhow::bail!(
                "--reference-field {field}: no row of {} has that field (fields: {})",
                args.dataset.display(),
                data.rows
                    .first()
                    .map(|r| r.item.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
        }
    }
    let response_format = match &args.response_format {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                serde_json::from_str::<Value>(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?,
            )
        }
        None => None,
    };
    let policy = match (data.format, &args.base_url) {
        (DataFormat::EvalRun, _) => {
            tracing::info!(
                "{} holds samples: grading them as they are, without a model",
                args.dataset.display()
            );
            None
        }
        (DataFormat::Rft, Some(url)) => Some(Policy::Remote(RemoteModel::new(
            url,
            args.api_key.as_deref(),
            &args.model,
            args.concurrency,
        ))),
        (DataFormat::Rft, None) => {
            tracing::info!("loading model {}", args.model);
            Some(
                Policy::load_local(&args.model)
                    .with_context(|| format!("cannot load model {}", args.model))?,
            )
        }
    };
    let report_dir: Option<PathBuf> = match mode {
        Mode::Doctor => Some(
            args.report
                .clone()
                .unwrap_or_else(|| PathBuf::from(DOCTOR_REPORT_DIR)),
        ),
        Mode::Eval => args.report.clone(),
    };
    let output = args
        .output
        .clone()
        .or_else(|| report_dir.as_ref().map(|d| d.join("results.jsonl")));
    let sampling = SamplingOptions {
        samples: args.samples,
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        seed: args.seed,
        response_format: response_format.clone(),
        cancel: None,
    };
    let config = EvalConfig {
        sampling: sampling.clone(),
        output,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(data.rows.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} rows ({eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("evaluating");
        bar
    });
    let results = run_eval(
        &data,
        policy.as_ref(),
        &grader,
        &config,
        &mut |done, total| match &bar {
            Some(bar) => bar.set_position(done as u64),
            None => tracing::info!("{done}/{total} rows graded"),
        },
    )?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let model_name = policy.as_ref().map(Policy::name);
    let name = format!(
        "{} on {}",
        model_name.as_deref().unwrap_or("given samples"),
        args.dataset
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let report_url = report_dir
        .as_ref()
        .map(|d| file_url(&d.join("report.html")));
    let objects = build_objects(
        &data,
        &grader_spec,
        &results,
        &RunInfo {
            name: &name,
            model: model_name.as_deref(),
            sampling: &sampling,
            pass_threshold: args
                .pass_threshold
                .unwrap_or_else(|| pass_threshold(&grader_spec)),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            report_url,
        },
    );
    let Some(dir) = report_dir else {
        outln!("{}", serde_json::to_string_pretty(&objects.run)?);
        return Ok(ExitCode::SUCCESS);
    };
    write_objects(&dir, &objects)?;
    let options = ReportOptions {
        reference_field: args.reference_field.clone(),
        judge_repeats: args.judge_repeats,
        seed: args.seed,
    };
    let report = build_report(&ReportInput {
        data: &data,
        results: &results,
        grader_spec: &grader_spec,
        grader: &grader,
        model: model_name.as_deref().unwrap_or("given"),
        response_format: response_format.as_ref(),
        options: &options,
    });
    write_report(&report, &dir)?;
    let text = summary(&report);
    match mode {
        Mode::Doctor => out!("{text}"),
        Mode::Eval => {
            outln!("{}", serde_json::to_string_pretty(&objects.run)?);
            eprint!("{text}");
        }
    }
    eprintln!("report: {}", dir.join("report.html").display());
    // `rft doctor` is a pre-flight check: a blocker (RFT cannot help on this task as it is)
    // fails it, so scripts and CI can gate training on it. Warnings do not.
    if mode == Mode::Doctor && report.verdict == rft_eval::report::Verdict::Blocker {
        eprintln!("verdict: blocker; fix the blockers above before training (exit status 2)");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn file_url(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    format!("file://{}", absolute.display())
}

/// `eval.json`, `run.json` and `output_items.jsonl` beside the report: what the server serves.
fn write_objects(dir: &Path, objects: &rft_eval::objects::EvalObjects) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.join(name);
        rft_types::paths::write_atomic(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write("eval.json", serde_json::to_vec_pretty(&objects.eval)?)?;
    write("run.json", serde_json::to_vec_pretty(&objects.run)?)?;
    let mut items = Vec::new();
    for item in &objects.output_items {
        serde_json::to_writer(&mut items, item)?;
        items.push(b'\n');
    }
    write("output_items.jsonl", items)
}
