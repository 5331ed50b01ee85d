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

// ---------------------------------------------------------------------------------------------
// The hostile suite: each attack below succeeded before the seccomp allow list, the PID / user
// namespaces, the worker budget and the image_tag check.

/// A grader whose `grade` returns 1.0 when every check in `body` (a sequence of statements
/// ending in `return <bool expression>`) holds.
fn checking_grader(body: &str, runtime: Arc<PythonRuntime>) -> CompiledGrader {
    let source = format!(
        "import os, sys\ndef grade(sample, item):\n{}",
        body.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let grader =
        Grader::from_value(&json!({"type": "python", "name": "check", "source": source})).unwrap();
    compile_with(
        &grader,
        &GraderContext {
            python: runtime,
            ..GraderContext::shared()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn pathname_unix_sockets_on_the_host_are_unreachable() {
    use std::io::Read;
    use std::os::unix::net::{UnixDatagram, UnixListener};
    let dir = tempfile::tempdir().unwrap();
    let stream_path = dir.path().join("host.sock");
    let listener = UnixListener::bind(&stream_path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let grader = python_grader(
        &format!(
            "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.connect({:?})\ns.sendall(b'pwned')\nreturn 1.0",
            stream_path
        ),
        10,
    );
    assert_contained(&grader, "PermissionError");
    match listener.accept() {
        Ok((mut peer, _)) => {
            let mut got = Vec::new();
            let _ = peer.read_to_end(&mut got);
            panic!("the grader reached a host socket and sent {got:?}");
        }
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock),
    }

    // Datagrams, with a fresh socket or through a socketpair re-addressed by `sendto`.
    let dgram_path = dir.path().join("host.dgram");
    let receiver = UnixDatagram::bind(&dgram_path).unwrap();
    receiver.set_nonblocking(true).unwrap();
    for attack in [
        format!(
            "import socket\nsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'pwned', {:?})\nreturn 1.0",
            dgram_path
        ),
        format!(
            "import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\na.sendto(b'pwned', {:?})\nreturn 1.0",
            dgram_path
        ),
    ] {
        assert_contained(&python_grader(&attack, 10), "PermissionError");
    }
    let mut buf = [0u8; 16];
    assert!(
        receiver.recv(&mut buf).is_err(),
        "the grader sent a datagram to a host socket"
    );
}

#[test]
fn abstract_unix_sockets_on_the_host_are_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = format!("rft-hostile-{}", std::process::id());
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let grader = python_grader(
        &format!(
            "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.connect('\\0{name}')\nreturn 1.0"
        ),
        10,
    );
    assert_contained(&grader, "PermissionError");
    assert!(
        listener.accept().is_err(),
        "the grader reached an abstract socket"
    );
}

#[test]
fn no_sockets_of_any_domain() {
    for (domain, kind) in [
        ("AF_VSOCK", "SOCK_STREAM"),
        ("AF_INET", "SOCK_STREAM"),
        ("AF_INET6", "SOCK_DGRAM"),
        ("AF_NETLINK", "SOCK_RAW"),
        ("AF_PACKET", "SOCK_RAW"),
    ] {
        let grader = python_grader(
            &format!("import socket\nsocket.socket(socket.{domain}, socket.{kind})\nreturn 1.0"),
            10,
        );
        assert_contained(&grader, "PermissionError");
    }
}

#[test]
fn io_uring_memfd_and_other_kernel_objects_are_refused() {
    // io_uring_setup, io_uring_enter and io_uring_register (425-427), memfd_secret (447).
    let syscall = |nr: u32| {
        format!(
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nbuf = ctypes.create_string_buffer(256)\nif libc.syscall({nr}, 8, buf, 0, 0, 0) >= 0:\n    return 1.0\nerr = ctypes.get_errno()\nraise OSError(err, os.strerror(err))"
        )
    };
    for nr in [425, 426, 427, 447] {
        assert_contained(&python_grader(&syscall(nr), 10), "PermissionError");
    }
    assert_contained(
        &python_grader("os.memfd_create('x')\nreturn 1.0", 10),
        "PermissionError",
    );
}

/// The test process's own limit of `resource`, as `(soft, hard)`.
fn own_limit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut limit) }, 0);
    (limit.rlim_cur, limit.rlim_max)
}

