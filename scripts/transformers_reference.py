"""The Hugging Face reference for OpenRFT's decoder (`rft_model::CausalLm`) and, for the lead's
LoRA module, PEFT's adapters: tiny random Llama, Qwen2 and Qwen3 models saved the way the Hub
saves them, with the logits `transformers` computes for them.

    .venv-tf/bin/python scripts/transformers_reference.py OUT_DIR

Run it through scripts/gen_transformers_fixtures.sh, which installs the pinned packages of
scripts/transformers-requirements.txt into .venv-tf and writes OUT_DIR =
crates/rft-model/tests/fixtures. Nothing here shares code with OpenRFT: the models are
transformers' own `LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM` (eager attention,
float32, CPU), the adapters PEFT's `get_peft_model`. Everything is seeded, so a rerun with the
same pinned versions writes the same files.

What is written, for ARCH in llama, qwen2, qwen3 (`OUT_DIR/tiny_ARCH/`):
- `config.json`, `model.safetensors`: `save_pretrained(..., safe_serialization=True)` of a tiny
  model (vocab 256, hidden 64, 2 layers, MLP 128, 4 query heads / 2 kv heads) whose weights are
  redrawn with std 0.1 (RMS-norm weights 1 + N(0, 0.1)) so that every mistake moves the logits:
  - llama: tied embeddings (no `lm_head.weight` in the file), rope theta 10 000, head_dim 16;
  - qwen2: q/k/v biases, rope theta 1e6, untied `lm_head.weight`, head_dim 16;
  - qwen3: per-head q/k RMS norms, head_dim 32 (so heads x head_dim = 128 != hidden 64),
    rope theta 1e6, untied head.
- `expected.json`: the logits of that model (the file is reloaded with `from_pretrained` first,
  so the logits are those of exactly the weights on disk).
- llama and qwen2 only, `adapter/adapter_config.json` + `adapter/adapter_model.safetensors`:
  a PEFT LoRA adapter (r 4, alpha 8, dropout 0, on q/k/v/o/gate/up/down_proj) whose A and B
  matrices are redrawn with std 0.1, so the adapter is not a no-op; and `adapter/expected.json`:
  the logits of base + adapter (PEFT's forward) and, as a second entry per case, of the model
  after `merge_and_unload()`.

expected.json format (one JSON object):

    {
      "arch": "llama",                  # model_type
      "versions": {"torch": ..., "transformers": ..., "peft": ..., "safetensors": ...},
      "vocab_size": 256,
      "pad_token_id": 0,                # the id used to left-pad batched cases
      "cases": [
        {
          "name": "single_len7",
          "input_ids":      [[...], ...],    # (b, t) token ids, left-padded with pad_token_id
          "attention_mask": [[...], ...],    # (b, t): 1 real token, 0 padding
          "position_ids":   [[...], ...],    # (b, t): 0 at each row's first real token;
                                             #   padding positions hold 0 (irrelevant)
          "logits":         [[[...], ...]],  # (b, t, vocab) float32 rounded to 7 significant
                                             #   digits; null at padding positions
          # adapter/expected.json only:
          "merged_logits":  [[[...], ...]]   # same shape, after merge_and_unload()
        }, ...
      ]
    }

Cases: single rows of lengths 1, 7 and 19, and `batch_left_padded`, two rows (lengths 5 and
12) left-padded to 12 with an attention mask and per-row positions. Logits are for every real
position (so a row of length t gives t logit vectors). The script checks the reference against
itself before writing: the padded batch's logits equal those of each row run alone, and the
merged model's equal the adapter's.
"""

import json
import os
import shutil
import sys

import numpy as np
import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    Qwen2Config,
    Qwen3Config,
)

SEED = 20240611
VOCAB = 256
PAD = 0
STD = 0.1
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    pad_token_id=PAD,
    bos_token_id=1,
    eos_token_id=2,
)


def make_config(arch):
    if arch == "llama":
        return LlamaConfig(**COMMON, tie_word_embeddings=True, rope_theta=10000.0)
    if arch == "qwen2":
        return Qwen2Config(
            **COMMON, tie_word_embeddings=False, rope_theta=1_000_000.0, use_sliding_window=False
        )
    if arch == "qwen3":
        return Qwen3Config(
            **COMMON,
            head_dim=32,
            tie_word_embeddings=False,
            rope_theta=1_000_000.0,
            use_sliding_window=False,
        )
    raise ValueError(arch)


