//! `rft serve` past one machine, as processes against a real PostgreSQL and a real S3-protocol
//! server (`scripts/services.sh` starts both; CI sets `RFT_REQUIRE_SERVICES`, and then these
//! tests fail rather than skip without them): API processes without workers, `rft worker`
//! processes with data folders of their own, and the faults a deployment meets: a worker
//! killed mid-job, PostgreSQL restarting, S3 failing, two APIs and two workers on one database.
//! Credentials are given to every process and must show nowhere.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::agent;

/// The secrets every process gets; none may appear in a log line or an API answer.
const S3_SECRET: &str = "s3-secret-9f2c71d0e4";
const PG_PASSWORD: &str = "pg-password-51ab7e";
const KEY: &str = "scale-key";

/// These tests restart the shared PostgreSQL server: they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Services {
    /// A fresh database, with a password in the URL (trust authentication ignores it).
    database: String,
    s3_endpoint: String,
    bucket: String,
}

/// The services of `scripts/services.sh`, or `None` (the test skips) without them.
fn services() -> Option<Services> {
    let require = std::env::var_os("RFT_REQUIRE_SERVICES").is_some();
    let (Ok(url), Ok(s3)) = (
        std::env::var("RFT_TEST_DATABASE_URL"),
        std::env::var("RFT_TEST_S3_ENDPOINT"),
    ) else {
        assert!(
            !require,
            "RFT_REQUIRE_SERVICES is set but RFT_TEST_DATABASE_URL or RFT_TEST_S3_ENDPOINT is not: start them with scripts/services.sh"
        );
        eprintln!("skipped: no PostgreSQL and S3 (scripts/services.sh start DIR)");
        return None;
    };
    let fresh = rft_store::testing::fresh_database(&url).unwrap();
    let database = fresh.replacen("://rft@", &format!("://rft:{PG_PASSWORD}@"), 1);
    assert_ne!(database, fresh, "the test database URL has the user rft");
    let bucket = format!(
        "rft-{}-{}",
        std::process::id(),
        rft_types::ids::new_id("")[..8].to_ascii_lowercase()
    );
    // moto creates a bucket on an unsigned PUT.
    let response = agent().put(format!("{s3}/{bucket}")).send("").unwrap();
    assert!(response.status().is_success(), "cannot create the bucket");
    Some(Services {
        database,
        s3_endpoint: s3,
        bucket,
    })
}

/// A child process whose stderr is kept (to look for leaked secrets) and killed when dropped.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    /// For an API process: `http://127.0.0.1:PORT/v1`.
    base: String,
}

impl Proc {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `rft ARGS` with the services' environment; returns once a stderr line starts with
/// `ready` (its rest is the process's base URL, for an API).
fn start(args: &[&str], s3_endpoint: &str, ready: &str) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(args)
        .env("RFT_API_KEYS", KEY)
        .env("RFT_LOG", "info")
        .env("RFT_ROLLOUT_API_KEY", KEY)
        .env("AWS_ACCESS_KEY_ID", "rft-test-key")
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", s3_endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = log.clone();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            kept.lock().unwrap().push_str(&line);
            kept.lock().unwrap().push('\n');
            if !sent {
                if let Some(rest) = line.strip_prefix(&ready) {
                    let _ = tx.send(rest.trim().to_owned());
                    sent = true;
                }
            }
        }
    });
    let base = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(base) => base,
        Err(_) => panic!("rft {args:?} did not start:\n{}", log.lock().unwrap()),
    };
    Proc { child, log, base }
}

fn storage_args<'a>(svc: &'a Services, blobs: &'a str, data: &'a Path) -> Vec<String> {
    vec![
        "--data".into(),
        data.display().to_string(),
        "--database".into(),
        svc.database.clone(),
        "--blobs".into(),
        blobs.to_owned(),
    ]
}

/// An API process without a worker.
fn api(svc: &Services, blobs: &str, data: &Path, model: &Path) -> Proc {
    api_with(svc, blobs, data, model, &[])
}

