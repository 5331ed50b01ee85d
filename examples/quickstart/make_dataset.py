#!/usr/bin/env python3
"""Writes the quickstart task: train.jsonl and valid.jsonl, next to this file.

The task ("pull facts into a clean format"): a short business message holds
several facts (an id, a place, a count, a time...); the user asks for one of
them and wants the value alone, copied exactly, with no other words.

Each row is an OpenAI RFT dataset row: {"messages": [...], "answer": "...",
"field": "..."}; grader.json compares the model's reply with "answer".

Deterministic: standard library only, fixed seed. Run it again and the files
come out byte for byte the same.
"""

import json
import os
import random

SEED = 20250
N_TRAIN = 200
N_VALID = 24

CITIES = [
    "Oslo", "Lisbon", "Madrid", "Vienna", "Dublin", "Prague", "Berlin", "Paris",
    "Rome", "Athens", "Warsaw", "Zurich", "Munich", "Milan", "Lyon", "Porto",
    "Seville", "Bergen", "Krakow", "Geneva", "Hamburg", "Valencia", "Naples",
    "Helsinki", "Stockholm", "Copenhagen", "Brussels", "Amsterdam", "Budapest",
    "Toronto", "Chicago", "Boston", "Denver", "Seattle", "Austin", "Sydney",
]
FIRST = [
    "Anna", "Maria", "David", "James", "Laura", "Peter", "Sofia", "Daniel",
    "Emma", "Lucas", "Nina", "Oscar", "Clara", "Hugo", "Ella", "Tom", "Julia",
    "Mark", "Sara", "Leo", "Mia", "Paul", "Eva", "Adam", "Rosa", "Ivan",
]
LAST = [
    "Berg", "Novak", "Brooks", "Silva", "Meyer", "Costa", "Moreau", "Fischer",
    "Larsen", "Kowalski", "Rossi", "Jensen", "Walsh", "Keller", "Dubois",
    "Lindqvist", "Ortega", "Weber", "Hansen", "Marsh", "Nolan", "Varga",
]
ITEMS = ["chairs", "lamps", "desks", "boxes", "tables", "shelves", "monitors", "printers"]
DEVICES = ["printer", "scanner", "projector", "coffee machine", "router", "heater"]
COMPANIES = ["Acme", "Nordic Tools", "Blue Pine", "Vertex", "Solara", "Redwood", "Kestrel", "Orbit"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
MONTHS = ["March", "April", "May", "June", "July", "August", "October", "November"]


def num(rng, lo, hi):
    return str(rng.randint(lo, hi))


def order(rng):
    f = {
        "id": num(rng, 1000, 9999), "qty": num(rng, 12, 90), "item": rng.choice(ITEMS),
        "city": rng.choice(CITIES), "day": num(rng, 2, 28), "month": rng.choice(MONTHS),
    }
    text = "Order #{id} for {qty} {item} was shipped to {city} on {day} {month}.".format(**f)
    asks = [
        ("order number", "What is the order number?", f["id"]),
        ("city", "Which city was it shipped to?", f["city"]),
        ("quantity", "How many {item} were ordered?".format(**f), f["qty"]),
    ]
    return text, asks


def ticket(rng):
    f = {
        "id": num(rng, 1000, 9999), "device": rng.choice(DEVICES), "floor": num(rng, 10, 40),
        "first": rng.choice(FIRST), "last": rng.choice(LAST),
    }
    text = "Ticket {id}: {first} {last} says the {device} on floor {floor} is broken again.".format(**f)
    asks = [
        ("ticket number", "What is the ticket number?", f["id"]),
        ("floor", "Which floor is the {device} on?".format(**f), f["floor"]),
        ("reporter", "Who reported it?", "{first} {last}".format(**f)),
    ]
    return text, asks


def booking(rng):
    f = {
        "first": rng.choice(FIRST), "last": rng.choice(LAST), "room": num(rng, 101, 940),
        "nights": num(rng, 10, 21), "city": rng.choice(CITIES),
    }
    text = "{first} {last} booked room {room} in {city} for {nights} nights.".format(**f)
    asks = [
        ("room", "Which room was booked?", f["room"]),
        ("guest", "Who made the booking?", "{first} {last}".format(**f)),
        ("city", "In which city is the room?", f["city"]),
        ("nights", "For how many nights?", f["nights"]),
    ]
    return text, asks


def flight(rng):
    f = {
        "id": num(rng, 100, 999), "city": rng.choice(CITIES), "gate": num(rng, 10, 60),
        "hh": num(rng, 6, 9), "mm": rng.choice(["05", "10", "15", "20", "30", "40", "45", "50"]),
    }
    text = "Flight {id} to {city} leaves from gate {gate} at {hh}:{mm}.".format(**f)
    asks = [
        ("gate", "Which gate does it leave from?", f["gate"]),
        ("destination", "Where is the flight going?", f["city"]),
        ("flight number", "What is the flight number?", f["id"]),
    ]
    return text, asks


def invoice(rng):
    f = {
        "id": num(rng, 1000, 9999), "company": rng.choice(COMPANIES), "total": num(rng, 40, 990),
        "day": rng.choice(DAYS),
    }
    text = "Invoice {id} from {company} totals {total} euros and is due on {day}.".format(**f)
    asks = [
        ("invoice number", "What is the invoice number?", f["id"]),
        ("total", "What is the total in euros?", f["total"]),
        ("company", "Which company sent it?", f["company"]),
        ("due day", "On which day is it due?", f["day"]),
    ]
    return text, asks


KINDS = [order, ticket, booking, flight, invoice]


def make_row(rng):
    text, asks = rng.choice(KINDS)(rng)
    field, question, answer = rng.choice(asks)
    content = "{}\n{} Reply with the {} only.".format(text, question, field)
    return {"messages": [{"role": "user", "content": content}], "answer": answer, "field": field}


def main():
    rng = random.Random(SEED)
    rows, seen = [], set()
    while len(rows) < N_TRAIN + N_VALID:
        row = make_row(rng)
        key = row["messages"][0]["content"]
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    valid, train = rows[:N_VALID], rows[N_VALID:]
    here = os.path.dirname(os.path.abspath(__file__))
    for name, part in (("train.jsonl", train), ("valid.jsonl", valid)):
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print("wrote {} train and {} valid rows to {}".format(len(train), len(valid), here))


if __name__ == "__main__":
    main()
