//! `rft bench decode`: decode throughput of the model engine (generated tokens per second,
//! prefill excluded) at batch 1 and batch 32, and with `--reference` the same measurement in the
//! same run for Hugging Face transformers (PyTorch, CPU) and llama.cpp (llama-cpp-python) on the
//! same GGUF weights (`scripts/decode_reference.py`, environment from `scripts/bench_env.sh`).
//!
//! How prefill is excluded, for every engine alike: a run of `N` new tokens costs one prefill, `N`
//! token choices and `N - 1` decode forward passes, so each measurement times one run of `1` new
//! token (prefill and one choice) and one of `N`, and reports `batch × (N - 1)` tokens over the
//! difference. No run stops early: no stop ids on our side, `min_new_tokens` in transformers.
//! The machine's f32 matmul peak (a 1024³ sgemm through candle) is measured too, and the batch-32
//! throughput is reported as a fraction of it, counting 2 FLOPs per weight of every matmul a
//! token goes through (the layers' projections and the output projection; attention over the
//! cache is left out, which flatters no one: it is under 5% here).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Args;
use rft_model::hub::{resolve_model, ModelLocation};
use rft_model::sample::{sample, SamplingParams};
use rft_model::{CausalLm, ModelConfig};
use serde_json::{json, Value};

/// The reference side, embedded so the benchmark runs from any directory.
const REFERENCE_SCRIPT: &str = include_str!("../../../../scripts/decode_reference.py");

/// Arguments of `rft bench decode`.
#[derive(Debug, Args)]
pub(crate) struct BenchDecodeArgs {
    /// The device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "RFT_DEVICE")]
    pub(crate) device: String,
    /// A model name, a GGUF file, a model folder or a cached hub id (the references need a GGUF).
    #[arg(long, default_value = rft_model::hub::SMOLLM2_135M_INSTRUCT.name)]
    pub(crate) model: String,
    /// New tokens per sample (every run decodes exactly this many).
    #[arg(long, default_value_t = 128)]
    pub(crate) tokens: usize,
    /// Batch sizes: samples of one prompt decoded together.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub(crate) batch: Vec<usize>,
    /// Prompt length in tokens (a fixed text, cut or repeated to this length).
    #[arg(long, default_value_t = 32)]
    pub(crate) prompt_tokens: usize,
    /// Sampling temperature; 0 is greedy (what the transformers reference does).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f64,
    /// Measurements per engine and batch; the best is reported, with the spread.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeats: usize,
    /// Also measure transformers and llama.cpp on the same weights, in the same run.
    #[arg(long)]
    pub(crate) reference: bool,
    /// The Python of the reference environment (default: .venv-bench at the repository root).
    #[arg(long, env = "RFT_BENCH_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Skip the sgemm peak measurement (e.g. to profile decoding alone).
    #[arg(long)]
    pub(crate) no_peak: bool,
    /// Reference engines to run (transformers, llama_cpp).
    #[arg(long, value_delimiter = ',', default_value = "transformers,llama_cpp")]
    pub(crate) engines: Vec<String>,
}

/// One engine at one batch size: decode throughput over the repeats.
struct Row {
    engine: String,
    batch: usize,
    /// Decode tokens per second of each repeat.
    rates: Vec<f64>,
    /// Prefill (and first choice) seconds, best repeat.
    prefill: f64,
}

impl Row {
    fn best(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }
    fn worst(&self) -> f64 {
        self.rates.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

pub(crate) fn decode(args: &BenchDecodeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.tokens >= 2, "--tokens must be at least 2");
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    anyhow::ensure!(
        !args.batch.is_empty() && args.batch.iter().all(|&b| b >= 1),
        "--batch takes positive sizes, e.g. 1,32"
    );
    anyhow::ensure!(
        args.prompt_tokens >= 1,
        "--prompt-tokens must be at least 1"
    );
    let location = resolve_model(&args.model)?;
    let path = match &location {
        ModelLocation::Gguf(path) | ModelLocation::HfDir(path) => path.clone(),
    };
    // Fail before the long measurements if the reference cannot run.
    let python = if args.reference {
        anyhow::ensure!(
            matches!(location, ModelLocation::Gguf(_)),
            "--reference runs the references on the same GGUF file; {} is not one",
            path.display()
        );
        Some(reference_python(args.python.as_deref())?)
    } else {
        None
    };
    let device = rft_model::device::parse_device(&args.device)?;
    let start = Instant::now();
    // Packed for the decode kernel, as a rollout's weights are (`TrainingClient::sample`).
    let model = CausalLm::load(&path, &device)
        .with_context(|| format!("cannot load {}", path.display()))?
        .packed_for_sampling()?;
    let load = start.elapsed().as_secs_f64();
    let tokenizer = rft_model::tokenizer::Tokenizer::load(&path)?;
    let prompt = bench_prompt(&tokenizer, args.prompt_tokens)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "model {} loaded in {load:.2} s; {threads} threads; prompt {} tokens, {} new tokens, temperature {}",
        path.display(),
        prompt.len(),
        args.tokens,
        args.temperature
    );

