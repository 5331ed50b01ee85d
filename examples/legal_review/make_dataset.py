#!/usr/bin/env python3
"""Writes the legal_review example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("apply complex rules correctly", the legal review and comparison
case): two versions of a contract clause that differ in one term; the model
replies with a one-line summary of the change, "term: old -> new". The grader
mixes a deterministic check (ROUGE-L word overlap with the reference summary)
with an LLM judge (score_model) that reads the reference and the summary and
scores whether the change is stated right, with few-shot examples of great,
fair and poor summaries in its prompt. `rft example run legal_review` points
the judge at an `rft serve` it starts on this machine (RFT_JUDGE_BASE_URL).

The clauses are made up from templates for this example. Written for this
project (Apache-2.0). Standard library only, fixed seed: the same bytes on
every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, split, write_example  # noqa: E402

SEED = 16008
SYSTEM = ("Compare the two versions of the clause. Reply with one line: "
          "term: old value -> new value.")

# term: (clause template, values)
TERMS = {
    "notice period": ("Either party may end the contract with {v} written notice.",
                      ["30 days", "60 days", "90 days", "two weeks"]),
    "payment terms": ("Invoices are payable within {v} of receipt.",
                      ["14 days", "30 days", "45 days", "60 days"]),
    "liability cap": ("Total liability under this contract is capped at {v}.",
                      ["10000 euros", "50000 euros", "the fees paid", "twice the fees paid"]),
    "governing law": ("This contract is governed by the laws of {v}.",
                      ["Norway", "Ireland", "Portugal", "Austria"]),
    "term": ("The contract runs for {v} from signature.",
             ["one year", "two years", "six months", "three years"]),
    "late fee": ("Late payments carry interest of {v} per month.",
                 ["1%", "2%", "1.5%", "3%"]),
}
COMPANIES = ["Nordlys AS", "Brightwater Ltd", "Casa Verde Lda", "Alpenblick GmbH",
             "Harbor & Finch LLC", "Meridian Oy"]
EXAMPLE_USER = ("Contract with Kestrel BV.\n"
                "Version A: Deliveries are due within 5 working days.\n"
                "Version B: Deliveries are due within 10 working days.")
EXAMPLE_REPLY = "delivery time: 5 working days -> 10 working days"

JUDGE_SYSTEM = (
    "You check a one-line summary of how a contract clause changed. Compare it with "
    "the reference summary. Score 1 when it names the changed term and both the old "
    "and the new value in the right order; 0.5 when it has the values but misses the "
    "term, or has the term and only one value; 0 when the values are wrong, swapped or "
    "missing.\n"
    "Examples, reference 'notice period: 30 days -> 60 days':\n"
    "'notice period: 30 days -> 60 days' scores 1 (great).\n"
    "'30 days -> 60 days' scores 0.5 (fair: no term).\n"
    "'notice period: 60 days -> 30 days' scores 0 (poor: swapped).\n"
    "'The clause changed.' scores 0 (poor: no values).\n"
    "Keep steps empty: answer {\"steps\": [], \"result\": <score>} and nothing else."
)


def make_row(rng, term):
    template, values = TERMS[term]
    old, new = rng.sample(values, 2)
    user = (f"Contract with {rng.choice(COMPANIES)}.\n"
            f"Version A: {template.format(v=old)}\n"
            f"Version B: {template.format(v=new)}")
    return {
        "messages": chat(SYSTEM, [(EXAMPLE_USER, EXAMPLE_REPLY)], user),
        "answer": f"{term}: {old} -> {new}",
        "term": term,
    }


def main():
    train, valid = split(SEED, make_row, cycle=list(TERMS), per_draw=True)
    grader = {
        "type": "multi",
        "name": "legal_review",
        "graders": {
            "overlap": {"type": "text_similarity", "name": "overlap",
                        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
                        "evaluation_metric": "rouge_l"},
            "judge": {
                "type": "score_model", "name": "judge",
                "model": "smollm2-135m-instruct",
                "input": [
                    {"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content":
                        "Reference: {{ item.answer }}\nSummary: {{ sample.output_text }}"},
                ],
                "range": [0, 1],
                "sampling_params": {"temperature": 0, "max_completions_tokens": 48},
            },
        },
        "calculate_output": "0.7 * overlap + 0.3 * judge",
    }
    write_example(HERE, train, valid, grader, job(grader, "legal_review", 24))


if __name__ == "__main__":
    main()
