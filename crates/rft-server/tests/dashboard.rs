//! The dashboard at `/`, driven in headless Chromium through a real server running a tiny job:
//! the job appears, its reward curve gains points as steps finish, a sample group shows its
//! rewards and hostile dataset text renders as text, pause and resume work from the page's
//! buttons, and a 1,000-step job's events render with every update under 100 ms. Also, without
//! a browser: the shell's security headers, and that the data routes keep the API's auth.
//!
//! Chromium is driven over the DevTools protocol (a WebSocket on a loopback port, spoken by the
//! small client in `common/devtools.rs`): `Runtime.evaluate` clicks buttons and reads the DOM.
//! Without Chromium the browser tests say they skipped, unless `RFT_REQUIRE_CHROMIUM` is set
//! (CI sets it).

use std::path::Path;
use std::time::Duration;

use rft_model::Architecture;
use rft_types::api::event::JobEvent;
use rft_types::api::job::FineTuningJob;
use serde_json::{json, Value};

mod common;
use common::devtools::browser_or_skip;
use common::http::{header, raw_get};
use common::jobs::{has_x, rows, tiny_model, upload_train_valid};
use common::Server;

// -------------------------------------------------------------------------------------------
// Data.

/// Rows whose prompts try to become markup: the page must show them as text.
fn hostile_dataset(count: usize) -> String {
    rows(count, |i| {
        format!(
            "<script>window.__pwned = 'script'</script><img src=x onerror=\"window.__pwned = 'img'\"> Say x {i}"
        )
    })
}

fn grader() -> Value {
    json!({"type": "multi", "name": "combined",
           "graders": {
               "has_x": has_x(),
               "exact": {"type": "string_check", "name": "exact", "operation": "eq",
                         "input": "{{sample.output_text}}", "reference": "{{item.target}}"}},
           "calculate_output": "0.5 * has_x + 0.5 * exact"})
}

// -------------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_shell_is_public_and_strict_and_the_data_keeps_the_apis_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &["sekret"]);
    let root = server.root();

    // The shell and its assets need no key (a browser cannot send one with a page load) and
    // carry a policy that allows no inline script and nothing from elsewhere.
    let (status, html, headers) = raw_get(&format!("{root}/"), &[]);
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("/dashboard/app.js") && !html.contains("http"),
        "{html}"
    );
    let csp = header(&headers, "content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    let (status, js, headers) = raw_get(&format!("{root}/dashboard/app.js"), &[]);
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type")
        .unwrap()
        .contains("javascript"));
    assert!(
        !js.contains("innerHTML"),
        "the script renders data as text only"
    );
    // The SVG namespace is a name, not a load.
    let js = js.replace("'http://www.w3.org/2000/svg'", "");
    assert!(
        !js.contains("http://") && !js.contains("https://"),
        "nothing from elsewhere"
    );
    let (status, _, _) = raw_get(&format!("{root}/dashboard/app.css"), &[]);
    assert_eq!(status, 200);

    // Data is behind the key, as the API is.
    for path in [
        "/dashboard/api/jobs/ftjob-x/samples",
        "/dashboard/api/jobs/ftjob-x/validation",
        "/v1/fine_tuning/jobs",
    ] {
        let (status, body, _) = raw_get(&format!("{root}{path}"), &[]);
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body, _) = raw_get(
            &format!("{root}{path}"),
            &[("Authorization", "Bearer wrong")],
        );
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, body, _) = raw_get(
        &format!("{root}/dashboard/api/jobs/ftjob-x/samples"),
        &[("Authorization", "Bearer sekret")],
    );
    assert_eq!(status, 404, "{body}");
    let (status, body, _) = raw_get(
        &format!("{root}/dashboard/api/jobs/..%2F..%2Fetc/samples/1"),
        &[("Authorization", "Bearer sekret")],
    );
    assert_eq!(
        status, 404,
        "an id that names no job never becomes a path: {body}"
    );

    // The readiness report's limits.
    let (_, file) = server.upload(
        "given.jsonl",
        "{\"item\": {\"a\": \"x\"}, \"sample\": {\"output_text\": \"x\"}}\n",
        "evals",
    );
    let grader = json!({"type": "string_check", "name": "g", "operation": "eq",
                        "input": "{{sample.output_text}}", "reference": "{{item.a}}"});
    for (key, value) in [
        ("samples", 9),
        ("limit", 201),
        ("max_tokens", 1025),
        ("samples", 0),
    ] {
        let mut body = json!({"file_id": file["id"], "grader": grader});
        body[key] = json!(value);
        let (status, reply) = server.post_root("/dashboard/api/readiness", &body);
        assert_eq!(status, 400, "{key}={value}: {reply}");
        assert_eq!(reply["error"]["param"], key, "{reply}");
    }
    let (status, reply) = server.post_root(
        "/dashboard/api/readiness",
        &json!({"file_id": file["id"], "grader": grader, "samples": 2}),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["checks"].as_array().unwrap().len(), 8, "{reply}");
    assert_eq!(reply["dataset"], "given.jsonl", "no server path: {reply}");
    drop(server);

    // Without keys, the shell is under the API's host checks.
    let open = Server::start(&tmp.path().join("open"), &[]);
    let open_root = open.root();
    let (status, _, _) = raw_get(&format!("{open_root}/"), &[]);
    assert_eq!(status, 200);
    let (status, body, _) = raw_get(&format!("{open_root}/"), &[("Host", "evil.example")]);
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = raw_get(
        &format!("{open_root}/dashboard/app.js"),
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(status, 403, "{body}");
}

