//! The command-line grammar. Each subcommand's arguments are a struct here; the work lives in
//! `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// OpenRFT: reinforcement fine-tuning you run yourself.
#[derive(Debug, Parser)]
#[command(name = "rft", version, about = "OpenRFT: reinforcement fine-tuning you run yourself", long_about = None)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug). `RFT_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Grade samples with a grader: one sample (--sample) or a JSONL file of requests (--input).
    Grade(GradeArgs),
    /// Work with grader specs.
    Grader {
        #[command(subcommand)]
        command: GraderCommand,
    },
    /// Prepare what graders need on this machine.
    Setup {
        #[command(subcommand)]
        command: SetupCommand,
    },
    /// Measure OpenRFT against reference implementations.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Args)]
pub(crate) struct GradeArgs {
    /// The grader spec (JSON file), as in OpenAI's graders/run `grader` field.
    #[arg(long, value_name = "GRADER.json")]
    pub(crate) grader: PathBuf,
    /// JSONL file of requests, one `{"model_sample": "...", "item": {...}}` per line.
    #[arg(
        long,
        value_name = "REQUESTS.jsonl",
        conflicts_with = "sample",
        required_unless_present = "sample"
    )]
    pub(crate) input: Option<PathBuf>,
    /// Where to write one result per input line (default: stdout).
    #[arg(long, value_name = "OUT.jsonl", requires = "input")]
    pub(crate) output: Option<PathBuf>,
    /// Grade this one model sample and pretty-print the result.
    #[arg(long, value_name = "TEXT")]
    pub(crate) sample: Option<String>,
    /// The item (JSON object) for --sample.
    #[arg(long, value_name = "JSON", requires = "sample")]
    pub(crate) item: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GraderCommand {
    /// Check a grader spec; print it normalised (exit 0) or say what is wrong (exit 1).
    Validate {
        /// The grader spec (JSON file).
        #[arg(value_name = "GRADER.json")]
        grader: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SetupCommand {
    /// Build the Python grader environment an `image_tag` names (idempotent; offline once built).
    Python {
        /// The image tag to build.
        #[arg(long, default_value = rft_grade::python::DEFAULT_IMAGE_TAG)]
        tag: String,
        /// The Python used to create the virtual environment.
        #[arg(long, default_value = "python3")]
        python: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Grade the same pairs with each text_similarity metric in OpenRFT and in the Python
    /// reference implementations, and print the speed ratio.
    Graders(BenchGradersArgs),
    /// Grade with a trivial Python grader through the worker pool, and compare with starting
    /// one Python process per grade.
    Python(BenchPythonArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchPythonArgs {
    /// Grades through the worker pool.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) grades: usize,
    /// Grades for the one-process-per-grade baseline (it is slow).
    #[arg(long, default_value_t = 200)]
    pub(crate) baseline_grades: usize,
}

#[derive(Debug, Args)]
pub(crate) struct BenchGradersArgs {
    /// Number of (input, reference) pairs per metric.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) pairs: usize,
    /// The Python interpreter with the reference packages (see scripts/reference_env.sh).
    #[arg(long, env = "RFT_REF_PYTHON", default_value = "python3")]
    pub(crate) python: PathBuf,
    /// Skip the Python side and report OpenRFT's timings alone.
    #[arg(long)]
    pub(crate) no_reference: bool,
}
