//! `rft example list` and `rft example run NAME`: the worked examples in `examples/`, one per
//! use case of the three RFT task families, each run end to end: its files checked, the
//! readiness report (`rft doctor`), then the job, whose first and last validation are the
//! before and after; the result is printed as a row of the table in docs/examples.md.
//!
//! The examples' files are compiled into the binary, so the command works from any folder; the
//! copies a user reads and edits are in `examples/NAME/`.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use rft_train::config::parse_job;
use rft_types::api::job::CreateJob;
use serde_json::{json, Value};

use crate::cli::EvalArgs;

/// `rft example ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ExampleCommand {
    /// List the examples: name, task family, grader, what the task is.
    List,
    /// Run one example end to end: check its files, run the readiness report on its
    /// validation set, train, and print the validation reward before and after.
    Run(RunArgs),
}

/// Arguments of `rft example run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The example (see `rft example list`).
    pub(crate) name: String,
    /// The model to fine-tune instead of the job's (any model `rft train` takes).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Training steps (default: the job's, its passes over the training rows); trims the
    /// training rows to steps × batch size and runs one pass over them.
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// The job's seed (LoRA init, sampling, validation samples) instead of the job's.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Where the run is written (default: $RFT_HOME/examples/NAME).
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,
    /// Skip the readiness report (it samples the validation set once more).
    #[arg(long)]
    pub(crate) no_doctor: bool,
}

/// One example: its files, compiled in.
pub(crate) struct Example {
    pub(crate) name: &'static str,
    /// Which of the three RFT task families it belongs to.
    pub(crate) family: &'static str,
    pub(crate) summary: &'static str,
    /// The item field that holds the right answer as text, for the readiness report's
    /// constant-answer probes and judge alignment (none where the answer is structured).
    pub(crate) reference: Option<&'static str>,
    pub(crate) train: &'static str,
    pub(crate) valid: &'static str,
    pub(crate) grader: &'static str,
    pub(crate) job: &'static str,
}

macro_rules! example {
    ($name:literal, $family:expr, $summary:literal, $reference:expr) => {
        Example {
            name: $name,
            family: $family,
            summary: $summary,
            reference: $reference,
            train: include_str!(concat!("../../../../examples/", $name, "/train.jsonl")),
            valid: include_str!(concat!("../../../../examples/", $name, "/valid.jsonl")),
            grader: include_str!(concat!("../../../../examples/", $name, "/grader.json")),
            job: include_str!(concat!("../../../../examples/", $name, "/job.json")),
        }
    };
}

/// The three task families.
const CODE: &str = "instructions to code";
const FACTS: &str = "facts to clean format";
const RULES: &str = "complex rules";

/// Every example, in the order `rft example list` shows them.
pub(crate) const EXAMPLES: &[Example] = &[
    example!(
        "vip_wiring",
        CODE,
        "wire a verification IP's ports to testbench signals: Python connect() calls, executed",
        None
    ),
    example!(
        "api_snippets",
        CODE,
        "one call on a documented client API, keyword arguments only: checked on its AST",
        None
    ),
    example!(
        "schedule_conflicts",
        CODE,
        "the two meetings of a calendar booked at the same time or duplicated: their ids",
        Some("answer")
    ),
    example!(
        "medical_coding",
        FACTS,
        "the one code (invented, ICD-10 style) that fits a clinical note, from a list of six",
        Some("code")
    ),
    example!(
        "legal_excerpts",
        FACTS,
        "the sentence of a lease that supports a claim, quoted word for word",
        Some("answer")
    ),
    example!(
        "tax_reasoning",
        RULES,
        "the deduction a made-up table gives for a filing status: one amount",
        Some("answer")
    ),
    example!(
        "content_moderation",
        RULES,
        "one family:label of a two-level moderation policy, six balanced labels",
        Some("label")
    ),
    example!(
        "legal_review",
        RULES,
        "a one-line summary of how a clause changed, graded by overlap and an LLM judge",
        Some("answer")
    ),
];

pub(crate) fn run(command: &ExampleCommand) -> anyhow::Result<ExitCode> {
    match command {
        ExampleCommand::List => {
            list()?;
            Ok(ExitCode::SUCCESS)
        }
        ExampleCommand::Run(args) => run_example(args),
    }
}

