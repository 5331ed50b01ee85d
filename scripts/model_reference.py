"""An independent reference for OpenRFT's model engine: a numpy Llama forward pass over the
same dequantised GGUF weights, greedy-decoding a few chat prompts.

    .venv-model/bin/python scripts/model_reference.py GGUF OUT.jsonl

The weights are dequantised by the `gguf` package (llama.cpp's own Python reader), not by
candle; the prompts are tokenised by `transformers`' GGUF tokenizer loader; the forward pass is
written from Hugging Face's modeling_llama.py in plain numpy (float32, rotate-half RoPE on
un-permuted q/k). Nothing here shares code with the Rust engine.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# Prompts that draw long answers, so every row has at least 32 greedy tokens before EOS.
PROMPTS = [
    "Describe the water cycle in detail.",
    "Write a short story about a robot learning to paint.",
    "Explain how binary search works, step by step.",
    "List ten countries in Europe with their capitals.",
    "Extract the vendor, date and total from: 'Invoice 42 from Acme Corp., issued 2024-03-01, total $1,200.00.' Answer in JSON.",
]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
N_NEW = 40


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def load(path):
    reader = GGUFReader(path)
    cfg = {
        "layers": int(field(reader, "llama.block_count")),
        "hidden": int(field(reader, "llama.embedding_length")),
        "heads": int(field(reader, "llama.attention.head_count")),
        "kv_heads": int(field(reader, "llama.attention.head_count_kv")),
        "theta": float(field(reader, "llama.rope.freq_base")),
        "eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
    }
    weights = {}
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(x) for x in reversed(t.shape))
        weights[t.name] = data.reshape(shape)
    return cfg, weights


def unpermute(w, n_head):
    # convert_hf_to_gguf.py: w.reshape(n, 2, d/2, in).swapaxes(1, 2); invert it.
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rms_norm(x, w, eps):
    var = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)) * w


def rope(x, positions, theta):
    # x: (heads, t, d); Hugging Face rotate_half.
    d = x.shape[-1]
    inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
    freqs = positions[:, None].astype(np.float32) * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def forward(cfg, w, ids, start, cache):
    """Runs `ids` (positions start..start+len) through the model, extending `cache`
    (per layer: keys and values seen so far); returns the last position's logits."""
    t = len(ids)
    h, kvh = cfg["heads"], cfg["kv_heads"]
    hd = cfg["hidden"] // h
    x = w["token_embd.weight"][ids]
    positions = np.arange(start, start + t)
    total = start + t
    mask = np.full((t, total), -np.inf, dtype=np.float32)
    for i in range(t):
        mask[i, : start + i + 1] = 0.0
    for i in range(cfg["layers"]):
        p = f"blk.{i}."
        n = rms_norm(x, w[p + "attn_norm.weight"], cfg["eps"])
        q = n @ w[p + "q"].T
        k = n @ w[p + "k"].T
        v = n @ w[p + "attn_v.weight"].T
        q = q.reshape(t, h, hd).transpose(1, 0, 2)
        k = k.reshape(t, kvh, hd).transpose(1, 0, 2)
        v = v.reshape(t, kvh, hd).transpose(1, 0, 2)
        q, k = rope(q, positions, cfg["theta"]), rope(k, positions, cfg["theta"])
        if i in cache:
            k = np.concatenate([cache[i][0], k], axis=1)
            v = np.concatenate([cache[i][1], v], axis=1)
        cache[i] = (k, v)
        k = np.repeat(k, h // kvh, axis=0)
        v = np.repeat(v, h // kvh, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(t, h * hd)
        x = x + attn @ w[p + "attn_output.weight"].T
        n = rms_norm(x, w[p + "ffn_norm.weight"], cfg["eps"])
        gate = n @ w[p + "ffn_gate.weight"].T
        up = n @ w[p + "ffn_up.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * up) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x[-1:], w["output_norm.weight"], cfg["eps"])
    head = w.get("output.weight", w["token_embd.weight"])
    return (x @ head.T)[0]


def smollm_tokenizer(reader):
    """SmolLM2's tokenizer.json, rebuilt from the GGUF vocabulary with Python `tokenizers`:
    byte-level BPE, digits split one by one, no prefix space (transformers' own GGUF loader
    needs torch, which this reference avoids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = [str(t) for t in field(reader, "tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    types = list(field(reader, "tokenizer.ggml.token_type"))
    vocab = {tok: idx for idx, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([tok for tok, kind in zip(tokens, types) if kind == 3])
    return tokenizer


def main():
    gguf_path, out_path = sys.argv[1], sys.argv[2]
    tokenizer = smollm_tokenizer(GGUFReader(gguf_path))
    cfg, w = load(gguf_path)
    for i in range(cfg["layers"]):
        p = f"blk.{i}."
        w[p + "q"] = unpermute(w[p + "attn_q.weight"], cfg["heads"])
        w[p + "k"] = unpermute(w[p + "attn_k.weight"], cfg["kv_heads"])
    eos = {tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")}
    with open(out_path, "w") as f:
        for prompt in PROMPTS:
            text = (
                f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
            )
            prompt_ids = tokenizer.encode(text, add_special_tokens=False).ids
            cache = {}
            step_ids, start = list(prompt_ids), 0
            new = []
            margins = []
            for _ in range(N_NEW):
                logits = forward(cfg, w, np.array(step_ids), start, cache)
                start += len(step_ids)
                order = np.argsort(logits)
                nxt = int(order[-1])
                margins.append(float(logits[order[-1]] - logits[order[-2]]))
                new.append(nxt)
                step_ids = [nxt]
                if nxt in eos:
                    break
            row = {
                "prompt": prompt,
                "prompt_text": text,
                "prompt_ids": prompt_ids,
                "greedy_ids": new,
                "top2_margins": margins,
                "text": tokenizer.decode(new),
            }
            f.write(json.dumps(row) + "\n")
            print(prompt, "->", repr(row["text"]), "min margin %.4f" % min(margins), file=sys.stderr)


if __name__ == "__main__":
    main()
