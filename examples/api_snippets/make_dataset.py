#!/usr/bin/env python3
"""Writes the api_snippets example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("turn instructions into working code"): the prompt documents a few
methods of a small, made-up Python client (shoplib) and asks for one call;
the model replies with the call as one Python expression, keyword arguments
only. grader.py parses the reply with ast and checks the method, each
argument and the style, with partial credit.

Written for this project (Apache-2.0). Standard library only, fixed seed: the
same bytes on every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, python_grader, split, write_example  # noqa: E402

SEED = 16002
SYSTEM = ("Reply with one line of Python: a call on `client`, keyword "
          "arguments only, nothing else.")
NAMES = ["Ann", "Bo", "Cruz", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
ITEMS = ["pen", "ink", "pad", "cup", "mug", "bag", "hat", "map"]
CITIES = ["Oslo", "Lyon", "Porto", "Turin", "Graz", "Bern"]

# name: (signature shown in the prompt, instruction builder)
METHODS = {
    "create_user": "client.create_user(name: str, age: int)",
    "create_order": "client.create_order(customer_id: int, items: list[str], express: bool)",
    "cancel_order": "client.cancel_order(order_id: int, reason: str)",
    "ship": "client.ship(order_id: int, city: str)",
    "refund": "client.refund(order_id: int, amount: float)",
}

EXAMPLE_USER = ("API:\nclient.get_user(user_id: int)\n"
                "Task: fetch the user with id 7.")
EXAMPLE_REPLY = "client.get_user(user_id=7)"


def instruction(rng, method):
    if method == "create_user":
        name, age = rng.choice(NAMES), rng.randint(18, 80)
        return f"create a user named {name}, aged {age}.", {"name": name, "age": age}
    if method == "create_order":
        cid = rng.randint(10, 999)
        items = rng.sample(ITEMS, rng.randint(1, 2))
        express = rng.random() < 0.5
        how = "with express delivery" if express else "without express delivery"
        return (f"order {' and '.join(items)} for customer {cid}, {how}.",
                {"customer_id": cid, "items": items, "express": express})
    if method == "cancel_order":
        oid = rng.randint(1000, 9999)
        reason = rng.choice(["late", "damaged", "duplicate", "wrong size"])
        return (f"cancel order {oid} because it is {reason}." if reason != "duplicate"
                else f"cancel order {oid} as a duplicate.",
                {"order_id": oid, "reason": reason})
    if method == "ship":
        oid, city = rng.randint(1000, 9999), rng.choice(CITIES)
        return f"ship order {oid} to {city}.", {"order_id": oid, "city": city}
    oid, amount = rng.randint(1000, 9999), rng.choice([5.5, 12.0, 19.99, 40.0, 7.25])
    return f"refund {amount} on order {oid}.", {"order_id": oid, "amount": amount}


def make_row(rng, method):
    others = rng.sample([m for m in METHODS if m != method], 2)
    shown = [method] + others
    rng.shuffle(shown)
    task, args = instruction(rng, method)
    user = "API:\n" + "\n".join(METHODS[m] for m in shown) + f"\nTask: {task}"
    return {
        "messages": chat(SYSTEM, [(EXAMPLE_USER, EXAMPLE_REPLY)], user),
        "method": method,
        "arguments": args,
    }


def main():
    train, valid = split(SEED, make_row, cycle=list(METHODS))
    grader = python_grader(HERE, "api_snippets")
    write_example(HERE, train, valid, grader,
                  job(grader, "api_snippets", 32, temperature=0.8))


if __name__ == "__main__":
    main()