/// Finds an example by name; the error lists the names.
pub(crate) fn find(name: &str) -> anyhow::Result<&'static Example> {
    EXAMPLES.iter().find(|e| e.name == name).with_context(|| {
        format!(
            "no example {name:?}; the examples: {}",
            EXAMPLES
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn list() -> anyhow::Result<()> {
    outln!("{:<20} {:<22} {:<52} task", "name", "family", "grader");
    for example in EXAMPLES {
        let kind = serde_json::from_str::<Value>(example.grader)
            .map(|g| grader_kind(&g))
            .unwrap_or_else(|_| "invalid grader.json".into());
        outln!(
            "{:<20} {:<22} {:<52} {}",
            example.name,
            example.family,
            kind,
            example.summary
        );
    }
    outln!("\nrun one with: rft example run NAME   (files and results: examples/NAME/, docs/examples.md)");
    Ok(())
}

/// "python", or "multi(string_check, text_similarity)": the grader's type and its children's.
pub(crate) fn grader_kind(grader: &Value) -> String {
    let kind = grader["type"].as_str().unwrap_or("?");
    match grader["graders"].as_object() {
        Some(children) if kind == "multi" => format!(
            "multi({})",
            children
                .values()
                .map(|c| c["type"].as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => kind.to_owned(),
    }
}

/// Whether any part of the grader calls a judge model.
fn calls_judge(grader: &Value) -> bool {
    match grader["type"].as_str() {
        Some("score_model" | "label_model") => true,
        Some("multi") => grader["graders"]
            .as_object()
            .is_some_and(|c| c.values().any(calls_judge)),
        _ => false,
    }
}

/// The example's job with its files written under `data`, and the overrides applied.
pub(crate) fn prepare(
    example: &Example,
    data: &Path,
    model: Option<&str>,
    steps: Option<usize>,
    seed: Option<u64>,
) -> anyhow::Result<(CreateJob, Value)> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let grader: Value = serde_json::from_str(example.grader)
        .with_context(|| format!("examples/{}/grader.json is not JSON", example.name))?;
    rft_types::Grader::from_value(&grader).with_context(|| {
        format!(
            "examples/{}/grader.json is not a valid grader",
            example.name
        )
    })?;
    let mut job: Value = serde_json::from_str(example.job)
        .with_context(|| format!("examples/{}/job.json is not JSON", example.name))?;
    anyhow::ensure!(
        job["method"]["reinforcement"]["grader"] == grader,
        "examples/{}/job.json's grader differs from grader.json",
        example.name
    );
    let hyper = &job["method"]["reinforcement"]["hyperparameters"];
    let batch = hyper["batch_size"].as_u64().unwrap_or(8).max(1) as usize;
    // `--steps` counts steps, so it runs one pass over that many batches.
    let epochs = match steps {
        Some(_) => 1,
        None => hyper["n_epochs"].as_u64().unwrap_or(1).max(1) as usize,
    };
    let rows: Vec<&str> = example
        .train
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let keep = match steps {
        Some(0) => anyhow::bail!("--steps must be at least 1"),
        Some(steps) => (steps.saturating_mul(batch)).min(rows.len()),
        None => rows.len(),
    };
    let train: String = rows[..keep].iter().map(|l| format!("{l}\n")).collect();
    let train_path = data.join("train.jsonl");
    let valid_path = data.join("valid.jsonl");
    for (path, content) in [
        (&train_path, train.as_str()),
        (&valid_path, example.valid),
        (&data.join("grader.json"), example.grader),
    ] {
        std::fs::write(path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Every row must parse as a dataset row before anything is sampled.
    for (path, name) in [(&train_path, "train.jsonl"), (&valid_path, "valid.jsonl")] {
        let rows = rft_train::dataset::read_dataset(path)
            .with_context(|| format!("examples/{}/{name}", example.name))?;
        anyhow::ensure!(
            !rows.is_empty(),
            "examples/{}/{name} is empty",
            example.name
        );
    }
    job["training_file"] = Value::String(train_path.to_string_lossy().into_owned());
    job["validation_file"] = Value::String(valid_path.to_string_lossy().into_owned());
    if let Some(model) = model {
        job["model"] = Value::String(model.to_owned());
    }
    if let Some(seed) = seed {
        job["seed"] = Value::from(seed);
    }
    // Validation runs before the first step and after the last: the before and after.
    let total = keep.div_ceil(batch).max(1) * epochs;
    job["method"]["reinforcement"]["hyperparameters"]["n_epochs"] = Value::from(epochs);
    job["method"]["reinforcement"]["hyperparameters"]["eval_interval"] = Value::from(total);
    let request = parse_job(job.clone())
        .with_context(|| format!("examples/{}/job.json is not a valid job", example.name))?;
    Ok((request, job))
}

fn run_example(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let example = find(&args.name)?;
    let dir = args.output.clone().unwrap_or_else(|| {
        rft_types::paths::rft_home()
            .join("examples")
            .join(example.name)
    });
    let (request, job) = prepare(
        example,
        &dir.join("data"),
        args.model.as_deref(),
        args.steps,
        args.seed,
    )?;
    let grader = &job["method"]["reinforcement"]["grader"];
    let hyper = &job["method"]["reinforcement"]["hyperparameters"];
    eprintln!(
        "example {}: {} ({}), grader {}, model {}",
        example.name,
        example.summary,
        example.family,
        grader_kind(grader),
        request.model
    );
    if request.model == rft_model::hub::SMOLLM2_135M_INSTRUCT.name {
        rft_model::hub::SMOLLM2_135M_INSTRUCT
            .ensure()
            .context("cannot fetch the default model")?;
    }
    // A judge grader gets a local judge: `rft serve` on a free loopback port, serving the
    // default model, unless the user points RFT_JUDGE_BASE_URL elsewhere.
    let _judge = if calls_judge(grader) && std::env::var_os("RFT_JUDGE_BASE_URL").is_none() {
        let judge = LocalJudge::start(&dir.join("judge"))?;
        // Set before any judge client exists: the client reads the variable once, when the
        // first grader that needs it is compiled.
        std::env::set_var("RFT_JUDGE_BASE_URL", &judge.base);
        // A small judge on a busy CPU answers slowly: patience, not failed grades.
        for (key, value) in [
            ("RFT_JUDGE_TIMEOUT_SECS", "600"),
            ("RFT_JUDGE_DEADLINE_SECS", "1800"),
        ] {
            if std::env::var_os(key).is_none() {
                std::env::set_var(key, value);
            }
        }
        eprintln!(
            "judge: rft serve at {} (log: {})",
            judge.base,
            judge.log.display()
        );
        Some(judge)
    } else {
        None
    };
    let verdict = if args.no_doctor {
        None
    } else {
        Some(doctor(example, &dir, &request, hyper)?)
    };
    let run_dir = dir.join("run");
    // An example run always starts fresh.
    let _ = std::fs::remove_dir_all(&run_dir);
    let summary = super::train::run(&request, &run_dir)?;
    super::train::print_summary(&summary, &run_dir)?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let (before, after) = (summary.baseline_valid_reward, summary.final_valid_reward);
    let result = json!({
        "example": example.name,
        "family": example.family,
        "grader": grader_kind(grader),
        "model": request.model,
        "seed": request.seed,
        "steps": summary.steps,
        "before": before,
        "after": after,
        "change": before.zip(after).map(|(b, a)| a - b),
        "doctor": verdict,
        "minutes": minutes,
    });
    let result_path = dir.join("result.json");
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("cannot write {}", result_path.display()))?;
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    outln!("\n| example | family | grader | model | doctor | steps | before | after | change | minutes |");
    outln!("|---|---|---|---|---|---|---|---|---|---|");
    outln!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
        example.name,
        example.family,
        grader_kind(grader),
        request.model,
        verdict.as_deref().unwrap_or("-"),
        summary.steps,
        show(before),
        show(after),
        before
            .zip(after)
            .map_or_else(|| "-".to_owned(), |(b, a)| format!("{:+.3}", a - b)),
        minutes
    );
    eprintln!("result: {}", result_path.display());
    Ok(ExitCode::SUCCESS)
}

/// The readiness report on the validation set, sampled as the job samples; returns its verdict.
fn doctor(
    example: &Example,
    dir: &Path,
    request: &CreateJob,
    hyper: &Value,
) -> anyhow::Result<String> {
    let report = dir.join("doctor");
    let _ = std::fs::remove_dir_all(&report);
    let data = dir.join("data");
    let args = EvalArgs {
        dataset: data.join("valid.jsonl"),
        grader: data.join("grader.json"),
        model: request.model.clone(),
        base_url: None,
        api_key: None,
        concurrency: 8,
        samples: 4,
        limit: None,
        max_tokens: hyper["max_completion_tokens"].as_u64().unwrap_or(256) as usize,
        temperature: hyper["temperature"].as_f64().unwrap_or(1.0),
        top_p: 1.0,
        seed: request.seed.unwrap_or(0),
        response_format: None,
        report: Some(report.clone()),
        output: None,
        reference_field: example.reference.map(str::to_owned),
        judge_repeats: 3,
        pass_threshold: None,
    };
    eprintln!("readiness report (rft doctor) on the validation set:");
    // A blocker is reported, not fatal: the run shows what training does on such a task.
    let _ = super::eval::run(&args, super::eval::Mode::Doctor)?;
    let path = report.join("report.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(value["verdict"].as_str().unwrap_or("unknown").to_owned())
}

/// `rft serve` as a child process, stopped when dropped.
struct LocalJudge {
    child: Child,
    base: String,
    log: PathBuf,
}

/// How long the judge server may take to answer its first request.
const JUDGE_START_TIMEOUT: Duration = Duration::from_secs(60);

impl LocalJudge {
    fn start(dir: &Path) -> anyhow::Result<LocalJudge> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // A free port: bound by the OS, released, then given to the server.
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .context("cannot find a free port for the judge")?
            .port();
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let exe = std::env::current_exe().context("cannot find the rft binary")?;
        let child = Command::new(exe)
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data")
            .arg(dir.join("data"))
            .env_remove("RFT_API_KEYS")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("cannot start rft serve for the judge")?;
        let mut judge = LocalJudge {
            child,
            base: format!("http://127.0.0.1:{port}/v1"),
            log,
        };
        judge.wait_ready()?;
        Ok(judge)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + JUDGE_START_TIMEOUT;
        let url = format!("{}/models", self.base);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let mut log = String::new();
                let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut log));
                anyhow::bail!("the judge server exited ({status}): {}", log.trim());
            }
            if ureq::get(&url).call().is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the judge server did not answer within {} s",
                JUDGE_START_TIMEOUT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LocalJudge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
