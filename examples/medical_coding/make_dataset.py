#!/usr/bin/env python3
"""Writes the medical_coding example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("pull facts into a clean format", the ICD-10 case): a short
clinical note and a list of six candidate codes with their descriptions; the
model replies with the one code that fits, e.g. "Q42.1".

The codes are INVENTED for this example: they look like ICD-10 codes (a
letter, two digits, a dot, a digit; a shared three-character category for
related conditions) but they are not ICD-10 codes and must not be used for
any real coding. The hierarchy is the point: the grader gives partial credit
for the right category with the wrong subcode.

Written for this project (Apache-2.0). Standard library only, fixed seed: the
same bytes on every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, split, write_example  # noqa: E402

SEED = 16004
SYSTEM = ("Assign the one code from the list that fits the note. Reply with "
          "the code only.")

# category: (what the category covers, [(subcode digit, description, note phrases)])
TABLE = {
    "Q41": ("wrist fracture", [
        ("1", "Wrist fracture, left", ["fracture of the left wrist", "broke her left wrist"]),
        ("2", "Wrist fracture, right", ["fracture of the right wrist", "broke his right wrist"]),
        ("9", "Wrist fracture, side not stated", ["a wrist fracture, side not recorded"]),
    ]),
    "Q57": ("ankle sprain", [
        ("1", "Ankle sprain, left", ["sprained left ankle", "twisted the left ankle"]),
        ("2", "Ankle sprain, right", ["sprained right ankle", "twisted the right ankle"]),
        ("9", "Ankle sprain, side not stated", ["an ankle sprain, side not recorded"]),
    ]),
    "V12": ("asthma", [
        ("0", "Asthma, mild", ["mild asthma", "occasional wheeze, mild asthma"]),
        ("3", "Asthma, severe", ["severe asthma attack", "severe asthma needing steroids"]),
        ("8", "Asthma, with infection", ["asthma flare with a chest infection"]),
    ]),
    "V30": ("migraine", [
        ("0", "Migraine without aura", ["migraine without aura", "headache, migraine, no aura"]),
        ("1", "Migraine with aura", ["migraine with visual aura", "migraine preceded by aura"]),
        ("5", "Migraine, chronic", ["chronic migraine, 16 days a month"]),
    ]),
    "K84": ("type 2 diabetes", [
        ("0", "Type 2 diabetes, no complication", ["type 2 diabetes, well controlled"]),
        ("2", "Type 2 diabetes, with kidney disease", ["type 2 diabetes with kidney damage"]),
        ("6", "Type 2 diabetes, with foot ulcer", ["type 2 diabetes and a foot ulcer"]),
    ]),
    "H65": ("ear infection", [
        ("1", "Ear infection, left", ["left ear infection", "infection of the left ear"]),
        ("2", "Ear infection, right", ["right ear infection", "infection of the right ear"]),
        ("3", "Ear infection, both ears", ["infection in both ears"]),
    ]),
}
AGES = ["A 34-year-old", "A 71-year-old", "A 12-year-old", "A 58-year-old", "A 23-year-old"]
SEEN = ["seen in clinic", "seen in the emergency room", "reviewed by phone"]
EXAMPLE_USER = ("Note: A 40-year-old seen in clinic with a blistering sunburn.\nCodes:\n"
                "R20.1 Sunburn, mild\nR20.2 Sunburn, blistering\nQ57.1 Ankle sprain, left")
EXAMPLE_REPLY = "R20.2"


def all_codes():
    return [(cat, f"{cat}.{d}", desc, phrases)
            for cat, (_, subs) in TABLE.items() for d, desc, phrases in subs]


def make_row(rng, target):
    cat, code, desc, phrases = target
    codes = all_codes()
    siblings = [c for c in codes if c[0] == cat and c[1] != code]
    others = [c for c in codes if c[0] != cat]
    # The right code, its two siblings (the hard distractors) and three others.
    shown = [target] + siblings + rng.sample(others, 3)
    rng.shuffle(shown)
    note = f"{rng.choice(AGES)} {rng.choice(SEEN)} with {rng.choice(phrases)}."
    user = "Note: " + note + "\nCodes:\n" + "\n".join(f"{c[1]} {c[2]}" for c in shown)
    return {
        "messages": chat(SYSTEM, [(EXAMPLE_USER, EXAMPLE_REPLY)], user),
        "code": code,
        "category": cat,
    }


CODE = '''"""The code half of the medical_coding grade: the reply must start with a
well-formed code (a letter, two digits, a dot, a digit), and that code is the
answer. 1 when it is the expected code, 0.4 when it is a sibling in the
expected three-character category (the right condition, the wrong side or
severity), else 0. Only the first code counts, so listing or repeating codes
does not pay, and a reply that starts with anything else (a sentence, the
note echoed back) gets nothing here.
"""
import re


def grade(sample, item):
    text = (sample.get("output_text") or "").strip()
    match = re.match(r"[A-Z][0-9]{2}\\.[0-9]", text)
    if not match:
        return 0.0
    code = match.group(0)
    if code == item["code"]:
        return 1.0
    return 0.4 if code[:3] == item["category"] else 0.0
'''


def main():
    # Every code in turn: no label dominates the set.
    train, valid = split(SEED, make_row, cycle=all_codes(), per_draw=True)
    grader = {
        "type": "multi",
        "name": "medical_coding",
        "graders": {
            "exact": {"type": "string_check", "name": "exact",
                      "input": "{{ sample.output_text }}", "reference": "{{ item.code }}",
                      "operation": "eq"},
            "code": {"type": "python", "name": "code", "source": CODE},
        },
        "calculate_output": "0.75 * code + 0.25 * exact",
    }
    write_example(HERE, train, valid, grader, job(grader, "medical_coding", 12))


if __name__ == "__main__":
    main()