#[test]
fn other_processes_limits_priority_and_affinity_cannot_be_changed() {
    let pid = std::process::id();
    let before = own_limit(libc::RLIMIT_MSGQUEUE);
    // (`setpriority(PRIO_USER, 0, _)`, which would renice every process of this uid, is in the
    // filter's own unit tests: here a regression would renice the whole host.)
    let attacks = [
        format!("import resource\nresource.prlimit({pid}, resource.RLIMIT_MSGQUEUE, (4096, 4096))\nreturn 1.0"),
        format!("os.setpriority(os.PRIO_PROCESS, {pid}, 19)\nreturn 1.0"),
        format!("os.sched_setaffinity({pid}, {{0}})\nreturn 1.0"),
        format!("os.sched_setscheduler({pid}, os.SCHED_BATCH, os.sched_param(0))\nreturn 1.0"),
    ];
    for attack in &attacks {
        assert_contained(&python_grader(attack, 10), "PermissionError");
    }
    assert_eq!(
        own_limit(libc::RLIMIT_MSGQUEUE),
        before,
        "a grader changed this process's rlimit"
    );
    // SAFETY: plain getters without pointers.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    assert_ne!(nice, 19, "a grader reniced this process");
    // The worker may still adjust itself (its nice value only upwards: the suite may itself run
    // under `nice`, and lowering a nice value needs a privilege the worker has not).
    let own = checking_grader(
        "import resource\nresource.prlimit(0, resource.RLIMIT_NOFILE, (128, 128))\nresource.prlimit(os.getpid(), resource.RLIMIT_CORE, (0, 0))\nos.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + 1))\nos.sched_setaffinity(0, os.sched_getaffinity(0))\nreturn float(resource.getrlimit(resource.RLIMIT_NOFILE) == (128, 128))",
        runtime(10),
    );
    let result = own.grade(&Sample::from_text("x"), &json!({}));
    assert_eq!(result.reward, 1.0, "{:?}", result.metadata.errors);
}

#[test]
fn signal_redirection_with_fcntl_is_refused() {
    let pid = std::process::id();
    for (cmd, arg) in [
        ("8", pid.to_string()),
        ("10", "9".to_owned()),
        ("1024", "1".to_owned()),
    ] {
        let grader = python_grader(
            &format!("import fcntl\nr, w = os.pipe()\nfcntl.fcntl(r, {cmd}, {arg})\nreturn 1.0"),
            10,
        );
        assert_contained(&grader, "PermissionError");
    }
}

#[test]
fn the_worker_is_alone_in_its_own_pid_namespace() {
    let pid = std::process::id();
    let grader = checking_grader(
        &format!("assert os.getpid() == 1, os.getpid()\nassert os.getppid() == 0, os.getppid()\ntry:\n    os.kill({pid}, 0)\nexcept (PermissionError, ProcessLookupError):\n    pass\nelse:\n    raise AssertionError('the host pid is reachable')\nreturn 1.0"),
        runtime(10),
    );
    let result = grader.grade(&Sample::from_text("x"), &json!({}));
    assert_eq!(result.reward, 1.0, "{:?}", result.metadata.errors);
}

/// Whether this host lets this process create a user namespace (in a child, since a threaded
/// process cannot).
fn user_namespaces_available() -> bool {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("/bin/true");
    // SAFETY: the closure makes one syscall.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.status().is_ok_and(|s| s.success())
}

