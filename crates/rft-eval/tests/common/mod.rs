//! Test fixtures: an OpenAI-compatible chat-completions server on 127.0.0.1 (a fake policy
//! model or a fake judge), and helpers to write datasets and graders.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rft_grade::python::{PythonConfig, PythonRuntime};
use rft_grade::{GraderContext, JudgeClient, JudgeConfig};
use serde_json::{json, Value};

type Handler = dyn Fn(&Value) -> String + Send + Sync;

/// Serves `POST /v1/chat/completions`, answering each request with `handler(body)` as the
/// assistant's content; one request per connection, each on its own thread.
pub struct ChatServer {
    addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Value>>>,
    pub calls: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ChatServer {
    pub fn start(handler: impl Fn(&Value) -> String + Send + Sync + 'static) -> ChatServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept = {
            let (requests, calls, stop) = (requests.clone(), calls.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, calls, handler) =
                        (requests.clone(), calls.clone(), handler.clone());
                    std::thread::spawn(move || serve(stream, &requests, &calls, &*handler));
                }
            })
        };
        ChatServer {
            addr,
            requests,
            calls,
            stop,
            accept: Some(accept),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A grader context whose judge is this server.
    pub fn judge_context(&self) -> GraderContext {
        let mut context = GraderContext::shared();
        context.judge = JudgeClient::new(JudgeConfig {
            base_url: self.base_url(),
            api_key: Some("test".into()),
            timeout: Duration::from_secs(20),
            max_retries: 1,
            initial_backoff: Duration::from_millis(10),
            ..JudgeConfig::default()
        });
        context
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(stream: TcpStream, requests: &Mutex<Vec<Value>>, calls: &AtomicUsize, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path_ok = line.split_whitespace().nth(1) == Some("/v1/chat/completions");
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    calls.fetch_add(1, Ordering::SeqCst);
    requests.lock().unwrap().push(body.clone());
    let (status, reply) = if path_ok {
        let content = handler(&body);
        (
            200,
            json!({
                "id": "chatcmpl-fixture", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }),
        )
    } else {
        (
            404,
            json!({"error": {"message": "not found", "type": "invalid_request_error"}}),
        )
    };
    let text = reply.to_string();
    let response = format!(
        "HTTP/1.1 {status} Fixture\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let mut stream = &stream;
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// The text of the judged sample inside a score_model request built from
/// [`judge_grader`]'s template (`Answer: <<<...>>>`).
pub fn judged_answer(body: &Value) -> String {
    let text = body["messages"].to_string();
    let start = text.find("<<<").map_or(0, |i| i + 3);
    let end = text[start..].find(">>>").map_or(text.len(), |i| start + i);
    text[start..end].to_owned()
}

/// A score_model grader whose judge sees the sample between `<<<` and `>>>`.
pub fn judge_grader() -> rft_types::Grader {
    rft_types::Grader::from_value(&json!({
        "type": "score_model", "name": "judge", "model": "fixture-judge",
        "input": [{"role": "user", "content": "Question: {{ item.question }}\nAnswer: <<<{{ sample.output_text }}>>>"}],
        "range": [0, 1]
    }))
    .unwrap()
}

/// A judge answer with the given score.
pub fn judge_reply(score: f64) -> String {
    json!({"steps": [{"description": "read", "conclusion": "scored"}], "result": score}).to_string()
}

pub fn write_lines(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

pub fn exact_grader(field: &str) -> rft_types::Grader {
    rft_types::Grader::from_value(&json!({
        "type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
        "reference": format!("{{{{ item.{field} }}}}"), "operation": "eq"
    }))
    .unwrap()
}

/// A grader context whose Python graders run on `$RFT_PYTHON` (or `python3`) with one worker.
pub fn python_context() -> GraderContext {
    let mut config = PythonConfig::from_env();
    config.interpreter = Some(
        std::env::var_os("RFT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3")),
    );
    config.workers = 1;
    GraderContext {
        python: PythonRuntime::new(config),
        ..GraderContext::shared()
    }
}
