//! `score_model` and `label_model` end to end, against a fixture chat-completions server on
//! 127.0.0.1 that answers deterministically and records what it was sent.
//!
//! Every test starts its own server (an ephemeral port), so tests run in parallel and never
//! touch the internet.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rft_grade::{
    compile_with, validate, CompiledGrader, GradeError, GradeRequest, GraderContext, JudgeClient,
    JudgeConfig,
};
use rft_types::{Grader, RunGraderResponse, Sample};
use serde_json::{json, Value};

/// What the fixture server was sent.
#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the fixture server answers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    /// A chat completion whose message content is `content`.
    fn content(content: &str) -> Reply {
        Reply::completion(
            json!({"role": "assistant", "content": content, "refusal": null}),
            "stop",
        )
    }

    fn completion(message: Value, finish_reason: &str) -> Reply {
        Reply::json(
            200,
            json!({
                "id": "chatcmpl-fixture",
                "object": "chat.completion",
                "created": 0,
                "model": "judge-2025-01-01",
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                          "prompt_tokens_details": {"cached_tokens": 64}}
            }),
        )
    }

    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    fn error(status: u16) -> Reply {
        Reply::json(
            status,
            json!({"error": {"message": format!("fixture error {status}"), "type": "server_error"}}),
        )
    }

    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(usize, &Value) -> Reply + Send + Sync;

