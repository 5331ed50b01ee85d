#!/usr/bin/env python3
"""Measures the base model on the quickstart task, with the tools OpenRFT has.

For each row of valid.jsonl it samples completions with `rft generate` (as the
trainer does: 8 samples, temperature 1, at most job.json's max_completion_tokens
new tokens), grades them all
with `rft grade --grader grader.json`, and prints the mean reward, the spread,
the share of rows whose samples all got the same reward (rows GRPO learns
nothing from), a histogram of rewards, and the greedy (temperature 0) reward.

    python3 examples/quickstart/baseline.py [--rft target/release/rft] [--show]

Standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def generate(args, messages, n, temperature):
    cmd = [args.rft, "generate", "--model", args.model, "--messages", json.dumps(messages),
           "--temperature", str(temperature), "--n", str(n), "--max-tokens", str(args.max_tokens),
           "--seed", str(args.seed), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def grade(args, pairs, keep=None):
    """pairs: [(sample_text, item)] -> [reward]; keep: also write the requests there."""
    with tempfile.TemporaryDirectory() as tmp:
        path = keep or os.path.join(tmp, "requests.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for text, item in pairs:
                f.write(json.dumps({"model_sample": text, "item": item}) + "\n")
        out = subprocess.run([args.rft, "grade", "--grader", args.grader, "--input", path],
                             capture_output=True, text=True, check=True).stdout
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r.get("reward", 0.0) for r in results]


def job_max_tokens():
    try:
        with open(os.path.join(HERE, "job.json"), encoding="utf-8") as f:
            job = json.load(f)
        return int(job["method"]["reinforcement"]["hyperparameters"]["max_completion_tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return 32


def histogram(rewards, bins=10):
    counts = [0] * bins
    for r in rewards:
        counts[min(bins - 1, max(0, int(r * bins)))] += 1
    width = max(counts) or 1
    for i, c in enumerate(counts):
        print("  [{:.1f}, {:.1f}{} {:4d} {}".format(i / bins, (i + 1) / bins, "]" if i == bins - 1 else ")",
                                                c, "#" * round(40 * c / width)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rft", default=os.path.join(HERE, "..", "..", "target", "release", "rft"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=os.path.join(HERE, "valid.jsonl"))
    p.add_argument("--grader", default=os.path.join(HERE, "grader.json"))
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=job_max_tokens(),
                   help="default: max_completion_tokens of job.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="only the first N rows")
    p.add_argument("--no-greedy", action="store_true")
    p.add_argument("--show", action="store_true", help="print every sample and its reward")
    p.add_argument("--requests", help="also write the graded samples here, as rft grade --input takes them")
    args = p.parse_args()

    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    if args.limit:
        rows = rows[:args.limit]
    items = [{k: v for k, v in row.items() if k != "messages"} for row in rows]

    samples, greedy, prompt_lens, truncated = [], [], [], 0
    for i, row in enumerate(rows):
        outs = generate(args, row["messages"], args.n, args.temperature)
        prompt_lens.append(len(outs[0]["prompt_ids"]))
        truncated += sum(o["finish_reason"] == "length" for o in outs)
        samples.append([o["text"] for o in outs])
        if not args.no_greedy:
            greedy.append(generate(args, row["messages"], 1, 0.0)[0]["text"])
        print("row {}/{}".format(i + 1, len(rows)), file=sys.stderr, end="\r")
    print(file=sys.stderr)

    flat = grade(args, [(t, items[i]) for i, texts in enumerate(samples) for t in texts], args.requests)
    per_row = [flat[i * args.n:(i + 1) * args.n] for i in range(len(rows))]

    if args.show:
        for i, row in enumerate(rows):
            print("--- {!r} -> {!r}".format(row["messages"][-1]["content"], items[i]["answer"]))
            for t, r in zip(samples[i], per_row[i]):
                print("  {:.2f} {!r}".format(r, t))
            if greedy:
                print("  greedy: {!r}".format(greedy[i]))

    row_means = [statistics.mean(r) for r in per_row]
    row_stds = [statistics.pstdev(r) for r in per_row]
    flat_rows = sum(1 for r in per_row if max(r) - min(r) < 1e-9)
    print("rows: {}, samples per row: {}, temperature {}, max tokens {}".format(
        len(rows), args.n, args.temperature, args.max_tokens))
    print("prompt tokens (chat template included): min {} mean {:.1f} max {}".format(
        min(prompt_lens), statistics.mean(prompt_lens), max(prompt_lens)))
    print("mean reward: {:.3f}  (std over samples {:.3f}, std of row means {:.3f})".format(
        statistics.mean(flat), statistics.pstdev(flat), statistics.pstdev(row_means)))
    print("mean within-row std: {:.3f}".format(statistics.mean(row_stds)))
    print("rows whose samples all got the same reward: {}/{} ({:.0%})".format(
        flat_rows, len(rows), flat_rows / len(rows)))
    print("exact answers: {:.1%} of samples; cut off at max tokens: {:.1%}".format(
        sum(1 for r in flat if r >= 0.999) / len(flat), truncated / len(flat)))
    print("reward histogram:")
    histogram(flat)
    if greedy:
        g = grade(args, [(t, items[i]) for i, t in enumerate(greedy)])
        print("greedy (temperature 0) mean reward: {:.3f}, exact {}/{}".format(
            statistics.mean(g), sum(1 for r in g if r >= 0.999), len(g)))


if __name__ == "__main__":
    main()
