//! What a person at a terminal sees: `rft serve` serves the dashboard at `/` (the shell without
//! a key, its data only with one), and `rft train` draws a progress bar (step, reward, time
//! left) in a terminal while its piped output stays plain event lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

/// A tiny job `rft train` runs in a few seconds: 4 steps, validation every 2.
fn job(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, rft_model::Architecture::Llama, 2).unwrap();
    let rows: String = (0..8)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": format!("Say x {i}")}], "answer": "x"})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("train.jsonl"), &rows).unwrap();
    std::fs::write(
        dir.join("valid.jsonl"),
        &rows[..rows.find('\n').unwrap() + 1],
    )
    .unwrap();
    let path = dir.join("job.json");
    std::fs::write(
        &path,
        json!({
            "model": model.to_str().unwrap(),
            "training_file": "train.jsonl",
            "validation_file": "valid.jsonl",
            "method": {"type": "reinforcement", "reinforcement": {
                "grader": {"type": "string_check", "name": "x", "operation": "like",
                           "input": "{{sample.output_text}}", "reference": "{{item.answer}}"},
                "hyperparameters": {"batch_size": 2, "eval_interval": 2, "eval_samples": 2,
                                    "max_completion_tokens": 4, "compute_multiplier": 0.5}
            }}
        })
        .to_string(),
    )
    .unwrap();
    path
}

#[test]
fn piped_train_output_is_plain_lines_and_a_terminal_gets_the_bar() {
    let dir = tempfile::tempdir().unwrap();
    let config = job(dir.path());
    let bin = env!("CARGO_BIN_EXE_rft");
    let piped = Command::new(bin)
        .args(["train", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(dir.path().join("piped"))
        .env_remove("RFT_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{stderr}");
    assert!(
        stderr.contains("Step 4/4"),
        "the events still print: {stderr}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "control characters in piped output: {stderr:?}"
    );
    assert!(
        !stderr.contains(" left)"),
        "a bar in piped output: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&piped.stdout);
    assert!(stdout.contains("fine-tuned model:"), "{stdout}");
    // The samples the dashboard shows were recorded along the way.
    let samples = dir.path().join("piped/samples");
    assert!(samples.join("step-000004.json").is_file());
    assert!(samples.join("valid-first.json").is_file());
    assert!(samples.join("valid-latest.json").is_file());

    // In a terminal (a pseudo-terminal from util-linux's `script`), the bar is drawn.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping the terminal half: `script` (util-linux) is not installed");
        return;
    }
    let log = dir.path().join("tty.log");
    let command = format!(
        "'{bin}' train --config '{}' --output '{}'",
        config.display(),
        dir.path().join("tty").display()
    );
    let tty = Command::new("script")
        .args(["-q", "-e", "-c", &command])
        .arg(&log)
        .env("TERM", "xterm-256color")
        .env_remove("RFT_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let seen =
        std::fs::read_to_string(&log).unwrap_or_default() + &String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{seen}");
    assert!(seen.contains("Step 4/4"), "{seen}");
    assert!(
        seen.contains("step ") && seen.contains(" left)") && seen.contains("reward "),
        "no progress bar in a terminal: {seen:?}"
    );
}

struct Serve {
    child: Child,
    root: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, key: &str) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(["serve", "--port", "0", "--data"])
        .arg(data)
        .env("RFT_API_KEYS", key)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("rft serve exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Serve {
        child,
        root: base.trim_end_matches("/v1").to_owned(),
    }
}

#[test]
fn rft_serve_serves_the_dashboard_and_keeps_its_data_behind_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"), "k3y");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut page = agent.get(format!("{}/", server.root)).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("script-src 'self'")));
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains("OpenRFT dashboard"), "{html}");
    let mut script = agent
        .get(format!("{}/dashboard/app.js", server.root))
        .call()
        .unwrap();
    assert_eq!(script.status().as_u16(), 200);
    assert!(script
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("rftDashboard"));
    let data = format!("{}/dashboard/api/jobs/ftjob-x/samples", server.root);
    assert_eq!(agent.get(&data).call().unwrap().status().as_u16(), 401);
    let with_key = agent
        .get(&data)
        .header("Authorization", "Bearer k3y")
        .call()
        .unwrap();
    assert_eq!(with_key.status().as_u16(), 404, "no such job");
}