/// A tiny HTTP/1.1 server: one request per connection, each on its own thread.
struct FixtureServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    max_in_flight: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FixtureServer {
    /// Answers request number `n` (from 0) with `handler(n, body)`.
    fn start(handler: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static) -> FixtureServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept = {
            let (requests, stop, max_in_flight) =
                (requests.clone(), stop.clone(), max_in_flight.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, handler, in_flight, max_in_flight) = (
                        requests.clone(),
                        handler.clone(),
                        in_flight.clone(),
                        max_in_flight.clone(),
                    );
                    std::thread::spawn(move || {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_in_flight.fetch_max(now, Ordering::SeqCst);
                        serve(stream, &requests, &*handler);
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        FixtureServer {
            addr,
            requests,
            max_in_flight,
            stop,
            accept: Some(accept),
        }
    }

    /// Always answers with the same content.
    fn answering(content: &'static str) -> FixtureServer {
        FixtureServer::start(move |_, _| Reply::content(content))
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// A context whose judge is this server, with test-sized timeouts and backoff.
    fn context(&self) -> GraderContext {
        self.context_with(|_| {})
    }

    fn context_with(&self, adjust: impl FnOnce(&mut JudgeConfig)) -> GraderContext {
        let mut config = JudgeConfig {
            base_url: self.base_url(),
            api_key: Some("test-key".to_owned()),
            timeout: Duration::from_secs(10),
            max_retries: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            ..JudgeConfig::default()
        };
        adjust(&mut config);
        context(config)
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(stream: TcpStream, requests: &Mutex<Vec<Recorded>>, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // The shutdown wake-up connection.
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let index = {
        let mut requests = requests.lock().unwrap();
        requests.push(Recorded {
            path,
            headers,
            body: body.clone(),
        });
        requests.len() - 1
    };
    let reply = handler(index, &body);
    std::thread::sleep(reply.delay);
    let mut response = format!(
        "HTTP/1.1 {} Fixture\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply.body);
    let mut stream = &stream;
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

fn context(config: JudgeConfig) -> GraderContext {
    GraderContext {
        judge: JudgeClient::new(config),
        ..GraderContext::shared()
    }
}

fn compile(spec: Value, context: &GraderContext) -> CompiledGrader {
    let grader = Grader::from_value(&spec).unwrap_or_else(|e| panic!("{e}"));
    validate(&grader).unwrap_or_else(|e| panic!("{e}"));
    compile_with(&grader, context).unwrap_or_else(|e| panic!("{e}"))
}

fn grade(grader: &CompiledGrader, sample: &str, item: Value) -> RunGraderResponse {
    grader.grade(&Sample::from_text(sample), &item)
}

fn score_model(extra: Value) -> Value {
    let mut spec = json!({
        "type": "score_model", "name": "judge", "model": "judge-model",
        "input": [
            {"role": "system", "content": "Grade the answer to {{item.question}}."},
            {"role": "user", "content": [
                {"type": "input_text", "text": "Reference: {{item.reference}}"},
                {"type": "input_text", "text": "Answer: {{sample.output_text}}"}
            ]}
        ]
    });
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    spec
}

fn label_model() -> Value {
    json!({
        "type": "label_model", "name": "sentiment", "model": "label-judge",
        "input": [{"role": "developer", "content": "Classify the sentiment."},
                  {"role": "user", "content": "{{sample.output_text}}"}],
        "labels": ["positive", "neutral", "negative"],
        "passing_labels": ["positive", "neutral"]
    })
}

fn item() -> Value {
    json!({"question": "What is the capital of France?", "reference": "Paris"})
}

const GOOD_SCORE: &str = r#"{"steps": [{"description": "compare with the reference", "conclusion": "it matches"}], "result": 0.75}"#;

fn no_errors(result: &RunGraderResponse) {
    let errors = &result.metadata.errors;
    assert!(
        !errors.model_grader_server_error
            && !errors.model_grader_parse_error
            && !errors.model_grader_refusal_error
            && !errors.invalid_variable_error,
        "{errors:?}"
    );
}

#[test]
fn score_model_sends_rendered_messages_schema_and_sampling_params() {
    let server = FixtureServer::answering(GOOD_SCORE);
    let grader = compile(
        score_model(json!({"sampling_params": {
            "temperature": 0.2, "top_p": 0.9, "seed": 7, "max_completions_tokens": 512,
            "reasoning_effort": "low"
        }})),
        &server.context(),
    );
    let result = grade(&grader, "Paris", item());
    no_errors(&result);
    assert_eq!(result.reward, 0.75);
    assert_eq!(result.metadata.kind, "score_model");
    assert_eq!(result.metadata.scores["result"], 0.75);
    assert_eq!(
        result.metadata.scores["steps"][0]["conclusion"],
        "it matches"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer test-key"));
    assert!(request
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let body = &request.body;
    assert_eq!(body["model"], "judge-model");
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["max_completion_tokens"], 512);
    assert!(body.get("max_completions_tokens").is_none());
    assert_eq!(body["reasoning_effort"], "low");

    let format = &body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    assert!(format["json_schema"]["name"].is_string());
    let schema = &format["json_schema"]["schema"];
    assert_eq!(schema["properties"]["result"]["type"], "number");
    assert_eq!(
        schema["properties"]["steps"]["items"]["required"],
        json!(["description", "conclusion"])
    );
    assert_eq!(schema["required"], json!(["steps", "result"]));
    assert_eq!(schema["additionalProperties"], false);

    // OpenRFT's system prompt, with the grader's leading system message merged into it, then
    // the user message with its text parts joined into one string.
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["role"], "system");
    let system = messages[0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are a grader."), "{system}");
    assert!(system.contains("one number from 0 to 1"), "{system}");
    assert!(
        system.ends_with("\n\nGrade the answer to What is the capital of France?."),
        "{system}"
    );
    assert_eq!(messages[1]["role"], "user");
    assert_eq!(messages[1]["content"], "Reference: Paris\nAnswer: Paris");
}

#[test]
fn the_documented_system_prompts_are_the_ones_sent() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/graders.md"
    ))
    .unwrap();
    let server = FixtureServer::start(|_, body| {
        if body["model"] == "label-judge" {
            Reply::content(r#"{"steps": [], "label": "positive"}"#)
        } else {
            Reply::content(GOOD_SCORE)
        }
    });
    let context = server.context();
    no_errors(&grade(
        &compile(score_model(json!({})), &context),
        "Paris",
        item(),
    ));
    no_errors(&grade(&compile(label_model(), &context), "Paris", item()));
    for request in server.requests() {
        let system = request.body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        // The grader's own system message is appended after a blank line.
        let (prompt, _) = system.split_once("\n\n").unwrap();
        assert!(
            doc.contains(&format!("```text\n{prompt}\n```")),
            "docs/graders.md does not show the prompt:\n{prompt}"
        );
    }
}

#[test]
fn score_model_without_sampling_params_sends_none() {
    let server = FixtureServer::answering(GOOD_SCORE);
    let grader = compile(score_model(json!({})), &server.context());
    no_errors(&grade(&grader, "Paris", item()));
    let body = &server.requests()[0].body;
    for key in [
        "temperature",
        "top_p",
        "seed",
        "max_completion_tokens",
        "reasoning_effort",
    ] {
        assert!(body.get(key).is_none(), "{key} sent: {body}");
    }
}

#[test]
fn images_and_audio_become_content_parts() {
    let server = FixtureServer::answering(GOOD_SCORE);
    let grader = compile(
        json!({"type": "score_model", "name": "vision", "model": "m", "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "Is this {{item.animal}}?"},
                {"type": "input_image", "image_url": "{{item.url}}", "detail": "low"},
                {"type": "input_audio", "input_audio": {"data": "{{item.clip}}", "format": "wav"}}
            ]}
        ]}),
        &server.context(),
    );
    let result = grade(
        &grader,
        "x",
        json!({"animal": "a cat", "url": "https://example.invalid/cat.png", "clip": "UklGRg=="}),
    );
    no_errors(&result);
    let messages = &server.requests()[0].body["messages"];
    assert_eq!(
        messages[1]["content"],
        json!([
            {"type": "text", "text": "Is this a cat?"},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
        ])
    );
}

#[test]
fn score_model_clips_into_range() {
    let server = FixtureServer::start(|n, _| {
        Reply::content(match n {
            0 => r#"{"steps": [], "result": 15}"#,
            1 => r#"{"steps": [], "result": -3.5}"#,
            2 => r#"{"steps": [], "result": 7.25}"#,
            _ => r#"{"steps": [], "result": 1.7}"#,
        })
    });
    let ranged = compile(score_model(json!({"range": [0, 10]})), &server.context());
    let high = grade(&ranged, "Paris", item());
    assert_eq!(high.reward, 10.0);
    assert_eq!(
        high.metadata.scores["result"], 15.0,
        "the raw result is kept"
    );
    assert_eq!(grade(&ranged, "Paris", item()).reward, 0.0);
    assert_eq!(grade(&ranged, "Paris", item()).reward, 7.25);
    let system = server.requests()[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(system.contains("one number from 0 to 10"), "{system}");

    let default_range = compile(score_model(json!({})), &server.context());
    assert_eq!(grade(&default_range, "Paris", item()).reward, 1.0);
}

#[test]
fn label_model_passes_on_passing_labels_only() {
    let server = FixtureServer::start(|n, _| {
        Reply::content(match n {
            0 => {
                r#"{"steps": [{"description": "tone", "conclusion": "upbeat"}], "label": "positive"}"#
            }
            1 => r#"{"steps": [], "label": "neutral"}"#,
            2 => r#"{"steps": [], "label": "negative"}"#,
            _ => r#"{"steps": [], "label": "ecstatic"}"#,
        })
    });
    let grader = compile(label_model(), &server.context());
    let positive = grade(&grader, "I love it", json!({}));
    no_errors(&positive);
    assert_eq!(positive.reward, 1.0);
    assert_eq!(positive.metadata.kind, "label_model");
    assert_eq!(positive.metadata.scores["label"], "positive");
    assert_eq!(positive.metadata.scores["steps"][0]["conclusion"], "upbeat");
    assert_eq!(grade(&grader, "It is fine", json!({})).reward, 1.0);
    let negative = grade(&grader, "I hate it", json!({}));
    no_errors(&negative);
    assert_eq!(negative.reward, 0.0);

    let outside = grade(&grader, "!!!", json!({}));
    assert_eq!(outside.reward, 0.0);
    assert!(outside.metadata.errors.model_grader_parse_error);
    assert_eq!(outside.metadata.scores["label"], "ecstatic");

    let body = &server.requests()[0].body;
    assert_eq!(body["model"], "label-judge");
    assert!(body.get("temperature").is_none());
    let schema = &body["response_format"]["json_schema"]["schema"];
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(
        schema["properties"]["label"],
        json!({"type": "string", "enum": ["positive", "neutral", "negative"]})
    );
    assert_eq!(schema["required"], json!(["steps", "label"]));
    // The developer message is sent as a system message, merged into OpenRFT's prompt.
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    let system = messages[0]["content"].as_str().unwrap();
    assert!(
        system.contains(r#"exactly one of: "positive", "neutral", "negative"."#),
        "{system}"
    );
    assert!(system.ends_with("\n\nClassify the sentiment."), "{system}");
    assert_eq!(messages[1], json!({"role": "user", "content": "I love it"}));
}

#[test]
fn malformed_answers_are_parse_errors() {
    let answers = [
        "The answer deserves a 0.8.",
        r#"{"steps": [], "score": 0.8}"#,
        r#"{"steps": [], "result": "high"}"#,
        r#"[0.8]"#,
        "",
    ];
    let server = FixtureServer::start(move |n, _| Reply::content(answers[n % answers.len()]));
    let grader = compile(score_model(json!({})), &server.context());
    for answer in answers {
        let result = grade(&grader, "Paris", item());
        assert_eq!(result.reward, 0.0, "{answer}");
        let errors = &result.metadata.errors;
        assert!(errors.model_grader_parse_error, "{answer}: {errors:?}");
        assert!(!errors.model_grader_server_error, "{answer}");
        assert_eq!(
            result.metadata.scores["raw_answer"], answer,
            "the raw answer is kept for debugging"
        );
        // The call succeeded, so its cost is still reported.
        assert_eq!(result.metadata.token_usage.unwrap().total_tokens, 120);
    }
    assert_eq!(
        server.count(),
        answers.len(),
        "parse errors are not retried"
    );

    // A null content (and no refusal) is a parse error too.
    let server = FixtureServer::start(|_, _| {
        Reply::completion(json!({"role": "assistant", "content": null}), "stop")
    });
    let grader = compile(score_model(json!({})), &server.context());
    assert!(
        grade(&grader, "Paris", item())
            .metadata
            .errors
            .model_grader_parse_error
    );
}

#[test]
fn json_in_a_code_fence_is_accepted() {
    let server = FixtureServer::answering("```json\n{\"steps\": [], \"result\": 0.5}\n```");
    let grader = compile(score_model(json!({})), &server.context());
    let result = grade(&grader, "Paris", item());
    no_errors(&result);
    assert_eq!(result.reward, 0.5);
}

#[test]
fn refusals_are_refusal_errors() {
    let server = FixtureServer::start(|n, _| match n {
        0 => Reply::completion(
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
            "stop",
        ),
        _ => Reply::completion(
            json!({"role": "assistant", "content": "{\"steps\": [], \"res"}),
            "content_filter",
        ),
    });
    let grader = compile(score_model(json!({})), &server.context());
    for expected in ["I can't help with that.", "content_filter"] {
        let result = grade(&grader, "Paris", item());
        assert_eq!(result.reward, 0.0);
        let errors = &result.metadata.errors;
        assert!(errors.model_grader_refusal_error, "{errors:?}");
        assert!(!errors.model_grader_parse_error && !errors.model_grader_server_error);
        assert_eq!(result.metadata.scores["refusal"], expected);
    }
    assert_eq!(server.count(), 2, "refusals are not retried");
}

#[test]
fn a_slow_judge_times_out_within_bounded_time() {
    let server =
        FixtureServer::start(|_, _| Reply::content(GOOD_SCORE).delayed(Duration::from_secs(3)));
    let grader = compile(
        score_model(json!({})),
        &server.context_with(|c| {
            c.timeout = Duration::from_millis(200);
            c.max_retries = 1;
        }),
    );
    let start = Instant::now();
    let result = grade(&grader, "Paris", item());
    let elapsed = start.elapsed();
    assert_eq!(result.reward, 0.0);
    let errors = &result.metadata.errors;
    assert!(errors.model_grader_server_error, "{errors:?}");
    let details = errors.model_grader_server_error_details.clone().unwrap();
    assert!(details.contains("2 attempts"), "{details}");
    assert!(details.contains("no complete answer within"), "{details}");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert_eq!(server.count(), 2);
    assert!(result.metadata.token_usage.is_none());
}

#[test]
fn the_deadline_bounds_the_whole_call() {
    let server =
        FixtureServer::start(|_, _| Reply::content(GOOD_SCORE).delayed(Duration::from_secs(3)));
    let grader = compile(
        score_model(json!({})),
        &server.context_with(|c| {
            c.timeout = Duration::from_secs(2);
            c.max_retries = 10;
            c.deadline = Duration::from_millis(500);
        }),
    );
    let start = Instant::now();
    let result = grade(&grader, "Paris", item());
    assert!(result.metadata.errors.model_grader_server_error);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn server_errors_are_retried_then_reported() {
    let server = FixtureServer::start(|_, _| Reply::error(500));
    let grader = compile(score_model(json!({})), &server.context());
    let result = grade(&grader, "Paris", item());
    assert_eq!(result.reward, 0.0);
    let errors = &result.metadata.errors;
    assert!(errors.model_grader_server_error, "{errors:?}");
    let details = errors.model_grader_server_error_details.clone().unwrap();
    assert!(details.contains("HTTP 500"), "{details}");
    assert!(details.contains("3 attempts"), "{details}");
    assert!(details.contains("fixture error 500"), "{details}");
    assert_eq!(server.count(), 3, "one call and max_retries = 2 retries");
    assert!(result.metadata.sampled_model_name.is_none());
    assert!(result.model_grader_token_usage_per_model.is_empty());
}

#[test]
fn a_transient_server_error_is_retried_to_success() {
    let server = FixtureServer::start(|n, _| match n {
        0 => Reply::error(500),
        1 => Reply::error(503),
        _ => Reply::content(GOOD_SCORE),
    });
    let grader = compile(score_model(json!({})), &server.context());
    let result = grade(&grader, "Paris", item());
    no_errors(&result);
    assert_eq!(result.reward, 0.75);
    assert_eq!(server.count(), 3);
    let bodies: Vec<Value> = server.requests().into_iter().map(|r| r.body).collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "retries resend the same request"
    );
}

#[test]
fn client_errors_are_not_retried() {
    let server = FixtureServer::start(|_, _| {
        Reply::json(
            400,
            json!({"error": {"message": "Unsupported parameter: 'reasoning_effort'"}}),
        )
    });
    let grader = compile(score_model(json!({})), &server.context());
    let result = grade(&grader, "Paris", item());
    let details = result
        .metadata
        .errors
        .model_grader_server_error_details
        .clone()
        .unwrap();
    assert!(details.contains("HTTP 400"), "{details}");
    assert!(details.contains("Unsupported parameter"), "{details}");
    assert!(details.contains("(1 attempt)"), "{details}");
    assert_eq!(server.count(), 1);
}

#[test]
fn rate_limits_honour_retry_after() {
    let server = FixtureServer::start(|n, _| match n {
        0 => Reply::error(429).header("retry-after", "1"),
        _ => Reply::content(GOOD_SCORE),
    });
    let grader = compile(score_model(json!({})), &server.context());
    let start = Instant::now();
    let result = grade(&grader, "Paris", item());
    let elapsed = start.elapsed();
    no_errors(&result);
    assert_eq!(result.reward, 0.75);
    assert_eq!(server.count(), 2);
    assert!(
        elapsed >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({elapsed:?})"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn retry_after_is_capped() {
    let server = FixtureServer::start(|n, _| match n {
        0 => Reply::error(429).header("retry-after", "3600"),
        _ => Reply::content(GOOD_SCORE),
    });
    let grader = compile(
        score_model(json!({})),
        &server.context_with(|c| c.max_retry_after = Duration::from_millis(100)),
    );
    let start = Instant::now();
    no_errors(&grade(&grader, "Paris", item()));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(server.count(), 2);
}

#[test]
fn a_judge_that_is_down_fails_fast() {
    // Bind and drop a listener: nothing listens on the port afterwards.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let grader = compile(
        score_model(json!({})),
        &context(JudgeConfig {
            base_url: format!("http://{addr}/v1"),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..JudgeConfig::default()
        }),
    );
    let start = Instant::now();
    let result = grade(&grader, "Paris", item());
    let errors = &result.metadata.errors;
    assert!(errors.model_grader_server_error, "{errors:?}");
    let details = errors.model_grader_server_error_details.clone().unwrap();
    assert!(details.contains("4 attempts"), "{details}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn https_base_urls_speak_tls() {
    // A listener that records the first byte it receives: a TLS handshake record is 0x16.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let first_byte = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).map(|_| byte[0]).ok()
    });
    let grader = compile(
        score_model(json!({})),
        &context(JudgeConfig {
            base_url: format!("https://{addr}/v1"),
            timeout: Duration::from_secs(2),
            max_retries: 0,
            ..JudgeConfig::default()
        }),
    );
    let result = grade(&grader, "Paris", item());
    assert!(result.metadata.errors.model_grader_server_error);
    assert_eq!(first_byte.join().unwrap(), Some(0x16));
}

#[test]
fn a_non_completion_answer_is_a_server_error() {
    let server = FixtureServer::start(|n, _| match n {
        0 => Reply {
            status: 200,
            headers: Vec::new(),
            body: "<html>proxy error</html>".to_owned(),
            delay: Duration::ZERO,
        },
        _ => Reply::json(200, json!({"object": "list", "data": []})),
    });
    let grader = compile(score_model(json!({})), &server.context());
    for expected in ["the body starts", "no `choices[0]`"] {
        let result = grade(&grader, "Paris", item());
        let details = result
            .metadata
            .errors
            .model_grader_server_error_details
            .clone()
            .unwrap();
        assert!(details.contains(expected), "{details}");
    }
}

#[test]
fn token_usage_is_reported_in_metadata_and_per_model() {
    let server = FixtureServer::answering(GOOD_SCORE);
    let grader = compile(score_model(json!({})), &server.context());
    let result = grade(&grader, "Paris", item());
    let usage = result.metadata.token_usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            usage.cached_tokens
        ),
        (100, 20, 120, 64)
    );
    assert_eq!(
        result.model_grader_token_usage_per_model.get("judge-model"),
        Some(&usage),
        "keyed by the grader's model"
    );
    assert_eq!(
        result.metadata.sampled_model_name.as_deref(),
        Some("judge-2025-01-01"),
        "the model the endpoint says answered"
    );
    let wire = serde_json::to_value(&result).unwrap();
    assert_eq!(
        wire["metadata"]["token_usage"],
        json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "cached_tokens": 64})
    );
}

