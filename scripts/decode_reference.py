"""The references of `rft bench decode --reference`: decode throughput of Hugging Face transformers
(PyTorch, CPU) and of llama.cpp (llama-cpp-python) on the same GGUF file as OpenRFT's engine.

Usage: decode_reference.py REQUEST.json RESULT.json, where the request (written by the `rft`
command) holds the GGUF path, the prompt's token ids, the new tokens per sample, the batch sizes,
the repeats, the thread count and the engines to run. Progress goes to stderr; the result is a
JSON object with one entry per engine: its version, per batch size the decode rates of every
repeat (tokens/s), the best prefill time, and the first greedy completion of batch 1.

Prefill is excluded exactly as on the Rust side: each repeat times a run of 1 new token (prefill
and one token choice) and a run of N, and the rate is batch * (N - 1) / (T(N) - T(1)). Decoding
is greedy and never stops early (transformers: min_new_tokens = max_new_tokens; llama.cpp: our
own loop, no end-of-sequence check). Environment: scripts/bench_env.sh builds .venv-bench.
"""

import json
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars from the weight loader
import sys
import time
import traceback


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def measure(run, batch, tokens, repeats):
    """run(batch, n) -> (seconds, first row's ids). Returns the measurement dict."""
    run(batch, 2)  # warm-up
    rates, prefill, first = [], float("inf"), None
    for _ in range(repeats):
        short, _ = run(batch, 1)
        long, ids = run(batch, tokens)
        if len(ids) != tokens:
            raise RuntimeError(f"generated {len(ids)} tokens instead of {tokens}")
        first = ids
        prefill = min(prefill, short)
        rates.append(batch * (tokens - 1) / max(long - short, 1e-9))
    return {"batch": batch, "rates": rates, "prefill_s": prefill, "first_ids": first}


def bench_transformers(req):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.set_num_threads(req["threads"])
    out = {"version": transformers.__version__, "torch": torch.__version__}
    gguf = req["gguf"]
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32
    )
    model.eval()
    log(
        f"transformers {transformers.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads): loaded and dequantised in "
        f"{time.perf_counter() - start:.1f} s"
    )
    eos = model.config.eos_token_id
    prompt = req["prompt_ids"]

    def run(batch, n):
        ids = torch.tensor([prompt] * batch, dtype=torch.long)
        config = GenerationConfig(
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            eos_token_id=eos,
            pad_token_id=eos if isinstance(eos, int) else 0,
        )
        with torch.inference_mode():
            start = time.perf_counter()
            result = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
            )
            elapsed = time.perf_counter() - start
        return elapsed, result[0, len(prompt):].tolist()

    results = []
    for batch in req["batches"]:
        m = measure(run, batch, req["tokens"], req["repeats"])
        log(f"transformers batch {batch}: {max(m['rates']):.1f} tok/s (prefill {m['prefill_s']:.3f} s)")
        results.append(m)
    out["results"] = results
    out["first_ids"] = next((m["first_ids"] for m in results if m["batch"] == 1), None)
    return out