    let load_before = load_average();
    let peak = if args.no_peak {
        None
    } else {
        Some(matmul_peak(&device)?)
    };
    let config = model.config().clone();
    let flops_per_token = matmul_flops_per_token(&config);
    if let Some(peak) = &peak {
        eprintln!(
            "f32 sgemm 1024³ through candle: {:.1} GFLOP/s; {:.1} MFLOP per decoded token",
            peak.square,
            flops_per_token / 1e6
        );
    }

    let mut rows = Vec::new();
    let mut first_ids = None;
    for &batch in &args.batch {
        let mut row = Row {
            engine: "rft (candle)".into(),
            batch,
            rates: Vec::new(),
            prefill: f64::INFINITY,
        };
        // One untimed short run warms the allocator and the thread pool.
        run_ours(&model, &prompt, batch, 2, args.temperature)?;
        for _ in 0..args.repeats {
            let (short, _) = run_ours(&model, &prompt, batch, 1, args.temperature)?;
            let (long, ids) = run_ours(&model, &prompt, batch, args.tokens, args.temperature)?;
            anyhow::ensure!(
                ids.len() == args.tokens,
                "the engine stopped after {} tokens",
                ids.len()
            );
            if batch == 1 {
                first_ids = Some(ids);
            }
            row.prefill = row.prefill.min(short);
            row.rates
                .push((batch * (args.tokens - 1)) as f64 / (long - short).max(1e-9));
        }
        eprintln!(
            "rft batch {batch}: {:.1} tok/s (prefill {:.3} s)",
            row.best(),
            row.prefill
        );
        rows.push(row);
    }