#[test]
fn the_worker_runs_as_an_unprivileged_uid_where_user_namespaces_exist() {
    if !user_namespaces_available() {
        eprintln!("skipped: this host refuses user namespaces");
        return;
    }
    let grader = checking_grader(
        "assert (os.getuid(), os.geteuid(), os.getgid()) == (1000, 1000, 1000), (os.getuid(), os.getgid())\ntry:\n    os.setgroups([0])\nexcept PermissionError:\n    pass\nelse:\n    raise AssertionError('setgroups worked')\nreturn 1.0",
        runtime(10),
    );
    let result = grader.grade(&Sample::from_text("x"), &json!({}));
    assert_eq!(result.reward, 1.0, "{:?}", result.metadata.errors);
}

#[test]
fn ordinary_graders_still_work() {
    // Threads (clone3 answers ENOSYS and libc falls back to clone), socketpairs, signals to
    // itself, timers, its own folder, and the image's packages where this interpreter has them.
    let grader = checking_grader(
        r#"import concurrent.futures, signal, socket, tempfile, threading, time, json, re, math
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    assert sum(pool.map(lambda x: x * x, range(100))) == 328350
t = threading.Thread(target=time.sleep, args=(0.01,))
t.start(); t.join()
a, b = socket.socketpair()
a.sendall(b'ok'); assert b.recv(2) == b'ok'
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
signal.raise_signal(signal.SIGUSR1)
assert got == [1, 1], got
signal.setitimer(signal.ITIMER_REAL, 0)
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, 'x'), 'w').write('y')
import importlib.util
# Installed packages must import (a sandbox refusal surfaces as an ImportError); missing ones
# are skipped: RFT_PYTHON may be a bare interpreter.
have = lambda name: importlib.util.find_spec(name) is not None
if have('numpy'):
    import numpy
    assert float(numpy.linalg.inv(numpy.eye(3) * 2)[0][0]) == 0.5
if have('scipy'):
    import scipy.optimize
    assert abs(scipy.optimize.brentq(lambda x: x * x - 2, 0, 2) - 2 ** 0.5) < 1e-9
if have('sympy'):
    import sympy
    assert sympy.simplify('x + x') == 2 * sympy.Symbol('x')
if have('rapidfuzz'):
    from rapidfuzz import fuzz
    assert fuzz.ratio('abc', 'abc') == 100
return 1.0"#,
        runtime(20),
    );
    let result = grader.grade(&Sample::from_text("x"), &json!({}));
    assert_eq!(result.reward, 1.0, "{:?}", result.metadata.errors);
}

#[test]
fn a_timed_out_worker_is_gone_not_just_its_supervisor() {
    let marker = format!("rfthang{}", std::process::id() % 100_000);
    let grader = python_grader(
        &format!(
            "import ctypes\nctypes.CDLL(None).prctl(15, b'{marker}', 0, 0, 0)\nwhile True:\n    pass"
        ),
        2,
    );
    assert_contained(&grader, "TimeoutError");
    let alive = || !pids_named(&marker).is_empty();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(), "the timed-out interpreter is still running");
}

#[test]
fn crashes_name_their_signal() {
    assert_contained(
        &python_grader("import ctypes\nctypes.string_at(0)", 10),
        "killed by signal 11",
    );
}

fn budget_runtime(max_total: usize, timeout_secs: u64) -> Arc<PythonRuntime> {
    let mut config = PythonConfig::from_env();
    config.interpreter = Some(
        std::env::var_os("RFT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3")),
    );
    config.timeout = Duration::from_secs(timeout_secs);
    config.workers = 2;
    config.max_total_workers = max_total;
    config.sandbox = SandboxMode::Required;
    PythonRuntime::new(config)
}

