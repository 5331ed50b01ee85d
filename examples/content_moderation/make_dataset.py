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

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 16007
N_TRAIN = 48
N_VALID = 24
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
    messages = [{"role": "system", "content": SYSTEM}]
    for worked in shown:
        messages.append({"role": "user", "content": f"Message: {WORKED[worked]}"})
        messages.append({"role": "assistant", "content": worked})
    messages.append({"role": "user", "content": f"Message: {text}"})
    return {
        "messages": messages,
        "label": label,
        "family": label.split(":")[0],
    }


def rows(rng, n, seen):
    out = []
    labels = list(TEMPLATES)
    while len(out) < n:
        # Every label in turn, drawn again until its message is new: each label is the answer
        # of the same number of rows (4 of the 24 validation rows).
        row = make_row(rng, labels[len(out) % len(labels)])
        key = row["messages"][-1]["content"]
        if key in seen:
            continue
        seen.add(key)
        out.append(row)
    rng.shuffle(out)
    return out


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
    rng = random.Random(SEED)
    seen = set()
    valid = rows(rng, N_VALID, seen)
    train = rows(rng, N_TRAIN, seen)
    for name, data in (("train.jsonl", train), ("valid.jsonl", valid)):
        with open(os.path.join(HERE, name), "w") as f:
            for row in data:
                f.write(json.dumps(row, sort_keys=True) + "\n")
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
    with open(os.path.join(HERE, "grader.json"), "w") as f:
        json.dump(grader, f, indent=2)
        f.write("\n")
    # Twelve prompts a step, two of each label on average, four passes over the 48 rows: with
    # four prompts a step the 135M model collapsed onto one label within 12 steps (all eight
    # samples of every group alike, so no group carried a gradient any more); a step that
    # sees every label moves the labels apart instead of towards the step's majority.
    write_job(grader, "content_moderation", 8, epochs=4, batch=12)


def write_job(grader, suffix, max_tokens=48, epochs=1, batch=4):
    job = {
        "model": "smollm2-135m-instruct",
        "training_file": "train.jsonl",
        "validation_file": "valid.jsonl",
        "suffix": suffix,
        "seed": 7,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": grader,
            "hyperparameters": {
                "batch_size": batch, "n_epochs": epochs, "compute_multiplier": 1,
                "eval_interval": N_TRAIN // batch * epochs, "eval_samples": 4,
                "learning_rate_multiplier": 2, "lora_rank": 16,
                "max_completion_tokens": max_tokens,
            }}},
    }
    with open(os.path.join(HERE, "job.json"), "w") as f:
        json.dump(job, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
