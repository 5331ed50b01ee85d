#!/usr/bin/env python3
"""Writes the tax_reasoning example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("apply complex rules correctly", the tax analysis case): a made-up
deduction table keyed by two facts (filing status and an age band), and a
taxpayer described in words ("Dev is 71, so 65 or older, and files as head
of household"); the model replies with the one amount the rules give. Doing
it right takes both facts: the status picks two rows of the six, the age
band one of them. The amounts and the order of the table's rows are drawn
afresh for every row, so no amount or position is worth memorising and the
worked example's amount never fits.

grader.py gives partial credit by rule: the right amount 1, the amount for
the right status but the wrong age band 0.3, for the right age band but the
wrong status 0.1, anything else 0; plus a little for the amount alone.

The 135M default model cannot do the multi-digit arithmetic an earlier
version of this example asked for (income minus a deduction, a percentage
of an amount): trained on it, it learned the format and never the sums.
Applying a rule table is the part of tax reasoning the seed's graders can
check exactly and a small model can learn.

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
SYSTEM = "Apply the rules. Reply with the amount only, as a whole number."
NAMES = ["Ana", "Ben", "Carla", "Dev", "Elif", "Finn", "Greta", "Hao", "Ines", "Jonas"]
STATUSES = ["single", "married filing jointly", "head of household"]
BANDS = ["under 65", "65 or older"]


def table_text(amounts, order):
    lines = ["Rule: the standard deduction depends on filing status and age."]
    for status, band in order:
        lines.append(f"{status}, {band}: {amounts[(status, band)]}")
    return "\n".join(lines)


def shuffled_cases(rng):
    # A fresh row order for every table: with the rows always in one order the 135M model
    # settled on copying the first amount (right for one case in six, partly right for more).
    cases = [(status, band) for status in STATUSES for band in BANDS]
    rng.shuffle(cases)
    return cases


def draw_amounts(rng):
    values = rng.sample(range(8000, 40001, 50), len(STATUSES) * len(BANDS))
    keys = [(status, band) for status in STATUSES for band in BANDS]
    return dict(zip(keys, values))


def person(rng, status, band):
    age = rng.randrange(22, 65) if band == "under 65" else rng.randrange(65, 91)
    return rng.choice(NAMES), age, status


def question(name, age, status):
    band = "65 or older" if age >= 65 else "under 65"
    return (f"{name} is {age}, so {band}, and files as {status}. "
            f"What is {name}'s standard deduction?")


def example_turn(rng, avoid):
    amounts = draw_amounts(rng)
    while set(amounts.values()) & avoid:
        amounts = draw_amounts(rng)
    name, age, status = "Omar", 45, "single"
    return (table_text(amounts, shuffled_cases(rng)) + "\n" + question(name, age, status),
            str(amounts[("single", "under 65")]))


def make_row(rng, status, band):
    amounts = draw_amounts(rng)
    name, age, _ = person(rng, status, band)
    example_user, example_reply = example_turn(rng, set(amounts.values()))
    same_status = [amounts[(status, b)] for b in BANDS if b != band]
    same_band = [amounts[(s, band)] for s in STATUSES if s != status]
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": example_user},
            {"role": "assistant", "content": example_reply},
            {"role": "user",
             "content": table_text(amounts, shuffled_cases(rng)) + "\n" + question(name, age, status)},
        ],
        "answer": amounts[(status, band)],
        "same_status": same_status,
        "same_band": same_band,
        "status": status,
        "band": band,
    }


def rows(rng, n, seen):
    out = []
    cases = [(status, band) for status in STATUSES for band in BANDS]
    i = 0
    while len(out) < n:
        # Every status and band in turn: no row of the table is the best guess.
        row = make_row(rng, *cases[i % len(cases)])
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


def write_job(grader, suffix, max_tokens=12, epochs=3):
    # Three passes over the 48 rows: in one pass (12 steps) the 135M model learns to answer
    # with an amount from the table, and it takes more steps to learn which one.
    job = {
        "model": "smollm2-135m-instruct",
        "training_file": "train.jsonl",
        "validation_file": "valid.jsonl",
        "suffix": suffix,
        "seed": 7,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": grader,
            "hyperparameters": {
                "batch_size": 4, "n_epochs": epochs, "compute_multiplier": 1,
                "eval_interval": 12 * epochs, "eval_samples": 4,
                "learning_rate_multiplier": 2, "lora_rank": 16,
                "max_completion_tokens": max_tokens,
            }}},
    }
    with open(os.path.join(HERE, "job.json"), "w") as f:
        json.dump(job, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