#[test]
fn a_job_is_watched_sampled_paused_and_resumed_from_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Qwen2, 5);
    let server = Server::start(&tmp.path().join("data"), &["sekret"]);
    let Some(mut browser) = browser_or_skip(tmp.path()) else {
        return;
    };
    let (train, valid) = upload_train_valid(&server, &hostile_dataset(8), &hostile_dataset(2));
    // Many short steps: the page must see the job running, pause it, and resume it.
    let body = json!({
        "model": model.to_str().unwrap(),
        "training_file": train["id"],
        "validation_file": valid["id"],
        "seed": 3,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": grader(),
            "hyperparameters": {"batch_size": 2, "n_epochs": 50, "compute_multiplier": 0.5,
                                "eval_interval": 5, "eval_samples": 1, "lora_rank": 4,
                                "max_completion_tokens": 4},
        }}
    });
    let (status, job) = server.post("/fine_tuning/jobs", &body);
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let root = server.root();

    // The page asks for the key; with it, the job appears in the list.
    browser.goto(&format!("{root}/#/jobs"));
    browser.wait_until(
        "document.getElementById('notice').textContent.includes('API key')",
        30,
    );
    browser.eval(
        "document.getElementById('api-key').value = 'sekret'; \
         document.getElementById('key-form').requestSubmit(); true",
    );
    browser.wait_until(
        &format!("document.querySelector('tr.job-row[data-id=\"{id}\"]')"),
        30,
    );
    browser.eval(&format!(
        "document.querySelector('tr.job-row[data-id=\"{id}\"] a').click(); true"
    ));

    // Its reward curve gains points as steps finish.
    let points = "Number(document.getElementById('chart-reward').dataset.points)";
    browser.wait_until(&format!("{points} >= 2"), 300);
    let early = browser.number(points);
    browser.wait_until(&format!("{points} > {early}"), 300);

    // A sample group shows its completions with each one's reward and grader scores, and the
    // hostile prompt is text.
    browser.wait_until("document.querySelector('.sample-group td.reward')", 60);
    let group = browser.eval(
        "(() => { const g = document.querySelector('.sample-group'); return {
            rewards: [...g.querySelectorAll('td.reward')].map(td => td.textContent),
            heads: [...g.querySelectorAll('th')].map(th => th.textContent),
            prompt: g.querySelector('.prompt-text').textContent,
            images: document.querySelectorAll('#main img').length,
            scripts: document.querySelectorAll('#main script').length,
            pwned: window.__pwned || null }; })()",
    );
    let rewards = group["rewards"].as_array().unwrap();
    assert!(!rewards.is_empty(), "{group}");
    for reward in rewards {
        let value: f64 = reward.as_str().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&value), "{group}");
    }
    let heads = group["heads"].to_string();
    assert!(
        heads.contains("has_x") && heads.contains("exact"),
        "{group}"
    );
    assert!(
        group["prompt"]
            .as_str()
            .unwrap()
            .contains("<script>window.__pwned"),
        "{group}"
    );
    assert!(group["prompt"]
        .as_str()
        .unwrap()
        .contains("<img src=x onerror="));
    assert_eq!(group["images"], 0, "{group}");
    assert_eq!(group["scripts"], 0, "{group}");
    assert_eq!(group["pwned"], Value::Null, "{group}");
    // Sorting by reward orders the rows.
    browser.eval("document.querySelector('.sample-group th[data-sort=\"reward\"]').click(); true");
    let sorted = browser.eval(
        "[...document.querySelector('.sample-group').querySelectorAll('td.reward')].map(td => Number(td.textContent))",
    );
    let sorted: Vec<f64> = sorted
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(sorted.windows(2).all(|w| w[0] >= w[1]), "{sorted:?}");

    // Pause from the page: the job pauses, and the curve stops growing.
    browser.wait_until("!document.getElementById('pause').disabled", 30);
    browser.eval("document.getElementById('pause').click(); true");
    browser.wait_until(
        "document.getElementById('job-status').textContent === 'paused'",
        60,
    );
    let paused = server.wait_for(&id, &["paused"], Duration::from_secs(5));
    assert_eq!(paused["status"], "paused");
    // The trainer stops at its step boundary; once its "Paused after step" event is in, no
    // more points come.
    server.wait_for_event(
        &id,
        "Paused after step",
        5,
        Duration::from_secs(120),
        "the trainer did not stop",
    );
    std::thread::sleep(Duration::from_millis(2500));
    let at_pause = browser.number(points);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(browser.number(points), at_pause, "points came while paused");
    assert!(browser.eval("document.getElementById('pause').disabled") == Value::Bool(true));

    // Resume from the page: the job runs again and the curve grows again.
    browser.eval("document.getElementById('resume').click(); true");
    browser.wait_until(&format!("{points} > {at_pause}"), 300);
    let status = browser.eval("document.getElementById('job-status').textContent");
    assert!(
        ["queued", "running", "succeeded"].contains(&status.as_str().unwrap()),
        "{status}"
    );

    // Cancel from the page ends it.
    browser.wait_until("!document.getElementById('cancel').disabled", 30);
    browser.eval("document.getElementById('cancel').click(); true");
    browser.wait_until(
        "['cancelled', 'succeeded'].includes(document.getElementById('job-status').textContent)",
        60,
    );
    // Checkpoints show with their validation reward.
    browser.wait_until(
        "document.querySelector('tr.checkpoint-row td.valid-reward')",
        30,
    );
    // The validation rows' answers, first pass against the latest, with their rewards.
    browser.wait_until(
        "document.querySelectorAll('tr.validation-row').length === 2",
        30,
    );
    let row = browser.eval(
        "(() => { const r = document.querySelector('tr.validation-row'); return {
            prompt: r.querySelector('.prompt-text').textContent,
            rewards: [...r.querySelectorAll('td.num')].map(td => td.textContent),
            diff: !!r.querySelector('pre.diff') }; })()",
    );
    assert!(
        row["prompt"].as_str().unwrap().contains("<script>"),
        "{row}"
    );
    assert_eq!(row["rewards"].as_array().unwrap().len(), 2, "{row}");
    assert_eq!(row["diff"], true, "{row}");

    // Updates stayed fast, and polls after the first fetched only new events.
    let fetches = browser.eval("window.rftDashboard.fetches");
    let fetches: Vec<u64> = fetches
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let written = rft_store::Store::open(&tmp.path().join("data"))
        .unwrap()
        .event_count(&id)
        .unwrap() as u64;
    assert!(
        fetches.iter().sum::<u64>() <= written,
        "an event was fetched twice: {fetches:?} for {written} events"
    );
    let slowest = browser.number("Math.max(...window.rftDashboard.updates.map(u => u.ms))");
    assert!(slowest < 100.0, "an update took {slowest} ms");
    assert_eq!(browser.eval("window.rftDashboard.uncaught"), json!([]));
    eprintln!(
        "points when first seen {early}, at pause {at_pause}; slowest update {slowest:.1} ms; events fetched per poll {fetches:?}"
    );
}