#[test]
fn many_graders_share_one_budget_of_worker_processes() {
    let runtime = budget_runtime(2, 20);
    let graders: Vec<CompiledGrader> = (0..5)
        .map(|_| checking_grader("import time\ntime.sleep(0.2)\nreturn 1.0", runtime.clone()))
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(runtime.live_workers());
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        let graders_done: Vec<_> = graders
            .iter()
            .flat_map(|grader| (0..2).map(move |_| grader))
            .map(|grader| scope.spawn(move || grader.grade(&Sample::from_text("x"), &json!({}))))
            .collect();
        // Joined before any assertion: a failing one must not leave the watcher running, or
        // the scope would wait for it forever.
        let results: Vec<_> = graders_done.into_iter().map(|h| h.join()).collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (results, watcher.join())
    });
    let (results, most) = most;
    for result in results {
        let result = result.expect("a grading thread panicked");
        assert_eq!(result.reward, 1.0, "{:?}", result.metadata.errors);
    }
    let most = most.expect("the watcher panicked");
    assert!(most <= 2, "{most} workers were alive at once");
    assert!(runtime.live_workers() <= 2);
    drop(graders);
    assert_eq!(runtime.live_workers(), 0, "dropped graders left workers");
}

#[test]
fn workers_outlive_the_thread_that_needed_them_first() {
    // The worker counts its grades in a global; a replacement worker would start again at 1.
    let runtime = budget_runtime(2, 20);
    let grader = checking_grader(
        "global calls\ntry:\n    calls += 1\nexcept NameError:\n    calls = 1\nreturn float(calls)",
        runtime.clone(),
    );
    let first = std::thread::scope(|scope| {
        scope
            .spawn(|| grader.grade(&Sample::from_text("x"), &json!({})))
            .join()
    })
    .expect("the grading thread panicked");
    assert_eq!(first.reward, 1.0, "{:?}", first.metadata.errors);
    // The thread is gone; its worker must still be there, idle, for the next grade.
    std::thread::sleep(Duration::from_millis(200));
    let second = grader.grade(&Sample::from_text("x"), &json!({}));
    assert_eq!(second.reward, 2.0, "{:?}", second.metadata.errors);
    assert_eq!(runtime.live_workers(), 1);
}

#[test]
fn idle_workers_of_other_graders_make_room() {
    let runtime = budget_runtime(1, 20);
    let first = checking_grader("return 1.0", runtime.clone());
    let second = checking_grader("return 1.0", runtime.clone());
    assert_eq!(first.grade(&Sample::from_text("x"), &json!({})).reward, 1.0);
    let started = std::time::Instant::now();
    let result = second.grade(&Sample::from_text("x"), &json!({}));
    assert_eq!(result.reward, 1.0, "{:?}", result.metadata.errors);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(first.grade(&Sample::from_text("x"), &json!({})).reward, 1.0);
    assert_eq!(runtime.live_workers(), 1);
}

