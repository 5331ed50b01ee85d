//! Python graders against hostile code: every attack is contained, reported with the right
//! error flag, and the next grade on the same grader still succeeds.
//!
//! The interpreter is `$RFT_PYTHON` or `python3`; the sandbox is always on here.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rft_grade::python::{PythonConfig, PythonRuntime, SandboxMode};
use rft_grade::{compile_with, CompiledGrader, GraderContext};
use rft_types::{Grader, RunGraderResponse, Sample};
use serde_json::json;

fn runtime(timeout_secs: u64) -> Arc<PythonRuntime> {
    let mut config = PythonConfig::from_env();
    config.interpreter = Some(
        std::env::var_os("RFT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3")),
    );
    config.timeout = Duration::from_secs(timeout_secs);
    config.workers = 1;
    config.sandbox = SandboxMode::Required;
    PythonRuntime::new(config)
}

fn python_grader(body: &str, timeout_secs: u64) -> CompiledGrader {
    let source = format!(
        "import os, sys, math\ndef grade(sample, item):\n    if sample['output_text'] == 'attack':\n{}\n    return 1.0\n",
        body.lines().map(|l| format!("        {l}\n")).collect::<String>()
    );
    let grader =
        Grader::from_value(&json!({"type": "python", "name": "hostile", "source": source}))
            .unwrap();
    let context = GraderContext {
        python: runtime(timeout_secs),
        ..GraderContext::shared()
    };
    compile_with(&grader, &context).unwrap_or_else(|e| panic!("{e}"))
}

fn grade(grader: &CompiledGrader, text: &str) -> RunGraderResponse {
    grader.grade(&Sample::from_text(text), &json!({}))
}

/// The attack fails as a runtime error naming `expected`, and the grader still works after.
fn assert_contained(grader: &CompiledGrader, expected: &str) {
    let attacked = grade(grader, "attack");
    let errors = &attacked.metadata.errors;
    assert_eq!(attacked.reward, 0.0);
    assert!(errors.python_grader_runtime_error, "{errors:?}");
    assert!(!errors.python_grader_server_error, "{errors:?}");
    let details = errors
        .python_grader_runtime_error_details
        .clone()
        .unwrap_or_default();
    assert!(
        details.contains(expected),
        "expected {expected:?} in:\n{details}"
    );
    let next = grade(grader, "fine");
    assert_eq!(next.reward, 1.0, "{:?}", next.metadata.errors);
}

#[test]
fn trivial_grader_scores_and_sees_sample_and_item() {
    let source = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['answer'] else 0.25\n";
    let grader =
        Grader::from_value(&json!({"type": "python", "name": "eq", "source": source})).unwrap();
    let grader = compile_with(
        &grader,
        &GraderContext {
            python: runtime(10),
            ..GraderContext::shared()
        },
    )
    .unwrap();
    let hit = grader.grade(&Sample::from_text("4"), &json!({"answer": "4"}));
    assert_eq!(hit.reward, 1.0);
    assert_eq!(hit.metadata.kind, "python");
    let miss = grader.grade(&Sample::from_text("5"), &json!({"answer": "4"}));
    assert_eq!(miss.reward, 0.25);
}

#[test]
fn output_json_reaches_python_when_the_sample_parses() {
    let source = "def grade(sample, item):\n    return float(sample['output_json']['n'])\n";
    let grader =
        Grader::from_value(&json!({"type": "python", "name": "j", "source": source})).unwrap();
    let grader = compile_with(
        &grader,
        &GraderContext {
            python: runtime(10),
            ..GraderContext::shared()
        },
    )
    .unwrap();
    assert_eq!(
        grader
            .grade(&Sample::from_text(r#"{"n": 0.5}"#), &json!({}))
            .reward,
        0.5
    );
}

#[test]
fn exceptions_carry_the_traceback() {
    assert_contained(&python_grader("1 / 0", 10), "ZeroDivisionError");
}

#[test]
fn non_numbers_nan_and_nothing_are_runtime_errors() {
    assert_contained(
        &python_grader("return 'high'", 10),
        "must return a float, got str",
    );
    assert_contained(&python_grader("return float('nan')", 10), "finite");
    assert_contained(&python_grader("return float('inf')", 10), "finite");
    assert_contained(&python_grader("return None", 10), "got NoneType");
    assert_contained(&python_grader("return True", 10), "got bool");
}

#[test]
fn network_is_unreachable_even_on_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let grader = python_grader(
        &format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)"),
        10,
    );
    assert_contained(&grader, "Error");
    assert!(
        listener.accept().is_err(),
        "the sandbox reached the host's loopback"
    );
}

#[test]
fn files_outside_the_sandbox_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "api-key").unwrap();
    let grader = python_grader(&format!("return float(len(open({:?}).read()))", secret), 10);
    assert_contained(&grader, "PermissionError");
    let grader = python_grader("open('/etc/hostname').read()", 10);
    assert_contained(&grader, "PermissionError");
}

#[test]
fn writes_only_inside_the_private_folder() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("pwned.txt");
    let grader = python_grader(&format!("open({:?}, 'w').write('x')", target), 10);
    assert_contained(&grader, "PermissionError");
    assert!(!target.exists());
    let grader = python_grader("open('scratch.txt', 'w').write('ok')\nreturn float(len(open('scratch.txt').read()) == 2) / 0", 10);
    // Writing into the worker's own folder works; the division makes it observable as an error.
    assert_contained(&grader, "ZeroDivisionError");
}