#[test]
fn multi_mixes_string_check_and_model_graders() {
    let server = FixtureServer::start(|_, body| {
        // The label judge and the score judge get different answers.
        if body["model"] == "label-judge" {
            Reply::content(r#"{"steps": [], "label": "positive"}"#)
        } else {
            Reply::content(GOOD_SCORE)
        }
    });
    let grader = compile(
        json!({
            "type": "multi", "name": "combined",
            "calculate_output": "(exact + 2 * judged + mood) / 4",
            "graders": {
                "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                          "reference": "{{item.reference}}", "operation": "eq"},
                "judged": score_model(json!({})),
                "mood": label_model()
            }
        }),
        &server.context(),
    );
    assert!(grader.calls_judge());
    let result = grade(&grader, "Paris", item());
    no_errors(&result);
    assert_eq!(result.reward, (1.0 + 2.0 * 0.75 + 1.0) / 4.0);
    assert_eq!(result.sub_rewards["exact"], 1.0);
    assert_eq!(result.sub_rewards["judged"], 0.75);
    assert_eq!(result.sub_rewards["mood"], 1.0);
    assert_eq!(result.metadata.scores["judged"], 0.75);
    let total = result.metadata.token_usage.unwrap();
    assert_eq!((total.prompt_tokens, total.total_tokens), (200, 240));
    assert_eq!(result.model_grader_token_usage_per_model.len(), 2);
    assert_eq!(
        result.model_grader_token_usage_per_model["judge-model"].total_tokens,
        120
    );
    assert_eq!(
        result.model_grader_token_usage_per_model["label-judge"].total_tokens,
        120
    );
    assert_eq!(
        result.metadata.sampled_model_name.as_deref(),
        Some("judge-2025-01-01")
    );
    assert_eq!(server.count(), 2);
}

#[test]
fn a_failing_model_child_fails_the_multi_grade() {
    let server = FixtureServer::start(|_, _| Reply::error(500));
    let grader = compile(
        json!({
            "type": "multi", "name": "combined", "calculate_output": "exact + judged",
            "graders": {
                "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                          "reference": "Paris", "operation": "eq"},
                "judged": score_model(json!({}))
            }
        }),
        &server.context_with(|c| c.max_retries = 0),
    );
    let result = grade(&grader, "Paris", item());
    assert_eq!(result.reward, 0.0);
    assert!(result.metadata.errors.model_grader_server_error);
    assert!(result
        .metadata
        .errors
        .model_grader_server_error_details
        .is_some());
    assert_eq!(result.sub_rewards["exact"], 1.0);
}

#[test]
fn a_missing_variable_makes_no_call() {
    let server = FixtureServer::answering(GOOD_SCORE);
    let grader = compile(score_model(json!({})), &server.context());
    let result = grade(&grader, "Paris", json!({"question": "Capital of France?"}));
    assert_eq!(result.reward, 0.0);
    assert!(result.metadata.errors.invalid_variable_error);
    assert!(!result.metadata.errors.model_grader_server_error);
    assert!(result.metadata.token_usage.is_none());
    assert!(result.model_grader_token_usage_per_model.is_empty());
    assert_eq!(server.count(), 0);
}

#[test]
fn grade_all_runs_model_graders_concurrently_within_the_limit() {
    let server =
        FixtureServer::start(|_, _| Reply::content(GOOD_SCORE).delayed(Duration::from_millis(300)));
    let grader = compile(
        score_model(json!({})),
        &server.context_with(|c| c.max_concurrency = 6),
    );
    let requests: Vec<GradeRequest> = (0..18)
        .map(|_| GradeRequest {
            sample: Sample::from_text("Paris"),
            item: item(),
        })
        .collect();
    let start = Instant::now();
    let results = grader.grade_all(&requests);
    let elapsed = start.elapsed();
    assert_eq!(results.len(), 18);
    assert!(results.iter().all(|r| r.reward == 0.75));
    // 18 calls of 300 ms, 6 at a time: about 0.9 s; one per core (2 here) would take 2.7 s.
    assert!(elapsed < Duration::from_millis(2200), "took {elapsed:?}");
    let peak = server.max_in_flight.load(Ordering::SeqCst);
    assert!(peak <= 6, "{peak} calls in flight, limit 6");
    assert!(peak >= 3, "only {peak} calls in flight");
}

#[test]
fn install_picks_the_judge_pool_for_graders_that_call_a_judge() {
    let server = FixtureServer::answering(GOOD_SCORE);
    let context = server.context_with(|c| c.max_concurrency = 5);
    let judged = compile(score_model(json!({})), &context);
    assert!(judged.calls_judge());
    assert_eq!(judged.install(rayon::current_num_threads), 5);
    let plain = compile(
        json!({"type": "string_check", "name": "s", "input": "a", "reference": "a", "operation": "eq"}),
        &context,
    );
    assert!(!plain.calls_judge());
    assert_eq!(
        plain.install(rayon::current_num_threads),
        rayon::current_num_threads()
    );
}

#[test]
fn compile_checks_the_judge_configuration() {
    let grader = Grader::from_value(&score_model(json!({}))).unwrap();
    let bad_url = context(JudgeConfig {
        base_url: "localhost:8000/v1".to_owned(),
        ..JudgeConfig::default()
    });
    let err = compile_with(&grader, &bad_url).unwrap_err();
    assert!(matches!(err, GradeError::Judge { .. }), "{err}");
    assert!(err.to_string().contains("RFT_JUDGE_BASE_URL"), "{err}");

    let keyless_openai = context(JudgeConfig::default());
    let err = compile_with(&grader, &keyless_openai).unwrap_err();
    assert!(err.to_string().contains("RFT_JUDGE_API_KEY"), "{err}");

    // A local server needs no key.
    let local = context(JudgeConfig {
        base_url: "http://127.0.0.1:9/v1".to_owned(),
        ..JudgeConfig::default()
    });
    assert!(compile_with(&grader, &local).is_ok());
}

#[test]
fn a_reversed_range_built_in_code_is_rejected() {
    let Grader::ScoreModel(mut spec) = Grader::from_value(&score_model(json!({}))).unwrap() else {
        panic!("not a score_model grader")
    };
    spec.range = Some([1.0, 0.0]);
    let server = FixtureServer::answering(GOOD_SCORE);
    let err = compile_with(&Grader::ScoreModel(spec), &server.context()).unwrap_err();
    assert!(err.to_string().starts_with("range: "), "{err}");
}

/// Environment variables are process-wide, so this test reads them in a child process: the
/// test binary itself, running only this test with the probe variable set.
#[test]
fn from_env_reads_the_documented_variables() {
    if std::env::var_os("RFT_TEST_JUDGE_ENV_PROBE").is_some() {
        let c = JudgeConfig::from_env();
        println!(
            "PROBE {} {:?} {} {:?} {} {:?}",
            c.endpoint(),
            c.api_key,
            c.max_concurrency,
            c.timeout,
            c.max_retries,
            c.deadline
        );
        return;
    }
    let probe = |key: Option<&str>| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "from_env_reads_the_documented_variables",
                "--nocapture",
            ])
            .env("RFT_TEST_JUDGE_ENV_PROBE", "1")
            .env("RFT_JUDGE_BASE_URL", "http://judge.internal:8000/v1/")
            .env("OPENAI_API_KEY", "sk-fallback")
            .env("RFT_JUDGE_MAX_CONCURRENCY", "4")
            .env("RFT_JUDGE_TIMEOUT_SECS", "2.5")
            .env("RFT_JUDGE_MAX_RETRIES", "1")
            .env("RFT_JUDGE_DEADLINE_SECS", "soon");
        match key {
            Some(key) => command.env("RFT_JUDGE_API_KEY", key),
            None => command.env_remove("RFT_JUDGE_API_KEY"),
        };
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("PROBE "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no probe output:\n{stdout}"))
    };
    assert_eq!(
        probe(None),
        r#"http://judge.internal:8000/v1/chat/completions Some("sk-fallback") 4 2.5s 1 180s"#,
        "OPENAI_API_KEY is the fallback; a deadline that does not parse keeps the default"
    );
    assert!(probe(Some("sk-judge")).contains(r#"Some("sk-judge")"#));
}

#[test]
fn the_api_key_is_not_printed() {
    let config = JudgeConfig {
        api_key: Some("sk-secret".to_owned()),
        ..JudgeConfig::default()
    };
    let printed = format!("{:?} {:?}", config, JudgeClient::new(config.clone()));
    assert!(!printed.contains("sk-secret"), "{printed}");
}