def randomise(model):
    """Redraws every parameter: N(0, STD), RMS-norm weights 1 + N(0, STD)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + STD * torch.randn_like(param))
            else:
                param.copy_(STD * torch.randn_like(param))


def cases(rng):
    """Token-id rows; the batch is left-padded with PAD."""
    out = []
    for length in (1, 7, 19):
        ids = rng.integers(3, VOCAB, size=length).tolist()
        out.append(
            {
                "name": f"single_len{length}",
                "input_ids": [ids],
                "attention_mask": [[1] * length],
                "position_ids": [list(range(length))],
            }
        )
    rows = [rng.integers(3, VOCAB, size=n).tolist() for n in (5, 12)]
    width = max(len(r) for r in rows)
    input_ids, mask, positions = [], [], []
    for row in rows:
        pad = width - len(row)
        input_ids.append([PAD] * pad + row)
        mask.append([0] * pad + [1] * len(row))
        positions.append([0] * pad + list(range(len(row))))
    out.append(
        {
            "name": "batch_left_padded",
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
        }
    )
    return out


def logits_of(model, case):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(case["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(case["attention_mask"], dtype=torch.long),
            position_ids=torch.tensor(case["position_ids"], dtype=torch.long),
            use_cache=False,
        )
    return out.logits.to(torch.float32).numpy()


def to_json(logits, mask):
    """(b, t, vocab) array -> nested lists, null at padding, 7 significant digits."""
    rows = []
    for b, row_mask in enumerate(mask):
        row = []
        for t, real in enumerate(row_mask):
            row.append([float(f"{x:.7g}") for x in logits[b, t]] if real else None)
        rows.append(row)
    return rows


def check_padding(model, case_list, what):
    """The padded batch's real positions equal each row run alone."""
    batch = next(c for c in case_list if c["name"] == "batch_left_padded")
    full = logits_of(model, batch)
    for b, row_mask in enumerate(batch["attention_mask"]):
        real = [t for t, m in enumerate(row_mask) if m]
        ids = [batch["input_ids"][b][t] for t in real]
        alone = logits_of(
            model,
            {
                "input_ids": [ids],
                "attention_mask": [[1] * len(ids)],
                "position_ids": [list(range(len(ids)))],
            },
        )
        diff = float(np.abs(full[b, real] - alone[0]).max())
        assert diff < 1e-5, f"{what}: padded row {b} differs from the row alone by {diff}"


def versions():
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
    }


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, separators=(",", ":"))
        f.write("\n")


def expected_doc(arch, config, entries):
    return {
        "arch": arch,
        "versions": versions(),
        "vocab_size": config.vocab_size,
        "pad_token_id": PAD,
        "cases": entries,
    }


def build(arch, out_root):
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    out = os.path.join(out_root, f"tiny_{arch}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    config = make_config(arch)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    randomise(model)
    model.save_pretrained(out, safe_serialization=True)
    # Not read by the engine; keep the fixture to what a model folder needs.
    generation_config = os.path.join(out, "generation_config.json")
    if os.path.exists(generation_config):
        os.remove(generation_config)

    # Reload from disk: the logits are those of exactly the weights the Rust test reads.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    case_list = cases(rng)
    check_padding(model, case_list, arch)
    entries = []
    for case in case_list:
        entry = dict(case)
        entry["logits"] = to_json(logits_of(model, case), case["attention_mask"])
        entries.append(entry)
    write_json(os.path.join(out, "expected.json"), expected_doc(arch, config, entries))

    if arch not in ("llama", "qwen2"):
        return
    adapter_dir = os.path.join(out, "adapter")
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(STD * torch.randn_like(param))
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    # A portable pointer to the base model (the folder above) instead of nothing.
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(config_path) as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = ".."
    # PEFT keeps target_modules as a set; sorted, reruns write the same file.
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
    with open(config_path, "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    # Reload base + adapter from disk, as a user of the files would.
    base = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    with_adapter = PeftModel.from_pretrained(base, adapter_dir)
    with_adapter.eval()
    check_padding(with_adapter, case_list, f"{arch}+adapter")
    adapted = [logits_of(with_adapter, case) for case in case_list]
    merged = with_adapter.merge_and_unload()
    merged.eval()
    merged_logits = [logits_of(merged, case) for case in case_list]
    entries = []
    for case, a, m in zip(case_list, adapted, merged_logits):
        real = np.array(case["attention_mask"], dtype=bool)
        diff = float(np.abs(a[real] - m[real]).max())
        assert diff < 1e-4, f"{arch}: merged logits differ from the adapter's by {diff}"
        plain = np.array(entries_of(out, case["name"]), dtype=np.float64)
        assert np.abs(a[real] - plain).max() > 1e-2, f"{arch}: the adapter changes nothing"
        entry = dict(case)
        entry["logits"] = to_json(a, case["attention_mask"])
        entry["merged_logits"] = to_json(m, case["attention_mask"])
        entries.append(entry)
    write_json(os.path.join(adapter_dir, "expected.json"), expected_doc(arch, config, entries))


def entries_of(out, name):
    """The base model's logits at real positions of one case, from expected.json."""
    with open(os.path.join(out, "expected.json")) as f:
        doc = json.load(f)
    case = next(c for c in doc["cases"] if c["name"] == name)
    return [v for row in case["logits"] for v in row if v is not None]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    for arch in ("llama", "qwen2", "qwen3"):
        build(arch, sys.argv[1])
        print(f"tiny_{arch} written", file=sys.stderr)


if __name__ == "__main__":
    main()
