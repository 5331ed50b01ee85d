"""The cookbook's minimal RL loop (`tinker_cookbook.recipes.rl_loop.main`) against `rft serve`.

Usage: tinker_rl_loop.py BASE_URL API_KEY MODEL TRAIN.jsonl GRADER.json LOG_DIR STEPS [BATCH GROUP]

The loop runs unchanged; what the recipe hard-codes that cannot run offline is swapped, and
only that:
- the data: the recipe loads GSM8K from the Hugging Face hub; here `datasets.load_dataset`
  returns the quickstart task's rows (question = the row's last user message);
- the reward: the recipe grades GSM8K's `\\boxed{}` answers; here each completion is graded by
  the quickstart task's own grader, through the server's `graders/run`;
- the tokenizer and renderer: the recipe looks the model up in the cookbook's registry of
  hosted models; here the tokenizer is the one the SDK's `get_tokenizer()` loads (from the
  folder `get_info` names) and the renderer the ChatML one the model's template uses.

Prints each step's `reward/total` as `step N reward R`, then OK.
"""

import json
import os
import sys
import urllib.request

import datasets

from tinker_cookbook import tokenizer_utils
from tinker_cookbook.recipes import rl_loop

base_url, api_key, model, train_path, grader_path, log_dir, steps = sys.argv[1:8]
steps = int(steps)
batch_size, group_size = (int(v) for v in (sys.argv[8:10] or ["8", "8"]))
# How a user points the SDK at OpenRFT (docs/tinker.md).
os.environ["TINKER_API_KEY"] = api_key
os.environ["TINKER_BASE_URL"] = base_url

rows = [json.loads(line) for line in open(train_path) if line.strip()]
questions = [r["messages"][-1]["content"] for r in rows]
answers = [r["answer"] for r in rows]
grader = json.load(open(grader_path))


def load_dataset(*args, **kwargs):
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"question": questions, "answer": answers})}
    )


def grade(response: str, answer: str) -> float:
    body = json.dumps(
        {"grader": grader, "item": {"answer": answer}, "model_sample": response}
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/v1/fine_tuning/alpha/graders/run",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return float(json.load(reply)["reward"])


# The tokenizer, loaded by the SDK from the server's get_info.
import tinker  # noqa: E402

service = tinker.ServiceClient(base_url=base_url, api_key=api_key)
probe = service.create_lora_training_client(base_model=model, rank=1).result()
tokenizer = probe.get_tokenizer()
service.close("success").result()
tokenizer_utils.register_tokenizer(model, lambda: tokenizer)

rl_loop.datasets.load_dataset = load_dataset
rl_loop.get_reward = grade
rl_loop.model_info.get_recommended_renderer_name = lambda name: "qwen3_instruct"

config = rl_loop.Config(
    base_url=base_url,
    log_path=log_dir,
    model_name=model,
    batch_size=batch_size,
    group_size=group_size,
    learning_rate=2e-3,
    lora_rank=16,
    save_every=0,
    max_tokens=16,
    loss_fn="importance_sampling",
    max_steps=steps,
)
rl_loop.main(config)

with open(f"{log_dir}/metrics.jsonl") as f:
    metrics = [json.loads(line) for line in f if line.strip()]
for m in metrics:
    if "reward/total" in m:
        print(f"step {m.get('step', m.get('progress/batch'))} reward {m['reward/total']:.4f}", flush=True)
print("OK")
