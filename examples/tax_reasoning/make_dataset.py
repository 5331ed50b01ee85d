#!/usr/bin/env python3
"""Writes the tax_reasoning example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("apply complex rules correctly", the tax analysis case): a made-up
tax rule and a taxpayer's figures; the model replies with one number, the
amount asked for. Three kinds of question: taxable income (income minus the
deduction), tax at a flat rate on a taxable income, and tax due after a
credit. grader.py gives partial credit by closeness, so an answer off by 5%
still earns most of the reward and a number copied from the prompt earns
little.

The rules are invented for this example, not any country's tax law. Written
for this project (Apache-2.0). Standard library only, fixed seed: the same
bytes on every run.
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 16006
N_TRAIN = 48
N_VALID = 24
SYSTEM = "Apply the rule. Reply with the amount only, as a whole number."
NAMES = ["Ana", "Ben", "Carla", "Dev", "Elif", "Finn", "Greta", "Hao", "Ines", "Jonas"]
EXAMPLE_USER = ("Rule: taxable income is income minus a deduction of 10000.\n"
                "Omar earned 45000. What is his taxable income?")
EXAMPLE_REPLY = "35000"


def make_row(rng, kind):
    name = rng.choice(NAMES)
    if kind == "taxable":
        deduction = rng.choice([8000, 12000, 15000])
        income = rng.randrange(30000, 90001, 1000)
        rule = f"taxable income is income minus a deduction of {deduction}."
        question = f"{name} earned {income}. What is the taxable income?"
        answer = income - deduction
    elif kind == "flat":
        rate = rng.choice([10, 20, 25, 50])
        taxable = rng.randrange(20000, 80001, 2000)
        rule = f"tax is {rate}% of taxable income."
        question = f"{name} has a taxable income of {taxable}. How much tax is due?"
        answer = taxable * rate // 100
    else:
        tax = rng.randrange(3000, 20001, 500)
        credit = rng.choice([500, 1000, 1500, 2000])
        rule = "the tax due is the tax minus any credit."
        question = f"{name}'s tax is {tax} and {name} has a credit of {credit}. What tax is due?"
        answer = tax - credit
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": EXAMPLE_USER},
            {"role": "assistant", "content": EXAMPLE_REPLY},
            {"role": "user", "content": f"Rule: {rule}\n{question}"},
        ],
        "answer": answer,
        "kind": kind,
    }


def rows(rng, n, seen):
    out = []
    kinds = ["taxable", "flat", "credit"]
    i = 0
    while len(out) < n:
        row = make_row(rng, kinds[i % len(kinds)])
        i += 1
        key = row["messages"][-1]["content"]
        if key in seen:
            continue
        seen.add(key)
        out.append(row)
    rng.shuffle(out)
    return out


def main():
    rng = random.Random(SEED)
    seen = set()
    valid = rows(rng, N_VALID, seen)
    train = rows(rng, N_TRAIN, seen)
    write_common(train, valid, "tax_reasoning")


def write_common(train, valid, suffix):
    for name, data in (("train.jsonl", train), ("valid.jsonl", valid)):
        with open(os.path.join(HERE, name), "w") as f:
            for row in data:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    with open(os.path.join(HERE, "grader.py")) as f:
        source = f.read()
    grader = {"type": "python", "name": suffix, "source": source}
    with open(os.path.join(HERE, "grader.json"), "w") as f:
        json.dump(grader, f, indent=2)
        f.write("\n")
    write_job(grader, suffix)


def write_job(grader, suffix, max_tokens=16):
    job = {
        "model": "smollm2-135m-instruct",
        "training_file": "train.jsonl",
        "validation_file": "valid.jsonl",
        "suffix": suffix,
        "seed": 7,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": grader,
            "hyperparameters": {
                "batch_size": 4, "n_epochs": 1, "compute_multiplier": 1,
                "eval_interval": 12, "eval_samples": 4,
                "learning_rate_multiplier": 5, "lora_rank": 16,
                "max_completion_tokens": max_tokens,
            }}},
    }
    with open(os.path.join(HERE, "job.json"), "w") as f:
        json.dump(job, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
