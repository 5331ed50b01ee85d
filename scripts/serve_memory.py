#!/usr/bin/env python3
"""Peak memory of `rft serve` with one chat request, one Tinker training client sampling from
its snapshot, and one eval run, all on the same base model.

Usage: scripts/serve_memory.py RFT_BINARY [MODEL]   (MODEL: smollm2-135m-instruct by default)

Starts the binary on a free loopback port with a fresh data folder, makes the calls in order,
waits for each to finish, and prints the server's peak resident memory (VmHWM) and its resident
memory at the end (VmRSS), in MB. Only the standard library: it speaks HTTP itself.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

binary = sys.argv[1]
model = sys.argv[2] if len(sys.argv) > 2 else "smollm2-135m-instruct"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
root = f"http://127.0.0.1:{port}"
data = tempfile.mkdtemp(prefix="rft-serve-memory-")
env = dict(os.environ, RFT_API_KEYS="", RFT_LOG="warn")
server = subprocess.Popen(
    [binary, "serve", "--port", str(port), "--data", data],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)


def call(method, path, body=None):
    request = urllib.request.Request(root + path, method=method)
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, payload, timeout=600) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, (json.loads(raw) if "json" in kind else raw)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def status(field):
    with open(f"/proc/{server.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def future(request_id):
    while True:
        code, body = call("POST", "/api/v1/retrieve_future", {"request_id": request_id})
        assert code == 200, (code, body)
        if isinstance(body, dict) and body.get("type") == "try_again":
            continue
        assert not (isinstance(body, dict) and "error" in body), body
        return body


try:
    for _ in range(600):
        try:
            if call("GET", "/v1/models")[0] == 200:
                break
        except (ConnectionError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    else:
        sys.exit("the server did not start")
    print(f"idle: peak {status('VmHWM'):.0f} MB")

    # 1. A chat completion.
    code, chat = call("POST", "/v1/chat/completions", {
        "model": model, "max_tokens": 16, "seed": 1,
        "messages": [{"role": "user", "content": "Name a colour."}]})
    assert code == 200, chat
    print(f"after chat: peak {status('VmHWM'):.0f} MB")

    # 2. A Tinker training client, a snapshot sampler, and a sample from it.
    code, session = call("POST", "/api/v1/create_session", {})
    assert code == 200, session
    code, created = call("POST", "/api/v1/create_model", {
        "session_id": session["session_id"], "model_seq_id": 0, "base_model": model,
        "lora_config": {"rank": 8, "seed": 1}})
    assert code == 200, created
    model_id = future(created["request_id"])["model_id"]
    code, saved = call("POST", "/api/v1/save_weights_for_sampler",
                       {"model_id": model_id, "seq_id": 1})
    assert code == 200, saved
    sampler = future(saved["request_id"])["sampling_session_id"]
    code, sampled = call("POST", "/api/v1/asample", {
        "sampling_session_id": sampler, "num_samples": 4,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3, 4]}]},
        "sampling_params": {"max_tokens": 16, "seed": 1}})
    assert code == 200, sampled
    future(sampled["request_id"])
    print(f"after tinker: peak {status('VmHWM'):.0f} MB")

    # 3. An eval run sampling the base model.
    code, ev = call("POST", "/v1/evals", {
        "name": "memory", "data_source_config": {
            "type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
        "testing_criteria": [{"type": "string_check", "name": "x", "operation": "eq",
                              "input": "{{ sample.output_text }}", "reference": "red"}]})
    assert code in (200, 201), (code, ev)
    code, run = call("POST", f"/v1/evals/{ev['id']}/runs", {"data_source": {
        "type": "completions", "model": model,
        "source": {"type": "file_content", "content": [{"item": {"q": "Name a colour."}}] * 4},
        "input_messages": {"type": "template",
                           "template": [{"role": "user", "content": "{{ item.q }}"}]},
        "sampling_params": {"max_completion_tokens": 16, "seed": 1}}})
    assert code in (200, 201), (code, run)
    while run["status"] in ("queued", "in_progress"):
        time.sleep(0.2)
        code, run = call("GET", f"/v1/evals/{ev['id']}/runs/{run['id']}")
    assert run["status"] == "completed", run
    print(f"after eval run: peak {status('VmHWM'):.0f} MB")
    print(f"peak {status('VmHWM'):.0f} MB, resident at the end {status('VmRSS'):.0f} MB")
finally:
    server.terminate()
    server.wait(timeout=60)
