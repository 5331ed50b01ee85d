//! What a person at a terminal sees: `rft serve` serves the dashboard at `/` (the shell without
//! a key, its data only with one), and `rft train` draws a progress bar (step, reward, time
//! left) in a terminal while its piped output stays plain event lines.

use std::process::{Command, Stdio};

mod common;
use common::{agent, tiny_job, Serve};

#[test]
fn piped_train_output_is_plain_lines_and_a_terminal_gets_the_bar() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_job(dir.path(), None);
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

#[test]
fn rft_serve_serves_the_dashboard_and_keeps_its_data_behind_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(&dir.path().join("data"), "k3y");
    let root = server.root();
    let agent = agent();
    let mut page = agent.get(format!("{root}/")).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("script-src 'self'")));
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains("OpenRFT dashboard"), "{html}");
    let mut script = agent
        .get(format!("{root}/dashboard/app.js"))
        .call()
        .unwrap();
    assert_eq!(script.status().as_u16(), 200);
    assert!(script
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("rftDashboard"));
    let data = format!("{root}/dashboard/api/jobs/ftjob-x/samples");
    assert_eq!(agent.get(&data).call().unwrap().status().as_u16(), 401);
    let with_key = agent
        .get(&data)
        .header("Authorization", "Bearer k3y")
        .call()
        .unwrap();
    assert_eq!(with_key.status().as_u16(), 404, "no such job");
}