/// [`api`] with more arguments.
fn api_with(svc: &Services, blobs: &str, data: &Path, model: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "serve".to_owned(),
        "--port".into(),
        "0".into(),
        "--no-worker".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(storage_args(svc, blobs, data));
    args.extend(["--model".into(), model.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start(&args, &svc.s3_endpoint, "listening on ")
}

/// A worker with a lease of `lease` seconds.
fn worker(svc: &Services, blobs: &str, data: &Path, model: &Path, lease: &str) -> Proc {
    worker_with(svc, blobs, data, model, lease, &[])
}

/// [`worker`] with more arguments.
fn worker_with(
    svc: &Services,
    blobs: &str,
    data: &Path,
    model: &Path,
    lease: &str,
    extra: &[&str],
) -> Proc {
    let mut args = vec!["worker".to_owned()];
    args.extend(storage_args(svc, blobs, data));
    args.extend([
        "--model".into(),
        model.display().to_string(),
        "--lease-seconds".into(),
        lease.into(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start(&args, &svc.s3_endpoint, "worker ")
}

/// Every answer any API gave, to look for secrets in at the end.
static ANSWERS: Mutex<String> = Mutex::new(String::new());

/// `(status, Retry-After, body)` of a request; a 503 (the database restarting) is retried
/// unless `retry` is false.
fn request(
    method: &str,
    url: &str,
    body: Option<Value>,
    retry: bool,
) -> (u16, Option<String>, Value) {
    let agent = agent();
    let start = Instant::now();
    loop {
        let response = match (method, &body) {
            ("GET", _) => agent
                .get(url)
                .header("Authorization", format!("Bearer {KEY}"))
                .call(),
            (_, body) => agent
                .post(url)
                .header("Authorization", format!("Bearer {KEY}"))
                .header("Content-Type", "application/json")
                .send(body.clone().unwrap_or(json!({})).to_string()),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        ANSWERS.lock().unwrap().push_str(&text);
        if status == 503 && retry && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return (status, retry_after, value);
    }
}

fn get(url: &str) -> Value {
    let (status, _, body) = request("GET", url, None, true);
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

fn post(url: &str, body: Value) -> Value {
    let (status, _, answer) = request("POST", url, Some(body), true);
    assert_eq!(status, 200, "POST {url}: {answer}");
    answer
}

fn upload(base: &str, path: &Path) -> String {
    let boundary = "b0undary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\r\n{}\r\n--{boundary}--\r\n",
        path.file_name().unwrap().to_string_lossy(),
        std::fs::read_to_string(path).unwrap()
    );
    let mut response = agent()
        .post(format!("{base}/files"))
        .header("Authorization", format!("Bearer {KEY}"))
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .send(body)
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    file["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned()
}

/// A tiny model and task: `rows` training rows, one validation row.
fn write_task(dir: &Path, rows: usize) -> PathBuf {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, rft_model::Architecture::Qwen2, 5).unwrap();
    let row = |i: usize| {
        json!({"messages": [{"role": "user", "content": format!("Say x please {i}")}], "target": "x"})
            .to_string()
            + "\n"
    };
    std::fs::write(
        dir.join("train.jsonl"),
        (0..rows).map(row).collect::<String>(),
    )
    .unwrap();
    std::fs::write(dir.join("valid.jsonl"), row(99)).unwrap();
    model
}

/// Creates a job of `steps` steps (batch 2, one epoch over `2 × steps` rows).
fn create_job(base: &str, model: &Path, train: &str, valid: &str, seed: u64) -> String {
    let job = post(
        &format!("{base}/fine_tuning/jobs"),
        json!({"model": model, "training_file": train, "validation_file": valid, "seed": seed,
               "method": {"type": "reinforcement", "reinforcement": {
                   "grader": {"type": "string_check", "name": "x", "operation": "like",
                              "input": "{{sample.output_text}}", "reference": "{{item.target}}"},
                   "hyperparameters": {"batch_size": 2, "n_epochs": 1, "compute_multiplier": 0.25,
                       "eval_interval": 4, "eval_samples": 1, "lora_rank": 2,
                       "max_completion_tokens": 3}}}}),
    );
    job["id"].as_str().unwrap().to_owned()
}

fn events(base: &str, job: &str) -> Vec<Value> {
    let mut all = get(&format!("{base}/fine_tuning/jobs/{job}/events?limit=10000"))["data"]
        .as_array()
        .unwrap()
        .clone();
    all.reverse();
    all
}

fn metrics_steps(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| e["data"]["step"].as_u64())
        .collect()
}

fn train_rewards(events: &[Value]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| e["data"]["scores"]["train_reward_mean"].as_f64())
        .collect()
}

fn wait_for_metrics(base: &str, job: &str, at_least: usize) {
    let start = Instant::now();
    while metrics_steps(&events(base, job)).len() < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "no progress on {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until_final(base: &str, job: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let body = get(&format!("{base}/fine_tuning/jobs/{job}"));
        if ["succeeded", "failed", "cancelled"].contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(start.elapsed() < limit, "job never finished: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What every test checks of one job's events: ids unique and increasing in order, and each
/// step's metrics exactly once.
fn assert_once(all: &[Value], steps: u64) {
    let ids: Vec<&str> = all.iter().filter_map(|e| e["id"].as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "event ids are unique: {ids:?}");
    let seqs: Vec<u64> = ids
        .iter()
        .filter_map(|id| id.rsplit('-').next()?.parse().ok())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {ids:?}"
    );
    assert_eq!(
        metrics_steps(all),
        (0..=steps).collect::<Vec<u64>>(),
        "{all:#?}"
    );
}

fn assert_no_secrets(procs: &[&Proc]) {
    for proc in procs {
        let log = proc.log();
        for secret in [S3_SECRET, PG_PASSWORD] {
            assert!(!log.contains(secret), "a log shows a credential:\n{log}");
        }
    }
    let answers = ANSWERS.lock().unwrap();
    for secret in [S3_SECRET, PG_PASSWORD] {
        assert!(
            !answers.contains(secret),
            "an API answer shows a credential"
        );
    }
}

#[test]
fn a_worker_killed_mid_job_is_taken_over_and_the_job_runs_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = services() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 24);
    let blobs = format!("s3://{}/takeover", svc.bucket);
    let api = api(&svc, &blobs, &tmp.path().join("api"), &model);
    let base = api.base.clone();
    let mut first = worker(&svc, &blobs, &tmp.path().join("w1"), &model, "3");
    let train = upload(&base, &tmp.path().join("train.jsonl"));
    let valid = upload(&base, &tmp.path().join("valid.jsonl"));
    let job = create_job(&base, &model, &train, &valid, 7);
    wait_for_metrics(&base, &job, 4);
    // Another worker, on a data folder of its own (another machine), then kill -9 the first.
    let second = worker(&svc, &blobs, &tmp.path().join("w2"), &model, "3");
    let before = events(&base, &job);
    first.kill9();
    let killed = Instant::now();
    let start = Instant::now();
    let taken_over = loop {
        if second.log().contains(&format!("training job={job}")) {
            break killed.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no takeover:\n{}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let done = wait_until_final(&base, &job, Duration::from_secs(300));
    assert_eq!(done["status"], "succeeded", "{done}");
    let interrupted = events(&base, &job);
    for event in &before {
        assert!(
            interrupted.contains(event),
            "event lost across the kill: {event}"
        );
    }
    assert_once(&interrupted, 12);

    // The same job again, uninterrupted on the second worker: the same events, step for step.
    let again = create_job(&base, &model, &train, &valid, 7);
    let done_again = wait_until_final(&base, &again, Duration::from_secs(300));
    assert_eq!(done_again["status"], "succeeded", "{done_again}");
    let uninterrupted = events(&base, &again);
    assert_eq!(
        interrupted.len(),
        uninterrupted.len(),
        "the interrupted job's events are an uninterrupted run's:\n{interrupted:#?}\n{uninterrupted:#?}"
    );
    assert_eq!(
        train_rewards(&interrupted),
        train_rewards(&uninterrupted),
        "no step trained twice: the rewards of each step are an uninterrupted run's"
    );
    let checkpoint_steps = |job: &str| -> Vec<u64> {
        get(&format!("{base}/fine_tuning/jobs/{job}/checkpoints"))["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["step_number"].as_u64())
            .collect()
    };
    assert_eq!(checkpoint_steps(&job), checkpoint_steps(&again));
    // The fine-tuned model answers through the API process, which never trained it: its
    // adapter comes from the blob store.
    let chat = post(
        &format!("{base}/chat/completions"),
        json!({"model": done["fine_tuned_model"], "max_tokens": 2,
               "messages": [{"role": "user", "content": "Say x"}]}),
    );
    assert!(chat["choices"][0]["message"].is_object(), "{chat}");
    // The dashboard of the API process shows the samples the workers recorded.
    let root = base.trim_end_matches("/v1");
    let index = get(&format!("{root}/dashboard/api/jobs/{job}/samples"));
    let steps = index["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{index}");
    let last = steps.last().unwrap();
    let samples = get(&format!("{root}/dashboard/api/jobs/{job}/samples/{last}"));
    assert!(samples.is_object(), "{samples}");
    eprintln!("lease 3 s: the second worker took the job over {taken_over:.1?} after kill -9");
    assert_no_secrets(&[&api, &first, &second]);
}

#[test]
fn postgres_restarting_mid_job_gives_503s_and_the_job_finishes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = services() else { return };
    let (Ok(script), Ok(pg_dir)) = (
        std::env::var("RFT_SERVICES_SCRIPT"),
        std::env::var("RFT_TEST_PG_DIR"),
    ) else {
        assert!(
            std::env::var_os("RFT_REQUIRE_SERVICES").is_none(),
            "RFT_SERVICES_SCRIPT and RFT_TEST_PG_DIR are needed to restart PostgreSQL"
        );
        return;
    };
    let pg = |action: &str| {
        let status = Command::new("bash")
            .args([&script, action, &pg_dir])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "services.sh {action}");
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 24);
    let blobs = format!("s3://{}/restart", svc.bucket);
    let api = api(&svc, &blobs, &tmp.path().join("api"), &model);
    let base = api.base.clone();
    let worker = worker(&svc, &blobs, &tmp.path().join("w"), &model, "20");
    let train = upload(&base, &tmp.path().join("train.jsonl"));
    let valid = upload(&base, &tmp.path().join("valid.jsonl"));
    let job = create_job(&base, &model, &train, &valid, 3);
    wait_for_metrics(&base, &job, 3);
    pg("pg-stop");
    let (status, retry_after, body) = request(
        "GET",
        &format!("{base}/fine_tuning/jobs/{job}"),
        None,
        false,
    );
    let (list_status, _, _) = request("GET", &format!("{base}/fine_tuning/jobs"), None, false);
    std::thread::sleep(Duration::from_secs(3));
    pg("pg-start");
    assert_eq!(status, 503, "{body}");
    assert_eq!(list_status, 503);
    assert!(retry_after.is_some(), "a 503 says when to retry");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    // The API and the worker reconnect by themselves.
    let done = wait_until_final(&base, &job, Duration::from_secs(300));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_once(&events(&base, &job), 12);
    assert!(api.child.id() > 0);
    assert_no_secrets(&[&api, &worker]);
}

/// A TCP proxy to `target` that, while `failing` is set, answers every request with a 503.
fn fault_proxy(target: String, failing: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let failing = failing.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                if failing.load(Ordering::SeqCst) {
                    let mut client = client;
                    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut scratch = [0u8; 65536];
                    let _ = client.read(&mut scratch);
                    let _ = client.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                let Ok(upstream) = TcpStream::connect(&target) else {
                    return;
                };
                let (mut u_read, mut c_write) =
                    (upstream.try_clone().unwrap(), client.try_clone().unwrap());
                let down = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u_read, &mut c_write);
                });
                // Request bytes are passed on one read at a time, so a kept-alive connection
                // turns to 503s as soon as the switch is set.
                let (mut client, mut upstream) = (client, upstream);
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = match client.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if failing.load(Ordering::SeqCst) {
                        let _ = upstream.shutdown(std::net::Shutdown::Both);
                        let _ = down.join();
                        let _ = client.write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if upstream.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
                let _ = upstream.shutdown(std::net::Shutdown::Both);
                let _ = down.join();
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn s3_failing_mid_job_fails_it_clearly_and_leaves_no_half_written_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = services() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 24);
    let blobs = format!("s3://{}/faults", svc.bucket);
    let api = api(&svc, &blobs, &tmp.path().join("api"), &model);
    let base = api.base.clone();
    // The worker reaches S3 through a proxy that can be switched to answer 503 to everything
    // (new connections: the pool's kept ones are closed by the proxy after each request).
    let failing = Arc::new(AtomicBool::new(false));
    let target = svc.s3_endpoint.trim_start_matches("http://").to_owned();
    let proxied = Services {
        database: svc.database.clone(),
        s3_endpoint: fault_proxy(target, failing.clone()),
        bucket: svc.bucket.clone(),
    };
    let worker = worker(&proxied, &blobs, &tmp.path().join("w"), &model, "10");
    let train = upload(&base, &tmp.path().join("train.jsonl"));
    let valid = upload(&base, &tmp.path().join("valid.jsonl"));
    let job = create_job(&base, &model, &train, &valid, 5);
    wait_for_metrics(&base, &job, 3);
    failing.store(true, Ordering::SeqCst);
    let failed_at = Instant::now();
    let done = wait_until_final(&base, &job, Duration::from_secs(300));
    let took = failed_at.elapsed();
    failing.store(false, Ordering::SeqCst);
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "storage_error", "{done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("blob store"), "{message}");
    // Every state the bucket holds with a manifest is complete and loads; one without a
    // manifest is never chosen.
    let store = rft_store::blobs::Blobs::s3(
        &svc.bucket,
        "faults",
        rft_store::blobs::S3Options {
            endpoint: Some(svc.s3_endpoint.clone()),
            region: "us-east-1".into(),
            access_key: Some("rft-test-key".into()),
            secret_key: Some(S3_SECRET.into()),
            session_token: None,
            allow_http: true,
        },
    )
    .unwrap();
    let listed = store.list(&format!("jobs/{job}/state")).unwrap();
    let mut folders: Vec<String> = listed
        .iter()
        .filter_map(|(key, _)| {
            let rest = key.split(&format!("jobs/{job}/state/")).nth(1)?;
            Some(rest.split('/').next()?.to_owned())
        })
        .collect();
    folders.sort();
    folders.dedup();
    assert!(
        !folders.is_empty(),
        "states were published before the failure"
    );
    let mut complete = 0;
    for folder in &folders {
        let prefix = format!("jobs/{job}/state/{folder}");
        let into = tmp.path().join(format!("fetched-{folder}"));
        if store.manifest(&prefix).unwrap().is_some() {
            store.fetch_dir(&prefix, &into).unwrap().expect("complete");
            assert!(into.join("optimizer.json").is_file(), "{folder}");
            complete += 1;
        } else {
            assert!(store.fetch_dir(&prefix, &into).unwrap().is_none());
        }
    }
    assert!(complete >= 1);
    eprintln!("S3 answering 503: the job failed {took:.1?} later with: {message}");
    assert_no_secrets(&[&api, &worker]);
}

#[test]
fn two_apis_and_two_workers_share_jobs_and_run_each_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = services() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 8);
    let blobs = format!("s3://{}/shared", svc.bucket);
    let api_a = api(&svc, &blobs, &tmp.path().join("api-a"), &model);
    let api_b = api(&svc, &blobs, &tmp.path().join("api-b"), &model);
    let workers = [
        worker(&svc, &blobs, &tmp.path().join("w1"), &model, "10"),
        worker(&svc, &blobs, &tmp.path().join("w2"), &model, "10"),
    ];
    // Files uploaded to one API are used by jobs created on the other.
    let train = upload(&api_a.base, &tmp.path().join("train.jsonl"));
    let valid = upload(&api_a.base, &tmp.path().join("valid.jsonl"));
    let mut jobs = Vec::new();
    for i in 0..4u64 {
        let base = if i % 2 == 0 { &api_b.base } else { &api_a.base };
        jobs.push(create_job(base, &model, &train, &valid, 10 + i));
    }
    for job in &jobs {
        // Visible on both at once.
        for base in [&api_a.base, &api_b.base] {
            assert_eq!(
                get(&format!("{base}/fine_tuning/jobs/{job}"))["id"],
                json!(job)
            );
        }
    }
    for job in &jobs {
        let done = wait_until_final(&api_a.base, job, Duration::from_secs(300));
        assert_eq!(done["status"], "succeeded", "{done}");
        let all = events(&api_b.base, job);
        assert_once(&all, 4);
        let started = all
            .iter()
            .filter(|e| e["message"] == "Fine-tuning job started")
            .count();
        assert_eq!(started, 1, "{job} started once");
    }
    let listed = get(&format!("{}/fine_tuning/jobs?limit=100", api_b.base));
    for job in &jobs {
        assert!(listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == json!(job)));
    }
    // Each job ran on exactly one worker.
    for job in &jobs {
        let ran_on = workers
            .iter()
            .filter(|w| w.log().contains(&format!("training job={job}")))
            .count();
        assert_eq!(ran_on, 1, "{job} ran on {ran_on} workers");
    }
    assert_no_secrets(&[&api_a, &api_b, &workers[0], &workers[1]]);
}

