"""Grades an api_snippets reply: one Python call on `client`, keyword arguments only.

The reply must parse (ast) as a single expression; a reply wrapped in a code
fence or with prose around it is searched for its first line that parses as
a call on client, and scores half. A reply with no line that parses earns at
most a quarter: 0.3 for naming client.METHOD( and 0.6 for each expected
keyword written as key=value, the sum halved and halved again. Otherwise:
  0.3  the right method on `client`
  0.6  the arguments: each expected keyword with the right value earns its
       share; a missing, wrong or unknown one earns nothing, and positional
       arguments count as wrong
  0.1  no positional arguments and no unknown keywords
"""
import ast
import re


def _call(text):
    try:
        tree = ast.parse(text.strip(), mode="eval")
        if isinstance(tree.body, ast.Call):
            return tree.body, 1.0
    except SyntaxError:
        pass
    for line in text.replace("`", "\n").splitlines():
        line = line.strip()
        if not line.startswith("client."):
            continue
        try:
            tree = ast.parse(line, mode="eval")
        except SyntaxError:
            continue
        if isinstance(tree.body, ast.Call):
            return tree.body, 0.5
    return None, 0.0


def _literal(value):
    if isinstance(value, bool):
        return [str(value)]
    if isinstance(value, str):
        return ['"%s"' % value, "'%s'" % value]
    if isinstance(value, (int, float)):
        return [repr(value)]
    return [repr(value), repr(value).replace("'", '"')]


def _text_credit(text, item):
    """Credit for a reply that does not parse: the method's name and key=value pairs."""
    method = 0.3 if re.search(r"\bclient\.%s\(" % re.escape(item["method"]), text) else 0.0
    expected = item["arguments"]
    right = sum(
        1 for key, value in expected.items()
        if any(re.search(r"\b%s\s*=\s*%s" % (re.escape(key), re.escape(lit)), text)
               for lit in _literal(value)))
    return method + 0.6 * right / len(expected)


def grade(sample, item):
    text = sample.get("output_text") or ""
    call, clean = _call(text)
    if call is None:
        return 0.25 * _text_credit(text, item)
    func = call.func
    on_client = (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                 and func.value.id == "client")
    method = 0.3 if on_client and func.attr == item["method"] else 0.0
    expected = item["arguments"]
    right = 0
    unknown = 0
    for kw in call.keywords:
        try:
            value = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError):
            value = object()
        if kw.arg in expected and value == expected[kw.arg] and type(value) is type(expected[kw.arg]):
            right += 1
        elif kw.arg not in expected:
            unknown += 1
    args = 0.6 * right / len(expected)
    style = 0.1 if not call.args and not unknown and on_client else 0.0
    return (method + args + style) * clean
