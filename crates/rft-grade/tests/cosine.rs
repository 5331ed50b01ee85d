//! The `cosine` metric end to end: `text_similarity` graders compiled with [`compile_with`]
//! against a fixture embeddings server on 127.0.0.1 (an OpenAI-compatible `/v1/embeddings`
//! that answers deterministic vectors), and against in-process embedders.
//!
//! Every test starts its own server on an ephemeral port, so tests run in parallel and never
//! touch the internet.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rft_grade::embed::cosine_similarity;
use rft_grade::{
    compile_with, CompiledGrader, EmbedError, Embedder, EmbeddingsConfig, GradeError, GradeRequest,
    GraderContext, RemoteEmbedder,
};
use rft_types::{Grader, RunGraderResponse, Sample};
use serde_json::{json, Value};

/// A deterministic embedding: counts of each word's first letter, in 26 dimensions. Texts that
/// share words point the same way, so cosines are easy to predict.
fn letters(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 26];
    for word in text.split_whitespace() {
        if let Some(c) = word.chars().next().filter(char::is_ascii_alphabetic) {
            v[usize::from(c.to_ascii_lowercase() as u8 - b'a')] += 1.0;
        }
    }
    v
}

/// What the fixture server was sent.
#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    authorization: Option<String>,
    body: Value,
}

type Handler = dyn Fn(usize, &Value) -> (u16, String) + Send + Sync;

