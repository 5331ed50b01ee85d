"""Grades a schedule_conflicts reply: the ids of the two clashing meetings.

The ids are the M<number> words of the reply. Each id of the clashing pair
named earns 0.5; every other id costs 0.5 (so one right and one wrong id
earn 0, and naming all five meetings earns 0: a constant pair earns only on
the one calendar in ten where it is the pair). A reply naming one id only
gets half (the question asks for the pair, and one id repeated to every
calendar would otherwise earn 0.2 on average). The
score is halved again when the reply holds anything besides ids, commas,
spaces and "and": the answer is meant to be read by a program.
"""
import re


def grade(sample, item):
    text = (sample.get("output_text") or "").strip()
    given = set(re.findall(r"\bM\d+\b", text))
    if not given:
        return 0.0
    clash = set(item["clash"])
    score = max(0.0, 0.5 * len(given & clash) - 0.5 * len(given - clash))
    if len(given) == 1:
        score *= 0.5
    if re.sub(r"\bM\d+\b|[,\s]|and", "", text):
        score *= 0.5
    return score
