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
    /// Precision of the frozen base model: f32 or bf16 (bf16 weights; bf16 activations on a
    /// GPU, f32 on the CPU). Default: bf16 on a GPU, f32 on the CPU. LoRA weights, gradients,
    /// optimizer state and log-probs stay f32.
    #[arg(long, global = true, env = "RFT_DTYPE", value_name = "f32|bf16")]
    pub(crate) dtype: Option<String>,
    /// Precision training rollouts are sampled in when it should differ from --dtype: bf16
    /// halves the bytes a CPU decode step streams; the trainer recomputes its own forward.
    #[arg(
        long,
        global = true,
        env = "RFT_SAMPLER_DTYPE",
        value_name = "f32|bf16"
    )]
    pub(crate) sampler_dtype: Option<String>,
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
    /// Run a model over a dataset, grade every sample, and write the eval objects (and, with
    /// --report, the RFT readiness report).
    Eval(EvalArgs),
    /// Check whether a task is ready for RFT: an eval plus the readiness report.
    Doctor(EvalArgs),
    /// Sample completions from a model.
    Generate(GenerateArgs),
    /// List or fetch models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Prepare what graders need on this machine.
    Setup {
        #[command(subcommand)]
        command: SetupCommand,
    },
    /// Run a reinforcement fine-tuning job (the body of OpenAI's POST /fine_tuning/jobs).
    Train(TrainArgs),
    /// Pull the default model, measure it on a built-in task, train it, measure again.
    Quickstart(QuickstartArgs),
    /// The worked examples, one per RFT use case: list them, or run one end to end.
    Example {
        #[command(subcommand)]
        command: crate::commands::example::ExampleCommand,
    },
    /// Write a model (an adapter merged into its base) as a Hugging Face folder.
    Export(ExportArgs),
    /// Serve OpenAI's fine-tuning, graders, files, models and chat API on this machine.
    Serve(crate::commands::serve::ServeArgs),
    /// Run jobs for API processes elsewhere: claim queued jobs from the shared database
    /// (--database) and run them, keeping their state in the shared blob store (--blobs).
    Worker(crate::commands::serve::WorkerArgs),
    /// Check that a device (a CUDA GPU) computes what the CPU does: logits, log-probs, LoRA
    /// gradients and greedy samples of tiny random models; and time a 135M-shaped model on it.
    CheckDevice(crate::commands::check_device::CheckDeviceArgs),
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
pub(crate) enum ModelsCommand {
    /// The models OpenRFT can fetch by name, and whether each is here.
    List,
    /// Fetch a model by name (default: the default model).
    Pull {
        /// The model's name.
        #[arg(default_value = rft_model::hub::SMOLLM2_135M_INSTRUCT.name)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// A model name (`smollm2-135m-instruct`), a GGUF file, a model folder or a cached hub id.
    #[arg(long, default_value = rft_model::hub::SMOLLM2_135M_INSTRUCT.name)]
    pub(crate) model: String,
    /// The user message.
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    pub(crate) prompt: Option<String>,
    /// The conversation as a JSON array of chat messages.
    #[arg(long, value_name = "JSON")]
    pub(crate) messages: Option<String>,
    /// Most new tokens per completion.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f64,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: usize,
    /// Seed; the same seed gives the same completions.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Completions to sample (they share the prompt's prefill).
    #[arg(long, default_value_t = 1)]
    pub(crate) n: usize,
    /// A response_format JSON file (structured outputs): `{"type": "json_schema", "json_schema":
    /// {"name": ..., "schema": {...}, "strict": true}}` or `{"type": "json_object"}`.
    #[arg(long, value_name = "FILE")]
    pub(crate) response_format: Option<std::path::PathBuf>,
    /// Stop when the text contains this string (repeatable, as OpenAI's `stop`).
    #[arg(long, value_name = "TEXT")]
    pub(crate) stop: Vec<String>,
    /// Print one JSON object per completion: text, prompt_ids, ids, logprobs, finish_reason.
    #[arg(long)]
    pub(crate) json: bool,
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
    /// Decode throughput of the model engine at batch 1 and 32 (prefill excluded); with
    /// --reference, transformers and llama.cpp on the same weights in the same run.
    Decode(crate::commands::bench_decode::BenchDecodeArgs),
    /// Wall time and peak memory of one forward+backward pass of the LoRA training path.
    TrainMemory(crate::commands::bench_train::BenchTrainMemoryArgs),
    /// One GRPO step (sampling, grading, training) on the default model, and with
    /// `--reference` TRL's GRPOTrainer on the same weights and batch shape.
    Grpo(crate::commands::bench_grpo::BenchGrpoArgs),
    /// How well a job learns over seeds (validation curves, best and final), and with
    /// `--reference` TRL's GRPOTrainer on the same job, settings and grader.
    Learn(crate::commands::bench_learn::BenchLearnArgs),
    /// `rft serve` under load: graders/run and chat completions from many clients while a job
    /// trains; throughput and p50/p99 latency.
    Serve(crate::commands::bench_serve::BenchServeArgs),
    /// The matmul shapes of a GRPO step, one thread, through candle and through the packed
    /// kernels this CPU runs.
    Matmul(crate::commands::bench_matmul::BenchMatmulArgs),
    /// Storage past one machine: job claims with 1, 2 and 4 workers, lease takeover, blob
    /// put/get (local folder, and S3 with --blobs), API reads; SQLite, and PostgreSQL with
    /// --database.
    Storage(crate::commands::bench_storage::BenchStorageArgs),
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

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// The data: an RFT dataset (messages + item fields) or an eval-run JSONL file
    /// ({"item": ..., "sample": ...} lines, graded as they are).
    #[arg(long, value_name = "FILE")]
    pub(crate) dataset: PathBuf,
    /// The grader spec (JSON file), as in an RFT job's `grader`.
    #[arg(long, value_name = "GRADER.json")]
    pub(crate) grader: PathBuf,
    /// The model: any model `rft generate` takes (an adapter folder included), or, with
    /// --base-url, the model name the endpoint serves.
    #[arg(long, default_value = rft_model::hub::SMOLLM2_135M_INSTRUCT.name)]
    pub(crate) model: String,
    /// An OpenAI-compatible API root (e.g. http://localhost:8000/v1): sample the model there.
    #[arg(long, value_name = "URL")]
    pub(crate) base_url: Option<String>,
    /// The endpoint's API key.
    #[arg(
        long,
        env = "RFT_EVAL_API_KEY",
        hide_env_values = true,
        requires = "base_url"
    )]
    pub(crate) api_key: Option<String>,
    /// Requests in flight at once against --base-url.
    #[arg(long, default_value_t = 8)]
    pub(crate) concurrency: usize,
    /// Samples per row (K); the learnability check needs at least 2.
    #[arg(long, default_value_t = 4)]
    pub(crate) samples: usize,
    /// Evaluate only the first N rows.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
    /// Most new tokens per sample.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_tokens: usize,
    /// Sampling temperature (RFT samples at 1).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f64,
    /// Seed; each row's samples derive from it and the row index.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// OpenAI `response_format` JSON file (json_schema or json_object).
    #[arg(long, value_name = "FORMAT.json")]
    pub(crate) response_format: Option<PathBuf>,
    /// Where to write report.json and report.html (`rft doctor` defaults to rft-report).
    #[arg(long, value_name = "DIR")]
    pub(crate) report: Option<PathBuf>,
    /// The resumable results file: each finished row is appended; a rerun skips them
    /// (default: DIR/results.jsonl when a report is written).
    #[arg(long, value_name = "RESULTS.jsonl")]
    pub(crate) output: Option<PathBuf>,
    /// The item field holding the reference answer (judge alignment, constant answers).
    #[arg(long, value_name = "FIELD")]
    pub(crate) reference_field: Option<String>,
    /// How many times judge stability re-grades each sample.
    #[arg(long, default_value_t = 3)]
    pub(crate) judge_repeats: usize,
    /// Score at or above which a sample passes (default: the grader's pass_threshold, 1 for
    /// string_check and label_model, else 0.5).
    #[arg(long)]
    pub(crate) pass_threshold: Option<f64>,
}

