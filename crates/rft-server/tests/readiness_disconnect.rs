//! The dashboard's readiness report runs one at a time, and a client cannot get past that by
//! disconnecting: the permit is held by the work, not by the request, and a disconnect cancels
//! the work, so the next report starts once the first has stopped, soon after.

mod common;

use std::time::{Duration, Instant};

use common::jobs::tiny_model;
use common::Server;
use rft_model::Architecture;
use serde_json::{json, Value};

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<(u16, Value), ureq::Error> {
    let mut response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

#[test]
fn a_disconnected_readiness_report_keeps_its_permit_until_it_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Llama, 3)
        .to_str()
        .unwrap()
        .to_owned();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let root = server.root();
    let rows: String = (0..200)
        .map(|i| {
            format!(
                "{{\"messages\": [{{\"role\": \"user\", \"content\": \"Say {i}\"}}], \"answer\": \"{i}\"}}\n"
            )
        })
        .collect();
    let (status, file) = server.upload("prompts.jsonl", &rows, "fine-tune");
    assert_eq!(status, 200, "{file}");
    let grader = json!({"type": "string_check", "name": "g", "operation": "eq",
                        "input": "{{sample.output_text}}", "reference": "{{item.answer}}"});
    let url = format!("{root}/dashboard/api/readiness");
    // A long report: every row, eight samples of up to 400 tokens each.
    let long = json!({"file_id": file["id"], "grader": grader, "model": model,
                      "samples": 8, "limit": 200, "max_tokens": 400});
    let impatient: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(500)))
        .build()
        .into();
    assert!(
        post(&impatient, &url, &long).is_err(),
        "the long report finished within half a second"
    );
    // The client is gone, but its report still holds the one permit.
    let short = json!({"file_id": file["id"], "grader": grader, "model": model,
                       "samples": 1, "limit": 1, "max_tokens": 1});
    let (status, body) = post(&server.agent, &url, &short).unwrap();
    assert_eq!(status, 429, "{body}");
    // Cancelled by the disconnect, it stops well before it would have finished.
    let started = Instant::now();
    loop {
        let (status, body) = post(&server.agent, &url, &short).unwrap();
        if status == 200 {
            assert_eq!(body["checks"].as_array().map(Vec::len), Some(8), "{body}");
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the abandoned report never stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = server.get("/models");
    assert_eq!(status, 200);
}
