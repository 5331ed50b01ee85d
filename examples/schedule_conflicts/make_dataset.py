#!/usr/bin/env python3
"""Writes the schedule_conflicts example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("turn instructions into working code", the schedule manager case):
a day's calendar of five meetings, each with an id; exactly two of them
clash: either they are booked at the same start time (a double booking), or
one is a duplicate of the other (same title, same time). The meetings are
listed in the order they were entered, not by time. The model replies with
the two ids, "M2, M4". grader.py gives 0.5 for each clashing id named and
takes 0.5 for every other id (so one right and one wrong id score 0, and no
constant pair pays more than its one chance in ten of being the pair), halves
it when the reply names one id only (so a one-id guess does not pay either),
and halves it again when the reply holds anything but ids.

Written for this project (Apache-2.0). Standard library only, fixed seed: the
same bytes on every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, python_grader, split, write_example  # noqa: E402

SEED = 16003
N_MEETINGS = 5
SYSTEM = ("Find the two meetings that clash: they start at the same time, or one "
          "duplicates the other. Reply with their two ids only.")
TITLES = ["Standup", "Design review", "Budget sync", "1:1 with Kim", "Hiring panel",
          "Sprint planning", "Vendor call", "Retro", "Lunch and learn", "Roadmap",
          "Security review", "Demo prep"]
# Two worked examples, a double booking and a duplicate; each row shows one whose answer is not
# the row's, so copying the worked example's ids never pays.
WORKED = [
    ("M1 Retro 09:00-09:30\nM2 Vendor call 10:00-11:00\n"
     "M3 Demo prep 13:00-13:30\nM4 Standup 15:00-15:30\nM5 Roadmap 10:00-10:30", "M2, M5"),
    ("M1 Standup 09:00-09:30\nM2 Retro 11:00-11:30\n"
     "M3 Vendor call 14:00-14:30\nM4 Standup 09:00-09:30\nM5 Roadmap 15:00-15:30", "M1, M4"),
]


def fmt(minutes):
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


PAIRS = [(p, q) for p in range(N_MEETINGS) for q in range(p + 1, N_MEETINGS)]


def make_row(rng, pair):
    # Five disjoint slots across the day, then one clash is made.
    starts = sorted(rng.sample(range(8 * 2, 17 * 2), N_MEETINGS))
    titles = rng.sample(TITLES, N_MEETINGS)
    meetings = [[titles[i], starts[i] * 30, starts[i] * 30 + 30] for i in range(N_MEETINGS)]
    a, b = sorted(rng.sample(range(N_MEETINGS), 2))
    kind = "duplicate" if rng.random() < 0.5 else "double_booked"
    if kind == "duplicate":
        meetings[b] = list(meetings[a])
    else:
        # A different meeting booked at the same start time (its length may differ).
        meetings[b][1] = meetings[a][1]
        meetings[b][2] = meetings[b][1] + rng.choice([30, 60])
    clashing = {(i, j) for i in range(N_MEETINGS) for j in range(i + 1, N_MEETINGS)
                if meetings[i][1] < meetings[j][2] and meetings[j][1] < meetings[i][2]}
    if clashing != {(a, b)}:
        return None  # the change made a second clash: draw again
    # Listed in the order they were entered, not by time: the clashing pair can be anywhere.
    # Every pair of list positions in turn, so no pair of ids is a better guess than another.
    rest = [i for i in range(N_MEETINGS) if i not in (a, b)]
    rng.shuffle(rest)
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    order = []
    for position in range(N_MEETINGS):
        order.append(first if position == pair[0] else second if position == pair[1]
                     else rest.pop())
    ids = {i: f"M{k + 1}" for k, i in enumerate(order)}
    lines = [f"{ids[i]} {meetings[i][0]} {fmt(meetings[i][1])}-{fmt(meetings[i][2])}"
             for i in order]
    clash = sorted([ids[a], ids[b]])
    worked_user, worked_reply = rng.choice(
        [w for w in WORKED if w[1] != ", ".join(clash)])
    return {
        "messages": chat(SYSTEM, [(worked_user, worked_reply)], "\n".join(lines)),
        "clash": clash,
        "answer": ", ".join(clash),
        "kind": kind,
    }


def main():
    train, valid = split(SEED, make_row, cycle=PAIRS)
    grader = python_grader(HERE, "schedule_conflicts")
    # Three passes over the 48 rows: in one pass (12 steps) the 135M model learns the format
    # and settles on a constant pair; finding the clash takes more steps, if it comes at all.
    write_example(HERE, train, valid, grader,
                  job(grader, "schedule_conflicts", 16, epochs=3, lr=2))


if __name__ == "__main__":
    main()