/// The events of a 1,000-step job, written as the trainer writes them, for a job the store
/// holds as paused (so the page keeps polling it).
fn thousand_step_job(data: &Path) -> String {
    paused_job_with_steps(data, 1000)
}

/// A paused job in the store of `data` whose events are `steps` metrics events.
fn paused_job_with_steps(data: &Path, steps: usize) -> String {
    let id = "ftjob-0123456789abcdef01234567".to_owned();
    let store = rft_store::Store::open(data).unwrap();
    let job: FineTuningJob = serde_json::from_value(json!({
        "id": id, "object": "fine_tuning.job", "created_at": 1_700_000_000, "status": "paused",
        "model": "tiny", "training_file": "file-x", "validation_file": null,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": grader(), "hyperparameters": {}, "response_format": null}},
        "hyperparameters": {}, "seed": 1, "suffix": null, "user_provided_suffix": null,
        "fine_tuned_model": null, "finished_at": null, "error": null,
        "organization_id": "org-openrft", "result_files": [], "trained_tokens": null,
        "estimated_finish": null, "integrations": null, "metadata": null,
        "shared_with_openai": false, "eval_id": null
    }))
    .unwrap();
    store.insert_object("job", None, &job).unwrap();
    drop(store);
    append_metrics(data, &id, 1..=steps, steps);
    id
}