#[test]
fn a_spent_budget_is_a_server_error_after_the_timeout() {
    let runtime = budget_runtime(1, 2);
    let busy = checking_grader("import time\ntime.sleep(1.6)\nreturn 1.0", runtime.clone());
    let waiting = checking_grader("return 1.0", runtime.clone());
    std::thread::scope(|scope| {
        let hog = scope.spawn(|| {
            // Back to back: its worker is idle only for the instant between two grades.
            (0..3)
                .map(|_| busy.grade(&Sample::from_text("x"), &json!({})).reward)
                .collect::<Vec<_>>()
        });
        // Wait until the hog's worker holds the only slot.
        let hog_started = std::time::Instant::now();
        while runtime.live_workers() == 0 {
            assert!(
                hog_started.elapsed() < Duration::from_secs(30) && !hog.is_finished(),
                "the hog's worker never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let result = waiting.grade(&Sample::from_text("x"), &json!({}));
        let elapsed = started.elapsed();
        let errors = &result.metadata.errors;
        if result.reward == 1.0 {
            // Only possible if it caught the hog's worker idle between two grades, which is
            // after the first one ended: it waited all the same.
            assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
        } else {
            assert!(errors.python_grader_server_error, "{errors:?}");
            assert_eq!(
                errors.python_grader_server_error_type.as_deref(),
                Some("worker_limit"),
                "{errors:?}"
            );
            // It waited for the grade timeout (2 s), no less and not much more.
            assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
            assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        }
        assert_eq!(hog.join().unwrap(), vec![1.0; 3]);
    });
    assert!(runtime.live_workers() <= 1);
}

#[test]
fn image_tags_are_known_names_not_paths() {
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("ran");
    // An "environment" whose interpreter proves it ran by leaving a marker.
    let plant = |dir: &std::path::Path| {
        let bin = dir.join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let python = bin.join("python");
        std::fs::write(
            &python,
            format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let outside = tempfile::tempdir().unwrap();
    plant(outside.path());
    plant(&home.path().join("evil"));
    std::fs::create_dir_all(home.path().join("python")).unwrap();
    let absolute = outside.path().display().to_string();
    for tag in [
        absolute.as_str(),
        "../evil",
        "2025-05-08/../../evil",
        "/tmp/x",
        "",
    ] {
        let grader = Grader::from_value(&json!({"type": "python", "name": "p", "image_tag": tag,
            "source": "def grade(s, i):\n    return 1.0\n"}))
        .unwrap();
        let err = rft_grade::validate(&grader).unwrap_err().to_string();
        assert!(err.contains("image_tag"), "{tag}: {err}");
        assert!(err.contains("2025-05-08"), "{tag}: {err}");
        let mut config = PythonConfig::from_env();
        config.interpreter = None;
        config.home = home.path().to_owned();
        let err = compile_with(
            &grader,
            &GraderContext {
                python: PythonRuntime::new(config),
                ..GraderContext::shared()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("image_tag"), "{tag}: {err}");
        assert!(
            !marker.exists(),
            "image_tag {tag:?} ran an interpreter outside the home"
        );
    }
    let known = Grader::from_value(
        &json!({"type": "python", "name": "p", "image_tag": "2025-05-08",
        "source": "def grade(s, i):\n    return 1.0\n"}),
    )
    .unwrap();
    rft_grade::validate(&known).unwrap();
}

#[test]
fn attributes_of_host_files_cannot_be_changed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("owned-by-the-server");
    std::fs::write(&file, "x").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&file).unwrap();
    for attack in [
        format!("os.chmod({file:?}, 0o666)\nreturn 1.0"),
        format!("os.utime({file:?}, (0, 0))\nreturn 1.0"),
        format!("os.chown({file:?}, 1234, 1234)\nreturn 1.0"),
        format!("fd = os.open({file:?}, os.O_RDONLY)\nos.fchmod(fd, 0o666)\nreturn 1.0"),
    ] {
        assert_contained(&python_grader(&attack, 10), "Error");
    }
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(
        after.permissions().mode() & 0o7777,
        0o600,
        "a grader chmodded a host file"
    );
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
}

/// The host pids of processes whose name (`comm`) is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
        .collect()
}

#[test]
fn killing_the_supervisor_kills_the_grader() {
    // The worker pool only knows the sandbox's supervisor (the process `spawn` forked); the
    // interpreter is its child in a PID namespace and must not outlive it.
    let marker = format!("rftsup{}", std::process::id() % 100_000);
    let grader = python_grader(
        &format!(
            "import ctypes, time\nctypes.CDLL(None).prctl(15, b'{marker}', 0, 0, 0)\ntime.sleep(60)"
        ),
        60,
    );
    std::thread::scope(|scope| {
        let attacked = scope.spawn(|| grade(&grader, "attack"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let interpreter = loop {
            if let Some(&pid) = pids_named(&marker).first() {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the grader never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let status = std::fs::read_to_string(format!("/proc/{interpreter}/status")).unwrap();
        let supervisor: libc::pid_t = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(supervisor as u32, std::process::id());
        // SAFETY: a plain syscall on a child process of this test.
        assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
        let result = attacked.join().unwrap();
        let errors = &result.metadata.errors;
        assert!(errors.python_grader_runtime_error, "{errors:?}");
        let details = errors
            .python_grader_runtime_error_details
            .clone()
            .unwrap_or_default();
        assert!(details.contains("process died"), "{details}");
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !pids_named(&marker).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pids_named(&marker).is_empty(),
        "the interpreter outlived its supervisor"
    );
    assert_eq!(grade(&grader, "fine").reward, 1.0);
}
