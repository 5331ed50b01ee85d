#!/usr/bin/env python3
"""Writes the quickstart task: train.jsonl and valid.jsonl, next to this file.

The task ("pull facts into a clean format"): a one-line business note holds
several facts (an id, a place, a count, a name...); the user asks for one of
them and wants the value alone, copied exactly: no sentence, no label, no
punctuation. Every prompt starts with one worked example (a user turn and the
assistant's ideal reply), so the base model sees the format once.

Each row is an OpenAI RFT dataset row:
    {"messages": [system, example user, example assistant, user],
     "answer": "4821", "field": "order number"}
grader.json compares the model's reply with "answer".

Deterministic: standard library only, fixed seed; running it again writes the
same bytes. Validation prompts never occur in train.
"""

import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, prompt_key, write_jsonl  # noqa: E402

SEED = 20250
N_TRAIN = 200
N_VALID = 24
SYSTEM = "Answer with the value only."

CITIES = [
    "Oslo", "Lisbon", "Madrid", "Vienna", "Dublin", "Prague", "Berlin", "Paris",
    "Rome", "Athens", "Warsaw", "Zurich", "Munich", "Milan", "Lyon", "Porto",
    "Seville", "Bergen", "Krakow", "Geneva", "Hamburg", "Valencia", "Naples",
    "Helsinki", "Stockholm", "Brussels", "Amsterdam", "Budapest", "Toronto",
    "Chicago", "Boston", "Denver", "Seattle", "Austin", "Sydney",
]
FIRST = [
    "Anna", "Maria", "David", "James", "Laura", "Peter", "Sofia", "Daniel",
    "Emma", "Lucas", "Nina", "Oscar", "Clara", "Hugo", "Ella", "Tom", "Julia",
    "Mark", "Sara", "Leo", "Mia", "Paul", "Eva", "Adam", "Rosa", "Ivan",
]
LAST = [
    "Berg", "Novak", "Brooks", "Silva", "Meyer", "Costa", "Moreau", "Fischer",
    "Larsen", "Rossi", "Jensen", "Walsh", "Keller", "Dubois", "Ortega",
    "Weber", "Hansen", "Marsh", "Nolan", "Varga",
]
ITEMS = ["chairs", "lamps", "desks", "boxes", "tables", "shelves", "monitors", "printers"]
DEVICES = ["printer", "scanner", "projector", "router", "heater"]
COMPANIES = ["Acme", "Vertex", "Solara", "Redwood", "Kestrel", "Orbit", "Nordica", "Pinewood"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]

NUMBER, WORD, NAME = "number", "word", "name"
HINT = {
    NUMBER: "Answer with one number.",
    WORD: "Answer with one word.",
    NAME: "Answer with the name only.",
}


def num(rng, lo, hi):
    return str(rng.randint(lo, hi))


# Each kind of note returns its text and the questions it can answer:
# (field, question, answer, type of answer).

def order(rng):
    f = {"id": num(rng, 1000, 9999), "qty": num(rng, 12, 90), "item": rng.choice(ITEMS),
         "city": rng.choice(CITIES)}
    text = "Order {id}: {qty} {item} shipped to {city}.".format(**f)
    return text, [
        ("order number", "Order number?", f["id"], NUMBER),
        ("city", "Which city?", f["city"], WORD),
        ("quantity", "How many {item}?".format(**f), f["qty"], NUMBER),
    ]


def ticket(rng):
    f = {"id": num(rng, 1000, 9999), "device": rng.choice(DEVICES), "floor": num(rng, 10, 40),
         "first": rng.choice(FIRST), "last": rng.choice(LAST)}
    text = "Ticket {id}: {first} {last} reports a broken {device} on floor {floor}.".format(**f)
    return text, [
        ("ticket number", "Ticket number?", f["id"], NUMBER),
        ("floor", "Which floor?", f["floor"], NUMBER),
        ("reporter", "Who reported it?", "{first} {last}".format(**f), NAME),
    ]


def booking(rng):
    f = {"first": rng.choice(FIRST), "last": rng.choice(LAST), "room": num(rng, 101, 940),
         "nights": num(rng, 10, 21), "city": rng.choice(CITIES)}
    text = "{first} {last} booked room {room} in {city} for {nights} nights.".format(**f)
    return text, [
        ("room", "Which room?", f["room"], NUMBER),
        ("guest", "Who booked it?", "{first} {last}".format(**f), NAME),
        ("city", "Which city?", f["city"], WORD),
        ("nights", "How many nights?", f["nights"], NUMBER),
    ]


def flight(rng):
    f = {"id": num(rng, 100, 999), "city": rng.choice(CITIES), "gate": num(rng, 10, 60)}
    text = "Flight {id} to {city} leaves from gate {gate}.".format(**f)
    return text, [
        ("gate", "Which gate?", f["gate"], NUMBER),
        ("destination", "Where to?", f["city"], WORD),
        ("flight number", "Flight number?", f["id"], NUMBER),
    ]


def invoice(rng):
    f = {"id": num(rng, 1000, 9999), "company": rng.choice(COMPANIES),
         "total": num(rng, 40, 990), "day": rng.choice(DAYS)}
    text = "Invoice {id} from {company}: {total} euros, due {day}.".format(**f)
    return text, [
        ("invoice number", "Invoice number?", f["id"], NUMBER),
        ("total", "Total in euros?", f["total"], NUMBER),
        ("company", "Which company?", f["company"], WORD),
        ("due day", "Due on which day?", f["day"], WORD),
    ]


KINDS = [order, ticket, booking, flight, invoice]


def question(rng, kind, hint=True, ask=None):
    text, asks = kind(rng)
    field, q, answer, typ = rng.choice(asks) if ask is None else asks[ask]
    if hint:
        q = "{} {}".format(q, HINT[typ])
    return "{}\n{}".format(text, q), answer, field


def make_row(rng, kind=None, ask=None):
    if kind is None:
        kind = rng.choice(KINDS)
    example_kind = rng.choice([k for k in KINDS if k is not kind])
    example_prompt, example_answer, _ = question(rng, example_kind, hint=False)
    prompt, answer, field = question(rng, kind, ask=ask)
    messages = chat(SYSTEM, [(example_prompt, example_answer)], prompt)
    return {"messages": messages, "answer": answer, "field": field}


def main():
    rng = random.Random(SEED)
    # Every (kind, question) pair, so that validation asks each question at least once.
    pairs = [(kind, i) for kind in KINDS for i in range(len(kind(random.Random(0))[1]))]
    valid, train, seen = [], [], set()
    while len(valid) + len(train) < N_TRAIN + N_VALID:
        if len(valid) < N_VALID:
            row = make_row(rng, *pairs[len(valid) % len(pairs)])
        else:
            row = make_row(rng)
        key = prompt_key(row)  # the question asked, whatever the example
        if key in seen:
            continue
        seen.add(key)
        (valid if len(valid) < N_VALID else train).append(row)
    # Keys in the order written, non-ASCII as is (the other examples sort their keys).
    for name, part in (("train.jsonl", train), ("valid.jsonl", valid)):
        write_jsonl(os.path.join(HERE, name), part, sort_keys=False, ensure_ascii=False)
    print("wrote {} train and {} valid rows to {}".format(len(train), len(valid), HERE))


if __name__ == "__main__":
    main()