#[test]
fn the_eval_runs_of_a_killed_api_process_are_failed_by_another() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = services() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 2);
    let blobs = format!("s3://{}/evals", svc.bucket);
    let lease = ["--lease-seconds", "2"];
    let mut doomed = api_with(&svc, &blobs, &tmp.path().join("a"), &model, &lease);
    let survivor = api_with(&svc, &blobs, &tmp.path().join("b"), &model, &lease);
    let (status, _, eval) = request(
        "POST",
        &format!("{}/evals", doomed.base),
        Some(json!({"name": "long",
            "data_source_config": {"type": "custom",
                "item_schema": {"type": "object", "properties": {"target": {"type": "string"}}}},
            "testing_criteria": [{"type": "string_check", "name": "x", "operation": "eq",
                "input": "{{ sample.output_text }}", "reference": "{{ item.target }}"}]})),
        true,
    );
    assert_eq!(status, 201, "{eval}");
    let eval_id = eval["id"].as_str().unwrap();
    // Enough rows that the run is still going when its process dies.
    let rows: Vec<Value> = (0..400).map(|_| json!({"item": {"target": "x"}})).collect();
    let (status, _, run) = request(
        "POST",
        &format!("{}/evals/{eval_id}/runs", doomed.base),
        Some(
            json!({"data_source": {"type": "completions", "model": model,
            "source": {"type": "file_content", "content": rows},
            "input_messages": {"type": "template",
                "template": [{"role": "user", "content": "Say x"}]},
            "sampling_params": {"max_completion_tokens": 16, "seed": 1}}}),
        ),
        true,
    );
    assert_eq!(status, 201, "{run}");
    let run_id = run["id"].as_str().unwrap();
    let url = |base: &str| format!("{base}/evals/{eval_id}/runs/{run_id}");
    // Seen on the other process while it runs, then its process is killed.
    let seen = get(&url(&survivor.base));
    assert!(
        ["queued", "in_progress"].contains(&seen["status"].as_str().unwrap()),
        "{seen}"
    );
    doomed.kill9();
    let killed = Instant::now();
    let failed = loop {
        let now = get(&url(&survivor.base));
        if now["status"] != "queued" && now["status"] != "in_progress" {
            break now;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "never failed: {now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "runner_stopped", "{failed}");
    eprintln!(
        "lease 2 s: the run of the killed process was failed {:.1?} later",
        killed.elapsed()
    );
    assert_no_secrets(&[&survivor]);
}

#[test]
fn a_rollout_server_loads_each_version_from_the_blob_store_without_a_shared_folder() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = services() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 8);
    let blobs = format!("s3://{}/fleet", svc.bucket);
    // A rollout server on a "machine" of its own: its own data folder and adapter root, the
    // same blob store.
    let root = tmp.path().join("replica-adapters");
    std::fs::create_dir_all(&root).unwrap();
    let replica_data = tmp.path().join("replica");
    let model_arg = model.display().to_string();
    let replica = start(
        &[
            "serve",
            "--port",
            "0",
            "--data",
            &replica_data.display().to_string(),
            "--adapter-root",
            &root.display().to_string(),
            "--blobs",
            &blobs,
            "--model",
            &model_arg,
        ],
        &svc.s3_endpoint,
        "listening on ",
    );
    let api = api(&svc, &blobs, &tmp.path().join("api"), &model);
    let worker = worker_with(
        &svc,
        &blobs,
        &tmp.path().join("w"),
        &model,
        "10",
        &["--rollout-url", &replica.base],
    );
    let train = upload(&api.base, &tmp.path().join("train.jsonl"));
    let valid = upload(&api.base, &tmp.path().join("valid.jsonl"));
    let job = create_job(&api.base, &model, &train, &valid, 21);
    let done = wait_until_final(&api.base, &job, Duration::from_secs(300));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", worker.log());
    assert_once(&events(&api.base, &job), 4);
    // Every version the replica sampled came through the blob store into its adapter root.
    let fetched: Vec<String> = std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&job))
        .collect();
    // (A version is published once the policy changes: at least the first.)
    assert!(
        !fetched.is_empty(),
        "versions fetched from the blob store: {fetched:?}"
    );
    for name in &fetched {
        let dir = root.join("blobs").join(name);
        assert!(dir.join("adapter_model.safetensors").is_file(), "{name}");
    }
    // Nothing was written to the replica's root but what it fetched.
    let top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["blobs"]);
    assert_no_secrets(&[&replica, &api, &worker]);
}