#[test]
fn no_new_processes() {
    assert_contained(
        &python_grader("while True:\n    os.fork()", 10),
        "PermissionError",
    );
    assert_contained(
        &python_grader(
            "import subprocess\nsubprocess.run(['true'], check=True)",
            10,
        ),
        "Error",
    );
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let grader = python_grader(
        &format!(
            "rc = os.system('touch {}')\nraise RuntimeError(rc)",
            marker.display()
        ),
        10,
    );
    assert_contained(&grader, "RuntimeError");
    assert!(!marker.exists());
}

#[test]
fn ctypes_tricks_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ctypes-marker");
    let grader = python_grader(
        &format!(
            "import ctypes\nlibc = ctypes.CDLL(None)\nrc = libc.system(b'touch {}')\nraise RuntimeError('system returned %d' % rc)",
            marker.display()
        ),
        10,
    );
    assert_contained(&grader, "system returned");
    assert!(!marker.exists());
    // A segfault kills the worker; the grade reports it and a new worker takes over.
    assert_contained(
        &python_grader("import ctypes\nctypes.string_at(0)", 10),
        "process died",
    );
}

#[test]
fn killing_the_parent_fails() {
    assert_contained(
        &python_grader("os.kill(os.getppid(), 9)", 10),
        "PermissionError",
    );
    assert_contained(
        &python_grader("os.killpg(os.getpgid(os.getppid()), 9)", 10),
        "Error",
    );
}

#[test]
fn infinite_loop_times_out_and_the_worker_is_replaced() {
    assert_contained(&python_grader("while True:\n    pass", 2), "TimeoutError");
}

#[test]
fn memory_bomb_is_stopped() {
    assert_contained(
        &python_grader("x = bytearray(3 * 1024 ** 3)", 20),
        "MemoryError",
    );
    assert_contained(
        &python_grader("x = []\nwhile True:\n    x.append(' ' * 10 ** 6)", 20),
        "",
    );
}

#[test]
fn a_gigabyte_of_output_is_capped() {
    let grader = python_grader("chunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    print(chunk)\nos.write(1, b'y' * (1 << 20))\nraise ValueError('done')", 60);
    let attacked = grade(&grader, "attack");
    let details = attacked
        .metadata
        .errors
        .python_grader_runtime_error_details
        .unwrap();
    assert!(details.contains("ValueError: done"));
    assert!(
        details.len() < 100 * 1024,
        "details are {} bytes",
        details.len()
    );
    assert!(details.contains("more characters of output dropped"));
    assert_eq!(grade(&grader, "fine").reward, 1.0);
}

#[test]
fn exiting_is_reported() {
    assert_contained(&python_grader("sys.exit(3)", 10), "SystemExit");
    assert_contained(&python_grader("os._exit(0)", 10), "process died");
}

#[test]
fn global_state_does_not_leak_between_graders() {
    let context = GraderContext {
        python: runtime(10),
        ..GraderContext::shared()
    };
    let polluter = Grader::from_value(&json!({"type": "python", "name": "a", "source":
        "import math, builtins\ndef grade(sample, item):\n    math.pi = 3.0\n    builtins.len = lambda x: 0\n    return 1.0\n"})).unwrap();
    let observer = Grader::from_value(&json!({"type": "python", "name": "b", "source":
        "import math\ndef grade(sample, item):\n    return math.pi + len('ab')\n"}))
    .unwrap();
    let polluter = compile_with(&polluter, &context).unwrap();
    let observer = compile_with(&observer, &context).unwrap();
    assert_eq!(
        polluter.grade(&Sample::from_text("x"), &json!({})).reward,
        1.0
    );
    assert_eq!(
        observer.grade(&Sample::from_text("x"), &json!({})).reward,
        std::f64::consts::PI + 2.0
    );
}

#[test]
fn broken_source_fails_every_grade_with_its_error() {
    let grader = Grader::from_value(
        &json!({"type": "python", "name": "bad", "source": "def grade(sample):\n    return 1\n"}),
    )
    .unwrap();
    let grader = compile_with(
        &grader,
        &GraderContext {
            python: runtime(10),
            ..GraderContext::shared()
        },
    )
    .unwrap();
    for _ in 0..2 {
        let result = grader.grade(&Sample::from_text("x"), &json!({}));
        assert!(result.metadata.errors.python_grader_runtime_error);
        let details = result
            .metadata
            .errors
            .python_grader_runtime_error_details
            .unwrap();
        assert!(details.contains("two positional arguments"), "{details}");
    }
    let grader =
        Grader::from_value(&json!({"type": "python", "name": "syntax", "source": "def grade(:\n"}))
            .unwrap();
    let grader = compile_with(
        &grader,
        &GraderContext {
            python: runtime(10),
            ..GraderContext::shared()
        },
    )
    .unwrap();
    let details = grader
        .grade(&Sample::from_text("x"), &json!({}))
        .metadata
        .errors
        .python_grader_runtime_error_details
        .unwrap();
    assert!(details.contains("SyntaxError"), "{details}");
}

#[test]
fn missing_environment_names_the_fix() {
    let mut config = PythonConfig::from_env();
    config.interpreter = None;
    config.home = tempfile::tempdir().unwrap().keep();
    let grader = Grader::from_value(&json!({"type": "python", "name": "p", "source": "def grade(s, i):\n    return 1\n", "image_tag": "2025-05-08"})).unwrap();
    let err = compile_with(
        &grader,
        &GraderContext {
            python: PythonRuntime::new(config),
            ..GraderContext::shared()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rft setup python"), "{err}");
    let _ = std::io::stdout().flush();
}