#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    /// The job: OpenAI's fine-tuning job body with file paths (relative to this file) in place
    /// of file ids.
    #[arg(long, value_name = "JOB.json", required_unless_present = "resume")]
    pub(crate) config: Option<PathBuf>,
    /// Where the job writes events.jsonl, checkpoints/ and final/ (default: runs/<config name>).
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,
    /// Continue a paused or killed job from its folder.
    #[arg(long, value_name = "DIR", conflicts_with = "output")]
    pub(crate) resume: Option<PathBuf>,
    /// Sample rollouts on inference servers speaking vLLM's API (vLLM, or `rft serve
    /// --adapter-root` workers) instead of in this process: a completions base URL
    /// (repeatable: a failed call moves to the next). Needs --adapter-dir.
    #[arg(long = "rollout-url", value_name = "URL", requires = "adapter_dir")]
    pub(crate) rollout_urls: Vec<String>,
    /// Every replica's admin base URL, where each policy version's adapter is loaded
    /// (repeatable; default: the --rollout-url ones). A router does not fan these out.
    #[arg(long = "rollout-admin-url", value_name = "URL")]
    pub(crate) rollout_admin_urls: Vec<String>,
    /// The folder adapters are published to, at the same path on every rollout server.
    #[arg(long, value_name = "DIR")]
    pub(crate) adapter_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct QuickstartArgs {
    /// Where the run is written (default: $RFT_HOME/quickstart).
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,
    /// Training steps (default 12: 48 of the built-in training rows, 4 per step).
    #[arg(long)]
    pub(crate) steps: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The model: usually a PEFT adapter folder (a job's `final/` or a checkpoint), or any
    /// model `rft generate` takes.
    #[arg(long)]
    pub(crate) model: String,
    /// Fold the adapter into the weights and write a full model (the only format for now).
    #[arg(long, required = true)]
    pub(crate) merged: bool,
    /// The folder to write.
    #[arg(long, value_name = "DIR")]
    pub(crate) output: PathBuf,
}
