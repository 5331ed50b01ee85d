//! `rft grade`: the `graders/run` endpoint over one sample or a JSONL file of requests.
//!
//! A bad request line never stops the others: its output line is
//! `{"error": {"line": N, "message": "..."}}` in its place, the same message goes to stderr, and
//! the command exits 1 once every line is written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use rayon::prelude::*;
use rft_grade::{compile_with, CompiledGrader};
use rft_types::Sample;
use serde::Deserialize;
use serde_json::{json, Value};

use super::read_grader;
use crate::cli::GradeArgs;

/// One line of `--input`: the body of `graders/run` without the grader.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    model_sample: String,
    #[serde(default)]
    item: Option<Value>,
}

pub(crate) fn run(args: &GradeArgs) -> anyhow::Result<ExitCode> {
    let grader = read_grader(&args.grader)?;
    // The local embedding model is loaded here, once, when the grader needs it.
    let context = crate::embedder::context_for(&grader)?;
    let compiled = compile_with(&grader, &context)
        .with_context(|| format!("cannot grade with {}", args.grader.display()))?;
    match (&args.sample, &args.input) {
        (Some(sample), _) => grade_one(&compiled, sample, args.item.as_deref()),
        (None, Some(input)) => grade_file(&compiled, input, args.output.as_deref()),
        (None, None) => anyhow::bail!("give --sample TEXT or --input REQUESTS.jsonl"),
    }
}

fn grade_one(
    grader: &CompiledGrader,
    sample: &str,
    item: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let item = match item {
        Some(text) => {
            let value: Value = serde_json::from_str(text).context("--item is not valid JSON")?;
            anyhow::ensure!(
                value.is_object(),
                "--item must be a JSON object, like '{{\"answer\": \"4\"}}'"
            );
            value
        }
        None => json!({}),
    };
    let result = grader.grade(&Sample::from_text(sample), &item);
    outln!("{}", serde_json::to_string_pretty(&result)?);
    Ok(ExitCode::SUCCESS)
}

fn grade_file(
    grader: &CompiledGrader,
    input: &Path,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read requests file {}", input.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(idx, line)| (idx + 1, line))
        .collect();
    // Ok: the result as JSON; Err: what was wrong with the line.
    // `install` picks a pool wide enough for judge calls when the grader makes any.
    let results: Vec<Result<String, String>> = grader.install(|| {
        lines
            .par_iter()
            .map(|&(_, line)| {
                let request = parse_request(line)?;
                let item = request.item.unwrap_or_else(|| json!({}));
                let result = grader.grade(&Sample::from_text(&request.model_sample), &item);
                serde_json::to_string(&result).map_err(|e| e.to_string())
            })
            .collect()
    });

    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut n_failed = 0;
    for ((line_no, _), result) in lines.iter().zip(&results) {
        match result {
            Ok(json) => writeln!(out, "{json}")?,
            Err(message) => {
                n_failed += 1;
                eprintln!("error: {}:{line_no}: {message}", input.display());
                writeln!(
                    out,
                    "{}",
                    json!({"error": {"line": line_no, "message": message}})
                )?;
            }
        }
    }
    out.flush()?;
    if n_failed > 0 {
        eprintln!(
            "graded {} of {} lines; {n_failed} lines had errors",
            lines.len() - n_failed,
            lines.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_request(line: &str) -> Result<RunRequest, String> {
    let request: RunRequest = serde_json::from_str(line)
        .map_err(|e| format!("{e}; expected {{\"model_sample\": \"...\", \"item\": {{...}}}}"))?;
    if let Some(item) = &request.item {
        if !item.is_object() && !item.is_null() {
            return Err("`item` must be a JSON object".to_owned());
        }
    }
    Ok(request)
}
