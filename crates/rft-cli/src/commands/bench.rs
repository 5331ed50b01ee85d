//! `rft bench graders`: every text_similarity metric in OpenRFT and in its Python reference,
//! on the same pairs, in the same run. Ratios are reported for one core (the reference is
//! single-threaded) and for `rft grade`'s parallel path on all cores.

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;
use rft_grade::metrics;
use serde_json::json;

use crate::cli::BenchGradersArgs;

/// The reference implementations, embedded so the benchmark runs from any directory.
const REFERENCE_SCRIPT: &str = include_str!("../../../../scripts/text_similarity_reference.py");

const METRICS: [&str; 10] = [
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
];

pub(crate) fn graders(args: &BenchGradersArgs) -> anyhow::Result<ExitCode> {
    let pairs = bench_pairs(args.pairs);
    let wordnet = metrics::WordNet::shared()?;
    let score = |metric: &str, input: &str, reference: &str| -> f64 {
        match metric {
            "fuzzy_match" => metrics::fuzzy_match(input, reference),
            "bleu" => metrics::bleu(input, reference),
            "gleu" => metrics::gleu(input, reference),
            "meteor" => metrics::meteor(input, reference, wordnet),
            "rouge_l" => metrics::rouge_l(input, reference),
            rouge => metrics::rouge_n(input, reference, usize::from(rouge.as_bytes()[6] - b'0')),
        }
    };

    let reference = if args.no_reference {
        None
    } else {
        Some(run_reference(&args.python, &pairs)?)
    };

    outln!(
        "{} pairs per metric, {} threads for the parallel column",
        pairs.len(),
        rayon::current_num_threads()
    );
    outln!(
        "{:<12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "metric",
        "python (s)",
        "rft 1 core",
        "rft all",
        "x 1 core",
        "x all"
    );
    for metric in METRICS {
        let start = Instant::now();
        let checksum: f64 = pairs.iter().map(|(i, r)| score(metric, i, r)).sum();
        let serial = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let parallel_sum: f64 = pairs.par_iter().map(|(i, r)| score(metric, i, r)).sum();
        let parallel = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            (checksum - parallel_sum).abs() < 1e-6,
            "{metric}: serial and parallel scores differ"
        );
        match reference
            .as_ref()
            .and_then(|r| r.get(metric))
            .and_then(|v| v.as_f64())
        {
            Some(python) => outln!(
                "{metric:<12} {python:>12.3} {serial:>12.4} {parallel:>12.4} {:>9.1}x {:>9.1}x",
                python / serial,
                python / parallel
            ),
            None => outln!("{metric:<12} {:>12} {serial:>12.4} {parallel:>12.4}", "-"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_reference(python: &Path, pairs: &[(String, String)]) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("rft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("text_similarity_reference.py");
    std::fs::write(&script, REFERENCE_SCRIPT)?;
    let pairs_path = dir.join("pairs.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&pairs_path)?);
    for (input, reference) in pairs {
        writeln!(file, "{}", json!({"input": input, "reference": reference}))?;
    }
    file.flush()?;
    drop(file);
    eprintln!("running the Python reference with {} ...", python.display());
    let output = Command::new(python)
        .arg(&script)
        .arg("bench")
        .arg(&pairs_path)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        output.status.success(),
        "the Python reference failed ({}): {}\nhint: `source scripts/reference_env.sh` sets RFT_REF_PYTHON, or pass --no-reference",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_slice(&output.stdout).context("the Python reference printed no timings")
}

/// Grading-shaped pairs: a reference sentence of 5–60 words and an answer that drops, adds,
/// swaps or re-cases some of its words. Deterministic, so every run measures the same work.
fn bench_pairs(n: usize) -> Vec<(String, String)> {
    const WORDS: &[&str] = &[
        "the",
        "a",
        "of",
        "to",
        "in",
        "and",
        "is",
        "was",
        "for",
        "on",
        "with",
        "as",
        "by",
        "at",
        "patient",
        "doctor",
        "invoice",
        "total",
        "amount",
        "due",
        "date",
        "customer",
        "order",
        "shipped",
        "delivered",
        "payment",
        "contract",
        "clause",
        "party",
        "agreement",
        "court",
        "ruling",
        "cat",
        "feline",
        "dog",
        "running",
        "ran",
        "runs",
        "quick",
        "fast",
        "brown",
        "fox",
        "jumps",
        "lazy",
        "big",
        "large",
        "house",
        "home",
        "bought",
        "purchased",
        "car",
        "automobile",
        "children",
        "child",
        "went",
        "goes",
        "Paris",
        "London",
        "2024",
        "42",
        "3.14",
        "$1,200.00",
        "email:",
        "name,",
        "(see",
        "above)",
        "results.",
        "code",
        "function",
        "returns",
        "error",
        "fixed",
        "tests",
        "passed",
        "value",
        "JSON",
        "field",
        "missing",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: usize| -> usize {
        // xorshift64*: enough randomness for a benchmark corpus, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % bound
    };
    (0..n)
        .map(|_| {
            let len = 5 + next(56);
            let reference: Vec<&str> = (0..len).map(|_| WORDS[next(WORDS.len())]).collect();
            let mut answer: Vec<String> = reference.iter().map(|w| (*w).to_owned()).collect();
            for _ in 0..next(6) {
                match next(4) {
                    0 if answer.len() > 1 => {
                        answer.remove(next(answer.len()));
                    }
                    1 => answer.insert(next(answer.len() + 1), WORDS[next(WORDS.len())].to_owned()),
                    2 => {
                        let (i, j) = (next(answer.len()), next(answer.len()));
                        answer.swap(i, j);
                    }
                    _ => {
                        let i = next(answer.len());
                        answer[i] = answer[i].to_uppercase();
                    }
                }
            }
            (answer.join(" "), reference.join(" "))
        })
        .collect()
}

/// The trivial grader both sides run.
const TRIVIAL_SOURCE: &str =
    "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['answer'] else 0.0\n";

pub(crate) fn python(args: &crate::cli::BenchPythonArgs) -> anyhow::Result<ExitCode> {
    use rft_grade::{compile, GradeRequest};
    use rft_types::{Grader, Sample};

    let grader = Grader::from_value(
        &json!({"type": "python", "name": "trivial", "source": TRIVIAL_SOURCE}),
    )?;
    let start = Instant::now();
    let compiled = compile(&grader)?;
    let startup = start.elapsed().as_secs_f64();
    let requests: Vec<GradeRequest> = (0..args.grades)
        .map(|i| GradeRequest {
            sample: Sample::from_text(&(i % 7).to_string()),
            item: json!({"answer": "3"}),
        })
        .collect();
    // Warm the pool so the timing measures steady-state grading, as in a training run.
    compiled.grade_all(&requests[..requests.len().min(64)]);
    let start = Instant::now();
    let results = compiled.grade_all(&requests);
    let pooled = start.elapsed().as_secs_f64();
    let failures = results.iter().filter(|r| r.metadata.errors.any()).count();
    anyhow::ensure!(failures == 0, "{failures} grades failed");

    let configured = rft_grade::python::PythonRuntime::shared()
        .config()
        .interpreter
        .clone()
        .unwrap_or_else(|| "python3".into());
    // Launchers such as pyenv's shims are scripts; time the interpreter itself.
    let resolved = Command::new(&configured)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .with_context(|| format!("cannot run {}", configured.display()))?;
    let python = std::path::PathBuf::from(String::from_utf8_lossy(&resolved.stdout).trim());
    let script = format!(
        "import json, sys\n{TRIVIAL_SOURCE}\nreq = json.loads(sys.argv[1])\nprint(grade(req['sample'], req['item']))\n"
    );
    let start = Instant::now();
    for i in 0..args.baseline_grades {
        let request =
            json!({"sample": {"output_text": (i % 7).to_string()}, "item": {"answer": "3"}});
        let status = Command::new(&python)
            .args(["-I", "-c", &script, &request.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", python.display()))?;
        anyhow::ensure!(status.success(), "the baseline grader failed");
    }
    let baseline = start.elapsed().as_secs_f64();

    let pooled_rate = args.grades as f64 / pooled;
    let baseline_rate = args.baseline_grades as f64 / baseline;
    outln!("pool start-up (sandbox + first worker): {startup:.3} s");
    outln!(
        "worker pool:          {} grades in {pooled:.3} s = {pooled_rate:.0} grades/s",
        args.grades
    );
    outln!(
        "process per grade:    {} grades in {baseline:.3} s = {baseline_rate:.1} grades/s (unsandboxed)",
        args.baseline_grades
    );
    outln!("ratio: {:.0}x", pooled_rate / baseline_rate);
    Ok(ExitCode::SUCCESS)
}