/// A tiny HTTP/1.1 server: one request per connection, each on its own thread.
struct FixtureServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FixtureServer {
    /// Answers request number `n` (from 0) with `handler(n, body)`: a status and a body.
    fn start(handler: impl Fn(usize, &Value) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, handler) = (requests.clone(), handler.clone());
                    std::thread::spawn(move || serve(stream, &requests, &*handler));
                }
            })
        };
        FixtureServer {
            addr,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    /// An embeddings server that embeds every input with [`letters`], listing the vectors in
    /// reverse order (with their `index`) to check that the client reorders them.
    fn embedding() -> FixtureServer {
        FixtureServer::start(|_, body| (200, embeddings_response(body)))
    }

    fn config(&self) -> EmbeddingsConfig {
        let mut config = EmbeddingsConfig::new(&format!("http://{}/v1", self.addr));
        config.api_key = Some("test-key".to_owned());
        config.model = "fixture-embedder".to_owned();
        config.timeout = Duration::from_secs(10);
        config.initial_backoff = Duration::from_millis(10);
        config.max_backoff = Duration::from_millis(50);
        config.max_retries = 2;
        config
    }

    fn context(&self) -> GraderContext {
        context_with(Arc::new(RemoteEmbedder::new(self.config())))
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
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

fn embeddings_response(body: &Value) -> String {
    let inputs: Vec<&str> = body["input"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": letters(text)}))
        .collect();
    json!({"object": "list", "data": data, "model": body["model"],
           "usage": {"prompt_tokens": 5, "total_tokens": 5}})
    .to_string()
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
    let mut length = 0;
    let mut authorization = None;
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
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let index = {
        let mut requests = requests.lock().unwrap();
        requests.push(Recorded {
            path,
            authorization,
            body: body.clone(),
        });
        requests.len() - 1
    };
    let (status, reply) = handler(index, &body);
    let response = format!(
        "HTTP/1.1 {status} Fixture\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let mut stream = &stream;
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

fn context_with(embedder: Arc<dyn Embedder>) -> GraderContext {
    GraderContext {
        embedder: Some(embedder),
        ..GraderContext::shared()
    }
}

fn cosine_grader() -> Value {
    json!({"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
           "reference": "{{item.reference}}", "evaluation_metric": "cosine"})
}

fn compile(spec: Value, context: &GraderContext) -> CompiledGrader {
    let grader = Grader::from_value(&spec).unwrap_or_else(|e| panic!("{e}"));
    compile_with(&grader, context).unwrap_or_else(|e| panic!("{e}"))
}

fn grade(grader: &CompiledGrader, sample: &str, reference: &str) -> RunGraderResponse {
    grader.grade(
        &Sample::from_text(sample),
        &json!({ "reference": reference }),
    )
}

fn expected(a: &str, b: &str) -> f64 {
    let (a, b) = (letters(a), letters(b));
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
    dot / (norm(&a) * norm(&b))
}

#[test]
fn remote_embedder_sends_an_openai_request_and_reorders_by_index() {
    let server = FixtureServer::embedding();
    let embedder = RemoteEmbedder::new(server.config());
    let vectors = embedder
        .embed(&["apple banana", "cherry", "apple"])
        .unwrap();
    assert_eq!(
        vectors,
        vec![letters("apple banana"), letters("cherry"), letters("apple")]
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/embeddings");
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer test-key")
    );
    assert_eq!(
        requests[0].body,
        json!({"model": "fixture-embedder", "input": ["apple banana", "cherry", "apple"],
               "encoding_format": "float"})
    );
    assert_eq!(embedder.name(), "fixture-embedder");
}

#[test]
fn cosine_grader_scores_the_cosine_of_the_two_embeddings() {
    let server = FixtureServer::embedding();
    let grader = compile(cosine_grader(), &server.context());
    for (sample, reference) in [
        ("apple banana cherry", "apple banana cherry"),
        ("apple banana", "banana cherry date"),
        ("apple", "zebra"),
        ("Apple apple avocado", "almond"),
    ] {
        let result = grade(&grader, sample, reference);
        assert!(
            !result.metadata.errors.any(),
            "{:?}",
            result.metadata.errors
        );
        let want = expected(sample, reference);
        assert!(
            (result.reward - want).abs() < 1e-12,
            "{sample:?} vs {reference:?}: {} != {want}",
            result.reward
        );
        assert_eq!(result.metadata.kind, "text_similarity");
    }
    // One request per sample, with the rendered input first and the reference second.
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(
        requests[1].body["input"],
        json!(["apple banana", "banana cherry date"])
    );
}

#[test]
fn empty_text_scores_zero_without_a_call() {
    let server = FixtureServer::embedding();
    let grader = compile(cosine_grader(), &server.context());
    for (sample, reference) in [("", "apple"), ("apple", ""), ("  \n", "apple")] {
        let result = grade(&grader, sample, reference);
        assert_eq!(result.reward, 0.0);
        assert!(!result.metadata.errors.any());
    }
    assert!(server.requests().is_empty());
}

#[test]
fn missing_template_variable_is_invalid_variable_not_a_call() {
    let server = FixtureServer::embedding();
    let grader = compile(cosine_grader(), &server.context());
    let result = grader.grade(&Sample::from_text("apple"), &json!({}));
    assert!(result.metadata.errors.invalid_variable_error);
    assert!(server.requests().is_empty());
}

#[test]
fn transient_failures_are_retried() {
    let server = FixtureServer::start(|n, body| match n {
        0 => (503, r#"{"error": {"message": "overloaded"}}"#.to_owned()),
        1 => (429, r#"{"error": {"message": "slow down"}}"#.to_owned()),
        _ => (200, embeddings_response(body)),
    });
    let grader = compile(cosine_grader(), &server.context());
    let result = grade(&grader, "apple banana", "apple");
    assert!(
        !result.metadata.errors.any(),
        "{:?}",
        result.metadata.errors
    );
    assert!((result.reward - expected("apple banana", "apple")).abs() < 1e-12);
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn endpoint_errors_are_other_error_with_reward_zero() {
    // A client error is not retried; a server error is, up to max_retries.
    let refusing = FixtureServer::start(|_, _| {
        (
            400,
            r#"{"error": {"message": "'$.input' is invalid"}}"#.to_owned(),
        )
    });
    let failing = FixtureServer::start(|_, _| (500, "{}".to_owned()));
    let wrong_count = FixtureServer::start(|_, _| {
        (
            200,
            json!({"data": [{"index": 0, "embedding": [1.0, 0.0]}]}).to_string(),
        )
    });
    let not_json = FixtureServer::start(|_, _| (200, "<html>".to_owned()));
    for (server, attempts) in [
        (&refusing, 1),
        (&failing, 3),
        (&wrong_count, 1),
        (&not_json, 1),
    ] {
        let grader = compile(cosine_grader(), &server.context());
        let result = grade(&grader, "apple", "apple");
        assert_eq!(result.reward, 0.0);
        assert!(
            result.metadata.errors.other_error,
            "{:?}",
            result.metadata.errors
        );
        assert_eq!(server.requests().len(), attempts);
    }
    let err = RemoteEmbedder::new(refusing.config())
        .embed(&["x"])
        .unwrap_err();
    assert!(
        matches!(err, EmbedError::Status { status: 400, .. })
            && err.to_string().contains("invalid"),
        "{err}"
    );
}

#[test]
fn unreachable_endpoint_is_other_error() {
    // Bind and drop a listener: nothing accepts on that port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = EmbeddingsConfig::new(&format!("http://{addr}/v1"));
    config.max_retries = 1;
    config.initial_backoff = Duration::from_millis(5);
    let grader = compile(
        cosine_grader(),
        &context_with(Arc::new(RemoteEmbedder::new(config))),
    );
    let result = grade(&grader, "apple", "apple");
    assert_eq!(result.reward, 0.0);
    assert!(result.metadata.errors.other_error);
}

#[test]
fn misconfigured_endpoint_fails_to_compile() {
    let grader = Grader::from_value(&cosine_grader()).unwrap();
    for (url, key) in [
        ("localhost:8000/v1", Some("k")),
        ("https://api.openai.com/v1", None),
    ] {
        let mut config = EmbeddingsConfig::new(url);
        config.api_key = key.map(str::to_owned);
        let context = context_with(Arc::new(RemoteEmbedder::new(config)));
        let err = compile_with(&grader, &context).unwrap_err();
        assert!(matches!(err, GradeError::Embedder { .. }), "{err}");
        assert!(err.to_string().starts_with("grader: "), "{err}");
    }
}

#[test]
fn cosine_inside_a_multi_grader() {
    let server = FixtureServer::embedding();
    let spec = json!({
        "type": "multi", "name": "combined",
        "graders": {
            "meaning": cosine_grader(),
            "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                      "reference": "{{item.reference}}", "operation": "eq"}
        },
        "calculate_output": "0.5 * meaning + 0.5 * exact"
    });
    let grader = compile(spec, &server.context());
    let result = grade(&grader, "apple banana", "apple cherry");
    let meaning = expected("apple banana", "apple cherry");
    assert!((result.sub_rewards["meaning"] - meaning).abs() < 1e-12);
    assert!((result.reward - 0.5 * meaning).abs() < 1e-12);

    let path_err = compile_with(
        &Grader::from_value(&json!({
            "type": "multi", "name": "m", "graders": {"sim": cosine_grader()},
            "calculate_output": "sim"
        }))
        .unwrap(),
        &GraderContext {
            embedder: None,
            ..GraderContext::shared()
        },
    )
    .unwrap_err();
    assert!(
        path_err.to_string().starts_with("graders.sim: "),
        "{path_err}"
    );
}

#[test]
fn grade_all_embeds_every_sample() {
    let server = FixtureServer::embedding();
    let grader = compile(cosine_grader(), &server.context());
    let samples = [
        "apple",
        "apple banana",
        "cherry date",
        "banana",
        "egg fig grape",
    ];
    let requests: Vec<GradeRequest> = samples
        .iter()
        .map(|s| GradeRequest {
            sample: Sample::from_text(s),
            item: json!({"reference": "apple banana cherry"}),
        })
        .collect();
    let results = grader.grade_all(&requests);
    for (sample, result) in samples.iter().zip(&results) {
        let want = expected(sample, "apple banana cherry");
        assert!((result.reward - want).abs() < 1e-12, "{sample}");
    }
    assert_eq!(server.requests().len(), samples.len());
}

/// An in-process embedder that returns whatever it was built with.
#[derive(Debug)]
struct Canned(Result<Vec<Vec<f32>>, EmbedError>);

impl Embedder for Canned {
    fn embed(&self, _texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.0.clone()
    }
    fn name(&self) -> &str {
        "canned"
    }
}

#[test]
fn unusable_vectors_are_other_error() {
    let model_error = EmbedError::Model {
        model: "canned".to_owned(),
        message: "tensor shape mismatch".to_owned(),
    };
    for answer in [
        Ok(vec![vec![1.0, 0.0], vec![1.0]]),
        Ok(vec![vec![1.0, 0.0]]),
        Ok(vec![vec![], vec![]]),
        Ok(vec![vec![f32::NAN, 0.0], vec![1.0, 0.0]]),
        Err(model_error),
    ] {
        let grader = compile(cosine_grader(), &context_with(Arc::new(Canned(answer))));
        let result = grade(&grader, "a", "b");
        assert_eq!(result.reward, 0.0);
        assert!(result.metadata.errors.other_error);
    }
    // Opposite vectors score -1, as util.cos_sim gives: the metric is not clipped.
    let grader = compile(
        cosine_grader(),
        &context_with(Arc::new(Canned(Ok(vec![vec![1.0, 2.0], vec![-2.0, -4.0]])))),
    );
    assert!((grade(&grader, "a", "b").reward + 1.0).abs() < 1e-12);
    assert_eq!(
        cosine_similarity(&[3.0, 4.0], &[4.0, 3.0]),
        Some(24.0 / 25.0)
    );
}
