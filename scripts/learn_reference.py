"""The reference of `rft bench learn --reference`: TRL's GRPOTrainer (PyTorch, CPU, PEFT LoRA)
trained on the same job as OpenRFT's, validated the same way.

Usage: learn_reference.py REQUEST.json RESULT.json. The request (written by the `rft` command)
holds the GGUF path, the `rft` binary and the job's grader file, the training and validation
rows (chat messages and the item each is graded against), and the job's resolved settings:
prompts per step, group size, steps, learning rate and schedule, loss type and clipping,
reward scaling, truncation masking, iterations, temperature, completion tokens, LoRA rank and
alpha, gradient clip, validation interval and samples, seed, and whether to run in bf16.

Both sides are graded by the same grader: every reward and validation score here comes from
`rft grade` on the job's grader file, so the comparison measures learning, not grading.
Validation runs before training and every `eval_interval` steps (and after the last): each
validation row sampled `eval_samples` times at the job's temperature, the mean reward and its
standard error over all samples (as the trainer's `valid_reward_mean` / `valid_reward_stderr`),
and one greedy answer per row (`valid_greedy_reward_mean`).

Result: versions, wall seconds, per step the mean train reward, and the validation points.
Environment: scripts/bench_env.sh builds .venv-bench (scripts/grpo-requirements.txt).
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Grader:
    """The job's grader, through `rft grade` (one process per batch of samples)."""

    def __init__(self, rft, grader_path, workdir):
        self.rft, self.grader_path, self.workdir = rft, grader_path, workdir

    def grade(self, texts, items):
        requests = os.path.join(self.workdir, "grade-in.jsonl")
        results = os.path.join(self.workdir, "grade-out.jsonl")
        with open(requests, "w") as f:
            for text, item in zip(texts, items):
                f.write(json.dumps({"model_sample": text, "item": item}) + "\n")
        subprocess.run(
            [self.rft, "grade", "--grader", self.grader_path, "--input", requests, "--output", results],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(results) as f:
            return [float(json.loads(line).get("reward") or 0.0) for line in f if line.strip()]


def standard_error(values):
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def main(request_path, result_path):
    with open(request_path) as f:
        req = json.load(f)
    import torch

    torch.set_num_threads(req["threads"])
    torch.manual_seed(req["seed"])
    import datasets
    import peft
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    gguf = req["gguf"]
    started = time.perf_counter()
    bf16 = bool(req.get("bf16"))
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf),
        gguf_file=os.path.basename(gguf),
        dtype=torch.bfloat16 if bf16 else torch.float32,
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    workdir = tempfile.mkdtemp(prefix="rft-learn-")
    grader = Grader(req["rft"], req["grader"], workdir)
    log(f"TRL {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")

    train_rewards = []

    def reward(completions, item_json, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        items = [json.loads(i) for i in item_json]
        rewards = grader.grade(texts, items)
        train_rewards.append(sum(rewards) / max(len(rewards), 1))
        return rewards

    h = req["hyper"]
    group, steps, prompts = h["group_size"], h["steps"], h["batch_size"]
    rows = [{"prompt": r["messages"], "item_json": json.dumps(r["item"])} for r in req["train"]]
    batch = prompts * group
    micro_batch = req.get("micro_batch") or batch
    if batch % micro_batch:
        raise SystemExit(f"micro_batch {micro_batch} does not divide the batch of {batch}")
    config = GRPOConfig(
        output_dir=os.path.join(workdir, "trl-out"),
        use_cpu=True,
        bf16=bf16,
        fp16=False,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=batch // micro_batch,
        num_generations=group,
        max_completion_length=h["max_completion_tokens"],
        temperature=h["temperature"],
        top_p=1.0,
        top_k=0,
        loss_type=h["loss_type"],
        epsilon=h["epsilon"],
        epsilon_high=h["epsilon_high"],
        scale_rewards=h["scale_rewards"],
        mask_truncated_completions=h["mask_truncated"],
        beta=h["beta"],
        num_iterations=h["num_iterations"],
        learning_rate=h["learning_rate"],
        lr_scheduler_type=h["lr_schedule"],
        warmup_steps=h["warmup_steps"],
        max_grad_norm=h["max_grad_norm"],
        weight_decay=h["weight_decay"],
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=req["seed"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = peft.LoraConfig(
        r=h["lora_rank"],
        lora_alpha=h["lora_alpha"],
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )

    valid = req["valid"]
    valid_prompts = [
        tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)
        for r in valid
    ]
    points = []

    def answers(model, **sampling):
        """Every validation row's answers, `num_return_sequences` per row (1 by default)."""
        texts = []
        for start in range(0, len(valid), 8):
            chunk = valid_prompts[start : start + 8]
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **encoded,
                max_new_tokens=h["max_completion_tokens"],
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            width = encoded["input_ids"].shape[1]
            texts += [tokenizer.decode(s[width:], skip_special_tokens=True) for s in out]
        return texts

    def validate(model, step):
        samples = h["eval_samples"]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            texts = answers(
                model,
                do_sample=h["temperature"] > 0,
                temperature=h["temperature"] if h["temperature"] > 0 else None,
                top_p=1.0,
                top_k=0,
                num_return_sequences=samples,
            )
            items = [row["item"] for row in valid for _ in range(samples)]
            # One greedy answer per row, as the trainer's `valid_greedy_reward_mean`.
            greedy_texts = answers(model, do_sample=False)
        if was_training:
            model.train()
        rewards = grader.grade(texts, items)
        greedy = grader.grade(greedy_texts, [r["item"] for r in valid])
        point = {
            "step": step,
            "mean": sum(rewards) / len(rewards),
            "stderr": standard_error(rewards),
            "greedy": sum(greedy) / len(greedy),
            "seconds": time.perf_counter() - started,
        }
        points.append(point)
        log(
            f"TRL validation at step {step}: {point['mean']:.3f} ± {point['stderr']:.3f}"
            f" (greedy {point['greedy']:.3f})"
        )

    class Validation(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            validate(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if step % h["eval_interval"] == 0 or step == steps:
                validate(model, step)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows * h["epochs_of_rows"]),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Validation()],
    )
    trainer.train()
    result = {
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
        },
        "wall_seconds": time.perf_counter() - started,
        "train_rewards": train_rewards,
        "validation": points,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
