"""Grades a schedule_conflicts reply: the ids of the two clashing meetings.

The ids are the M<number> words of the reply. Each id of the clashing pair
named earns 0.5; every other id costs 0.35 (so one right and one wrong id
earns 0.15, and naming all five meetings earns 0: guessing does not pay).
The score is halved when the reply holds anything besides ids, commas, spaces
and "and": the answer is meant to be read by a program.
"""
import re


def grade(sample, item):
    text = (sample.get("output_text") or "").strip()
    given = set(re.findall(r"\bM\d+\b", text))
    if not given:
        return 0.0
    clash = set(item["clash"])
    score = max(0.0, 0.5 * len(given & clash) - 0.35 * len(given - clash))
    if re.sub(r"\bM\d+\b|[,\s]|and", "", text):
        score *= 0.5
    return score
