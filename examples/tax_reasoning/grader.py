"""Grades a tax_reasoning reply: the standard deduction the rule gives.

The first number in the reply (commas between digit groups allowed) is the
answer. It earns 1 when it is the right amount, 0.1 when it is another
amount of the table (the table was read, the status was not), and 0
otherwise (a number from the worked example, an invented amount). The
reward is 0.85 times that, plus 0.15 when the reply is the number alone (the
format a program reads) and earned something.
"""
import re


def grade(sample, item):
    text = (sample.get("output_text") or "").strip()
    match = re.search(r"\d[\d,]*", text)
    if not match:
        return 0.0
    value = int(match.group(0).replace(",", ""))
    if value == item["answer"]:
        rule = 1.0
    elif value in item["other_amounts"]:
        rule = 0.1
    else:
        return 0.0
    alone = 1.0 if match.group(0) == text else 0.0
    return 0.85 * rule + 0.15 * alone
