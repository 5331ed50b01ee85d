"""Grades a tax_reasoning reply: one amount, scored by how close it is.

The first number in the reply (commas between digit groups allowed) is the
answer. closeness = max(0, 1 - 4 * |answer - expected| / expected): 1 when
exact, 0.8 when 5% off, 0 from 25% off. The reward is 0.85 * closeness, plus
0.15 when the reply is the number alone (the format a program reads).
"""
import re


def grade(sample, item):
    text = (sample.get("output_text") or "").strip()
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?", text)
    if not match:
        return 0.0
    try:
        value = float(match.group(0).replace(",", ""))
    except ValueError:
        return 0.0
    expected = float(item["answer"])
    closeness = max(0.0, 1.0 - 4.0 * abs(value - expected) / abs(expected))
    alone = 1.0 if match.group(0) == text else 0.0
    return 0.85 * closeness + 0.15 * alone * (closeness > 0)
