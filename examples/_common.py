"""What the examples' make_dataset.py scripts share: drawing unique rows, the
train/validation split, chat messages with worked examples, and writing
train.jsonl, valid.jsonl, grader.json and job.json.

Each script imports it with its parent folder on sys.path, so it runs from any
directory:

    python3 examples/NAME/make_dataset.py

Standard library only. Nothing here draws a random number of its own: every
draw comes from the rng the script passes in, in the script's order, so the
files stay the same bytes on every run.
"""

import json
import os
import random

# Rows drawn per example (quickstart draws its own numbers).
N_TRAIN = 48
N_VALID = 24
# The model the examples' jobs train.
MODEL = "smollm2-135m-instruct"


def chat(system, shots, user):
    """The messages of a row: the system prompt, each worked example as a user turn and the
    assistant's ideal reply, then the row's user turn."""
    messages = [{"role": "system", "content": system}]
    for shot_user, shot_reply in shots:
        messages.append({"role": "user", "content": shot_user})
        messages.append({"role": "assistant", "content": shot_reply})
    messages.append({"role": "user", "content": user})
    return messages


def prompt_key(row):
    """What makes two rows the same prompt: the question asked (the last user turn),
    whatever the worked examples before it."""
    return row["messages"][-1]["content"]


def unique_rows(rng, n, seen, make_row, cycle=None, per_draw=False, shuffle=True):
    """n rows from make_row whose prompts are not in seen (which they are added to).

    Without cycle, each draw is make_row(rng). With cycle, make_row(rng, choice) goes through
    cycle's entries in turn, so each is the answer of as many rows as the others: by rows kept
    (the default) or, with per_draw, by draws (a drawn duplicate moves on to the next entry).
    make_row may return None to be drawn again. The rows are shuffled at the end unless
    shuffle is false.
    """
    out = []
    draws = 0
    while len(out) < n:
        if cycle is None:
            row = make_row(rng)
        else:
            turn = draws if per_draw else len(out)
            row = make_row(rng, cycle[turn % len(cycle)])
        draws += 1
        if row is None:
            continue
        key = prompt_key(row)
        if key in seen:
            continue
        seen.add(key)
        out.append(row)
    if shuffle:
        rng.shuffle(out)
    return out


def split(seed, make_row, n_train=N_TRAIN, n_valid=N_VALID, **draw):
    """(train, valid) drawn from one seeded generator, validation first; no validation prompt
    is a training prompt. draw: unique_rows's cycle, per_draw and shuffle."""
    rng = random.Random(seed)
    seen = set()
    valid = unique_rows(rng, n_valid, seen, make_row, **draw)
    train = unique_rows(rng, n_train, seen, make_row, **draw)
    return train, valid


def write_jsonl(path, rows, sort_keys=True, ensure_ascii=True):
    """One JSON object a line, UTF-8, "\\n" line ends."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n")


def write_json(path, value):
    """Indented by two spaces, keys in insertion order, a final newline."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def python_grader(here, name):
    """A python grader whose source is here/grader.py (the file a reader edits)."""
    with open(os.path.join(here, "grader.py"), encoding="utf-8") as f:
        source = f.read()
    return {"type": "python", "name": name, "source": source}


def job(grader, suffix, max_tokens, batch=4, epochs=1, lr=5, temperature=None,
        n_train=N_TRAIN):
    """The example's job body (OpenAI's fine-tuning job, files relative to its folder): LoRA
    rank 16, validation once, after the last step."""
    hyperparameters = {
        "batch_size": batch, "n_epochs": epochs, "compute_multiplier": 1,
        "eval_interval": n_train // batch * epochs, "eval_samples": 4,
        "learning_rate_multiplier": lr, "lora_rank": 16,
        "max_completion_tokens": max_tokens,
    }
    if temperature is not None:
        hyperparameters["temperature"] = temperature
    return {
        "model": MODEL,
        "training_file": "train.jsonl",
        "validation_file": "valid.jsonl",
        "suffix": suffix,
        "seed": 7,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": grader,
            "hyperparameters": hyperparameters,
        }},
    }


def write_example(here, train, valid, grader, job_body):
    """train.jsonl, valid.jsonl (sorted keys), grader.json and job.json, in here."""
    write_jsonl(os.path.join(here, "train.jsonl"), train)
    write_jsonl(os.path.join(here, "valid.jsonl"), valid)
    write_json(os.path.join(here, "grader.json"), grader)
    write_json(os.path.join(here, "job.json"), job_body)