/// Appends metrics events for `steps` to a job's events in the store of `data`, shaped by the
/// trainer's `JobEvent` (parsed and written back through it), as the server's worker writes
/// them.
fn append_metrics(data: &Path, id: &str, steps: std::ops::RangeInclusive<usize>, total: usize) {
    let store = rft_store::Store::open(data).unwrap();
    for step in steps {
        let reward = (step as f64 / total as f64).min(1.0);
        let valid = (step % 10 == 0).then_some(reward * 0.9);
        let event = |seq: i64| -> Value {
            let event: JobEvent = serde_json::from_value(json!({
            "id": format!("ftevent-{}-{seq:06}", id.trim_start_matches("ftjob-")),
            "object": "fine_tuning.job.event", "created_at": 1_700_000_000 + step as i64,
            "level": "info", "message": format!("Step {step}/{total}"), "type": "metrics",
            "data": {
                "step": step, "total_steps": total,
                "scores": {"train_reward_mean": reward, "valid_reward_mean": valid,
                           "graders": [{"name": "has_x", "type": "sub_grader", "train_reward_mean": reward},
                                       {"name": "exact", "type": "sub_grader", "train_reward_mean": reward / 2.0}]},
                "full_valid_mean_reward": valid,
                "errors": {"graders": []},
                "timing": {"step": {"sampling": 0.5, "training": 0.3, "eval": 0.0, "full_iteration": 0.9}},
                "usage": {"samples": {}},
                "train_mean_reward": reward, "completion_tokens_mean": 12.0,
                "completion_tokens_count": 96, "frac_zero_std_groups": 0.1, "refill_groups": 0,
                "frac_truncated": 0.0, "loss": 0.01, "kl": 0.002, "entropy": 1.5,
                "clip_fraction": 0.05, "grad_norm": 0.4, "learning_rate": 1e-4
            }
        }))
        .unwrap();
            serde_json::to_value(&event).unwrap()
        };
        store
            .append_event(id, &format!("step-{step}/metrics"), event)
            .unwrap();
    }
}

