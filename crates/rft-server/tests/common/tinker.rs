//! The Tinker API's test client: a server on a tiny random model, JSON and raw protobuf calls
//! with a key, and future polling.

use std::path::Path;
use std::time::{Duration, Instant};

use rft_model::Architecture;
use serde_json::{json, Value};

use super::jobs::tiny_model;
use super::Server;

pub(crate) const KEY: &str = "tml-test-key";

pub(crate) struct Api {
    pub(crate) server: Server,
    pub(crate) root: String,
}

impl Api {
    pub(crate) fn start(dir: &Path) -> Api {
        Api::start_with(dir, &[KEY], |_| {})
    }

    /// A server with these keys (the first is the client's) and settings.
    pub(crate) fn start_with(
        dir: &Path,
        keys: &[&str],
        adjust: impl FnOnce(&mut rft_server::ServerConfig),
    ) -> Api {
        tiny_model(dir, Architecture::Llama, 3);
        let server = Server::start_with(&dir.join("data"), keys, adjust);
        let root = server.root();
        Api { server, root }
    }

    pub(crate) fn model(dir: &Path) -> String {
        dir.join("model").to_str().unwrap().to_owned()
    }

    pub(crate) fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_as(self.server.key.as_deref(), path, body)
    }

    /// A JSON call with another key (or none).
    pub(crate) fn post_as(&self, key: Option<&str>, path: &str, body: Value) -> (u16, Value) {
        let mut request = self
            .server
            .agent
            .post(format!("{}/api/v1{path}", self.root));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        let mut response = request
            .header("Content-Type", "application/json")
            // A fresh connection per call: under a parallel test load a reused keep-alive
            // connection was occasionally closed under the client ("Peer disconnected").
            .header("Connection", "close")
            .send(body.to_string())
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) fn raw(&self, path: &str, encoding: Option<&str>, body: Vec<u8>) -> u16 {
        let mut request = self
            .server
            .agent
            .post(format!("{}/api/v1{path}", self.root))
            .header("Content-Type", "application/x-protobuf");
        if let Some(key) = &self.server.key {
            request = request.header("X-API-Key", key);
        }
        if let Some(e) = encoding {
            request = request.header("Content-Encoding", e);
        }
        request.send(&body[..]).unwrap().status().as_u16()
    }

    /// Polls a future to its end: `(content type, body bytes)`.
    pub(crate) fn result(&self, request_id: &str) -> (String, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut request = self
                .server
                .agent
                .post(format!("{}/api/v1/retrieve_future", self.root))
                .header("Content-Type", "application/json");
            if let Some(key) = &self.server.key {
                request = request.header("X-API-Key", key);
            }
            let mut response = request
                .send(json!({"request_id": request_id}).to_string())
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let kind = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = response.body_mut().read_to_vec().unwrap();
            let pending = kind.contains("json")
                && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["type"] == "try_again");
            if !pending {
                return (kind, body);
            }
            assert!(Instant::now() < deadline, "the future never finished");
        }
    }

    pub(crate) fn json_result(&self, request_id: &str) -> Value {
        let (_, body) = self.result(request_id);
        serde_json::from_slice(&body).unwrap()
    }

    pub(crate) fn session(&self) -> String {
        let (status, body) = self.post(
            "/create_session",
            json!({"tags": [], "user_metadata": null, "sdk_version": "test"}),
        );
        assert_eq!(status, 200, "{body}");
        body["session_id"].as_str().unwrap().to_owned()
    }

    pub(crate) fn create_model(&self, session: &str, seq: u32, model: &str) -> (u16, Value) {
        self.post(
            "/create_model",
            json!({"session_id": session, "model_seq_id": seq, "base_model": model,
                   "lora_config": {"rank": 2, "seed": 1}}),
        )
    }
}
