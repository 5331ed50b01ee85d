#!/usr/bin/env python3
"""Writes the content_moderation example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("apply complex rules correctly", the content moderation case): a
two-level policy (family:label) and a user's message; the model replies with
the one label the policy gives it. Six labels in three families, balanced
across the set, so no constant answer scores well. The grader pays 0.7 for
the exact label and 0.3 for the right family alone (a nuanced mistake, such
as an insult taken for a threat, costs less than a wrong family). Each prompt
starts with a worked example whose label is never the row's: copying it
never pays.

The messages are made up from templates for this example (mild, no real
person). Written for this project (Apache-2.0). Standard library only, fixed
seed: the same bytes on every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, split, write_example  # noqa: E402

SEED = 16007
SYSTEM = (
    "Label the message with the policy. Reply with the label only.\n"
    "allow:ok - nothing wrong; allow:criticism - harsh but about ideas or products;\n"
    "spam:promo - advertising; spam:scam - asks for money, codes or passwords;\n"
    "abuse:insult - attacks a person with names; abuse:threat - says harm will come to someone."
)
TEMPLATES = {
    "allow:ok": ["Does anyone know when the {place} opens tomorrow?",
                 "Thanks for the tips on {thing}, it worked for me.",
                 "I moved to {place} last year and love it.",
                 "What is the best way to learn {thing}?"],
    "allow:criticism": ["This {thing} update is slow and badly designed.",
                        "The {place} service was awful and overpriced.",
                        "Honestly the plan for {thing} makes no sense to me.",
                        "Worst {thing} tutorial I have read, full of errors."],
    "spam:promo": ["Buy cheap {thing} now at bestdeals dot com, 70% off!",
                   "Visit my shop for the best {thing} in {place}, free shipping!",
                   "Huge sale on {thing} this week only, click my profile!",
                   "Follow my page for daily {thing} discounts!"],
    "spam:scam": ["You won a prize! Send your bank password to claim it.",
                  "Send me 50 dollars in gift cards and I will double it.",
                  "Your {thing} account is locked, reply with the code we texted you.",
                  "Pay a small fee now to release your {place} lottery winnings."],
    "abuse:insult": ["You are a clueless idiot, {name}.",
                     "{name} is a pathetic loser who knows nothing about {thing}.",
                     "Nobody cares, {name}, you absolute clown.",
                     "What a stupid fool you are, {name}."],
    "abuse:threat": ["{name}, I will find you in {place} and make you pay.",
                     "Keep posting, {name}, and you will get hurt.",
                     "I know where you live, {name}. Watch your back.",
                     "Say that again and I will break your {thing}, {name}."],
}
PLACES = ["library", "gym", "Lisbon", "market", "Oslo", "station"]
THINGS = ["guitar", "phone", "laptop", "chess", "garden", "camera"]
NAMES = ["Sam", "Alex", "Robin", "Kim", "Jo", "Lee"]
# The worked examples at the start of each prompt: one per label, in a shuffled order, so the
# base model sees every label used once. With a single worked example (never the row's label)
# the 135M model's first well-formed answers were mostly one label, and training collapsed onto
# it within a few steps; with all six in view its early answers spread over the labels, so a
# group's samples differ in label and the right one can be rewarded.
WORKED = {
    "allow:ok": "Great photo, thanks for sharing!",
    "allow:criticism": "The new menu design is confusing and ugly.",
    "spam:promo": "Cheap sunglasses, 80% off, visit my store!",
    "spam:scam": "Send me your card number to receive your refund.",
    "abuse:insult": "You are a brainless moron, Max.",
    "abuse:threat": "Max, I will hurt you if I see you again.",
}


def make_row(rng, label):
    shown = list(WORKED)
    rng.shuffle(shown)
    text = rng.choice(TEMPLATES[label]).format(
        place=rng.choice(PLACES), thing=rng.choice(THINGS), name=rng.choice(NAMES))
    shots = [(f"Message: {WORKED[worked]}", worked) for worked in shown]
    return {
        "messages": chat(SYSTEM, shots, f"Message: {text}"),
        "label": label,
        "family": label.split(":")[0],
    }


FAMILY = '''"""The family half of the content_moderation grade: 1 when the reply is one
of the policy's six labels and its family (before the colon) is the expected
one. A made-up label in the right family ("spam:insult") earns nothing: the
answer is read by a program that knows six labels."""

LABELS = {"allow:ok", "allow:criticism", "spam:promo", "spam:scam",
          "abuse:insult", "abuse:threat"}


def grade(sample, item):
    text = (sample.get("output_text") or "").strip()
    if text not in LABELS:
        return 0.0
    return 1.0 if text.split(":")[0] == item["family"] else 0.0
'''


def main():
    # Every label in turn, drawn again until its message is new: each label is the answer of
    # the same number of rows (4 of the 24 validation rows).
    train, valid = split(SEED, make_row, cycle=list(TEMPLATES))
    grader = {
        "type": "multi",
        "name": "content_moderation",
        "graders": {
            "exact": {"type": "string_check", "name": "exact",
                      "input": "{{ sample.output_text }}", "reference": "{{ item.label }}",
                      "operation": "eq"},
            "family": {"type": "python", "name": "family", "source": FAMILY},
        },
        "calculate_output": "0.7 * exact + 0.3 * family",
    }
    # Twelve prompts a step, two of each label on average, four passes over the 48 rows: with
    # four prompts a step the 135M model collapsed onto one label within 12 steps (all eight
    # samples of every group alike, so no group carried a gradient any more); a step that
    # sees every label moves the labels apart instead of towards the step's majority.
    write_example(HERE, train, valid, grader,
                  job(grader, "content_moderation", 8, batch=12, epochs=4, lr=2))


if __name__ == "__main__":
    main()
