"""The reference of `rft bench grpo --reference`: TRL's GRPOTrainer (PyTorch, CPU, PEFT LoRA) on
the same GGUF weights, prompts, group size, completion length and LoRA shape as OpenRFT's step.

Usage: grpo_reference.py REQUEST.json RESULT.json. The request (written by the `rft` command)
holds the GGUF path, the chat messages and reference answers of the prompts, the group size, the
completion tokens, the steps, the thread count and the LoRA/optimiser settings. Progress goes to
stderr; the result is a JSON object with the versions and, per step, the seconds spent sampling
(`transformers.generate`), grading (the reward function), and in the rest of the step (log-prob
forward, loss, backward, optimiser: "training").

The request's `micro_batch` sets TRL's `per_device_train_batch_size`; the accumulation steps
make up the rest of the batch (`prompts × group / micro_batch`), and TRL then generates the
whole batch in one `generate` call (its default `steps_per_generation` is the accumulation
count), so only the training half changes with it. `rft bench grpo --reference` runs one
process per micro-batch size and reports the fastest.

The phases are read from TRL's own profiling hooks (`trl.extras.profiling.ProfilingContext`),
which time `transformers.generate` and `_calculate_rewards` around exactly those calls; the step
total comes from a TrainerCallback (`on_step_begin` → `on_step_end`). Completions are forced to
the full length (`min_new_tokens`), as on the Rust side, so both engines do the same work,
unless the request says `natural_length` (then both sides stop at end-of-sequence and the
token counts are reported per step).
Environment: scripts/bench_env.sh builds .venv-bench (scripts/grpo-requirements.txt).
"""

import json
import os
import re
import sys
import time
from collections import Counter, defaultdict

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rouge1_f(candidate, reference):
    """ROUGE-1 F1 with rouge-score's default tokeniser (lower-case alphanumeric runs), the
    metric the quickstart grader's `concise` part uses."""
    cand = re.findall(r"[a-z0-9]+", candidate.lower())
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    if not cand or not ref:
        return 0.0
    overlap = sum((Counter(cand) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(cand), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def main(request_path, result_path):
    with open(request_path) as f:
        req = json.load(f)
    import torch

    torch.set_num_threads(req["threads"])
    import datasets
    import peft
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    # TRL times its phases but only reports them to wandb/mlflow/trackio: record them here.
    phases = defaultdict(float)
    original_log = profiling.ProfilingContext._log_metrics

    def record(self, duration):
        phases[self.name.split(".", 1)[-1]] += duration
        return original_log(self, duration)

    profiling.ProfilingContext._log_metrics = record

    gguf = req.get("gguf")
    model_dir = req.get("model_dir")
    bf16 = bool(req.get("bf16", False))
    dtype = torch.bfloat16 if bf16 else torch.float32
    start = time.perf_counter()
    if model_dir:
        # A Hugging Face folder (a real shape with random weights, `rft bench grpo --shape`).
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=dtype
        )
        # transformers dequantises GGUF weights to plain float32 tensors on load but keeps the
        # quantizer's flag, which makes Trainer refuse to train; drop the flag with its own method.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tokenizer = AutoTokenizer.from_pretrained(
            os.path.dirname(gguf), gguf_file=os.path.basename(gguf)
        )
    if str(req.get("device", "cpu")).startswith("cuda"):
        model = model.to("cuda")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log(
        f"TRL {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads): model loaded and "
        f"dequantised in {time.perf_counter() - start:.1f} s"
    )

    grading_seconds = [0.0]
    sampled_tokens = [0]

    def reward(completions, answer, completion_ids=None, **_):
        begin = time.perf_counter()
        sampled_tokens[0] += sum(len(ids) for ids in completion_ids or [])
        out = []
        for completion, reference in zip(completions, answer):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            text = text.strip()
            out.append(0.5 * float(text == reference) + 0.5 * rouge1_f(text, reference))
        grading_seconds[0] += time.perf_counter() - begin
        return out

    group, steps = req["group_size"], req["steps"]
    rows = [{"prompt": p["messages"], "answer": p["answer"]} for p in req["prompts"]]
    # Enough rows for every step to take a fresh batch of the same prompts.
    dataset = datasets.Dataset.from_list(rows * steps)
    batch = len(rows) * group
    micro_batch = req.get("micro_batch") or batch
    if batch % micro_batch:
        raise SystemExit(f"micro_batch {micro_batch} does not divide the batch of {batch}")
    natural = bool(req.get("natural_length"))
    generation_kwargs = {} if natural else {"min_new_tokens": req["completion_tokens"]}
    config = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(result_path), "trl-out"),
        bf16=bf16,
        use_cpu=not str(req.get("device", "cpu")).startswith("cuda"),
        fp16=False,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=batch // micro_batch,
        num_generations=group,
        max_completion_length=req["completion_tokens"],
        generation_kwargs=generation_kwargs,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        loss_type=req["loss_type"],
        epsilon=req["epsilon"],
        epsilon_high=req["epsilon_high"],
        beta=0.0,
        num_iterations=1,
        learning_rate=req["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=req["max_grad_norm"],
        weight_decay=0.0,
        max_steps=steps,
        shuffle_dataset=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=req["seed"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = peft.LoraConfig(
        r=req["lora_rank"],
        lora_alpha=req["lora_alpha"],
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )

    per_step = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            phases.clear()
            grading_seconds[0] = 0.0
            sampled_tokens[0] = 0
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - self.begin
            sampling = phases.get("transformers.generate", 0.0)
            grading = grading_seconds[0]
            # Everything else in the step: TRL's input preparation (tokenising, padding), the
            # log-prob forward, loss, backward and optimiser step.
            per_step.append(
                {
                    "sampling": sampling,
                    "grading": grading,
                    "training": total - sampling - grading,
                    "total": total,
                    "completion_tokens": sampled_tokens[0],
                }
            )
            log(f"TRL step {state.global_step}: {per_step[-1]}")

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[StepTimer()],
    )
    def count_tokens(messages):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    prompt_tokens = [count_tokens(r["prompt"]) for r in rows]
    trainer.train()
    result = {
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
        },
        "threads": torch.get_num_threads(),
        "micro_batch": micro_batch,
        "gradient_accumulation_steps": batch // micro_batch,
        "prompt_tokens": prompt_tokens,
        "steps": per_step,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