def bench_llama_cpp(req):
    import ctypes

    import llama_cpp
    import numpy as np

    L = llama_cpp
    out = {"version": getattr(L, "__version__", "?")}

    def api(*names):
        for name in names:
            if hasattr(L, name):
                return getattr(L, name)
        raise RuntimeError(f"llama_cpp has none of {names}")

    threads = req["threads"]
    tokens = req["tokens"]
    prompt = req["prompt_ids"]
    max_batch = max(req["batches"])
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    start = time.perf_counter()
    model = api("llama_model_load_from_file", "llama_load_model_from_file")(
        req["gguf"].encode(), mparams
    )
    if not model:
        raise RuntimeError("llama.cpp could not load the model")
    cparams = L.llama_context_default_params()
    cparams.n_ctx = max_batch * (len(prompt) + tokens + 8)
    cparams.n_batch = max(len(prompt) * max_batch, max_batch, 512)
    cparams.n_ubatch = cparams.n_batch
    cparams.n_seq_max = max_batch
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    ctx = api("llama_init_from_model", "llama_new_context_with_model")(model, cparams)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    if hasattr(L, "llama_model_get_vocab") and hasattr(L, "llama_vocab_n_tokens"):
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    else:
        n_vocab = L.llama_n_vocab(model)
    log(
        f"llama.cpp (llama-cpp-python {out['version']}, {threads} threads): loaded in "
        f"{time.perf_counter() - start:.1f} s; system: {L.llama_print_system_info().decode().strip()}"
    )
    out["system_info"] = L.llama_print_system_info().decode().strip()

    if hasattr(L, "llama_get_memory"):
        mem = L.llama_get_memory(ctx)

        def clear():
            L.llama_memory_clear(mem, True)

        def seq_cp(src, dst):
            L.llama_memory_seq_cp(mem, src, dst, -1, -1)
    else:

        def clear():
            L.llama_kv_self_clear(ctx)

        def seq_cp(src, dst):
            L.llama_kv_self_seq_cp(ctx, src, dst, -1, -1)

    batch_buf = L.llama_batch_init(max(len(prompt), max_batch), 0, max_batch)

    def fill(entries):
        """entries: (token, pos, seq, want_logits)."""
        batch_buf.n_tokens = len(entries)
        for i, (tok, pos, seq, want) in enumerate(entries):
            batch_buf.token[i] = tok
            batch_buf.pos[i] = pos
            batch_buf.n_seq_id[i] = 1
            batch_buf.seq_id[i][0] = seq
            batch_buf.logits[i] = 1 if want else 0

    def decode():
        rc = L.llama_decode(ctx, batch_buf)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax_row(i):
        ptr = L.llama_get_logits_ith(ctx, i)
        row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        return int(row.argmax())

    def run(batch, n):
        clear()
        start = time.perf_counter()
        # Prefill once in sequence 0, then share it with the other sequences (as our engine
        # repeats its cache rows): llama.cpp's `batched` example does the same.
        fill([(t, p, 0, p == len(prompt) - 1) for p, t in enumerate(prompt)])
        decode()
        for s in range(1, batch):
            seq_cp(0, s)
        first = argmax_row(len(prompt) - 1)
        current = [first] * batch
        generated = [first]
        for step in range(1, n):
            pos = len(prompt) + step - 1
            fill([(current[s], pos, s, True) for s in range(batch)])
            decode()
            current = [argmax_row(s) for s in range(batch)]
            generated.append(current[0])
        return time.perf_counter() - start, generated

    results = []
    for batch in req["batches"]:
        try:
            m = measure(run, batch, tokens, req["repeats"])
        except Exception as err:  # one batch size failing should not lose the others
            log(f"llama.cpp batch {batch} failed: {err}")
            results.append({"batch": batch, "error": str(err)})
            continue
        log(f"llama.cpp batch {batch}: {max(m['rates']):.1f} tok/s (prefill {m['prefill_s']:.3f} s)")
        results.append(m)
    out["results"] = results
    out["first_ids"] = next(
        (m["first_ids"] for m in results if m["batch"] == 1 and "first_ids" in m), None
    )
    L.llama_batch_free(batch_buf)
    L.llama_free(ctx)
    api("llama_model_free", "llama_free_model")(model)
    return out


def main():
    with open(sys.argv[1]) as f:
        req = json.load(f)
    result = {}
    for engine, bench in (("transformers", bench_transformers), ("llama_cpp", bench_llama_cpp)):
        if engine not in req.get("engines", ["transformers", "llama_cpp"]):
            continue
        try:
            result[engine] = bench(req)
        except ImportError as err:
            log(f"{engine}: not installed ({err}); scripts/bench_env.sh installs it")
            result[engine] = {"error": f"not installed ({err})"}
        except Exception as err:
            traceback.print_exc()
            result[engine] = {"error": f"{type(err).__name__}: {err}"}
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
