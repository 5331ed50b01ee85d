#!/usr/bin/env python3
"""Writes the legal_excerpts example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("pull facts into a clean format", the legal claims case): a short
lease, written as one paragraph of five clauses, and a claim about it; the
model replies with the one sentence of the lease that supports the claim,
copied word for word. The grader pays for the exact sentence and gives
partial credit by word overlap (ROUGE-L), so a reply that copies the whole
paragraph or paraphrases earns little.

The leases are made up from templates for this example. Written for this
project (Apache-2.0). Standard library only, fixed seed: the same bytes on
every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, split, write_example  # noqa: E402

SEED = 16005
SYSTEM = ("Quote the one sentence of the lease that supports the claim, word "
          "for word. Reply with that sentence only.")
PEOPLE = ["Ada Ruiz", "Ben Okafor", "Chen Li", "Dora Novak", "Emil Berg", "Fatima Zahra",
          "Gina Rossi", "Hugo Lund", "Iris Kahn", "Jon Eide"]

# topic: (sentence template, claim template)
CLAUSES = {
    "notice": ("Either party may end this lease with {n} days written notice.",
               "The lease can be ended with {n} days notice."),
    "rent": ("The monthly rent is {r} euros, due on the first day of each month.",
             "Rent of {r} euros is due every month."),
    "deposit": ("The tenant pays a deposit of {d} euros, returned within {w} weeks of moving out.",
                "The deposit comes back within {w} weeks."),
    "pets": ("The tenant may keep {p} in the flat.",
             "The tenant is allowed {p}."),
    "repairs": ("The landlord repairs the {x} within {k} days of being told.",
                "Repairs to the {x} are the landlord's job."),
    "sublet": ("The tenant may not sublet the flat without written consent.",
               "Subletting needs the landlord's consent."),
    "term": ("This lease runs for {m} months from the start date.",
             "The lease lasts {m} months."),
}
PETS = ["one cat", "one small dog", "two cats", "no pets other than fish"]
PARTS = ["heating", "roof", "boiler", "windows", "plumbing"]


def fill(rng):
    return {"n": rng.choice([30, 60, 90]), "r": rng.choice([650, 720, 880, 940, 1100]),
            "d": rng.choice([1000, 1500, 2000]), "w": rng.choice([2, 4, 6]),
            "p": rng.choice(PETS), "x": rng.choice(PARTS), "k": rng.choice([7, 14, 30]),
            "m": rng.choice([6, 12, 24])}


EXAMPLE_USER = ("Lease: The flat is let to Ola Moe. The monthly rent is 500 euros, due on the "
                "first day of each month. The tenant may keep one cat in the flat.\n"
                "Claim: The tenant is allowed one cat.")
EXAMPLE_REPLY = "The tenant may keep one cat in the flat."


def make_row(rng, topic):
    values = fill(rng)
    others = rng.sample([t for t in CLAUSES if t != topic], 3)
    topics = [topic] + others
    rng.shuffle(topics)
    person = rng.choice(PEOPLE)
    sentences = [f"The flat is let to {person}."] + [CLAUSES[t][0].format(**values) for t in topics]
    lease = " ".join(sentences)
    answer = CLAUSES[topic][0].format(**values)
    claim = CLAUSES[topic][1].format(**values)
    return {
        "messages": chat(SYSTEM, [(EXAMPLE_USER, EXAMPLE_REPLY)], f"Lease: {lease}\nClaim: {claim}"),
        "answer": answer,
        "topic": topic,
    }


def main():
    train, valid = split(SEED, make_row, cycle=list(CLAUSES), per_draw=True)
    grader = {
        "type": "multi",
        "name": "legal_excerpts",
        "graders": {
            "exact": {"type": "string_check", "name": "exact",
                      "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
                      "operation": "eq"},
            "overlap": {"type": "text_similarity", "name": "overlap",
                        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
                        "evaluation_metric": "rouge_l"},
        },
        "calculate_output": "0.4 * exact + 0.6 * overlap ^ 2",
    }
    write_example(HERE, train, valid, grader, job(grader, "legal_excerpts", 32))


if __name__ == "__main__":
    main()