#[test]
fn pause_resume_and_cancel_through_any_api_reach_the_worker() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = services() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Long enough (60 steps) that the pause lands mid-job.
    let model = write_task(tmp.path(), 120);
    let blobs = format!("s3://{}/control", svc.bucket);
    let api_a = api(&svc, &blobs, &tmp.path().join("api-a"), &model);
    let api_b = api(&svc, &blobs, &tmp.path().join("api-b"), &model);
    let worker = worker(&svc, &blobs, &tmp.path().join("w"), &model, "3");
    let train = upload(&api_a.base, &tmp.path().join("train.jsonl"));
    let valid = upload(&api_a.base, &tmp.path().join("valid.jsonl"));
    let job = create_job(&api_a.base, &model, &train, &valid, 31);
    wait_for_metrics(&api_a.base, &job, 2);
    // Paused through the other API process: the worker hears it at its next heartbeat and
    // stops at a step boundary.
    let paused = post(
        &format!("{}/fine_tuning/jobs/{job}/pause", api_b.base),
        json!({}),
    );
    assert_eq!(paused["status"], "paused", "{paused}");
    let start = Instant::now();
    while !events(&api_a.base, &job).iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Paused after step")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker never paused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let at_pause = metrics_steps(&events(&api_a.base, &job)).len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        metrics_steps(&events(&api_a.base, &job)).len(),
        at_pause,
        "no step while paused"
    );
    // Resumed through the first, it continues; cancelled through the second, it stops.
    let resumed = post(
        &format!("{}/fine_tuning/jobs/{job}/resume", api_a.base),
        json!({}),
    );
    assert_eq!(resumed["status"], "queued", "{resumed}");
    wait_for_metrics(&api_a.base, &job, at_pause + 1);
    let cancelled = post(
        &format!("{}/fine_tuning/jobs/{job}/cancel", api_b.base),
        json!({}),
    );
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // The trainer stops at its next step boundary, saying so.
    let start = Instant::now();
    let stops = |all: &[Value]| {
        all.iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Paused after step")
            })
            .count()
    };
    while stops(&events(&api_a.base, &job)) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker never stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancelled_events = events(&api_a.base, &job)
        .iter()
        .filter(|e| e["message"] == "Job cancelled")
        .count();
    assert_eq!(cancelled_events, 1, "one Job cancelled event");
    let settled = metrics_steps(&events(&api_a.base, &job)).len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        metrics_steps(&events(&api_a.base, &job)).len(),
        settled,
        "no step after the cancel"
    );
    assert_eq!(
        get(&format!("{}/fine_tuning/jobs/{job}", api_a.base))["status"],
        "cancelled"
    );
    let all = events(&api_a.base, &job);
    let mut steps = metrics_steps(&all);
    let n = steps.len();
    steps.dedup();
    assert_eq!(
        steps.len(),
        n,
        "each step's metrics once across the pause: {steps:?}"
    );
    assert_no_secrets(&[&api_a, &api_b, &worker]);
}