#[test]
fn a_thousand_step_job_renders_with_every_update_under_100_ms() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = thousand_step_job(&data);
    let server = Server::start(&data, &[]);
    let Some(mut browser) = browser_or_skip(tmp.path()) else {
        return;
    };
    let root = server.root();
    browser.goto(&format!("{root}/#/jobs/{id}"));
    let points = "Number(document.getElementById('chart-reward').dataset.points)";
    browser.wait_until(&format!("{points} === 1000"), 60);

    // Steps keep arriving: each poll fetches the new events only, and draws them fast.
    for batch in 0..5 {
        let first = 1001 + batch * 4;
        append_metrics(&data, &id, first..=first + 3, 1020);
        browser.wait_until(&format!("{points} === {}", first + 3), 30);
    }
    let updates = browser.eval("window.rftDashboard.updates");
    let updates = updates.as_array().unwrap();
    assert!(updates.len() >= 6, "{updates:?}");
    let slowest = updates
        .iter()
        .map(|u| u["ms"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(slowest < 100.0, "an update took {slowest} ms: {updates:?}");
    let first_load = updates
        .iter()
        .find(|u| u["events"].as_u64().unwrap() >= 1000)
        .expect("the first update drew the 1,000 steps");
    assert!(first_load["ms"].as_f64().unwrap() < 100.0, "{first_load}");
    let fetches = browser.eval("window.rftDashboard.fetches");
    let fetches: Vec<u64> = fetches
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(fetches[0] >= 1000, "{fetches:?}");
    assert!(
        fetches.iter().skip(1).all(|&n| n <= 4),
        "a poll refetched old events: {fetches:?}"
    );
    let written = rft_store::Store::open(&data)
        .unwrap()
        .event_count(&id)
        .unwrap() as u64;
    assert_eq!(fetches.iter().sum::<u64>(), written, "{fetches:?}");
    eprintln!(
        "1,000-step job: first update {first_load}, slowest {slowest:.1} ms over {} updates; events fetched per poll {fetches:?}",
        updates.len()
    );
    assert_eq!(browser.eval("window.rftDashboard.uncaught"), json!([]));
    let summary = browser.eval("document.getElementById('job-step').textContent");
    assert_eq!(
        summary, "1020 / 1020",
        "the summary follows the latest step"
    );
}

#[test]
fn evals_readiness_files_and_graders_pages_render_what_the_api_says() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let Some(mut browser) = browser_or_skip(tmp.path()) else {
        return;
    };
    let root = server.root();
    // Eval rows graded as given: 3 pass, 1 fails; one answer tries to be markup.
    let rows: Vec<Value> = ["4", "4", "4", "<img src=x onerror=\"window.__pwned = 1\">"]
        .iter()
        .map(|answer| json!({"item": {"answer": "4"}, "sample": {"output_text": answer}}))
        .collect();
    let exact = json!({"type": "string_check", "name": "exact", "operation": "eq",
                       "input": "{{sample.output_text}}", "reference": "{{item.answer}}"});
    let (status, eval) = server.post(
        "/evals",
        &json!({"name": "arith", "data_source_config": {"type": "custom",
                "item_schema": {"type": "object"}, "include_sample_schema": true},
                "testing_criteria": [exact]}),
    );
    assert!(status == 200 || status == 201, "{eval}");
    let eval_id = eval["id"].as_str().unwrap().to_owned();
    let (status, run) = server.post(
        &format!("/evals/{eval_id}/runs"),
        &json!({"name": "given", "data_source": {"type": "jsonl",
                "source": {"type": "file_content", "content": rows}}}),
    );
    assert!(status == 200 || status == 201, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let file_text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let (_, file) = server.upload("given.jsonl", &file_text, "evals");

    // Evals: the run's pass rate, and its items filtered by pass/fail.
    browser.goto(&format!("{root}/#/evals"));
    browser.wait_until(
        &format!("document.querySelector('a[href=\"#/evals/{eval_id}\"]')"),
        30,
    );
    browser.goto(&format!("{root}/#/evals/{eval_id}"));
    browser.wait_until("document.querySelector('td.pass-rate') && document.querySelector('td.pass-rate').textContent === '75.0%'", 60);
    browser.goto(&format!("{root}/#/evals/{eval_id}/runs/{run_id}"));
    browser.wait_until("document.querySelectorAll('tr.item-row').length === 4", 30);
    browser.eval("const s = document.getElementById('item-filter'); s.value = 'fail'; s.dispatchEvent(new Event('change')); true");
    browser.wait_until(
        "document.querySelectorAll('tr.item-row').length === 1 && document.querySelector('tr.item-fail')",
        30,
    );
    let failed = browser.eval("document.querySelector('tr.item-fail pre.completion').textContent");
    assert!(failed.as_str().unwrap().contains("<img src=x"), "{failed}");
    assert_eq!(
        browser.eval("document.querySelectorAll('#main img').length"),
        0
    );

    // The readiness report for the file and a grader.
    browser.goto(&format!("{root}/#/readiness"));
    browser.wait_until(
        &format!(
            "[...document.getElementById('readiness-file').options].some(o => o.value === '{}')",
            file["id"].as_str().unwrap()
        ),
        30,
    );
    browser.eval(&format!(
        "document.getElementById('readiness-file').value = '{}'; \
         document.getElementById('readiness-samples').value = '1'; \
         document.getElementById('readiness-run').click(); true",
        file["id"].as_str().unwrap()
    ));
    browser.wait_until("document.getElementById('readiness-verdict')", 60);
    let checks = browser.number("document.querySelectorAll('tr.check-row').length");
    assert_eq!(checks, 8.0);
    let verdict = browser.eval("document.getElementById('readiness-verdict').textContent");
    assert!(
        ["good", "warning", "blocker"].contains(&verdict.as_str().unwrap()),
        "{verdict}"
    );

    // Files: the upload is listed, and a file uploads from the page.
    browser.goto(&format!("{root}/#/files"));
    browser.wait_until(
        "document.getElementById('files-body').textContent.includes('given.jsonl')",
        30,
    );
    let picked = tmp.path().join("picked.jsonl");
    std::fs::write(
        &picked,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"answer\": \"x\"}\n",
    )
    .unwrap();
    let document = browser.call("DOM.getDocument", json!({}));
    let input = browser.call(
        "DOM.querySelector",
        json!({"nodeId": document["root"]["nodeId"], "selector": "#upload-file"}),
    );
    browser.call(
        "DOM.setFileInputFiles",
        json!({"nodeId": input["nodeId"], "files": [picked.to_str().unwrap()]}),
    );
    browser.eval("document.querySelector('#main form button[type=submit]').click(); true");
    browser.wait_until(
        "document.getElementById('files-body').textContent.includes('picked.jsonl')",
        30,
    );
    let (_, files) = server.get("/files?purpose=fine-tune");
    assert!(
        files["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["filename"] == "picked.jsonl" && f["status"] == "processed"),
        "{files}"
    );

    // Graders: validate, then grade pasted samples.
    browser.goto(&format!("{root}/#/graders"));
    browser.wait_until("document.getElementById('grader-validate')", 30);
    browser.eval("document.getElementById('grader-validate').click(); true");
    browser.wait_until("document.getElementById('grader-valid')", 30);
    browser.eval("document.getElementById('grader-run').click(); true");
    browser.wait_until("document.querySelectorAll('tr.grade-row').length === 2", 30);
    let rewards = browser
        .eval("[...document.querySelectorAll('tr.grade-row td.reward')].map(td => td.textContent)");
    assert_eq!(
        rewards,
        json!(["1", "0"]),
        "'4' is exact, 'The answer is 4.' is not"
    );
    browser.eval(
        "document.getElementById('grader-json').value = '{\"type\": \"string_check\"}'; \
         document.getElementById('grader-validate').click(); true",
    );
    browser.wait_until("document.getElementById('grader-invalid')", 30);
    assert_eq!(browser.eval("window.__pwned || null"), Value::Null);
    assert_eq!(browser.eval("window.rftDashboard.uncaught"), json!([]));
}

#[test]
fn events_since_a_cursor_are_the_new_ones_in_pages_of_at_most_ten_thousand() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = paused_job_with_steps(&data, 10_005);
    let server = Server::start(&data, &["sekret"]);
    let url = |since: &str| format!("{}/dashboard/api/jobs/{id}/events{since}", server.root());
    let key = [("Authorization", "Bearer sekret")];
    let (status, body, _) = raw_get(&url(""), &key);
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    let events = page["data"].as_array().unwrap();
    assert_eq!(events.len(), 10_000);
    assert_eq!(page["has_more"], true);
    assert_eq!(events[0]["data"]["step"], 1, "oldest first");
    let last = events[9_999]["id"].as_str().unwrap();
    let (_, body, _) = raw_get(&url(&format!("?since={last}")), &key);
    let page: Value = serde_json::from_str(&body).unwrap();
    let steps: Vec<u64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [10_001, 10_002, 10_003, 10_004, 10_005]);
    assert_eq!(page["has_more"], false);
    let newest = page["data"][4]["id"].as_str().unwrap();
    let (_, body, _) = raw_get(&url(&format!("?since={newest}")), &key);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["data"], json!([]));
    let (status, body, _) = raw_get(&url("?since=ftevent-nope"), &key);
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = raw_get(&url(""), &[]);
    assert_eq!(status, 401);
}