    let mut notes = Vec::new();
    if let Some(python) = python {
        let request = json!({
            "gguf": path,
            "prompt_ids": prompt,
            "tokens": args.tokens,
            "batches": args.batch,
            "repeats": args.repeats,
            "threads": threads,
            "engines": args.engines,
        });
        let reference = run_reference(&python, "decode_reference.py", REFERENCE_SCRIPT, &request)?;
        for engine in ["transformers", "llama_cpp"] {
            let Some(result) = reference.get(engine) else {
                continue;
            };
            let name = match engine {
                "transformers" => format!(
                    "transformers {} (torch {})",
                    result["version"].as_str().unwrap_or("?"),
                    result["torch"].as_str().unwrap_or("?")
                ),
                _ => format!("llama.cpp ({})", result["version"].as_str().unwrap_or("?")),
            };
            if let Some(error) = result.get("error").and_then(Value::as_str) {
                notes.push(format!("{name}: not measured: {error}"));
                continue;
            }
            if let Some(note) = result.get("note").and_then(Value::as_str) {
                notes.push(format!("{name}: {note}"));
            }
            for measured in result["results"].as_array().into_iter().flatten() {
                let batch = measured["batch"].as_u64().unwrap_or(0) as usize;
                if let Some(error) = measured.get("error").and_then(Value::as_str) {
                    notes.push(format!("{name} batch {batch}: {error}"));
                    continue;
                }
                let rates: Vec<f64> = measured["rates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect();
                rows.push(Row {
                    engine: name.clone(),
                    batch,
                    rates,
                    prefill: measured["prefill_s"].as_f64().unwrap_or(f64::NAN),
                });
            }
            if let (Some(ours), Some(theirs)) = (&first_ids, result["first_ids"].as_array()) {
                if args.temperature <= 0.0 {
                    let theirs: Vec<u64> = theirs.iter().filter_map(Value::as_u64).collect();
                    let agree = ours
                        .iter()
                        .zip(&theirs)
                        .take_while(|(a, b)| u64::from(**a) == **b)
                        .count();
                    let mut note = format!(
                        "{name}: greedy batch-1 tokens agree with ours for the first {agree} of {}",
                        ours.len().min(theirs.len())
                    );
                    if let (Some(a), Some(b)) = (ours.get(agree), theirs.get(agree)) {
                        let eos = tokenizer.eos_token_ids().contains(a);
                        note.push_str(&format!(
                            " (then ours {a}{}, theirs {b}{})",
                            if eos { " = end of turn" } else { "" },
                            if eos {
                                ": min_new_tokens forbids it there"
                            } else {
                                ""
                            }
                        ));
                    }
                    notes.push(note);
                }
            }
        }
    }

    outln!(
        "decode throughput: {} new tokens after a {}-token prompt, prefill excluded; best of {} (range)",
        args.tokens,
        prompt.len(),
        args.repeats
    );
    outln!(
        "{:<40} {:>5} {:>10} {:>19} {:>9} {:>11} {:>9}",
        "engine",
        "batch",
        "tok/s",
        "range",
        "ms/step",
        "prefill (s)",
        "vs HF"
    );
    for row in &rows {
        let hf = rows
            .iter()
            .find(|r| r.engine.starts_with("transformers") && r.batch == row.batch)
            .map(Row::best);
        let ratio = hf.map_or("-".to_owned(), |hf| format!("{:.2}x", row.best() / hf));
        outln!(
            "{:<40} {:>5} {:>10.1} {:>19} {:>9.1} {:>11.3} {:>9}",
            row.engine,
            row.batch,
            row.best(),
            format!("{:.1}–{:.1}", row.worst(), row.best()),
            1e3 * row.batch as f64 / row.best(),
            row.prefill,
            ratio
        );
    }
    if let Some(peak) = &peak {
        outln!(
            "f32 matmul peak (candle sgemm 1024x1024x1024): {:.1} GFLOP/s; decode-shaped ({}x{} @ {}x{}ᵀ): {:.1} GFLOP/s",
            peak.square,
            peak.skinny_shape.0,
            peak.skinny_shape.1,
            peak.skinny_shape.2,
            peak.skinny_shape.1,
            peak.skinny
        );
    }
    outln!(
        "FLOPs per decoded token (2 x matmul weights incl. the output projection): {:.1} M",
        flops_per_token / 1e6
    );
    for row in rows.iter().filter(|r| r.engine.starts_with("rft")) {
        let gflops = row.best() * flops_per_token / 1e9;
        match &peak {
            Some(peak) => outln!(
                "rft batch {}: {gflops:.1} GFLOP/s = {:.1}% of the sgemm peak",
                row.batch,
                100.0 * gflops / peak.square
            ),
            None => outln!("rft batch {}: {gflops:.1} GFLOP/s", row.batch),
        }
    }
    for note in notes {
        outln!("note: {note}");
    }
    outln!(
        "load average (1 min) before / after: {load_before} / {}",
        load_average()
    );
    Ok(ExitCode::SUCCESS)
}

/// The 1-minute load average (`/proc/loadavg`), to judge how shared the machine was.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Samples `batch` completions of exactly `tokens` tokens; returns the seconds taken and the
/// first completion's ids.
fn run_ours(
    model: &CausalLm,
    prompt: &[u32],
    batch: usize,
    tokens: usize,
    temperature: f64,
) -> anyhow::Result<(f64, Vec<u32>)> {
    let params = SamplingParams {
        temperature,
        max_tokens: tokens,
        stop_ids: Vec::new(),
        seed: 0,
        ..SamplingParams::default()
    };
    let start = Instant::now();
    let completions = sample(model, prompt, batch, &params)?;
    let elapsed = start.elapsed().as_secs_f64();
    let first = completions
        .into_iter()
        .next()
        .map(|c| c.ids)
        .unwrap_or_default();
    Ok((elapsed, first))
}

/// A fixed chat prompt, cut or repeated to `len` tokens, so every engine sees the same ids.
fn bench_prompt(
    tokenizer: &rft_model::tokenizer::Tokenizer,
    len: usize,
) -> anyhow::Result<Vec<u32>> {
    let text = "<|im_start|>user\nWrite a long, detailed story about a lighthouse keeper who \
                finds a message in a bottle, and tell it slowly, with many small details about \
                the sea, the weather and the village.<|im_end|>\n<|im_start|>assistant\n";
    let ids = tokenizer.encode(text, false)?;
    anyhow::ensure!(!ids.is_empty(), "the benchmark prompt encoded to no tokens");
    Ok(ids.iter().copied().cycle().take(len).collect())
}

/// 2 FLOPs per weight of every matmul one decoded token goes through.
fn matmul_flops_per_token(config: &ModelConfig) -> f64 {
    let d = config.hidden_size;
    let attn = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    let per_layer = d * attn + 2 * d * kv + attn * d + 3 * d * config.intermediate_size;
    2.0 * (config.num_layers * per_layer + config.vocab_size * d) as f64
}

struct Peak {
    /// GFLOP/s of a 1024³ sgemm.
    square: f64,
    /// GFLOP/s of the MLP up-projection at batch 32: `(m, k) @ (n, k)ᵀ`.
    skinny: f64,
    skinny_shape: (usize, usize, usize),
}

/// The best of several f32 matmuls through candle, as GFLOP/s.
fn matmul_peak(device: &Device) -> anyhow::Result<Peak> {
    let time = |m: usize, k: usize, n: usize, transposed: bool| -> anyhow::Result<f64> {
        let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
        let b = if transposed {
            Tensor::randn(0f32, 1.0, (n, k), device)?
        } else {
            Tensor::randn(0f32, 1.0, (k, n), device)?
        };
        let flops = 2.0 * (m * k * n) as f64;
        // About 2 s of work at the expected speed, at least 5 repeats.
        let repeats = ((40e9 / flops) as usize).clamp(5, 2000);
        let mut best = f64::INFINITY;
        for _ in 0..repeats {
            let start = Instant::now();
            let c = if transposed {
                a.matmul(&b.t()?)?
            } else {
                a.matmul(&b)?
            };
            // Touch the result so nothing is lazily skipped.
            let _ = c.dims();
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(flops / best / 1e9)
    };
    time(1024, 1024, 1024, false)?; // warm-up
    let square = time(1024, 1024, 1024, false)?;
    let skinny_shape = (32, 576, 1536);
    let skinny = time(skinny_shape.0, skinny_shape.1, skinny_shape.2, true)?;
    Ok(Peak {
        square,
        skinny,
        skinny_shape,
    })
}

/// The Python of `.venv-bench`, or a clear message saying how to create it.
pub(crate) fn reference_python(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let python = match explicit {
        Some(path) => path.to_path_buf(),
        None => repo_root().join(".venv-bench/bin/python"),
    };
    if !python.exists() {
        anyhow::bail!(
            "the reference environment is missing ({} does not exist).\n\
             Create it with `bash scripts/bench_env.sh` (pinned transformers + PyTorch, and \
             llama-cpp-python built from source; several GB, about 10–20 min), or point \
             RFT_BENCH_PYTHON / --python at a Python that has them",
            python.display()
        );
    }
    Ok(python)
}

/// The repository root: the current directory when it has `scripts/bench_env.sh`, else the
/// source tree this binary was built from.
fn repo_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        if cwd.join("scripts/bench_env.sh").exists() {
            return cwd;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs an embedded reference script (`name`, `source`) with the request as JSON; returns the
/// JSON result it wrote.
pub(crate) fn run_reference(
    python: &Path,
    name: &str,
    source: &str,
    request: &Value,
) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("rft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join(name);
    std::fs::write(&script, source)?;
    let request_path = dir.join("request.json");
    std::fs::write(&request_path, request.to_string())?;
    let result_path = dir.join("result.json");
    eprintln!("running the references with {} ...", python.display());
    // The references' progress goes to our stderr as it happens; their result to a file.
    let status = Command::new(python)
        .arg(&script)
        .arg(&request_path)
        .arg(&result_path)
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let result = std::fs::read_to_string(&result_path);
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        status.success(),
        "the Python reference failed ({status}); see its output above\n\
         hint: `bash scripts/bench_env.sh` (re)builds .venv-bench"
    );
    let result = result.context("the Python reference wrote no result")?;
    serde_json::from_str(&result).context("the Python reference wrote an unreadable result")
}
