//! The test server: `rft serve`'s router on a loopback port in a thread of its own, and a
//! client that returns `(status, JSON body)` for every call. Beside it: the tiny job fixture
//! (`jobs`), requests below the client (`http`), the headless Chromium client of the dashboard
//! tests (`devtools`) and the Tinker API's client (`tinker`).

#![allow(dead_code)]

pub(crate) mod devtools;
pub(crate) mod http;
pub(crate) mod jobs;
pub(crate) mod tinker;

use std::path::Path;
use std::time::{Duration, Instant};

use rft_server::{serve_on, ServerConfig};
use serde_json::Value;

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) key: Option<String>,
    pub(crate) agent: ureq::Agent,
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(data: &Path, keys: &[&str]) -> Server {
        Server::start_with(data, keys, |_| {})
    }

    pub(crate) fn start_with(
        data: &Path,
        keys: &[&str],
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let mut config = ServerConfig::new(data.to_path_buf());
        config.api_keys = keys.iter().map(|k| k.to_string()).collect();
        // The tests' tiny models live in their temporary folders: serve those.
        config.models = vec![data
            .parent()
            .unwrap()
            .join("model")
            .to_str()
            .unwrap()
            .to_owned()];
        adjust(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                serve_on(config, listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Server {
            base,
            key: keys.first().map(|k| k.to_string()),
            agent,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub(crate) fn auth(&self) -> Option<String> {
        self.key.as_ref().map(|k| format!("Bearer {k}"))
    }

    /// `http://127.0.0.1:PORT`: the base without `/v1`, where the dashboard, `/openapi.json`
    /// and the Tinker API live.
    pub(crate) fn root(&self) -> String {
        self.base.trim_end_matches("/v1").to_owned()
    }

    /// `127.0.0.1:PORT`, for a raw connection.
    pub(crate) fn address(&self) -> String {
        self.base
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .to_owned()
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            request = request.header("Authorization", a);
        }
        let mut response = request.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, json_or_text(text))
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.post_text(path, body);
        (status, json_or_text(text))
    }

    /// A POST outside `/v1`, with the server's key.
    pub(crate) fn post_root(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.send(format!("{}{path}", self.root()), body);
        (status, json_or_text(text))
    }

    /// A POST whose answer is read as text (a stream of server-sent events, say).
    pub(crate) fn post_text(&self, path: &str, body: &Value) -> (u16, String) {
        self.send(format!("{}{path}", self.base), body)
    }

    fn send(&self, url: String, body: &Value) -> (u16, String) {
        let mut request = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(a) = self.auth() {
            request = request.header("Authorization", a);
        }
        let mut response = request.send(body.to_string()).unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, text)
    }

    pub(crate) fn upload(&self, name: &str, content: &str, purpose: &str) -> (u16, Value) {
        let boundary = "openrft-test-boundary";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
        );
        let mut request = self.agent.post(format!("{}/files", self.base)).header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        );
        if let Some(a) = self.auth() {
            request = request.header("Authorization", a);
        }
        let mut response = request.send(body).unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap())
    }

    pub(crate) fn wait_for(&self, job: &str, statuses: &[&str], limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (_, body) = self.get(&format!("/fine_tuning/jobs/{job}"));
            if statuses.contains(&body["status"].as_str().unwrap_or_default()) {
                return body;
            }
            assert!(
                start.elapsed() < limit,
                "job {job} still {} after {limit:?}",
                body["status"]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until one of the job's latest `page` events says something starting with
    /// `prefix`; `what` is the failure's message after `limit`.
    pub(crate) fn wait_for_event(
        &self,
        job: &str,
        prefix: &str,
        page: usize,
        limit: Duration,
        what: &str,
    ) {
        let start = Instant::now();
        loop {
            let (_, events) = self.get(&format!("/fine_tuning/jobs/{job}/events?limit={page}"));
            if events["data"].as_array().unwrap().iter().any(|e| {
                e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(prefix)
            }) {
                return;
            }
            assert!(start.elapsed() < limit, "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A body as JSON, or as a JSON string when it is not JSON.
fn json_or_text(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
