//! `rft bench serve`: the server under load on loopback: `graders/run` from many clients and
//! chat completions from many others, at the same time, while an RFT job trains on the same
//! machine. Prints throughput and p50/p99 latency per endpoint, and fails if any request failed
//! other than by the documented 429.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rft_server::loadtest::{self, LoadPlan, PhaseReport};
use rft_server::{BackgroundServer, ServerConfig};
use serde_json::{json, Value};

const TRAIN: &str = include_str!("../../../../examples/quickstart/train.jsonl");
const VALID: &str = include_str!("../../../../examples/quickstart/valid.jsonl");
const JOB: &str = include_str!("../../../../examples/quickstart/job.json");

/// Arguments of `rft bench serve`.
#[derive(Debug, Args)]
pub(crate) struct BenchServeArgs {
    /// The model chats are served from and the job trains (a name, GGUF file or folder).
    #[arg(long, default_value = rft_model::hub::SMOLLM2_135M_INSTRUCT.name)]
    pub(crate) model: String,
    /// `graders/run` requests.
    #[arg(long, default_value_t = 1000)]
    pub(crate) graders: usize,
    /// Concurrent grader clients.
    #[arg(long, default_value_t = 32)]
    pub(crate) grader_clients: usize,
    /// Chat completion requests.
    #[arg(long, default_value_t = 200)]
    pub(crate) chats: usize,
    /// Concurrent chat clients.
    #[arg(long, default_value_t = 16)]
    pub(crate) chat_clients: usize,
    /// Completion tokens per chat.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_tokens: usize,
    /// Do not train during the load.
    #[arg(long)]
    pub(crate) no_job: bool,
    /// Hostile requests sent during the load (deep formulas, huge templates, path model
    /// names, unbounded chats, path image tags), each of which must get its documented error.
    #[arg(long, default_value_t = 0)]
    pub(crate) hostile: usize,
    /// Concurrent hostile clients.
    #[arg(long, default_value_t = 8)]
    pub(crate) hostile_clients: usize,
    /// The server's limit of requests in flight (lower it to see bursts answered with 429).
    #[arg(long, default_value_t = 512)]
    pub(crate) max_concurrent_requests: usize,
}

fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut response = match (method, body) {
        ("GET", _) => agent.get(url).call()?,
        (_, Some(body)) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.to_string())?,
        _ => agent.post(url).send("")?,
    };
    let text = response.body_mut().read_to_string()?;
    serde_json::from_str(&text).with_context(|| format!("{url}: {text}"))
}

fn upload(agent: &ureq::Agent, base: &str, name: &str, content: &str) -> anyhow::Result<String> {
    let boundary = "rft-bench-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    let mut response = agent
        .post(format!("{base}/files"))
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .send(body)?;
    let file: Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
    file["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("upload of {name} failed: {file}"))
}

fn print_phase(name: &str, clients: usize, report: &PhaseReport) -> anyhow::Result<()> {
    outln!(
        "{name:<18} {:>5} requests {clients:>3} clients {:>8.1} req/s  p50 {:>8.1} ms  p99 {:>8.1} ms  ok {} 429 {} failed {}",
        report.requests,
        report.throughput(),
        report.percentile(50.0),
        report.percentile(99.0),
        report.ok,
        report.rejected,
        report.failures.len()
    );
    Ok(())
}

pub(crate) fn serve(args: &BenchServeArgs) -> anyhow::Result<ExitCode> {
    let data = tempfile_dir()?;
    let mut config = ServerConfig::new(data.clone());
    config.models = vec![args.model.clone()];
    config.max_concurrent_requests = args.max_concurrent_requests;
    let server = BackgroundServer::start(config)?;
    let base = server.base.clone();
    let agent = loadtest::agent();
    let mut job_id = None;
    if !args.no_job {
        let train = upload(&agent, &base, "train.jsonl", TRAIN)?;
        let valid = upload(&agent, &base, "valid.jsonl", VALID)?;
        let mut job: Value = serde_json::from_str(JOB)?;
        job["model"] = json!(args.model);
        job["training_file"] = json!(train);
        job["validation_file"] = json!(valid);
        let created = request(
            &agent,
            "POST",
            &format!("{base}/fine_tuning/jobs"),
            Some(&job),
        )?;
        let id = created["id"]
            .as_str()
            .with_context(|| format!("job creation failed: {created}"))?
            .to_owned();
        let start = Instant::now();
        loop {
            let job = request(
                &agent,
                "GET",
                &format!("{base}/fine_tuning/jobs/{id}"),
                None,
            )?;
            match job["status"].as_str() {
                Some("running") => break,
                Some("failed") => anyhow::bail!("the background job failed: {}", job["error"]),
                _ if start.elapsed() > Duration::from_secs(120) => {
                    anyhow::bail!("the background job did not start")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        eprintln!("training job {id} running");
        job_id = Some(id);
    }
    // Load the model before timing, so the first chats do not pay for it.
    request(
        &agent,
        "POST",
        &format!("{base}/chat/completions"),
        Some(&json!({"model": args.model, "max_completion_tokens": 1,
                     "messages": [{"role": "user", "content": "hi"}]})),
    )?;
    let plan = LoadPlan {
        grader_requests: args.graders,
        grader_clients: args.grader_clients,
        chat_requests: args.chats,
        chat_clients: args.chat_clients,
        chat_model: args.model.clone(),
        chat_max_tokens: args.max_tokens,
    };
    eprintln!(
        "load: {} graders/run x {} clients and {} chats x {} clients, at once",
        args.graders, args.grader_clients, args.chats, args.chat_clients
    );
    let (hostile, (graders, chats)) = std::thread::scope(|scope| {
        let hostile = scope.spawn(|| {
            (args.hostile > 0)
                .then(|| loadtest::hostile(&base, None, args.hostile_clients, args.hostile))
        });
        let normal = loadtest::run(&base, None, &plan);
        (hostile.join().unwrap_or_default(), normal)
    });
    let still_training = match &job_id {
        Some(id) => {
            let job = request(
                &agent,
                "GET",
                &format!("{base}/fine_tuning/jobs/{id}"),
                None,
            )?;
            let status = job["status"].as_str().unwrap_or_default().to_owned();
            request(
                &agent,
                "POST",
                &format!("{base}/fine_tuning/jobs/{id}/cancel"),
                None,
            )?;
            status
        }
        None => "no job".into(),
    };
    outln!(
        "rft serve under load ({} threads, chat {} tokens, training job during the load: {still_training})",
        rayon::current_num_threads(),
        args.max_tokens
    );
    print_phase("graders/run", args.grader_clients, &graders)?;
    print_phase("chat/completions", args.chat_clients, &chats)?;
    if let Some(hostile) = &hostile {
        print_phase("hostile", args.hostile_clients, hostile)?;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    let failures: Vec<&String> = graders
        .failures
        .iter()
        .chain(&chats.failures)
        .chain(hostile.iter().flat_map(|h| &h.failures))
        .collect();
    if !failures.is_empty() {
        for f in failures.iter().take(5) {
            eprintln!("failed: {f}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("rft-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
