//! A bounded loopback load test of a running server: `graders/run` and chat completions from
//! many concurrent clients at once, with throughput and latency percentiles. Used by
//! `rft bench serve` (figures in docs/performance.md) and by the server's tests, which assert that
//! no request fails except by the documented 429.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rft_types::api::chat::ChatRequest;
use rft_types::api::grader::RunGraderRequest;
use serde_json::{json, Map, Value};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// `graders/run` requests in all.
    pub grader_requests: usize,
    /// Concurrent grader clients.
    pub grader_clients: usize,
    /// Chat completion requests in all.
    pub chat_requests: usize,
    /// Concurrent chat clients.
    pub chat_clients: usize,
    /// The model the chats name.
    pub chat_model: String,
    /// Completion tokens per chat.
    pub chat_max_tokens: usize,
}

/// One phase's outcome.
#[derive(Debug, Clone, Default)]
pub struct PhaseReport {
    /// Requests sent.
    pub requests: usize,
    /// 2xx answers.
    pub ok: usize,
    /// 429 answers (the documented back-pressure).
    pub rejected: usize,
    /// Anything else: `status body` or the transport error.
    pub failures: Vec<String>,
    /// Wall time of the phase, seconds.
    pub seconds: f64,
    /// Latencies of the successful requests, milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
}

impl PhaseReport {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// The `p`-th percentile latency (0–100), milliseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.latencies_ms.len() - 1) as f64).round() as usize;
        self.latencies_ms[rank.min(self.latencies_ms.len() - 1)]
    }
}

/// An HTTP client that returns 4xx/5xx answers instead of failing on them, with a generous
/// timeout (a chat can wait behind a training step).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn phase(
    clients: usize,
    requests: usize,
    send: &(dyn Fn(&ureq::Agent, usize) -> Result<u16, String> + Sync),
) -> PhaseReport {
    let next = AtomicUsize::new(0);
    let report = Mutex::new(PhaseReport::default());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients.max(1) {
            scope.spawn(|| {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let t = Instant::now();
                    let outcome = send(&agent, i);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                    r.requests += 1;
                    match outcome {
                        Ok(s) if (200..300).contains(&s) => {
                            r.ok += 1;
                            r.latencies_ms.push(ms);
                        }
                        Ok(429) => r.rejected += 1,
                        Ok(s) => r.failures.push(format!("HTTP {s}")),
                        Err(e) => r.failures.push(e),
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.seconds = start.elapsed().as_secs_f64();
    report.latencies_ms.sort_by(f64::total_cmp);
    report
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    key: Option<&str>,
    body: &impl serde::Serialize,
) -> Result<u16, String> {
    let mut request = agent.post(url).header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let body = serde_json::to_string(body).map_err(|e| e.to_string())?;
    let mut response = request.send(body).map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if (200..300).contains(&status) || status == 429 {
        Ok(status)
    } else {
        Err(format!("HTTP {status}: {text}"))
    }
}

/// Runs both phases at the same time against `base` (`http://host:port/v1`).
pub fn run(base: &str, key: Option<&str>, plan: &LoadPlan) -> (PhaseReport, PhaseReport) {
    let grader = json!({
        "type": "multi", "name": "load",
        "graders": {
            "exact": {"type": "string_check", "name": "exact", "operation": "eq",
                      "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"},
            "close": {"type": "text_similarity", "name": "close", "evaluation_metric": "rouge_l",
                      "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}
        },
        "calculate_output": "0.5 * exact + 0.5 * close"
    });
    let graders_url = format!("{base}/fine_tuning/alpha/graders/run");
    let chat_url = format!("{base}/chat/completions");
    let grade = |agent: &ureq::Agent, i: usize| {
        post(
            agent,
            &graders_url,
            key,
            &RunGraderRequest {
                grader: grader.clone(),
                model_sample: format!("the answer is {}", i % 97),
                item: Some(Map::from_iter([(
                    "answer".to_owned(),
                    Value::String(format!("answer {}", i % 89)),
                )])),
            },
        )
    };
    let chat = |agent: &ureq::Agent, i: usize| {
        post(
            agent,
            &chat_url,
            key,
            &ChatRequest {
                model: plan.chat_model.clone(),
                seed: Some(i as i64),
                max_completion_tokens: Some(plan.chat_max_tokens as u64),
                messages: vec![ChatRequest::user_message(format!(
                    "Count to {}.",
                    i % 10 + 2
                ))],
                ..ChatRequest::default()
            },
        )
    };
    std::thread::scope(|scope| {
        let graders = scope.spawn(|| phase(plan.grader_clients, plan.grader_requests, &grade));
        let chats = phase(plan.chat_clients, plan.chat_requests, &chat);
        let graders = graders.join().unwrap_or_default();
        (graders, chats)
    })
}

fn typed(request: &impl serde::Serialize) -> Value {
    serde_json::to_value(request).unwrap_or(Value::Null)
}

/// Requests an attacker would send, each with the answer the server must give: the server
/// must give it, and keep serving the normal load beside them.
fn hostile_request(i: usize) -> (&'static str, Value, u16) {
    let deep = format!("{}a{}", "(".repeat(3000), ")".repeat(3000));
    match i % 5 {
        0 => (
            "/fine_tuning/alpha/graders/validate",
            json!({"grader": {"type": "multi", "name": "m", "calculate_output": deep,
                "graders": {"a": {"type": "string_check", "name": "a", "operation": "eq",
                                  "input": "x", "reference": "x"}}}}),
            400,
        ),
        1 => (
            "/fine_tuning/alpha/graders/run",
            json!({"grader": {"type": "string_check", "name": "big", "operation": "eq",
                              "input": "{{ item.x }}".repeat(2048), "reference": "a"},
                   "model_sample": "a", "item": {"x": "x".repeat(1 << 20)}}),
            200,
        ),
        2 => (
            "/chat/completions",
            typed(&ChatRequest {
                model: "/etc/shadow".into(),
                messages: vec![ChatRequest::user_message("hi")],
                ..ChatRequest::default()
            }),
            404,
        ),
        3 => (
            "/chat/completions",
            typed(&ChatRequest {
                model: "x".into(),
                n: Some(128),
                max_tokens: Some(1_000_000),
                messages: vec![ChatRequest::user_message("hi")],
                ..ChatRequest::default()
            }),
            400,
        ),
        _ => (
            "/fine_tuning/alpha/graders/validate",
            json!({"grader": {"type": "python", "name": "p", "image_tag": "/tmp",
                              "source": "def grade(s, i):\n    return 1\n"}}),
            400,
        ),
    }
}

/// Sends `requests` hostile requests from `clients` clients; a request counts as ok when it
/// got exactly the answer it must get (or 429), and as a failure otherwise.
pub fn hostile(base: &str, key: Option<&str>, clients: usize, requests: usize) -> PhaseReport {
    let send = |agent: &ureq::Agent, i: usize| -> Result<u16, String> {
        let (path, body, expected) = hostile_request(i);
        let mut request = agent
            .post(format!("{base}{path}"))
            .header("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.send(body.to_string()).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let enveloped = status < 300 || text.contains("\"error\"");
        match status {
            429 => Ok(429),
            s if s == expected && enveloped => Ok(200),
            s => Err(format!(
                "{path}: expected HTTP {expected}, got {s}: {text:.200}"
            )),
        }
    };
    phase(clients, requests, &send)
}
