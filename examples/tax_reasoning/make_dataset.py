#!/usr/bin/env python3
"""Writes the tax_reasoning example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("apply complex rules correctly", the tax analysis case): a made-up
standard-deduction table by filing status (five statuses, two of them
"married filing ..."), and a taxpayer's status; the model replies with the
one amount the rule gives. The amounts and the order of the table's rows are
drawn afresh for every row, so no amount or position is worth memorising and
the worked example's amount never fits.

grader.py gives 1 for the right amount, 0.1 for another amount of the table
(the model read the table, not the status), 0 for anything else; plus a
little for the amount alone.

Two earlier versions did not train on the 135M default model. The first
asked for arithmetic (income minus a deduction, a percentage, tax minus a
credit): it learned to answer with a bare number, never the sums. The second
keyed the table by two facts (status and an age band, six rows): with the
rows in a fixed order it settled on copying the first amount; with the rows
shuffled its validation reward did not move (0.264 to 0.290 in 12 steps,
0.264 to 0.321 in 36), while its training reward rose on rows it had seen.
Matching one fact against a table is what this model learns here.

The rules are invented for this example, not any country's tax law. Written
for this project (Apache-2.0). Standard library only, fixed seed: the same
bytes on every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, python_grader, split, write_example  # noqa: E402

SEED = 16006
SYSTEM = "Apply the rules. Reply with the amount only, as a whole number."
NAMES = ["Ana", "Ben", "Carla", "Dev", "Elif", "Finn", "Greta", "Hao", "Ines", "Jonas"]
STATUSES = ["single", "married filing jointly", "married filing separately",
            "head of household", "qualifying surviving spouse"]


def table_text(amounts, order):
    lines = ["Rule: the standard deduction depends on the filing status."]
    for status in order:
        lines.append(f"{status}: {amounts[status]}")
    return "\n".join(lines)


def shuffled_statuses(rng):
    # A fresh row order for every table: with the rows always in one order the 135M model
    # settled on copying the first amount.
    order = list(STATUSES)
    rng.shuffle(order)
    return order


def draw_amounts(rng):
    return dict(zip(STATUSES, rng.sample(range(8000, 40001, 50), len(STATUSES))))


def question(name, status):
    return f"{name} files as {status}. What is {name}'s standard deduction?"


def example_turn(rng, avoid):
    amounts = draw_amounts(rng)
    while set(amounts.values()) & avoid:
        amounts = draw_amounts(rng)
    return (table_text(amounts, shuffled_statuses(rng)) + "\n" + question("Omar", "single"),
            str(amounts["single"]))


def make_row(rng, status):
    amounts = draw_amounts(rng)
    name = rng.choice(NAMES)
    example_user, example_reply = example_turn(rng, set(amounts.values()))
    return {
        "messages": chat(
            SYSTEM, [(example_user, example_reply)],
            table_text(amounts, shuffled_statuses(rng)) + "\n" + question(name, status)),
        "answer": amounts[status],
        "other_amounts": [amounts[s] for s in STATUSES if s != status],
        "status": status,
    }


def main():
    # Every status in turn: no row of the table is the best guess.
    train, valid = split(SEED, make_row, cycle=STATUSES)
    grader = python_grader(HERE, "tax_reasoning")
    write_example(HERE, train, valid, grader, job(grader, "tax_reasoning", 12))


if __name__ == "__main__":
    main()
